//! How fast the store verifies and stores received entries, without any networking:
//! `cargo run --release -p peerlog --example ingest_probe [-- MESSAGES]`.
//! Also times reading them back (the serving side's part).
use peerlog::log::store::Store;
use peerlog::log::{new_writer, Body, FeedCipher};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let base = std::env::temp_dir().join(format!("ingest-probe-{}", std::process::id()));
    let (src, dst) = (Store::open(&base.join("src")).unwrap(), Store::open(&base.join("dst")).unwrap());
    let room = [1u8; 32];
    let content = [2u8; 32];
    let w = new_writer();
    let feed = w.verifying_key().to_bytes();
    let cipher = FeedCipher::new(&content, &feed);
    let text = "x".repeat(200);
    let mut head = None;
    for chunk in 0..n.div_ceil(1000) {
        let bodies = (0..1000.min(n - chunk * 1000)).map(|_| Body::Text { text: text.clone() }).collect();
        head = Some(src.append(&room, &w, &cipher, (chunk * 1000 + 1) as u64, bodies).unwrap().head);
    }
    let head = head.unwrap();
    let t = std::time::Instant::now();
    let mut all = Vec::new();
    for start in (0..n as u64).step_by(512) {
        all.push((start, src.entries(&feed, start, (start + 512).min(n as u64)).unwrap()));
    }
    let read = t.elapsed();
    let t = std::time::Instant::now();
    // Newest batch first, anchored by the head; older ones by their stored successors.
    for (start, entries) in all.iter().rev() {
        let anchor = (start + entries.len() as u64 == n as u64).then_some(&head);
        dst.ingest(&room, Some(&cipher), &feed, *start, entries, anchor).unwrap();
    }
    let ingest = t.elapsed();
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} entries of 200-byte messages: read back {:.0}/s, verify+decrypt+store {:.0}/s",
        rate(read),
        rate(ingest)
    );
    let _ = std::fs::remove_dir_all(base);
}
