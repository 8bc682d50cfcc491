//! How fast the store verifies and stores received entries, without any networking:
//! `cargo run --release -p peerlog --example ingest_probe [-- MESSAGES]`.
//! Also times reading them back (the serving side's part), and reports the bytes on disk
//! per message and the process's peak RSS.
use peerlog::bench::status_kib;
use peerlog::disk::dir_bytes;
use peerlog::log::store::Store;
use peerlog::log::{new_writer, Body, FeedCipher};
use peerlog_proto::wire::{DiscoveryKey, FeedKey};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let base = std::env::temp_dir().join(format!("ingest-probe-{}", std::process::id()));
    // PROBE_CACHE_MB: sled's cache for both stores (default: the daemon's default).
    let cache = std::env::var("PROBE_CACHE_MB").ok().and_then(|v| v.parse::<u64>().ok()).map(|mb| mb << 20);
    let open = |dir: &str| match cache {
        Some(bytes) => Store::open_with_cache(&base.join(dir), bytes).unwrap(),
        None => Store::open(&base.join(dir)).unwrap(),
    };
    let (src, dst) = (open("src"), open("dst"));
    let room = DiscoveryKey([1u8; 32]);
    let content = [2u8; 32];
    let w = new_writer();
    let feed = FeedKey(w.verifying_key().to_bytes());
    let cipher = FeedCipher::new(&content, &feed);
    let text = "x".repeat(200);
    let mut head = None;
    let t = std::time::Instant::now();
    for chunk in 0..n.div_ceil(1000) {
        let bodies = (0..1000.min(n - chunk * 1000)).map(|_| Body::Text { text: text.clone() }).collect();
        head = Some(src.append(&room, &w, &cipher, (chunk * 1000 + 1) as u64, bodies).unwrap().head);
    }
    let append = t.elapsed();
    let head = head.unwrap();
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    let t = std::time::Instant::now();
    // Newest batch first, anchored by the head; older ones by their stored successors.
    let mut end = n as u64;
    while end > 0 {
        let start = end.saturating_sub(512);
        let entries = src.entries(&feed, start, end).unwrap();
        assert_eq!(entries.len() as u64, end - start);
        let anchor = (end == n as u64).then_some(&head);
        dst.ingest(&room, Some(&cipher), &feed, start, &entries, anchor).unwrap();
        end = start;
    }
    let ingest = t.elapsed();
    let rss_after_ingest = status_kib(std::process::id(), "VmRSS:");
    let t = std::time::Instant::now();
    let mut read = 0;
    for start in (0..n as u64).step_by(512) {
        read += dst.entries(&feed, start, (start + 512).min(n as u64)).unwrap().len();
    }
    assert_eq!(read, n);
    let read_back = t.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(dst.flush()).unwrap();
    let disk: u64 = dir_bytes(&base.join("dst"));
    let history = dst.history(&room, &content, None, 50).unwrap();
    assert_eq!(history.len(), 50.min(n));
    println!(
        "{n} entries of 200-byte messages: append (batches of 1000) {:.0}/s, verify+decrypt+store {:.0}/s, \
         read back {:.0}/s, disk {:.0} B/message, RSS after ingest {} MiB, peak RSS {} MiB",
        rate(append),
        rate(ingest),
        rate(read_back),
        disk as f64 / n as f64,
        rss_after_ingest / 1024,
        status_kib(std::process::id(), "VmHWM:") / 1024
    );
    let _ = std::fs::remove_dir_all(base);
}
