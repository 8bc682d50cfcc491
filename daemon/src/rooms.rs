//! Joined rooms at run time: each [`Room`] holds its keys, our writer for it, the Lamport
//! clock and the channel that tells replication sessions about new heads. [`Rooms`] is the
//! registry and the source of [`DaemonEvent`]s for API clients.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use peerlog_proto::wire::{Entry, Key32, SignedHead};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::fetch::{Candidate, Fetches, Held};
use crate::files::ChunkWants;
use crate::ids::SessionId;
use crate::keys::{room_id, RoomKeys, RoomSecret, SeedCapability};
use crate::log::store::{
    Access, Appended, IngestError, Ingested, QuotaKind, RoomRecord, StoreError, StoredMessage, WriterQuota,
};
use crate::log::{new_writer, Body, FeedCipher, Store, LAMPORT_LEAD, LAMPORT_MAX};

/// Most chunks partly received at once per room (each at most about 1 MiB).
const MAX_CHUNK_PARTS: usize = 16;
/// Capacity of each room's head-update channel.
const UPDATE_CAPACITY: usize = 1024;
/// Capacity of the daemon event channel (slow API clients see `Lagged`).
const EVENT_CAPACITY: usize = 4096;

/// A feed's head advanced: sessions tell (or push to) their peers.
#[derive(Clone, Debug)]
pub struct HeadUpdate {
    /// The new head.
    pub head: SignedHead,
    /// The session the entries came from (it need not hear about them), if any.
    pub origin: Option<SessionId>,
}

/// Something API clients hear about.
#[derive(Clone, Debug)]
pub enum DaemonEvent {
    /// A message was stored (written here or received).
    Message {
        /// The room's discovery key.
        room: Key32,
        /// The message.
        message: StoredMessage,
    },
    /// A replication session with a room peer was authenticated.
    PeerJoined {
        /// The room.
        room: Key32,
        /// The peer.
        peer: PeerId,
        /// How we are connected to it (if known).
        kind: Option<crate::node::ConnectionKind>,
    },
    /// A replication session with a room peer ended.
    PeerLeft {
        /// The room.
        room: Key32,
        /// The peer.
        peer: PeerId,
    },
    /// Catching up: entries stored of those the room's peers have shown us.
    SyncProgress {
        /// The room.
        room: Key32,
        /// Entries stored, over all feeds of the room.
        entries_done: u64,
        /// Entries known to exist (the longest head seen per feed).
        entries_total: u64,
        /// Bytes stored of the feeds being synced (as stored: the sum of their blocks).
        bytes_done: u64,
        /// Bytes of those feeds, the largest size a peer reported for each (an estimate).
        bytes_total: u64,
    },
    /// A room peer holds our feed up to `length`: our messages below were seen.
    Seen {
        /// The room.
        room: Key32,
        /// Entries of our feed some peer holds.
        length: u64,
    },
    /// A file is being read in (sending) or fetched (receiving).
    FileProgress {
        /// The room.
        room: Key32,
        /// The file's id (as in its `file` message).
        file_id: Key32,
        /// `true` when fetching from peers, `false` when reading it in to send.
        receiving: bool,
        /// Bytes of the file done.
        bytes_done: u64,
        /// The file's size.
        bytes_total: u64,
        /// Finished (all chunks here and verified).
        done: bool,
    },
    /// A writer reached one of the room's quotas: we store no more of it (and, for
    /// `Writers`, no new writer) until the quota is raised.
    WriterQuota {
        /// The room.
        room: Key32,
        /// The writer's feed key.
        writer: Key32,
        /// Which quota.
        quota: QuotaKind,
    },
    /// The best connection to a room peer changed (e.g. relayed → holepunched).
    PeerConnection {
        /// The peer.
        peer: PeerId,
        /// The new kind.
        kind: crate::node::ConnectionKind,
        /// The rooms it shares with us.
        rooms: Vec<Key32>,
    },
}

/// A joined room.
pub struct Room {
    /// The discovery key: the room's identity on the wire.
    pub discovery_key: Key32,
    /// Short public id (hex of the first 8 bytes of the discovery key).
    pub id: String,
    /// Local display name.
    pub name: String,
    /// Derived keys.
    pub keys: RoomKeys,
    /// The room secret; None for a blind seeder.
    secret: Option<RoomSecret>,
    writer: SigningKey,
    /// Our feed in this room.
    pub feed_key: Key32,
    /// None for a blind seeder.
    own_cipher: Option<FeedCipher>,
    /// Greatest Lamport clock seen in the room.
    lamport: AtomicU64,
    /// Serializes appends to our feed (held only around synchronous store calls).
    append_lock: Mutex<()>,
    /// Appends waiting for [`Room::append_grouped`]'s next turn.
    pending: Mutex<Vec<PendingAppend>>,
    /// Held by the caller that appends everything pending as one batch.
    append_turn: tokio::sync::Mutex<()>,
    /// AEAD per writer, derived on first use.
    ciphers: Mutex<HashMap<Key32, FeedCipher>>,
    updates: broadcast::Sender<HeadUpdate>,
    /// Where the room's feeds are stored.
    store: Store,
    /// Where API clients hear about new messages.
    events: broadcast::Sender<DaemonEvent>,
    /// Catch-up accounting, for `sync.progress` events.
    progress: Mutex<Progress>,
    /// Entries received from peers since the daemon started, stored or not (duplicates,
    /// refused): with `served`, shows what sync costs.
    pub received: AtomicU64,
    /// Entries sent to peers since the daemon started.
    pub served: AtomicU64,
    /// Which session fetches which piece, and entries held until they can be verified.
    fetches: Mutex<Fetches>,
    /// Feeds whose pieces were released or stored: sessions look for more to fetch.
    released: broadcast::Sender<Key32>,
    /// Entries of our feed that some peer is known to hold.
    own_seen: AtomicU64,
    /// The newest head of our feed that is durable: the only one peers hear of. A head
    /// pushed before its flush could outlive a crash that lost it here, and the seq would
    /// be signed twice (a fork that makes peers refuse our feed for good).
    own_durable: Mutex<Option<SignedHead>>,
    /// The longest copy of our feed a peer showed us (a restored or copied data dir may
    /// hold less than peers do): we fetch it before writing on.
    own_ahead: AtomicU64,
    /// Writers that reached a quota since start: their entries are not fetched.
    over_quota: Mutex<HashSet<Key32>>,
    /// Writers' display names, loaded on first use.
    names: RwLock<Option<HashMap<Key32, String>>>,
    /// Chunks wanted from the room's peers.
    chunk_wants: Mutex<ChunkWants>,
    /// Chunk wants and arrivals, for sessions and downloads.
    chunk_events: broadcast::Sender<ChunkEvent>,
    /// Chunks partly received over relayed sessions: kept across sessions, so a transfer
    /// goes on over the next circuit where the last one closed.
    chunk_parts: Mutex<HashMap<Key32, Vec<u8>>>,
    /// Cancelled when the room is left or the daemon stops.
    pub cancel: CancellationToken,
}

/// What sessions and downloads hear about chunks.
#[derive(Clone, Debug)]
pub enum ChunkEvent {
    /// New chunks are wanted, or a wanted chunk needs another peer.
    Wanted,
    /// A chunk was stored.
    Stored {
        /// Its id.
        id: Key32,
        /// Its size (ciphertext).
        bytes: u64,
    },
}

/// An append waiting for its turn, and where its messages (and the batch's head) go.
struct PendingAppend {
    bodies: Vec<Body>,
    reply: tokio::sync::oneshot::Sender<Result<Appended, Arc<StoreError>>>,
}

/// Catch-up accounting of a room, per feed.
#[derive(Default)]
struct Progress {
    feeds: HashMap<Key32, FeedProgress>,
    last_emit: Option<std::time::Instant>,
}

/// One feed: the longest head and the largest size peers reported, and what is stored.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct FeedProgress {
    entries_seen: u64,
    entries_done: u64,
    bytes_seen: u64,
    bytes_done: u64,
}

/// Feeds a room keeps catch-up accounting for; past this, new feeds are not counted (writer
/// keys cost nothing to mint: a hostile member must not grow this without bound).
const MAX_PROGRESS_FEEDS: usize = 100_000;

/// Least time between two `sync.progress` events of a room (the last one always goes out).
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Room {
    /// Builds the run-time room from its stored record.
    pub fn new(
        discovery_key: &Key32,
        record: &RoomRecord,
        store: &Store,
        events: broadcast::Sender<DaemonEvent>,
        cancel: CancellationToken,
    ) -> Result<Self, StoreError> {
        let (secret, keys) = match &record.access {
            Access::Member(secret) => {
                let secret = RoomSecret(*secret);
                let keys = secret.keys();
                (Some(secret), keys)
            }
            Access::Seeder(auth_key) => {
                (None, SeedCapability { discovery_key: *discovery_key, auth_key: *auth_key }.keys())
            }
        };
        if keys.discovery_key != *discovery_key {
            return Err(StoreError::Corrupt("room record of another room"));
        }
        let mut writer = SigningKey::from_bytes(&record.writer);
        if keys.content_key.is_some() && !store.feed_clocks_valid(&writer.verifying_key().to_bytes())? {
            // An older version let a hostile clock wrap ours: peers refuse our feed from
            // there on, and a signed feed cannot be rewritten. Write on under a new key.
            warn!(room = %room_id(&keys.discovery_key), "our feed's clocks do not rise (a hostile clock wrapped them); writing on under a new writer key");
            writer = new_writer();
            let mut record = record.clone();
            record.writer = writer.to_bytes();
            store.put_room(discovery_key, &record)?;
        }
        let feed_key = writer.verifying_key().to_bytes();
        let lamport = store.max_lamport(&keys.discovery_key)?;
        let (updates, _) = broadcast::channel(UPDATE_CAPACITY);
        Ok(Self {
            discovery_key: keys.discovery_key,
            id: room_id(&keys.discovery_key),
            name: record.name.clone(),
            own_cipher: keys.content_key.map(|k| FeedCipher::new(&k, &feed_key)),
            keys,
            secret,
            writer,
            feed_key,
            lamport: AtomicU64::new(lamport),
            append_lock: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            append_turn: tokio::sync::Mutex::new(()),
            ciphers: Mutex::new(HashMap::new()),
            updates,
            store: store.clone(),
            events,
            progress: Mutex::new(Progress::default()),
            received: AtomicU64::new(0),
            served: AtomicU64::new(0),
            fetches: Mutex::new(Fetches::default()),
            released: broadcast::channel(UPDATE_CAPACITY).0,
            names: RwLock::new(None),
            own_seen: AtomicU64::new(0),
            own_durable: Mutex::new(store.feed_meta(&feed_key)?.and_then(|m| m.head)),
            own_ahead: AtomicU64::new(0),
            over_quota: Mutex::new(HashSet::new()),
            chunk_wants: Mutex::new(ChunkWants::default()),
            chunk_events: broadcast::channel(UPDATE_CAPACITY).0,
            chunk_parts: Mutex::new(HashMap::new()),
            cancel,
        })
    }

    /// The invite that lets someone else join (None for a blind seeder).
    pub fn invite(&self) -> Option<String> {
        self.secret.as_ref().map(RoomSecret::to_invite)
    }

    /// The seed capability that lets a daemon store and serve the room without reading it.
    pub fn seed_capability(&self) -> String {
        SeedCapability::of(&self.keys).to_text()
    }

    /// Whether we only seed this room (no content key).
    pub fn is_seeder(&self) -> bool {
        self.keys.content_key.is_none()
    }

    /// Subscribes to head updates of this room.
    pub fn subscribe(&self) -> broadcast::Receiver<HeadUpdate> {
        self.updates.subscribe()
    }

    fn cipher(&self, feed: &Key32) -> Option<FeedCipher> {
        let content_key = self.keys.content_key.as_ref()?;
        let mut map = self.ciphers.lock().unwrap_or_else(|p| p.into_inner());
        Some(map.entry(*feed).or_insert_with(|| FeedCipher::new(content_key, feed)).clone())
    }

    /// Takes note of stored messages: the Lamport clock, and the chunks of `file`
    /// messages (we serve a chunk to a room's peers only if a file of the room names it).
    fn observe(&self, messages: &[StoredMessage]) {
        if let Some(max) = messages.iter().map(|m| m.message.lamport).max() {
            self.lamport.fetch_max(max, Ordering::AcqRel);
        }
        for m in messages {
            let noted = match &m.message.body {
                Some(Body::File { chunks, .. }) => self.store.note_chunks(&self.discovery_key, chunks),
                Some(Body::Profile { display_name }) => {
                    if let Some(names) = self.names.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
                        names.insert(m.feed_key, display_name.clone());
                    }
                    self.store.note_profile(&self.discovery_key, &m.feed_key, display_name, m.message.lamport)
                }
                _ => Ok(()),
            };
            if let Err(e) = noted {
                warn!(room = %self.id, error = %e, "cannot index a message");
            }
        }
    }

    /// A writer's display name (from its newest `Profile` message), if it gave one.
    pub fn display_name(&self, feed: &Key32) -> Option<String> {
        if let Some(names) = self.names.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return names.get(feed).cloned();
        }
        let loaded = self.store.profiles(&self.discovery_key).unwrap_or_default();
        let name = loaded.get(feed).cloned();
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        name
    }

    /// Our proof that we write `feed_key` from `peer` in this room (`Frame::Writer`).
    pub fn writer_proof(&self, peer: &PeerId) -> Vec<u8> {
        use ed25519_dalek::Signer;
        let bytes = peerlog_proto::wire::writer_proof_bytes(&self.discovery_key, &peer.to_bytes());
        self.writer.sign(&bytes).to_bytes().to_vec()
    }

    /// Our feed's length that some room peer holds (from their `Have`s): our messages
    /// below it were seen by at least one peer. Reported upward only.
    pub fn saw_own_length(&self, length: u64) {
        let before = self.own_seen.fetch_max(length, Ordering::AcqRel);
        if length > before {
            let _ = self.events.send(DaemonEvent::Seen { room: self.discovery_key, length });
        }
    }

    /// How many of our entries some room peer is known to hold.
    pub fn own_seen(&self) -> u64 {
        self.own_seen.load(Ordering::Acquire)
    }

    /// The room's content key (None for a blind seeder).
    pub fn content_key(&self) -> Option<&Key32> {
        self.keys.content_key.as_ref()
    }

    /// Reads and decrypts one stored message.
    pub fn message(&self, feed: &Key32, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let Some(cipher) = self.cipher(feed) else { return Err(StoreError::Blind) };
        let Some(entry) = self.store.entries(feed, seq, seq + 1)?.pop() else { return Ok(None) };
        let message = cipher.open(seq, &entry).ok().and_then(|p| crate::log::Message::decode(&p));
        Ok(message.map(|message| StoredMessage { feed_key: *feed, seq, message }))
    }

    /// Asks the room's peers for chunks (one more waiter each).
    pub fn want_chunks(&self, ids: &[Key32]) {
        self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner()).want(ids.iter().copied());
        let _ = self.chunk_events.send(ChunkEvent::Wanted);
    }

    /// A download stopped waiting for `ids`.
    pub fn unwant_chunks(&self, ids: &[Key32]) {
        self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner()).unwant(ids);
    }

    /// Hears about wanted and stored chunks.
    pub fn subscribe_chunks(&self) -> broadcast::Receiver<ChunkEvent> {
        self.chunk_events.subscribe()
    }

    /// The next chunk `session` should ask its peer for, if it may ask for more.
    pub fn next_chunk_for(&self, session: SessionId, in_flight_max: usize) -> Option<Key32> {
        let mut wants = self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner());
        if wants.in_flight(session) >= in_flight_max {
            return None;
        }
        wants.next_for(session)
    }

    /// Whether `session` asked its peer for chunk `id`.
    pub fn chunk_asked(&self, session: SessionId, id: &Key32) -> bool {
        self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner()).asked(session, id)
    }

    /// Bytes of chunk `id` received so far (parts that came over relayed sessions).
    pub fn chunk_part_len(&self, id: &Key32) -> u32 {
        self.chunk_parts.lock().unwrap_or_else(|p| p.into_inner()).get(id).map_or(0, |b| b.len() as u32)
    }

    /// Adds bytes `offset..` of chunk `id` (of `total` bytes); returns the whole chunk once
    /// complete. Parts must come in order; one that does not fit starts nothing.
    pub fn chunk_part(&self, id: &Key32, offset: u32, total: u32, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut parts = self.chunk_parts.lock().unwrap_or_else(|p| p.into_inner());
        if offset == 0 && bytes.len() as u64 == u64::from(total) {
            parts.remove(id);
            return Some(bytes.to_vec());
        }
        if !parts.contains_key(id) && parts.len() >= MAX_CHUNK_PARTS {
            return None;
        }
        let buf = parts.entry(*id).or_default();
        if offset == 0 {
            buf.clear();
        }
        if buf.len() as u64 != u64::from(offset) || buf.len() + bytes.len() > total as usize {
            return None;
        }
        buf.extend_from_slice(bytes);
        if buf.len() == total as usize {
            return parts.remove(id);
        }
        None
    }

    /// Forgets what arrived of chunk `id` (it was bad).
    pub fn drop_chunk_part(&self, id: &Key32) {
        self.chunk_parts.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Chunk `id` is stored.
    pub fn chunk_stored(&self, id: &Key32, bytes: u64) {
        self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner()).done(id);
        let _ = self.chunk_events.send(ChunkEvent::Stored { id: *id, bytes });
    }

    /// `session`'s peer lacks chunk `id` or sent a bad copy: another session may fetch it.
    pub fn chunk_lacking(&self, session: SessionId, id: &Key32) {
        self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner()).lacking(session, id);
        let _ = self.chunk_events.send(ChunkEvent::Wanted);
    }

    /// A session ended: the chunks it was fetching go to others.
    pub fn chunk_session_ended(&self, session: SessionId) {
        self.chunk_wants.lock().unwrap_or_else(|p| p.into_inner()).session_ended(session);
        let _ = self.chunk_events.send(ChunkEvent::Wanted);
    }

    /// Appends like [`Room::append`], but concurrent callers share one append: whoever gets
    /// the turn appends everything queued so far as one batch with one signed head, and
    /// each caller gets its own messages back, with the batch's head. Group commit at the
    /// append level: under concurrent senders one signature, block and metadata write serve
    /// them all. Nothing is announced: the caller calls [`Room::announce`] once it is durable.
    pub async fn append_grouped(&self, bodies: Vec<Body>) -> Result<Appended, Arc<StoreError>> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(PendingAppend { bodies, reply });
        {
            let _turn = self.append_turn.lock().await;
            let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            // Empty when an earlier turn already took ours.
            if !batch.is_empty() {
                let mut counts = Vec::with_capacity(batch.len());
                let mut replies = Vec::with_capacity(batch.len());
                let mut all = Vec::new();
                for p in batch {
                    counts.push(p.bodies.len());
                    replies.push(p.reply);
                    all.extend(p.bodies);
                }
                match self.append(all) {
                    Ok(appended) => {
                        let mut messages = appended.messages.into_iter();
                        for (n, reply) in counts.into_iter().zip(replies) {
                            let mine = messages.by_ref().take(n).collect();
                            let _ = reply.send(Ok(Appended { head: appended.head.clone(), messages: mine }));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
        result.await.unwrap_or_else(|_| Err(Arc::new(StoreError::Corrupt("append queue"))))
    }

    /// Appends to our feed. Not durable and not announced: the caller flushes, then calls
    /// [`Room::announce`].
    pub fn append(&self, bodies: Vec<Body>) -> Result<Appended, StoreError> {
        let n = bodies.len() as u64;
        let cipher = self.own_cipher.as_ref().ok_or(StoreError::Blind)?;
        let appended = {
            let _guard = self.append_lock.lock().unwrap_or_else(|p| p.into_inner());
            let ahead = self.own_ahead.load(Ordering::Acquire);
            if ahead > 0 && self.store.feed_meta(&self.feed_key)?.map_or(0, |m| m.length()) < ahead {
                return Err(StoreError::OwnFeedBehind);
            }
            // Checked: the clock stays within LAMPORT_MAX (received clocks are bounded too).
            let before = self
                .lamport
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_add(n).filter(|&v| v <= LAMPORT_MAX))
                .map_err(|_| StoreError::ClockExhausted)?;
            let first = before + 1;
            self.store.append(&self.discovery_key, &self.writer, cipher, first, bodies)?
        };
        self.observe(&appended.messages);
        Ok(appended)
    }

    /// Our appended `messages` under `head` are durable: peers may hear of them now, and
    /// API clients see them.
    pub fn announce(&self, head: &SignedHead, messages: &[StoredMessage]) {
        let newer = {
            let mut durable = self.own_durable.lock().unwrap_or_else(|p| p.into_inner());
            let newer = durable.as_ref().is_none_or(|d| d.seq < head.seq);
            if newer {
                *durable = Some(head.clone());
            }
            newer
        };
        if newer {
            let _ = self.updates.send(HeadUpdate { head: head.clone(), origin: None });
        }
        for m in messages {
            let _ = self.events.send(DaemonEvent::Message { room: self.discovery_key, message: m.clone() });
        }
    }

    /// The heads of the room's feeds to tell peers about: as stored, but for our own feed
    /// the durable head only (see `own_durable`).
    pub fn heads(&self) -> Result<Vec<SignedHead>, StoreError> {
        let mut heads = self.store.room_heads(&self.discovery_key)?;
        let durable = self.own_durable.lock().unwrap_or_else(|p| p.into_inner()).clone();
        heads.retain(|h| h.feed_key != self.feed_key);
        heads.extend(durable);
        Ok(heads)
    }

    /// Entries of our feed that are durable (peers are served no more than that).
    pub fn own_durable_length(&self) -> u64 {
        self.own_durable.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, SignedHead::length)
    }

    /// A peer holds our feed up to `length` entries; if that is more than we hold, we fetch
    /// the rest before writing on (see `own_ahead`).
    pub fn saw_own_head(&self, length: u64) -> bool {
        let ours = self.store.feed_meta(&self.feed_key).ok().flatten().map_or(0, |m| m.length());
        if length > ours {
            let before = self.own_ahead.fetch_max(length, Ordering::AcqRel);
            if before < length {
                warn!(room = %self.id, ours, theirs = length, "a peer holds more of our feed than we do (restored or copied data dir?); fetching it before writing on");
            }
            return true;
        }
        false
    }

    /// Claims the next piece of a feed for `session` to fetch (see [`crate::fetch`]):
    /// `(feed, start, end)`, or None when the candidates offer nothing unclaimed.
    pub fn claim_piece(&self, session: SessionId, candidates: &[Candidate]) -> Option<(Key32, u64, u64)> {
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.claim(session, candidates, |feed| self.store.feed_meta(feed).ok().flatten().unwrap_or_default())
    }

    /// How many pieces `session` still waits for.
    pub fn pieces_awaited(&self, session: SessionId) -> usize {
        self.fetches.lock().unwrap_or_else(|p| p.into_inner()).awaited_by(session)
    }

    /// `session` will not bring (more of) `feed`: its peer lacks it, or sent entries that
    /// failed verification (then, with `refuse`, it is not asked for the feed again).
    pub fn fetch_failed(&self, session: SessionId, feed: &Key32, refuse: bool) {
        self.fetches.lock().unwrap_or_else(|p| p.into_inner()).release_feed(session, feed, refuse);
        let _ = self.released.send(*feed);
    }

    /// Tells the room's sessions to look at `feed` again: entries of it went missing here
    /// (damaged blocks forgotten) and are to be fetched from peers.
    pub fn refetch(&self, feed: &Key32) {
        let _ = self.released.send(*feed);
    }

    /// Releases every claim of a session that ended, and drops what it sent that is held.
    pub fn release_fetches(&self, session: SessionId) {
        let feeds = self.fetches.lock().unwrap_or_else(|p| p.into_inner()).release_session(session);
        for feed in feeds {
            let _ = self.released.send(feed);
        }
    }

    /// Records that a writer reached a quota: said once (a warning, an event), and its
    /// entries are no longer asked for.
    fn reached_quota(&self, feed: &Key32, quota: QuotaKind) {
        if self.over_quota.lock().unwrap_or_else(|p| p.into_inner()).insert(*feed) {
            warn!(room = %self.id, writer = %hex::encode(&feed[..8]), %quota, "a writer reached the room's quota: storing no more of it");
            let _ = self.events.send(DaemonEvent::WriterQuota { room: self.discovery_key, writer: *feed, quota });
        }
    }

    /// Whether this daemon takes no (more) entries of `feed`: the writer is blocked here, or
    /// reached a quota.
    pub fn refuses(&self, feed: &Key32) -> bool {
        self.over_quota.lock().unwrap_or_else(|p| p.into_inner()).contains(feed)
            || self.store.is_blocked(&self.discovery_key, feed).unwrap_or(false)
    }

    /// Takes entries a session received: verifies and stores them, or, when they belong to
    /// a piece that cannot be verified before the one above it is stored, holds them in
    /// memory until it is. Returns what was stored (None: held).
    pub fn receive(
        &self,
        feed: &Key32,
        start: u64,
        entries: Vec<Entry>,
        anchor: Option<&SignedHead>,
        session: SessionId,
    ) -> Result<Option<Ingested>, IngestError> {
        self.received.fetch_add(entries.len() as u64, Ordering::Relaxed);
        let end = start + entries.len() as u64;
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.arrived(session, feed, start, end);
        if anchor.is_none() && fetches.is_claimed_by(session, feed, start, end) {
            let meta = self.store.feed_meta(feed)?.unwrap_or_default();
            let verifiable = meta.has(end) || meta.head.as_ref().is_some_and(|h| h.seq + 1 == end);
            if !verifiable {
                if !fetches.hold(Held { feed: *feed, start, entries, session }) {
                    debug!(room = %self.id, "verification hold is full; the piece will be fetched again");
                    fetches.release_feed(session, feed, false);
                    drop(fetches);
                    let _ = self.released.send(*feed);
                }
                return Ok(None);
            }
        }
        drop(fetches);
        let ingested = self.ingest(feed, start, &entries, anchor, session)?;
        self.after_stored(feed);
        Ok(Some(ingested))
    }

    /// Entries of `feed` were stored: settle the claims they complete and store the held
    /// batches that can now be verified.
    fn after_stored(&self, feed: &Key32) {
        loop {
            let Ok(meta) = self.store.feed_meta(feed).map(Option::unwrap_or_default) else { return };
            let (ready, settled) = {
                let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
                let settled = fetches.settle(feed, &meta);
                (fetches.take_ready(feed, &meta), settled)
            };
            if settled {
                let _ = self.released.send(*feed);
            }
            let Some(held) = ready else { return };
            if let Err(e) = self.ingest(feed, held.start, &held.entries, None, held.session) {
                warn!(room = %self.id, feed = %hex::encode(&feed[..8]), start = held.start, error = %e, "held entries failed verification; nothing stored");
                self.fetch_failed(held.session, feed, !matches!(e, IngestError::Store(_)));
            }
        }
    }

    /// Hears about released fetch claims.
    pub fn subscribe_released(&self) -> broadcast::Receiver<Key32> {
        self.released.subscribe()
    }

    /// Notes that a peer has a head of `feed` with `length` entries and (as it says)
    /// `bytes` bytes of it (for progress).
    pub fn saw_length(&self, feed: &Key32, length: u64, bytes: Option<u64>) {
        self.record_progress(feed, Some((length, bytes.unwrap_or(0))), None);
    }

    /// Updates catch-up accounting and emits `SyncProgress` when something changed, at most
    /// every `PROGRESS_INTERVAL` unless sync just completed.
    fn record_progress(&self, feed: &Key32, seen: Option<(u64, u64)>, stored: Option<(u64, u64)>) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if !p.feeds.contains_key(feed) && p.feeds.len() >= MAX_PROGRESS_FEEDS && stored.is_none() {
            return;
        }
        if !p.feeds.contains_key(feed) {
            let entries = self.store.feed_meta(feed).ok().flatten().map_or(0, |m| m.stored());
            let bytes = self.store.feed_bytes(feed).unwrap_or(0);
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
        let now = std::time::Instant::now();
        let due = p.last_emit.is_none_or(|t| now.duration_since(t) >= PROGRESS_INTERVAL);
        if sum.entries_seen > 0 && (sum.entries_done >= sum.entries_seen || due) {
            p.last_emit = Some(now);
            let _ = self.events.send(DaemonEvent::SyncProgress {
                room: self.discovery_key,
                entries_done: sum.entries_done,
                entries_total: sum.entries_seen,
                bytes_done: sum.bytes_done,
                bytes_total: sum.bytes_seen,
            });
        }
    }

    /// Verifies and stores entries from a peer, then announces what is new.
    fn ingest(
        &self,
        feed: &Key32,
        start: u64,
        entries: &[Entry],
        anchor: Option<&SignedHead>,
        origin: SessionId,
    ) -> Result<Ingested, IngestError> {
        let cipher = self.cipher(feed);
        // A blind seeder verifies chain and signatures, and stores the ciphertext as it is.
        let clock_limit = self.lamport.load(Ordering::Acquire).saturating_add(LAMPORT_LEAD).min(LAMPORT_MAX);
        // Our own feed, fetched back from a peer, is ours to hold whatever its size.
        let quota = if *feed == self.feed_key { WriterQuota::NONE } else { self.store.writer_quota() };
        let attempt = || {
            self.store.ingest_bounded(
                &self.discovery_key,
                cipher.as_ref(),
                feed,
                start,
                entries,
                anchor,
                clock_limit,
                &quota,
            )
        };
        let ingested = match attempt() {
            // A damaged stored block next to the batch: forget it (it is fetched again) and
            // take the batch on its own anchor, rather than refuse this writer for good.
            Err(IngestError::Store(StoreError::Corrupt(_))) if !self.store.forget_damaged(feed)?.is_empty() => {
                self.refetch(feed);
                attempt()
            }
            other => other,
        }
        .inspect_err(|e| {
            if let IngestError::Quota(kind) = e {
                self.reached_quota(feed, *kind);
            }
        })?;
        if ingested.stored > 0 {
            self.record_progress(feed, None, Some((ingested.stored, ingested.bytes)));
        }
        self.observe(&ingested.messages);
        if let Some(head) = &ingested.new_head {
            if *feed == self.feed_key {
                // Our own entries, fetched back from a peer that holds them.
                let mut durable = self.own_durable.lock().unwrap_or_else(|p| p.into_inner());
                if durable.as_ref().is_none_or(|d| d.seq < head.seq) {
                    *durable = Some(head.clone());
                }
            }
            let _ = self.updates.send(HeadUpdate { head: head.clone(), origin: Some(origin) });
        }
        for m in &ingested.messages {
            let _ = self.events.send(DaemonEvent::Message { room: self.discovery_key, message: m.clone() });
        }
        Ok(ingested)
    }
}

/// The registry of joined rooms.
pub struct Rooms {
    map: RwLock<HashMap<Key32, Arc<Room>>>,
    /// Events for API clients.
    pub events: broadcast::Sender<DaemonEvent>,
}

impl Default for Rooms {
    fn default() -> Self {
        Self { map: RwLock::new(HashMap::new()), events: broadcast::channel(EVENT_CAPACITY).0 }
    }
}

impl Rooms {
    /// The room with this discovery key.
    pub fn get(&self, discovery_key: &Key32) -> Option<Arc<Room>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(discovery_key).cloned()
    }

    /// Finds a room by id, unique id prefix, name or full discovery key hex.
    pub fn find(&self, query: &str) -> Option<Arc<Room>> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.values().find(|r| r.id == query || hex::encode(r.discovery_key) == query) {
            return Some(r.clone());
        }
        let by_name: Vec<_> = map.values().filter(|r| r.name == query).collect();
        if by_name.len() == 1 {
            return Some(by_name[0].clone());
        }
        let by_prefix: Vec<_> = map.values().filter(|r| query.len() >= 4 && r.id.starts_with(query)).collect();
        (by_prefix.len() == 1).then(|| by_prefix[0].clone())
    }

    /// All rooms, sorted by name.
    pub fn list(&self) -> Vec<Arc<Room>> {
        let mut v: Vec<_> = self.map.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        v
    }

    /// Adds a room; returns the existing one instead if already joined.
    pub fn insert(&self, room: Room) -> (Arc<Room>, bool) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&room.discovery_key) {
            return (existing.clone(), false);
        }
        let room = Arc::new(room);
        map.insert(room.discovery_key, room.clone());
        (room, true)
    }

    /// Removes a room.
    pub fn remove(&self, discovery_key: &Key32) -> Option<Arc<Room>> {
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(discovery_key)
    }
}
