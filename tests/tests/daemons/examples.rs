//! The client examples of `docs/examples/` (Python, Node, websocat), run as written against
//! a real daemon: each joins, sends, reads the history, and (Python, Node) prints a message
//! another client sends while it follows the room.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use peerlog_tests::*;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const PASS: &str = "examples of the api, run as written";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples")
}

/// The first program of `candidates` for which `probe` (its arguments) succeeds.
async fn find(candidates: &[&str], probe: &[&str], what: &str) -> Result<String> {
    for c in candidates {
        let ok = Command::new(c).args(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
        if ok.is_ok_and(|s| s.success()) {
            return Ok(c.to_string());
        }
    }
    bail!("{what} not found (tried {candidates:?}); .ci/run installs it")
}

/// Runs an example that follows the room until it printed one live message: starts it,
/// waits until its message arrived, sends one from another client, and returns what it
/// printed.
async fn follow_one(d: &TestDaemon, mut cmd: Command, sent: &str, live: &str) -> Result<String> {
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    let mut child = cmd
        .env("PEERLOG_DATA_DIR", d.data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start the example")?;
    wait_for_text(&mut c, &room, sent, WAIT).await.context("the example's message")?;
    send(&mut c, &room, live).await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .context("the example did not exit after the live message")??;
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().context("stdout")?.read_to_string(&mut out).await?;
    child.stderr.take().context("stderr")?.read_to_string(&mut err).await?;
    ensure!(status.success(), "the example failed: {status}\n{out}\n{err}");
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_chats() -> Result<()> {
    let d = TestDaemon::start_bootstrap_node().await?;
    let python =
        find(&["python3", "/usr/bin/python3"], &["-c", "import websockets"], "python3 with websockets").await?;
    let mut cmd = Command::new(python);
    cmd.arg(examples().join("chat.py")).args([PASS, "hello from python", "--until", "live, to python"]);
    let out = follow_one(&d, cmd, "hello from python", "live, to python").await?;
    ensure!(out.contains(": hello from python\n") && out.contains(": live, to python\n"), "printed:\n{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_example_chats() -> Result<()> {
    let d = TestDaemon::start_bootstrap_node().await?;
    // Node 22+ has WebSocket built in; Node 20 behind a flag.
    let builtin = find(&["node"], &["-e", "if (typeof WebSocket !== 'function') process.exit(1)"], "node 22+").await;
    let mut cmd = Command::new("node");
    if builtin.is_err() {
        cmd.arg("--experimental-websocket");
    }
    cmd.arg(examples().join("chat.mjs")).args([PASS, "hello from node", "--until", "live, to node"]);
    let out = follow_one(&d, cmd, "hello from node", "live, to node").await?;
    ensure!(out.contains(": hello from node\n") && out.contains(": live, to node\n"), "printed:\n{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocat_example_chats() -> Result<()> {
    let d = TestDaemon::start_bootstrap_node().await?;
    find(&["websocat"], &["--version"], "websocat").await?;
    let out = Command::new("sh")
        .arg(examples().join("chat.sh"))
        .args([PASS, "examples", "a \"quoted\" hello from websocat"])
        .env("PEERLOG_DATA_DIR", d.data_dir())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out).await.context("websocat did not exit")??;
    ensure!(out.status.success(), "chat.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let replies: serde_json::Value = serde_json::from_slice(&out.stdout).context("one JSON line")?;
    let ids: Vec<i64> = replies.as_array().context("a batch reply")?.iter().filter_map(|r| r["id"].as_i64()).collect();
    ensure!(ids == [1, 2, 3], "{replies}");
    let messages = replies[2]["result"]["messages"].as_array().context("history")?;
    ensure!(messages.iter().any(|m| m["text"] == "a \"quoted\" hello from websocat"), "{replies}");
    Ok(())
}
