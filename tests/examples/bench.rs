//! Quick figures on real daemons in one process on loopback:
//! `cargo run --release -p peerlog-tests --example bench [-- ROUNDS MESSAGES [unwatched]]`.
//! With `unwatched`, the joiner's API client disconnects once it joined, so catch-up is
//! measured without the per-message events to a WebSocket client.
//!
//! - send: `messages.send` round trip on one daemon (durable), sequential.
//! - live: from `messages.send` on A to the `message` event on B's WebSocket.
//! - catch-up: a fresh daemon joins a room holding MESSAGES messages; time from the end of
//!   its join (Argon2id excluded) until it has stored all of them, verified.
//!
//! Each is run ROUNDS times; the median and range are printed.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use peerlog_tests::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(mut v: Vec<f64>) -> String {
    let (min, max) = (pct(&mut v, 0.0), pct(&mut v, 1.0));
    format!("median {:.3}, range {:.3}..{:.3}", pct(&mut v, 0.5), min, max)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(5);
    let messages = args.get(1).copied().unwrap_or(10_000);
    let unwatched = std::env::args().any(|a| a == "unwatched");
    let pass = "bench passphrase with enough words in it";
    let (mut send_p50, mut send_p99, mut live_p50, mut live_p95, mut live_p99, mut catchup) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        let a = TestDaemon::start().await?;
        let b = TestDaemon::start_bootstrapped(&a).await?;
        let (mut ca, mut cb) = (a.client().await?, b.client().await?);
        let room = join(&mut ca, pass).await?;
        join(&mut cb, pass).await?;
        send(&mut ca, &room, "warm-up").await?;
        wait_for_text(&mut cb, &room, "warm-up", WAIT).await?;

        // Live latency, one message at a time; also the sender's round trip.
        let (mut rtt, mut live) = (vec![], vec![]);
        for i in 0..1000 {
            let text = format!("live {i}");
            let t0 = Instant::now();
            send(&mut ca, &room, &text).await?;
            rtt.push(t0.elapsed().as_secs_f64() * 1000.0);
            wait_for_text(&mut cb, &room, &text, WAIT).await?;
            live.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        send_p50.push(pct(&mut rtt, 0.5));
        send_p99.push(pct(&mut rtt, 0.99));
        live_p50.push(pct(&mut live, 0.5));
        live_p95.push(pct(&mut live, 0.95));
        live_p99.push(pct(&mut live, 0.99));

        // Catch-up: fill the room, then a fresh daemon joins.
        for i in 0..messages {
            send(&mut ca, &room, &format!("bulk message {i:07} {}", "x".repeat(180))).await?;
        }
        let total = messages + 1001;
        let c = TestDaemon::start_bootstrapped(&a).await?;
        let mut cc = c.client().await?;
        join(&mut cc, pass).await?;
        if unwatched {
            cc.close().await?;
        }
        let t0 = Instant::now();
        // Count what is stored (events may be dropped for a client that lags behind).
        let shared = c.daemon.as_ref().expect("running").shared().clone();
        let dk = shared.room(&room)?.discovery_key;
        let stored = || -> Result<u64> { Ok(shared.store.room_feeds(&dk)?.iter().map(|(_, m)| m.stored()).sum()) };
        within(Duration::from_secs(600), "catch-up", async {
            while stored()? < total as u64 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            anyhow::Ok(())
        })
        .await??;
        let secs = t0.elapsed().as_secs_f64();
        ensure!(stored()? == total as u64);
        catchup.push(total as f64 / secs);
        println!("round {round}: catch-up of {total} messages in {secs:.3} s");
    }
    println!("send round trip p50 ms: {}", summary(send_p50));
    println!("send round trip p99 ms: {}", summary(send_p99));
    println!("live latency p50 ms:    {}", summary(live_p50));
    println!("live latency p95 ms:    {}", summary(live_p95));
    println!("live latency p99 ms:    {}", summary(live_p99));
    println!("catch-up messages/s:    {}", summary(catchup));
    Ok(())
}
