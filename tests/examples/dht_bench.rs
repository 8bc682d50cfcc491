//! Discovery on a 20-node DHT of separate daemon processes on loopback:
//! `cargo build --release && cargo run --release -p peerlog-tests --example dht_bench [-- PEERLOG_BINARY]`.
//!
//! Node 0 is the bootstrap node; all run `--dht-mode server`. For each of 10 pairs (2i, 2i+1):
//! node 2i creates a room; after its provider record is published (500 ms), node 2i+1 joins by
//! invite (no Argon2id), and the time from sending `rooms.join` to the `peer.joined` event on
//! its WebSocket is measured: DHT lookup, dial, Noise, replication handshake.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use peerlog::client::Client;
use peerlog_proto::api::events::PeerJoined;

struct Node {
    child: Child,
    _dir: tempfile::TempDir,
    addr: String,
    api: SocketAddr,
    token: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(exe: &str, bootstrap: Option<&str>) -> Result<Node> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(exe);
    cmd.args(["daemon", "--data-dir"]).arg(dir.path()).args([
        "--api-listen",
        "127.0.0.1:0",
        "--no-mdns",
        "--dht-mode",
        "server",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let mut child = cmd.env("RUST_LOG", "warn").stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut addr = String::new();
    loop {
        let line = lines.next().context("daemon exited")??;
        if let Some(a) = line.strip_prefix("listening: ") {
            addr = a.to_string();
        }
        if line.starts_with("web UI:") {
            break;
        }
    }
    let port: u16 = std::fs::read_to_string(dir.path().join("api-port"))?.trim().parse()?;
    let token = std::fs::read_to_string(dir.path().join("api-token"))?.trim().to_string();
    Ok(Node { child, _dir: dir, addr, api: SocketAddr::from(([127, 0, 0, 1], port)), token })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let exe = std::env::args().nth(1).unwrap_or_else(|| "target/release/peerlog".into());
    let mut nodes = vec![start(&exe, None)?];
    let boot = nodes[0].addr.clone();
    for _ in 1..20 {
        nodes.push(start(&exe, Some(&boot))?);
    }
    // Let the routing tables fill (each node bootstraps on its first connection).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut times = Vec::new();
    for i in 0..10 {
        let (x, y) = (&nodes[2 * i], &nodes[2 * i + 1]);
        let mut cx = Client::connect(x.api, &x.token).await?;
        let mut cy = Client::connect(y.api, &y.token).await?;
        let (_, invite) = peerlog_tests::create(&mut cx, &format!("pair {i}")).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        peerlog_tests::join_invite(&mut cy, &invite).await?;
        cy.wait_for::<PeerJoined>(Duration::from_secs(30), "peer.joined", |_| true).await?;
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        println!("pair {i}: rooms.join → peer.joined in {ms:.1} ms");
        times.push(ms);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("discovery over 10 pairs: median {:.1} ms, min {:.1} ms, max {:.1} ms", times[5], times[0], times[9]);
    Ok(())
}
