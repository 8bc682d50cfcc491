//! A room bigger than its session bound: on their defaults (12 sessions a room, at most 16),
//! 30 daemons each keep a bounded set of sessions, and every message still reaches every
//! member, passed on by the others.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peerlog_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_daemons_in_one_room_keep_bounded_sessions_and_all_get_every_message() -> Result<()> {
    const N: usize = 30;
    let defaults = peerlog::config::Config::default().limits;
    let mut nodes = vec![TestDaemon::start_bootstrap_node().await?];
    for _ in 1..N {
        nodes.push(TestDaemon::start_bootstrapped(&nodes[0]).await?);
    }
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await?);
    }
    let created = clients[0].call("rooms.create", json!({"name": "big"})).await?;
    let room = created["room"]["id"].as_str().context("room id")?.to_string();
    for c in clients.iter_mut().skip(1) {
        c.call("rooms.join", json!({"invite": created["invite"]})).await?;
    }
    let t0 = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        c.call("messages.send", json!({"room": room, "text": format!("from {i}")})).await?;
    }
    // Until all hold all: the sessions of every daemon, sampled all along.
    let mut most = 0;
    let mut sessions = vec![0; N];
    within(Duration::from_secs(180), "every daemon to hold every message", async {
        loop {
            let mut complete = 0;
            for (i, c) in clients.iter_mut().enumerate() {
                let peers = c.call("peers.list", json!({"room": room})).await?;
                sessions[i] = peers["peers"].as_array().map_or(0, Vec::len);
                most = most.max(sessions[i]);
                let h = c.call("messages.history", json!({"room": room, "limit": 100})).await?;
                if h["messages"].as_array().is_some_and(|m| m.len() == N) {
                    complete += 1;
                }
            }
            ensure!(most <= defaults.room_sessions_max, "a daemon had {most} sessions in the room: {sessions:?}");
            if complete == N {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await??;
    let total: usize = sessions.iter().sum();
    println!(
        "{N} daemons: all hold all {N} messages {:?} after the sends; sessions per daemon {sessions:?} (most {most}, mean {:.1})",
        t0.elapsed(),
        total as f64 / N as f64
    );
    ensure!(total < N * (N - 1), "a full mesh: {sessions:?}");
    Ok(())
}
