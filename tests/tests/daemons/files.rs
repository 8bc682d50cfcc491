//! File transfer between real daemons on loopback: a big file arrives byte-identical, a
//! transfer resumes after its connection is cut, streamed uploads, and what is refused.
//! See `docs/PROTOCOL.md` ("Files").

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use peerlog::client::Client;
use peerlog::client::ClientError;
use peerlog_proto::api::files::{GetFile, GetFileParams, SendFile, SendFileParams, Url};
use peerlog_proto::api::messages::MessageInfo;
use peerlog_proto::api::{codes, events};
use peerlog_tests::*;

/// Writes `size` bytes of a pattern that differs in every chunk; returns its BLAKE3 hash.
fn write_pattern(path: &Path, size: usize) -> Result<blake3::Hash> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = blake3::Hasher::new();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 64 << 10];
    let mut left = size;
    while left > 0 {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n])?;
        hasher.update(&block[..n]);
        left -= n;
    }
    f.flush()?;
    Ok(hasher.finalize())
}

fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(std::fs::File::open(path)?)?;
    Ok(hasher.finalize())
}

/// Two daemons in one room (a bootstraps b), each with a client.
async fn pair() -> Result<(TestDaemon, TestDaemon, Client, Client, String)> {
    let a = TestDaemon::start_bootstrap_node().await?;
    let b = TestDaemon::start_bootstrapped(&a).await?;
    let (mut ca, mut cb) = (a.cli_client().await?, b.cli_client().await?);
    let room = join(&mut ca, "files test room with a long passphrase").await?;
    join(&mut cb, "files test room with a long passphrase").await?;
    cb.wait_for::<events::PeerJoined>(WAIT, "b's session with a", |_| true).await?;
    Ok((a, b, ca, cb, room))
}

/// The `file` message as b sees it once it arrived.
async fn wait_file_message(c: &mut Client, room: &str) -> Result<MessageInfo> {
    let m = c.wait_for::<events::Message>(WAIT, "the file message", |m| m.kind == "file").await?;
    ensure!(m.room == room, "file message in another room");
    ensure!(m.file.is_some(), "a file message without its file: {m:?}");
    Ok(m)
}

/// `files.send` of a path on the daemon's machine.
fn send_path(room: &str, path: &Path) -> SendFileParams {
    SendFileParams { room: room.into(), path: Some(path.display().to_string()), ..Default::default() }
}

/// `files.get` of `m`'s file into a path on the daemon's machine.
fn get_to(room: &str, m: &MessageInfo, path: impl AsRef<Path>) -> GetFileParams {
    GetFileParams {
        room: room.into(),
        file: m.id.clone(),
        path: Some(path.as_ref().display().to_string()),
        stream: false,
    }
}

/// The error code and message of a refused request.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Result<(i32, String)> {
    match r {
        Err(ClientError::Rpc { code, message }) => Ok((code, message)),
        other => Err(anyhow::anyhow!("expected an error, got {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_arrives_byte_identical() -> Result<()> {
    const SIZE: usize = 200 << 20;
    let (a, b, mut ca, mut cb, room) = pair().await?;
    let src = a.data_dir().join("big.bin");
    let want = write_pattern(&src, SIZE)?;
    let sent = ca.request::<SendFile>(&send_path(&room, &src)).await?;
    ensure!(sent.file.size == SIZE as u64 && sent.file.chunks == 200, "file message: {sent:?}");
    let m = wait_file_message(&mut cb, &room).await?;
    let file = m.file.as_ref().context("the file")?;
    ensure!(file.name == "big.bin" && file.size == SIZE as u64, "b sees {m:?}");

    let dest = b.data_dir().join("received.bin");
    let started = Instant::now();
    let got =
        within(Duration::from_secs(240), "the 200 MiB download", cb.request::<GetFile>(&get_to(&room, &m, &dest)))
            .await??;
    let secs = started.elapsed().as_secs_f64();
    println!("200 MiB fetched and written in {secs:.2} s: {:.0} MiB/s", 200.0 / secs);
    ensure!(got.file.size == SIZE as u64, "files.get answered {got:?}");
    ensure!(hash_file(&dest)? == want, "the received file differs from the sent one");
    ensure!(!b.data_dir().join(".received.bin.peerlog-part").exists(), "temporary file left behind");
    // Progress reached the end on both sides.
    let done = |p: &events::FileProgress, dir: &str| p.direction == dir && p.done;
    cb.wait_for::<events::FileProgress>(WAIT, "b's final receive progress", |p| done(p, "receive")).await?;
    ca.wait_for::<events::FileProgress>(WAIT, "a's final send progress", |p| done(p, "send")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_transfer_resumes_after_the_connection_is_cut_halfway() -> Result<()> {
    const SIZE: usize = 64 << 20;
    let (a, b, mut ca, mut cb, room) = pair().await?;
    let src = a.data_dir().join("resume.bin");
    let want = write_pattern(&src, SIZE)?;
    ca.request::<SendFile>(&send_path(&room, &src)).await?;
    let m = wait_file_message(&mut cb, &room).await?;
    subscribe(&mut cb, &["file.progress", "peer.left", "peer.joined"]).await?;

    // The download runs on its own connection; this one watches.
    let dest = b.data_dir().join("resumed.bin");
    let mut getter = b.cli_client().await?;
    let params = get_to(&room, &m, &dest);
    let download = tokio::spawn(async move { getter.request::<GetFile>(&params).await });

    let half = (SIZE / 2) as u64;
    let at_cut = cb
        .wait_for::<events::FileProgress>(WAIT, "half of the file to arrive", |p| p.bytes_done >= half)
        .await?
        .bytes_done;
    let a_id = a.peer_id()?;
    b.daemon.as_ref().context("b running")?.service().node.disconnect(a_id).await?;
    cb.wait_for::<events::PeerLeft>(WAIT, "b to drop its session with a", |_| true).await?;
    cb.wait_for::<events::PeerJoined>(WAIT, "b to reconnect to a", |_| true).await?;
    let after = cb.wait_for::<events::FileProgress>(WAIT, "progress after the reconnect", |_| true).await?.bytes_done;
    ensure!(after >= at_cut, "progress went back from {at_cut} to {after} bytes: the transfer restarted");
    let got = within(Duration::from_secs(120), "the download to finish", download).await???;
    ensure!(got.file.size == SIZE as u64, "files.get answered {got:?}");
    ensure!(hash_file(&dest)? == want, "the resumed file differs from the sent one");
    println!("cut at {at_cut} of {SIZE} bytes; resumed at {after}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_uploads_arrive_and_bad_requests_are_refused() -> Result<()> {
    let (_a, b, mut ca, mut cb, room) = pair().await?;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let upload = |name: &str, size: u64| SendFileParams {
        room: room.clone(),
        name: Some(name.into()),
        size: Some(size),
        ..Default::default()
    };
    let sent =
        ca.request_with_upload::<SendFile>(&upload("../../notes.txt", data.len() as u64), &data, 256 << 10).await?;
    ensure!(sent.file.name == "notes.txt", "directories must be stripped from names: {sent:?}");
    ensure!(sent.file.mime == "text/plain", "mime from the name: {sent:?}");
    let m = wait_file_message(&mut cb, &room).await?;
    let dest = b.data_dir().join("notes.txt");
    cb.request::<GetFile>(&get_to(&room, &m, &dest)).await?;
    ensure!(std::fs::read(&dest)? == data, "streamed upload differs after the transfer");

    // Streamed back over the WebSocket: the reply, then the bytes as binary frames.
    let stream = GetFileParams { room: room.clone(), file: m.id.clone(), path: None, stream: true };
    let streamed = cb.request::<GetFile>(&stream).await?;
    ensure!(streamed.streamed && streamed.file.size == data.len() as u64, "{streamed:?}");
    let bytes = within(WAIT, "the streamed bytes", cb.read_binary(data.len() as u64)).await??;
    ensure!(bytes == data, "streamed bytes differ");

    // The HTTP download: with a ticket from files.url (what the web UI uses) or the token in
    // a header; never with the token in the URL, which would end up in browser history.
    let d = b.daemon.as_ref().context("b running")?;
    let base = format!("http://{}", d.api_addr());
    let plain = format!("{base}{}", m.file.as_ref().context("the file")?.url);
    let params = peerlog_proto::api::files::FileUrlParams { room: room.clone(), file: m.id.clone(), inline: false };
    let url = format!("{base}{}", cb.request::<Url>(&params).await?.url);
    ensure!(!url.contains(&d.token()) && !url.contains(d.cli_token()), "a download URL carries a credential: {url}");
    let body = http_get(&url, None).await?;
    ensure!(body.0 == 200 && body.1 == data, "HTTP download: status {} with {} bytes", body.0, body.1.len());
    let bearer = format!("Bearer {}", d.token());
    let body = http_get(&plain, Some(&bearer)).await?;
    ensure!(body.0 == 200 && body.1 == data, "download with the token in a header: status {}", body.0);
    ensure!(http_get(&plain, None).await?.0 == 401, "a download without a ticket or token must be refused");
    let in_url = format!("{plain}?token={}", d.token());
    ensure!(http_get(&in_url, None).await?.0 == 401, "the token in a download URL must not work");
    // A later expiry, or an inline disposition the ticket was not made for.
    for forged in [url.replace("expires=", "expires=9"), format!("{url}&inline=1")] {
        ensure!(http_get(&forged, None).await?.0 == 401, "an altered ticket URL must be refused: {forged}");
    }

    // Refused, and the daemon goes on: an existing destination, a relative path, a
    // message that is not a file, more bytes than announced, a file over the limit.
    let (code, msg) = refused(cb.request::<GetFile>(&get_to(&room, &m, &dest)).await)?;
    ensure!(code == codes::LOCAL_FILE && msg.contains("exists"), "{code} {msg}");
    let (code, _) = refused(cb.request::<GetFile>(&get_to(&room, &m, "x.bin")).await)?;
    ensure!(code == codes::INVALID_PARAMS, "relative path: {code}");
    let nowhere = format!("{}:0", "ab".repeat(32));
    let get = |file: &str| GetFileParams { room: room.clone(), file: file.into(), ..Default::default() };
    let (code, msg) = refused(ca.request::<GetFile>(&get(&nowhere)).await)?;
    ensure!(code == codes::NOT_FOUND, "a message that is not in the room: {code} {msg}");
    let before =
        peerlog_proto::api::messages::HistoryParams { room: room.clone(), before: Some(nowhere.clone()), limit: None };
    let (code, msg) = refused(ca.request::<peerlog_proto::api::messages::History>(&before).await)?;
    ensure!(code == codes::NOT_FOUND, "history before a message that is not in the room: {code} {msg}");
    let text = send(&mut ca, &room, "not a file").await?;
    let (code, msg) = refused(ca.request::<GetFile>(&get(&text)).await)?;
    ensure!(code == codes::INVALID_PARAMS && msg.contains("not a file"), "{code} {msg}");
    let (code, msg) = refused(ca.request_with_upload::<SendFile>(&upload("long", 2), &[1, 2, 3], 3).await)?;
    ensure!(code == codes::INVALID_PARAMS && msg.contains("more than"), "oversent upload: {code} {msg}");
    let (code, msg) = refused(ca.request::<SendFile>(&upload("huge", 2 << 30)).await)?;
    ensure!(code == codes::TOO_LARGE, "oversized upload: {code} {msg}");
    ensure!(send(&mut cb, &room, "still here").await.is_ok(), "b must keep working");
    Ok(())
}

/// A peer that answers a chunk request with bytes that do not hash to the chunk's id: the
/// daemon stores nothing of it, does not ask that session again, and takes the chunk from
/// the next session that has it. The file then arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_chunk_is_refused_and_fetched_again_elsewhere() -> Result<()> {
    use peerlog::files::{Chunks, Encoder};
    use peerlog::log::{new_writer, Body, FeedCipher};
    use peerlog_proto::wire::{ChunkId, FeedKey, Frame};

    const PASS: &str = "corrupt chunks get no foothold here";
    let d = TestDaemon::start().await?;
    let mut c = d.cli_client().await?;
    let room = join(&mut c, PASS).await?;
    let keys = room_keys(PASS);
    let content_key = keys.content_key.context("member keys")?;

    // A raw writer shares a 300,000-byte file (one chunk) the daemon has never seen.
    let scratch = tempfile::tempdir()?;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let file_id = [9u8; 32];
    let raw_chunks = Chunks::new(scratch.path());
    let mut enc = Encoder::new(&content_key, &file_id, raw_chunks.clone(), 1 << 30);
    enc.push(&data)?;
    let (ids, size) = enc.finish()?;
    let store = peerlog::log::store::Store::open(&scratch.path().join("db"))?;
    let writer = new_writer();
    let feed = FeedKey(writer.verifying_key().to_bytes());
    let cipher = FeedCipher::new(&content_key, &feed);
    let body = Body::File {
        file_id,
        name: "raw.bin".into(),
        size,
        mime: "application/octet-stream".into(),
        chunks: ids.clone(),
    };
    let head = store.append(&keys.discovery_key, &writer, &cipher, 1, vec![body])?.head;
    let entries = store.entries(&feed, 0, 1)?;

    let raw = RawPeer::start().await?;
    let (addr, peer) = (d.p2p_addr().await?, d.peer_id()?);
    let mut s = raw
        .open(addr.clone(), peer, keys.discovery_key, keys.auth_key)
        .await?
        .map_err(|f| anyhow::anyhow!("refused: {f:?}"))?;
    s.send(&Frame::Have { heads: vec![head.clone()], bytes: vec![] }).await?;
    s.recv_until("the daemon's Want for the raw feed", |f| matches!(f, Frame::Want { .. })).await?;
    s.send(&Frame::Data { feed_key: feed, start: 0, entries, head: Some(head) }).await?;
    let m = wait_file_message(&mut c, &room).await?;

    let dest = d.data_dir().join("raw.bin");
    let mut getter = d.cli_client().await?;
    let params = get_to(&room, &m, &dest);
    let download = tokio::spawn(async move { getter.request::<GetFile>(&params).await });

    let id = ids[0];
    let want = s.recv_until("the daemon's WantChunk", |f| matches!(f, Frame::WantChunk { .. })).await?;
    ensure!(want == Frame::WantChunk { id, offset: 0 }, "asked for {want:?}");
    s.send(&Frame::Chunk { id, offset: 0, total: 1000, bytes: vec![0xAB; 1000] }).await?;
    // The session stays up (a bad chunk is refused, not a protocol break), and nothing of
    // the bad bytes is stored.
    // Frames are handled in order: once a probe is answered, the bad chunk was judged.
    let probe = ChunkId([0x77; 32]);
    s.send(&Frame::WantChunk { id: probe, offset: 0 }).await?;
    s.recv_until("the answer to the probe", |f| *f == Frame::NoChunk { id: probe }).await?;
    let hex = hex_of(&id.0);
    let stored = d.data_dir().join("chunks").join(&hex[..2]).join(&hex);
    ensure!(!stored.exists(), "a chunk that does not match its id was stored");
    drop(s);

    // Another session (the same peer, reconnected) has the right bytes.
    let mut s = within(WAIT, "a second raw session", async {
        loop {
            if let Ok(Ok(s)) = raw.open(addr.clone(), peer, keys.discovery_key, keys.auth_key).await {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?;
    s.recv_until("the WantChunk on the new session", |f| *f == Frame::WantChunk { id, offset: 0 }).await?;
    let good = raw_chunks.read(&id)?.context("raw chunk")?;
    // In two parts, as over a relay.
    let total = good.len() as u32;
    s.send(&Frame::Chunk { id, offset: 0, total, bytes: good[..1000].to_vec() }).await?;
    s.send(&Frame::Chunk { id, offset: 1000, total, bytes: good[1000..].to_vec() }).await?;
    let got = within(WAIT, "the download", download).await???;
    ensure!(got.file.size == 300_000, "{got:?}");
    ensure!(std::fs::read(&dest)? == data, "the file differs after the retry");
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
