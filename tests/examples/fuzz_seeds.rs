//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`): valid inputs of
//! each kind, for the fuzzer to mutate from. Re-run after a wire or API change:
//!
//!   cargo run -p peerlog-tests --example fuzz_seeds
//!
//! (The `ingest` seeds are Data frames of the room and content key the target uses.)

use std::path::Path;

use anyhow::Result;
use peerlog::keys::{RoomSecret, SeedCapability};
use peerlog::log::store::Store;
use peerlog::log::{new_writer, Body, FeedCipher};
use peerlog_proto::wire::{ChunkId, DiscoveryKey, FeedKey, Frame, PeerAddrs, Refusal};
use serde_json::json;

const ROOM: DiscoveryKey = DiscoveryKey([7; 32]);
const CONTENT: [u8; 32] = [9; 32];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn main() -> Result<()> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus"));
    let tmp = tempfile::tempdir()?;
    let store = Store::open(tmp.path())?;
    let w = new_writer();
    let feed = FeedKey(w.verifying_key().to_bytes());
    let cipher = FeedCipher::new(&CONTENT, &feed);
    let first = store.append(&ROOM, &w, &cipher, 1, vec![Body::Text { text: "one".into() }])?;
    let bodies = (0..3).map(|i| Body::Text { text: format!("batch {i}") }).collect();
    let batch = store.append(&ROOM, &w, &cipher, 2, bodies)?;
    let all = store.entries(&feed, 0, 4)?;

    // ingest: a feed from the start, a later batch anchored by its head, one without.
    let ingest = root.join("ingest");
    let data = |start: u64, entries: &[peerlog_proto::wire::Entry], head| Frame::Data {
        feed_key: feed,
        start,
        entries: entries.to_vec(),
        head,
    };
    write(&ingest, "first", &data(0, &all[..1], Some(first.head.clone())).encode())?;
    write(&ingest, "all", &data(0, &all, Some(batch.head.clone())).encode())?;
    write(&ingest, "later", &data(1, &all[1..], Some(batch.head.clone())).encode())?;
    write(&ingest, "unanchored", &data(2, &all[2..3], None).encode())?;

    // frame: one of each kind.
    let frames = [
        Frame::Hello { room_tag: [1; 32], nonce: [2; 32] },
        Frame::Auth { mac: [3; 32] },
        Frame::Have { heads: vec![batch.head.clone()], bytes: vec![1234] },
        Frame::Want { feed_key: feed, start: 0, end: 4 },
        data(0, &all, Some(batch.head.clone())),
        Frame::NoData { feed_key: feed, below: 4 },
        Frame::Refuse { reason: Refusal::BadAuth },
        Frame::Peers {
            peers: vec![PeerAddrs { peer_id: vec![0, 36, 8, 1], addrs: vec![vec![4, 127, 0, 0, 1].into()] }],
        },
        Frame::WantChunk { id: ChunkId([4; 32]), offset: 0 },
        Frame::Chunk { id: ChunkId([4; 32]), offset: 0, total: 3, bytes: vec![1, 2, 3] },
        Frame::NoChunk { id: ChunkId([4; 32]) },
        Frame::Writer { feed_key: feed, signature: vec![5; 64] },
        Frame::Alive {
            records: vec![peerlog_proto::wire::Alive {
                feed_key: feed,
                at_ms: 1_800_000_000_000,
                signature: vec![6; 64],
            }],
        },
    ];
    for (i, f) in frames.iter().enumerate() {
        write(&root.join("frame"), &format!("kind{i:02}"), &f.encode())?;
    }

    // keys_text: an invite, a seed capability, near misses.
    let secret = RoomSecret::random();
    let cap = SeedCapability::of(&secret.keys());
    let keys_text = root.join("keys_text");
    write(&keys_text, "invite", secret.to_invite().as_bytes())?;
    write(&keys_text, "seed", cap.to_text().as_bytes())?;
    write(&keys_text, "short", b"peerlog:abc")?;

    // api_request: each method with plausible params.
    let api = root.join("api_request");
    let requests = [
        json!({"id": 1, "method": "node.info"}),
        json!({"id": 2, "method": "rooms.create", "params": {"name": "fuzz"}}),
        json!({"id": 3, "method": "rooms.list"}),
        json!({"id": 4, "method": "messages.send", "params": {"room": "0011223344556677", "text": "hi"}}),
        json!({"id": 5, "method": "messages.send_batch", "params": {"room": "0011223344556677", "texts": ["a", "b"]}}),
        json!({"id": 6, "method": "messages.history", "params": {"room": "0011223344556677", "limit": 5, "before": "00:1"}}),
        json!({"id": 7, "method": "rooms.invite", "params": {"room": "0011223344556677", "kind": "seed"}}),
        json!({"id": 8, "method": "rooms.seed", "params": {"capability": cap.to_text()}}),
        json!({"id": 9, "method": "rooms.members", "params": {"room": "0011223344556677"}}),
        json!({"id": 10, "method": "peers.list", "params": {}}),
        json!({"id": 11, "method": "peers.rename", "params": {"peer": hex(&feed), "nickname": "x"}}),
        json!({"id": 12, "method": "peers.block", "params": {"peer": hex(&feed)}}),
        json!({"id": 13, "method": "profile.set", "params": {"display_name": "fuzzer"}}),
        json!({"id": 14, "method": "subscribe", "params": {"events": ["message"]}}),
        json!({"id": 15, "method": "passphrase.check", "params": {"passphrase": "correct horse"}}),
        json!({"id": 16, "method": "rooms.leave", "params": {"room": "0011223344556677"}}),
        json!([1, 2, 3]),
    ];
    for (i, r) in requests.iter().enumerate() {
        write(&api, &format!("req{i:02}"), r.to_string().as_bytes())?;
    }
    println!("wrote seed corpora under {}", root.display());
    Ok(())
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}
