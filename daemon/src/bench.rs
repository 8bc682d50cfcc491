//! `peerlog bench`: figures from real daemons (separate processes of this binary) on
//! loopback, printed for people or, with `--json`, for scripts. The targets and recorded
//! results are in BENCHMARKS.md.
//!
//! - append: durable `messages.send` one at a time (1 client, then 16 concurrent clients
//!   sharing group commits), and `messages.send_batch` in batches of 100 and 1,000;
//! - live latency: `messages.send` on A → the `message` event on B's WebSocket, 1,000
//!   messages one at a time;
//! - catch-up: a fresh daemon joins (by invite: no Argon2id in the figure) a room holding
//!   N messages of 200 bytes; the time from `rooms.join` returning until its
//!   `sync.progress` says all N are verified and stored;
//! - files: A sends a file from a path (`files.send`: read, encrypt, store chunks, append
//!   the message); B, connected, fetches it to a path (`files.get`: chunks over the
//!   replication protocol, verified, decrypted, written, synced);
//! - resources: idle RSS of a fresh daemon; RSS and bytes on disk per message of a daemon
//!   holding the big room, after the catch-up and again after a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use peerlog_proto::api::events::{self, EventParams};
use peerlog_proto::api::{files, messages, node, rooms, NoParams};

use crate::client::Client;
use crate::config::DhtMode;
use crate::disk::dir_bytes;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The `peerlog` binary to start daemons from.
    pub exe: PathBuf,
    /// Messages in the catch-up room.
    pub messages: u64,
    /// Messages in the big catch-up room (0: skip).
    pub big: u64,
    /// Rounds of the latency and catch-up figures.
    pub rounds: usize,
    /// Size of the file-transfer file in MiB (0: skip).
    pub file_mib: u64,
}

/// What `peerlog bench --room-size N` runs: N daemons in one room.
#[derive(Clone, Debug)]
pub struct RoomOptions {
    /// The `peerlog` binary to start daemons from.
    pub exe: PathBuf,
    /// Daemons in the room.
    pub size: usize,
}

/// Size of every benchmark message's text.
const TEXT_BYTES: usize = 200;
/// Time allowed for any one step; a step that takes longer fails the run with its name.
const STEP: Duration = Duration::from_secs(300);

/// A daemon in its own process with its own data dir.
struct Proc {
    exe: PathBuf,
    dir: PathBuf,
    bootstrap: Option<String>,
    dht: DhtMode,
    child: Child,
    api: std::net::SocketAddr,
    token: String,
    /// `/ip4/127.0.0.1/tcp/PORT/p2p/PEERID`.
    addr: String,
}

impl Proc {
    async fn start(exe: &Path, name: &str, bootstrap: Option<&str>) -> Result<Self> {
        Self::start_with(exe, name, bootstrap, DhtMode::Server).await
    }

    /// A daemon on the DHT mode users get (auto: a client on loopback) or as a server.
    async fn start_with(exe: &Path, name: &str, bootstrap: Option<&str>, dht: DhtMode) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("peerlog-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self::spawn(exe.to_path_buf(), dir, bootstrap.map(str::to_owned), dht).await
    }

    async fn spawn(exe: PathBuf, dir: PathBuf, bootstrap: Option<String>, dht: DhtMode) -> Result<Self> {
        let _ = std::fs::remove_file(dir.join("api-port"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("daemon")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--api-listen", "127.0.0.1:0", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--relay-server", "off"])
            .env("RUST_LOG", "warn")
            .env("PEERLOG_NETWORK", "private")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(b) = &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        if dht == DhtMode::Server {
            cmd.args(["--dht-mode", "server"]);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", exe.display()))?;
        let port_file = dir.join("api-port");
        let t0 = Instant::now();
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse().ok()) {
                break p;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("daemon in {} wrote no api-port within 30 s (see {}.log)", dir.display(), dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The CLI credential: the bench names files by path.
        let token = std::fs::read_to_string(dir.join("cli-token"))?.trim().to_owned();
        let api = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut proc = Self { exe, dir, bootstrap, dht, child, api, token, addr: String::new() };
        let info = proc.client().await?.request::<node::Info>(&NoParams {}).await?;
        let listen = info
            .listen_addrs
            .iter()
            .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
            .ok_or_else(|| anyhow!("daemon has no loopback TCP address"))?;
        proc.addr = format!("{listen}/p2p/{}", info.peer_id);
        Ok(proc)
    }

    async fn client(&self) -> Result<Client> {
        Ok(Client::connect(self.api, &self.token).await?)
    }

    fn rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "VmRSS:")
    }

    /// CPU seconds used so far (user and system).
    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    /// A counter or gauge of its `/metrics`, summed over its label sets.
    async fn metric(&self, name: &str) -> Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.api).await?;
        let host = self.api;
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        s.write_all(request.as_bytes()).await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        let total = body
            .lines()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        Ok(total)
    }

    fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir.join("db"))
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same data dir.
    async fn restart(mut self) -> Result<Self> {
        self.stop()?;
        let (exe, dir, bootstrap, dht) = (self.exe.clone(), self.dir.clone(), self.bootstrap.clone(), self.dht);
        std::mem::forget(self);
        Self::spawn(exe, dir, bootstrap, dht).await
    }

    fn stop(&mut self) -> Result<()> {
        // SAFETY: kill(2) with a PID we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                bail!("daemon did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// CPU seconds (user and system) a process used, from `/proc/PID/stat`; 0 if unreadable.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces), from field 3 on.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// A `/proc/PID/status` field in KiB (`VmRSS:`, `VmHWM:`), 0 if unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn step<T>(what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STEP, fut).await.map_err(|_| anyhow!("{what}: not done within {} s", STEP.as_secs()))?
}

fn text(i: u64) -> String {
    let mut t = format!("bench message {i:09} ");
    t.extend(std::iter::repeat_n('x', TEXT_BYTES - t.len()));
    t
}

async fn create_room(c: &mut Client, name: &str) -> Result<(String, String)> {
    let r = c.request::<rooms::Create>(&rooms::CreateParams { name: Some(name.into()) }).await?;
    let invite = r.invite.ok_or_else(|| anyhow!("rooms.create without invite"))?;
    Ok((r.room.id, invite))
}

async fn join_room(c: &mut Client, invite: &str) -> Result<()> {
    c.request::<rooms::Join>(&rooms::JoinParams { invite: Some(invite.into()), ..Default::default() }).await?;
    Ok(())
}

async fn subscribe(c: &mut Client, events: &[&str]) -> Result<()> {
    let params = files::SubscribeParams { events: Some(events.iter().map(|e| e.to_string()).collect()) };
    c.request::<files::Subscribe>(&params).await?;
    Ok(())
}

async fn send(c: &mut Client, room: &str, text: String) -> Result<()> {
    let params = messages::SendParams { room: room.into(), text, reply_to: None, mentions: Vec::new() };
    c.request::<messages::Send>(&params).await?;
    Ok(())
}

async fn fill(c: &mut Client, room: &str, n: u64, batch: u64) -> Result<()> {
    let mut i = 0;
    while i < n {
        let k = batch.min(n - i);
        let texts: Vec<String> = (i..i + k).map(text).collect();
        c.request::<messages::SendBatch>(&messages::SendBatchParams { room: room.into(), texts }).await?;
        i += k;
    }
    Ok(())
}

/// Durable single sends from `clients` concurrent clients, `per_client` each: messages/s.
async fn append_single(p: &Proc, room: &str, clients: usize, per_client: u64) -> Result<f64> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        // Senders only: every `message` event to 16 clients would cost more than the appends.
        let mut c = p.client().await?;
        subscribe(&mut c, &[]).await?;
        conns.push(c);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, mut c)| {
            let room = room.to_owned();
            tokio::spawn(async move {
                for i in 0..per_client {
                    send(&mut c, &room, text(k as u64 * 1_000_000 + i)).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((clients as u64 * per_client) as f64 / t0.elapsed().as_secs_f64())
}

/// Batches of `batch` through `messages.send_batch`, `n` messages in all: messages/s.
async fn append_batches(p: &Proc, room: &str, n: u64, batch: u64) -> Result<f64> {
    let mut c = p.client().await?;
    subscribe(&mut c, &[]).await?;
    let t0 = Instant::now();
    fill(&mut c, room, n, batch).await?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// 1,000 messages one at a time from A to B: latencies in ms, sorted.
async fn live_latency(a: &Proc, b: &Proc, round: usize) -> Result<Vec<f64>> {
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    subscribe(&mut ca, &[]).await?;
    subscribe(&mut cb, &[events::Message::NAME, events::PeerJoined::NAME]).await?;
    let (room, invite) = create_room(&mut ca, &format!("live-{round}")).await?;
    join_room(&mut cb, &invite).await?;
    step("B's session with A in the live room", async {
        cb.wait_for::<events::PeerJoined>(STEP, "peer.joined", |_| true).await?;
        Ok(())
    })
    .await?;
    let mut out = Vec::with_capacity(1000);
    for i in 0..1000u64 {
        let t = text(i);
        let t0 = Instant::now();
        send(&mut ca, &room, t.clone()).await?;
        cb.wait_for::<events::Message>(Duration::from_secs(10), "message event on B", |m| {
            m.text.as_deref() == Some(t.as_str())
        })
        .await?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// A sends a `mib` MiB file from a path, B fetches it to a path: MiB/s of each.
async fn file_transfer(a: &Proc, b: &Proc, round: usize, mib: u64) -> Result<(f64, f64)> {
    let (mut ca, mut cb) = (a.client().await?, b.client().await?);
    subscribe(&mut ca, &[]).await?;
    subscribe(&mut cb, &[events::PeerJoined::NAME]).await?;
    let (room, invite) = create_room(&mut ca, &format!("files-{round}")).await?;
    join_room(&mut cb, &invite).await?;
    cb.wait_for::<events::PeerJoined>(STEP, "peer.joined", |_| true).await?;
    let src = a.dir.join(format!("bench-{round}.bin"));
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src)?);
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize * 31 + j * 7 + round) as u8;
            }
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    let t0 = Instant::now();
    let params =
        files::SendFileParams { room: room.clone(), path: Some(src.display().to_string()), ..Default::default() };
    let sent = ca.request::<files::SendFile>(&params).await?;
    let send = mib as f64 / t0.elapsed().as_secs_f64();
    let id = sent.message.ok_or_else(|| anyhow!("files.send without its message"))?.id;
    let dest = b.dir.join(format!("bench-{round}.bin"));
    let t0 = Instant::now();
    let params = files::GetFileParams { room, file: id, path: Some(dest.display().to_string()), stream: false };
    cb.request::<files::GetFile>(&params).await?;
    let fetch = mib as f64 / t0.elapsed().as_secs_f64();
    let _ = (std::fs::remove_file(&src), std::fs::remove_file(&dest));
    Ok((send, fetch))
}

/// A fresh daemon joins `invite` and catches up `n` messages. Returns the seconds from the
/// end of `rooms.join` until its `sync.progress` reports all `n` stored, and the daemon.
async fn catch_up(exe: &Path, a: &Proc, name: &str, invite: &str, n: u64) -> Result<(f64, Proc)> {
    let c = Proc::start(exe, name, Some(&a.addr)).await?;
    let mut cc = c.client().await?;
    subscribe(&mut cc, &[events::SyncProgress::NAME]).await?;
    join_room(&mut cc, invite).await?;
    let t0 = Instant::now();
    cc.wait_for::<events::SyncProgress>(STEP, &format!("sync.progress with all {n} entries"), |p| p.entries_done >= n)
        .await?;
    Ok((t0.elapsed().as_secs_f64(), c))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Median and range of several runs.
fn spread(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({ "median": pct(&v, 0.5), "min": v[0], "max": v[v.len() - 1], "runs": v })
}

/// Runs everything and returns the figures as JSON.
pub async fn run(opts: &BenchOptions, progress: impl Fn(&str)) -> Result<Value> {
    let exe = &opts.exe;
    let rounds = opts.rounds.max(1);
    let mut out = json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()) },
        "version": env!("CARGO_PKG_VERSION"),
    });

    progress("idle RSS of a fresh daemon");
    let a = Proc::start(exe, "a", None).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    out["idle_rss_mib"] = json!(a.rss_kib() as f64 / 1024.0);

    progress("append: single sends, 1 and 16 clients; batches of 100 and 1,000");
    let mut ca = a.client().await?;
    subscribe(&mut ca, &[]).await?;
    let (append_room, _) = create_room(&mut ca, "append").await?;
    out["append"] = json!({
        "single_1_client_per_s": step("single sends", append_single(&a, &append_room, 1, 2000)).await?,
        "single_16_clients_per_s": step("concurrent sends", append_single(&a, &append_room, 16, 1000)).await?,
        "batch_100_per_s": step("batches of 100", append_batches(&a, &append_room, 20_000, 100)).await?,
        "batch_1000_per_s": step("batches of 1000", append_batches(&a, &append_room, 100_000, 1000)).await?,
    });

    progress("live latency: 1,000 messages one at a time, A → B");
    let b = Proc::start(exe, "b", Some(&a.addr)).await?;
    let (mut p50, mut p95, mut p99) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let l = step("live latency", live_latency(&a, &b, round)).await?;
        p50.push(pct(&l, 0.5));
        p95.push(pct(&l, 0.95));
        p99.push(pct(&l, 0.99));
    }
    if opts.file_mib > 0 {
        progress(&format!("files: {} MiB from A to B", opts.file_mib));
        let (mut send, mut fetch) = (vec![], vec![]);
        for round in 0..rounds {
            let (s, f) = step("file transfer", file_transfer(&a, &b, round, opts.file_mib)).await?;
            send.push(s);
            fetch.push(f);
        }
        out["files"] =
            json!({ "mib": opts.file_mib, "send_mib_per_s": spread(send), "fetch_mib_per_s": spread(fetch) });
    }
    drop(b);
    out["live_latency_ms"] = json!({ "p50": spread(p50), "p95": spread(p95), "p99": spread(p99) });

    let mut catchups = serde_json::Map::new();
    let mut sizes = vec![opts.messages];
    if opts.big > 0 {
        sizes.push(opts.big);
    }
    for (k, &n) in sizes.iter().enumerate() {
        progress(&format!("catch-up: filling a room with {n} messages"));
        let (room, invite) = create_room(&mut ca, &format!("catch-up-{n}")).await?;
        step("filling the room", fill(&mut ca, &room, n, 1000)).await?;
        let big = k > 0;
        let runs = if big { 1 } else { rounds };
        let mut rates = vec![];
        let mut last = None;
        for round in 0..runs {
            progress(&format!("catch-up of {n} messages, run {}/{runs}", round + 1));
            let (secs, c) = catch_up(exe, &a, &format!("c{n}-{round}"), &invite, n).await?;
            rates.push(n as f64 / secs);
            last = Some(c);
        }
        let mb_per_s: Vec<f64> = rates.iter().map(|r| r * TEXT_BYTES as f64 / 1e6).collect();
        let mut fig = json!({
            "messages": n,
            "messages_per_s": spread(rates.clone()),
            "mb_per_s": spread(mb_per_s),
            "seconds": spread(rates.iter().map(|r| n as f64 / r).collect()),
        });
        if let (true, Some(c)) = (big, last) {
            progress("resources of the daemon holding the big room");
            fig["rss_after_catch_up_mib"] = json!(c.rss_kib() as f64 / 1024.0);
            let c = c.restart().await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            fig["rss_after_restart_mib"] = json!(c.rss_kib() as f64 / 1024.0);
            fig["disk_bytes_per_message"] = json!(c.disk_bytes() as f64 / n as f64);
            fig["writer_rss_mib"] = json!(a.rss_kib() as f64 / 1024.0);
        }
        catchups.insert(n.to_string(), fig);
    }
    out["catch_up"] = Value::Object(catchups);
    Ok(out)
}

/// The figures for people.
pub fn render(v: &Value) -> String {
    let f = |x: &Value| x.as_f64().map_or("-".into(), |x| format!("{x:.0}"));
    // A median with its range, from `spread`.
    let spread_text = |x: &Value, unit: &str, decimals: usize| {
        let g = |k: &str| x[k].as_f64().unwrap_or(0.0);
        format!("{:.d$} {unit} (range {:.d$}–{:.d$})", g("median"), g("min"), g("max"), d = decimals)
    };
    let ms = |x: &Value| spread_text(x, "ms", 3);
    let mut s = String::new();
    s += &format!("cores: {}\n", v["machine"]["cores"]);
    s += &format!("idle RSS: {:.1} MiB\n", v["idle_rss_mib"].as_f64().unwrap_or(0.0));
    let a = &v["append"];
    s += &format!(
        "append, durable: single sends {}/s (1 client), {}/s (16 clients); batches of 100 {}/s, of 1000 {}/s\n",
        f(&a["single_1_client_per_s"]),
        f(&a["single_16_clients_per_s"]),
        f(&a["batch_100_per_s"]),
        f(&a["batch_1000_per_s"])
    );
    if let Some(files) = v.get("files").filter(|f| !f.is_null()) {
        let r = |x: &Value| spread_text(x, "MiB/s", 0);
        s += &format!(
            "files, {} MiB: send {}; fetch {}\n",
            files["mib"],
            r(&files["send_mib_per_s"]),
            r(&files["fetch_mib_per_s"])
        );
    }
    let l = &v["live_latency_ms"];
    s += &format!(
        "live latency p50 {}\n             p95 {}\n             p99 {}\n",
        ms(&l["p50"]),
        ms(&l["p95"]),
        ms(&l["p99"])
    );
    if let Some(c) = v["catch_up"].as_object() {
        for (n, fig) in c {
            let r = &fig["messages_per_s"];
            s += &format!(
                "catch-up of {n}: {} msg/s (range {}–{}), {:.1} MB/s, {:.2} s\n",
                f(&r["median"]),
                f(&r["min"]),
                f(&r["max"]),
                fig["mb_per_s"]["median"].as_f64().unwrap_or(0.0),
                fig["seconds"]["median"].as_f64().unwrap_or(0.0)
            );
            if fig.get("disk_bytes_per_message").is_some() {
                s += &format!(
                    "  holding {n}: RSS {:.1} MiB after catch-up, {:.1} MiB after restart; {:.0} bytes on disk per message; writer RSS {:.1} MiB\n",
                    fig["rss_after_catch_up_mib"].as_f64().unwrap_or(0.0),
                    fig["rss_after_restart_mib"].as_f64().unwrap_or(0.0),
                    fig["disk_bytes_per_message"].as_f64().unwrap_or(0.0),
                    fig["writer_rss_mib"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    s
}

/// `peerlog bench --room-size N`: N daemons (release builds, separate processes) on
/// loopback join one room by invite, on their defaults (a bootstrap node is the first of
/// them, a DHT server as the README's private-network recipe starts one); once their
/// sessions settle, each sends one message, one after another. Figures: the time per send,
/// the time from the last send until every daemon holds all N messages, room sessions per
/// daemon, CPU seconds, frames and entries received per message across the room, and RSS.
pub async fn room(opts: &RoomOptions, progress: impl Fn(&str)) -> Result<Value> {
    let n = opts.size.max(2);
    progress(&format!("starting {n} daemons"));
    let boot = Proc::start_with(&opts.exe, "room-0", None, DhtMode::Server).await?;
    let mut procs = vec![boot];
    for i in 1..n {
        let boot = procs[0].addr.clone();
        procs.push(Proc::start_with(&opts.exe, &format!("room-{i}"), Some(&boot), DhtMode::Auto).await?);
    }
    let mut clients = Vec::with_capacity(n);
    for p in &procs {
        let mut c = p.client().await?;
        subscribe(&mut c, &[]).await?;
        clients.push(c);
    }
    progress("joining the room");
    let (room, invite) = create_room(&mut clients[0], "bench room").await?;
    for c in clients.iter_mut().skip(1) {
        join_room(c, &invite).await?;
    }
    // The sessions settle: every daemon has what the bound lets it have (a full mesh below
    // it), and the total stops changing for 5 s (or 3 minutes pass).
    progress("waiting for the room's sessions to settle");
    let want = (n - 1).min(crate::config::Config::default().limits.room_sessions);
    let settle = Instant::now();
    let mut last = (0, Instant::now());
    let sessions = loop {
        let mut counts = Vec::with_capacity(n);
        for c in clients.iter_mut() {
            let params = peerlog_proto::api::peers::OptRoomParam { room: Some(room.clone()) };
            counts.push(c.request::<peerlog_proto::api::peers::List>(&params).await?.peers.len());
        }
        let total: usize = counts.iter().sum();
        if total != last.0 {
            last = (total, Instant::now());
        }
        let settled = counts.iter().all(|&k| k >= want) && last.1.elapsed() > Duration::from_secs(5);
        if settled || settle.elapsed() > Duration::from_secs(180) {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let settle_secs = settle.elapsed().as_secs_f64();

    // Every daemon's own client counts the message events (ours included) until it has all N.
    let mut watchers = Vec::with_capacity(n);
    for p in &procs {
        let mut c = p.client().await?;
        subscribe(&mut c, &[events::Message::NAME]).await?;
        let room = room.clone();
        watchers.push(tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            while seen.len() < n {
                let m = c.wait_for::<events::Message>(STEP, "the room's messages", |m| m.room == room).await?;
                seen.insert(m.id);
            }
            anyhow::Ok(Instant::now())
        }));
    }
    let frames0 = room_figures(&procs).await?;
    progress(&format!("{n} sends, one after another"));
    let mut sends = Vec::with_capacity(n);
    let t0 = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        let t = Instant::now();
        send(c, &room, format!("from {i}")).await?;
        sends.push(t.elapsed().as_secs_f64());
    }
    let last_send = Instant::now();
    let sends_secs = t0.elapsed().as_secs_f64();
    progress("waiting until every daemon holds every message");
    let mut done = Vec::with_capacity(n);
    for w in watchers {
        let at = step("every daemon to hold every message", async { w.await? }).await?;
        done.push(at.saturating_duration_since(last_send).as_secs_f64());
    }
    // Half a second more, so the frames of the last pushes are counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let frames1 = room_figures(&procs).await?;
    let messages = n as f64;
    let mib =
        |field: &str| -> Vec<f64> { procs.iter().map(|p| status_kib(p.child.id(), field) as f64 / 1024.0).collect() };
    let mut peers = Vec::with_capacity(n);
    for p in &procs {
        peers.push(p.metric("peerlog_connections").await?);
    }
    Ok(json!({
        "machine": { "cores": std::thread::available_parallelism().map_or(0, |n| n.get()) },
        "version": env!("CARGO_PKG_VERSION"),
        "room_size": n,
        "settle_s": settle_secs,
        "sessions_per_daemon": spread(sessions.iter().map(|&k| k as f64).collect()),
        "send_s": spread(sends),
        "sends_total_s": sends_secs,
        "all_hold_all_after_last_send_s": spread(done),
        "cpu_s_per_message": (frames1.cpu - frames0.cpu) / messages,
        "frames_per_message": (frames1.frames - frames0.frames) / messages,
        "entries_received_per_message": (frames1.entries - frames0.entries) / messages,
        "rss_mib": spread(mib("VmRSS:")),
        // RSS is the daemon's own memory (anonymous: heap, stacks) plus the pages of the
        // executable it touched (file-backed, shared by every daemon of the same binary).
        "rss_anon_mib": spread(mib("RssAnon:")),
        "rss_file_mib": spread(mib("RssFile:")),
        "connected_peers_per_daemon": spread(peers),
    }))
}

/// The room's totals over all daemons at one moment.
struct RoomFigures {
    cpu: f64,
    frames: f64,
    entries: f64,
}

async fn room_figures(procs: &[Proc]) -> Result<RoomFigures> {
    let mut f = RoomFigures { cpu: 0.0, frames: 0.0, entries: 0.0 };
    for p in procs {
        f.cpu += p.cpu_secs();
        f.frames += p.metric("peerlog_frames_sent_total").await?;
        f.entries += p.metric("peerlog_entries_received_total").await?;
    }
    Ok(f)
}

/// The room figures for people.
pub fn render_room(v: &Value) -> String {
    let m = |x: &Value, unit: &str, d: usize| {
        let g = |k: &str| x[k].as_f64().unwrap_or(0.0);
        format!("{:.d$} {unit} (range {:.d$}–{:.d$})", g("median"), g("min"), g("max"), d = d)
    };
    let g = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut s = String::new();
    s += &format!("cores: {}, daemons in the room: {}\n", v["machine"]["cores"], v["room_size"]);
    s += &format!(
        "sessions settled after {:.1} s; room sessions per daemon {}\n",
        g("settle_s"),
        m(&v["sessions_per_daemon"], "", 0)
    );
    s += &format!(
        "sends, one after another: {:.2} s in all; per send {}\n",
        g("sends_total_s"),
        m(&v["send_s"], "s", 3)
    );
    s += &format!("all hold all, after the last send: {}\n", m(&v["all_hold_all_after_last_send_s"], "s", 2));
    s += &format!(
        "per message, across the room: {:.2} CPU s, {:.0} frames, {:.0} entries received\n",
        g("cpu_s_per_message"),
        g("frames_per_message"),
        g("entries_received_per_message")
    );
    s += &format!("connected peers per daemon (any protocol): {}\n", m(&v["connected_peers_per_daemon"], "", 0));
    s += &format!(
        "RSS per daemon: {}; of it anonymous {}, the executable's pages {}\n",
        m(&v["rss_mib"], "MiB", 1),
        m(&v["rss_anon_mib"], "MiB", 1),
        m(&v["rss_file_mib"], "MiB", 1)
    );
    s
}
