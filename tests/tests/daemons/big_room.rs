//! A room bigger than its session bound: on their defaults (12 sessions a room, at most 16),
//! 30 daemons each keep a bounded set of sessions, every message still reaches every
//! member, passed on by the others, every sender sees its message seen, and every member
//! shows as online to all the others, those it has no session with included (their signed
//! presence records, passed on).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use peerlog_tests::*;

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
    let (room, invite) = create(&mut clients[0], "big").await?;
    for c in clients.iter_mut().skip(1) {
        join_invite(c, &invite).await?;
    }
    let t0 = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        send(c, &room, &format!("from {i}")).await?;
    }
    // Until all hold all: the sessions of every daemon, sampled all along.
    let mut most = 0;
    let mut sessions = vec![0; N];
    within(Duration::from_secs(180), "every daemon to hold every message", async {
        loop {
            let mut complete = 0;
            for (i, c) in clients.iter_mut().enumerate() {
                sessions[i] = peers_list(c, Some(&room)).await?.len();
                most = most.max(sessions[i]);
                if history(c, &room, 100).await?.len() == N {
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
    // Connections (any protocol), printed for the record: the bound is on sessions; a
    // daemon also holds connections that carry no session of this room (DHT, refusals).
    let mut connected = Vec::with_capacity(N);
    for c in clients.iter_mut() {
        connected.push(node_info(c).await?.connected_peers);
    }
    println!("connected peers per daemon (any protocol): {connected:?}");
    for (i, c) in clients.iter_mut().enumerate() {
        let mine: Vec<_> = history(c, &room, 100).await?.into_iter().filter(|m| m.mine).collect();
        ensure!(mine.len() == 1 && mine[0].seen, "daemon {i} does not show its message as seen: {mine:?}");
    }
    let t1 = Instant::now();
    let mut online = vec![0; N];
    within(Duration::from_secs(60), "every member to show every other as online", async {
        loop {
            for (i, c) in clients.iter_mut().enumerate() {
                online[i] = members(c, &room).await?.iter().filter(|m| !m.mine && m.presence.online).count();
            }
            if online.iter().all(|&n| n == N - 1) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}: members shown online per daemon {online:?}, sessions {sessions:?}"))??;
    println!("every daemon shows the {} others online {:?} after all held all", N - 1, t1.elapsed());
    Ok(())
}
