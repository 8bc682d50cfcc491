//! Multi-daemon tests: real daemons (libp2p on loopback, sled in temp dirs) driven through
//! the WebSocket API, plus a raw replication peer for what an honest daemon never sends.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peerlog::log::store::Store;
use peerlog::log::{new_writer, Body, FeedCipher};
use peerlog_proto::api::messages::MessageInfo;
use peerlog_proto::api::node::ConnectionKind;
use peerlog_proto::api::{codes, events, peers, rooms};
use peerlog_proto::wire::{FeedKey, Frame, Refusal};
use peerlog_tests::*;
use serde_json::{json, Value};

#[path = "daemons/big_room.rs"]
mod big_room;
#[path = "daemons/browser.rs"]
mod browser;
#[path = "daemons/chat.rs"]
mod chat;
#[path = "daemons/examples.rs"]
mod examples;
#[path = "daemons/files.rs"]
mod files;
#[path = "daemons/hostile.rs"]
mod hostile;
#[path = "daemons/membership.rs"]
mod membership;
#[path = "daemons/offline.rs"]
mod offline;

const PASS: &str = "correct horse battery staple tangerine";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_find_each_other_through_a_bootstrap_node_and_chat() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let a = TestDaemon::start_bootstrapped(&boot).await?;
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASS).await?;
    ensure!(join(&mut cb, PASS).await? == room, "same passphrase must give the same room id");

    // A and B know only the bootstrap node: they must find each other on the DHT.
    let t0 = Instant::now();
    send(&mut ca, &room, "hello from a").await?;
    let got = wait_for_text(&mut cb, &room, "hello from a", Duration::from_secs(5)).await?;
    ensure!(!got.mine, "b sees a's message as someone else's");
    let first = t0.elapsed();
    let t1 = Instant::now();
    send(&mut cb, &room, "hello from b").await?;
    wait_for_text(&mut ca, &room, "hello from b", Duration::from_secs(5)).await?;
    println!("discovery + first delivery: {first:?}; reply delivered in {:?}", t1.elapsed());

    let list = peers_list(&mut ca, Some(&room)).await?;
    let (b_id, boot_id) = (b.peer_id()?.to_string(), boot.peer_id()?.to_string());
    ensure!(list.iter().any(|p| p.peer_id == b_id), "a lists b as a room peer: {list:?}");
    ensure!(list.iter().all(|p| p.peer_id != boot_id), "the bootstrap node is not a room peer");
    ensure!(list[0].connection == Some(ConnectionKind::Direct), "loopback connection reported as direct: {list:?}");

    // Both ends hold the same history in the same order.
    // (`mine` and `seen` depend on who looks; everything else must match.)
    let shared_view = |h: Vec<MessageInfo>| -> Vec<MessageInfo> {
        h.into_iter().map(|m| MessageInfo { mine: false, seen: false, ..m }).collect()
    };
    let (ha, hb) = (full_history(&mut ca, &room).await?, full_history(&mut cb, &room).await?);
    let (ha, hb) = (shared_view(ha), shared_view(hb));
    ensure!(ha == hb, "histories differ:\n{ha:?}\n{hb:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_keeps_identity_rooms_and_history() -> Result<()> {
    let mut d = TestDaemon::start().await?;
    let peer = d.peer_id()?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    for i in 0..5 {
        send(&mut c, &room, &format!("message {i}")).await?;
    }
    let before = full_history(&mut c, &room).await?;
    let invite = invite(&mut c, &room).await?;
    drop(c);
    d.restart().await?;
    ensure!(d.peer_id()? == peer, "identity changed across restart");
    let mut c = d.client().await?;
    let rooms = rooms_list(&mut c).await?;
    ensure!(rooms[0].id == room, "room not kept: {rooms:?}");
    ensure!(full_history(&mut c, &room).await? == before, "history changed across restart");
    ensure!(peerlog_tests::invite(&mut c, &room).await? == invite, "room secret changed");
    // The writer continues its feed where it stopped.
    let id = send(&mut c, &room, "after restart").await?;
    ensure!(id.ends_with(":5"), "expected seq 5 after 5 messages, got {id}");
    // Secrets at rest are private.
    use std::os::unix::fs::PermissionsExt;
    for f in ["identity.key", "api-token"] {
        let mode = std::fs::metadata(d.data_dir().join(f))?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{f} has mode {mode:o}");
    }
    let mode = std::fs::metadata(d.data_dir())?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "data dir has mode {mode:o}");
    Ok(())
}

/// A panic in one of the daemon's tasks is a bug: it is logged with the task's name and
/// the daemon reports itself failed (`main` then exits 70 for the service manager to
/// restart it) instead of running on with a part missing. It still shuts down cleanly, and
/// starts again on its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_the_daemon_which_stops_cleanly_and_starts_again() -> Result<()> {
    let mut d = TestDaemon::start().await?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    send(&mut c, &room, "before the bug").await?;
    let daemon = d.daemon.as_ref().context("running")?;
    daemon.service().tasks().spawn("a buggy task", async {
        if true {
            panic!("index out of bounds");
        }
    });
    let why = within(WAIT, "the daemon to report the panic", daemon.failed()).await?;
    ensure!(why.contains("a buggy task") && why.contains("index out of bounds"), "{why}");
    drop(c);
    d.restart().await.context("a failed daemon must still shut down cleanly")?;
    let mut c = d.client().await?;
    let texts = texts(&mut c, &room).await?;
    ensure!(texts == ["before the bug"], "{texts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_receives_all_1000_messages_in_the_senders_order() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let mut ca = a.client().await?;
    let room = join(&mut ca, PASS).await?;
    for i in 0..1000 {
        send(&mut ca, &room, &format!("m{i:04}")).await?;
    }
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let mut cb = b.client().await?;
    let t0 = Instant::now();
    join(&mut cb, PASS).await?;
    let mut n = 0;
    let mut progress = Vec::new();
    within(Duration::from_secs(60), "b to receive 1000 message events", async {
        while n < 1000 {
            let e = cb.next_event().await?;
            if e.decode::<events::Message>().is_some() {
                n += 1;
            } else if let Some(p) = e.decode::<events::SyncProgress>() {
                let p = p?;
                progress.push((p.entries_done, p.entries_total));
            }
        }
        anyhow::Ok(())
    })
    .await
    .with_context(|| format!("b received only {n} of 1000 messages"))??;
    ensure!(progress.last() == Some(&(1000, 1000)), "sync.progress did not end at 1000/1000: {progress:?}");
    ensure!(progress.windows(2).all(|w| w[0].0 <= w[1].0), "sync.progress went backwards: {progress:?}");
    println!("1000 messages caught up in {:?} (including join)", t0.elapsed());
    let (ha, hb) = (full_history(&mut ca, &room).await?, full_history(&mut cb, &room).await?);
    ensure!(hb.len() == 1000, "b holds {} messages", hb.len());
    let ids = |h: &[MessageInfo]| h.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    ensure!(ids(&ha) == ids(&hb), "b's order differs from a's");
    let text = |i: usize| hb[i].text.as_deref();
    ensure!(text(0) == Some("m0000") && text(999) == Some("m0999"), "order is not the send order");
    Ok(())
}

/// The API speaks JSON-RPC 2.0 exactly: every reply says `"jsonrpc": "2.0"`, a request
/// without an id (a notification) is carried out and not answered, a batch is answered
/// with an array in order (notifications left out), an empty or oversized batch with one
/// error, and events are notifications (with API version 1's `event` member, for now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_json_rpc_2() -> Result<()> {
    let d = TestDaemon::start_bootstrap_node().await?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    // A notification: sent, and no reply comes; the next reply is the next request's.
    c.send_raw(
        &json!({"jsonrpc": "2.0", "method": "messages.send", "params": {"room": room, "text": "by notification"}})
            .to_string(),
    )
    .await?;
    c.send_raw(&json!({"jsonrpc": "2.0", "id": "after", "method": "node.info"}).to_string()).await?;
    let r = c.next_response().await?;
    ensure!(r.id == json!("after") && r.jsonrpc == "2.0" && r.result.is_some(), "{r:?}");
    // Requests on one connection run concurrently: the send finishes when it is durable,
    // maybe after the reply above. Its message event says it was carried out.
    wait_for_text(&mut c, &room, "by notification", WAIT).await.context("the notification was not carried out")?;
    // "id": null is a request, not a notification: it is answered.
    c.send_raw(&json!({"jsonrpc": "2.0", "id": null, "method": "rooms.list"}).to_string()).await?;
    ensure!(c.next_response().await?.id.is_null());
    // A batch: replies in order, the notification in it unanswered, errors in place.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "rooms.list"},
        {"jsonrpc": "2.0", "method": "messages.send", "params": {"room": room, "text": "batched notification"}},
        {"jsonrpc": "2.0", "id": 2, "method": "no.such.method"},
        {"jsonrpc": "2.0", "id": 3, "method": "messages.send", "params": {"room": room, "text": "batched"}},
        7
    ]);
    c.send_raw(&batch.to_string()).await?;
    let replies = c.next_batch().await?;
    let ids: Vec<Value> = replies.iter().map(|r| r.id.clone()).collect();
    ensure!(ids == vec![json!(1), json!(2), json!(3), Value::Null], "batch replies: {replies:?}");
    ensure!(replies[0].result.is_some() && replies[2].result.is_some(), "{replies:?}");
    ensure!(replies[1].error.as_ref().map(|e| e.code) == Some(codes::METHOD_NOT_FOUND), "{replies:?}");
    ensure!(replies[3].error.as_ref().map(|e| e.code) == Some(codes::INVALID_REQUEST), "{replies:?}");
    ensure!(replies.iter().all(|r| r.jsonrpc == "2.0"));
    // A batch of notifications only: nothing comes back.
    c.send_raw(&json!([{"jsonrpc": "2.0", "method": "rooms.list"}]).to_string()).await?;
    for bad in [
        "[]".to_string(),
        serde_json::to_string(&vec![json!({"jsonrpc": "2.0", "id": 1, "method": "rooms.list"}); 101])?,
    ] {
        c.send_raw(&bad).await?;
        let r = c.next_response().await?;
        ensure!(r.error.map(|e| e.code) == Some(codes::INVALID_REQUEST) && r.id.is_null(), "{bad:.20}…");
    }
    // Events are notifications.
    let mut other = d.client().await?;
    send(&mut other, &room, "an event").await?;
    // The wire shape itself is under test here, so the event is read as JSON.
    let e =
        c.wait_event(WAIT, "the message event", |e| e.method == "message" && e.params["text"] == "an event").await?;
    let wire = serde_json::to_value(&e)?;
    ensure!(wire["jsonrpc"] == "2.0" && wire["method"] == "message" && wire.get("id").is_none(), "{wire}");
    ensure!(wire["event"] == "message", "API version 1's event member is kept for now: {wire}");
    let info = c.request::<peerlog_proto::api::node::Info>(&Default::default()).await?;
    ensure!(info.api_version == 2, "api_version {}", info.api_version);
    Ok(())
}

/// `GET /api/openrpc.json` serves the OpenRPC document (the same as `peerlog openrpc` and
/// `docs/openrpc.json`), and every method it lists is one the daemon serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openrpc_document_is_served_and_lists_what_the_daemon_serves() -> Result<()> {
    let d = TestDaemon::start_bootstrap_node().await?;
    let addr = d.running()?.api_addr();
    let (status, body) = http_get(&format!("http://{addr}/api/openrpc.json"), None).await?;
    ensure!(status == 200, "status {status}");
    let served: Value = serde_json::from_slice(&body)?;
    ensure!(served == peerlog_proto::api::openrpc::document(), "the served document differs from the generated one");
    let mut c = d.client().await?;
    let names = peerlog_proto::api::openrpc::method_names();
    ensure!(names.len() >= 25, "{names:?}");
    for name in names {
        // Params by position are not accepted: every served method says so, without
        // doing anything; an unknown one says it does not exist.
        let err = c.call(name, json!([1])).await.expect_err("positional params");
        ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::INVALID_PARAMS, .. }), "{name}: {err}");
    }
    Ok(())
}

/// A browser session: the tokened link trades the API token for a session cookie
/// (`HttpOnly`, `SameSite=Strict`, `Path=/`, named per port), which then authorizes the
/// WebSocket with the Origin check unchanged; the CLI credential opens none; rotating the
/// token (the CLI credential only) ends the cookie and the connections made with the old
/// token, and not the CLI's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_signs_a_browser_in_until_the_token_rotates() -> Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let d = TestDaemon::start_bootstrap_node().await?;
    let addr = d.running()?.api_addr();
    let (token, cli) = (d.running()?.token(), d.running()?.cli_token().to_string());
    let origin = format!("http://127.0.0.1:{}", addr.port());
    let session = format!("http://{addr}/api/session");
    let bearer = format!("Bearer {token}");
    let (status, head, _) = http_request("POST", &session, &[("Authorization", &bearer), ("Origin", &origin)]).await?;
    ensure!(status == 204, "POST /api/session: {status}\n{head}");
    let set = head.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).context("Set-Cookie")?;
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        ensure!(set.contains(attr), "cookie without {attr}: {set}");
    }
    ensure!(!set.contains(&token), "the cookie is the token itself: {set}");
    let pair = set.split_once(':').context("header")?.1.split(';').next().context("pair")?.trim().to_string();
    ensure!(pair.starts_with(&format!("peerlog-{}=", addr.port())), "cookie name {pair}");
    let (status, _, _) = http_request("GET", &session, &[("Cookie", &pair)]).await?;
    ensure!(status == 204, "GET /api/session with the cookie: {status}");
    let (status, _, _) = http_request("GET", &session, &[("Cookie", "peerlog-1=0000")]).await?;
    ensure!(status == 401, "a wrong cookie: {status}");
    // The cookie as the WebSocket's credential: with the page's Origin yes, another no.
    let ws = |origin: String, cookie: String| async move {
        let mut r = format!("ws://{addr}/api/ws").into_client_request()?;
        r.headers_mut().insert("origin", origin.parse()?);
        r.headers_mut().insert("cookie", cookie.parse()?);
        anyhow::Ok(match tokio_tungstenite::connect_async(r).await {
            Ok((stream, resp)) => (resp.status().as_u16(), Some(stream)),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
            Err(e) => return Err(e.into()),
        })
    };
    let (status, browser) = ws(origin.clone(), pair.clone()).await?;
    ensure!(status == 101, "the cookie did not open the WebSocket: {status}");
    let mut browser = browser.context("socket")?;
    ensure!(ws("http://evil.example".into(), pair.clone()).await?.0 == 403, "a foreign Origin with the cookie");
    // The CLI credential opens no browser session.
    let cli_bearer = format!("Bearer {cli}");
    let (status, _, _) = http_request("POST", &session, &[("Authorization", &cli_bearer)]).await?;
    ensure!(status == 403, "the CLI credential opened a session: {status}");
    // Only the CLI credential rotates the token.
    let mut api = d.client().await?;
    let err = api.request::<peerlog_proto::api::node::RotateToken>(&Default::default()).await.expect_err("API token");
    ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::LOCAL_ONLY, .. }), "{err}");
    let mut c = d.cli_client().await?;
    let rotated = c.request::<peerlog_proto::api::node::RotateToken>(&Default::default()).await?;
    ensure!(rotated.rotated && d.running()?.token() != token, "the token did not change");
    ensure!(
        std::fs::read_to_string(d.data_dir().join("api-token"))?.trim() == d.running()?.token(),
        "the file holds the new token"
    );
    // The browser's socket is closed with the reason; the cookie and old token are dead.
    use futures::StreamExt;
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(m) = browser.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))) = m {
                return Some((u16::from(f.code), f.reason.to_string()));
            }
        }
        None
    })
    .await
    .context("the old session's socket stayed open")?;
    ensure!(closed.as_ref().is_some_and(|(code, why)| *code == 1008 && why.contains("rotated")), "{closed:?}");
    let (status, _, _) = http_request("GET", &session, &[("Cookie", &pair)]).await?;
    ensure!(status == 401, "the old cookie still works: {status}");
    ensure!(
        api.request::<peerlog_proto::api::node::Info>(&Default::default()).await.is_err(),
        "the old token's client"
    );
    ensure!(
        c.request::<peerlog_proto::api::node::Info>(&Default::default()).await.is_ok(),
        "the CLI's client was closed"
    );
    ensure!(d.client().await.is_ok(), "the new token does not work");
    Ok(())
}

/// `GET /metrics` (the API token) serves Prometheus metrics that parse: libp2p's own and
/// peerlog's, with figures that match what happened (a room, a session, entries stored and
/// served, API requests by method, flushes timed). Without a credential: 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_parse() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    send(&mut ca, &room, "counted").await?;
    wait_for_text(&mut cb, &room, "counted", WAIT).await?;
    let url = format!("http://{}/metrics", a.running()?.api_addr());
    ensure!(http_get(&url, None).await?.0 == 401, "metrics without a credential");
    let (status, body) = http_get(&url, Some(&format!("Bearer {}", a.running()?.token()))).await?;
    ensure!(status == 200, "status {status}");
    let text = String::from_utf8(body)?;
    ensure!(text.trim_end().ends_with("# EOF"), "not OpenMetrics: no # EOF");
    // Every sample: a name, optional labels, a number.
    let mut samples: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("sample {line:?}"))?;
        let value: f64 = value.parse().with_context(|| format!("value of {line:?}"))?;
        let name = series.split('{').next().unwrap_or("");
        ensure!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "name {line:?}");
        samples.push((series.to_string(), value));
    }
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    ensure!(value("peerlog_rooms") == Some(1.0), "peerlog_rooms: {:?}", value("peerlog_rooms"));
    ensure!(value("peerlog_sessions").is_some_and(|v| v >= 1.0), "peerlog_sessions");
    ensure!(value("peerlog_entries_stored").is_some_and(|v| v >= 1.0), "peerlog_entries_stored");
    ensure!(value("peerlog_catchup_backlog_entries") == Some(0.0), "a backlog after the catch-up:\n{text}");
    ensure!(
        value("peerlog_api_requests_total{method=\"messages.send\",code=\"0\"}").is_some_and(|v| v >= 1.0),
        "messages.send not counted:\n{text}"
    );
    ensure!(value("peerlog_flush_seconds_count").is_some_and(|v| v >= 1.0), "no flush timed");
    ensure!(samples.iter().any(|(s, v)| s.starts_with("peerlog_connections{") && *v >= 1.0), "no connection by kind");
    ensure!(samples.iter().any(|(s, _)| s.starts_with("libp2p_")), "no libp2p metrics");
    Ok(())
}

/// A backup restored on a fresh machine: the daemon whose machine was lost is gone; its
/// backup (identity, room secrets and admins, contacts, blocks, name, person key; sealed) is restored into a new
/// data dir, and the daemon started there is the same node, rejoins the room, catches up
/// from the peer that stayed (its own messages too) and writes on without a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restored_on_a_fresh_machine_rejoins_and_catches_up() -> Result<()> {
    use peerlog_proto::api::node;
    let boot = TestDaemon::start_bootstrap_node().await?;
    let mut a = TestDaemon::start_bootstrapped(&boot).await?;
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut ca, mut cb) = (a.cli_client().await?, b.client().await?);
    set_name(&mut ca, "Ada").await?;
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    for i in 0..3 {
        send(&mut ca, &room, &format!("before the loss {i}")).await?;
    }
    send(&mut cb, &room, "from b").await?;
    wait_for_text(&mut ca, &room, "from b", WAIT).await?;
    wait_for_text(&mut cb, &room, "before the loss 2", WAIT).await?;
    let bob = members(&mut ca, &room).await?.into_iter().find(|m| !m.mine).context("b among a's members")?.author;
    let rename = peers::ContactParams { peer: bob.clone(), nickname: Some("bob".into()), ..Default::default() };
    ca.request::<peers::Rename>(&rename).await?;
    let stranger = "ab".repeat(32);
    ca.request::<peers::Block>(&peers::PeerRoomParams { peer: stranger.clone(), room: None }).await?;
    // A room with Ada as its admin, and a person key (made by showing a link code).
    let (club, _) = create(&mut ca, "club").await?;
    let club_admin = rooms_list(&mut ca).await?.into_iter().find(|r| r.id == club).and_then(|r| r.admin);
    ca.request::<peerlog_proto::api::devices::Link>(&Default::default()).await?;
    let person = ca.request::<peerlog_proto::api::devices::List>(&Default::default()).await?.person;
    ensure!(club_admin.is_some() && person.is_some(), "no admin ({club_admin:?}) or no person ({person:?})");
    let weak = ca.request::<node::CreateBackup>(&node::BackupParams { passphrase: "short".into() }).await;
    ensure!(weak.is_err(), "a backup sealed with a short passphrase");
    let mut api = a.client().await?;
    let refused = api.request::<node::CreateBackup>(&node::BackupParams { passphrase: "x".repeat(20) }).await;
    ensure!(refused.is_err(), "the API token made a backup");
    let backup =
        ca.request::<node::CreateBackup>(&node::BackupParams { passphrase: "backup passphrase".into() }).await?;
    ensure!(backup.rooms == 2, "{} rooms (the link room is not one)", backup.rooms);
    let old_peer = a.peer_id()?;
    drop((ca, api));
    a.stop().await?; // the machine is lost

    let bytes = data_encoding::BASE64.decode(backup.backup.as_bytes())?;
    ensure!(peerlog::backup::Backup::open(&bytes, "wrong passphrase").is_err(), "opened with a wrong passphrase");
    let fresh = tempfile::tempdir()?;
    let data = fresh.path().join("peerlog");
    peerlog::backup::Backup::open(&bytes, "backup passphrase")?.restore(&data)?;
    ensure!(
        peerlog::backup::Backup::open(&bytes, "backup passphrase")?.restore(&data).is_err(),
        "restored over a node"
    );
    let boot_addr = boot.p2p_addr().await?;
    let c = TestDaemon::start_with(|cfg| {
        cfg.data_dir = Some(data.clone());
        cfg.bootstrap = vec![boot_addr];
    })
    .await?;
    ensure!(c.peer_id()? == old_peer, "the restored node has another identity");
    let mut cc = c.client().await?;
    let rooms = rooms_list(&mut cc).await?;
    ensure!(rooms.len() == 2 && rooms.iter().any(|r| r.id == room), "{rooms:?}");
    // Ada is still the club's admin (its binding restored: else any member's removal would
    // count), and still holds her person key.
    let restored_admin = rooms.iter().find(|r| r.id == club).and_then(|r| r.admin.clone());
    ensure!(restored_admin == club_admin, "the club's admin after the restore: {restored_admin:?}");
    let devices = cc.request::<peerlog_proto::api::devices::List>(&Default::default()).await?;
    ensure!(
        devices.person == person && devices.devices.iter().any(|d| d.this && d.holds_person_key),
        "the person after the restore: {devices:?}"
    );
    within(WAIT, "the restored daemon to catch up", async {
        loop {
            let texts = texts(&mut cc, &room).await?;
            if (0..3).all(|i| texts.contains(&format!("before the loss {i}"))) && texts.contains(&"from b".into()) {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    let members = members(&mut cc, &room).await?;
    let b_row = members.iter().find(|m| m.author == bob);
    ensure!(b_row.is_some_and(|m| m.nickname.as_deref() == Some("bob")), "the nickname was not restored: {members:?}");
    let blocked = cc.request::<peers::Blocked>(&Default::default()).await?.blocked;
    ensure!(blocked == [stranger], "the block was not restored: {blocked:?}");
    ensure!(cc.request::<node::Info>(&Default::default()).await?.display_name.as_deref() == Some("Ada"));
    // It writes on: b takes the new message, and sees no fork.
    send(&mut cc, &room, "after the restore").await?;
    wait_for_text(&mut cb, &room, "after the restore", WAIT).await?;
    let rooms = rooms_list(&mut cb).await?;
    ensure!(rooms[0].forks.is_empty(), "a fork after the restore: {rooms:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_passphrases_never_exchange_data() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let a = TestDaemon::start_bootstrapped(&boot).await?;
    let mut ca = a.client().await?;
    let room = join(&mut ca, PASS).await?;
    send(&mut ca, &room, "secret").await?;

    // A peer that knows the room's public discovery key but not its passphrase.
    let right = room_keys(PASS);
    let wrong = room_keys("a different passphrase entirely");
    let raw = RawPeer::start().await?;
    let answer = raw.open(a.p2p_addr().await?, a.peer_id()?, right.discovery_key, wrong.auth_key).await?;
    let mut frames = match answer {
        Ok(mut s) => s.expect_closed().await?,
        Err(f) => vec![f],
    };
    frames.retain(|f| !matches!(f, Frame::Auth { .. }));
    ensure!(
        frames == vec![Frame::Refuse { reason: Refusal::BadAuth }],
        "expected only a BadAuth refusal, got {frames:?}"
    );

    // A daemon in another room on the same DHT never sees the message.
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let mut cb = b.client().await?;
    let other = join(&mut cb, "a different passphrase entirely").await?;
    ensure!(other != room);
    send(&mut ca, &room, "still secret").await?;
    let peers = peers_list(&mut ca, None).await?;
    ensure!(peers.is_empty(), "no room peers expected: {peers:?}");
    ensure!(full_history(&mut cb, &other).await?.is_empty(), "b received data from another room");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_entries_are_rejected_and_not_stored() -> Result<()> {
    let d = TestDaemon::start().await?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    let keys = room_keys(PASS);

    // The raw peer writes a real feed of 3 messages in a scratch store.
    let scratch_dir = tempfile::tempdir()?;
    let scratch = Store::open(scratch_dir.path())?;
    let writer = new_writer();
    let feed = FeedKey(writer.verifying_key().to_bytes());
    let cipher = FeedCipher::new(&keys.content_key.expect("member keys"), &feed);
    let texts = ["one", "two", "three"];
    let head = scratch
        .append(
            &keys.discovery_key,
            &writer,
            &cipher,
            1,
            texts.iter().map(|t| Body::Text { text: t.to_string() }).collect(),
        )?
        .head;
    let entries = scratch.entries(&feed, 0, 3)?;

    let raw = RawPeer::start().await?;
    let addr = d.p2p_addr().await?;
    let peer = d.peer_id()?;

    // 1. A head with a bad signature: the session is closed as a protocol violation.
    let mut s = raw
        .open(addr.clone(), peer, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    let mut forged = head.clone();
    forged.signature[10] ^= 0x40;
    s.send(&Frame::Have { heads: vec![forged], bytes: vec![] }).await?;
    let seen = s.expect_closed().await?;
    ensure!(seen.contains(&Frame::Refuse { reason: Refusal::ProtocolViolation }), "forged head not refused: {seen:?}");

    // 1b. A writer proof claiming someone else's key: refused the same way.
    let mut s = raw
        .open(addr.clone(), peer, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    let impostor = new_writer();
    let proof = peerlog_proto::wire::writer_proof_bytes(&keys.discovery_key, &raw.node.peer_id().to_bytes());
    use ed25519_dalek::Signer;
    let signature = impostor.sign(&proof).to_bytes().to_vec();
    s.send(&Frame::Writer { feed_key: feed, signature }).await?;
    let seen = s.expect_closed().await?;
    ensure!(
        seen.contains(&Frame::Refuse { reason: Refusal::ProtocolViolation }),
        "forged writer not refused: {seen:?}"
    );

    // 2. A flipped ciphertext byte and 3. a broken chain are dropped; then the honest
    // batch is stored. Frames are handled in order, so once the honest one shows up the
    // tampered ones were already judged.
    let mut s = raw
        .open(addr, peer, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    s.send(&Frame::Have { heads: vec![head.clone()], bytes: vec![] }).await?;
    let want = s.recv_until("the daemon's Want for the new feed", |f| matches!(f, Frame::Want { .. })).await?;
    ensure!(want == Frame::Want { feed_key: feed, start: 0, end: 3 }, "unexpected want {want:?}");
    let mut flipped = entries.clone();
    flipped[1].ciphertext[0] ^= 1;
    s.send(&Frame::Data { feed_key: feed, start: 0, entries: flipped, head: Some(head.clone()) }).await?;
    let mut broken = entries.clone();
    broken[2].prev[5] ^= 1;
    s.send(&Frame::Data { feed_key: feed, start: 0, entries: broken, head: Some(head.clone()) }).await?;
    // A valid chain whose ciphertext was made under another room's key: signed, but AEAD fails.
    let other = FeedCipher::new(&[0x55; 32], &feed);
    let alien_store_dir = tempfile::tempdir()?;
    let alien_store = Store::open(alien_store_dir.path())?;
    let alien_head =
        alien_store.append(&keys.discovery_key, &writer, &other, 1, vec![Body::Text { text: "alien".into() }])?.head;
    let alien = alien_store.entries(&feed, 0, 1)?;
    s.send(&Frame::Data { feed_key: feed, start: 0, entries: alien, head: Some(alien_head) }).await?;
    ensure!(full_history(&mut c, &room).await?.is_empty(), "tampered entries were stored");

    s.send(&Frame::Data { feed_key: feed, start: 0, entries: entries.clone(), head: Some(head.clone()) }).await?;
    wait_for_text(&mut c, &room, "three", WAIT).await?;
    let got = peerlog_tests::texts(&mut c, &room).await?;
    ensure!(got == texts, "expected exactly the honest messages, got {got:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_refuses_strangers_and_survives_bad_frames() -> Result<()> {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error as WsError};
    let d = TestDaemon::start().await?;
    let daemon = d.daemon.as_ref().context("running")?;
    let addr = daemon.api_addr();
    let token = daemon.token().to_string();
    let status = |req: tokio_tungstenite::tungstenite::handshake::client::Request| async move {
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => 101,
            Err(WsError::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    let url = format!("ws://{addr}/api/ws");
    ensure!(status(url.clone().into_client_request()?).await == 401, "no token must be refused");
    ensure!(status(format!("{url}?token=wrong").into_client_request()?).await == 401, "wrong token must be refused");
    let mut r = format!("{url}?token={token}").into_client_request()?;
    r.headers_mut().insert("origin", "http://evil.example".parse()?);
    ensure!(status(r).await == 403, "foreign origin must be refused");
    let mut r = format!("{url}?token={token}").into_client_request()?;
    r.headers_mut().insert("host", format!("evil.example:{}", addr.port()).parse()?);
    ensure!(status(r).await == 403, "foreign Host must be refused");
    let mut r = format!("{url}?token={token}").into_client_request()?;
    r.headers_mut().insert("origin", format!("http://127.0.0.1:{}", addr.port()).parse()?);
    ensure!(status(r).await == 101, "own origin with token must be accepted");

    let mut c = d.client().await?;
    c.send_raw("{not json").await?;
    ensure!(c.next_response().await?.error.map(|e| e.code) == Some(codes::PARSE_ERROR));
    c.send_raw("{\"jsonrpc\": \"1.0\", \"id\": 3, \"method\": \"rooms.list\"}").await?;
    ensure!(c.next_response().await?.error.map(|e| e.code) == Some(codes::INVALID_REQUEST));
    let err = c.call("no.such.method", json!({})).await.expect_err("unknown method");
    ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::METHOD_NOT_FOUND, .. }), "{err}");
    let err = c.call("messages.send", json!({"room": 5})).await.expect_err("bad params");
    ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::INVALID_PARAMS, .. }), "{err}");
    let err = c.call("messages.send", json!({"room": "nope", "text": "x"})).await.expect_err("unknown room");
    ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::ROOM_NOT_FOUND, .. }), "{err}");
    let room = join(&mut c, PASS).await?;
    let err = c.call("messages.send", json!({"room": room, "text": "x".repeat(70_000)})).await.expect_err("too large");
    ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::TOO_LARGE, .. }), "{err}");
    let err = c.call("rooms.join", json!({"invite": "peerlog:nonsense"})).await.expect_err("bad invite");
    ensure!(matches!(err, peerlog::client::ClientError::Rpc { code: codes::BAD_INVITE, .. }), "{err}");
    // The same connection still works.
    send(&mut c, &room, "still here").await?;
    // A message over the WebSocket limit closes that connection only, with code 1009 and
    // the reason (a message just over it, and one of twice the limit).
    for size in [(1 << 20) + 1, 2 << 20] {
        let mut big = d.client().await?;
        big.send_raw(&"x".repeat(size)).await.ok();
        match big.next_response().await {
            Err(peerlog::client::ClientError::ClosedWith { code: 1009, reason }) => {
                ensure!(reason.contains("limit"), "close reason: {reason}")
            }
            other => anyhow::bail!("a {size}-byte message must close with 1009, got {other:?}"),
        }
    }
    let mut c2 = d.client().await?;
    let info = node_info(&mut c2).await?;
    ensure!(info.peer_id == d.peer_id()?.to_string() && !info.version.is_empty(), "{info:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_join_the_same_room_and_leave_forgets_it() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let (room, invite) = create(&mut ca, "team").await?;
    let params = rooms::JoinParams { invite: Some(invite), name: Some("from invite".into()), ..Default::default() };
    let joined = cb.request::<rooms::Join>(&params).await?.room;
    ensure!(joined.id == room && joined.name == "from invite", "invite joined another room: {joined:?}");
    send(&mut cb, &room, "via invite").await?;
    wait_for_text(&mut ca, &room, "via invite", WAIT).await?;
    cb.request::<rooms::Leave>(&rooms::RoomParam { room: room.clone() }).await?;
    let rooms = rooms_list(&mut cb).await?;
    ensure!(rooms.is_empty(), "room still listed after leave: {rooms:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_daemons_ten_rooms_every_pair_connects() -> Result<()> {
    let mut nodes = vec![TestDaemon::start_bootstrap_node().await?];
    for _ in 1..20 {
        nodes.push(TestDaemon::start_bootstrapped(&nodes[0]).await?);
    }
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await?);
    }
    // Pair i is nodes 2i and 2i+1; each pair gets its own room by invite.
    let t0 = Instant::now();
    let mut rooms = Vec::new();
    for i in 0..10 {
        let (room, invite) = create(&mut clients[2 * i], &format!("pair {i}")).await?;
        join_invite(&mut clients[2 * i + 1], &invite).await?;
        rooms.push(room);
    }
    for i in 0..10 {
        let partner = nodes[2 * i + 1].peer_id()?.to_string();
        let room = rooms[i].clone();
        clients[2 * i]
            .wait_for::<events::PeerJoined>(WAIT, &format!("pair {i} to connect"), |e| {
                e.room == room && e.peer == partner
            })
            .await?;
    }
    println!("10 pairs connected through a 20-node DHT in {:?}", t0.elapsed());
    // Each pair talks only within its room.
    send(&mut clients[6], &rooms[3], "pair 3 only").await?;
    wait_for_text(&mut clients[7], &rooms[3], "pair 3 only", WAIT).await?;
    let peers = peers_list(&mut clients[6], None).await?;
    ensure!(peers.len() == 1, "pair 3 sees only its partner: {peers:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_restarts_is_redialed_and_sync_resumes() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    // B listens on a fixed port so that A can redial it at the same address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let boot = a.p2p_addr().await?;
    let mut b = TestDaemon::start_with(|c| {
        c.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("multiaddr")];
        c.bootstrap = vec![boot];
    })
    .await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    send(&mut ca, &room, "before").await?;
    wait_for_text(&mut cb, &room, "before", WAIT).await?;
    drop(cb);

    b.stop().await?;
    ca.wait_event(WAIT, "a to notice b left", |e| e.method == "peer.left").await?;
    send(&mut ca, &room, "while b was away").await?;
    // B comes back knowing no bootstrap node: only A's redial can reconnect them.
    b.config.bootstrap.clear();
    b.restart().await?;
    let mut cb = b.client().await?;
    let t0 = Instant::now();
    ca.wait_event(WAIT, "a to redial b", |e| e.method == "peer.joined").await?;
    let history = within(WAIT, "b to catch up", async {
        loop {
            let h = full_history(&mut cb, &room).await?;
            if h.len() == 2 {
                return anyhow::Ok(h);
            }
            cb.wait_event(WAIT, "a message", |e| e.method == "message").await?;
        }
    })
    .await??;
    ensure!(history[1].text.as_deref() == Some("while b was away"), "unexpected history {history:?}");
    println!("redialed and caught up in {:?}", t0.elapsed());
    Ok(())
}

/// Peer exchange: A and C announce no addresses (`announce_private_addrs = false`), so
/// their provider records carry none and the DHT alone cannot connect them. C finds B (a
/// DHT server) and B tells C where A is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exchange_leads_a_newcomer_to_peers_the_dht_cannot() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let boot_addr = boot.p2p_addr().await?;
    let a = TestDaemon::start_with(|c| {
        c.announce_private_addrs = false;
        c.bootstrap = vec![boot_addr.clone()];
    })
    .await?;
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    let a_id = a.peer_id()?.to_string();
    cb.wait_for::<events::PeerJoined>(WAIT, "b to connect to a", |e| e.peer == a_id).await?;

    // C is a DHT client too: neither A nor C can learn the other's address from the DHT.
    let c = TestDaemon::start_with(|c| {
        c.announce_private_addrs = false;
        c.bootstrap = vec![boot_addr.clone()];
    })
    .await?;
    let mut cc = c.client().await?;
    join(&mut cc, PASS).await?;
    cc.wait_for::<events::PeerJoined>(WAIT, "c to reach a through b's peer exchange", |e| e.peer == a_id).await?;
    send(&mut ca, &room, "from the client-mode peer").await?;
    wait_for_text(&mut cc, &room, "from the client-mode peer", WAIT).await?;
    Ok(())
}

/// A flood of half-open TCP connections to the libp2p port does not stop the node: the API
/// answers and a real peer still connects and syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_dials_does_not_take_the_node_down() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let boot_addr = boot.p2p_addr().await?;
    let a = TestDaemon::start_with(|c| {
        c.limits.pending_connections = 16;
        c.bootstrap = vec![boot_addr];
    })
    .await?;
    let addr = a.p2p_addr().await?;
    let port = addr
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .context("tcp port")?;
    // 300 connections that never finish the Noise handshake (bounded, loopback only).
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            flood.push(s);
        }
    }
    ensure!(flood.len() > 100, "could not open the flood ({} connections)", flood.len());
    let mut ca = a.client().await?;
    let room = join(&mut ca, PASS).await?;
    ensure!(node_info(&mut ca).await?.peer_id == a.peer_id()?.to_string());
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let mut cb = b.client().await?;
    join(&mut cb, PASS).await?;
    send(&mut ca, &room, "still reachable").await?;
    wait_for_text(&mut cb, &room, "still reachable", Duration::from_secs(30)).await?;
    drop(flood);
    Ok(())
}

/// The configured connection limit is enforced: with three peers connected, a fourth is
/// refused (or dropped at once), and the hub stays at three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_is_enforced() -> Result<()> {
    // The others dial the hub as their bootstrap node; no DHT is involved.
    let hub = TestDaemon::start_with(|c| c.limits.connections = 3).await?;
    let hub_id = hub.peer_id()?;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(TestDaemon::start_bootstrapped(&hub).await?);
    }
    let mut c = hub.client().await?;
    within(WAIT, "three peers connected to the hub", async {
        while node_info(&mut c).await?.connected_peers != 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    })
    .await??;
    let fourth = TestDaemon::start().await?;
    let node = fourth.daemon.as_ref().context("running")?.service().node.clone();
    let mut events = node.subscribe();
    node.add_addresses(hub_id, vec![hub.p2p_addr().await?]).await?;
    match node.connect(hub_id).await {
        Err(_) => {}
        Ok(()) => {
            within(Duration::from_secs(5), "the hub to drop the fourth connection", async {
                loop {
                    if let Ok(peerlog::node::NodeEvent::Disconnected { peer }) = events.recv().await {
                        if peer == hub_id {
                            return;
                        }
                    }
                }
            })
            .await?;
        }
    }
    let n = node_info(&mut c).await?.connected_peers;
    ensure!(n == 3, "hub holds {n} connections with a limit of 3");
    Ok(())
}

/// A writer that signs two different entries for the same seq (a copied data dir) is
/// recorded as a fork and reported by `rooms.list`; other feeds keep syncing on the same
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_feed_is_reported_and_does_not_stop_other_feeds() -> Result<()> {
    let d = TestDaemon::start().await?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    let keys = room_keys(PASS);
    let text = |t: &str| vec![Body::Text { text: t.to_string() }];

    // The same writer key in two scratch stores: two different seq 0 entries, both signed.
    let forker = new_writer();
    let fk = FeedKey(forker.verifying_key().to_bytes());
    let fc = FeedCipher::new(&keys.content_key.expect("member keys"), &fk);
    let (d1, d2) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (s1, s2) = (Store::open(d1.path())?, Store::open(d2.path())?);
    let h1 = s1.append(&keys.discovery_key, &forker, &fc, 1, text("original"))?.head;
    let h2 = s2.append(&keys.discovery_key, &forker, &fc, 1, text("copied machine"))?.head;
    // An honest second writer.
    let honest = new_writer();
    let hk = FeedKey(honest.verifying_key().to_bytes());
    let hc = FeedCipher::new(&keys.content_key.expect("member keys"), &hk);
    let h3 = s1.append(&keys.discovery_key, &honest, &hc, 2, text("honest"))?.head;

    let raw = RawPeer::start().await?;
    let mut s = raw
        .open(d.p2p_addr().await?, d.peer_id()?, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    s.send(&Frame::Data { feed_key: fk, start: 0, entries: s1.entries(&fk, 0, 1)?, head: Some(h1) }).await?;
    wait_for_text(&mut c, &room, "original", WAIT).await?;
    s.send(&Frame::Data { feed_key: fk, start: 0, entries: s2.entries(&fk, 0, 1)?, head: Some(h2) }).await?;
    s.send(&Frame::Data { feed_key: hk, start: 0, entries: s1.entries(&hk, 0, 1)?, head: Some(h3) }).await?;
    wait_for_text(&mut c, &room, "honest", WAIT).await?;

    let rooms = rooms_list(&mut c).await?;
    let forks = &rooms[0].forks;
    ensure!(forks == &[rooms::Fork { author: hex_encode(&fk.0), seq: 0 }], "fork not reported: {rooms:?}");
    let texts = texts(&mut c, &room).await?;
    ensure!(texts == ["original", "honest"], "the conflicting entry must not be stored: {texts:?}");
    Ok(())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Each side proves which writer it is (a signed `Writer` frame), so people show as online
/// with their connection; and a writer hears when a peer holds its message ("seen").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_show_online_and_messages_are_marked_seen() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    set_name(&mut ca, "Ada").await?;
    let room = join(&mut ca, "presence and seen marks for everyone").await?;
    join(&mut cb, "presence and seen marks for everyone").await?;
    ca.wait_for::<events::PeerJoined>(WAIT, "a's session with b", |_| true).await?;
    let b_writer = rooms_list(&mut cb).await?[0].feed_key.clone();

    let id = send(&mut ca, &room, "did you get this?").await?;
    let seq: u64 = id.rsplit(':').next().unwrap_or("").parse()?;
    ca.wait_for::<events::Seen>(WAIT, "b to hold a's message (message.seen)", |e| e.room == room && e.seen_below > seq)
        .await?;
    let page = history(&mut ca, &room, 10).await?;
    let mine = page.iter().find(|m| m.id == id);
    ensure!(mine.is_some_and(|m| m.seen), "history must mark the message seen: {mine:?}");

    // b's page of a's people: b online, as its proven writer.
    let members = within(WAIT, "b online in a's member list", async {
        loop {
            let m = members(&mut ca, &room).await?;
            let found = m.iter().any(|m| {
                m.author == b_writer && m.presence.online && m.presence.connection == Some(ConnectionKind::Direct)
            });
            if found {
                return anyhow::Ok(m);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    let safety = members.iter().find(|m| m.author == b_writer).and_then(|m| m.safety_number.clone());
    let peers = peers_list(&mut ca, Some(&room)).await?;
    ensure!(peers[0].author.as_ref() == Some(&b_writer), "peers.list must name b's writer: {peers:?}");
    // b sees a under her display name, and the same safety number for the pair as a does.
    let b_members = peerlog_tests::members(&mut cb, &room).await?;
    let b_sees = b_members.iter().find(|m| !m.mine).and_then(|m| m.safety_number.clone());
    ensure!(
        safety.as_ref().is_some_and(|s| s.len() == 71) && safety == b_sees,
        "safety numbers differ: a sees {safety:?}, b {b_sees:?}"
    );
    ensure!(
        b_members.iter().any(|m| m.display_name.as_deref() == Some("Ada")),
        "b must know a's display name: {b_members:?}"
    );
    Ok(())
}

/// Presence records (`Alive`, version 4): the daemon sends its own, signed for the room, and
/// shows a member online by the record a peer passes on, without a session with that member
/// (it wrote nothing yet, either); a forged record ends the session; a version 3 peer still
/// gets a session and is sent no records (it could not decode them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_records_pass_between_members_and_old_nodes_get_none() -> Result<()> {
    use ed25519_dalek::Signer;
    use peerlog::replicate::presence;
    use peerlog_proto::wire::{Alive, PROTOCOL_V3};
    let d = TestDaemon::start().await?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    let keys = room_keys(PASS);
    let daemon_feed = rooms_list(&mut c).await?[0].feed_key.clone();
    // Two peers: a second session of one peer would replace its first.
    let (raw, raw_old) = (RawPeer::start().await?, RawPeer::start().await?);
    let (addr, peer) = (d.p2p_addr().await?, d.peer_id()?);
    let refused = |f: Frame| anyhow::anyhow!("refused: {f:?}");
    let (dk, auth) = (keys.discovery_key, keys.auth_key);
    let mut old = raw_old.open_speaking(addr.clone(), peer, dk, auth, PROTOCOL_V3).await?.map_err(refused)?;
    let mut s = raw.open_speaking(addr, peer, dk, auth, peerlog_proto::wire::PROTOCOL).await?.map_err(refused)?;

    // The daemon's own record comes within a tick, and verifies for this room.
    let frame = s.recv_until("the daemon's presence record", |f| matches!(f, Frame::Alive { .. })).await?;
    let Frame::Alive { records } = frame else { unreachable!() };
    ensure!(
        records.iter().any(|r| hex_encode(&r.feed_key.0) == daemon_feed && presence::verify(&keys.discovery_key, r)),
        "no valid record of the daemon's own writer: {records:?}"
    );
    // That flush had the version 3 session up too: it got nothing of it (frames of a
    // session go in order, so everything queued before the NoData answer came first).
    old.send(&Frame::Want { feed_key: FeedKey([3; 32]), start: 0, end: 1 }).await?;
    let mut before = Vec::new();
    old.recv_until("the NoData answer on the version 3 session", |f| {
        before.push(f.clone());
        matches!(f, Frame::NoData { .. })
    })
    .await?;
    ensure!(!before.iter().any(|f| matches!(f, Frame::Alive { .. })), "a version 3 peer was sent Alive: {before:?}");

    // A member the daemon has no session with, and holds nothing of, is online by its record.
    let member = new_writer();
    let member_feed = FeedKey(member.verifying_key().to_bytes());
    let at_ms = peerlog::log::store::now_ms();
    let signature = member.sign(&Alive::signed_bytes(&keys.discovery_key, at_ms)).to_bytes().to_vec();
    let record = Alive { feed_key: member_feed, at_ms, signature };
    s.send(&Frame::Alive { records: vec![record.clone()] }).await?;
    let shown = within(WAIT, "the member online in rooms.members", async {
        loop {
            let m = members(&mut c, &room).await?;
            if let Some(m) = m.into_iter().find(|m| m.author == hex_encode(&member_feed.0) && m.presence.online) {
                return anyhow::Ok(m);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    ensure!(
        shown.presence.last_seen_ms == Some(at_ms) && shown.presence.connection.is_none(),
        "online through the room, as of its record: {:?}",
        shown.presence
    );
    // A forged one (another time under the same signature) ends the session.
    let forged = Alive { at_ms: at_ms + 1, ..record };
    s.send(&Frame::Alive { records: vec![forged] }).await?;
    let seen = s.expect_closed().await?;
    ensure!(
        seen.contains(&Frame::Refuse { reason: Refusal::ProtocolViolation }),
        "forged record not refused: {seen:?}"
    );
    Ok(())
}

/// A verified mark made against the 12-digit safety numbers of earlier versions no longer
/// counts (the 60-digit number is a different one to compare): it shows as
/// `verified_before`, and marking the new number replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_on_an_old_safety_number_asks_to_compare_again() -> Result<()> {
    let mut a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    send(&mut cb, &room, "hi").await?;
    let author = wait_for_text(&mut ca, &room, "hi", WAIT).await?.author;
    drop(ca);
    a.stop().await?;
    {
        let store = Store::open(&a.data_dir().join("db"))?;
        let feed = FeedKey::try_from(hex::decode(&author)?.as_slice()).map_err(|_| anyhow::anyhow!("key"))?;
        store.put_contact(&feed, &peerlog::log::store::Contact { nickname: None, verified: true })?;
        store.flush().await?;
    }
    a.restart().await?;
    let mut ca = a.client().await?;
    let member = |m: Vec<peers::Member>| m.into_iter().find(|x| x.author == author).context("b among a's members");
    let m = member(members(&mut ca, &room).await?)?;
    ensure!(!m.verified && m.verified_before, "an old mark still counts: {m:?}");
    let params = peers::ContactParams {
        peer: author.clone(),
        verified: Some(true),
        room: Some(room.clone()),
        ..Default::default()
    };
    let r = ca.request::<peers::Verify>(&params).await?;
    ensure!(r.verified && r.safety_number == m.safety_number, "{r:?}");
    let m = member(members(&mut ca, &room).await?)?;
    ensure!(m.verified && !m.verified_before, "{m:?}");
    Ok(())
}
