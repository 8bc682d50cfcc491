//! The replication rules of one room, without I/O: [`RoomState`] takes [`Input`]s (a
//! session came up or went down, a frame arrived, we appended, an ingest finished) and
//! produces [`Output`]s (ingest these entries, store a chunk, close a session, tell API
//! clients) and, per session, the next frame to send ([`RoomState::poll_transmit`], asked
//! only when that session's writer has room: two peers sending bulk data to each other
//! cannot deadlock).
//!
//! No sled, sockets, locks or awaits in here: storage is read through [`Storage`] and
//! written by whoever performs the outputs, and time is a parameter. The daemon drives it
//! from one task per room (`driver.rs`); the tests drive many of them over a simulated
//! network (`sim.rs`). The wire rules are in `docs/PROTOCOL.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use peerlog_proto::wire::{Alive, ChunkId, DiscoveryKey, Entry, FeedKey, Frame, SignedHead};
use tracing::{debug, warn};

use super::pieces::{Candidate, Held, Pieces, PIECES_PER_SESSION};
use super::presence::{AliveError, Presence};
use super::SessionError;
use crate::config::Limits;
use crate::files::{chunk_id, ChunkWants, CHUNKS_PER_SESSION, CHUNK_BYTES, TAG_BYTES};
use crate::ids::SessionId;
use crate::log::store::{Cut, FeedMeta, QuotaKind, StoreError, StoredMessage};
use crate::log::verify_head;
use crate::node::Reach;
use crate::rooms::{ChunkEvent, DaemonEvent};

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
/// Entries a peer sent us are pushed on to at most this many of the sessions that lack
/// them; the others are told the head and ask if they still lack it then. Our own entries go
/// to every session. In a room of many sessions each this bounds the copies a peer receives
/// (PlumTree's eager and lazy links, picked afresh per update rather than kept as a tree).
const EAGER_FANOUT: usize = 4;
/// Most peers in one `Peers` frame, and addresses per peer taken from it.
pub const PEX_PEERS: usize = 32;
pub const PEX_ADDRS: usize = 8;
/// Most chunks partly received at once per room (each at most about 1 MiB).
const MAX_CHUNK_PARTS: usize = 16;
/// Feeds a room keeps catch-up accounting for; past this, new feeds are not counted (writer
/// keys cost nothing to mint: a hostile member must not grow this without bound).
const MAX_PROGRESS_FEEDS: usize = 100_000;
/// Least time between two `sync.progress` events of a room (the last one always goes out).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes an entry costs beyond its ciphertext, counted against batch budgets.
const ENTRY_OVERHEAD: usize = 64;

/// What the rules read from storage. Writes are [`Output`]s.
pub trait Storage {
    /// What we hold of a feed.
    fn feed_meta(&self, feed: &FeedKey) -> Result<Option<FeedMeta>, StoreError>;
    /// Bytes stored of a feed (an estimate is fine: progress only).
    fn feed_bytes(&self, feed: &FeedKey) -> u64;
    /// Entries `start..end` of a feed, as far as stored from `start`.
    fn entries(&self, feed: &FeedKey, start: u64, end: u64) -> Result<Vec<Entry>, StoreError>;
    /// The feeds of a room.
    fn room_feeds(&self, room: &DiscoveryKey) -> Result<Vec<FeedKey>, StoreError>;
    /// The newest stored head of each feed of a room.
    fn room_heads(&self, room: &DiscoveryKey) -> Result<Vec<SignedHead>, StoreError>;
    /// Whether a writer is blocked in a room (or everywhere).
    fn is_blocked(&self, room: &DiscoveryKey, writer: &FeedKey) -> Result<bool, StoreError>;
    /// What the room keeps of `writer`'s feed, if its rotation removed the writer.
    fn cut(&self, room: &DiscoveryKey, writer: &FeedKey) -> Option<Cut>;
    /// Whether the stored head of a feed is a format-2 head (not bound to its room: peers
    /// would not verify it).
    fn has_legacy_head(&self, feed: &FeedKey) -> bool;
    /// Whether a file message of the room names this chunk (only those are served).
    fn room_has_chunk(&self, room: &DiscoveryKey, id: &ChunkId) -> Result<bool, StoreError>;
    /// A stored chunk.
    fn read_chunk(&self, id: &ChunkId) -> std::io::Result<Option<Vec<u8>>>;
    /// Whether a chunk is stored.
    fn has_chunk(&self, id: &ChunkId) -> bool;
}

/// The limits the rules apply (from `[limits]`).
#[derive(Clone, Copy, Debug)]
pub struct RuleLimits {
    /// Most entries in one `Data` frame.
    pub batch_entries: u64,
    /// Largest frame a peer accepts from us (we stay under half of it).
    pub frame_bytes: usize,
}

impl From<&Limits> for RuleLimits {
    fn from(l: &Limits) -> Self {
        Self { batch_entries: l.batch_entries.max(1) as u64, frame_bytes: l.frame_bytes }
    }
}

/// A session that just authenticated.
#[derive(Debug)]
pub struct SessionUp {
    /// The peer.
    pub peer: PeerId,
    /// Largest `Data` frame to send it (small over a relay's limited circuit).
    pub batch_bytes: usize,
    /// Whether it runs over such a circuit: chunks go one at a time, in parts.
    pub small_circuit: bool,
    /// The most local addresses taken from its `Peers` frame: as local as our connection to
    /// it (a peer we reach over the internet cannot point us at our own LAN or loopback).
    pub pex_reach: Reach,
    /// Frames sent before anything else (our writer proof, peer exchange).
    pub greeting: Vec<Frame>,
    /// Whether it speaks version 4 or later: it reads presence records (`Alive`).
    pub presence: bool,
}

/// What happened to entries handed out by [`Output::Ingest`].
#[derive(Debug)]
pub enum Ingest {
    /// Verified; `stored` of them (`bytes` of blocks) were new here.
    Stored {
        /// Entries newly stored.
        stored: u64,
        /// Bytes of the blocks written.
        bytes: u64,
        /// The feed's head, if it advanced.
        new_head: Option<SignedHead>,
        /// The new messages (none for a blind seeder), for API clients.
        messages: Vec<StoredMessage>,
    },
    /// Nothing vouches for the batch yet: nothing stored, nothing wrong with the peer.
    NotAnchored,
    /// The writer is blocked here.
    Blocked,
    /// The writer reached one of the room's quotas.
    Quota(QuotaKind),
    /// The batch failed verification (said why): another peer may have a good copy.
    Invalid(String),
    /// Storage failed.
    Failed(StoreError),
}

/// Something that happened, for the rules.
#[derive(Debug)]
pub enum Input {
    /// A session authenticated.
    SessionUp(SessionId, SessionUp),
    /// A session ended (closed by the peer, the network, or us).
    SessionDown(SessionId),
    /// A frame arrived on a session.
    Frame(SessionId, Frame),
    /// Entries of our own feed are durable up to this head: peers may hear of them.
    Appended(SignedHead),
    /// The result of an [`Output::Ingest`].
    Ingested {
        /// The job it answers.
        job: IngestJob,
        /// What came of it.
        result: Ingest,
    },
    /// The result of an [`Output::StoreChunk`]: whether it is stored.
    ChunkStored {
        /// The session it came from.
        session: SessionId,
        /// Its id.
        id: ChunkId,
        /// Its size; None if it could not be stored.
        stored: Option<u64>,
    },
    /// Downloads want these chunks (one more waiter each).
    WantChunks(Vec<ChunkId>),
    /// A download stopped waiting for these.
    UnwantChunks(Vec<ChunkId>),
    /// Entries of a feed went missing here (damaged blocks forgotten): fetch them again.
    Refetch(FeedKey),
    /// Time passed (every [`super::presence::FLUSH_EVERY`]): presence records go out.
    Tick {
        /// The wall clock, ms since the Unix epoch.
        wall_ms: u64,
        /// Our own new presence record, when one is due.
        own: Option<Alive>,
    },
}

/// Entries to verify and store; answered by [`Input::Ingested`] with the job back.
#[derive(Debug)]
pub struct IngestJob {
    /// The session they came from.
    pub session: SessionId,
    /// The feed.
    pub feed: FeedKey,
    /// Seq of `entries[0]`.
    pub start: u64,
    /// The entries.
    pub entries: Vec<Entry>,
    /// A signed head for the newest entry, if one vouches for it.
    pub anchor: Option<SignedHead>,
    /// Whether they were held until they could be verified (see [`super::pieces`]).
    pub held: bool,
}

impl IngestJob {
    pub(super) fn end(&self) -> u64 {
        self.start + self.entries.len() as u64
    }
}

/// Something for the driver to do.
#[derive(Debug)]
pub enum Output {
    /// End a session (the rules forgot it already).
    Close(SessionId, SessionError),
    /// Verify and store entries, then answer with [`Input::Ingested`] before anything else.
    Ingest(IngestJob),
    /// Store a chunk (its id checked), then answer with [`Input::ChunkStored`].
    StoreChunk {
        /// The session it came from.
        session: SessionId,
        /// Its id.
        id: ChunkId,
        /// Its bytes.
        bytes: Vec<u8>,
    },
    /// Record the proof that a writer signed two heads for one seq.
    RecordFork(SignedHead, SignedHead),
    /// Replace a stored format-2 head by this one, the same head bound to the room.
    UpgradeHead(SignedHead),
    /// A stored block of this feed is damaged: forget it (then [`Input::Refetch`]).
    ForgetDamaged(FeedKey),
    /// The session's peer proved it writes this feed.
    WriterProven(SessionId, FeedKey),
    /// Peers learned by peer exchange: dial them.
    LearnPeers(Vec<(PeerId, Vec<Multiaddr>)>),
    /// A peer holds more of our own feed than we do (a restored data dir): appends wait
    /// until we fetched it back.
    OwnFeedAhead(u64),
    /// For API clients.
    Event(DaemonEvent),
    /// New messages stored, for API clients (one output per batch: there are many).
    Messages(Vec<StoredMessage>),
    /// For downloads.
    Chunk(ChunkEvent),
}

/// One batch we still owe the peer: entries `start..end`, served from the top down.
#[derive(Debug)]
struct Serving {
    feed: FeedKey,
    start: u64,
    end: u64,
}

/// A feed's head advanced: sessions tell (or push to) their peers.
#[derive(Clone, Debug)]
struct HeadUpdate {
    head: SignedHead,
    /// The session the entries came from (it need not hear about them), if any.
    origin: Option<SessionId>,
}

/// One authenticated session.
#[derive(Debug)]
struct Session {
    peer: PeerId,
    /// The peer's feed key in the room, once its `Writer` proof verified.
    writer: Option<FeedKey>,
    /// Verified heads the peer announced, by feed and seq: anchors for its batches.
    anchors: HashMap<FeedKey, BTreeMap<u64, SignedHead>>,
    /// How many entries of each feed the peer has (or has been sent).
    peer_len: HashMap<FeedKey, u64>,
    /// Feeds the peer has more of than we hold: where [`Shared::schedule`] looks.
    wanting: BTreeSet<FeedKey>,
    /// Per feed, the seq below which the peer said it holds nothing (`NoData`).
    lacks: HashMap<FeedKey, u64>,
    /// Wants of the peer not yet fully served.
    serving: VecDeque<Serving>,
    /// Chunks the peer asked for, not yet sent.
    chunks_serving: VecDeque<(ChunkId, u32)>,
    /// The chunk being sent in parts (over a relay), kept between its frames.
    chunk_cache: Option<(ChunkId, Vec<u8>)>,
    /// Whether the next frame sent is a chunk rather than log data (they alternate).
    chunk_turn: bool,
    /// Control frames waiting for the writer.
    outbox: VecDeque<Frame>,
    /// Whether the peer's first `Have` arrived.
    got_have: bool,
    /// Whether the peer's `Peers` frame arrived (one per session).
    got_peers: bool,
    pex_reach: Reach,
    batch_bytes: usize,
    small_circuit: bool,
    /// Whether the peer reads `Alive` frames.
    presence: bool,
}

/// The room-wide part of the state, shared by its sessions.
#[derive(Debug)]
struct Shared {
    discovery_key: DiscoveryKey,
    own_feed: FeedKey,
    limits: RuleLimits,
    /// Which session fetches which piece, and entries held until they can be verified.
    pieces: Pieces,
    /// Chunks wanted from the room's peers.
    chunk_wants: ChunkWants,
    /// Chunks partly received over small circuits: kept across sessions, so a transfer
    /// goes on over the next circuit where the last one closed.
    chunk_parts: BTreeMap<ChunkId, Vec<u8>>,
    progress: Progress,
    /// Writers that reached a quota since start: their entries are not fetched.
    over_quota: BTreeSet<FeedKey>,
    /// Entries of our feed that some peer is known to hold.
    own_seen: u64,
    /// The longest copy of our feed a peer showed us.
    own_ahead: u64,
    /// The newest head of our feed that is durable: the only one peers hear of. A head
    /// pushed before its flush could outlive a crash that lost it here, and the seq would
    /// be signed twice (a fork that makes peers refuse our feed for good).
    own_durable: Option<SignedHead>,
    counters: Counters,
    outputs: VecDeque<Output>,
    /// For every session, after the current input: feeds to look at again…
    released: Vec<FeedKey>,
    /// …whether chunks are wanted or stored…
    chunks_changed: bool,
    /// …and heads that advanced.
    updates: Vec<HeadUpdate>,
    /// Who is online, from the members' signed records.
    presence: Presence,
    /// The wall clock at the last tick, and when that was.
    wall: Option<(u64, Instant)>,
    /// Whether presence records changed since [`RoomState::take_presence`].
    presence_changed: bool,
}

/// Catch-up accounting of a room, per feed.
#[derive(Debug, Default)]
struct Progress {
    feeds: HashMap<FeedKey, FeedProgress>,
    last_emit: Option<Instant>,
}

/// One feed: the longest head and the largest size peers reported, and what is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FeedProgress {
    entries_seen: u64,
    entries_done: u64,
    bytes_seen: u64,
    bytes_done: u64,
}

/// What a room's sessions carried since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Entries received from peers, stored or not (duplicates and refused ones too).
    pub entries_received: u64,
    /// Entries sent to peers.
    pub entries_served: u64,
    /// Frames that arrived on the room's authenticated sessions.
    pub frames_received: u64,
    /// Frames sent on them.
    pub frames_sent: u64,
}

/// The replication state of one room.
#[derive(Debug)]
pub struct RoomState {
    shared: Shared,
    sessions: BTreeMap<SessionId, Session>,
}

type Step = Result<(), SessionError>;

impl RoomState {
    /// The state of room `discovery_key`, where we write `own_feed`.
    pub fn new(
        discovery_key: DiscoveryKey,
        own_feed: FeedKey,
        limits: RuleLimits,
        storage: &dyn Storage,
    ) -> Result<Self, StoreError> {
        let own_durable = storage.feed_meta(&own_feed)?.and_then(|m| m.head);
        Ok(Self {
            shared: Shared {
                discovery_key,
                own_feed,
                limits,
                pieces: Pieces::default(),
                chunk_wants: ChunkWants::default(),
                chunk_parts: BTreeMap::new(),
                progress: Progress::default(),
                over_quota: BTreeSet::new(),
                own_seen: 0,
                own_ahead: 0,
                own_durable,
                counters: Counters::default(),
                outputs: VecDeque::new(),
                released: Vec::new(),
                chunks_changed: false,
                presence: Presence::new(discovery_key, own_feed),
                wall: None,
                presence_changed: false,
                updates: Vec::new(),
            },
            sessions: BTreeMap::new(),
        })
    }

    /// Takes one input. Its outputs wait in [`RoomState::poll_output`].
    pub fn handle(&mut self, input: Input, now: Instant, storage: &dyn Storage) {
        match input {
            Input::SessionUp(id, up) => self.session_up(id, up, now, storage),
            Input::SessionDown(id) => {
                if self.sessions.remove(&id).is_some() {
                    self.shared.session_gone(id);
                }
            }
            Input::Tick { wall_ms, own } => self.tick(wall_ms, own, now),
            Input::Frame(id, frame) => {
                let Some(s) = self.sessions.get_mut(&id) else { return };
                self.shared.counters.frames_received += 1;
                let result = self.shared.on_frame(id, s, frame, now, storage).and_then(|()| s.check_outbox());
                self.end_on_error(id, result);
            }
            Input::Appended(head) => self.shared.appended(head),
            Input::Ingested { job, result } => {
                let result = self.shared.ingested(&mut self.sessions, job, result, now, storage);
                if let Err((id, e)) = result {
                    self.close(id, e);
                }
            }
            Input::ChunkStored { session, id, stored } => self.shared.chunk_stored(session, &id, stored),
            Input::WantChunks(ids) => {
                self.shared.chunk_wants.want(ids);
                self.shared.chunks_changed = true;
            }
            Input::UnwantChunks(ids) => self.shared.chunk_wants.unwant(&ids),
            Input::Refetch(feed) => self.shared.released.push(feed),
        }
        self.deliver(storage);
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.shared.outputs.pop_front()
    }

    /// Whether outputs wait.
    pub fn has_outputs(&self) -> bool {
        !self.shared.outputs.is_empty()
    }

    /// Whether `session` has frames to send.
    pub fn has_outgoing(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| !s.outbox.is_empty() || !s.serving.is_empty() || !s.chunks_serving.is_empty())
    }

    /// The next frame for `session`, when its writer has room: control frames first, then
    /// what its peer asked for (chunks and log data take turns).
    pub fn poll_transmit(&mut self, session: SessionId, storage: &dyn Storage) -> Option<Frame> {
        let s = self.sessions.get_mut(&session)?;
        if let Some(frame) = s.outbox.pop_front() {
            self.shared.counters.frames_sent += 1;
            return Some(frame);
        }
        match self.shared.next_served(s, storage) {
            Ok(frame) => {
                self.shared.counters.frames_sent += frame.is_some() as u64;
                frame
            }
            Err(e) => {
                self.close(session, e);
                self.deliver(storage);
                None
            }
        }
    }

    /// The authenticated sessions, with their peers and proven writers.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, PeerId, Option<FeedKey>)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s.peer, s.writer))
    }

    /// How many of our entries some room peer is known to hold.
    pub fn own_seen(&self) -> u64 {
        self.shared.own_seen
    }

    /// What the room's sessions carried so far.
    pub fn counters(&self) -> Counters {
        self.shared.counters
    }

    /// Bytes held in memory until they can be verified.
    pub fn held_bytes(&self) -> usize {
        self.shared.pieces.held_bytes()
    }

    /// Who is known to have been online, when (ms since the epoch, by their clocks): only
    /// if that changed since the last call.
    pub fn take_presence(&mut self) -> Option<Vec<(FeedKey, u64)>> {
        std::mem::take(&mut self.shared.presence_changed).then(|| self.shared.presence.seen().collect())
    }

    fn tick(&mut self, wall_ms: u64, own: Option<Alive>, now: Instant) {
        self.shared.wall = Some((wall_ms, now));
        if let Some(own) = own {
            self.shared.presence.own(own);
            self.shared.presence_changed = true;
        }
        for (id, frame) in self.shared.presence.flush(wall_ms) {
            self.push(id, frame);
        }
    }

    fn session_up(&mut self, id: SessionId, up: SessionUp, now: Instant, storage: &dyn Storage) {
        let mut s = Session {
            peer: up.peer,
            writer: None,
            anchors: HashMap::new(),
            peer_len: HashMap::new(),
            wanting: BTreeSet::new(),
            lacks: HashMap::new(),
            serving: VecDeque::new(),
            chunks_serving: VecDeque::new(),
            chunk_cache: None,
            chunk_turn: false,
            outbox: up.greeting.into(),
            got_have: false,
            got_peers: false,
            pex_reach: up.pex_reach,
            batch_bytes: up.batch_bytes,
            small_circuit: up.small_circuit,
            presence: up.presence,
        };
        let wall_ms = self.shared.wall_ms(now);
        self.shared.presence.session_up(id, up.presence, wall_ms.unwrap_or(0));
        self.shared.schedule_chunks(id, &mut s);
        let have = self.shared.heads(storage).map(|heads| self.shared.have(heads, storage));
        self.sessions.insert(id, s);
        match have {
            Ok(frame) => self.push(id, frame),
            Err(e) => self.close(id, e.into()),
        }
    }

    fn push(&mut self, id: SessionId, frame: Frame) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.outbox.push_back(frame);
        }
    }

    fn end_on_error(&mut self, id: SessionId, result: Step) {
        if let Err(e) = result {
            self.close(id, e);
        }
    }

    /// Ends a session: what it was fetching goes to the others.
    fn close(&mut self, id: SessionId, error: SessionError) {
        if self.sessions.remove(&id).is_some() {
            self.shared.session_gone(id);
            self.shared.outputs.push_back(Output::Close(id, error));
        }
    }

    /// Tells every session what the last input changed for them all, until nothing is left.
    fn deliver(&mut self, storage: &dyn Storage) {
        loop {
            let released = std::mem::take(&mut self.shared.released);
            let chunks = std::mem::take(&mut self.shared.chunks_changed);
            let updates = std::mem::take(&mut self.shared.updates);
            if released.is_empty() && !chunks && updates.is_empty() {
                return;
            }
            let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
            let lazy: Vec<Vec<SessionId>> = updates.iter().map(|u| self.lazy_sessions(u)).collect();
            for id in ids {
                let Some(s) = self.sessions.get_mut(&id) else { continue };
                let mut step = || -> Step {
                    for feed in &released {
                        self.shared.rewant(s, feed, storage)?;
                    }
                    if !released.is_empty() {
                        self.shared.schedule(id, s, storage);
                    }
                    if chunks {
                        self.shared.schedule_chunks(id, s);
                    }
                    for (update, lazy) in updates.iter().zip(&lazy) {
                        self.shared.on_update(id, s, update, lazy.contains(&id), storage)?;
                        s.check_outbox()?;
                    }
                    Ok(())
                };
                let result = step();
                self.end_on_error(id, result);
            }
        }
    }
}

impl RoomState {
    /// The sessions that only hear the head of `update` (see [`EAGER_FANOUT`]): of those
    /// that lack its entries, all but the fanout, picked by a hash of the head and the
    /// session (replayable; another update picks others).
    fn lazy_sessions(&self, update: &HeadUpdate) -> Vec<SessionId> {
        let Some(origin) = update.origin else { return Vec::new() };
        let target = update.head.length();
        let mut lacking: Vec<(u64, SessionId)> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                **id != origin && s.got_have && s.peer_len.get(&update.head.feed_key).copied().unwrap_or(0) < target
            })
            .map(|(id, _)| {
                let salt = u64::from_le_bytes(update.head.hash[..8].try_into().unwrap_or_default());
                ((salt ^ id.0).wrapping_mul(0x9e37_79b9_7f4a_7c15), *id)
            })
            .collect();
        if lacking.len() <= EAGER_FANOUT {
            return Vec::new();
        }
        lacking.sort_unstable();
        lacking.split_off(EAGER_FANOUT).into_iter().map(|(_, id)| id).collect()
    }
}

impl Session {
    /// Ends the session when the peer lets more than [`MAX_OUTBOX`] frames pile up.
    fn check_outbox(&self) -> Step {
        if self.outbox.len() > MAX_OUTBOX {
            return Err(SessionError::Protocol("the peer does not read what it asks for"));
        }
        Ok(())
    }
}

impl Shared {
    fn emit(&mut self, event: DaemonEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Whether this daemon takes no (more) entries of `feed`: the writer is blocked here, or
    /// reached a quota.
    fn refuses(&self, feed: &FeedKey, storage: &dyn Storage) -> bool {
        self.over_quota.contains(feed) || storage.is_blocked(&self.discovery_key, feed).unwrap_or(false)
    }

    fn meta(storage: &dyn Storage, feed: &FeedKey) -> Result<FeedMeta, StoreError> {
        Ok(storage.feed_meta(feed)?.unwrap_or_default())
    }

    /// The wall clock now, from the last tick's (none before the first tick).
    fn wall_ms(&self, now: Instant) -> Option<u64> {
        self.wall.map(|(ms, at)| ms + now.saturating_duration_since(at).as_millis() as u64)
    }

    fn session_gone(&mut self, id: SessionId) {
        self.presence.session_down(id);
        let feeds = self.pieces.release_session(id);
        self.released.extend(feeds);
        self.chunk_wants.session_ended(id);
        self.chunks_changed = true;
    }

    /// The heads to tell peers about: as stored, but for our own feed the durable head only.
    fn heads(&self, storage: &dyn Storage) -> Result<Vec<SignedHead>, StoreError> {
        let mut heads = storage.room_heads(&self.discovery_key)?;
        heads.retain(|h| h.feed_key != self.own_feed);
        heads.extend(self.own_durable.clone());
        Ok(heads)
    }

    /// A `Have` of `heads`, with the bytes we store of each feed.
    fn have(&self, heads: Vec<SignedHead>, storage: &dyn Storage) -> Frame {
        let bytes = heads.iter().map(|h| storage.feed_bytes(&h.feed_key)).collect();
        Frame::Have { heads, bytes }
    }

    fn appended(&mut self, head: SignedHead) {
        if self.own_durable.as_ref().is_none_or(|d| d.seq < head.seq) {
            self.own_durable = Some(head.clone());
            self.updates.push(HeadUpdate { head, origin: None });
        }
    }

    /// `session` will not bring (more of) `feed`: its peer lacks it, or sent entries that
    /// failed verification (then, with `refuse`, it is not asked for the feed again).
    fn piece_failed(&mut self, session: SessionId, feed: &FeedKey, refuse: bool) {
        self.pieces.release_feed(session, feed, refuse);
        self.released.push(*feed);
    }

    fn on_frame(&mut self, id: SessionId, s: &mut Session, frame: Frame, now: Instant, storage: &dyn Storage) -> Step {
        match frame {
            Frame::Have { heads, bytes } => {
                if heads.len() > MAX_HAVE_FEEDS || bytes.len() > heads.len() {
                    return Err(SessionError::Protocol("Have lists too many feeds"));
                }
                for (i, head) in heads.into_iter().enumerate() {
                    self.learn_head(s, head, bytes.get(i).copied(), now, storage)?;
                }
                self.schedule(id, s, storage);
                if !s.got_have {
                    s.got_have = true;
                    // Feeds the peer did not list, it does not have.
                    for feed in storage.room_feeds(&self.discovery_key)? {
                        s.peer_len.entry(feed).or_insert(0);
                    }
                }
                Ok(())
            }
            Frame::Want { feed_key, start, end } => {
                if start >= end {
                    return Err(SessionError::Protocol("empty Want"));
                }
                if s.serving.len() >= MAX_SERVING {
                    return Err(SessionError::Protocol("too many Wants queued"));
                }
                let blocked = storage.is_blocked(&self.discovery_key, &feed_key)?;
                let meta = storage.feed_meta(&feed_key)?.filter(|m| m.room == self.discovery_key && !blocked);
                let mut end = end.min(meta.as_ref().map_or(0, FeedMeta::length));
                if feed_key == self.own_feed {
                    // Only what is durable of our own feed leaves this daemon.
                    end = end.min(self.own_durable.as_ref().map_or(0, SignedHead::length));
                }
                // A removed writer's entries after its removal are nobody's to pass on.
                if let Some(cut) = storage.cut(&self.discovery_key, &feed_key) {
                    end = end.min(cut.length);
                }
                if start >= end {
                    s.outbox.push_back(Frame::NoData { feed_key, below: start });
                } else {
                    s.serving.push_back(Serving { feed: feed_key, start, end });
                }
                Ok(())
            }
            Frame::Data { feed_key, start, entries, head } => {
                if entries.is_empty() {
                    return Ok(());
                }
                let top = start.checked_add(entries.len() as u64 - 1).ok_or(SessionError::Protocol("seq overflow"))?;
                if let Some(head) = head {
                    if head.feed_key != feed_key || head.seq != top {
                        return Err(SessionError::Protocol("Data head does not match its entries"));
                    }
                    // A push of entries we hold already, under the very head we store: in a
                    // room of many sessions one message comes from several of them. The
                    // chain makes it the same entries: nothing to verify or store. (Not for
                    // our own feed: a peer holding it is what marks our messages seen.)
                    let meta = Self::meta(storage, &feed_key)?;
                    let copy =
                        feed_key != self.own_feed && meta.head.as_ref() == Some(&head) && meta.has_all(start, top + 1);
                    if copy && !self.pieces.is_claimed_by(id, &feed_key, start, top + 1) {
                        self.counters.entries_received += entries.len() as u64;
                        let len = s.peer_len.entry(feed_key).or_insert(0);
                        *len = (*len).max(top + 1);
                        return Ok(());
                    }
                    self.learn_head(s, head, None, now, storage)?;
                }
                let anchor = s.anchors.get(&feed_key).and_then(|a| a.get(&top)).cloned();
                let job = IngestJob { session: id, feed: feed_key, start, entries, anchor, held: false };
                if !self.receive(job, storage)? {
                    // Held for later verification (or dropped, the hold being full): the
                    // peer has them all the same.
                    let len = s.peer_len.entry(feed_key).or_insert(0);
                    *len = (*len).max(top + 1);
                    self.schedule(id, s, storage);
                }
                Ok(())
            }
            Frame::NoData { feed_key, below } => {
                debug!(feed = %hex::encode(&feed_key[..4]), below, "peer lacks entries");
                let lacks = s.lacks.entry(feed_key).or_insert(0);
                *lacks = (*lacks).max(below);
                // Another peer may have them.
                self.piece_failed(id, &feed_key, false);
                self.schedule(id, s, storage);
                Ok(())
            }
            Frame::Peers { peers } => {
                if peers.len() > PEX_PEERS {
                    return Err(SessionError::Protocol("Peers lists too many peers"));
                }
                if std::mem::replace(&mut s.got_peers, true) {
                    return Err(SessionError::Protocol("a second Peers frame"));
                }
                let mut learned = Vec::new();
                for p in peers {
                    let Ok(peer) = PeerId::from_bytes(&p.peer_id) else { continue };
                    let addrs: Vec<Multiaddr> = p
                        .addrs
                        .into_iter()
                        .take(PEX_ADDRS)
                        .filter_map(|a| Multiaddr::try_from(a.into_vec()).ok())
                        .filter(|a| {
                            let r = crate::node::reach(a);
                            r != Reach::Nowhere && r <= s.pex_reach
                        })
                        .collect();
                    if peer != s.peer {
                        learned.push((peer, addrs));
                    }
                }
                if !learned.is_empty() {
                    self.outputs.push_back(Output::LearnPeers(learned));
                }
                Ok(())
            }
            Frame::WantChunk { id: chunk, offset } => {
                if s.chunks_serving.len() >= MAX_CHUNKS_SERVING {
                    return Err(SessionError::Protocol("too many WantChunks queued"));
                }
                // Only chunks a file of this room names, to members of this room.
                if storage.room_has_chunk(&self.discovery_key, &chunk)? && storage.has_chunk(&chunk) {
                    s.chunks_serving.push_back((chunk, offset));
                } else {
                    s.outbox.push_back(Frame::NoChunk { id: chunk });
                }
                Ok(())
            }
            Frame::Chunk { id: chunk, offset, total, bytes } => {
                if !self.chunk_wants.asked(id, &chunk) {
                    // Not asked of this peer (any more): another peer sent it already.
                    return Ok(());
                }
                if total as usize > CHUNK_BYTES + TAG_BYTES {
                    warn!(peer = %s.peer, total, "peer announced an oversized chunk; refused");
                    self.chunk_lacking(id, &chunk);
                    return Ok(());
                }
                let Some(bytes) = self.chunk_part(&chunk, offset, total, bytes) else {
                    return Ok(()); // more parts to come
                };
                if chunk_id(&bytes) != chunk {
                    warn!(peer = %s.peer, chunk = %hex::encode(&chunk[..8]), len = bytes.len(), "peer sent a chunk that does not match its id; not stored");
                    self.chunk_parts.remove(&chunk);
                    self.chunk_lacking(id, &chunk);
                    return Ok(());
                }
                self.outputs.push_back(Output::StoreChunk { session: id, id: chunk, bytes });
                Ok(())
            }
            Frame::NoChunk { id: chunk } => {
                self.chunk_lacking(id, &chunk);
                Ok(())
            }
            Frame::Writer { feed_key, signature } => {
                let bytes = peerlog_proto::wire::writer_proof_bytes(&self.discovery_key, &s.peer.to_bytes());
                let valid = ed25519_dalek::VerifyingKey::from_bytes(&feed_key).ok().is_some_and(|key| {
                    <[u8; 64]>::try_from(signature.as_slice())
                        .is_ok_and(|sig| key.verify_strict(&bytes, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok())
                });
                if !valid {
                    return Err(SessionError::Protocol("bad writer proof"));
                }
                if storage.is_blocked(&self.discovery_key, &feed_key)? {
                    return Err(SessionError::Protocol("the peer's writer is blocked here"));
                }
                s.writer = Some(feed_key);
                self.outputs.push_back(Output::WriterProven(id, feed_key));
                Ok(())
            }
            Frame::Alive { records } => {
                if !s.presence {
                    return Err(SessionError::Protocol("Alive on a version 3 session"));
                }
                // Before the first tick there is no clock to check them by; they come again.
                let Some(wall_ms) = self.wall_ms(now) else { return Ok(()) };
                let known = |feed: &FeedKey| storage.feed_meta(feed).ok().flatten().is_some();
                match self.presence.receive(id, records, wall_ms, known) {
                    Ok(changed) => {
                        self.presence_changed |= changed;
                        Ok(())
                    }
                    Err(AliveError::TooMany) => Err(SessionError::Protocol("Alive lists too many records")),
                    Err(AliveError::BadSignature) => Err(SessionError::Protocol("bad presence signature")),
                }
            }
            Frame::Refuse { reason } => Err(SessionError::Refused(reason)),
            Frame::Hello { .. } | Frame::Auth { .. } => Err(SessionError::Protocol("handshake frame after handshake")),
        }
    }

    /// Records a head the peer has (verifying it) and asks for what we miss.
    fn learn_head(
        &mut self,
        s: &mut Session,
        head: SignedHead,
        bytes: Option<u64>,
        now: Instant,
        storage: &dyn Storage,
    ) -> Step {
        let feed = head.feed_key;
        if !s.peer_len.contains_key(&feed) && s.peer_len.len() >= MAX_SESSION_FEEDS {
            return Err(SessionError::Protocol("the peer announced too many feeds"));
        }
        if feed != self.own_feed && self.refuses(&feed, storage) {
            return Ok(());
        }
        // A removed writer's head past what stays of its feed: nothing under it is taken.
        if storage.cut(&self.discovery_key, &feed).is_some_and(|cut| head.length() > cut.length) {
            return Ok(());
        }
        if let Some(known) = s.anchors.get(&feed).and_then(|a| a.get(&head.seq)) {
            if *known == head {
                return Ok(());
            }
            // Another validly signed head for a seq we have a head for: the writer forked.
            if !verify_head(&self.discovery_key, &head) {
                return Err(SessionError::Protocol("bad head signature"));
            }
            if known.hash != head.hash {
                warn!(peer = %s.peer, feed = %hex::encode(&feed[..8]), seq = head.seq, "writer signed two heads for one seq");
                self.outputs.push_back(Output::RecordFork(known.clone(), head));
            }
            return Ok(());
        }
        let meta = Self::meta(storage, &feed)?;
        // The head we store coming again (our own coming back from a peer that stored what
        // we pushed; another writer's from each session that passes it on) is the common
        // case on a live room: it was verified when stored, it needs no signature check.
        let stored = meta.head.as_ref().is_some_and(|h| *h == head);
        if !stored && !verify_head(&self.discovery_key, &head) {
            return Err(SessionError::Protocol("bad head signature"));
        }
        // The head we store may still be a format-2 one: this is it, signed for the room.
        if storage.has_legacy_head(&feed) {
            self.outputs.push_back(Output::UpgradeHead(head.clone()));
        }
        let len = s.peer_len.entry(feed).or_insert(0);
        *len = (*len).max(head.length());
        if feed == self.own_feed {
            // The peer holds our entries up to here: they were seen. If it holds more than
            // we do, or entries we lost (damaged blocks forgotten), we fetch them back like
            // any feed's.
            self.saw_own_length(head.length());
            if !self.saw_own_head(head.length(), &meta) && meta.missing(head.length()).is_empty() {
                return Ok(());
            }
        }
        self.record_progress(&feed, Some((head.length(), bytes.unwrap_or(0))), None, now, storage);
        let target = head.length();
        let anchors = s.anchors.entry(feed).or_default();
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
            s.wanting.insert(feed);
        }
        Ok(())
    }

    /// Our feed's length that some room peer holds: our messages below it were seen by at
    /// least one peer. Reported upward only.
    fn saw_own_length(&mut self, length: u64) {
        if length > self.own_seen {
            self.own_seen = length;
            self.emit(DaemonEvent::Seen { room: self.discovery_key, length });
        }
    }

    /// A peer holds our feed up to `length` entries; if that is more than we hold, we fetch
    /// the rest before writing on.
    fn saw_own_head(&mut self, length: u64, meta: &FeedMeta) -> bool {
        if length <= meta.length() {
            return false;
        }
        if length > self.own_ahead {
            self.own_ahead = length;
            self.outputs.push_back(Output::OwnFeedAhead(length));
        }
        true
    }

    /// Wants `feed` again if the peer has entries of it that we lack (after damaged blocks
    /// were forgotten, say).
    fn rewant(&self, s: &mut Session, feed: &FeedKey, storage: &dyn Storage) -> Step {
        let Some(&theirs) = s.peer_len.get(feed) else { return Ok(()) };
        if s.wanting.contains(feed) || self.refuses(feed, storage) {
            return Ok(());
        }
        if !Self::meta(storage, feed)?.missing(theirs).is_empty() {
            s.wanting.insert(*feed);
        }
        Ok(())
    }

    /// Claims pieces of what the peer has and we lack (see [`super::pieces`]) up to
    /// [`PIECES_PER_SESSION`] at a time, and asks for them.
    fn schedule(&mut self, id: SessionId, s: &mut Session, storage: &dyn Storage) {
        while self.pieces.awaited_by(id) < PIECES_PER_SESSION && !s.wanting.is_empty() {
            let candidates: Vec<Candidate> = s
                .wanting
                .iter()
                .map(|feed| Candidate {
                    feed: *feed,
                    target: s.peer_len.get(feed).copied().unwrap_or(0),
                    lacks_below: s.lacks.get(feed).copied().unwrap_or(0),
                })
                .collect();
            let claimed = self.pieces.claim(id, &candidates, |feed| Self::meta(storage, feed).unwrap_or_default());
            let Some((feed_key, start, end)) = claimed else {
                // Forget the feeds we now hold in full.
                s.wanting.retain(|feed| {
                    let target = s.peer_len.get(feed).copied().unwrap_or(0);
                    !Self::meta(storage, feed).unwrap_or_default().missing(target).is_empty()
                });
                return;
            };
            s.outbox.push_back(Frame::Want { feed_key, start, end });
        }
    }

    /// Asks the peer for wanted chunks, up to [`CHUNKS_PER_SESSION`] at a time (one over a
    /// small circuit: it carries little before it is closed, and the next one goes on from
    /// there).
    fn schedule_chunks(&mut self, id: SessionId, s: &mut Session) {
        let in_flight = if s.small_circuit { 1 } else { CHUNKS_PER_SESSION };
        while self.chunk_wants.in_flight(id) < in_flight {
            let Some(chunk) = self.chunk_wants.next_for(id) else { break };
            let offset = self.chunk_parts.get(&chunk).map_or(0, |b| b.len() as u32);
            s.outbox.push_back(Frame::WantChunk { id: chunk, offset });
        }
    }

    /// `session`'s peer lacks chunk `id` or sent a bad copy: another session may fetch it.
    fn chunk_lacking(&mut self, session: SessionId, id: &ChunkId) {
        self.chunk_wants.lacking(session, id);
        self.chunks_changed = true;
    }

    fn chunk_stored(&mut self, session: SessionId, id: &ChunkId, stored: Option<u64>) {
        match stored {
            Some(bytes) => {
                self.chunk_wants.done(id);
                self.outputs.push_back(Output::Chunk(ChunkEvent::Stored { id: *id, bytes }));
                self.chunks_changed = true;
            }
            None => self.chunk_lacking(session, id),
        }
    }

    /// Adds bytes `offset..` of chunk `id` (of `total` bytes); returns the whole chunk once
    /// complete. Parts must come in order; one that does not fit starts nothing.
    fn chunk_part(&mut self, id: &ChunkId, offset: u32, total: u32, bytes: Vec<u8>) -> Option<Vec<u8>> {
        if offset == 0 && bytes.len() as u64 == u64::from(total) {
            self.chunk_parts.remove(id);
            return Some(bytes);
        }
        if !self.chunk_parts.contains_key(id) && self.chunk_parts.len() >= MAX_CHUNK_PARTS {
            return None;
        }
        let buf = self.chunk_parts.entry(*id).or_default();
        if offset == 0 {
            buf.clear();
        }
        if buf.len() as u64 != u64::from(offset) || buf.len() + bytes.len() > total as usize {
            return None;
        }
        buf.extend_from_slice(&bytes);
        if buf.len() == total as usize {
            return self.chunk_parts.remove(id);
        }
        None
    }

    /// Takes entries a session received: hands them out to be verified and stored, or, when
    /// they belong to a piece that cannot be verified before the one above it is stored,
    /// holds them in memory until it is. Whether they were handed out.
    fn receive(&mut self, job: IngestJob, storage: &dyn Storage) -> Result<bool, SessionError> {
        self.counters.entries_received += job.entries.len() as u64;
        let (session, feed, start, end) = (job.session, job.feed, job.start, job.end());
        self.pieces.arrived(session, &feed, start, end);
        if job.anchor.is_none() && self.pieces.is_claimed_by(session, &feed, start, end) {
            let meta = Self::meta(storage, &feed)?;
            let verifiable = meta.has(end) || meta.head.as_ref().is_some_and(|h| h.seq + 1 == end);
            if !verifiable {
                if !self.pieces.hold(Held { feed, start, entries: job.entries, session }) {
                    debug!("verification hold is full; the piece will be fetched again");
                    self.piece_failed(session, &feed, false);
                }
                return Ok(false);
            }
        }
        self.outputs.push_back(Output::Ingest(job));
        Ok(true)
    }

    /// The answer to an [`Output::Ingest`]. An error names the session to close.
    fn ingested(
        &mut self,
        sessions: &mut BTreeMap<SessionId, Session>,
        job: IngestJob,
        result: Ingest,
        now: Instant,
        storage: &dyn Storage,
    ) -> Result<(), (SessionId, SessionError)> {
        let (id, feed) = (job.session, job.feed);
        let ok = matches!(result, Ingest::Stored { .. });
        match result {
            Ingest::Stored { stored, bytes, new_head, messages } => {
                if stored > 0 {
                    self.record_progress(&feed, None, Some((stored, bytes)), now, storage);
                }
                if !messages.is_empty() {
                    self.outputs.push_back(Output::Messages(messages));
                }
                if let Some(head) = new_head {
                    if feed == self.own_feed && self.own_durable.as_ref().is_none_or(|d| d.seq < head.seq) {
                        // Our own entries, fetched back from a peer that holds them.
                        self.own_durable = Some(head.clone());
                    }
                    self.updates.push(HeadUpdate { head, origin: Some(id) });
                }
                if !job.held {
                    if let Some(s) = sessions.get_mut(&id) {
                        let len = s.peer_len.entry(feed).or_insert(0);
                        *len = (*len).max(job.end());
                    }
                }
            }
            Ingest::Failed(e) if !job.held => return Err((id, SessionError::Store(e))),
            Ingest::Failed(e) => {
                warn!(feed = %hex::encode(&feed[..8]), start = job.start, error = %e, "cannot store held entries");
                self.piece_failed(id, &feed, false);
            }
            // A batch nobody asked for (a push whose head we could not use) is dropped.
            Ingest::NotAnchored if !job.held && !self.pieces.is_claimed_by(id, &feed, job.start, job.end()) => {}
            // Blocked here, or over a quota: not the peer's fault, and nobody else's copy is
            // wanted either.
            Ingest::Blocked | Ingest::Quota(_) => {
                if let Ingest::Quota(quota) = result {
                    self.reached_quota(&feed, quota);
                }
                if let Some(s) = sessions.get_mut(&id) {
                    s.wanting.remove(&feed);
                }
                self.piece_failed(id, &feed, false);
            }
            // A batch asked for that does not match the head that anchors it (a blind seeder
            // finds no other fault, not decrypting), or that fails another check: another
            // peer may have a verifiable copy. (Left claimed, the piece would never be asked
            // of anyone again while this session lasts.)
            Ingest::NotAnchored | Ingest::Invalid(_) => {
                let why = if let Ingest::Invalid(why) = &result { why.as_str() } else { "not anchored" };
                warn!(feed = %hex::encode(&feed[..8]), start = job.start, error = why, held = job.held, "rejected entries from a peer; nothing stored");
                self.piece_failed(id, &feed, true);
            }
        }
        if ok || job.held {
            self.after_stored(&feed, storage);
        }
        if !job.held {
            if let Some(s) = sessions.get_mut(&id) {
                self.schedule(id, s, storage);
            }
        }
        Ok(())
    }

    /// Entries of `feed` were stored: settle the claims they complete and hand out the next
    /// held batch that can now be verified.
    fn after_stored(&mut self, feed: &FeedKey, storage: &dyn Storage) {
        let Ok(meta) = Self::meta(storage, feed) else { return };
        if self.pieces.settle(feed, &meta) {
            self.released.push(*feed);
        }
        if let Some(held) = self.pieces.take_ready(feed, &meta) {
            self.outputs.push_back(Output::Ingest(IngestJob {
                session: held.session,
                feed: *feed,
                start: held.start,
                entries: held.entries,
                anchor: None,
                held: true,
            }));
        }
    }

    /// Records that a writer reached a quota: said once (a warning, an event), and its
    /// entries are no longer asked for.
    fn reached_quota(&mut self, feed: &FeedKey, quota: QuotaKind) {
        if self.over_quota.insert(*feed) {
            warn!(writer = %hex::encode(&feed[..8]), %quota, "a writer reached the room's quota: storing no more of it");
            self.emit(DaemonEvent::WriterQuota { room: self.discovery_key, writer: *feed, quota });
        }
    }

    /// Updates catch-up accounting and emits `SyncProgress` when something changed, at most
    /// every [`PROGRESS_INTERVAL`] unless sync just completed.
    fn record_progress(
        &mut self,
        feed: &FeedKey,
        seen: Option<(u64, u64)>,
        stored: Option<(u64, u64)>,
        now: Instant,
        storage: &dyn Storage,
    ) {
        let p = &mut self.progress;
        if !p.feeds.contains_key(feed) {
            if p.feeds.len() >= MAX_PROGRESS_FEEDS && stored.is_none() {
                return;
            }
            let entries = storage.feed_meta(feed).ok().flatten().map_or(0, |m| m.stored());
            let bytes = storage.feed_bytes(feed);
            p.feeds.insert(
                *feed,
                FeedProgress { entries_seen: entries, entries_done: entries, bytes_seen: bytes, bytes_done: bytes },
            );
        }
        let Some(f) = p.feeds.get_mut(feed) else { return };
        let before = *f;
        if let Some((len, bytes)) = seen {
            f.entries_seen = f.entries_seen.max(len);
            f.bytes_seen = f.bytes_seen.max(bytes);
        }
        if let Some((n, bytes)) = stored {
            f.entries_done += n;
            f.bytes_done += bytes;
        }
        f.entries_seen = f.entries_seen.max(f.entries_done);
        f.bytes_seen = f.bytes_seen.max(f.bytes_done);
        if *f == before {
            return;
        }
        let sum = p.feeds.values().fold(FeedProgress::default(), |a, f| FeedProgress {
            entries_seen: a.entries_seen + f.entries_seen,
            entries_done: a.entries_done + f.entries_done,
            bytes_seen: a.bytes_seen + f.bytes_seen,
            bytes_done: a.bytes_done + f.bytes_done,
        });
        let due = p.last_emit.is_none_or(|t| now.saturating_duration_since(t) >= PROGRESS_INTERVAL);
        if sum.entries_seen > 0 && (sum.entries_done >= sum.entries_seen || due) {
            p.last_emit = Some(now);
            self.emit(DaemonEvent::SyncProgress {
                room: self.discovery_key,
                entries_done: sum.entries_done,
                entries_total: sum.entries_seen,
                bytes_done: sum.bytes_done,
                bytes_total: sum.bytes_seen,
            });
        }
    }

    /// A head advanced here: push the new entries to the session's peer, or announce it.
    fn on_update(
        &mut self,
        id: SessionId,
        s: &mut Session,
        update: &HeadUpdate,
        lazy: bool,
        storage: &dyn Storage,
    ) -> Step {
        let head = &update.head;
        if update.origin == Some(id) {
            // The peer sent these entries. If they are its own, tell it we hold them now
            // (that is how a writer learns its message was seen); others it need not hear.
            if s.writer == Some(head.feed_key) {
                s.outbox.push_back(self.have(vec![head.clone()], storage));
            }
            return Ok(());
        }
        if !s.got_have {
            // We do not know yet what the peer holds: announce, it will ask.
            s.outbox.push_back(self.have(vec![head.clone()], storage));
            return Ok(());
        }
        let feed = head.feed_key;
        let have = s.peer_len.get(&feed).copied().unwrap_or(0);
        let target = head.length();
        if target <= have {
            return Ok(());
        }
        if !lazy && target - have <= PUSH_MAX && s.outbox.len() < PUSH_OUTBOX {
            let entries = storage.entries(&feed, have, target)?;
            let bytes: usize = entries.iter().map(|e| e.ciphertext.len() + ENTRY_OVERHEAD).sum();
            if entries.len() as u64 == target - have && bytes <= s.batch_bytes {
                s.peer_len.insert(feed, target);
                self.counters.entries_served += entries.len() as u64;
                s.outbox.push_back(Frame::Data { feed_key: feed, start: have, entries, head: Some(head.clone()) });
                return Ok(());
            }
        }
        s.outbox.push_back(self.have(vec![head.clone()], storage));
        Ok(())
    }

    /// The next frame of what the peer asked for: chunks and log data take turns.
    fn next_served(&mut self, s: &mut Session, storage: &dyn Storage) -> Result<Option<Frame>, SessionError> {
        s.chunk_turn = !s.chunk_turn;
        if s.chunk_turn || s.serving.is_empty() {
            if let Some((id, offset)) = s.chunks_serving.front().copied() {
                if s.chunk_cache.as_ref().is_none_or(|(cached, _)| *cached != id) {
                    s.chunk_cache = storage.read_chunk(&id)?.map(|bytes| (id, bytes));
                }
                let Some((_, bytes)) = s.chunk_cache.as_ref() else {
                    s.chunks_serving.pop_front();
                    return Ok(Some(Frame::NoChunk { id }));
                };
                let start = (offset as usize).min(bytes.len());
                let end = if s.small_circuit { (start + s.batch_bytes).min(bytes.len()) } else { bytes.len() };
                let frame = Frame::Chunk {
                    id,
                    offset: start as u32,
                    total: bytes.len() as u32,
                    bytes: bytes[start..end].to_vec(),
                };
                if end >= bytes.len() {
                    s.chunks_serving.pop_front();
                    s.chunk_cache = None;
                } else if let Some(front) = s.chunks_serving.front_mut() {
                    front.1 = end as u32;
                }
                return Ok(Some(frame));
            }
        }
        self.next_batch(s, storage)
    }

    /// The next `Data` (newest entries of the oldest pending Want first) or `NoData`.
    fn next_batch(&mut self, s: &mut Session, storage: &dyn Storage) -> Result<Option<Frame>, SessionError> {
        let Some(job) = s.serving.front_mut() else { return Ok(None) };
        let feed = job.feed;
        let meta = Self::meta(storage, &feed)?;
        let top = job.end - 1;
        let Some(run_start) = meta.run_start(top) else {
            let below = job.end;
            s.serving.pop_front();
            return Ok(Some(Frame::NoData { feed_key: feed, below }));
        };
        let lo = job.start.max(run_start).max(job.end.saturating_sub(self.limits.batch_entries));
        let mut entries = match storage.entries(&feed, lo, job.end) {
            Ok(entries) => entries,
            // A damaged block (its checksum caught it): say we lack it; the session goes on.
            // It is forgotten, and the room's sessions fetch it again from whoever holds it.
            Err(StoreError::Corrupt(what)) => {
                warn!(peer = %s.peer, feed = %hex::encode(&feed[..8]), start = lo, what, "a stored block is damaged; not served");
                self.outputs.push_back(Output::ForgetDamaged(feed));
                let below = job.end;
                s.serving.pop_front();
                return Ok(Some(Frame::NoData { feed_key: feed, below }));
            }
            Err(e) => return Err(e.into()),
        };
        // Keep the frame well under the limit: drop the oldest entries past the budget.
        let budget = s.batch_bytes.min(self.limits.frame_bytes / 2);
        let mut bytes = 0;
        let mut keep_from = entries.len();
        while keep_from > 0 {
            let size = entries[keep_from - 1].ciphertext.len() + ENTRY_OVERHEAD;
            if bytes + size > budget && keep_from < entries.len() {
                break;
            }
            bytes += size;
            keep_from -= 1;
        }
        entries.drain(..keep_from);
        let start = job.end - entries.len() as u64;
        // A format-2 head would not verify at the peer (see `Store::has_legacy_head`).
        // A removed writer's feed we hold past what stays: the head over what stays.
        let head = meta
            .head
            .filter(|h| h.seq == top && !storage.has_legacy_head(&feed))
            .or_else(|| storage.cut(&self.discovery_key, &feed).and_then(|c| c.head).filter(|h| h.seq == top));
        job.end = start;
        if job.end <= job.start || entries.is_empty() {
            s.serving.pop_front();
        }
        if entries.is_empty() {
            return Ok(Some(Frame::NoData { feed_key: feed, below: top + 1 }));
        }
        self.counters.entries_served += entries.len() as u64;
        Ok(Some(Frame::Data { feed_key: feed, start, entries, head }))
    }
}
