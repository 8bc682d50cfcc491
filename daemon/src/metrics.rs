//! Prometheus metrics, at `GET /metrics` (OpenMetrics text; the API token or the session
//! cookie): libp2p's own (`libp2p_*`: connections, bandwidth, protocols, Kademlia,
//! identify, ping, DCUtR, relay) and peerlog's (`peerlog_*`). Counters kept elsewhere
//! (entries received and served, hole punches) are read when scraped.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::log::commit::FLUSH_SECONDS;
use crate::node::NodeInfo;

/// An API request's labels: its method (a known one, else `other`: a client cannot mint
/// label values) and its result code (0: success).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequest {
    method: String,
    code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

/// The figures kept elsewhere, read when scraped (`Service::metrics_text`).
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Rooms joined or seeded.
    pub rooms: usize,
    /// Authenticated replication sessions.
    pub sessions: usize,
    /// Entries stored, every room.
    pub entries_stored: u64,
    /// Entries received from peers since start.
    pub entries_received: u64,
    /// Entries served to peers since start.
    pub entries_served: u64,
    /// Replication frames received since start, every room.
    pub frames_received: u64,
    /// Replication frames sent since start, every room.
    pub frames_sent: u64,
    /// Entries known to exist at room peers and not stored here yet, every room.
    pub catchup_backlog: u64,
    /// The node's state, if it answered.
    pub node: Option<NodeInfo>,
}

/// The daemon's metrics and the registry that encodes them (libp2p's included).
pub struct Metrics {
    registry: Mutex<Registry>,
    api_requests: Family<ApiRequest, Counter>,
    rooms: Gauge,
    sessions: Gauge,
    entries_stored: Gauge,
    catchup_backlog: Gauge,
    entries_received: Counter,
    entries_served: Counter,
    frames_received: Counter,
    frames_sent: Counter,
    connections: Family<Kind, Gauge>,
    relay_reservations: Gauge,
    holepunches: Family<Outcome, Counter>,
    dht_peers: Gauge,
}

impl Metrics {
    /// peerlog's metrics, added to `registry` (which already holds libp2p's).
    pub fn new(mut registry: Registry) -> Self {
        let m = Self {
            registry: Mutex::new(Registry::default()),
            api_requests: Family::default(),
            rooms: Gauge::default(),
            sessions: Gauge::default(),
            entries_stored: Gauge::default(),
            catchup_backlog: Gauge::default(),
            entries_received: Counter::default(),
            entries_served: Counter::default(),
            frames_received: Counter::default(),
            frames_sent: Counter::default(),
            connections: Family::default(),
            relay_reservations: Gauge::default(),
            holepunches: Family::default(),
            dht_peers: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("peerlog");
        r.register(
            "api_requests",
            "Local API requests, by method and result code (0: success)",
            m.api_requests.clone(),
        );
        r.register("rooms", "Rooms joined or seeded", m.rooms.clone());
        r.register("sessions", "Authenticated replication sessions (a peer in a room)", m.sessions.clone());
        r.register("entries_stored", "Log entries stored, every room and writer", m.entries_stored.clone());
        r.register(
            "catchup_backlog_entries",
            "Entries room peers hold that are not stored here yet (catching up)",
            m.catchup_backlog.clone(),
        );
        r.register(
            "entries_received",
            "Log entries received from peers (duplicates and refused ones too)",
            m.entries_received.clone(),
        );
        r.register("entries_served", "Log entries sent to peers", m.entries_served.clone());
        r.register(
            "frames_received",
            "Replication frames received on authenticated sessions",
            m.frames_received.clone(),
        );
        r.register("frames_sent", "Replication frames sent on authenticated sessions", m.frames_sent.clone());
        r.register("connections", "Connected peers by their best connection", m.connections.clone());
        r.register("relay_reservations", "Relay reservations held", m.relay_reservations.clone());
        r.register("holepunches", "Hole punches, by result", m.holepunches.clone());
        r.register("dht_peers", "Peers in the DHTs' routing tables", m.dht_peers.clone());
        r.register("flush_seconds", "Duration of the group committer's flushes (fsyncs)", FLUSH_SECONDS.clone());
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        m
    }

    /// Counts an API request.
    pub fn api_request(&self, method: &str, code: i32) {
        let known = peerlog_proto::api::openrpc::method_names().contains(&method);
        let method = if known { method.to_string() } else { "other".to_string() };
        self.api_requests.get_or_create(&ApiRequest { method, code }).inc();
    }

    /// The metrics with `now`'s figures, as OpenMetrics text.
    pub fn render(&self, now: &Snapshot) -> String {
        self.rooms.set(now.rooms as i64);
        self.sessions.set(now.sessions as i64);
        self.entries_stored.set(now.entries_stored as i64);
        self.catchup_backlog.set(now.catchup_backlog as i64);
        self.entries_received.inner().store(now.entries_received, Ordering::Relaxed);
        self.entries_served.inner().store(now.entries_served, Ordering::Relaxed);
        self.frames_received.inner().store(now.frames_received, Ordering::Relaxed);
        self.frames_sent.inner().store(now.frames_sent, Ordering::Relaxed);
        if let Some(info) = &now.node {
            self.connections.clear();
            for p in &info.peers {
                let kind = format!("{:?}", p.connection).to_lowercase();
                self.connections.get_or_create(&Kind { kind }).inc();
            }
            self.relay_reservations.set(info.relays.len() as i64);
            self.dht_peers.set((info.dht_peers + info.public_dht_peers.unwrap_or(0)) as i64);
            for (result, n) in [("ok", info.holepunch_ok), ("failed", info.holepunch_failed)] {
                self.holepunches.get_or_create(&Outcome { result: result.into() }).inner().store(n, Ordering::Relaxed);
            }
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}
