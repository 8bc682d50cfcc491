//! A seeded, deterministic simulation of a room: many [`RoomState`]s, each over a real
//! [`Room`] and [`Store`] (sled in a temporary directory), exchanging frames over an
//! in-memory network with per-link latency, loss (a lost packet delays its stream by a
//! retransmission timeout, as on TCP or QUIC) and partitions. Time is simulated: a run of
//! minutes takes milliseconds, and a seed replays it exactly.
//!
//! Each direction of a connection carries at most [`WINDOW`] frames at once, like a
//! session's writer channel: a node is asked for its next frame only when there is room.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Frame, Key32};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::membership::{Bounds, Count, Membership};
use super::presence::{ALIVE_EVERY, ALIVE_FOR, FLUSH_EVERY};
use super::state::{Input, Output, RoomState, RuleLimits, SessionUp, PEX_PEERS};
use super::storage::{perform, Local, Performed};
use crate::config::Limits;
use crate::files::{chunk_id, Chunks};
use crate::ids::SessionId;
use crate::keys::RoomSecret;
use crate::log::store::{Access, RoomRecord, WriterQuota};
use crate::log::{Body, Store};
use crate::node::Reach;
use crate::rooms::{self, DaemonEvent, Room};

/// Frames in flight per direction of a connection (the writer channel's capacity).
pub const WINDOW: usize = 8;
/// Delay a lost packet adds to its stream.
const RTO: Duration = Duration::from_millis(200);
/// The simulated wall clock at the start (2027-01-15).
const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

/// How a link behaves.
#[derive(Clone, Copy, Debug)]
pub struct LinkSpec {
    /// One-way latency.
    pub latency: Duration,
    /// Up to this much more, at random per frame (order is kept).
    pub jitter: Duration,
    /// Chance that a frame's packet is lost once (it arrives [`RTO`] later).
    pub loss: f64,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self { latency: Duration::from_millis(10), jitter: Duration::from_millis(5), loss: 0.0 }
    }
}

/// How a node is set up.
#[derive(Clone, Debug, Default)]
pub struct NodeOpts {
    /// Shares another node's writer key (a copied data dir: the two will fork).
    pub writer_of: Option<usize>,
    /// The writers' quota of its store.
    pub quota: Option<WriterQuota>,
    /// Sends its sessions small batches and chunk parts (a relay's limited circuit).
    pub small_circuit: bool,
    /// Flips a byte in every entry batch it serves (a hostile member).
    pub tamper: bool,
    /// A blind seeder: stores and serves the room's ciphertext, cannot read it.
    pub seeder: bool,
    /// Speaks version 3 only: sends and reads no presence records.
    pub v3: bool,
    /// Behind a NAT that hole punching does not pass: its sessions with other such nodes
    /// run over a relay (small batches, and a slow link to the membership rules).
    pub hard_nat: bool,
}

/// A frame sent, as the trace records it.
#[derive(Clone, Debug)]
pub struct Sent {
    /// From node, to node.
    pub from: usize,
    pub to: usize,
    /// The frame.
    pub frame: Frame,
}

/// A simulated daemon in the room.
pub struct Node {
    /// Its libp2p identity.
    pub peer: PeerId,
    /// Its room (keys, writer, appends) over its store.
    pub room: Arc<Room>,
    /// Its store and chunks.
    pub local: Local,
    /// The rules.
    pub state: RoomState,
    local_rx: mpsc::UnboundedReceiver<rooms::Local>,
    opts: NodeOpts,
    /// Events it emitted.
    pub events: Vec<DaemonEvent>,
    /// Sessions it closed, and why.
    pub closed: Vec<String>,
    /// Batches it handed to storage to verify and store.
    pub ingests: u64,
    /// Reads nothing any more (frames to it stay on the wire, filling its peers' windows).
    pub deaf: bool,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Entries it stores of every feed of the room.
    pub fn stored(&self) -> u64 {
        let store = &self.local.store;
        store.room_feeds(&self.room.discovery_key).unwrap().iter().map(|(_, m)| m.stored()).sum()
    }

    /// Entries it stores of `feed`.
    pub fn stored_of(&self, feed: &FeedKey) -> u64 {
        self.local.store.feed_meta(feed).unwrap().map_or(0, |m| m.stored())
    }
}

/// One direction of a connection.
#[derive(Default)]
struct Direction {
    /// Frames on the wire, with their arrival times (nondecreasing).
    wire: VecDeque<(Duration, Frame)>,
    /// When the last frame arrives.
    last: Duration,
}

struct Conn {
    nodes: [usize; 2],
    sessions: [SessionId; 2],
    /// `dirs[0]`: from `nodes[0]` to `nodes[1]`.
    dirs: [Direction; 2],
}

/// The simulation.
pub struct Sim {
    rng: StdRng,
    start: Instant,
    /// Simulated time since the start.
    pub now: Duration,
    /// The nodes.
    pub nodes: Vec<Node>,
    secret: RoomSecret,
    /// Each node's writer key.
    writers: Vec<[u8; 32]>,
    limits: RuleLimits,
    next_id: u64,
    conns: BTreeMap<u64, Conn>,
    /// Each node's connections (ids into `conns`).
    by_node: Vec<std::collections::BTreeSet<u64>>,
    /// Which connection and side a session is.
    sessions: BTreeMap<SessionId, (u64, usize)>,
    /// Arrivals: (time, order, connection, direction).
    arrivals: BinaryHeap<Reverse<(Duration, u64, u64, usize)>>,
    order: u64,
    specs: BTreeMap<(usize, usize), LinkSpec>,
    /// The default link.
    pub spec: LinkSpec,
    /// Each node's side of the partition (all 0: none).
    side: Vec<u8>,
    /// Frames sent, when tracing.
    pub trace: Option<Vec<Sent>>,
    /// Frames delivered.
    pub delivered: u64,
    /// Each node's membership view, when the room keeps bounded sessions (see
    /// [`Sim::bounded`]); nodes then connect as daemons do, not as a test wires them.
    memberships: Vec<Membership>,
    bounds: Option<Bounds>,
    /// Nodes that left (offline).
    pub gone: Vec<bool>,
    /// When each node signs its next presence record.
    next_alive: Vec<Duration>,
}

impl Sim {
    /// A room with no nodes yet; `seed` decides everything random.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let secret = RoomSecret(rng.gen());
        Self {
            rng,
            start: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::new(),
            secret,
            writers: Vec::new(),
            limits: RuleLimits::from(&Limits::default()),
            next_id: 1,
            conns: BTreeMap::new(),
            by_node: Vec::new(),
            sessions: BTreeMap::new(),
            arrivals: BinaryHeap::new(),
            order: 0,
            specs: BTreeMap::new(),
            spec: LinkSpec::default(),
            side: Vec::new(),
            trace: None,
            delivered: 0,
            memberships: Vec::new(),
            bounds: None,
            gone: Vec::new(),
            next_alive: Vec::new(),
        }
    }

    /// The room's discovery key.
    pub fn discovery_key(&self) -> DiscoveryKey {
        self.secret.keys().discovery_key
    }

    /// Adds `n` nodes with default options; returns the first one's index.
    pub fn add_nodes(&mut self, n: usize) -> usize {
        let first = self.nodes.len();
        for _ in 0..n {
            self.add_node(NodeOpts::default());
        }
        first
    }

    /// Adds a node; returns its index.
    pub fn add_node(&mut self, opts: NodeOpts) -> usize {
        let base = std::path::Path::new("/dev/shm");
        let dir = if base.is_dir() { tempfile::tempdir_in(base) } else { tempfile::tempdir() }.unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        if let Some(quota) = opts.quota {
            store = store.with_writer_quota(quota);
        }
        let chunks = Chunks::new(dir.path());
        let discovery_key = self.discovery_key();
        let writer = match opts.writer_of {
            Some(i) => self.writers[i],
            None => self.rng.gen(),
        };
        self.writers.push(writer);
        let access =
            if opts.seeder { Access::Seeder(self.secret.keys().auth_key) } else { Access::Member(self.secret.0) };
        let record = RoomRecord { access, name: "sim".into(), writer, joined_ms: 0 };
        store.put_room(&discovery_key, &record).unwrap();
        let room =
            Room::new(&discovery_key, &record, &store, broadcast::channel(1).0, CancellationToken::new()).unwrap();
        let room = Arc::new(room);
        let local_rx = room.take_local().unwrap();
        let local = Local { store, chunks };
        let state = RoomState::new(discovery_key, room.feed_key, self.limits, &local).unwrap();
        let key: [u8; 32] = self.rng.gen();
        let peer = libp2p::identity::Keypair::ed25519_from_bytes(key).unwrap().public().to_peer_id();
        self.side.push(0);
        self.gone.push(false);
        self.next_alive.push(Duration::ZERO);
        self.by_node.push(Default::default());
        if let Some(bounds) = self.bounds {
            let seed = self.rng.gen();
            self.memberships.push(Membership::new(bounds, seed));
        }
        self.nodes.push(Node {
            peer,
            room,
            local,
            state,
            local_rx,
            opts,
            events: Vec::new(),
            closed: Vec::new(),
            ingests: 0,
            deaf: false,
            _dir: dir,
        });
        self.nodes.len() - 1
    }

    /// Sets the link between two nodes (both directions).
    pub fn set_link(&mut self, a: usize, b: usize, spec: LinkSpec) {
        self.specs.insert((a.min(b), a.max(b)), spec);
    }

    fn link(&self, a: usize, b: usize) -> LinkSpec {
        self.specs.get(&(a.min(b), a.max(b))).copied().unwrap_or(self.spec)
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    /// Node `i` appends `n` text messages as one batch and announces them.
    pub fn send(&mut self, i: usize, n: usize) {
        let bodies = (0..n).map(|k| Body::Text { text: format!("message {k} from node {i}") }).collect();
        let appended = self.nodes[i].room.append(bodies).unwrap();
        self.nodes[i].room.announce(&appended.head, &appended.messages);
        self.settle(i);
    }

    /// Connects two nodes (one session each side), unless they are connected, partitioned
    /// apart, or the same node.
    pub fn connect(&mut self, a: usize, b: usize) -> bool {
        if a == b || self.side[a] != self.side[b] || self.connected(a, b) {
            return false;
        }
        let conn = self.next_id;
        let sessions = [SessionId(self.next_id), SessionId(self.next_id + 1)];
        self.next_id += 2;
        self.conns.insert(conn, Conn { nodes: [a, b], sessions, dirs: Default::default() });
        self.by_node[a].insert(conn);
        self.by_node[b].insert(conn);
        if let Some(bounds) = self.bounds {
            let (da, db) = (self.degree(a), self.degree(b));
            assert!(
                da <= bounds.max && db <= bounds.max,
                "connecting {a} and {b} left them with {da} and {db} sessions"
            );
        }
        for (side, (me, other)) in [(a, b), (b, a)].into_iter().enumerate() {
            self.sessions.insert(sessions[side], (conn, side));
            let peer = self.nodes[other].peer;
            let node = &self.nodes[me];
            let small = node.opts.small_circuit || self.nodes[other].opts.small_circuit || self.relayed(me, other);
            let v3 = node.opts.v3 || self.nodes[other].opts.v3;
            let up = SessionUp {
                peer,
                batch_bytes: if small { 8 << 10 } else { 1 << 20 },
                small_circuit: small,
                pex_reach: Reach::Loopback,
                greeting: vec![Frame::Writer {
                    feed_key: node.room.feed_key,
                    signature: node.room.writer_proof(&node.peer),
                }],
                presence: !v3,
            };
            self.input(me, Input::SessionUp(sessions[side], up));
        }
        self.settle(a);
        self.settle(b);
        true
    }

    /// Whether two nodes have a connection.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.by_node[a].iter().any(|id| self.conns[id].nodes.contains(&b))
    }

    /// Connections of node `i`.
    pub fn degree(&self, i: usize) -> usize {
        self.by_node[i].len()
    }

    /// Drops the connection between two nodes (both sides see their session end).
    pub fn disconnect(&mut self, a: usize, b: usize) {
        let ids: Vec<u64> = self.by_node[a].iter().copied().filter(|id| self.conns[id].nodes.contains(&b)).collect();
        for id in ids {
            self.drop_conn(id, None);
        }
    }

    /// Splits the nodes in two: `side_b` on one side, the rest on the other. Connections
    /// across drop.
    pub fn partition(&mut self, side_b: &[usize]) {
        for &i in side_b {
            self.side[i] = 1;
        }
        let across: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| self.side[c.nodes[0]] != self.side[c.nodes[1]])
            .map(|(id, _)| *id)
            .collect();
        for id in across {
            self.drop_conn(id, None);
        }
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
    }

    /// Ends a connection: both nodes hear that its sessions ended, except the one that
    /// closed it (`closer`, already told by its rules).
    fn drop_conn(&mut self, id: u64, closer: Option<SessionId>) {
        let Some(conn) = self.conns.remove(&id) else { return };
        self.by_node[conn.nodes[0]].remove(&id);
        self.by_node[conn.nodes[1]].remove(&id);
        for side in 0..2 {
            self.sessions.remove(&conn.sessions[side]);
            if Some(conn.sessions[side]) != closer {
                self.input(conn.nodes[side], Input::SessionDown(conn.sessions[side]));
            }
        }
        self.settle(conn.nodes[0]);
        self.settle(conn.nodes[1]);
        if !self.memberships.is_empty() {
            // As a daemon does when a session ends: the peer is remembered, and a passive
            // one takes its place.
            let [a, b] = conn.nodes;
            for (me, other) in [(a, b), (b, a)] {
                if !self.gone[me] {
                    let peer = self.nodes[other].peer;
                    self.memberships[me].remember(peer);
                    self.replace(me);
                }
            }
        }
    }

    /// Node `i` takes an input (its outputs wait for [`Sim::settle`]).
    fn input(&mut self, i: usize, input: Input) {
        let now = self.instant();
        let node = &mut self.nodes[i];
        node.state.handle(input, now, &node.local);
    }

    /// Performs node `i`'s outputs and local events, then sends what its sessions have.
    fn settle(&mut self, i: usize) {
        loop {
            let mut busy = false;
            while let Ok(local) = self.nodes[i].local_rx.try_recv() {
                busy = true;
                let input = match local {
                    rooms::Local::Appended(head) => Input::Appended(head),
                    rooms::Local::WantChunks(ids) => Input::WantChunks(ids),
                    rooms::Local::UnwantChunks(ids) => Input::UnwantChunks(ids),
                    rooms::Local::Refetch(feed) => Input::Refetch(feed),
                };
                self.input(i, input);
            }
            while let Some(output) = self.nodes[i].state.poll_output() {
                busy = true;
                let node = &mut self.nodes[i];
                node.ingests += matches!(output, Output::Ingest(_)) as u64;
                match perform(&node.room, &node.local, output) {
                    Performed::Answer(input) => self.input(i, input),
                    Performed::Done => {}
                    Performed::Other(Output::Close(session, error)) => {
                        self.nodes[i].closed.push(error.to_string());
                        if let Some(&(conn, _)) = self.sessions.get(&session) {
                            self.drop_conn(conn, Some(session));
                        }
                    }
                    Performed::Other(Output::Event(event)) => node.events.push(event),
                    Performed::Other(Output::OwnFeedAhead(length)) => node.room.note_own_ahead(length),
                    Performed::Other(_) => {}
                }
            }
            self.transmit(i);
            if !busy {
                return;
            }
        }
    }

    /// Puts node `i`'s next frames on the wire, while its connections have room.
    fn transmit(&mut self, i: usize) {
        let mine: Vec<(u64, usize)> =
            self.by_node[i].iter().map(|id| (*id, usize::from(self.conns[id].nodes[0] != i))).collect();
        for (id, side) in mine {
            while let Some(conn) = self.conns.get(&id) {
                if conn.dirs[side].wire.len() >= WINDOW {
                    break;
                }
                let (session, to) = (conn.sessions[side], conn.nodes[1 - side]);
                let node = &mut self.nodes[i];
                let Some(mut frame) = node.state.poll_transmit(session, &node.local) else { break };
                if node.opts.tamper {
                    if let Frame::Data { entries, .. } = &mut frame {
                        if let Some(last) = entries.last_mut().and_then(|e| e.ciphertext.last_mut()) {
                            *last ^= 1;
                        }
                    }
                }
                let spec = self.link(i, to);
                let mut delay = spec.latency + spec.jitter.mul_f64(self.rng.gen::<f64>());
                if self.rng.gen::<f64>() < spec.loss {
                    delay += RTO;
                }
                if let Some(trace) = self.trace.as_mut() {
                    trace.push(Sent { from: i, to, frame: frame.clone() });
                }
                let conn = self.conns.get_mut(&id).unwrap();
                let dir = &mut conn.dirs[side];
                let at = (self.now + delay).max(dir.last);
                dir.last = at;
                dir.wire.push_back((at, frame));
                self.order += 1;
                self.arrivals.push(Reverse((at, self.order, id, side)));
            }
        }
    }

    /// Delivers the next frame; false when nothing is in flight.
    pub fn step(&mut self) -> bool {
        while let Some(Reverse((at, _, id, side))) = self.arrivals.pop() {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            if self.nodes[conn.nodes[1 - side]].deaf {
                continue;
            }
            let Some((_, frame)) = conn.dirs[side].wire.pop_front() else { continue };
            let (from, to, session) = (conn.nodes[side], conn.nodes[1 - side], conn.sessions[1 - side]);
            self.now = self.now.max(at);
            self.delivered += 1;
            self.input(to, Input::Frame(session, frame));
            self.settle(to);
            // The frame left the sender's window.
            self.transmit(from);
            return true;
        }
        false
    }

    /// Runs until nothing is in flight (or `limit` of simulated time passed: then panics,
    /// saying what was still going on).
    pub fn run(&mut self, limit: Duration) {
        while self.step() {
            assert!(
                self.now <= limit,
                "the simulation still had frames in flight after {limit:?} ({} delivered)",
                self.delivered
            );
        }
    }

    /// Runs until `done` holds, failing with `what` if it does not within `limit` of
    /// simulated time or the network falls quiet first.
    pub fn run_until(&mut self, limit: Duration, what: &str, mut done: impl FnMut(&Sim) -> bool) {
        while !done(self) {
            assert!(self.now <= limit, "{what}: not after {limit:?} of simulated time");
            assert!(self.step(), "{what}: not, and the network is quiet ({:?} in)", self.now);
        }
    }

    /// Whether every node stores `n` entries in all.
    pub fn all_hold(&self, n: u64) -> bool {
        self.nodes.iter().all(|node| node.stored() == n)
    }

    /// Runs the network for `period` with the daemons' presence ticks: every
    /// [`FLUSH_EVERY`] each online node sends the records its sessions have not heard, and
    /// every [`ALIVE_EVERY`] it signs its own (not a blind seeder, not a version 3 node).
    pub fn run_ticking(&mut self, period: Duration) {
        let until = self.now + period;
        while self.now < until {
            let next = (self.now + FLUSH_EVERY).min(until);
            while self.arrivals.peek().is_some_and(|Reverse((at, ..))| *at <= next) {
                self.step();
            }
            self.now = next;
            let wall_ms = self.wall_ms();
            for i in 0..self.nodes.len() {
                if self.gone[i] {
                    continue;
                }
                let opts = &self.nodes[i].opts;
                let due = !opts.seeder && !opts.v3 && self.next_alive[i] <= self.now;
                if due {
                    self.next_alive[i] = self.now + ALIVE_EVERY;
                }
                let own = due.then(|| self.nodes[i].room.alive(wall_ms));
                self.input(i, Input::Tick { wall_ms, own });
                self.settle(i);
            }
        }
    }

    /// The simulated wall clock, ms since the epoch.
    pub fn wall_ms(&self) -> u64 {
        SIM_EPOCH_MS + self.now.as_millis() as u64
    }

    /// Of the online nodes other than `i`, how many `i` shows as online by their records.
    pub fn seen_online(&mut self, i: usize) -> usize {
        let wall_ms = self.wall_ms();
        let seen = self.nodes[i].state.take_presence();
        if let Some(seen) = seen {
            self.nodes[i].room.set_presence(seen);
        }
        (0..self.nodes.len())
            .filter(|&j| j != i && !self.gone[j])
            .filter(|&j| {
                self.nodes[i]
                    .room
                    .last_seen(&self.nodes[j].room.feed_key)
                    .is_some_and(|at| at + ALIVE_FOR.as_millis() as u64 > wall_ms)
            })
            .count()
    }
}

/// Bounded sessions (`membership.rs`): nodes find some peers (as a DHT lookup would), dial
/// while under their target, are refused when the other side is full (and learn its peers
/// instead, as from its `Peers` frame), learn each other's peers when a session opens (peer
/// exchange), replace lost sessions and rotate one per period, as the daemon's replicator.
impl Sim {
    /// Keeps every node's sessions within `bounds` from now on.
    pub fn bounded(&mut self, bounds: Bounds) {
        self.bounds = Some(bounds);
        self.memberships = (0..self.nodes.len()).map(|_| Membership::new(bounds, self.rng.gen())).collect();
    }

    /// Whether the link between two nodes runs over a relay.
    pub fn relayed(&self, a: usize, b: usize) -> bool {
        self.nodes[a].opts.hard_nat && self.nodes[b].opts.hard_nat
    }

    /// Node `i`'s sessions, as the membership rules count them.
    fn count(&self, i: usize) -> Count {
        let peers = self.peers_of(i);
        Count { all: peers.len(), direct: peers.iter().filter(|&&j| !self.relayed(i, j)).count() }
    }

    fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer == *peer)
    }

    fn peers_of(&self, i: usize) -> Vec<usize> {
        self.by_node[i]
            .iter()
            .map(|id| {
                let c = &self.conns[id];
                if c.nodes[0] == i {
                    c.nodes[1]
                } else {
                    c.nodes[0]
                }
            })
            .collect()
    }

    /// Node `i` learns of `found` (a discovery round's result): it dials them while under
    /// its target and remembers the rest.
    pub fn discover(&mut self, i: usize, found: &[usize]) {
        let mut queue: VecDeque<(usize, usize)> = found.iter().map(|&j| (i, j)).collect();
        // Each pair is tried once per round: full nodes point at each other.
        let mut tried = std::collections::BTreeSet::new();
        while let Some((me, other)) = queue.pop_front() {
            if me == other || self.gone[me] || self.connected(me, other) || !tried.insert((me, other)) {
                continue;
            }
            let peer = self.nodes[other].peer;
            let count = self.count(me);
            if !self.memberships[me].learned(peer, count) {
                continue;
            }
            queue.extend(self.dial(me, other));
        }
    }

    /// Node `me` opens a session with `other`; returns what it learns (peer exchange).
    fn dial(&mut self, me: usize, other: usize) -> Vec<(usize, usize)> {
        if self.gone[other] || self.side[me] != self.side[other] {
            // Unreachable: remembered, tried again later.
            let peer = self.nodes[other].peer;
            self.memberships[me].remember(peer);
            return Vec::new();
        }
        let sample = |sim: &mut Sim, of: usize, to: usize| -> Vec<(usize, usize)> {
            let mut peers = sim.peers_of(of);
            peers.retain(|p| *p != to);
            let take = peers.len().min(PEX_PEERS);
            (0..take).map(|_| (to, peers.swap_remove(sim.rng.gen_range(0..peers.len())))).collect()
        };
        if !self.memberships[other].accepts(self.degree(other)) {
            // Refused as full, with the full node's peers to try instead.
            let peer = self.nodes[other].peer;
            self.memberships[me].remember(peer);
            return sample(self, other, me);
        }
        if !self.connect(me, other) {
            return Vec::new();
        }
        let mut learned = sample(self, other, me);
        learned.extend(sample(self, me, other));
        learned
    }

    /// A node under its target dials a passive peer.
    fn replace(&mut self, i: usize) {
        let active = self.peers_of(i).iter().map(|&j| self.nodes[j].peer).collect::<Vec<_>>();
        let count = self.count(i);
        let Some(next) = self.memberships[i].replacement(count, &active) else { return };
        if let Some(j) = self.index_of(&next) {
            let learned = self.dial(i, j);
            for (me, other) in learned {
                self.discover(me, &[other]);
            }
        }
    }

    /// Node `i` leaves: its sessions end (its peers replace them).
    pub fn leave(&mut self, i: usize) {
        self.gone[i] = true;
        for j in self.peers_of(i) {
            self.disconnect(i, j);
        }
    }

    /// Runs the network for `period` of simulated time, then lets every node rotate (one
    /// session it opened for a passive peer, once per [`super::membership::ROTATE_EVERY`]) and look the room
    /// up again (one random peer that is online, as a DHT round finds).
    pub fn tick(&mut self, period: Duration) {
        let until = self.now + period;
        while self.arrivals.peek().is_some_and(|Reverse((at, ..))| *at <= until) {
            self.step();
        }
        self.now = until;
        let now = self.instant();
        let online: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.gone[i]).collect();
        for &i in &online {
            let outbound: Vec<PeerId> = self.by_node[i]
                .iter()
                .map(|id| &self.conns[id])
                .filter(|c| c.nodes[0] == i)
                .map(|c| self.nodes[c.nodes[1]].peer)
                .collect();
            let relayed: Vec<PeerId> =
                outbound.iter().filter(|p| self.index_of(p).is_some_and(|j| self.relayed(i, j))).copied().collect();
            let active: Vec<PeerId> = self.peers_of(i).iter().map(|&j| self.nodes[j].peer).collect();
            let count = self.count(i);
            if let Some((close, dial)) = self.memberships[i].rotate(now, count, &outbound, &relayed, &active) {
                if let (Some(c), Some(d)) = (self.index_of(&close), self.index_of(&dial)) {
                    self.disconnect(i, c);
                    // The closed peer may have dialed back at once (it lost a session):
                    // the swap's dial must still keep the bound.
                    if !self.memberships[i].accepts(self.degree(i)) {
                        self.memberships[i].remember(dial);
                        continue;
                    }
                    let learned = self.dial(i, d);
                    for (me, other) in learned {
                        self.discover(me, &[other]);
                    }
                }
            }
            let found = online[self.rng.gen_range(0..online.len())];
            self.discover(i, &[found]);
            // Under the target (peers lost to a partition, say): another passive peer.
            self.replace(i);
        }
    }

    /// Whether the online nodes form one connected whole.
    pub fn online_connected(&self) -> bool {
        let online: Vec<usize> = (0..self.nodes.len()).filter(|&i| !self.gone[i]).collect();
        let Some(&first) = online.first() else { return true };
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![first];
        seen[first] = true;
        while let Some(i) = stack.pop() {
            for j in self.peers_of(i) {
                if !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        online.iter().all(|&i| seen[i])
    }

    /// Whether every online node stores `n` entries in all.
    pub fn online_hold(&self, n: u64) -> bool {
        self.nodes.iter().enumerate().all(|(i, node)| self.gone[i] || node.stored() == n)
    }
}

impl Sim {
    /// Puts `frame` on the wire from node `from` to node `to` as if `from`'s rules sent it
    /// (a hostile member writes what it likes).
    pub fn inject(&mut self, from: usize, to: usize, frame: Frame) {
        let (id, side) = self
            .conns
            .iter()
            .find_map(|(id, c)| {
                (c.nodes == [from, to]).then_some((*id, 0)).or((c.nodes == [to, from]).then_some((*id, 1)))
            })
            .expect("inject: the nodes are not connected");
        let conn = self.conns.get_mut(&id).unwrap();
        let dir = &mut conn.dirs[side];
        let at = (self.now + self.spec.latency).max(dir.last);
        dir.last = at;
        dir.wire.push_back((at, frame));
        self.order += 1;
        self.arrivals.push(Reverse((at, self.order, id, side)));
    }

    /// Frames sent from `from` to `to` so far (tracing must be on).
    pub fn sent(&self, from: usize, to: usize) -> impl Iterator<Item = &Frame> {
        self.trace.iter().flatten().filter(move |s| s.from == from && s.to == to).map(|s| &s.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::store::{QuotaKind, Rotation};
    use crate::log::MessageRef;

    const MINUTE: Duration = Duration::from_secs(60);

    fn wants(frames: Vec<&Frame>) -> Vec<(u64, u64)> {
        frames
            .into_iter()
            .filter_map(|f| match f {
                Frame::Want { start, end, .. } => Some((*start, *end)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_joiner_fetches_the_newest_entries_first() {
        let mut sim = Sim::new(1);
        let (a, b) = (sim.add_nodes(2), 1);
        sim.send(a, 20_000);
        sim.trace = Some(Vec::new());
        sim.connect(a, b);
        sim.run_until(MINUTE, "b holds a's 20,000 entries", |s| s.nodes[b].stored() == 20_000);
        let wants = wants(sim.sent(b, a).collect());
        assert!(wants.len() >= 3, "20,000 entries come in pieces of at most 8,192: {wants:?}");
        assert_eq!(wants[0].1, 20_000, "the first piece asked for is the newest: {wants:?}");
        assert!(wants.windows(2).all(|w| w[1].1 <= w[0].0), "each piece lies below the one before: {wants:?}");
        let data: Vec<(u64, u64)> = sim
            .sent(a, b)
            .filter_map(|f| match f {
                Frame::Data { start, entries, .. } => Some((*start, *start + entries.len() as u64)),
                _ => None,
            })
            .collect();
        assert_eq!(data[0].1, 20_000, "the first batch served holds the newest entries");
        let first_piece: Vec<_> = data.iter().filter(|(_, end)| *end > wants[0].0).collect();
        assert!(first_piece.windows(2).all(|w| w[1].1 == w[0].0), "a piece is served top down: {first_piece:?}");
        assert_eq!(sim.nodes[b].state.counters().entries_received, 20_000, "nothing was sent twice");
    }

    #[test]
    fn a_joiner_fetches_the_newest_page_of_every_feed_before_older_ones() {
        let mut sim = Sim::new(13);
        let (hub, joiner) = (sim.add_nodes(2), 1);
        let writers = [sim.add_nodes(1), sim.add_nodes(1), sim.add_nodes(1)];
        for &w in &writers {
            sim.send(w, 20_000);
            sim.connect(w, hub);
        }
        sim.run_until(MINUTE, "the hub holds the three feeds", |s| s.nodes[hub].stored() == 60_000);
        sim.trace = Some(Vec::new());
        sim.connect(joiner, hub);
        sim.run_until(MINUTE, "the joiner holds the three feeds", |s| s.nodes[joiner].stored() == 60_000);
        let first: Vec<(FeedKey, u64)> = sim
            .sent(joiner, hub)
            .filter_map(|f| match f {
                Frame::Want { feed_key, end, .. } => Some((*feed_key, *end)),
                _ => None,
            })
            .take(3)
            .collect();
        assert!(first.iter().all(|(_, end)| *end == 20_000), "the first three pieces are the feeds' newest: {first:?}");
        let mut feeds: Vec<FeedKey> = first.iter().map(|(f, _)| *f).collect();
        feeds.dedup();
        assert_eq!(feeds.len(), 3, "one of each feed: {first:?}");
    }

    /// Writer `w` writes `n` entries, `copies` fetch them all, then `w` leaves them.
    fn copies_then_gone(sim: &mut Sim, w: usize, copies: &[usize], n: u64) {
        sim.send(w, n as usize);
        for &c in copies {
            sim.connect(w, c);
        }
        sim.run_until(MINUTE, "the copies hold w's feed", |s| copies.iter().all(|&c| s.nodes[c].stored() == n));
        for &c in copies {
            sim.disconnect(w, c);
        }
    }

    #[test]
    fn one_feed_is_fetched_from_two_peers_without_duplicates() {
        let mut sim = Sim::new(2);
        let (w, b, c, d) = (sim.add_nodes(4), 1, 2, 3);
        copies_then_gone(&mut sim, w, &[b, c], 30_000);
        let served = |sim: &Sim, i: usize| sim.nodes[i].state.counters().entries_served;
        let before = (served(&sim, b), served(&sim, c));
        sim.connect(d, b);
        sim.connect(d, c);
        sim.run_until(MINUTE, "d holds w's feed", |s| s.nodes[d].stored() == 30_000);
        assert_eq!(sim.nodes[d].state.counters().entries_received, 30_000, "d was sent entries twice");
        let (from_b, from_c) = (served(&sim, b) - before.0, served(&sim, c) - before.1);
        assert!(from_b > 0 && from_c > 0, "both peers served pieces: {from_b} from b, {from_c} from c");
        assert_eq!(from_b + from_c, 30_000);
    }

    #[test]
    fn a_tampered_batch_is_fetched_again_from_another_peer() {
        let mut sim = Sim::new(3);
        let w = sim.add_node(NodeOpts::default());
        let t = sim.add_node(NodeOpts { tamper: true, ..NodeOpts::default() });
        let (b, d) = (sim.add_nodes(2), 3);
        copies_then_gone(&mut sim, w, &[t, b], 5_000);
        // d asks the hostile peer alone first: what it sends verifies nowhere (a batch
        // anchored by a head it does not match is "not anchored").
        sim.connect(d, t);
        sim.run(MINUTE);
        assert_eq!(sim.nodes[d].stored(), 0, "tampered entries were stored");
        sim.connect(d, b);
        sim.run_until(MINUTE, "d holds w's feed, from b", |s| s.nodes[d].stored() == 5_000);
        // A blind seeder cannot decrypt, so the tampered batch fails later: the newest one
        // does not match the signed head that anchors it ("not anchored"). It is asked of
        // another peer all the same.
        let seeder = sim.add_node(NodeOpts { seeder: true, ..NodeOpts::default() });
        sim.connect(seeder, t);
        sim.run(MINUTE);
        assert_eq!(sim.nodes[seeder].stored(), 0, "tampered entries were stored");
        sim.connect(seeder, b);
        sim.run_until(MINUTE, "the seeder holds w's feed, from b", |s| s.nodes[seeder].stored() == 5_000);
    }

    #[test]
    fn a_fork_is_recorded_and_the_second_history_is_not_stored() {
        let mut sim = Sim::new(4);
        let (w, b) = (sim.add_nodes(2), 1);
        let copy = sim.add_node(NodeOpts { writer_of: Some(w), ..NodeOpts::default() });
        sim.send(w, 10);
        sim.connect(w, b);
        sim.run_until(MINUTE, "b holds w's 10 entries", |s| s.nodes[b].stored() == 10);
        sim.disconnect(w, b);
        // A copy of w's data dir that wrote on its own: the same writer signs another history.
        sim.send(copy, 11);
        sim.connect(copy, b);
        sim.run(MINUTE);
        let forks = sim.nodes[b].local.store.forks(&sim.discovery_key()).unwrap();
        assert_eq!(forks.len(), 1, "the fork is recorded once: {forks:?}");
        assert_eq!(forks[0].0, sim.nodes[w].room.feed_key);
        assert_eq!(sim.nodes[b].stored(), 10, "nothing of the second history is stored");
    }

    #[test]
    fn relay_sized_batches_and_chunk_parts_fit_a_small_circuit() {
        let mut sim = Sim::new(5);
        let a = sim.add_node(NodeOpts { small_circuit: true, ..NodeOpts::default() });
        let b = sim.add_nodes(1);
        sim.send(a, 2_000);
        let chunk: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let id = chunk_id(&chunk);
        sim.nodes[a].local.chunks.write(&id, &chunk).unwrap();
        sim.nodes[a].local.store.note_chunks(&sim.discovery_key(), &[id]).unwrap();
        sim.trace = Some(Vec::new());
        sim.connect(a, b);
        sim.input(b, Input::WantChunks(vec![id]));
        sim.settle(b);
        sim.run_until(MINUTE, "b holds a's entries and chunk", |s| {
            s.nodes[b].stored() == 2_000 && s.nodes[b].local.chunks.has(&id)
        });
        let mut batches = 0;
        let mut parts = 0;
        for frame in sim.sent(a, b) {
            match frame {
                Frame::Data { entries, .. } => {
                    let bytes: usize = entries.iter().map(|e| e.ciphertext.len() + 64).sum();
                    assert!(bytes <= 8 << 10, "a batch of {bytes} bytes on a small circuit");
                    batches += 1;
                }
                Frame::Chunk { bytes, .. } => {
                    assert!(bytes.len() <= 8 << 10, "a chunk part of {} bytes on a small circuit", bytes.len());
                    parts += 1;
                }
                _ => {}
            }
        }
        assert!(batches > 10 && parts >= 13, "{batches} batches, {parts} chunk parts");
        assert_eq!(sim.nodes[b].local.chunks.read(&id).unwrap().unwrap(), chunk);
    }

    #[test]
    fn two_peers_pushing_bulk_at_once_do_not_deadlock() {
        let mut sim = Sim::new(6);
        let (a, b) = (sim.add_nodes(2), 1);
        sim.send(a, 20_000);
        sim.send(b, 20_000);
        sim.connect(a, b);
        sim.run_until(MINUTE, "both hold both feeds", |s| s.all_hold(40_000));
    }

    fn heads(sim: &Sim, i: usize) -> Vec<(FeedKey, u64, Key32)> {
        let mut heads: Vec<_> = sim.nodes[i]
            .local
            .store
            .room_heads(&sim.discovery_key())
            .unwrap()
            .into_iter()
            .map(|h| (h.feed_key, h.seq, h.hash))
            .collect();
        heads.sort();
        heads
    }

    #[test]
    fn a_partition_heals_into_one_history() {
        let mut sim = Sim::new(7);
        sim.spec.loss = 0.02;
        let n = 6;
        sim.add_nodes(n);
        // One member far away, over a lossy link.
        sim.set_link(
            0,
            5,
            LinkSpec { latency: Duration::from_millis(300), jitter: Duration::from_millis(100), loss: 0.2 },
        );
        for a in 0..n {
            for b in a + 1..n {
                sim.connect(a, b);
            }
        }
        sim.partition(&[3, 4, 5]);
        for round in 0..3 {
            for i in 0..n {
                sim.send(i, 5 + round);
            }
            sim.run(MINUTE);
        }
        assert!(sim.nodes[0].stored() == 3 * 18 && sim.nodes[3].stored() == 3 * 18, "each side holds its own half");
        sim.heal();
        for a in 0..n {
            for b in a + 1..n {
                sim.connect(a, b);
            }
        }
        sim.run_until(MINUTE, "every node holds every entry", |s| s.all_hold(6 * 18));
        let first = heads(&sim, 0);
        assert_eq!(first.len(), n);
        for i in 1..n {
            assert_eq!(heads(&sim, i), first, "node {i} holds another history");
        }
    }

    #[test]
    fn two_hundred_peers_in_one_room_all_hold_every_message() {
        let mut sim = Sim::new(8);
        sim.spec = LinkSpec { latency: Duration::from_millis(20), jitter: Duration::from_millis(30), loss: 0.01 };
        let n = 210;
        sim.add_nodes(n);
        // A ring (connected) plus random chords: about 6 connections each.
        for i in 0..n {
            sim.connect(i, (i + 1) % n);
            for _ in 0..2 {
                let j = sim.rng.gen_range(0..n);
                sim.connect(i, j);
            }
        }
        let writers: Vec<usize> = (0..10).map(|k| k * 21).collect();
        for &w in &writers {
            sim.send(w, 3);
        }
        sim.run_until(MINUTE, "every node holds the 30 messages", |s| s.all_hold(30));
        // Pushes cross (issue 14 bounds them), but no session brings an entry twice, and a
        // copy of what a node holds already is not verified and stored again.
        let mut ingests = Vec::new();
        for (i, node) in sim.nodes.iter().enumerate() {
            let received = node.state.counters().entries_received;
            assert!(
                received <= 30 * sim.degree(i) as u64,
                "node {i} received {received} entries from {} peers",
                sim.degree(i)
            );
            ingests.push(node.ingests);
        }
        ingests.sort_unstable();
        let (median, most) = (ingests[ingests.len() / 2], ingests[ingests.len() - 1]);
        eprintln!("batches verified and stored per node: median {median}, most {most}");
        // Ten writers, one batch each: ten to store, a few more where two copies crossed.
        assert!(most <= 20, "a node verified {most} batches to store 10: copies went to storage");
    }

    #[test]
    fn members_show_online_to_peers_they_have_no_session_with() {
        let mut sim = Sim::new(21);
        sim.spec = LinkSpec { latency: Duration::from_millis(20), jitter: Duration::from_millis(30), loss: 0.01 };
        let n = 200;
        sim.add_nodes(n);
        // Two nodes of the previous version and a blind seeder among them.
        let old = [
            sim.add_node(NodeOpts { v3: true, ..NodeOpts::default() }),
            sim.add_node(NodeOpts { v3: true, ..NodeOpts::default() }),
        ];
        let seeder = sim.add_node(NodeOpts { seeder: true, ..NodeOpts::default() });
        let all = sim.nodes.len();
        for i in 0..all {
            sim.connect(i, (i + 1) % all);
            for _ in 0..2 {
                let j = sim.rng.gen_range(0..all);
                sim.connect(i, j);
            }
        }
        sim.trace = Some(Vec::new());
        let members = n - 1; // each of the 200 sees the other 199 (not the v3 nodes, not the seeder)
        sim.run_ticking(Duration::from_secs(30));
        for i in 0..n {
            let seen = sim.seen_online(i);
            assert_eq!(seen, members, "node {i} (with {} sessions) shows {seen} of {members} online", sim.degree(i));
        }
        // The seeder passes the records on (it signs none: it is nobody in the room).
        assert_eq!(sim.seen_online(seeder), n, "the blind seeder does not see every member online");
        assert!(
            sim.nodes.iter().all(|node| node.closed.is_empty()),
            "a session ended: {:?}",
            sim.nodes.iter().flat_map(|n| &n.closed).next()
        );
        let trace = sim.trace.take().unwrap();
        let alive = |s: &&Sent| matches!(s.frame, Frame::Alive { .. });
        assert!(!trace.iter().filter(alive).any(|s| old.contains(&s.to)), "a version 3 node was sent presence records");
        // A record crosses each connection about once (both ways where two copies cross):
        // the copies a node receives of one member's record are bounded by its sessions,
        // not by the room.
        let records: usize = trace
            .iter()
            .filter(alive)
            .map(|s| match &s.frame {
                Frame::Alive { records } => records.len(),
                _ => 0,
            })
            .sum();
        let connections = (0..all).map(|i| sim.degree(i)).sum::<usize>() / 2;
        let per_member = records as f64 / n as f64;
        eprintln!(
            "presence: {records} records sent for {n} members ({per_member:.0} each; {connections} connections); {} frames",
            trace.iter().filter(alive).count()
        );
        assert!(
            per_member <= 1.5 * connections as f64,
            "each member's record was sent {per_member:.0} times over {connections} connections"
        );
        // One leaves: after ALIVE_FOR it shows offline everywhere, and the others, who sign
        // again every ALIVE_EVERY, stay online.
        sim.leave(7);
        sim.run_ticking(ALIVE_FOR + ALIVE_EVERY);
        for i in (0..n).filter(|&i| i != 7) {
            let seen = sim.seen_online(i);
            assert_eq!(seen, members - 1, "node {i} shows {seen} of {} online after one left", members - 1);
        }
    }

    #[test]
    fn a_writer_over_its_quota_is_no_longer_fetched() {
        let mut sim = Sim::new(9);
        let a = sim.add_nodes(1);
        let quota = WriterQuota { entries: 1_000, ..WriterQuota::NONE };
        let b = sim.add_node(NodeOpts { quota: Some(quota), ..NodeOpts::default() });
        sim.send(a, 3_000);
        sim.trace = Some(Vec::new());
        sim.connect(a, b);
        sim.run(MINUTE);
        let feed = sim.nodes[a].room.feed_key;
        assert_eq!(sim.nodes[b].stored_of(&feed), 0);
        assert!(
            sim.nodes[b].events.iter().any(
                |e| matches!(e, DaemonEvent::WriterQuota { quota: QuotaKind::Entries, writer, .. } if *writer == feed)
            ),
            "b said the writer reached its quota"
        );
        let asked = wants(sim.sent(b, a).collect()).len();
        assert!(asked <= 2, "b kept asking for a writer over its quota ({asked} Wants)");
        // More from the writer is not asked for either.
        sim.send(a, 10);
        sim.run(MINUTE);
        assert_eq!(sim.nodes[b].stored_of(&feed), 0);
        let later = wants(sim.sent(b, a).collect()).len();
        assert_eq!(later, asked, "b asked again for a writer over its quota");
    }

    #[test]
    fn a_blocked_writer_is_not_fetched_and_its_sessions_end() {
        let mut sim = Sim::new(10);
        let (a, b, c) = (sim.add_nodes(3), 1, 2);
        let feed = sim.nodes[a].room.feed_key;
        let dk = sim.discovery_key();
        sim.nodes[b].local.store.set_blocked(&dk, &feed, true).unwrap();
        sim.send(a, 10);
        sim.send(c, 5);
        sim.connect(a, c);
        sim.run_until(MINUTE, "c holds a's entries", |s| s.nodes[c].stored() == 15);
        // c would serve a's entries to b: b takes c's only.
        sim.connect(b, c);
        sim.run(MINUTE);
        assert_eq!(sim.nodes[b].stored_of(&feed), 0, "b fetched a blocked writer's entries");
        assert_eq!(sim.nodes[b].stored(), 5);
        // a itself: b ends the session when a proves it writes as the blocked writer.
        sim.connect(a, b);
        sim.run(MINUTE);
        assert!(!sim.connected(a, b));
        assert!(sim.nodes[b].closed.iter().any(|e| e.contains("blocked")), "{:?}", sim.nodes[b].closed);
    }

    #[test]
    fn a_removed_writers_later_entries_are_not_fetched_served_or_stored() {
        let mut sim = Sim::new(13);
        let (a, b, c, d) = (sim.add_nodes(4), 1, 2, 3);
        let feed = sim.nodes[a].room.feed_key;
        sim.send(a, 10);
        sim.connect(a, b);
        sim.connect(a, c);
        sim.run_until(MINUTE, "b and c hold a's entries", |s| s.nodes[b].stored() == 10 && s.nodes[c].stored() == 10);
        // b and c take a rotation that removes a after its 10 entries; d has not heard of it.
        let kept = sim.nodes[b].local.store.feed_meta(&feed).unwrap().and_then(|m| m.head).unwrap();
        let rotation = Rotation {
            at: MessageRef { feed: sim.nodes[b].room.feed_key, seq: 0 },
            lamport: 1,
            removed: vec![feed],
            kept: vec![kept],
            sealed: vec![],
            admin: sim.nodes[b].room.feed_key,
            next: None,
            superseded: vec![],
        };
        for n in [b, c] {
            sim.nodes[n].local.store.note_rotation(&sim.discovery_key(), &rotation).unwrap();
        }
        sim.trace = Some(Vec::new());
        sim.send(a, 5);
        sim.connect(a, d);
        sim.run_until(MINUTE, "d holds all of a's entries", |s| s.nodes[d].stored() == 15);
        // d would pass the later ones on to c: c takes none, from a or from d.
        sim.connect(c, d);
        sim.run(MINUTE);
        for n in [b, c] {
            assert_eq!(sim.nodes[n].stored_of(&feed), 10, "node {n} stored a removed writer's later entries");
            let asked: Vec<_> = [a, d].iter().flat_map(|&from| wants(sim.sent(n, from).collect())).collect();
            assert!(asked.iter().all(|&(_, end)| end <= 10), "node {n} asked for them: {asked:?}");
        }
        // Nor served by a node that stored them before it heard of the rotation: e, which
        // has not heard of it and wants all 15, gets what stays.
        sim.nodes[d].local.store.note_rotation(&sim.discovery_key(), &rotation).unwrap();
        let e = sim.add_nodes(1);
        sim.connect(d, e);
        sim.run_until(MINUTE, "e holds what stays of a's feed", |s| s.nodes[e].stored_of(&feed) == 10);
        sim.run(MINUTE);
        assert_eq!(sim.nodes[e].stored_of(&feed), 10, "d served a removed writer's later entries");
    }

    #[test]
    fn frames_past_the_bounds_end_the_session_and_nothing_else() {
        let mut sim = Sim::new(11);
        let a = sim.add_nodes(1);
        sim.send(a, 10);
        let feed = sim.nodes[a].room.feed_key;
        let chunk = vec![7u8; 1000];
        let id = chunk_id(&chunk);
        sim.nodes[a].local.chunks.write(&id, &chunk).unwrap();
        sim.nodes[a].local.store.note_chunks(&sim.discovery_key(), &[id]).unwrap();
        // (frames, whether the hostile peer reads what it asked for, why the session ends)
        let cases: Vec<(Vec<Frame>, bool, &str)> = vec![
            (vec![Frame::Want { feed_key: feed, start: 5, end: 5 }], true, "empty Want"),
            (vec![Frame::Have { heads: Vec::new(), bytes: vec![0; 3] }], true, "Have lists too many feeds"),
            (vec![Frame::Auth { mac: [0; 32] }], true, "handshake frame after handshake"),
            // A peer that asks and does not read: what it asked for would pile up.
            ((0..4_200).map(|_| Frame::Want { feed_key: feed, start: 0, end: 10 }).collect(), false, "too many Wants"),
            (vec![Frame::WantChunk { id, offset: 0 }; 80], false, "too many WantChunks"),
        ];
        for (frames, reads, why) in cases {
            let h = sim.add_nodes(1);
            sim.connect(a, h);
            sim.run(MINUTE);
            sim.nodes[h].deaf = !reads;
            for frame in frames {
                sim.inject(h, a, frame);
            }
            sim.run(MINUTE);
            assert!(!sim.connected(a, h), "{why}: the session is still up");
            assert!(sim.nodes[a].closed.last().is_some_and(|e| e.contains(why)), "{why}: {:?}", sim.nodes[a].closed);
        }
        // a still serves honest peers.
        let b = sim.add_nodes(1);
        sim.connect(a, b);
        sim.run_until(MINUTE, "b holds a's entries", |s| s.nodes[b].stored() == 10);
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let run = || {
            let mut sim = Sim::new(12);
            sim.spec.loss = 0.05;
            sim.add_nodes(8);
            for i in 0..8 {
                sim.connect(i, (i + 1) % 8);
                sim.connect(i, (i + 3) % 8);
            }
            for i in 0..8 {
                sim.send(i, 100 * (i + 1));
            }
            sim.run_until(MINUTE, "all hold all", |s| s.all_hold(3_600));
            (sim.now, sim.delivered)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn members_behind_hard_nats_are_nobodys_only_path() {
        // Half the room behind NATs that hole punching does not pass: their sessions with
        // each other run over relays. The membership rules keep dialing for direct
        // sessions and rotate relayed ones away, so the room holds together on direct
        // links alone.
        let bounds = Bounds::new(12, 16);
        let mut sim = Sim::new(31);
        sim.bounded(bounds);
        let n = 80;
        for i in 0..n {
            let joined = sim.add_node(NodeOpts { hard_nat: i % 2 == 1, ..NodeOpts::default() });
            let found: Vec<usize> = (0..joined.min(5)).map(|_| sim.rng.gen_range(0..joined)).collect();
            sim.discover(joined, &found);
        }
        let relayed_links = |sim: &Sim| -> (usize, usize) {
            let links: Vec<(usize, usize)> = sim.conns.values().map(|c| (c.nodes[0], c.nodes[1])).collect();
            (links.iter().filter(|(a, b)| sim.relayed(*a, *b)).count(), links.len())
        };
        let before = relayed_links(&sim);
        for _ in 0..10 {
            sim.tick(MINUTE);
        }
        let (relayed, all) = relayed_links(&sim);
        // Connected through direct links only.
        let mut reached = vec![false; n];
        let mut stack = vec![0];
        reached[0] = true;
        while let Some(i) = stack.pop() {
            for j in sim.peers_of(i) {
                if !sim.relayed(i, j) && !reached[j] {
                    reached[j] = true;
                    stack.push(j);
                }
            }
        }
        let direct_min = (0..n).map(|i| sim.count(i).direct).min().unwrap_or(0);
        let most = (0..n).map(|i| sim.degree(i)).max().unwrap_or(0);
        println!(
            "relayed sessions: {} of {} after the joins, {relayed} of {all} after 10 rotations; fewest direct sessions {direct_min}, most sessions {most}",
            before.0, before.1
        );
        assert!(reached.iter().all(|&r| r), "the room falls apart without its relayed links");
        assert!(most <= bounds.max, "a node has {most} sessions");
        assert!(direct_min >= bounds.target / 2, "a node has only {direct_min} direct sessions");
        assert!(relayed * 100 <= all * 15, "{relayed} of {all} sessions still run over relays");
        // And a message from behind a hard NAT reaches everyone.
        sim.send(1, 1);
        sim.run_until(sim.now + MINUTE, "every peer holds the message", |s| s.all_hold(1));
    }

    /// Issue 14: a room of 1,000 peers with bounded sessions (12 dialed, at most 16, as the
    /// daemon's defaults). Every node stays within the bound and the room one connected
    /// whole through joins, leaves and a partition that heals; every message reaches every
    /// online peer, with the frames and duplicates per message counted and bounded.
    #[test]
    fn a_thousand_peers_keep_bounded_sessions_through_churn_and_a_partition() {
        let bounds = Bounds::new(12, 16);
        let mut sim = Sim::new(14);
        sim.spec = LinkSpec { latency: Duration::from_millis(20), jitter: Duration::from_millis(20), loss: 0.01 };
        sim.bounded(bounds);
        let join = |sim: &mut Sim| {
            let online: Vec<usize> = (0..sim.nodes.len()).filter(|&i| !sim.gone[i]).collect();
            let i = sim.add_node(NodeOpts::default());
            // A DHT lookup finds a few of those in the room.
            let found: Vec<usize> =
                (0..online.len().min(5)).map(|_| online[sim.rng.gen_range(0..online.len())]).collect();
            sim.discover(i, &found);
            i
        };
        let check = |sim: &Sim, what: &str| {
            let online = (0..sim.nodes.len()).filter(|&i| !sim.gone[i]);
            let most = online.map(|i| sim.degree(i)).max().unwrap_or(0);
            assert!(most <= bounds.max, "{what}: a node has {most} sessions");
            assert!(sim.online_connected(), "{what}: the room fell apart");
        };
        let online = |sim: &Sim| (0..sim.nodes.len()).filter(|&i| !sim.gone[i]).collect::<Vec<_>>();
        // 1,000 peers take minutes in a debug build; CI runs 200 (about 20 s). The full
        // room: `PEERLOG_SIM_PEERS=1000 cargo test -p peerlog --lib a_thousand_peers -- --nocapture`.
        #[allow(non_snake_case)]
        let N: usize = std::env::var("PEERLOG_SIM_PEERS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
        let t = Instant::now();
        for _ in 0..N {
            join(&mut sim);
        }
        check(&sim, "after the joins");

        // Ten writers, one message each.
        let (frames0, received0) = (sim.delivered, 0u64);
        for k in 0..10 {
            sim.send(k * N / 10, 1);
        }
        sim.run_until(MINUTE, "every peer holds the 10 messages", |s| s.online_hold(10));
        let frames = sim.delivered - frames0;
        let received: u64 = sim.nodes.iter().map(|n| n.state.counters().entries_received).sum::<u64>() - received0;
        let duplicates = received - 10 * (N as u64 - 1);
        let mean_degree = (0..N).map(|i| sim.degree(i)).sum::<usize>() as f64 / N as f64;
        println!(
            "{N} peers, mean degree {mean_degree:.1}: {} frames and {} duplicate entries per message, all held after {:?} simulated ({:?} here)",
            frames / 10,
            duplicates / 10,
            sim.now,
            t.elapsed()
        );
        assert!(frames / 10 <= 20 * N as u64, "{} frames per message", frames / 10);
        assert!(duplicates / 10 <= (bounds.max * N) as u64, "{} duplicates per message", duplicates / 10);

        // Churn: a tenth leave, as many join, a few minutes pass.
        for _ in 0..N / 10 {
            let now = online(&sim);
            let k = sim.rng.gen_range(0..now.len());
            sim.leave(now[k]);
        }
        for _ in 0..N / 10 {
            join(&mut sim);
        }
        for _ in 0..3 {
            sim.tick(MINUTE);
        }
        check(&sim, "after churn");
        let w = online(&sim)[0];
        sim.send(w, 1);
        sim.run_until(MINUTE * 5, "every online peer, the joiners too, holds the 11 messages", |s| s.online_hold(11));

        // A partition: each half goes on alone, then it heals into one room again.
        let now = online(&sim);
        let half: Vec<usize> = now.iter().copied().filter(|i| i % 2 == 1).collect();
        sim.partition(&half);
        for _ in 0..3 {
            sim.tick(MINUTE);
        }
        let most = now.iter().map(|&i| sim.degree(i)).max().unwrap_or(0);
        assert!(most <= bounds.max, "during the partition: {most} sessions");
        let (a, b) = (now.iter().copied().find(|i| i % 2 == 0).unwrap(), half[0]);
        sim.send(a, 1);
        sim.send(b, 1);
        sim.heal();
        let mut healed = 0;
        while !sim.online_connected() {
            healed += 1;
            assert!(healed <= 10, "the room is still split 10 minutes after the partition healed");
            sim.tick(MINUTE);
        }
        check(&sim, "after the partition healed");
        sim.run_until(MINUTE * 20, "every online peer holds all 13 messages", |s| s.online_hold(13));
    }
}
