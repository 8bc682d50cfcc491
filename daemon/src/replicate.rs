//! Replication: one session per (peer, room) over a libp2p stream speaking
//! `/peerlog/replicate/3` (frames in `peerlog_proto::wire`, rules in `docs/PROTOCOL.md`).
//!
//! A session is three tasks: a reader (frames in), a writer (frames out) and the session
//! loop, which never waits on the network: it queues control frames and serves data only
//! when the writer has room, so two peers sending to each other cannot deadlock.
//!
//! Duplicate sessions (both peers dialing at once) resolve deterministically: the session
//! opened by the peer with the smaller PeerId wins, on both sides. An inbound session
//! replaces an established one: the peer would not open it unless it lost the old one.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use peerlog_proto::wire::{Frame, Key32, PeerAddrs, Refusal, SignedHead, PROTOCOL};
use tokio::sync::{broadcast, mpsc};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::config::Limits;
use crate::fetch::{Candidate, PIECES_PER_SESSION};
use crate::files::{chunk_id, Chunks, CHUNKS_PER_SESSION, CHUNK_BYTES, TAG_BYTES};
use crate::ids::SessionId;
use crate::keys::{auth_mac, verify_auth_mac};
use crate::log::store::IngestError;
use crate::log::{verify_head, Store};
use crate::node::NodeHandle;
use crate::rooms::ChunkEvent;
use crate::rooms::{DaemonEvent, HeadUpdate, Room, Rooms};
use crate::tasks::Tasks;

/// Time allowed for Hello + Auth.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a stream (including dialing).
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Frames buffered between the reader task and the session loop.
const INBOUND_FRAMES: usize = 8;
/// Frames buffered between the session loop and the writer task.
const OUTBOUND_FRAMES: usize = 8;
/// Most unauthenticated inbound sessions at once.
const MAX_HANDSHAKES: usize = 64;
/// …and per peer: one peer cannot take every slot with streams that never say Hello.
const MAX_HANDSHAKES_PER_PEER: usize = 4;
/// How long an inbound stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest frame before the peer proved membership (Hello and Auth are under 100 bytes):
/// a non-member cannot make us buffer megabytes.
const PRE_AUTH_FRAME_BYTES: usize = 1024;
/// Frames queued for a peer that does not read: past this the session ends (what it asked
/// for would otherwise pile up without bound).
const MAX_OUTBOX: usize = 4096;
/// New entries are pushed (rather than announced) only while fewer frames than this wait.
const PUSH_OUTBOX: usize = 16;
/// Feeds one session may tell us about: writer keys cost nothing to mint, and each feed
/// costs memory (heads, lengths) until the session ends.
const MAX_SESSION_FEEDS: usize = 20_000;
/// Most `Want`s a peer may have queued with us.
const MAX_SERVING: usize = 4096;
/// Most `WantChunk`s a peer may have queued with us.
const MAX_CHUNKS_SERVING: usize = 64;
/// Most feeds in one `Have`.
const MAX_HAVE_FEEDS: usize = 10_000;
/// Signed heads kept per feed per session as anchors for incoming batches, before the
/// heads of entries already stored are dropped…
const ANCHORS_PER_FEED: usize = 16;
/// …and at most, stored or not (about 140 bytes each).
const MAX_ANCHORS_PER_FEED: usize = 1024;
/// New entries up to this count are pushed with their head instead of announced.
const PUSH_MAX: u64 = 64;
/// Target size of a `Data` frame's entries, well under the frame limit.
const BATCH_BYTES: usize = 1 << 20;
/// The same over a relayed connection: a relay closes a circuit after 128 KiB by default, so
/// each circuit must be able to carry several whole frames (resume then goes on from there).
const RELAYED_BATCH_BYTES: usize = 8 << 10;
/// A circuit that may carry at least this much (a peerlog relay's, 64 MiB by default) is
/// used like a direct connection: whole batches and chunks, several in flight.
const ROOMY_CIRCUIT_BYTES: u64 = 8 << 20;
/// Most peers in one `Peers` frame, and addresses per peer taken from it.
const PEX_PEERS: usize = 32;
const PEX_ADDRS: usize = 8;
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
    Store(#[from] crate::log::store::StoreError),
    /// The peer does not speak the replication protocol (another libp2p application).
    #[error("the peer does not speak {PROTOCOL}")]
    NotPeerlog,
}

/// Peers remembered as not speaking the replication protocol (bounded), and for how long
/// (a peerlog daemon that was still starting could have answered so).
const NOT_PEERLOG_MAX: usize = 1024;
const NOT_PEERLOG_FOR: Duration = Duration::from_secs(600);

struct Slot {
    id: SessionId,
    outbound: bool,
    established: bool,
    cancel: CancellationToken,
    /// The peer's feed key in the room, once its `Writer` proof verified.
    writer: Option<Key32>,
}

struct Inner {
    local: PeerId,
    store: Store,
    chunks: Chunks,
    rooms: Arc<Rooms>,
    node: NodeHandle,
    /// Consecutive failed attempts per (peer, room), for redial backoff.
    redials: Mutex<HashMap<(PeerId, Key32), u32>>,
    /// Peers that answered "protocol not supported", and when: not room peers (other
    /// libp2p applications on the LAN or DHT), not asked again for [`NOT_PEERLOG_FOR`].
    not_peerlog: Mutex<HashMap<PeerId, std::time::Instant>>,
    limits: Limits,
    /// What each peer may still send us at full speed (see [`Inner::charge`]).
    budgets: Mutex<HashMap<PeerId, Budget>>,
    slots: Mutex<HashMap<(PeerId, Key32), Slot>>,
    next_id: AtomicU64,
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Inbound handshakes in progress per peer (see [`MAX_HANDSHAKES_PER_PEER`]).
    handshaking: Mutex<HashMap<PeerId, usize>>,
    tasks: Tasks,
    cancel: CancellationToken,
}

/// A token bucket: bytes of entries a peer may send at full speed.
struct Budget {
    bytes: f64,
    at: std::time::Instant,
}

impl Inner {
    /// Charges `bytes` of entries received from `peer` to its budget (shared by its
    /// sessions in every room; refilled at `limits.peer_bytes_per_s` up to
    /// `limits.peer_burst_bytes`). Returns how long to read nothing more from it.
    fn charge(&self, peer: PeerId, bytes: u64) -> Duration {
        let (rate, burst) = (self.limits.peer_bytes_per_s as f64, self.limits.peer_burst_bytes as f64);
        if rate <= 0.0 {
            return Duration::ZERO;
        }
        let now = std::time::Instant::now();
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        if budgets.len() > self.limits.sessions {
            // Peers whose budget is full again need no entry.
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
    pub room: Key32,
    /// The peer's feed key in the room (its writer), once proven.
    pub writer: Option<Key32>,
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
                budgets: Mutex::new(HashMap::new()),
                slots: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
                handshaking: Mutex::new(HashMap::new()),
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
        let mut incoming = self.control().accept(StreamProtocol::new(PROTOCOL))?;
        let this = self.clone();
        self.inner.tasks.spawn("replication acceptor", async move {
            loop {
                let next = tokio::select! {
                    _ = this.inner.cancel.cancelled() => break,
                    next = incoming.next() => next,
                };
                let Some((peer, stream)) = next else { break };
                let Some(permit) = HandshakeSlot::take(&this, peer) else {
                    debug!(%peer, "too many pending handshakes; dropping stream");
                    continue;
                };
                let this2 = this.clone();
                this.inner.tasks.spawn(
                    "inbound session",
                    async move {
                        if let Err(e) = this2.run_inbound(peer, stream, permit).await {
                            debug!(error = %e, "inbound session ended");
                        }
                    }
                    .instrument(tracing::debug_span!("session", %peer, dir = "in")),
                );
            }
        });
        Ok(())
    }

    /// Opens a session with `peer` for `room` unless one exists or is being opened.
    pub fn ensure_session(&self, peer: PeerId, room: Key32) {
        if peer == self.inner.local {
            return;
        }
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
        let Some((id, cancel)) = self.claim(peer, room, true) else { return };
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

    /// Redials a room peer whose session dropped, with exponential backoff, unless the
    /// session ended for a reason a retry would not fix.
    fn after_session(&self, peer: PeerId, room: Key32, established: bool, result: &Result<(), SessionError>) {
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

    /// The proven writer of `peer` in `room`.
    fn writer_of(&self, peer: PeerId, room: Key32) -> Option<Key32> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner()).get(&(peer, room)).and_then(|s| s.writer)
    }

    /// Peers with an authenticated session, optionally only in one room.
    pub fn room_peers(&self, room: Option<&Key32>) -> Vec<RoomPeer> {
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
    fn end_sessions(&self, peer: PeerId, established_only: bool) -> Vec<Key32> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let keys: Vec<(PeerId, Key32)> = slots
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
    pub fn close_room(&self, room: &Key32) {
        let slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        for ((_, r), s) in slots.iter() {
            if r == room {
                s.cancel.cancel();
            }
        }
    }

    /// Reserves the (peer, room) slot; see the module docs for the duplicate rule.
    fn claim(&self, peer: PeerId, room: Key32, outbound: bool) -> Option<(SessionId, CancellationToken)> {
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
        slots.insert((peer, room), Slot { id, outbound, established: false, cancel: cancel.clone(), writer: None });
        Some((id, cancel))
    }

    fn release(&self, peer: PeerId, room: Key32, id: SessionId) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.get(&(peer, room)).is_some_and(|s| s.id == id) {
            let was_established = slots.remove(&(peer, room)).is_some_and(|s| s.established);
            if was_established {
                let _ = self.inner.rooms.events.send(DaemonEvent::PeerLeft { room, peer });
            }
        }
    }

    fn set_writer(&self, peer: PeerId, room: Key32, id: SessionId, writer: Key32) {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get_mut(&(peer, room)).filter(|s| s.id == id) {
            s.writer = Some(writer);
        }
    }

    fn mark_established(&self, peer: PeerId, room: Key32, id: SessionId) -> bool {
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

    /// Frames a new stream, with the small pre-authentication frame limit (raised by
    /// [`Replicator::authenticated`]).
    fn framed(&self, stream: Stream) -> Framed<tokio_util::compat::Compat<Stream>, LengthDelimitedCodec> {
        let codec = LengthDelimitedCodec::builder().max_frame_length(PRE_AUTH_FRAME_BYTES).new_codec();
        Framed::new(stream.compat(), codec)
    }

    /// The peer proved membership: frames up to the configured limit from now on.
    fn authenticated(&self, io: &mut Io) {
        io.codec_mut().set_max_frame_length(self.inner.limits.frame_bytes);
    }

    async fn run_outbound(
        &self,
        peer: PeerId,
        discovery_key: Key32,
        id: SessionId,
        established: Arc<AtomicBool>,
    ) -> Result<(), SessionError> {
        // Connect first with every address we know (the stream control alone would dial
        // with Kademlia's addresses only).
        tokio::time::timeout(OPEN_TIMEOUT, self.inner.node.connect(peer))
            .await
            .map_err(|_| SessionError::Timeout("connect"))??;
        let stream =
            tokio::time::timeout(OPEN_TIMEOUT, self.control().open_stream(peer, StreamProtocol::new(PROTOCOL)))
                .await
                .map_err(|_| SessionError::Timeout("open"))?
                .map_err(|e| match e {
                    libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => {
                        let mut not = self.inner.not_peerlog.lock().unwrap_or_else(|p| p.into_inner());
                        if not.len() >= NOT_PEERLOG_MAX {
                            not.retain(|_, at| at.elapsed() < NOT_PEERLOG_FOR);
                        }
                        if not.len() < NOT_PEERLOG_MAX {
                            not.insert(peer, std::time::Instant::now());
                        }
                        SessionError::NotPeerlog
                    }
                    e => SessionError::OpenStream(e),
                })?;
        let mut io = self.framed(stream);
        let Some(room) = self.inner.rooms.get(&discovery_key) else { return Ok(()) };
        let nonce: Key32 = rand::random();
        let handshake = async {
            let room_tag = crate::keys::room_tag(&discovery_key, &nonce, &self.inner.local, &peer);
            send(&mut io, &Frame::Hello { room_tag, nonce }).await?;
            let (their_tag, their_nonce) = match recv(&mut io).await? {
                Frame::Hello { room_tag, nonce } => (room_tag, nonce),
                Frame::Refuse { reason } => return Err(SessionError::Refused(reason)),
                _ => return Err(SessionError::Protocol("expected Hello")),
            };
            if !verify_auth_mac(
                &crate::keys::room_tag(&discovery_key, &their_nonce, &peer, &self.inner.local),
                &their_tag,
            ) {
                return Err(SessionError::Protocol("Hello for another room"));
            }
            self.authenticate(&mut io, &room, peer, &nonce, &their_nonce).await
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| SessionError::Timeout("handshake"))??;
        self.authenticated(&mut io);
        if !self.mark_established(peer, discovery_key, id) {
            return Ok(());
        }
        established.store(true, Ordering::Relaxed);
        self.run_established(io, room, peer, id).await
    }

    async fn run_inbound(&self, peer: PeerId, stream: Stream, permit: HandshakeSlot) -> Result<(), SessionError> {
        let mut io = self.framed(stream);
        let (their_tag, their_nonce) = match tokio::time::timeout(HELLO_TIMEOUT, recv(&mut io)).await {
            Err(_) => return Err(SessionError::Timeout("Hello")),
            Ok(Ok(Frame::Hello { room_tag, nonce })) => (room_tag, nonce),
            Ok(Ok(_)) => return Err(SessionError::Protocol("expected Hello")),
            Ok(Err(e)) => return Err(e),
        };
        // Which of our rooms the tag names, if any (one HMAC per joined room).
        let found = self.inner.rooms.list().into_iter().find(|r| {
            let expected = crate::keys::room_tag(&r.discovery_key, &their_nonce, &peer, &self.inner.local);
            verify_auth_mac(&expected, &their_tag)
        });
        let Some(room) = found else {
            refuse(&mut io, Refusal::UnknownRoom).await;
            return Ok(());
        };
        let discovery_key = room.discovery_key;
        let Some((id, cancel)) = self.claim(peer, discovery_key, false) else {
            refuse(&mut io, Refusal::Duplicate).await;
            return Ok(());
        };
        let established = AtomicBool::new(false);
        let result = tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            r = async {
                let nonce: Key32 = rand::random();
                let handshake = async {
                    let room_tag = crate::keys::room_tag(&discovery_key, &nonce, &self.inner.local, &peer);
                    send(&mut io, &Frame::Hello { room_tag, nonce }).await?;
                    self.authenticate(&mut io, &room, peer, &their_nonce, &nonce).await
                };
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| SessionError::Timeout("handshake"))??;
                drop(permit);
                self.authenticated(&mut io);
                if !self.mark_established(peer, discovery_key, id) {
                    return Ok(());
                }
                established.store(true, Ordering::Relaxed);
                self.run_established(io, room, peer, id).await
            } => r,
        };
        self.release(peer, discovery_key, id);
        if !cancel.is_cancelled() {
            self.after_session(peer, discovery_key, established.load(Ordering::Relaxed), &result);
        }
        result
    }

    /// Exchanges membership proofs; the nonces are given in initiator, responder order.
    async fn authenticate(
        &self,
        io: &mut Framed<tokio_util::compat::Compat<Stream>, LengthDelimitedCodec>,
        room: &Room,
        peer: PeerId,
        initiator_nonce: &Key32,
        responder_nonce: &Key32,
    ) -> Result<(), SessionError> {
        let key = &room.keys.auth_key;
        let mine = auth_mac(key, initiator_nonce, responder_nonce, &self.inner.local, &peer);
        send(io, &Frame::Auth { mac: mine }).await?;
        let theirs = match recv(io).await? {
            Frame::Auth { mac } => mac,
            Frame::Refuse { reason } => return Err(SessionError::Refused(reason)),
            _ => return Err(SessionError::Protocol("expected Auth")),
        };
        let expected = auth_mac(key, initiator_nonce, responder_nonce, &peer, &self.inner.local);
        if !verify_auth_mac(&expected, &theirs) {
            warn!(%peer, room = %room.id, "peer failed the membership proof (wrong passphrase?)");
            refuse(io, Refusal::BadAuth).await;
            return Err(SessionError::Refused(Refusal::BadAuth));
        }
        Ok(())
    }

    async fn run_established(
        &self,
        io: Framed<tokio_util::compat::Compat<Stream>, LengthDelimitedCodec>,
        room: Arc<Room>,
        peer: PeerId,
        id: SessionId,
    ) -> Result<(), SessionError> {
        let connection = self.inner.node.connection(peer).await;
        let kind = connection.as_ref().map(|c| c.connection);
        let circuit_bytes = connection.as_ref().and_then(|c| c.circuit_bytes);
        // Relayed: the relay's address says how far away the peer is.
        let pex_reach = connection
            .as_ref()
            .and_then(|c| {
                c.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()).map(|a| crate::node::reach(&a)).max()
            })
            .unwrap_or(crate::node::Reach::Public);
        info!(%peer, room = %room.id, ?kind, "room peer connected");
        let _ = self.inner.rooms.events.send(DaemonEvent::PeerJoined { room: room.discovery_key, peer, kind });
        let (mut sink, mut source) = io.split();
        let (in_tx, in_rx) = mpsc::channel::<Result<Frame, SessionError>>(INBOUND_FRAMES);
        let (out_tx, mut out_rx) = mpsc::channel::<Frame>(OUTBOUND_FRAMES);
        let reader = self.inner.tasks.spawn("session reader", async move {
            while let Some(item) = source.next().await {
                let frame = item
                    .map_err(SessionError::from)
                    .and_then(|b| Frame::decode(&b).map_err(|_| SessionError::Protocol("undecodable frame")));
                let stop = frame.is_err();
                if in_tx.send(frame).await.is_err() || stop {
                    break;
                }
            }
        });
        let writer = self.inner.tasks.spawn("session writer", async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(Bytes::from(frame.encode())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let mut session = Session {
            replicator: self.clone(),
            room,
            peer,
            id,
            anchors: HashMap::new(),
            peer_len: HashMap::new(),
            wanting: Default::default(),
            lacks: HashMap::new(),
            serving: VecDeque::new(),
            chunks_serving: VecDeque::new(),
            chunk_cache: None,
            chunk_turn: false,
            outbox: VecDeque::new(),
            got_have: false,
            got_peers: false,
            pex_reach,
            pex: Vec::new(),
            batch_bytes: BATCH_BYTES,
            paused_until: None,
        };
        if kind == Some(crate::node::ConnectionKind::Relayed) && circuit_bytes.is_none_or(|b| b < ROOMY_CIRCUIT_BYTES) {
            // A relay with small circuits (a public one): small frames, one chunk at a time.
            session.batch_bytes = RELAYED_BATCH_BYTES;
        }
        debug!(%peer, ?kind, ?circuit_bytes, batch_bytes = session.batch_bytes, "session framing");
        session.outbox.push_back(self.peers_frame(&session.room.discovery_key, peer).await);
        let signature = session.room.writer_proof(&self.inner.local);
        session.outbox.push_front(Frame::Writer { feed_key: session.room.feed_key, signature });
        // Also when this future is dropped (the session was cancelled): what it was
        // fetching must go to other sessions, or it would never be fetched.
        let _returned = ReturnFetches(session.room.clone(), id);
        let result = session.run(in_rx, out_tx).await;
        // Free the slot before the stream closes, so that the peer's next session (it
        // sees the close first) is not refused as a duplicate.
        self.release(peer, session.room.discovery_key, id);
        reader.abort();
        // The writer drains what was queued, then closes the stream; a peer that does not
        // read gets 2 s, then the stream is dropped (the writer would wait on it forever).
        let mut writer = writer;
        if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
            writer.abort();
        }
        info!(%peer, room = %session.room.id, reason = ?result.as_ref().err(), "room peer disconnected");
        result
    }
}

impl Replicator {
    /// The room's other peers with their addresses, for peer exchange.
    async fn peers_frame(&self, room: &Key32, to: PeerId) -> Frame {
        let others: Vec<PeerId> =
            self.room_peers(Some(room)).into_iter().map(|p| p.peer).filter(|p| *p != to).take(PEX_PEERS).collect();
        let known = self.inner.node.addresses(others).await.unwrap_or_default();
        let peers = known
            .into_iter()
            .filter(|(_, addrs)| !addrs.is_empty())
            .map(|(peer, addrs)| PeerAddrs {
                peer_id: peer.to_bytes(),
                addrs: addrs.into_iter().take(PEX_ADDRS).map(|a| serde_bytes::ByteBuf::from(a.to_vec())).collect(),
            })
            .collect();
        Frame::Peers { peers }
    }

    /// Learns peers from a `Peers` frame and opens sessions with them.
    fn learn_peers(&self, room: Key32, peers: Vec<(PeerId, Vec<Multiaddr>)>) {
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
}

type Io = Framed<tokio_util::compat::Compat<Stream>, LengthDelimitedCodec>;

/// Sends a refusal and closes our side of the stream (FIN). Dropping the stream instead
/// resets it, and a peer may then lose the refusal (js-libp2p drops data on a reset).
async fn refuse(io: &mut Io, reason: Refusal) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if send(io, &Frame::Refuse { reason }).await.is_ok() {
            let _ = SinkExt::<Bytes>::close(io).await;
        }
    })
    .await;
}

async fn send(io: &mut Io, frame: &Frame) -> Result<(), SessionError> {
    io.send(Bytes::from(frame.encode())).await?;
    Ok(())
}

async fn recv(io: &mut Io) -> Result<Frame, SessionError> {
    match io.next().await {
        Some(Ok(bytes)) => Frame::decode(&bytes).map_err(|_| SessionError::Protocol("undecodable frame")),
        Some(Err(e)) => Err(e.into()),
        None => Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

/// An inbound handshake's place: one of [`MAX_HANDSHAKES`], and one of its peer's
/// [`MAX_HANDSHAKES_PER_PEER`]; given back on drop.
struct HandshakeSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    replicator: Replicator,
    peer: PeerId,
}

impl HandshakeSlot {
    fn take(r: &Replicator, peer: PeerId) -> Option<Self> {
        let mut per_peer = r.inner.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_peer.entry(peer).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        let permit = r.inner.handshakes.clone().try_acquire_owned().ok()?;
        *n += 1;
        Some(Self { _permit: permit, replicator: r.clone(), peer })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut per_peer = self.replicator.inner.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// Hands a session's log pieces and chunk requests back to the room when it ends.
struct ReturnFetches(Arc<Room>, SessionId);

impl Drop for ReturnFetches {
    fn drop(&mut self) {
        self.0.release_fetches(self.1);
        self.0.chunk_session_ended(self.1);
    }
}

/// One batch we still owe the peer: entries `start..end`, served from the top down.
struct Serving {
    feed: Key32,
    start: u64,
    end: u64,
}

/// State of an authenticated session.
struct Session {
    replicator: Replicator,
    room: Arc<Room>,
    peer: PeerId,
    id: SessionId,
    /// Verified heads the peer announced, by feed and seq: anchors for its batches.
    anchors: HashMap<Key32, BTreeMap<u64, SignedHead>>,
    /// How many entries of each feed the peer has (or has been sent).
    peer_len: HashMap<Key32, u64>,
    /// Feeds the peer has more of than we hold: where [`Session::schedule`] looks.
    wanting: std::collections::HashSet<Key32>,
    /// Per feed, the seq below which the peer said it holds nothing (`NoData`).
    lacks: HashMap<Key32, u64>,
    /// Wants of the peer not yet fully served.
    serving: VecDeque<Serving>,
    /// Chunks the peer asked for, not yet sent.
    chunks_serving: VecDeque<(Key32, u32)>,
    /// The chunk being sent in parts (over a relay), kept between its frames.
    chunk_cache: Option<(Key32, Vec<u8>)>,
    /// Whether the next frame sent is a chunk rather than log data (they alternate).
    chunk_turn: bool,
    /// Control frames waiting for the writer.
    outbox: VecDeque<Frame>,
    /// Whether the peer's first `Have` arrived.
    got_have: bool,
    /// Whether the peer's `Peers` frame arrived (one per session).
    got_peers: bool,
    /// The most local addresses we take from the peer's `Peers` frame: as local as our
    /// connection to it (a peer we reach over the internet cannot point us at our own LAN
    /// or loopback: a connect reflector).
    pex_reach: crate::node::Reach,
    /// Peers learned by peer exchange, not yet handed to the replicator.
    pex: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Largest `Data` frame to send on this session (small over relayed connections).
    batch_bytes: usize,
    /// Read nothing more from the peer until then: it sent entries faster than
    /// `limits.peer_bytes_per_s` allows (see [`Inner::charge`]).
    paused_until: Option<tokio::time::Instant>,
}

impl Session {
    fn store(&self) -> &Store {
        &self.replicator.inner.store
    }

    async fn run(
        &mut self,
        mut inbound: mpsc::Receiver<Result<Frame, SessionError>>,
        out: mpsc::Sender<Frame>,
    ) -> Result<(), SessionError> {
        let mut updates = self.room.subscribe();
        let mut released = self.room.subscribe_released();
        let mut chunk_events = self.room.subscribe_chunks();
        self.schedule_chunks();
        let heads = self.room.heads()?;
        self.outbox.push_back(self.have(heads));
        let room_cancel = self.room.cancel.clone();
        loop {
            let busy = !self.outbox.is_empty() || !self.serving.is_empty() || !self.chunks_serving.is_empty();
            tokio::select! {
                biased;
                _ = room_cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(self.paused_until.unwrap_or_else(tokio::time::Instant::now)), if self.paused_until.is_some() => {
                    self.paused_until = None;
                }
                frame = inbound.recv(), if self.paused_until.is_none() => match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(frame)) => {
                        if let Err(e) = self.handle(frame).and_then(|()| self.check_outbox()) {
                            let _ = out.try_send(Frame::Refuse { reason: Refusal::ProtocolViolation });
                            return Err(e);
                        }
                        if !self.pex.is_empty() {
                            self.replicator.learn_peers(self.room.discovery_key, std::mem::take(&mut self.pex));
                        }
                    }
                },
                feed = released.recv() => match feed {
                    Ok(feed) => {
                        self.rewant(&feed)?;
                        self.schedule();
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.schedule(),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                event = chunk_events.recv() => match event {
                    Ok(ChunkEvent::Wanted | ChunkEvent::Stored { .. }) | Err(broadcast::error::RecvError::Lagged(_)) => self.schedule_chunks(),
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                update = updates.recv() => match update {
                    Ok(update) => {
                        self.on_update(update)?;
                        self.check_outbox()?;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let heads = self.room.heads()?;
                        self.outbox.push_back(self.have(heads));
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                permit = out.reserve(), if busy => {
                    let Ok(permit) = permit else { return Ok(()) };
                    let frame = match self.outbox.pop_front() {
                        Some(f) => f,
                        None => match self.next_served()? {
                            Some(f) => f,
                            None => continue,
                        },
                    };
                    permit.send(frame);
                }
            }
        }
    }

    fn handle(&mut self, frame: Frame) -> Result<(), SessionError> {
        match frame {
            Frame::Have { heads, bytes } => {
                if heads.len() > MAX_HAVE_FEEDS || bytes.len() > heads.len() {
                    return Err(SessionError::Protocol("Have lists too many feeds"));
                }
                for (i, head) in heads.into_iter().enumerate() {
                    self.learn_head(head, bytes.get(i).copied())?;
                }
                self.schedule();
                if !self.got_have {
                    self.got_have = true;
                    // Feeds the peer did not list, it does not have.
                    for (feed, _) in self.store().room_feeds(&self.room.discovery_key)? {
                        self.peer_len.entry(feed).or_insert(0);
                    }
                }
                Ok(())
            }
            Frame::Want { feed_key, start, end } => {
                if start >= end {
                    return Err(SessionError::Protocol("empty Want"));
                }
                if self.serving.len() >= MAX_SERVING {
                    return Err(SessionError::Protocol("too many Wants queued"));
                }
                let blocked = self.store().is_blocked(&self.room.discovery_key, &feed_key)?;
                let meta = self.store().feed_meta(&feed_key)?.filter(|m| m.room == self.room.discovery_key && !blocked);
                let mut end = end.min(meta.as_ref().map_or(0, |m| m.length()));
                if feed_key == self.room.feed_key {
                    // Only what is durable of our own feed leaves this daemon.
                    end = end.min(self.room.own_durable_length());
                }
                if start >= end {
                    self.outbox.push_back(Frame::NoData { feed_key, below: start });
                } else {
                    self.serving.push_back(Serving { feed: feed_key, start, end });
                }
                Ok(())
            }
            Frame::Data { feed_key, start, entries, head } => {
                if entries.is_empty() {
                    return Ok(());
                }
                let bytes = entries.iter().map(|e| e.ciphertext.len() as u64 + 44).sum();
                let pause = self.replicator.inner.charge(self.peer, bytes);
                if !pause.is_zero() {
                    if self.paused_until.is_none() {
                        debug!(peer = %self.peer, room = %self.room.id, pause_ms = pause.as_millis() as u64, "peer sends entries faster than limits.peer_bytes_per_s; pausing reads");
                    }
                    self.paused_until = Some(tokio::time::Instant::now() + pause);
                }
                let top = start.checked_add(entries.len() as u64 - 1).ok_or(SessionError::Protocol("seq overflow"))?;
                if let Some(head) = head {
                    if head.feed_key != feed_key || head.seq != top {
                        return Err(SessionError::Protocol("Data head does not match its entries"));
                    }
                    self.learn_head(head, None)?;
                }
                let anchor = self.anchors.get(&feed_key).and_then(|a| a.get(&top)).cloned();
                match self.room.receive(&feed_key, start, entries, anchor.as_ref(), self.id) {
                    Ok(got) => {
                        if let Some(got) = got {
                            debug!(feed = %hex::encode(&feed_key[..4]), start, stored = got.stored, "stored entries");
                        }
                        let len = self.peer_len.entry(feed_key).or_insert(0);
                        *len = (*len).max(top + 1);
                    }
                    Err(IngestError::Store(e)) => return Err(e.into()),
                    // Not verifiable (yet): nothing stored, nothing wrong with the peer.
                    Err(IngestError::NotAnchored) => {}
                    // Blocked here, or over a quota: not the peer's fault, and nobody else's
                    // copy is wanted either.
                    Err(IngestError::Blocked | IngestError::Quota(_)) => {
                        self.wanting.remove(&feed_key);
                        self.room.fetch_failed(self.id, &feed_key, false);
                    }
                    Err(e) => {
                        // Another peer may have a verifiable copy of this feed.
                        self.room.fetch_failed(self.id, &feed_key, true);
                        warn!(peer = %self.peer, room = %self.room.id, feed = %hex::encode(&feed_key[..8]), start, error = %e, "rejected entries from peer; nothing stored")
                    }
                }
                self.schedule();
                Ok(())
            }
            Frame::NoData { feed_key, below } => {
                debug!(feed = %hex::encode(&feed_key[..4]), below, "peer lacks entries");
                let lacks = self.lacks.entry(feed_key).or_insert(0);
                *lacks = (*lacks).max(below);
                // Another peer may have them.
                self.room.fetch_failed(self.id, &feed_key, false);
                self.schedule();
                Ok(())
            }
            Frame::Peers { peers } => {
                if peers.len() > PEX_PEERS {
                    return Err(SessionError::Protocol("Peers lists too many peers"));
                }
                if std::mem::replace(&mut self.got_peers, true) {
                    return Err(SessionError::Protocol("a second Peers frame"));
                }
                for p in peers {
                    let Ok(peer) = PeerId::from_bytes(&p.peer_id) else { continue };
                    let addrs: Vec<Multiaddr> = p
                        .addrs
                        .into_iter()
                        .take(PEX_ADDRS)
                        .filter_map(|a| Multiaddr::try_from(a.into_vec()).ok())
                        .filter(|a| {
                            let r = crate::node::reach(a);
                            r != crate::node::Reach::Nowhere && r <= self.pex_reach
                        })
                        .collect();
                    if peer != self.peer {
                        self.pex.push((peer, addrs));
                    }
                }
                Ok(())
            }
            Frame::WantChunk { id, offset } => {
                if self.chunks_serving.len() >= MAX_CHUNKS_SERVING {
                    return Err(SessionError::Protocol("too many WantChunks queued"));
                }
                // Only chunks a file of this room names, to members of this room.
                if self.store().room_has_chunk(&self.room.discovery_key, &id)? && self.replicator.inner.chunks.has(&id)
                {
                    self.chunks_serving.push_back((id, offset));
                } else {
                    self.outbox.push_back(Frame::NoChunk { id });
                }
                Ok(())
            }
            Frame::Chunk { id, offset, total, bytes } => {
                if !self.room.chunk_asked(self.id, &id) {
                    // Not asked of this peer (any more): another peer sent it already.
                    return Ok(());
                }
                if total as usize > CHUNK_BYTES + TAG_BYTES {
                    warn!(peer = %self.peer, room = %self.room.id, total, "peer announced an oversized chunk; refused");
                    self.room.chunk_lacking(self.id, &id);
                    return Ok(());
                }
                let Some(bytes) = self.room.chunk_part(&id, offset, total, &bytes) else {
                    return Ok(()); // more parts to come
                };
                if chunk_id(&bytes) != id {
                    warn!(peer = %self.peer, room = %self.room.id, chunk = %hex::encode(&id[..8]), len = bytes.len(), "peer sent a chunk that does not match its id; not stored");
                    self.room.drop_chunk_part(&id);
                    self.room.chunk_lacking(self.id, &id);
                    return Ok(());
                }
                if let Err(e) = self.replicator.inner.chunks.write(&id, &bytes) {
                    warn!(error = %e, "cannot store a chunk");
                    self.room.chunk_lacking(self.id, &id);
                    return Ok(());
                }
                self.room.chunk_stored(&id, bytes.len() as u64);
                self.schedule_chunks();
                Ok(())
            }
            Frame::NoChunk { id } => {
                self.room.chunk_lacking(self.id, &id);
                Ok(())
            }
            Frame::Writer { feed_key, signature } => {
                let bytes = peerlog_proto::wire::writer_proof_bytes(&self.room.discovery_key, &self.peer.to_bytes());
                let valid = ed25519_dalek::VerifyingKey::from_bytes(&feed_key).ok().is_some_and(|key| {
                    <[u8; 64]>::try_from(signature.as_slice())
                        .is_ok_and(|sig| key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok())
                });
                if !valid {
                    return Err(SessionError::Protocol("bad writer proof"));
                }
                if self.store().is_blocked(&self.room.discovery_key, &feed_key)? {
                    info!(peer = %self.peer, room = %self.room.id, "the peer writes as a writer blocked here: session closed");
                    return Err(SessionError::Protocol("the peer's writer is blocked here"));
                }
                self.replicator.set_writer(self.peer, self.room.discovery_key, self.id, feed_key);
                Ok(())
            }
            Frame::Refuse { reason } => Err(SessionError::Refused(reason)),
            Frame::Hello { .. } | Frame::Auth { .. } => Err(SessionError::Protocol("handshake frame after handshake")),
        }
    }

    /// Ends the session when the peer lets more than [`MAX_OUTBOX`] frames pile up.
    fn check_outbox(&self) -> Result<(), SessionError> {
        if self.outbox.len() > MAX_OUTBOX {
            return Err(SessionError::Protocol("the peer does not read what it asks for"));
        }
        Ok(())
    }

    /// Records a head the peer has (verifying it) and asks for what we miss.
    fn learn_head(&mut self, head: SignedHead, bytes: Option<u64>) -> Result<(), SessionError> {
        let feed = head.feed_key;
        if !self.peer_len.contains_key(&feed) && self.peer_len.len() >= MAX_SESSION_FEEDS {
            return Err(SessionError::Protocol("the peer announced too many feeds"));
        }
        if feed != self.room.feed_key && self.room.refuses(&feed) {
            return Ok(());
        }
        if let Some(known) = self.anchors.get(&feed).and_then(|a| a.get(&head.seq)) {
            if *known == head {
                return Ok(());
            }
            // Another validly signed head for a seq we have a head for: the writer forked.
            if !verify_head(&self.room.discovery_key, &head) {
                return Err(SessionError::Protocol("bad head signature"));
            }
            if known.hash != head.hash {
                warn!(peer = %self.peer, room = %self.room.id, feed = %hex::encode(&feed[..8]), seq = head.seq, "writer signed two heads for one seq");
                self.replicator.inner.store.record_fork(&feed, known, &head)?;
            }
            return Ok(());
        }
        // Our own newest head coming back (a peer stored what we pushed) is the common case
        // on a live room: equal to what we signed, it needs no signature check.
        let ours = feed == self.room.feed_key
            && self.store().feed_meta(&feed)?.and_then(|m| m.head).is_some_and(|h| h == head);
        if !ours && !verify_head(&self.room.discovery_key, &head) {
            return Err(SessionError::Protocol("bad head signature"));
        }
        // The head we store may still be a format-2 one: this is it, signed for the room.
        if self.store().has_legacy_head(&feed) && self.store().upgrade_head(&feed, &head)? {
            debug!(feed = %hex::encode(&feed[..8]), seq = head.seq, "stored head replaced by the same head bound to the room");
        }
        let len = self.peer_len.entry(feed).or_insert(0);
        *len = (*len).max(head.length());
        let meta = self.store().feed_meta(&feed)?.unwrap_or_default();
        if feed == self.room.feed_key {
            // The peer holds our entries up to here: they were seen. If it holds more than
            // we do (see `Room::saw_own_head`), or entries we lost (damaged blocks
            // forgotten), we fetch them back like any feed's.
            self.room.saw_own_length(head.length());
            if !self.room.saw_own_head(head.length()) && meta.missing(head.length()).is_empty() {
                return Ok(());
            }
        }
        self.room.saw_length(&feed, head.length(), bytes);
        let target = head.length();
        let anchors = self.anchors.entry(feed).or_default();
        anchors.insert(head.seq, head);
        if anchors.len() > ANCHORS_PER_FEED {
            // Heads of entries we hold anchor nothing any more. The others are the tops of
            // ranges still requested: dropping one would make its batch unverifiable.
            anchors.retain(|seq, _| !meta.has(*seq));
            while anchors.len() > MAX_ANCHORS_PER_FEED {
                anchors.pop_first();
            }
        }
        if !meta.missing(target).is_empty() {
            self.wanting.insert(feed);
        }
        Ok(())
    }

    /// Wants `feed` again if the peer has entries of it that we lack (after damaged blocks
    /// were forgotten, say).
    fn rewant(&mut self, feed: &Key32) -> Result<(), SessionError> {
        let Some(&theirs) = self.peer_len.get(feed) else { return Ok(()) };
        if self.wanting.contains(feed) || self.room.refuses(feed) {
            return Ok(());
        }
        let meta = self.store().feed_meta(feed)?.unwrap_or_default();
        if !meta.missing(theirs).is_empty() {
            self.wanting.insert(*feed);
        }
        Ok(())
    }

    /// Claims pieces of what the peer has and we lack (see [`crate::fetch`]) up to
    /// [`PIECES_PER_SESSION`] at a time, and asks for them.
    fn schedule(&mut self) {
        while self.room.pieces_awaited(self.id) < PIECES_PER_SESSION && !self.wanting.is_empty() {
            let candidates: Vec<Candidate> = self
                .wanting
                .iter()
                .map(|feed| Candidate {
                    feed: *feed,
                    target: self.peer_len.get(feed).copied().unwrap_or(0),
                    lacks_below: self.lacks.get(feed).copied().unwrap_or(0),
                })
                .collect();
            let Some((feed_key, start, end)) = self.room.claim_piece(self.id, &candidates) else {
                // Forget the feeds we now hold in full.
                self.wanting.retain(|feed| {
                    let target = self.peer_len.get(feed).copied().unwrap_or(0);
                    let meta = self.replicator.inner.store.feed_meta(feed).ok().flatten().unwrap_or_default();
                    !meta.missing(target).is_empty()
                });
                return;
            };
            self.outbox.push_back(Frame::Want { feed_key, start, end });
        }
    }

    /// A `Have` of `heads`, with the bytes we store of each feed.
    fn have(&self, heads: Vec<SignedHead>) -> Frame {
        let bytes = heads.iter().map(|h| self.store().feed_bytes(&h.feed_key).unwrap_or(0)).collect();
        Frame::Have { heads, bytes }
    }

    /// Asks the peer for wanted chunks, up to [`CHUNKS_PER_SESSION`] at a time.
    fn schedule_chunks(&mut self) {
        // Over a relay one chunk at a time, in parts: a relayed circuit carries little
        // (128 KiB by default) before it is closed, and the next one goes on from there.
        let in_flight = if self.relayed() { 1 } else { CHUNKS_PER_SESSION };
        while let Some(id) = self.room.next_chunk_for(self.id, in_flight) {
            let offset = self.room.chunk_part_len(&id);
            self.outbox.push_back(Frame::WantChunk { id, offset });
        }
    }

    fn relayed(&self) -> bool {
        self.batch_bytes == RELAYED_BATCH_BYTES
    }

    /// The next frame of what the peer asked for: chunks and log data take turns.
    fn next_served(&mut self) -> Result<Option<Frame>, SessionError> {
        self.chunk_turn = !self.chunk_turn;
        if self.chunk_turn || self.serving.is_empty() {
            if let Some((id, offset)) = self.chunks_serving.front().copied() {
                if self.chunk_cache.as_ref().is_none_or(|(cached, _)| *cached != id) {
                    self.chunk_cache = self.replicator.inner.chunks.read(&id)?.map(|bytes| (id, bytes));
                }
                let Some((_, bytes)) = self.chunk_cache.as_ref() else {
                    self.chunks_serving.pop_front();
                    return Ok(Some(Frame::NoChunk { id }));
                };
                let start = (offset as usize).min(bytes.len());
                let end = if self.relayed() { (start + self.batch_bytes).min(bytes.len()) } else { bytes.len() };
                let frame = Frame::Chunk {
                    id,
                    offset: start as u32,
                    total: bytes.len() as u32,
                    bytes: bytes[start..end].to_vec(),
                };
                if end >= bytes.len() {
                    self.chunks_serving.pop_front();
                    self.chunk_cache = None;
                } else if let Some(front) = self.chunks_serving.front_mut() {
                    front.1 = end as u32;
                }
                return Ok(Some(frame));
            }
        }
        self.next_batch()
    }

    /// A head advanced locally: push the new entries, or announce the head.
    fn on_update(&mut self, update: HeadUpdate) -> Result<(), SessionError> {
        if update.origin == Some(self.id) {
            // The peer sent these entries. If they are its own, tell it we hold them now
            // (that is how a writer learns its message was seen); others it need not hear.
            if self.replicator.writer_of(self.peer, self.room.discovery_key) == Some(update.head.feed_key) {
                self.outbox.push_back(self.have(vec![update.head]));
            }
            return Ok(());
        }
        let head = update.head;
        if !self.got_have {
            // We do not know yet what the peer holds: announce, it will ask.
            self.outbox.push_back(self.have(vec![head]));
            return Ok(());
        }
        let feed = head.feed_key;
        let have = self.peer_len.get(&feed).copied().unwrap_or(0);
        let target = head.length();
        if target <= have {
            return Ok(());
        }
        if target - have <= PUSH_MAX && self.outbox.len() < PUSH_OUTBOX {
            let entries = self.store().entries(&feed, have, target)?;
            let bytes: usize = entries.iter().map(|e| e.ciphertext.len() + 64).sum();
            if entries.len() as u64 == target - have && bytes <= self.batch_bytes {
                self.peer_len.insert(feed, target);
                self.room.served.fetch_add(entries.len() as u64, Ordering::Relaxed);
                self.outbox.push_back(Frame::Data { feed_key: feed, start: have, entries, head: Some(head) });
                return Ok(());
            }
        }
        self.outbox.push_back(self.have(vec![head]));
        Ok(())
    }

    /// The next `Data` (newest entries of the oldest pending Want first) or `NoData`.
    fn next_batch(&mut self) -> Result<Option<Frame>, SessionError> {
        let Some(job) = self.serving.front_mut() else { return Ok(None) };
        let feed = job.feed;
        let meta = self.replicator.inner.store.feed_meta(&feed)?.unwrap_or_default();
        let top = job.end - 1;
        let Some(run_start) = meta.run_start(top) else {
            let below = job.end;
            self.serving.pop_front();
            return Ok(Some(Frame::NoData { feed_key: feed, below }));
        };
        let max_entries = self.replicator.inner.limits.batch_entries.max(1) as u64;
        let lo = job.start.max(run_start).max(job.end.saturating_sub(max_entries));
        let mut entries = match self.replicator.inner.store.entries(&feed, lo, job.end) {
            Ok(entries) => entries,
            // A damaged block (its checksum caught it): say we lack it; the session goes on
            // (it used to end every session that asked for it).
            Err(crate::log::store::StoreError::Corrupt(what)) => {
                warn!(peer = %self.peer, feed = %hex::encode(&feed[..8]), start = lo, what, "a stored block is damaged; not served");
                // Forget it, and have the room's sessions fetch it again from whoever holds it.
                if !self.replicator.inner.store.forget_damaged(&feed)?.is_empty() {
                    self.room.refetch(&feed);
                }
                let below = job.end;
                self.serving.pop_front();
                return Ok(Some(Frame::NoData { feed_key: feed, below }));
            }
            Err(e) => return Err(e.into()),
        };
        // Keep the frame well under the limit: drop the oldest entries past the budget.
        let budget = self.batch_bytes.min(self.replicator.inner.limits.frame_bytes / 2);
        let mut bytes = 0;
        let mut keep_from = entries.len();
        while keep_from > 0 {
            let size = entries[keep_from - 1].ciphertext.len() + 64;
            if bytes + size > budget && keep_from < entries.len() {
                break;
            }
            bytes += size;
            keep_from -= 1;
        }
        entries.drain(..keep_from);
        let start = job.end - entries.len() as u64;
        // A format-2 head would not verify at the peer (see `Store::has_legacy_head`).
        let head = meta.head.filter(|h| h.seq == top && !self.replicator.inner.store.has_legacy_head(&feed));
        job.end = start;
        if job.end <= job.start || entries.is_empty() {
            self.serving.pop_front();
        }
        if entries.is_empty() {
            return Ok(Some(Frame::NoData { feed_key: feed, below: top + 1 }));
        }
        self.room.served.fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(Some(Frame::Data { feed_key: feed, start, entries, head }))
    }
}
