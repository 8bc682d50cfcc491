//! Offline delivery: store-and-forward through another member, blind seeders, resuming a
//! catch-up after a restart. Real daemons on loopback; see `docs/PROTOCOL.md` ("Offline
//! delivery") for what they exercise.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::client::Client;
use peerlog::keys::RoomSecret;
use peerlog::log::store::Store;
use peerlog_proto::api::messages::MessageInfo;
use peerlog_proto::api::{codes, events, rooms};
use peerlog_tests::*;
use serde_json::json;

/// Waits for a `sync.progress` event of `room` with at least `n` entries done.
async fn wait_synced(c: &mut Client, room: &str, n: u64, limit: Duration) -> Result<events::SyncProgress> {
    let what = format!("sync.progress with {n} entries done in room {room}");
    Ok(c.wait_for::<events::SyncProgress>(limit, &what, |p| p.room == room && p.entries_done >= n).await?)
}

/// The room's figures in `rooms.list`.
async fn room_info(c: &mut Client, room: &str) -> Result<rooms::RoomInfo> {
    rooms_list(c).await?.into_iter().find(|r| r.id == room).with_context(|| format!("room {room} not listed"))
}

/// Waits until the room holds `n` entries over all its feeds, asking `rooms.list`: unlike
/// `sync.progress` events, this cannot be lost when a burst of `message` events makes the
/// client lag.
async fn wait_stored(c: &mut Client, room: &str, n: u64, limit: Duration) -> Result<()> {
    let mut last = 0;
    within(limit, &format!("{n} entries stored in room {room}"), async {
        loop {
            last = room_info(c, room).await?.entries_stored;
            if last >= n {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("{last} of {n} entries stored"))?
}

fn texts(history: &[MessageInfo]) -> Vec<String> {
    history.iter().filter_map(|m| m.text.clone()).collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| std::fs::read(p).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

/// A writes while B is offline, then A goes offline too; C, online throughout, serves A's
/// messages to B, which verifies them against A's signed head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_forward_a_member_serves_an_offline_writers_messages() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let mut a = TestDaemon::start_bootstrapped(&boot).await?;
    let mut b = TestDaemon::start_bootstrapped(&boot).await?;
    let c = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut ca, mut cc) = (a.client().await?, c.client().await?);
    let (room, invite) = create(&mut ca, "relay race").await?;
    join_invite(&mut cc, &invite).await?;
    {
        let mut cb = b.client().await?;
        join_invite(&mut cb, &invite).await?;
        send(&mut ca, &room, "before b left").await?;
        wait_for_text(&mut cb, &room, "before b left", WAIT).await?;
    }
    b.stop().await?;

    let sent: Vec<String> = (0..50).map(|i| format!("written while b was away {i:02}")).collect();
    for t in &sent {
        send(&mut ca, &room, t).await?;
    }
    wait_for_text(&mut cc, &room, sent.last().context("sent")?, WAIT).await?;
    a.stop().await?;

    // B comes back; the writer is gone, only C has its messages.
    b.restart().await?;
    let mut cb = b.client().await?;
    within(WAIT, "b to get a's 50 messages from c", async {
        loop {
            let h = full_history(&mut cb, &room).await?;
            if h.len() == 51 {
                return anyhow::Ok(h);
            }
            cb.wait_event(WAIT, "a message event on b", |e| e.method == "message").await?;
        }
    })
    .await??;
    let hb = full_history(&mut cb, &room).await?;
    let hc = full_history(&mut cc, &room).await?;
    ensure!(texts(&hb)[1..] == sent[..], "b's copy of a's messages differs: {:?}", texts(&hb));
    ensure!(hb == hc, "b and c disagree on the history or its order");
    let author = &hb[1].author;
    ensure!(hb[1..].iter().all(|m| &m.author == author && !m.mine), "all 50 are a's, not c's");
    Ok(())
}

/// A seeder holding only the seed capability stores and serves a room it cannot read: a
/// member who joins after the writer left gets everything from it. The seeder's data dir
/// holds no content key, no room secret and no plaintext, and its API says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_seeder_serves_a_room_it_cannot_read() -> Result<()> {
    const MARKER: &str = "plaintext-marker-7f3a9c";
    let boot = TestDaemon::start_bootstrap_node().await?;
    let mut a = TestDaemon::start_bootstrapped(&boot).await?;
    let mut seeder = TestDaemon::start_bootstrapped(&boot).await?;
    let mut ca = a.client().await?;
    let (room, invite) = create(&mut ca, "family").await?;
    let sent: Vec<String> = (0..300).map(|i| format!("{MARKER} message {i:03}")).collect();
    send_batch(&mut ca, &room, &sent[..200]).await?;
    for t in &sent[200..] {
        send(&mut ca, &room, t).await?;
    }

    let params = rooms::InviteParams { room: room.clone(), kind: Some("seed".into()) };
    let cap = ca.request::<rooms::Invite>(&params).await?.invite;
    ensure!(cap.starts_with("peerlog-seed:"), "{cap}");
    // A seed capability is not an invite.
    let e = join_invite(&mut ca, &cap).await.expect_err("a seed capability must not join");
    let e = e.downcast::<peerlog::client::ClientError>()?;
    ensure!(matches!(e, peerlog::client::ClientError::Rpc { code: codes::BAD_INVITE, .. }), "{e}");

    let mut cs = seeder.client().await?;
    let params = rooms::SeedParams { capability: cap.clone(), name: Some("seeded".into()) };
    let r = cs.request::<rooms::Seed>(&params).await?.room;
    ensure!(r.id == room && r.seeder, "{r:?}");
    wait_synced(&mut cs, &room, 300, WAIT).await?;
    for (method, params) in [
        ("messages.history", json!({"room": room})),
        ("messages.send", json!({"room": room, "text": "hi"})),
        ("rooms.invite", json!({"room": room})),
    ] {
        let e = cs.call(method, params).await.expect_err("a seeder cannot read, write or invite members");
        ensure!(matches!(e, peerlog::client::ClientError::Rpc { code: codes::SEEDER_ONLY, .. }), "{method}: {e}");
    }
    let e = join_invite(&mut cs, &invite).await.expect_err("seeder must leave first");
    ensure!(e.to_string().contains("leave"), "{e}");

    // The writer goes away; a new member gets the room from the seeder alone.
    a.stop().await?;
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let mut cb = b.client().await?;
    join_invite(&mut cb, &invite).await?;
    let done = wait_synced(&mut cb, &room, 300, WAIT).await?;
    // Bytes too: the seeder reported the feed's size, and (about) all of it arrived. Sizes
    // are of stored blocks, so a different split into blocks moves them by a few bytes.
    let (bytes_done, bytes_total) = (done.bytes_done, done.bytes_total);
    ensure!(
        bytes_total > 300 * 40 && bytes_done.abs_diff(bytes_total) <= bytes_total / 100,
        "sync.progress bytes: {done:?}"
    );
    let hb = full_history(&mut cb, &room).await?;
    ensure!(texts(&hb) == sent, "b did not get a's 300 messages in order from the seeder");

    // Nothing readable on the seeder's disk: no plaintext, no content key, no secret.
    seeder.stop().await?;
    let keys = RoomSecret::from_invite(&invite)?.keys();
    let secret = RoomSecret::from_invite(&invite)?.0;
    let dir = seeder.data_dir();
    ensure!(files(&dir).len() > 3, "the seeder's data dir is not where the test looks");
    ensure!(files_containing(&dir, MARKER.as_bytes()).is_empty(), "plaintext on the seeder's disk");
    let content_key = keys.content_key.context("member keys have a content key")?;
    ensure!(files_containing(&dir, &content_key).is_empty(), "content key on the seeder's disk");
    ensure!(files_containing(&dir, &secret).is_empty(), "room secret on the seeder's disk");
    // …while the same check finds the ciphertext it holds: the entries of A's feed.
    let store = Store::open(&dir.join("db"))?;
    let feeds = store.room_feeds(&keys.discovery_key)?;
    ensure!(feeds.len() == 1 && feeds[0].1.stored() == 300, "the seeder stores a's 300 entries");
    let sample = store.entries(&feeds[0].0, 150, 151)?;
    let ct = &sample.first().context("entry 150")?.ciphertext;
    ensure!(!files_containing(&dir, &ct[..32]).is_empty(), "the check would not see bytes that are there");
    Ok(())
}

/// A daemon stopped in the middle of a catch-up resumes from what it stored, and ends with
/// the writer's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_interrupted_by_a_restart_resumes_from_what_is_stored() -> Result<()> {
    const N: u64 = 200_000;
    let a = TestDaemon::start_bootstrap_node().await?;
    let mut ca = a.client().await?;
    subscribe(&mut ca, &[]).await?;
    let (room, invite) = create(&mut ca, "bulk").await?;
    for k in 0..N / 1000 {
        let texts: Vec<String> = (0..1000).map(|i| format!("bulk {:06}", k * 1000 + i)).collect();
        send_batch(&mut ca, &room, &texts).await?;
    }

    let mut b = TestDaemon::start_bootstrapped(&a).await?;
    {
        let mut cb = b.client().await?;
        subscribe(&mut cb, &["sync.progress"]).await?;
        join_invite(&mut cb, &invite).await?;
        let first = wait_synced(&mut cb, &room, 1, WAIT).await?;
        ensure!(first.entries_total == N, "b learned the room's size: {first:?}");
    }
    b.stop().await?;
    let stored = {
        let store = Store::open(&b.data_dir().join("db"))?;
        let dk = RoomSecret::from_invite(&invite)?.keys().discovery_key;
        store.room_feeds(&dk)?.iter().map(|(_, m)| m.stored()).sum::<u64>()
    };
    ensure!(0 < stored && stored < N, "stopped mid-sync: {stored} of {N} stored");

    b.restart().await?;
    let mut cb = b.client().await?;
    subscribe(&mut cb, &["sync.progress", "lagged"]).await?;
    let mut seen = Vec::new();
    within(Duration::from_secs(120), "b's progress after its restart", async {
        loop {
            let e =
                cb.wait_event(WAIT, "sync.progress", |e| e.method == "sync.progress" || e.method == "lagged").await?;
            // Behind the burst of message events the last progress events may be lost.
            let Some(progress) = e.decode::<events::SyncProgress>() else { return anyhow::Ok(()) };
            let done = progress?.entries_done;
            if done >= N {
                return anyhow::Ok(());
            }
            seen.push(done);
        }
    })
    .await??;
    wait_stored(&mut cb, &room, N, Duration::from_secs(120)).await?;
    ensure!(
        seen.first().is_some_and(|&first| first >= stored) && seen.windows(2).all(|w| w[0] <= w[1]),
        "progress after the restart must start from what was stored ({stored}) and only grow: {seen:?}"
    );
    let (last_a, last_b) = (history(&mut ca, &room, 1000).await?, history(&mut cb, &room, 1000).await?);
    let ids = |h: &[MessageInfo]| -> Vec<(String, Option<String>)> {
        h.iter().map(|m| (m.id.clone(), m.text.clone())).collect()
    };
    ensure!(ids(&last_a).len() == 1000 && ids(&last_a) == ids(&last_b), "b's newest page differs from a's");
    println!("stopped with {stored} of {N} stored; resumed and finished");
    Ok(())
}

/// A joiner with two peers that both hold the room's two feeds fetches each entry once, and
/// the feeds come from different peers in parallel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_fetches_each_feed_once_spread_over_its_peers() -> Result<()> {
    joiner_fetches_once_from_both(20_000, 20_000).await
}

/// One feed held by two peers: its ranges come from both, each entry once. (A piece below
/// one not yet stored is held in memory until it can be verified.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_fetches_one_feeds_ranges_from_both_peers() -> Result<()> {
    joiner_fetches_once_from_both(200_000, 0).await
}

/// a writes `n_a` and c `n_c` messages; both hold all of them; then b joins with a and c
/// as peers. b must receive every entry exactly once, and both a and c must serve some.
async fn joiner_fetches_once_from_both(n_a: u64, n_c: u64) -> Result<()> {
    let total = n_a + n_c;
    let a = TestDaemon::start_bootstrap_node().await?;
    let c = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cc) = (a.client().await?, c.client().await?);
    let (room, invite) = create(&mut ca, "two copies").await?;
    join_invite(&mut cc, &invite).await?;
    // 40,000 message events would overflow the event queue and drop progress events.
    subscribe(&mut ca, &["sync.progress"]).await?;
    subscribe(&mut cc, &["sync.progress"]).await?;
    for (client, who, n) in [(&mut ca, "a", n_a), (&mut cc, "c", n_c)] {
        for k in 0..n / 10_000 {
            let texts: Vec<String> = (0..10_000).map(|i| format!("{who} {:06}", k * 10_000 + i)).collect();
            send_batch(client, &room, &texts).await?;
        }
    }
    wait_stored(&mut ca, &room, total, WAIT).await?;
    wait_stored(&mut cc, &room, total, WAIT).await?;
    let served_before =
        (room_info(&mut ca, &room).await?.entries_served, room_info(&mut cc, &room).await?.entries_served);

    // B knows both: the bootstrap is a, and c is a's room peer (peer exchange, DHT).
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let mut cb = b.client().await?;
    subscribe(&mut cb, &["peer.joined"]).await?;
    join_invite(&mut cb, &invite).await?;
    let mut peers = std::collections::HashSet::new();
    within(WAIT, "b to have sessions with both a and c", async {
        while peers.len() < 2 {
            let e = cb.wait_for::<events::PeerJoined>(WAIT, "peer.joined", |_| true).await?;
            peers.insert(e.peer);
        }
        anyhow::Ok(())
    })
    .await??;
    wait_stored(&mut cb, &room, total, Duration::from_secs(60)).await?;
    // The room's counters are published after each round of the replication task, so the
    // count received may trail the count stored for a moment.
    let received = within(WAIT, &format!("b to count {total} entries received"), async {
        loop {
            let received = room_info(&mut cb, &room).await?.entries_received;
            if received >= total {
                return anyhow::Ok(received);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let served = (
        room_info(&mut ca, &room).await?.entries_served - served_before.0,
        room_info(&mut cc, &room).await?.entries_served - served_before.1,
    );
    println!("b received {received} entries for {total} stored; a served {}, c served {}", served.0, served.1);
    ensure!(received == total, "b received {received} entries to store {total}: duplicates were fetched");
    ensure!(served.0 > 0 && served.1 > 0, "one peer served everything: a {}, c {}", served.0, served.1);
    Ok(())
}

/// Copies a directory tree (a data dir backup).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A writer restored from an old backup holds less of its own feed than its peers do. It
/// fetches its own newer entries back before writing on, instead of signing those seqs a
/// second time (a fork that would make peers refuse its feed for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_restored_from_a_backup_fetches_its_own_feed_before_writing_on() -> Result<()> {
    let peer = TestDaemon::start_bootstrap_node().await?;
    let mut w = TestDaemon::start_bootstrapped(&peer).await?;
    let (mut cp, mut cw) = (peer.client().await?, w.client().await?);
    let room = join(&mut cp, super::PASS).await?;
    join(&mut cw, super::PASS).await?;
    send(&mut cw, &room, "one").await?;
    wait_for_text(&mut cp, &room, "one", WAIT).await?;

    drop(cw);
    w.stop().await?;
    let backup = tempfile::tempdir()?;
    copy_tree(&w.data_dir(), backup.path())?;
    w.restart().await?;
    let mut cw = w.client().await?;
    send(&mut cw, &room, "two").await?;
    send(&mut cw, &room, "three").await?;
    wait_for_text(&mut cp, &room, "three", WAIT).await?;

    // Restore the backup (it holds "one" only) and start again.
    drop(cw);
    w.stop().await?;
    std::fs::remove_dir_all(w.data_dir())?;
    copy_tree(backup.path(), &w.data_dir())?;
    w.restart().await?;
    let mut cw = w.client().await?;
    wait_stored(&mut cw, &room, 3, WAIT).await.context("the restored writer fetching its own entries back")?;
    send(&mut cw, &room, "four").await?;
    wait_for_text(&mut cp, &room, "four", WAIT).await?;

    let forks = room_info(&mut cp, &room).await?.forks;
    ensure!(forks.is_empty(), "the peer recorded a fork: {forks:?}");
    let at_peer = texts(&full_history(&mut cp, &room).await?);
    ensure!(at_peer == ["one", "two", "three", "four"], "the peer holds {at_peer:?}");
    ensure!(texts(&full_history(&mut cw, &room).await?) == at_peer, "the writer's history differs from the peer's");
    Ok(())
}

/// a (a bootstrap node) and b in one room; "one", "two", "three" written by b if
/// `b_writes`, else by a; then b stops, the last byte of its copy of that feed is flipped (a
/// torn write, a bad sector), and b starts again. Returns a, b and the room.
async fn damage_at_b(b_writes: bool) -> Result<(TestDaemon, TestDaemon, String)> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let mut b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, super::PASS).await?;
    join(&mut cb, super::PASS).await?;
    let (writer, reader) = if b_writes { (&mut cb, &mut ca) } else { (&mut ca, &mut cb) };
    for t in ["one", "two", "three"] {
        send(writer, &room, t).await?;
    }
    let author = wait_for_text(reader, &room, "three", WAIT).await?.author;
    drop(cb);
    b.stop().await?;
    let path = b.data_dir().join("db").join("blocks").join(&author);
    let mut bytes = std::fs::read(&path).with_context(|| format!("b's copy of the feed at {}", path.display()))?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&path, bytes)?;
    b.restart().await?;
    Ok((a, b, room))
}

/// Waits until `room`'s history at `c` holds every one of `want`; returns its texts.
async fn history_with(c: &mut Client, room: &str, want: &[&str], what: &str) -> Result<Vec<String>> {
    within(WAIT, what, async {
        loop {
            let now = texts(&full_history(c, room).await?);
            if want.iter().all(|t| now.contains(&t.to_string())) {
                return anyhow::Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?
}

/// A block damaged on disk is found when it is read (here by the check of a new entry
/// against its predecessor), forgotten, and fetched again from a peer that holds it: the
/// messages come back, and the writer's new ones still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_fetched_again_from_a_peer() -> Result<()> {
    let (a, b, room) = damage_at_b(false).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    // The session with a is up and has exchanged heads before anything reads the damaged
    // block: only the damage, once found, can make b fetch those entries again. a's next
    // message links to the damaged entry, which b must check it against: b takes it
    // anyway (used to end the session, for good) and fetches the damaged ones again.
    send(&mut ca, &room, "four").await?;
    wait_for_text(&mut cb, &room, "four", WAIT).await?;
    let back = history_with(
        &mut cb,
        &room,
        &["one", "two", "three", "four"],
        "the damaged messages to be fetched again from a",
    )
    .await?;
    ensure!(back.len() == 4, "{back:?}");
    Ok(())
}

/// A block of our *own* feed damaged on disk is found when history reads it, forgotten,
/// and fetched back from a peer that holds it (peers' heads of our feed used to be ignored
/// unless they were ahead of ours, so the hole stayed for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_of_our_own_feed_is_fetched_back_from_a_peer() -> Result<()> {
    // b writes, a holds a copy; b restarts (a, the bootstrap node, keeps its address).
    let (a, b, room) = damage_at_b(true).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let first = texts(&full_history(&mut cb, &room).await?);
    ensure!(!first.contains(&"three".to_string()), "the damaged block was read as intact: {first:?}");
    let back =
        history_with(&mut cb, &room, &["one", "two", "three"], "b's own damaged messages to be fetched back from a")
            .await?;
    ensure!(back.len() == 3, "{back:?}");
    // And b writes on, and a takes it.
    send(&mut cb, &room, "four").await?;
    wait_for_text(&mut ca, &room, "four", WAIT).await?;
    Ok(())
}
