//! `Store::ingest` with hostile batches: whatever a member sends as `Data` (the input is a
//! postcard-encoded frame, mutated), storing never panics, never stores what does not
//! verify, and a store that took it still reads back consistently.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peerlog::log::store::Store;
use peerlog::log::FeedCipher;
use peerlog_proto::wire::{DiscoveryKey, Frame};

const ROOM: DiscoveryKey = DiscoveryKey([7; 32]);
const CONTENT: [u8; 32] = [9; 32];

fn store() -> &'static Store {
    static S: OnceLock<(Store, std::path::PathBuf)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("peerlog-fuzz-ingest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (Store::open(&dir).expect("a store for the fuzzer"), dir)
    })
    .0
}

fuzz_target!(|data: &[u8]| {
    let Ok(Frame::Data { feed_key, start, entries, head }) = Frame::decode(data) else { return };
    if entries.is_empty() {
        return; // nothing to store: Ok without a trace, by design
    }
    let cipher = FeedCipher::new(&CONTENT, &feed_key);
    let s = store();
    let before = s.feed_meta(&feed_key).ok().flatten().map_or(0, |m| m.length());
    if s.ingest(&ROOM, Some(&cipher), &feed_key, start, &entries, head.as_ref()).is_ok() {
        // What was stored reads back, and decrypts.
        let meta = s.feed_meta(&feed_key).expect("meta").expect("a stored feed has meta");
        let end = start + entries.len() as u64;
        let back = s.entries(&feed_key, start, end).expect("stored entries read back");
        assert!(back.len() as u64 == end - start || meta.length() < end);
        for (i, e) in back.iter().enumerate() {
            cipher.open(start + i as u64, e).expect("a stored entry decrypts");
        }
        assert!(meta.length() >= before);
    }
});
