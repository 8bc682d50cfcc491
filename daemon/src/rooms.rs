//! Joined rooms at run time: each [`Room`] holds its keys, our writer for it, the Lamport
//! clock and our own appends, and tells the room's replication task (`replicate::driver`)
//! what happened here ([`Local`]). [`Rooms`] is the registry and the source of
//! [`DaemonEvent`]s for API clients.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use peerlog_proto::wire::{Alive, ChunkId, DiscoveryKey, Entry, FeedKey, Key32, SignedHead};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::keys::seal::Sealed;
use crate::keys::{self, room_id, RoomKeys, RoomSecret, SeedCapability};
use crate::log::index::FollowUps;
use crate::log::store::{
    Access, Appended, IngestError, Ingested, QuotaKind, RoomRecord, Rotation, StoreError, StoredMessage, WriterQuota,
};
use crate::log::{
    new_writer, Body, FeedCipher, MessageRef, Store, LAMPORT_LEAD, LAMPORT_MAX, ROTATE_REMOVED_MAX, ROTATE_SEALED_MAX,
};

/// Capacity of each room's chunk-event channel.
const CHUNK_EVENT_CAPACITY: usize = 1024;
/// Capacity of the daemon event channel (slow API clients see `Lagged`).
const EVENT_CAPACITY: usize = 4096;

/// What happened here that the room's replication task must hear about. Unbounded: each
/// is a few bytes, sent at most once per API request or download (both bounded).
#[derive(Debug)]
pub enum Local {
    /// Our appended entries are durable up to this head: peers may hear of them.
    Appended(SignedHead),
    /// A download wants these chunks (one more waiter each).
    WantChunks(Vec<ChunkId>),
    /// A download stopped waiting for these.
    UnwantChunks(Vec<ChunkId>),
    /// Entries of a feed went missing here (damaged blocks forgotten): fetch them again.
    Refetch(FeedKey),
}

/// Something API clients hear about.
#[derive(Clone, Debug)]
pub enum DaemonEvent {
    /// A message was stored (written here or received).
    Message {
        /// The room's discovery key.
        room: DiscoveryKey,
        /// The message.
        message: StoredMessage,
    },
    /// A replication session with a room peer was authenticated.
    PeerJoined {
        /// The room.
        room: DiscoveryKey,
        /// The peer.
        peer: PeerId,
        /// How we are connected to it (if known).
        kind: Option<crate::node::ConnectionKind>,
    },
    /// A replication session with a room peer ended.
    PeerLeft {
        /// The room.
        room: DiscoveryKey,
        /// The peer.
        peer: PeerId,
    },
    /// Catching up: entries stored of those the room's peers have shown us.
    SyncProgress {
        /// The room.
        room: DiscoveryKey,
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
        room: DiscoveryKey,
        /// Entries of our feed some peer holds.
        length: u64,
    },
    /// A file is being read in (sending) or fetched (receiving).
    FileProgress {
        /// The room.
        room: DiscoveryKey,
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
        room: DiscoveryKey,
        /// The writer's feed key.
        writer: FeedKey,
        /// Which quota.
        quota: QuotaKind,
    },
    /// A person unlinked one of their devices (a verified `Unlink` entry): the room's
    /// admins remove its writers.
    Unlinked {
        /// The room.
        room: DiscoveryKey,
        /// The device key.
        device: Key32,
        /// The writer of the `Unlink` entry.
        by: FeedKey,
    },
    /// A member's first entry in a room made by a removal says which writer it was in the
    /// room before (a verified `Continues` entry).
    Continued {
        /// The room.
        room: DiscoveryKey,
        /// The member's writer here.
        writer: FeedKey,
        /// Its writer in the room before.
        from: FeedKey,
    },
    /// The room took a rotation to follow (a `Rotate` entry that comes first): the
    /// service moves on to the new room if the new secret was sealed to us.
    Rotated {
        /// The room.
        room: DiscoveryKey,
    },
    /// A room moved on: its members went to a new epoch (we with them, or, for a room
    /// made by a removal that lost to an earlier one, to the winner's), or we were removed.
    Moved {
        /// The room.
        room: DiscoveryKey,
    },
    /// The best connection to a room peer changed (e.g. relayed → holepunched).
    PeerConnection {
        /// The peer.
        peer: PeerId,
        /// The new kind.
        kind: crate::node::ConnectionKind,
        /// The rooms it shares with us.
        rooms: Vec<DiscoveryKey>,
    },
}

/// A joined room.
pub struct Room {
    /// The discovery key: the room's identity on the wire.
    pub discovery_key: DiscoveryKey,
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
    pub feed_key: FeedKey,
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
    ciphers: Mutex<HashMap<FeedKey, FeedCipher>>,
    /// Where the room's feeds are stored.
    store: Store,
    /// Where API clients hear about new messages.
    events: broadcast::Sender<DaemonEvent>,
    /// Entries received from peers since the daemon started, stored or not (duplicates,
    /// refused): with `served`, shows what sync costs. Kept by the replication task.
    pub received: AtomicU64,
    /// Entries sent to peers since the daemon started. Kept by the replication task.
    pub served: AtomicU64,
    /// Frames received on the room's sessions since the daemon started (replication task).
    pub frames_received: AtomicU64,
    /// Frames sent on them (replication task).
    pub frames_sent: AtomicU64,
    /// Entries the room's peers have shown us that are not stored here yet (the catch-up
    /// backlog, from the last `SyncProgress`).
    pub backlog: AtomicU64,
    /// Entries of our feed that some peer is known to hold. Kept by the replication task.
    own_seen: AtomicU64,
    /// The longest copy of our feed a peer showed us (a restored or copied data dir may
    /// hold less than peers do): we fetch it before writing on.
    own_ahead: AtomicU64,
    /// Writers' display names, loaded on first use.
    names: RwLock<Option<HashMap<FeedKey, String>>>,
    /// Chunk arrivals, for downloads.
    chunk_events: broadcast::Sender<ChunkEvent>,
    /// When each member was last known online (ms since the epoch, from their signed
    /// presence records). Kept by the replication task.
    presence: RwLock<HashMap<FeedKey, u64>>,
    /// To the room's replication task.
    local: mpsc::UnboundedSender<Local>,
    /// Its other end, until the task takes it.
    local_rx: Mutex<Option<mpsc::UnboundedReceiver<Local>>>,
    /// Cancelled when the room is left or the daemon stops.
    pub cancel: CancellationToken,
}

/// What downloads hear about chunks.
#[derive(Clone, Debug)]
pub enum ChunkEvent {
    /// A chunk was stored.
    Stored {
        /// Its id.
        id: ChunkId,
        /// Its size (ciphertext).
        bytes: u64,
    },
}

/// An append waiting for its turn, and where its messages (and the batch's head) go.
struct PendingAppend {
    bodies: Vec<Body>,
    reply: tokio::sync::oneshot::Sender<Result<Appended, Arc<StoreError>>>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("id", &self.id).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Room {
    /// Builds the run-time room from its stored record.
    pub fn new(
        discovery_key: &DiscoveryKey,
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
        if keys.content_key.is_some() && !store.feed_clocks_valid(&FeedKey(writer.verifying_key().to_bytes()))? {
            // An older version let a hostile clock wrap ours: peers refuse our feed from
            // there on, and a signed feed cannot be rewritten. Write on under a new key.
            warn!(room = %room_id(&keys.discovery_key), "our feed's clocks do not rise (a hostile clock wrapped them); writing on under a new writer key");
            writer = new_writer();
            let mut record = record.clone();
            record.writer = writer.to_bytes();
            store.put_room(discovery_key, &record)?;
        }
        let feed_key = FeedKey(writer.verifying_key().to_bytes());
        let lamport = store.max_lamport(&keys.discovery_key)?;
        let (local, local_rx) = mpsc::unbounded_channel();
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
            store: store.clone(),
            events,
            received: AtomicU64::new(0),
            served: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            names: RwLock::new(None),
            own_seen: AtomicU64::new(0),
            presence: RwLock::new(HashMap::new()),
            own_ahead: AtomicU64::new(0),
            chunk_events: broadcast::channel(CHUNK_EVENT_CAPACITY).0,
            local,
            local_rx: Mutex::new(Some(local_rx)),
            cancel,
        })
    }

    /// The invite that lets someone else join (None for a blind seeder): with the room's
    /// admin bound in, if it has one. It suggests the room's name, unless that is the
    /// default one.
    pub fn invite(&self) -> Result<Option<String>, StoreError> {
        let named = self.name != keys::default_room_name(&self.discovery_key);
        let Some(secret) = self.secret.clone() else { return Ok(None) };
        let key = match self.store.admin_binding(&self.discovery_key)? {
            Some(bound) => keys::InviteKey::Bound(bound),
            None => keys::InviteKey::Secret(secret),
        };
        Ok(Some(keys::Invite { key, name: named.then(|| self.name.clone()) }.to_text()))
    }

    /// The seed capability that lets a daemon store and serve the room without reading it.
    pub fn seed_capability(&self) -> String {
        SeedCapability::of(&self.keys).to_text()
    }

    /// Whether we only seed this room (no content key).
    pub fn is_seeder(&self) -> bool {
        self.keys.content_key.is_none()
    }

    /// What happened here, for the room's replication task (taken once).
    pub fn take_local(&self) -> Option<mpsc::UnboundedReceiver<Local>> {
        self.local_rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn tell(&self, local: Local) {
        // Nobody listens once the room's task ended (the room was left, the daemon stops).
        let _ = self.local.send(local);
    }

    fn cipher(&self, feed: &FeedKey) -> Option<FeedCipher> {
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
        let follow_ups: Vec<(FeedKey, u64, &Body)> = messages
            .iter()
            .filter_map(|m| m.message.body.as_ref().filter(|b| b.target().is_some()).map(|b| (m.feed_key, m.seq, b)))
            .collect();
        if let Err(e) = self.store.note_follow_ups(&self.discovery_key, &follow_ups) {
            warn!(room = %self.id, error = %e, "cannot index edits and reactions");
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
                Some(Body::Rotate { removed, kept, sealed, admin }) => {
                    self.note_rotation(m, removed, kept, sealed, *admin)
                }
                Some(Body::Admin { member, admin }) => self.note_admin(m, member, *admin),
                Some(Body::Device { proof }) if proof.verify(&self.discovery_key, &m.feed_key) => {
                    self.store.note_device(&self.discovery_key, &m.feed_key, m.seq, &proof.person, &proof.device)
                }
                Some(Body::Unlink { person, device, signature })
                    if keys::device::verify_unlink(person, device, signature) =>
                {
                    let noted = self.store.note_unlink(&self.discovery_key, person, device, &m.feed_key);
                    let _ = self.events.send(DaemonEvent::Unlinked {
                        room: self.discovery_key,
                        device: *device,
                        by: m.feed_key,
                    });
                    noted
                }
                Some(Body::Continues { from, signature })
                    if crate::log::verify_continuation(&self.discovery_key, &m.feed_key, from, signature) =>
                {
                    let noted = self.store.note_continuation(&self.discovery_key, &m.feed_key, from);
                    let _ = self.events.send(DaemonEvent::Continued {
                        room: self.discovery_key,
                        writer: m.feed_key,
                        from: *from,
                    });
                    noted
                }
                _ => Ok(()),
            };
            if let Err(e) = noted {
                warn!(room = %self.id, error = %e, "cannot index a message");
            }
        }
    }

    /// Takes note of an `Admin` entry if the admin bound into the room's keys wrote it; a
    /// rotation by the member named may count now.
    fn note_admin(&self, m: &StoredMessage, member: &FeedKey, admin: bool) -> Result<(), StoreError> {
        let bound = self.store.admin_binding(&self.discovery_key)?;
        if bound.is_none_or(|b| b.admin != m.feed_key) {
            return Ok(());
        }
        self.store.note_admin_grant(&self.discovery_key, member, m.seq, admin)?;
        if self.store.rechoose_rotation(&self.discovery_key)? {
            let _ = self.events.send(DaemonEvent::Rotated { room: self.discovery_key });
        }
        Ok(())
    }

    /// Takes a well-formed `Rotate` entry as a candidate for the room's rotation (the choice
    /// among candidates, and who may remove whom: `Store::note_rotation`). Well formed: a
    /// member does not remove itself, nobody removed is sealed the new secret, and the heads
    /// kept are the removed writers' and verify.
    fn note_rotation(
        &self,
        m: &StoredMessage,
        removed: &[FeedKey],
        kept: &[SignedHead],
        sealed: &[Sealed],
        admin: FeedKey,
    ) -> Result<(), StoreError> {
        let well_formed = !removed.is_empty()
            && removed.len() <= ROTATE_REMOVED_MAX
            && kept.len() <= removed.len()
            && kept.iter().enumerate().all(|(i, h)| {
                removed.contains(&h.feed_key)
                    && !kept[..i].iter().any(|o| o.feed_key == h.feed_key)
                    && crate::log::verify_head(&self.discovery_key, h)
            })
            && sealed.len() <= ROTATE_SEALED_MAX
            && !removed.contains(&m.feed_key)
            && !sealed.iter().any(|s| removed.contains(&s.to));
        if !well_formed {
            warn!(room = %self.id, author = %hex::encode(m.feed_key), "ignoring a malformed rotation");
            return Ok(());
        }
        let rotation = Rotation {
            at: m.at(),
            lamport: m.message.lamport,
            removed: removed.to_vec(),
            kept: kept.to_vec(),
            sealed: sealed.to_vec(),
            admin,
            next: None,
            superseded: vec![],
        };
        if self.store.note_rotation(&self.discovery_key, &rotation)? {
            let _ = self.events.send(DaemonEvent::Rotated { room: self.discovery_key });
        }
        Ok(())
    }

    /// Opens the new room secret of a rotation, if it was sealed to our writer here.
    pub fn open_sealed(&self, sealed: &[Sealed]) -> Option<RoomSecret> {
        let ours = sealed.iter().find(|s| s.to == self.feed_key)?;
        match keys::seal::open(&self.discovery_key, &self.writer, ours) {
            Ok(secret) => Some(secret),
            Err(e) => {
                warn!(room = %self.id, error = %e, "the new room secret sealed to us does not open");
                None
            }
        }
    }

    /// A writer's display name (from its newest `Profile` message), if it gave one.
    pub fn display_name(&self, feed: &FeedKey) -> Option<String> {
        if let Some(names) = self.names.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return names.get(feed).cloned();
        }
        let loaded = self.store.profiles(&self.discovery_key).unwrap_or_default();
        let name = loaded.get(feed).cloned();
        *self.names.write().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
        name
    }

    /// Our `Continues` entry for `next`, the room a removal made of this one, where we write
    /// as `writer`.
    pub fn continuation(&self, next: &DiscoveryKey, writer: &FeedKey) -> Body {
        use ed25519_dalek::Signer;
        let signature = self.writer.sign(&crate::log::continuation_bytes(next, writer)).to_bytes().to_vec();
        Body::Continues { from: self.feed_key, signature }
    }

    /// Our proof that we write `feed_key` from `peer` in this room (`Frame::Writer`).
    pub fn writer_proof(&self, peer: &PeerId) -> Vec<u8> {
        use ed25519_dalek::Signer;
        let bytes = peerlog_proto::wire::writer_proof_bytes(&self.discovery_key, &peer.to_bytes());
        self.writer.sign(&bytes).to_bytes().to_vec()
    }

    /// Our signed record of being online now, for the room's peers (`Frame::Alive`).
    pub fn alive(&self, at_ms: u64) -> Alive {
        use ed25519_dalek::Signer;
        let signature = self.writer.sign(&Alive::signed_bytes(&self.discovery_key, at_ms));
        Alive { feed_key: self.feed_key, at_ms, signature: signature.to_bytes().to_vec() }
    }

    /// Replaces what is known of members' presence (the replication task does).
    pub fn set_presence(&self, seen: Vec<(FeedKey, u64)>) {
        *self.presence.write().unwrap_or_else(|p| p.into_inner()) = seen.into_iter().collect();
    }

    /// The members we hold presence records of.
    pub fn seen_members(&self) -> Vec<FeedKey> {
        self.presence.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect()
    }

    /// When a member was last known online by its signed records (ms since the epoch).
    pub fn last_seen(&self, feed: &FeedKey) -> Option<u64> {
        self.presence.read().unwrap_or_else(|p| p.into_inner()).get(feed).copied()
    }

    /// Our feed's length that some room peer holds (from their `Have`s): our messages
    /// below it were seen by at least one peer.
    pub fn set_own_seen(&self, length: u64) {
        self.own_seen.fetch_max(length, Ordering::AcqRel);
    }

    /// How many of our entries some room peer is known to hold.
    pub fn own_seen(&self) -> u64 {
        self.own_seen.load(Ordering::Acquire)
    }

    /// The room's content key (None for a blind seeder).
    pub fn content_key(&self) -> Option<&Key32> {
        self.keys.content_key.as_ref()
    }

    /// Reads and decrypts the stored messages of `feed` in `start..end` (those not stored,
    /// or that do not decrypt, are left out).
    pub fn messages(&self, feed: &FeedKey, start: u64, end: u64) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(cipher) = self.cipher(feed) else { return Err(StoreError::Blind) };
        let Some(meta) = self.store.feed_meta(feed)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for &(a, b) in &meta.ranges {
            let (a, b) = (a.max(start), b.min(end));
            if a >= b {
                continue;
            }
            for (i, entry) in self.store.entries(feed, a, b)?.iter().enumerate() {
                let seq = a + i as u64;
                if let Some(message) = cipher.open(seq, entry).ok().and_then(|p| crate::log::Message::decode(&p)) {
                    out.push(StoredMessage { feed_key: *feed, seq, message });
                }
            }
        }
        Ok(out)
    }

    /// The edits, deletion and reactions of a message, folded (none if they cannot be read).
    pub fn follow_ups(&self, target: &MessageRef) -> FollowUps {
        self.store.follow_ups(&self.discovery_key, target).unwrap_or_else(|e| {
            warn!(room = %self.id, error = %e, "cannot read a message's edits and reactions");
            FollowUps::default()
        })
    }

    /// Whether `writer` is blocked in this room.
    pub fn is_blocked(&self, writer: &FeedKey) -> bool {
        self.store.is_blocked(&self.discovery_key, writer).unwrap_or(false)
    }

    /// Reads and decrypts one stored message.
    pub fn message(&self, feed: &FeedKey, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.messages(feed, seq, seq + 1)?.pop())
    }

    /// Asks the room's peers for chunks (one more waiter each).
    pub fn want_chunks(&self, ids: &[ChunkId]) {
        self.tell(Local::WantChunks(ids.to_vec()));
    }

    /// A download stopped waiting for `ids`.
    pub fn unwant_chunks(&self, ids: &[ChunkId]) {
        self.tell(Local::UnwantChunks(ids.to_vec()));
    }

    /// Hears about stored chunks.
    pub fn subscribe_chunks(&self) -> broadcast::Receiver<ChunkEvent> {
        self.chunk_events.subscribe()
    }

    /// Tells API clients.
    pub fn emit(&self, event: DaemonEvent) {
        if let DaemonEvent::SyncProgress { entries_done, entries_total, .. } = &event {
            self.backlog.store(entries_total.saturating_sub(*entries_done), Ordering::Relaxed);
        }
        let _ = self.events.send(event);
    }

    /// Tells downloads about a chunk.
    pub fn chunk_event(&self, event: ChunkEvent) {
        let _ = self.chunk_events.send(event);
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
        self.tell(Local::Appended(head.clone()));
        for m in messages {
            let _ = self.events.send(DaemonEvent::Message { room: self.discovery_key, message: m.clone() });
        }
    }

    /// A peer holds our feed up to `length` entries, more than we hold: appends wait until
    /// we fetched it back (see `own_ahead`).
    pub fn note_own_ahead(&self, length: u64) {
        let before = self.own_ahead.fetch_max(length, Ordering::AcqRel);
        if before < length {
            warn!(room = %self.id, theirs = length, "a peer holds more of our feed than we do (restored or copied data dir?); fetching it before writing on");
        }
    }

    /// Tells the room's sessions to look at `feed` again: entries of it went missing here
    /// (damaged blocks forgotten) and are to be fetched from peers.
    pub fn refetch(&self, feed: &FeedKey) {
        self.tell(Local::Refetch(*feed));
    }

    /// Verifies and stores entries a peer sent (see [`Store::ingest_bounded`]), within the
    /// room's clock bound and the writer's quota. Returns the new messages (API clients
    /// hear of them from the replication task, after its progress report).
    pub fn store_received(
        &self,
        feed: &FeedKey,
        start: u64,
        entries: &[Entry],
        anchor: Option<&SignedHead>,
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
        }?;
        self.observe(&ingested.messages);
        Ok(ingested)
    }
}

/// The registry of joined rooms.
pub struct Rooms {
    map: RwLock<HashMap<DiscoveryKey, Arc<Room>>>,
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
    pub fn get(&self, discovery_key: &DiscoveryKey) -> Option<Arc<Room>> {
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
    pub fn remove(&self, discovery_key: &DiscoveryKey) -> Option<Arc<Room>> {
        self.map.write().unwrap_or_else(|p| p.into_inner()).remove(discovery_key)
    }
}
