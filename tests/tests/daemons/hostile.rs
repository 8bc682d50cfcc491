//! A hostile room member: what it sends is refused or bounded, and nobody else is harmed.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use peerlog::log::store::{Store, WriterQuota};
use peerlog::log::{hash_entry, new_writer, sign_head, Body, FeedCipher, Message, LAMPORT_MAX};
use peerlog_proto::api::messages::MessageInfo;
use peerlog_proto::api::{events, files, peers, rooms};
use peerlog_proto::wire::{DiscoveryKey, Entry, FeedKey, Frame, Key32, SignedHead};
use peerlog_tests::*;

use super::PASS;

/// One entry `seq` of `writer`'s feed with a chosen Lamport clock, and its signed head.
fn entry_with_clock(
    writer: &ed25519_dalek::SigningKey,
    keys: &peerlog::keys::RoomKeys,
    seq: u64,
    prev: Key32,
    lamport: u64,
    text: &str,
) -> (Entry, SignedHead) {
    let feed = FeedKey(writer.verifying_key().to_bytes());
    let message = Message { lamport, time_ms: 1, body: Some(Body::Text { text: text.into() }) };
    let content_key = keys.content_key.expect("member keys");
    let entry = FeedCipher::new(&content_key, &feed).seal(seq, prev, &message.encode());
    let head = sign_head(writer, &keys.discovery_key, seq, hash_entry(&feed, seq, &entry));
    (entry, head)
}

/// The Lamport clocks of the room's messages, by text.
async fn clocks(c: &mut peerlog::client::Client, room: &str) -> Result<Vec<(String, u64)>> {
    Ok(full_history(c, room).await?.iter().map(|m| (m.text.clone().unwrap_or_default(), m.lamport)).collect())
}

/// A member who writes a message with the Lamport clock at `u64::MAX` used to raise the
/// room clock so that every other writer's next clock overflowed (peers then refused them
/// for good). Such a message is refused; the others keep writing and keep being received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_lamport_clock_is_refused_and_others_keep_writing() -> Result<()> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    send(&mut ca, &room, "before").await?;
    wait_for_text(&mut cb, &room, "before", WAIT).await?;

    let keys = room_keys(PASS);
    let hostile = new_writer();
    let hk = FeedKey(hostile.verifying_key().to_bytes());
    let raw = RawPeer::start().await?;
    let mut s = raw
        .open(a.p2p_addr().await?, a.peer_id()?, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    // Past the hard bound, and far ahead of the room's clock though below it: refused.
    let far = 10 + peerlog::log::LAMPORT_LEAD + 1_000;
    for lamport in [u64::MAX, LAMPORT_MAX + 1, far] {
        let (entry, head) = entry_with_clock(&hostile, &keys, 0, [0; 32], lamport, "poison");
        s.send(&Frame::Data { feed_key: hk, start: 0, entries: vec![entry], head: Some(head) }).await?;
    }
    // An honest writer's message on the same session: once it is stored, the frames before
    // it were judged.
    let honest = new_writer();
    let (entry, head) = entry_with_clock(&honest, &keys, 0, [0; 32], 2, "honest");
    s.send(&Frame::Data {
        feed_key: FeedKey(honest.verifying_key().to_bytes()),
        start: 0,
        entries: vec![entry],
        head: Some(head),
    })
    .await?;
    wait_for_text(&mut ca, &room, "honest", WAIT).await?;

    let seen = clocks(&mut ca, &room).await?;
    ensure!(seen.iter().all(|(t, _)| t != "poison"), "a hostile clock was stored: {seen:?}");
    send(&mut ca, &room, "after").await.context("a sends after the hostile message")?;
    send(&mut cb, &room, "b after").await.context("b sends after the hostile message")?;
    wait_for_text(&mut cb, &room, "after", WAIT).await?;
    wait_for_text(&mut ca, &room, "b after", WAIT).await?;
    let seen = clocks(&mut ca, &room).await?;
    ensure!(seen.iter().all(|&(_, l)| l < 1000), "clocks ran away: {seen:?}");
    Ok(())
}

/// A room poisoned by a version without the bound (a stored message at `u64::MAX`, and
/// our own feed's clock wrapped to 0 after it) recovers at restart: the poisoned clock is
/// ignored, our feed goes on under a new writer key, and peers receive what we write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_poisoned_by_an_older_version_recovers_at_restart() -> Result<()> {
    let mut a = TestDaemon::start_bootstrap_node().await?;
    let mut ca = a.client().await?;
    let room = join(&mut ca, PASS).await?;
    send(&mut ca, &room, "before").await?;
    drop(ca);
    a.stop().await?;

    // Poison the store as the unbounded version did.
    let keys = room_keys(PASS);
    let content_key = keys.content_key.context("member keys")?;
    {
        let store = Store::open(&a.data_dir().join("db"))?;
        let hostile = new_writer();
        let hk = FeedKey(hostile.verifying_key().to_bytes());
        let (entry, head) = entry_with_clock(&hostile, &keys, 0, [0; 32], u64::MAX, "poison");
        let cipher = FeedCipher::new(&content_key, &hk);
        store.ingest_bounded(
            &keys.discovery_key,
            Some(&cipher),
            &hk,
            0,
            &[entry],
            Some(&head),
            u64::MAX,
            &WriterQuota::NONE,
        )?;
        let (_, record) = store.rooms()?.into_iter().next().context("the room record")?;
        let ours = ed25519_dalek::SigningKey::from_bytes(&record.writer);
        let oc = FeedCipher::new(&content_key, &FeedKey(ours.verifying_key().to_bytes()));
        // u64::MAX + 1 wrapped to 0 in release builds.
        store.append(&keys.discovery_key, &ours, &oc, 0, vec![Body::Text { text: "wrapped".into() }])?;
        store.flush().await?;
    }

    a.restart().await?;
    let mut ca = a.client().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let mut cb = b.client().await?;
    join(&mut cb, PASS).await?;
    send(&mut ca, &room, "recovered").await.context("sending in a poisoned room")?;
    wait_for_text(&mut cb, &room, "recovered", WAIT).await?;
    let seen = clocks(&mut ca, &room).await?;
    ensure!(seen.iter().all(|(t, _)| t != "poison"), "the poisoned message is still shown: {seen:?}");
    let recovered = seen.iter().find(|(t, _)| t == "recovered").context("recovered in history")?;
    ensure!(recovered.1 < 1000, "the poisoned clock was adopted: {seen:?}");
    let at_b = clocks(&mut cb, &room).await?;
    ensure!(at_b.iter().all(|(t, _)| t != "poison"), "b received the poisoned message: {at_b:?}");
    Ok(())
}

/// The API token travels through browsers (the UI's link, its WebSocket), so it can leak.
/// It used to read and write the user's files: `files.send {path}` published any file the
/// daemon could read (its identity key among them), `files.get {path}` wrote anywhere,
/// through a symlink planted at its predictable temporary name. Paths now need the CLI
/// credential, which a browser never gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_token_cannot_name_files_and_saving_follows_no_symlink() -> Result<()> {
    use peerlog::client::ClientError;
    use peerlog_proto::api::codes;
    let d = TestDaemon::start().await?;
    let mut api = d.client().await?;
    let room = join(&mut api, PASS).await?;
    let dir = tempfile::tempdir()?;
    fn refused_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Result<i32> {
        match r {
            Err(ClientError::Rpc { code, .. }) => Ok(code),
            other => Err(anyhow::anyhow!("expected an error, got {other:?}")),
        }
    }
    let send = |path: &std::path::Path| files::SendFileParams {
        room: room.clone(),
        path: Some(path.display().to_string()),
        ..Default::default()
    };
    let get = |id: &str, path: &std::path::Path| files::GetFileParams {
        room: room.clone(),
        file: id.into(),
        path: Some(path.display().to_string()),
        stream: false,
    };

    // With the API token: no path in either direction, and nothing is published.
    let key = d.data_dir().join("identity.key");
    let code = refused_code(api.request::<files::SendFile>(&send(&key)).await)?;
    ensure!(code == codes::LOCAL_ONLY, "files.send {{path}} with the API token answered {code}");
    ensure!(full_history(&mut api, &room).await?.is_empty(), "a file was published with the API token");

    // With the CLI credential (no Origin, as the CLI connects): allowed.
    let mut cli = d.cli_client().await?;
    let src = dir.path().join("note.txt");
    std::fs::write(&src, b"shared on purpose")?;
    let sent = cli.request::<files::SendFile>(&send(&src)).await?;
    let id = sent.message.context("the file's message")?.id;
    let out = dir.path().join("out.txt");
    let code = refused_code(api.request::<files::GetFile>(&get(&id, &out)).await)?;
    ensure!(code == codes::LOCAL_ONLY && !out.exists(), "files.get {{path}} with the API token answered {code}");

    // The CLI credential is refused from a browser (any Origin).
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let daemon = d.daemon.as_ref().context("running")?;
        let addr = daemon.api_addr();
        let mut r = format!("ws://{addr}/api/ws?token={}", daemon.cli_token()).into_client_request()?;
        r.headers_mut().insert("origin", format!("http://127.0.0.1:{}", addr.port()).parse()?);
        match tokio_tungstenite::connect_async(r).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                ensure!(resp.status() == 403, "CLI credential from a browser: {}", resp.status())
            }
            other => anyhow::bail!("the CLI credential was accepted with an Origin: {:?}", other.map(|_| ())),
        }
    }

    // A symlink planted at the old temporary name is not written through.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"victim")?;
    let dest = dir.path().join("got.txt");
    std::os::unix::fs::symlink(&victim, dir.path().join(".got.txt.peerlog-part"))?;
    cli.request::<files::GetFile>(&get(&id, &dest)).await?;
    ensure!(std::fs::read(&victim)? == b"victim", "files.get wrote through a planted symlink");
    ensure!(std::fs::read(&dest)? == b"shared on purpose", "the saved file differs");
    // A symlink at the destination is not replaced, and its target is not created.
    let linked = dir.path().join("linked.txt");
    let elsewhere = dir.path().join("elsewhere.txt");
    std::os::unix::fs::symlink(&elsewhere, &linked)?;
    let code = refused_code(cli.request::<files::GetFile>(&get(&id, &linked)).await)?;
    ensure!(code == codes::LOCAL_FILE, "saving over a symlink answered {code}");
    ensure!(
        !elsewhere.exists() && linked.symlink_metadata()?.file_type().is_symlink(),
        "the symlink was followed or replaced"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().ends_with(".peerlog-part")
                && !e.file_name().to_string_lossy().starts_with(".got.txt.peerlog")
        })
        .collect();
    ensure!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
    Ok(())
}

/// A refusal reaches the peer: after `Refuse` the daemon closes the stream (FIN) rather than
/// dropping it (a yamux reset), which lost the refusal in 9 to 16 of 20 tries when the peer
/// had already sent Hello and Auth without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_arrives_even_when_the_peer_does_not_wait() -> Result<()> {
    use peerlog_proto::wire::Refusal;
    let (d, _c, keys) = daemon_in_room().await?;
    let raw = RawPeer::start().await?;
    let (addr, peer) = (d.p2p_addr().await?, d.peer_id()?);
    let (mut lost, mut reset) = (0, 0);
    for i in 0..20 {
        // A wrong membership proof, and (every other try) a room the daemon is not in.
        let (room, reason) = if i % 2 == 0 {
            (keys.discovery_key, Refusal::BadAuth)
        } else {
            (DiscoveryKey([9; 32]), Refusal::UnknownRoom)
        };
        let mut s = raw.stream(addr.clone(), peer).await?;
        let room_tag = peerlog::keys::room_tag(&room, &[1; 32], &raw.node.peer_id(), &peer);
        s.send(&Frame::Hello { room_tag, nonce: [1; 32] }).await?;
        s.send(&Frame::Auth { mac: [0; 32] }).await?;
        let (seen, clean) = s.read_to_end().await?;
        lost += usize::from(!seen.contains(&Frame::Refuse { reason }));
        reset += usize::from(!clean);
    }
    // rust-libp2p delivers what arrived before a reset; js-libp2p drops it: the stream
    // must end with a FIN.
    ensure!(lost == 0 && reset == 0, "of 20 refusals {lost} were lost and {reset} streams were reset");
    Ok(())
}

/// An authenticated peer (a member, or a blind seeder) that asks and never reads: every
/// `Want` for a feed we lack queued a `NoData` for it, without bound. Past the outbox bound
/// the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_asks_and_never_reads_is_disconnected() -> Result<()> {
    let (_d, mut c, _keys, _raw, mut s) = member_session().await?;
    let made_up = FeedKey([0x42; 32]);
    let mut sent = 0;
    for _ in 0..20 {
        // The daemon stops reading once it ends the session: that is the point. (Our sends
        // then wait for flow-control credit; stop and read what came.)
        let wants = (0..1000).map(|_| Frame::Want { feed_key: made_up, start: 0, end: 1 });
        if !matches!(tokio::time::timeout(Duration::from_secs(2), s.send_many(wants)).await, Ok(Ok(()))) {
            break;
        }
        sent += 1000;
    }
    let (seen, _) = s.read_to_end().await?;
    ensure!(
        seen.len() < 8_000,
        "the daemon queued {} replies to {sent} Wants for a peer that reads nothing",
        seen.len()
    );
    // The daemon is fine, and so is its room.
    let room = room_id(&mut c).await?;
    send(&mut c, &room, "still here").await?;
    Ok(())
}

/// Writer keys cost nothing to mint: a peer announcing ever more feeds (validly signed
/// heads) made the session keep heads and lengths for each, without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_announces_endless_feeds_is_disconnected() -> Result<()> {
    let (_d, _c, keys, _raw, mut s) = member_session().await?;
    for _ in 0..3 {
        let heads: Vec<SignedHead> =
            (0..7_000).map(|_| entry_with_clock(&new_writer(), &keys, 0, [0; 32], 1, "x").1).collect();
        if s.send(&Frame::Have { heads, bytes: vec![] }).await.is_err() {
            break;
        }
    }
    let (seen, _) = s.read_to_end().await?;
    ensure!(
        seen.contains(&Frame::Refuse { reason: peerlog_proto::wire::Refusal::ProtocolViolation }),
        "21,000 made-up feeds were accepted on one session"
    );
    Ok(())
}

/// Before a peer proves membership it gets little: 4 handshakes per peer (64 idle streams
/// from one peer shut everyone out for 10 s), 2 s to say Hello, and frames of 1 KiB (a
/// 4 MiB frame was buffered before anything was checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_cannot_hold_handshake_slots_or_send_big_frames() -> Result<()> {
    let (d, _c, keys) = daemon_in_room().await?;
    let (addr, peer) = (d.p2p_addr().await?, d.peer_id()?);
    let squatter = RawPeer::start().await?;
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(squatter.stream(addr.clone(), peer).await?);
    }
    // Another peer still gets in at once.
    let member = RawPeer::start().await?;
    let opened = within(Duration::from_secs(5), "a member's handshake while a squatter holds streams", async {
        member.open(addr.clone(), peer, keys.discovery_key, keys.auth_key).await
    })
    .await??;
    ensure!(opened.is_ok(), "a member was refused while a squatter held idle streams: {:?}", opened.err());
    // The squatter's streams end: over its share at once, the rest after the Hello timeout.
    within(Duration::from_secs(5), "the squatter's idle streams to be closed", async {
        for s in &mut idle {
            s.read_to_end().await?;
        }
        anyhow::Ok(())
    })
    .await??;

    // A Hello with 3 KiB behind it (postcard ignores trailing bytes): refused unread.
    let mut s = member.stream(addr, peer).await?;
    let room_tag = peerlog::keys::room_tag(&keys.discovery_key, &[3; 32], &member.node.peer_id(), &peer);
    let mut big = Frame::Hello { room_tag, nonce: [3; 32] }.encode();
    big.extend(std::iter::repeat_n(0u8, 3 << 10));
    s.send_raw(big).await?;
    let (seen, _) = s.read_to_end().await?;
    ensure!(seen.is_empty(), "a 3 KiB frame before authentication was answered: {seen:?}");
    Ok(())
}

/// The id of the first joined room.
async fn room_id(c: &mut peerlog::client::Client) -> Result<String> {
    Ok(rooms_list(c).await?.into_iter().next().context("a joined room")?.id)
}

/// Peer exchange is one `Peers` frame per session: a peer that sends more (each listed peer
/// is dialed) is a connect reflector, and the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_peers_frame_ends_the_session() -> Result<()> {
    let (_d, _c, _keys, _raw, mut s) = member_session().await?;
    s.send(&Frame::Peers { peers: vec![] }).await?;
    s.send(&Frame::Peers { peers: vec![] }).await?;
    let (seen, _) = s.read_to_end().await?;
    ensure!(
        seen.contains(&Frame::Refuse { reason: peerlog_proto::wire::Refusal::ProtocolViolation }),
        "a second Peers frame was accepted: {seen:?}"
    );
    Ok(())
}

/// A daemon in a room, an API client, the room's keys, and a raw peer with an
/// authenticated session to the daemon (a member, as far as the daemon can tell).
async fn member_session() -> Result<(TestDaemon, peerlog::client::Client, peerlog::keys::RoomKeys, RawPeer, RawSession)>
{
    member_session_with(|_| {}).await
}

/// [`member_session`] with a daemon whose config `tweak` changed.
async fn member_session_with(
    tweak: impl FnOnce(&mut peerlog::config::Config),
) -> Result<(TestDaemon, peerlog::client::Client, peerlog::keys::RoomKeys, RawPeer, RawSession)> {
    let d = TestDaemon::start_with(tweak).await?;
    let mut c = d.client().await?;
    join(&mut c, PASS).await?;
    let keys = room_keys(PASS);
    let raw = RawPeer::start().await?;
    let s = raw
        .open(d.p2p_addr().await?, d.peer_id()?, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    Ok((d, c, keys, raw, s))
}

/// `Hello` names the room blinded to the pair of peers: a LAN neighbour that mDNS found
/// (and every peer a daemon offers sessions to) used to read each room's discovery key in
/// the clear. The daemon's own Hello carries no discovery key, and one in the clear does
/// not name a room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_does_not_reveal_the_room() -> Result<()> {
    let (d, _c, keys) = daemon_in_room().await?;
    let raw = RawPeer::start().await?;
    let (addr, peer) = (d.p2p_addr().await?, d.peer_id()?);
    let me = raw.node.peer_id();

    let mut s = raw.stream(addr.clone(), peer).await?;
    s.send(&Frame::Hello { room_tag: keys.discovery_key.0, nonce: [5; 32] }).await?;
    let (seen, _) = s.read_to_end().await?;
    ensure!(
        seen == vec![Frame::Refuse { reason: peerlog_proto::wire::Refusal::UnknownRoom }],
        "a discovery key in the clear named a room: {seen:?}"
    );

    let mut s = raw.stream(addr, peer).await?;
    let nonce = [6; 32];
    s.send(&Frame::Hello { room_tag: peerlog::keys::room_tag(&keys.discovery_key, &nonce, &me, &peer), nonce }).await?;
    let Frame::Hello { room_tag, nonce: theirs } = s.recv().await? else { anyhow::bail!("no Hello in reply") };
    ensure!(room_tag != keys.discovery_key.0, "the daemon's Hello carries the discovery key in the clear");
    ensure!(
        room_tag == peerlog::keys::room_tag(&keys.discovery_key, &theirs, &peer, &me),
        "the daemon's Hello does not name the room for this pair of peers"
    );
    Ok(())
}

/// A damaged block on disk (its checksum catches it) is not served, and the session that
/// asked for it goes on: it used to end every session that asked for the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_block_is_not_served_and_the_session_goes_on() -> Result<()> {
    let (d, mut c, _keys, _raw, mut s) = member_session().await?;
    let room = room_id(&mut c).await?;
    send(&mut c, &room, "soon damaged").await?;
    let feed_hex = rooms_list(&mut c).await?.into_iter().next().context("our room")?.feed_key;
    let path = d.data_dir().join("db").join("blocks").join(&feed_hex);
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes)?;
    let mut feed = FeedKey::default();
    for (i, b) in feed.0.iter_mut().enumerate() {
        *b = u8::from_str_radix(&feed_hex[2 * i..2 * i + 2], 16)?;
    }
    for _ in 0..2 {
        s.send(&Frame::Want { feed_key: feed, start: 0, end: 1 }).await?;
        let f = s
            .recv_until("the answer to a Want for a damaged block", |f| {
                matches!(f, Frame::NoData { .. } | Frame::Data { .. })
            })
            .await?;
        ensure!(
            matches!(f, Frame::NoData { feed_key, .. } if feed_key == feed),
            "a damaged block was answered with {f:?}"
        );
    }
    // History still answers (the damaged message is left out).
    ensure!(full_history(&mut c, &room).await?.is_empty(), "the damaged message was shown");
    Ok(())
}

/// A daemon in the room of `PASS`, an API client, and the room's keys.
async fn daemon_in_room() -> Result<(TestDaemon, peerlog::client::Client, peerlog::keys::RoomKeys)> {
    let d = TestDaemon::start().await?;
    let mut c = d.client().await?;
    join(&mut c, PASS).await?;
    Ok((d, c, room_keys(PASS)))
}

/// A room announced on the public DHT shows its daily key to every crawler, who can test
/// passphrase guesses offline: a weak passphrase (zxcvbn: `Summer2024!` is a pattern, not 11
/// random characters) is refused there unless the person confirms, and warned loudly even
/// then; `passphrase.check` tells the UI before it asks. On a private network it is joined,
/// with a warning. (The public daemon here has an empty public bootstrap list: it is on the
/// public network, and contacts nobody.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_passphrase_needs_confirmation_for_a_publicly_announced_room() -> Result<()> {
    use peerlog::client::ClientError;
    let public = TestDaemon::start_with(|c| {
        c.network = peerlog::config::Network::Public;
        c.public_bootstrap = vec![];
    })
    .await?;
    let mut c = public.client().await?;
    let params = rooms::PassphraseParams { passphrase: "Summer2024!".into() };
    let check = c.request::<rooms::CheckPassphrase>(&params).await?;
    ensure!(check.confirm && check.public, "passphrase.check: {check:?}");
    ensure!(check.bits < 40, "zxcvbn rates Summer2024! weak: {check:?}");
    let weak = |weak_ok| rooms::JoinParams { passphrase: Some("Summer2024!".into()), weak_ok, ..Default::default() };
    let refused = c.request::<rooms::Join>(&weak(false)).await;
    match refused {
        Err(ClientError::Rpc { code, message }) => ensure!(
            code == peerlog_proto::api::codes::WEAK_PASSPHRASE && message.contains("--i-know-it-is-weak"),
            "refused with {code}: {message}"
        ),
        other => anyhow::bail!("a weak passphrase for a public room was not refused: {other:?}"),
    }
    ensure!(rooms_list(&mut c).await?.is_empty(), "a refused join left a room");
    let joined = c.request::<rooms::Join>(&weak(true)).await?;
    let warning = joined.warning.context("no warning after a confirmed weak join")?;
    ensure!(warning.starts_with("WEAK PASSPHRASE"), "{warning}");
    let strong = rooms::JoinParams { passphrase: Some(PASS.into()), ..Default::default() };
    let strong = c.request::<rooms::Join>(&strong).await?;
    ensure!(strong.warning.is_none(), "a strong passphrase was warned about: {strong:?}");

    let private = TestDaemon::start().await?;
    let mut p = private.client().await?;
    let joined = p.request::<rooms::Join>(&weak(false)).await?;
    let warning = joined.warning.context("no warning for a weak private room")?;
    ensure!(warning.starts_with("weak passphrase"), "{warning}");
    Ok(())
}

/// Entries `0..n` of a new writer's feed, one signed head each (as a writer that sends one
/// message at a time pushes them), with clocks from `lamport`.
fn feed_of(
    writer: &ed25519_dalek::SigningKey,
    keys: &peerlog::keys::RoomKeys,
    n: u64,
    lamport: u64,
    text: &str,
) -> Vec<(Entry, SignedHead)> {
    let feed = FeedKey(writer.verifying_key().to_bytes());
    let mut prev = [0; 32];
    (0..n)
        .map(|seq| {
            let (entry, head) = entry_with_clock(writer, keys, seq, prev, lamport + seq, &format!("{text} {seq}"));
            prev = hash_entry(&feed, seq, &entry);
            (entry, head)
        })
        .collect()
}

async fn push_feed(
    s: &mut RawSession,
    writer: &ed25519_dalek::SigningKey,
    feed: Vec<(Entry, SignedHead)>,
) -> Result<()> {
    let feed_key = FeedKey(writer.verifying_key().to_bytes());
    for (seq, (entry, head)) in feed.into_iter().enumerate() {
        s.send(&Frame::Data { feed_key, start: seq as u64, entries: vec![entry], head: Some(head) }).await?;
    }
    Ok(())
}

/// One member cannot fill everyone's disk: past `limits.writer_entries` nothing more of a
/// writer is stored, past `limits.room_writers` no new writer is, each said once with a
/// `writer.quota` event, and the room goes on for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_over_its_quota_is_stored_no_further_and_said_so() -> Result<()> {
    let (_d, mut c, keys, _raw, mut s) = member_session_with(|c| {
        c.limits.writer_entries = 5;
        c.limits.room_writers = 3;
    })
    .await?;
    let room = room_id(&mut c).await?;
    send(&mut c, &room, "mine").await?;
    // A writer that sends 8 messages: 5 are stored.
    let flood = new_writer();
    push_feed(&mut s, &flood, feed_of(&flood, &keys, 8, 10, "flood")).await?;
    let event = c.wait_for::<events::WriterQuota>(WAIT, "a writer.quota event for entries", |_| true).await?;
    ensure!(event.quota == "entries" && event.author == hex::encode(flood.verifying_key().to_bytes()), "{event:?}");
    // The third writer of the room is stored; a fourth is not.
    let third = new_writer();
    push_feed(&mut s, &third, feed_of(&third, &keys, 1, 30, "third")).await?;
    wait_for_text(&mut c, &room, "third 0", WAIT).await?;
    let fourth = new_writer();
    push_feed(&mut s, &fourth, feed_of(&fourth, &keys, 1, 40, "fourth")).await?;
    let event =
        c.wait_for::<events::WriterQuota>(WAIT, "a writer.quota event for writers", |e| e.quota == "writers").await?;
    ensure!(event.author == hex::encode(fourth.verifying_key().to_bytes()), "{event:?}");
    let texts = texts(&mut c, &room).await?;
    let flooded = texts.iter().filter(|t| t.starts_with("flood")).count();
    ensure!(flooded == 5, "{flooded} of the flooding writer's 8 messages stored (quota 5): {texts:?}");
    ensure!(!texts.iter().any(|t| t.starts_with("fourth")), "a writer past the room's quota was stored");
    send(&mut c, &room, "still writing").await.context("our own writing is not limited")?;
    Ok(())
}

/// `peers.block` stops a writer in a room for good: what it wrote disappears from history,
/// nothing more of it is stored (not even through another member, who still holds it) or
/// served, its peer's sessions end and are refused when it comes back, and all that holds
/// across a restart; `peers.unblock` undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_writer_is_not_stored_served_or_shown_even_after_a_restart() -> Result<()> {
    let boot = TestDaemon::start_bootstrap_node().await?;
    let mut a = TestDaemon::start_bootstrapped(&boot).await?;
    let b = TestDaemon::start_bootstrapped(&boot).await?;
    let c = TestDaemon::start_bootstrapped(&boot).await?;
    let (mut ca, mut cb, mut cc) = (a.client().await?, b.client().await?, c.client().await?);
    let room = join(&mut ca, PASS).await?;
    join(&mut cb, PASS).await?;
    join(&mut cc, PASS).await?;
    send(&mut cb, &room, "from b").await?;
    let msg = wait_for_text(&mut ca, &room, "from b", WAIT).await?;
    wait_for_text(&mut cc, &room, "from b", WAIT).await?;
    let author = msg.author;
    let block = peers::PeerRoomParams { peer: author.clone(), room: Some(room.clone()) };

    let r = ca.request::<peers::Block>(&block).await?;
    ensure!(r.blocked, "{r:?}");
    let texts = |h: Vec<MessageInfo>| -> Vec<String> { h.into_iter().filter_map(|m| m.text).collect() };
    ensure!(
        !texts(full_history(&mut ca, &room).await?).contains(&"from b".to_string()),
        "a blocked writer is still shown"
    );
    let members = members(&mut ca, &room).await?;
    ensure!(
        members.iter().any(|m| m.author == author && m.blocked),
        "rooms.members does not show the block: {members:?}"
    );
    // b writes on; c (not blocking anyone) receives it and writes after it. Once c's
    // message reached a, so had the offer of b's: a must have refused it.
    send(&mut cb, &room, "after the block").await?;
    wait_for_text(&mut cc, &room, "after the block", WAIT).await?;
    send(&mut cc, &room, "c after b").await?;
    wait_for_text(&mut ca, &room, "c after b", WAIT).await?;
    ensure!(
        !texts(full_history(&mut ca, &room).await?).contains(&"after the block".to_string()),
        "a blocked writer's new message was stored"
    );
    let blocked = ca.request::<peers::Blocked>(&peers::OptRoomParam { room: Some(room.clone()) }).await?.blocked;
    ensure!(blocked.contains(&author), "{blocked:?}");

    // Across a restart: still hidden, still refused.
    drop(ca);
    a.restart().await?;
    let mut ca = a.client().await?;
    ensure!(
        !texts(full_history(&mut ca, &room).await?).iter().any(|t| t.contains("block") || t == "from b"),
        "the block did not survive a restart"
    );

    // Unblocked: b's messages are shown again, and what a missed arrives.
    ca.request::<peers::Unblock>(&block).await?;
    ensure!(
        texts(full_history(&mut ca, &room).await?).contains(&"from b".to_string()),
        "unblocking did not show b again"
    );
    send(&mut cb, &room, "after the unblock").await?;
    wait_for_text(&mut ca, &room, "after the unblock", WAIT).await?;
    let malformed = peers::PeerRoomParams { peer: "zz".into(), room: None };
    ensure!(ca.request::<peers::Block>(&malformed).await.is_err(), "a malformed writer key was accepted");
    let own = peerlog_tests::members(&mut ca, &room).await?.into_iter().find(|m| m.mine).context("own member")?;
    let own = peers::PeerRoomParams { peer: own.author, room: Some(room.clone()) };
    ensure!(ca.request::<peers::Block>(&own).await.is_err(), "we could block ourselves");
    Ok(())
}

/// A member that pushes entries as fast as it can is slowed to `limits.peer_bytes_per_s`
/// once it has used `limits.peer_burst_bytes`: the daemon stops reading from it for a
/// while, loses nothing, and keeps answering its clients meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_entries_is_slowed_to_its_rate_limit() -> Result<()> {
    const RATE: u64 = 256 << 10;
    const BURST: u64 = 512 << 10;
    let (_d, mut c, keys, _raw, mut s) = member_session_with(|c| {
        c.limits.peer_bytes_per_s = RATE;
        c.limits.peer_burst_bytes = BURST;
    })
    .await?;
    let room = room_id(&mut c).await?;
    // 40 entries of ~50 KB: about 2 MB, four times the burst.
    let flood = new_writer();
    let text = "x".repeat(50_000);
    let entries = feed_of(&flood, &keys, 40, 10, &text);
    let bytes: u64 = entries.iter().map(|(e, _)| e.ciphertext.len() as u64).sum();
    let started = std::time::Instant::now();
    let pusher = tokio::spawn(async move {
        push_feed(&mut s, &flood, entries).await?;
        anyhow::Ok(s)
    });
    // The daemon answers its clients during the flood.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = std::time::Instant::now();
    rooms_list(&mut c).await?;
    ensure!(asked.elapsed() < Duration::from_secs(2), "rooms.list took {:?} during the flood", asked.elapsed());
    wait_for_text(&mut c, &room, &format!("{text} 39"), Duration::from_secs(60)).await?;
    let took = started.elapsed();
    let least = Duration::from_secs_f64((bytes - BURST) as f64 / RATE as f64 * 0.8);
    ensure!(took >= least, "{bytes} bytes were taken in {took:?}: faster than the limit allows (at least {least:?})");
    let stored = full_history(&mut c, &room).await?.len();
    ensure!(stored == 40, "{stored} of the 40 flooded entries stored: a rate limit must slow, not drop");
    drop(pusher);
    Ok(())
}

/// Signed heads bind their room: a member that carries a feed (entries and signed heads)
/// over from another room has it refused, and its session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_carried_over_from_another_room_is_refused() -> Result<()> {
    let (_d, mut c, keys, _raw, mut s) = member_session().await?;
    let room = room_id(&mut c).await?;
    // Same content key (so the entries decrypt), another room's discovery key in the heads.
    let mut elsewhere = keys.clone();
    elsewhere.discovery_key = DiscoveryKey([0x42; 32]);
    let carried = new_writer();
    push_feed(&mut s, &carried, feed_of(&carried, &elsewhere, 1, 10, "carried")).await?;
    let (seen, _) = s.read_to_end().await?;
    ensure!(
        seen.contains(&Frame::Refuse { reason: peerlog_proto::wire::Refusal::ProtocolViolation }),
        "a head signed for another room was accepted: {seen:?}"
    );
    let texts = texts(&mut c, &room).await?;
    ensure!(!texts.iter().any(|t| t.starts_with("carried")), "the carried-over feed was stored: {texts:?}");
    Ok(())
}

/// A member who edits and deletes someone else's message, and floods it with reactions,
/// through entries of its own feed (the API would refuse): the entries are valid and
/// stored, but change nothing but what they may, within the bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_edits_and_deletions_change_nothing_and_reactions_are_bounded() -> Result<()> {
    use peerlog::log::index::REACTIONS_PER_MEMBER_MAX;
    use peerlog::log::MessageRef;

    let d = TestDaemon::start().await?;
    let mut c = d.client().await?;
    let room = join(&mut c, PASS).await?;
    let id = send(&mut c, &room, "mine alone").await?;
    let target = MessageRef::parse(&id).context("message id")?;

    let keys = room_keys(PASS);
    let scratch = tempfile::tempdir()?;
    let store = Store::open(&scratch.path().join("db"))?;
    let hostile = new_writer();
    let hk = FeedKey(hostile.verifying_key().to_bytes());
    let cipher = FeedCipher::new(&keys.content_key.context("member keys")?, &hk);
    let mut bodies = vec![
        Body::Edit { target, text: "forged".into() },
        Body::Delete { target },
        Body::React { target, emoji: "two words".into(), on: true },
    ];
    bodies.extend((0..REACTIONS_PER_MEMBER_MAX + 8).map(|i| Body::React { target, emoji: format!("r{i}"), on: true }));
    bodies.push(Body::Text { text: "marker".into() });
    let n = bodies.len() as u64;
    let head = store.append(&keys.discovery_key, &hostile, &cipher, 2, bodies)?.head;
    let entries = store.entries(&hk, 0, n)?;

    let raw = RawPeer::start().await?;
    let mut s = raw
        .open(d.p2p_addr().await?, d.peer_id()?, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    s.send(&Frame::Have { heads: vec![head.clone()], bytes: vec![] }).await?;
    s.recv_until("the daemon's Want for the hostile feed", |f| matches!(f, Frame::Want { .. })).await?;
    s.send(&Frame::Data { feed_key: hk, start: 0, entries, head: Some(head) }).await?;
    wait_for_text(&mut c, &room, "marker", WAIT).await?;

    let h = history(&mut c, &room, 10).await?;
    let m = h.iter().find(|m| m.id == id).context("the message")?;
    ensure!(m.text.as_deref() == Some("mine alone") && !m.edited && !m.deleted, "forged: {m:?}");
    let reactions = &m.reactions;
    ensure!(
        reactions.len() == REACTIONS_PER_MEMBER_MAX && reactions.iter().all(|r| r.emoji != "two words"),
        "one member's reactions: {reactions:?}"
    );
    Ok(())
}
