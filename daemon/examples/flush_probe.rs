//! Measures sled flush latency on this disk: `cargo run --release --example flush_probe`.
fn main() {
    let dir = std::env::temp_dir().join(format!("flush-probe-{}", std::process::id()));
    let db = sled::Config::new().path(&dir).flush_every_ms(Some(200)).open().unwrap();
    let t = db.open_tree("t").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (name, asynchronous) in [("flush", false), ("flush_async", true)] {
        let mut times = Vec::new();
        for i in 0..100u32 {
            t.insert(i.to_be_bytes(), vec![0u8; 300]).unwrap();
            let s = std::time::Instant::now();
            if asynchronous {
                rt.block_on(db.flush_async()).unwrap();
            } else {
                db.flush().unwrap();
            }
            times.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{name}: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms", times[50], times[90], times[99]);
    }
    let _ = std::fs::remove_dir_all(dir);
}
