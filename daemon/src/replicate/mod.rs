//! Replication: one session per (peer, room) over a libp2p stream speaking
//! `/peerlog/replicate/4`, or 3 with older nodes (frames in `peerlog_proto::wire`, rules in
//! `docs/PROTOCOL.md`).
//!
//! - `state.rs`: the rules of one room, a state machine without I/O ([`RoomState`]);
//! - `pieces.rs`: which session fetches which piece of which feed (part of the rules);
//! - `driver.rs`: one task per room runs its state, performs its outputs and feeds the
//!   session writers when they have room, so two peers sending bulk data to each other
//!   cannot deadlock;
//! - `session.rs`: a session's I/O (open, accept, handshake, framing, reader and writer);
//! - `storage.rs`: the rules' view of the store, and the outputs that write to it;
//! - `membership.rs`: which room peers to keep sessions with (a bounded active set, a
//!   passive list, rotation);
//! - `presence.rs`: who is online, from signed records passed on over the sessions;
//! - this file: [`Replicator`], which sessions exist (one per peer and room), redials.
//!
//! Duplicate sessions (both peers dialing at once) resolve deterministically: the session
//! opened by the peer with the smaller PeerId wins, on both sides. An inbound session
//! replaces an established one: the peer would not open it unless it lost the old one.

mod driver;
pub mod membership;
pub mod pieces;
pub mod presence;
mod session;
#[cfg(test)]
mod sim;
pub mod state;
pub mod storage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Refusal, PROTOCOL, PROTOCOL_V3};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use self::driver::{Driver, RoomLink, ROOM_FRAMES};
use self::membership::{Bounds, Count, Membership};
use self::session::{HandshakeSlot, MAX_HANDSHAKES};
use self::state::{RoomState, RuleLimits};
use self::storage::Local;
use crate::config::Limits;
use crate::files::Chunks;
use crate::ids::SessionId;
use crate::log::store::StoreError;
use crate::log::Store;
use crate::node::NodeHandle;
use crate::rooms::{DaemonEvent, Room, Rooms};
use crate::tasks::Tasks;

/// Redials of a room peer whose session dropped: first delay, cap, and attempts.
const REDIAL_FIRST: Duration = Duration::from_millis(500);
const REDIAL_MAX: Duration = Duration::from_secs(60);
const REDIAL_ATTEMPTS: u32 = 10;

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The stream failed or closed.
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// The peer could not be reached: no connection came up.
    #[error(transparent)]
    Unreachable(#[from] crate::node::NodeError),
    /// A connection is up but a stream on it could not be opened.
    #[error("cannot open a stream: {0}")]
    OpenStream(#[source] libp2p_stream::OpenStreamError),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The peer refused the session.
    #[error("refused by peer: {0:?}")]
    Refused(Refusal),
    /// Timed out.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The peer does not speak the replication protocol (another libp2p application).
    #[error("the peer does not speak {PROTOCOL} or {PROTOCOL_V3}")]
    NotPeerlog,
}
/// Peers remembered as not speaking the replication protocol (bounded), and for how long
/// (a peerlog daemon that was still starting could have answered so).
pub(super) const NOT_PEERLOG_MAX: usize = 1024;
pub(super) const NOT_PEERLOG_FOR: Duration = Duration::from_secs(600);

struct Slot {
    id: SessionId,
    outbound: bool,
    established: bool,
    /// Over a relayed connection: a slow link (see `membership.rs`).
    relayed: bool,
    cancel: CancellationToken,
    /// The peer's feed key in the room, once its `Writer` proof verified.
    writer: Option<FeedKey>,
}

struct Inner {
    local: PeerId,
    store: Store,
    chunks: Chunks,
    rooms: Arc<Rooms>,
    node: NodeHandle,
    /// Consecutive failed attempts per (peer, room), for redial backoff.
    redials: Mutex<HashMap<(PeerId, DiscoveryKey), u32>>,
    /// Peers that answered "protocol not supported", and when: not room peers (other
    /// libp2p applications on the LAN or DHT), not asked again for [`NOT_PEERLOG_FOR`].
    not_peerlog: Mutex<HashMap<PeerId, std::time::Instant>>,
    limits: Limits,
    /// What each peer may still send us at full speed.
    budgets: Arc<PeerBudgets>,
    slots: Mutex<HashMap<(PeerId, DiscoveryKey), Slot>>,
    next_id: AtomicU64,
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Each joined room's task (see [`Replicator::start_room`]).
    rooms_running: Mutex<HashMap<DiscoveryKey, RoomLink>>,
    /// Inbound handshakes in progress per peer (see [`MAX_HANDSHAKES_PER_PEER`]).
    handshaking: Mutex<HashMap<PeerId, usize>>,
    /// Each room's passive list and choices (see `membership.rs`).
    memberships: Mutex<HashMap<DiscoveryKey, Membership>>,
    bounds: Bounds,
    tasks: Tasks,
    cancel: CancellationToken,
}

/// A token bucket: bytes of entries a peer may send at full speed.
struct Budget {
    bytes: f64,
    at: std::time::Instant,
}

/// What each peer may still send us at full speed: `limits.peer_burst_bytes`, refilled at
/// `limits.peer_bytes_per_s`, shared by its sessions in every room.
pub(super) struct PeerBudgets {
    rate: f64,
    burst: f64,
    /// Past this many peers, those whose budget is full again are forgotten.
    peers: usize,
    budgets: Mutex<HashMap<PeerId, Budget>>,
}

impl PeerBudgets {
    fn new(limits: &Limits) -> Self {
        Self {
            rate: limits.peer_bytes_per_s as f64,
            burst: limits.peer_burst_bytes as f64,
            peers: limits.sessions,
            budgets: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `bytes` of entries received from `peer` to its budget. Returns how long to
    /// read nothing more from it.
    pub(super) fn charge(&self, peer: PeerId, bytes: u64) -> Duration {
        let (rate, burst) = (self.rate, self.burst);
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        let now = std::time::Instant::now();
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if budgets.len() > self.peers {
            budgets.retain(|_, b| b.bytes + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let b = budgets.entry(peer).or_insert(Budget { bytes: burst, at: now });
        b.bytes = (b.bytes + rate * now.duration_since(b.at).as_secs_f64()).min(burst) - bytes as f64;
        b.at = now;
        if b.bytes >= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(-b.bytes / rate)
    }
}

/// Runs replication sessions. Cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

/// A peer with an authenticated session in a room.
#[derive(Clone, Debug)]
pub struct RoomPeer {
    /// The peer.
    pub peer: PeerId,
    /// The room.
    pub room: DiscoveryKey,
    /// The peer's feed key in the room (its writer), once proven.
    pub writer: Option<FeedKey>,
}

impl Replicator {
    /// Creates the replicator; call [`Replicator::spawn_acceptor`] to take inbound sessions.
    pub fn new(
        store: Store,
        chunks: Chunks,
        rooms: Arc<Rooms>,
        node: NodeHandle,
        limits: Limits,
        tasks: Tasks,
        cancel: CancellationToken,
    ) -> Self {
        let budgets = Arc::new(PeerBudgets::new(&limits));
        let bounds = Bounds::new(limits.room_sessions, limits.room_sessions_max);
        Self {
            inner: Arc::new(Inner {
                local: node.peer_id(),
                store,
                chunks,
                rooms,
                node,
                redials: Mutex::new(HashMap::new()),
                not_peerlog: Default::default(),
                limits,
                budgets,
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
                rooms_running: Mutex::new(HashMap::new()),
                handshaking: Mutex::new(HashMap::new()),
                memberships: Mutex::new(HashMap::new()),
                bounds,
                tasks,
                cancel,
            }),
        }
    }

    fn control(&self) -> libp2p_stream::Control {
        self.inner.node.streams()
    }

    /// Accepts inbound replication streams until cancelled.
    pub fn spawn_acceptor(&self) -> Result<(), libp2p_stream::AlreadyRegistered> {
        let mut control = self.control();
        let v4 = control.accept(StreamProtocol::new(PROTOCOL))?.map(|(peer, stream)| (peer, stream, true));
        let v3 = control.accept(StreamProtocol::new(PROTOCOL_V3))?.map(|(peer, stream)| (peer, stream, false));
        let mut incoming = futures::stream::select(v4, v3);
        let this = self.clone();
        self.inner.tasks.spawn("replication acceptor", async move {
            loop {
                let next = tokio::select! {
                    _ = this.inner.cancel.cancelled() => break,
                    next = incoming.next() => next,
                };
                let Some((peer, stream, presence)) = next else { break };
                let Some(permit) = HandshakeSlot::take(&this, peer) else {
                    debug!(%peer, "too many pending handshakes; dropping stream");
                    continue;
                };
                let this2 = this.clone();
                this.inner.tasks.spawn(
                    "inbound session",
                    async move {
                        if let Err(e) = this2.run_inbound(peer, stream, presence, permit).await {
                            debug!(error = %e, "inbound session ended");
                        }
                    }
                    .instrument(tracing::debug_span!("session", %peer, dir = "in")),
                );
            }
        });
        Ok(())
    }

    /// A room peer was found (DHT, mDNS, peer exchange, a redial): opens a session with
    /// it if the room has fewer than its target of sessions and none with it exists or is
    /// being opened; else it is remembered as a passive peer.
    pub fn ensure_session(&self, peer: PeerId, room: DiscoveryKey) {
        if peer == self.inner.local {
            return;
        }
        let (sessions, active) = self.room_slots(&room);
        if active.contains(&peer) || !self.with_membership(room, |m| m.learned(peer, sessions)) {
            return;
        }
        self.dial(peer, room);
    }

    /// Opens a session with `peer` for `room` unless one exists or is being opened.
    fn dial(&self, peer: PeerId, room: DiscoveryKey) {
        {
            let mut not = self.inner.not_peerlog.lock().unwrap_or_else(|p| p.into_inner());
            match not.get(&peer) {
                Some(at) if at.elapsed() < NOT_PEERLOG_FOR => return,
                Some(_) => {
                    not.remove(&peer);
                }
                None => {}
            }
        }
        let Some((id, cancel)) = self.reserve_slot(peer, room, true) else { return };
        self.with_membership(room, |m| m.forget(&peer));
        let this = self.clone();
        self.inner.tasks.spawn(
            "outbound session",
            async move {
                let established = Arc::new(AtomicBool::new(false));
                let result = tokio::select! {
                    _ = cancel.cancelled() => Ok(()),
                    r = this.run_outbound(peer, room, id, established.clone()) => r,
                };
                if let Err(e) = &result {
                    debug!(error = %e, "outbound session ended");
                }
                this.release(peer, room, id);
                if !cancel.is_cancelled() {
                    this.after_session(peer, room, established.load(Ordering::Relaxed), &result);
                }
            }
            .instrument(tracing::debug_span!("session", %peer, dir = "out")),
        );
    }

    /// The sessions of `room` (open or being opened), counted, and their peers.
    fn room_slots(&self, room: &DiscoveryKey) -> (Count, Vec<PeerId>) {
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut count = Count::default();
        let mut peers = Vec::new();
        for ((peer, _), slot) in slots.iter().filter(|((_, r), _)| r == room) {
            count.all += 1;
            count.direct += usize::from(!slot.relayed);
            peers.push(*peer);
        }
        (count, peers)
    }

    fn with_membership<T>(&self, room: DiscoveryKey, f: impl FnOnce(&mut Membership) -> T) -> T {
        let mut all = self.inner.memberships.lock().unwrap_or_else(|p| p.into_inner());
        let m = all.entry(room).or_insert_with(|| Membership::new(self.inner.bounds, rand::random()));
        f(m)
    }

    /// Whether `room` takes one more inbound session from `peer` (its sessions are below
    /// the bound, not counting one with `peer` being set up).
    pub(super) fn accepts(&self, peer: PeerId, room: DiscoveryKey) -> bool {
        let (sessions, active) = self.room_slots(&room);
        let others = sessions.all - usize::from(active.contains(&peer));
        self.with_membership(room, |m| m.accepts(others))
    }

    /// A room lost a session: a passive peer takes its place while under the target.
    fn replace_lost(&self, room: DiscoveryKey) {
        let (sessions, active) = self.room_slots(&room);
        if let Some(next) = self.with_membership(room, |m| m.replacement(sessions, &active)) {
            debug!(%next, "dialing a passive room peer in place of a lost session");
            self.dial(next, room);
        }
    }

    /// Every few seconds: each room at its target swaps one session it opened for a
    /// passive peer once per [`membership::ROTATE_EVERY`].
    pub fn spawn_rotation(&self) {
        let this = self.clone();
        self.inner.tasks.spawn("room rotation", async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = this.inner.cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let rooms: Vec<DiscoveryKey> =
                    this.inner.rooms_running.lock().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
                for room in rooms {
                    let (sessions, active) = this.room_slots(&room);
                    let (outbound, relayed): (Vec<PeerId>, Vec<PeerId>) = {
                        let slots = this.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
                        let mine = || slots.iter().filter(|((_, r), s)| *r == room && s.outbound && s.established);
                        (
                            mine().map(|((p, _), _)| *p).collect(),
                            mine().filter(|(_, s)| s.relayed).map(|((p, _), _)| *p).collect(),
                        )
                    };
                    let now = std::time::Instant::now();
                    let Some((close, dial)) =
                        this.with_membership(room, |m| m.rotate(now, sessions, &outbound, &relayed, &active))
                    else {
                        continue;
                    };
                    debug!(%close, %dial, "rotating a room session");
                    if let Some(slot) =
                        this.inner.slots.lock().unwrap_or_else(|p| p.into_inner()).remove(&(close, room))
                    {
                        slot.cancel.cancel();
                        if slot.established {
                            let _ = this.inner.rooms.events.send(DaemonEvent::PeerLeft { room, peer: close });
                        }
                    }
                    // Peers may have dialed in meanwhile: the swap keeps the bound too.
                    if this.accepts(dial, room) {
                        this.dial(dial, room);
                    } else {
                        this.with_membership(room, |m| m.remember(dial));
                    }
                }
            }
        });
    }

    /// Redials a room peer whose session dropped, with exponential backoff, unless the
    /// session ended for a reason a retry would not fix; a full room's peer is remembered
    /// and another is dialed.
    fn after_session(&self, peer: PeerId, room: DiscoveryKey, established: bool, result: &Result<(), SessionError>) {
        if matches!(result, Err(SessionError::Refused(Refusal::Full))) {
            self.with_membership(room, |m| m.remember(peer));
            self.replace_lost(room);
            return;
        }
        if matches!(result, Err(SessionError::NotPeerlog | SessionError::Refused(Refusal::UnknownRoom))) {
            self.with_membership(room, |m| m.forget(&peer));
        }
        if established {
            self.replace_lost(room);
        } else if matches!(
            result,
            Err(SessionError::Io(_)
                | SessionError::Timeout(_)
                | SessionError::Unreachable(_)
                | SessionError::OpenStream(_))
        ) {
            // Not reached this time: a passive peer again, tried later (a rotation, a
            // replacement), as after a partition that heals.
            self.with_membership(room, |m| m.remember(peer));
        }
        // Only a peer we had a session with is redialed (the session just ended, or a
        // redial of it failed): one we never reached (an address from peer exchange, say)
        // is not dialed again and again; the DHT rounds find real ones.
        let redialing = self.inner.redials.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&(peer, room));
        let retry = match result {
            // What a later attempt may get past: the network, not the peer's answer.
            Err(
                SessionError::Io(_)
                | SessionError::Timeout(_)
                | SessionError::Unreachable(_)
                | SessionError::OpenStream(_),
            ) => established || redialing,
            Ok(()) => established,
            Err(_) => false,
        };
        if !retry || self.inner.cancel.is_cancelled() || self.inner.rooms.get(&room).is_none() {
            return;
        }
        let attempt = {
            let mut redials = self.inner.redials.lock().unwrap_or_else(|p| p.into_inner());
            let n = redials.entry((peer, room)).or_insert(0);
            *n += 1;
            *n
        };
        if attempt > REDIAL_ATTEMPTS {
            debug!(%peer, "giving up redialing; the DHT may find it again");
            return;
        }
        let delay = REDIAL_FIRST.saturating_mul(1 << (attempt - 1).min(16)).min(REDIAL_MAX);
        let this = self.clone();
        let cancel = self.inner.cancel.clone();
        self.inner.tasks.spawn("redial", async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => {
                    debug!(%peer, attempt, "redialing room peer");
                    this.ensure_session(peer, room);
                }
            }
        });
    }

    /// Peers with an authenticated session, optionally only in one room.
    pub fn room_peers(&self, room: Option<&DiscoveryKey>) -> Vec<RoomPeer> {
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .filter(|((_, r), s)| s.established && room.is_none_or(|want| want == r))
            .map(|((peer, r), s)| RoomPeer { peer: *peer, room: *r, writer: s.writer })
            .collect()
    }

    /// Drops every session with `peer` and opens them again: after hole punching closed the
    /// relayed connection they ran on, they continue on the direct one. (A stream whose
    /// connection we closed is not guaranteed to report EOF, so do not wait for one.)
    pub fn restart_peer(&self, peer: PeerId) {
        for room in self.end_sessions(peer, false) {
            debug!(%peer, "moving session to the new connection");
            self.ensure_session(peer, room);
        }
    }

    /// The last connection to `peer` closed: its established sessions are dead (a stream
    /// on a closed connection does not reliably report EOF, and the peer would stay listed
    /// as connected). End them and redial with backoff, as after any lost session.
    pub fn peer_disconnected(&self, peer: PeerId) {
        for room in self.end_sessions(peer, true) {
            debug!(%peer, "connection lost; ending its session");
            let _ = self.inner.rooms.events.send(DaemonEvent::PeerLeft { room, peer });
            let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
            self.after_session(peer, room, true, &Err(SessionError::Io(lost)));
        }
    }

    /// Cancels and forgets the sessions with `peer` (only established ones if asked);
    /// returns their rooms. The cancelled tasks neither release nor redial.
    fn end_sessions(&self, peer: PeerId, established_only: bool) -> Vec<DiscoveryKey> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<(PeerId, DiscoveryKey)> = slots
            .iter()
            .filter(|((p, _), s)| *p == peer && (s.established || !established_only))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                slots.remove(&k)?.cancel.cancel();
                Some(k.1)
            })
            .collect()
    }

    /// Ends every session of a room.
    pub fn close_room(&self, room: &DiscoveryKey) {
        self.inner.memberships.lock().unwrap_or_else(|p| p.into_inner()).remove(room);
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, r), s) in slots.iter() {
            if r == room {
                s.cancel.cancel();
            }
        }
    }

    /// Reserves the (peer, room) slot; see the module docs for the duplicate rule.
    fn reserve_slot(&self, peer: PeerId, room: DiscoveryKey, outbound: bool) -> Option<(SessionId, CancellationToken)> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = slots.get(&(peer, room)) {
            let ours_wins = self.inner.local < peer;
            // A peer opens a session only when it has none: an inbound session replaces an
            // established one (ours is stale: its connection died and we have not noticed
            // yet, e.g. a relayed connection closed after hole punching). Two sessions being
            // set up at once resolve by PeerId.
            let replace = !outbound && (existing.established || (existing.outbound && !ours_wins));
            if !replace {
                return None;
            }
            existing.cancel.cancel();
        } else if slots.len() >= self.inner.limits.sessions {
            warn!(limit = self.inner.limits.sessions, "session limit reached");
            return None;
        }
        let id = SessionId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let cancel = self.inner.cancel.child_token();
        slots.insert(
            (peer, room),
            Slot { id, outbound, established: false, relayed: false, cancel: cancel.clone(), writer: None },
        );
        Some((id, cancel))
    }

    fn release(&self, peer: PeerId, room: DiscoveryKey, id: SessionId) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.get(&(peer, room)).is_some_and(|s| s.id == id) {
            let was_established = slots.remove(&(peer, room)).is_some_and(|s| s.established);
            if was_established {
                let _ = self.inner.rooms.events.send(DaemonEvent::PeerLeft { room, peer });
            }
        }
    }

    pub(super) fn set_writer(&self, peer: PeerId, room: DiscoveryKey, id: SessionId, writer: FeedKey) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(&(peer, room)).filter(|s| s.id == id) {
            s.writer = Some(writer);
        }
    }

    /// The session runs over a relayed connection.
    fn mark_relayed(&self, peer: PeerId, room: DiscoveryKey, id: SessionId) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(&(peer, room)).filter(|s| s.id == id) {
            s.relayed = true;
        }
    }

    fn mark_established(&self, peer: PeerId, room: DiscoveryKey, id: SessionId) -> bool {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get_mut(&(peer, room)) {
            Some(s) if s.id == id => {
                s.established = true;
                self.inner.redials.lock().unwrap_or_else(|p| p.into_inner()).remove(&(peer, room));
                true
            }
            _ => false,
        }
    }

    /// Learns peers from a `Peers` frame and opens sessions with them.
    pub(super) fn learn_peers(&self, room: DiscoveryKey, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
        let this = self.clone();
        self.inner.tasks.spawn("peer exchange", async move {
            for (peer, addrs) in peers {
                if peer == this.inner.local {
                    continue;
                }
                if this.inner.node.add_addresses(peer, addrs).await.is_err() {
                    return;
                }
                this.ensure_session(peer, room);
            }
        });
    }

    /// Starts the task that replicates `room` (see `driver.rs`); sessions of the room are
    /// handed to it. It ends when the room is left or the daemon stops.
    pub fn start_room(&self, room: Arc<Room>) -> Result<(), StoreError> {
        let local = Local { store: self.inner.store.clone(), chunks: self.inner.chunks.clone() };
        let state = RoomState::new(room.discovery_key, room.feed_key, RuleLimits::from(&self.inner.limits), &local)?;
        let Some(local_events) = room.take_local() else { return Ok(()) }; // running already
        let (control, control_rx) = mpsc::unbounded_channel();
        let (frames, frames_rx) = mpsc::channel(ROOM_FRAMES);
        let discovery_key = room.discovery_key;
        self.inner
            .rooms_running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(discovery_key, RoomLink { control: control.clone(), frames });
        let cancel = room.cancel.clone();
        let driver = Driver::new(room, local, state, self.clone());
        let this = self.clone();
        self.inner.tasks.spawn("room replication", async move {
            driver.run(control_rx, frames_rx, local_events, cancel).await;
            let mut running = this.inner.rooms_running.lock().unwrap_or_else(|p| p.into_inner());
            if running.get(&discovery_key).is_some_and(|link| link.control.same_channel(&control)) {
                running.remove(&discovery_key);
            }
        });
        Ok(())
    }

    /// How sessions reach the task of `room`, while it runs.
    fn room_link(&self, room: &DiscoveryKey) -> Option<RoomLink> {
        self.inner.rooms_running.lock().unwrap_or_else(|p| p.into_inner()).get(room).cloned()
    }
}
