//! sled storage: rooms, feeds, entries and the display-order index.
//!
//! Two trees. `rooms`: discovery key → [`RoomRecord`] (secrets; the data dir is 0700).
//! `log`, with one-byte key prefixes so that one atomic sled batch covers an append:
//!
//! | key                                                   | value               |
//! |-------------------------------------------------------|---------------------|
//! | `b` feed_key start                                    | postcard `BlockPtr`: where block `start..` is in the feed's data file |
//! | `l` feed_key start                                    | postcard `BlockIndex`: Lamport clock and time of the same block |
//! | `f` feed_key                                          | postcard [`FeedMeta`] |
//! | `r` discovery_key feed_key                            | (empty)             |
//! | `k` feed_key seq                                      | postcard fork proof |
//! | `s` feed_key                                          | u64: bytes of the feed's data file known synced |
//! | `h` feed_key                                          | (empty): the stored head was signed before heads bound the room (format 2) |
//! | `t` feed_key group                                    | postcard `(covered, filter)`: search filter of entries `group * 64 ..`, made lazily by a search when `covered` differs from the entries stored ([`super::index`]) |
//! | `u` discovery_key feed_key seq                        | postcard [`FollowUps`] of that message: edits, deletion, reactions |
//!
//! Integers are big-endian so that sled's byte order is numeric order. Nothing is stored
//! before it verified: see [`Store::ingest`].
//!
//! Entries are kept in blocks of up to [`BLOCK_ENTRIES`], because sled's cost is per key:
//! one key per message made ingest copy tree nodes for every entry (BENCHMARKS.md has the
//! profile). A block is written once and never changes; blocks of a feed never overlap.
//! Block bytes (postcard `[Entry]`, ciphertext) go to an append-only data file per feed,
//! `blocks/<feed hex>`, not into sled: sled 0.34 keeps what was written in memory whatever
//! its cache limit, which made a daemon that caught up 1,000,000 messages hold 290 MiB.
//! sled keeps only the small pointers, checksummed with BLAKE3.
//!
//! Durability: [`Store::flush`] syncs the data files first and sled second, so a flushed
//! pointer never points at unsynced bytes (sled's log is then fdatasynced by us: sled's own
//! flush ends in `sync_file_range`, which a power cut can undo). sled may still write its
//! log between flushes, so after a power cut it can hold pointers to bytes that never
//! reached the disk. The `s` keys bound where those can be: [`Store::open`] checks every
//! block past its feed's synced length, re-signs our own feed back to its last intact entry
//! (those entries were never acknowledged or announced) and forgets other writers' damaged
//! blocks, which are fetched again; sled's own timer flush is off and the group
//! committer flushes instead (on demand, and every 200 ms while there are writes). The `l` index holds what display order needs (Lamport clock, time)
//! without decrypting; a blind seeder has no content key and keeps no `l` index.
//!
//! Display order is `(lamport, time_ms, feed_key, seq)`. Within a feed the Lamport clock
//! strictly increases with seq (ingest enforces it), so a room's history is a merge of its
//! feeds, newest first, with no per-message index at all.
//!
//! The database is tagged with [`FORMAT`] in the default tree; another format is refused
//! with a clear error instead of being misread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use peerlog_proto::wire::{ChunkId, DiscoveryKey, Entry, FeedKey, Key32, SignedHead};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::disk::{DiskSpace, LowDisk};

use super::index::{self, FollowUps};
use super::{hash_entry, sign_head, verify_head, Body, FeedCipher, Message, MessageRef, LAMPORT_MAX};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled failed (I/O, corruption detected by sled).
    #[error("storage: {0}")]
    Sled(#[from] sled::Error),
    /// Reading or writing a data file failed.
    #[error("data file: {0}")]
    Io(#[from] std::io::Error),
    /// A stored value does not decode.
    #[error("stored {0} does not decode")]
    Corrupt(&'static str),
    /// Writing or reading plaintext needs the content key, which a blind seeder lacks.
    #[error("this daemon seeds the room blindly: it stores and serves ciphertext and cannot read or write messages")]
    Blind,
    /// The database was written in another storage format.
    #[error("the data dir holds store format {found}, this peerlog reads format {FORMAT}; move the data dir aside (or use the peerlog that wrote it)")]
    Format {
        /// The format found.
        found: u32,
    },
    /// Too little free disk space to take new data.
    #[error(transparent)]
    LowDisk(#[from] LowDisk),
    /// An earlier fsync of the data files failed: what was written since may be lost, and
    /// nothing is acknowledged as durable any more.
    #[error("an earlier sync of the data files failed; restart the daemon (after freeing space or fixing the disk)")]
    SyncFailed,
    /// A peer holds more of our own feed than we do: we fetch it before appending, so as
    /// not to sign a seq twice.
    #[error("a peer holds a newer copy of our feed in this room (was this data dir restored or copied?); it is being fetched, try again shortly")]
    OwnFeedBehind,
    /// Our Lamport clock would pass [`LAMPORT_MAX`].
    #[error("the room's Lamport clock is exhausted (it would pass 2^53 - 1)")]
    ClockExhausted,
}

/// Why received entries were refused. Nothing of a refused batch is stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// No signed head or stored successor vouches for the batch's newest entry.
    #[error("entries are not anchored to a signed head")]
    NotAnchored,
    /// An entry's `prev` does not match the hash of its predecessor.
    #[error("hash chain broken at seq {0}")]
    BrokenChain(u64),
    /// The signed head's signature does not verify.
    #[error("bad head signature")]
    BadHead,
    /// An entry failed AEAD authentication or its plaintext is malformed.
    #[error("entry {0} does not decrypt")]
    Decrypt(u64),
    /// The writer's Lamport clock does not increase at this seq.
    #[error("Lamport clock does not increase at seq {0}")]
    Order(u64),
    /// The Lamport clock at this seq is further ahead of the room's than any honest writer's
    /// can be (see [`LAMPORT_LEAD`]), or past [`LAMPORT_MAX`].
    #[error("Lamport clock at seq {0} is too far ahead of the room's")]
    ClockAhead(u64),
    /// The writer signed two different entries for one seq: recorded, not stored.
    #[error("fork detected at seq {0}")]
    Fork(u64),
    /// The feed belongs to another room.
    #[error("feed belongs to another room")]
    WrongRoom,
    /// Sequence numbers overflow.
    #[error("sequence numbers out of range")]
    OutOfRange,
    /// Storing this would take the writer (or the room's count of writers) past its quota.
    #[error("over the {0} quota for one writer in this room")]
    Quota(QuotaKind),
    /// The writer is blocked here (`peers.block`).
    #[error("the writer is blocked here")]
    Blocked,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for IngestError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e.into())
    }
}

/// How we take part in a room.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub enum Access {
    /// A member: the room secret, from which every room key derives.
    Member([u8; 32]),
    /// A blind seeder: the room's auth key only (the discovery key is the record's key).
    Seeder([u8; 32]),
}

/// A joined room as kept on disk.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct RoomRecord {
    /// Member or seeder, with the key material of that role.
    pub access: Access,
    /// Local display name of the room.
    pub name: String,
    /// Our writer key for this room (ed25519 secret; unused by a seeder).
    pub writer: [u8; 32],
    /// When we joined, ms since the epoch.
    pub joined_ms: u64,
}

/// The rotation a room follows: the first valid `Rotate` entry of the room by (Lamport
/// clock, writer, seq), the same on every member, and where we went with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The `Rotate` entry.
    pub at: MessageRef,
    /// Its Lamport clock.
    pub lamport: u64,
    /// The members it removed.
    pub removed: Vec<FeedKey>,
    /// The newest head the remover held of each removed member's feed: later entries
    /// are refused.
    pub kept: Vec<SignedHead>,
    /// The new secret, sealed to each remaining member.
    pub sealed: Vec<crate::keys::seal::Sealed>,
    /// The admin of the new room (the remover's writer key there).
    pub admin: FeedKey,
    /// The room we moved to with it, once joined.
    pub next: Option<DiscoveryKey>,
    /// Rooms we joined by following rotations of this room that an earlier one (by clock)
    /// replaced since: once we follow this one, they say they moved to its room.
    pub superseded: Vec<DiscoveryKey>,
}

impl Rotation {
    /// Each removed writer with what stays of its feed.
    pub fn cuts(&self) -> impl Iterator<Item = (FeedKey, Cut)> + '_ {
        self.removed.iter().map(|feed| {
            let head = self.kept.iter().find(|h| h.feed_key == *feed).cloned();
            (*feed, Cut { length: head.as_ref().map_or(0, SignedHead::length), head })
        })
    }
}

/// What stays of a removed writer's feed: entries below `length`, under `head`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// How many entries stay.
    pub length: u64,
    /// The writer's head over them (none if none stay).
    pub head: Option<SignedHead>,
}

/// What we hold of one feed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedMeta {
    /// Discovery key of the room the feed belongs to.
    pub room: DiscoveryKey,
    /// The newest signed head whose entry is stored.
    pub head: Option<SignedHead>,
    /// Stored seqs as sorted, disjoint, non-adjacent half-open ranges.
    pub ranges: Vec<(u64, u64)>,
}

impl FeedMeta {
    /// Whether entry `seq` is stored.
    pub fn has(&self, seq: u64) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= seq && seq < e)
    }

    /// Whether every entry of `start..end` is stored.
    pub fn has_all(&self, start: u64, end: u64) -> bool {
        start >= end || self.ranges.iter().any(|&(s, e)| s <= start && end <= e)
    }

    /// Number of entries the head covers (0 without a head).
    pub fn length(&self) -> u64 {
        self.head.as_ref().map_or(0, SignedHead::length)
    }

    /// Number of entries stored.
    pub fn stored(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Marks `start..end` stored.
    pub fn add_range(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        self.ranges.push((start, end));
        self.ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
    }

    /// Marks `start..end` missing again.
    pub fn remove_range(&mut self, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e <= start || s >= end {
                kept.push((s, e));
                continue;
            }
            if s < start {
                kept.push((s, start));
            }
            if e > end {
                kept.push((end, e));
            }
        }
        self.ranges = kept;
    }

    /// The gaps in `0..end`, newest first.
    pub fn missing(&self, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut cursor = 0;
        for &(s, e) in &self.ranges {
            if s >= end {
                break;
            }
            if s > cursor {
                gaps.push((cursor, s));
            }
            cursor = e;
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        gaps.reverse();
        gaps
    }

    /// Start of the stored run that contains `seq`.
    pub fn run_start(&self, seq: u64) -> Option<u64> {
        self.ranges.iter().find(|&&(s, e)| s <= seq && seq < e).map(|&(s, _)| s)
    }
}

/// A decrypted message with its place in the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// The writer's feed key.
    pub feed_key: FeedKey,
    /// Position in the writer's feed.
    pub seq: u64,
    /// The plaintext.
    pub message: Message,
}

impl StoredMessage {
    /// Stable id: `<feed key hex>:<seq>`.
    pub fn id(&self) -> String {
        self.at().id()
    }

    /// Where it is: its feed and seq.
    pub fn at(&self) -> MessageRef {
        MessageRef { feed: self.feed_key, seq: self.seq }
    }

    /// Parses an id made by [`StoredMessage::id`].
    pub fn parse_id(id: &str) -> Option<(FeedKey, u64)> {
        MessageRef::parse(id).map(|at| (at.feed, at.seq))
    }
}

/// The result of a successful ingest.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Messages newly stored (decrypted; empty for a blind store).
    pub messages: Vec<StoredMessage>,
    /// Entries newly stored.
    pub stored: u64,
    /// Bytes of the blocks written for them.
    pub bytes: u64,
    /// The feed's new head, if it advanced.
    pub new_head: Option<SignedHead>,
}

/// What an append produced.
#[derive(Debug)]
pub struct Appended {
    /// The new signed head.
    pub head: SignedHead,
    /// The new messages, oldest first.
    pub messages: Vec<StoredMessage>,
}

/// How much the store takes from one writer in one room, and how many writers a room may
/// have: a member can mint writer keys and sign batches without limit, and must not be
/// able to fill everyone's disk. Entries fetched back from our own feed are not counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterQuota {
    /// Most entries of one writer.
    pub entries: u64,
    /// Most bytes of one writer's stored blocks.
    pub bytes: u64,
    /// Most writers (feeds) in one room.
    pub writers: usize,
}

impl WriterQuota {
    /// No quota.
    pub const NONE: Self = Self { entries: u64::MAX, bytes: u64::MAX, writers: usize::MAX };
}

/// Which quota a writer hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaKind {
    /// [`WriterQuota::entries`].
    Entries,
    /// [`WriterQuota::bytes`].
    Bytes,
    /// [`WriterQuota::writers`].
    Writers,
}

impl std::fmt::Display for QuotaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Entries => "entries",
            Self::Bytes => "bytes",
            Self::Writers => "writers",
        })
    }
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    log: sled::Tree,
    rooms: sled::Tree,
    blocks: Arc<DataFiles>,
    /// Serializes the check-then-write part of ingest (anchor checks read what earlier
    /// ingests wrote). Held only around synchronous sled calls, never across an await.
    ingest_lock: Arc<Mutex<()>>,
    /// Bytes of each feed's blocks, counted once per feed and kept up to date by writes.
    feed_bytes: Arc<Mutex<HashMap<FeedKey, u64>>>,
    /// Free space checked before new data is written (see [`crate::disk`]).
    disk: Arc<DiskSpace>,
    /// What one writer may make us store (see [`WriterQuota`]).
    quota: WriterQuota,
    /// Feeds whose damaged blocks [`Store::history`] found and forgot, for the room to
    /// fetch again ([`Store::take_forgotten`]; the other finders tell the room themselves).
    forgotten: Arc<Mutex<Vec<FeedKey>>>,
    /// Blocked writers as `(room, writer)` (room all zeros: everywhere), as stored under
    /// `x || room || writer`; kept in memory because ingest, heads and history ask per feed.
    blocked: Arc<std::sync::RwLock<std::collections::HashSet<(DiscoveryKey, FeedKey)>>>,
    /// Writers removed from a room by its rotation, and how many of their entries stay.
    cuts: Arc<std::sync::RwLock<HashMap<(DiscoveryKey, FeedKey), Cut>>>,
    /// Feeds whose stored head was signed before heads bound the room (`h` keys): still
    /// good for checking what we store, never sent (peers check heads against the room).
    legacy_heads: Arc<std::sync::RwLock<std::collections::HashSet<FeedKey>>>,
}

/// The storage format this build reads and writes. Format 2 (heads not bound to the room)
/// is migrated when opened: see [`Store::open`].
pub const FORMAT: u32 = 3;
/// Ciphertext bytes after which a history page stops (the API sends pages whole: a client
/// that asks for many pages of big messages and reads none must not cost gigabytes).
pub const HISTORY_PAGE_BYTES: usize = 4 << 20;
/// Most entries in one stored block.
pub const BLOCK_ENTRIES: usize = 512;
/// sled's page cache unless configured: sled's own default (1 GiB) would let a large room
/// grow the daemon's RSS far past what a chat daemon should hold.
pub const DEFAULT_CACHE_BYTES: u64 = 16 << 20;

const ZERO: Key32 = [0; 32];
/// Most candidate rotations a room keeps (the first by clock).
const ROTATION_CANDIDATES_MAX: usize = 64;

fn feed_seq_key(tag: u8, feed: &Key32, seq: u64) -> [u8; 41] {
    let mut k = [0u8; 41];
    k[0] = tag;
    k[1..33].copy_from_slice(feed);
    k[33..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn block_key(feed: &Key32, start: u64) -> [u8; 41] {
    feed_seq_key(b'b', feed, start)
}

fn index_key(feed: &Key32, start: u64) -> [u8; 41] {
    feed_seq_key(b'l', feed, start)
}

fn fork_key(feed: &Key32, seq: u64) -> [u8; 41] {
    feed_seq_key(b'k', feed, seq)
}

/// `s || feed`: how many bytes of the feed's data file are known to be synced.
fn synced_key(feed: &Key32) -> [u8; 33] {
    let mut k = meta_key(feed);
    k[0] = b's';
    k
}

/// `h || feed`: the feed's stored head is a format-2 head (see `Store::legacy_heads`).
fn legacy_head_key(feed: &Key32) -> [u8; 33] {
    let mut k = meta_key(feed);
    k[0] = b'h';
    k
}

fn key_seq(k: &[u8]) -> Result<u64, StoreError> {
    Ok(u64::from_be_bytes(k.get(33..41).and_then(|b| b.try_into().ok()).ok_or(StoreError::Corrupt("key"))?))
}

fn meta_key(feed: &Key32) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'f';
    k[1..].copy_from_slice(feed);
    k
}

/// What this node's user says about a writer (never sent anywhere).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contact {
    /// Local nickname.
    pub nickname: Option<String>,
    /// Whether the user compared the safety number out of band and marked it verified.
    pub verified: bool,
}

/// `tag || room || feed`.
fn room_person_key(tag: u8, room: &Key32, feed: &Key32) -> [u8; 65] {
    let mut k = [0u8; 65];
    k[0] = tag;
    k[1..33].copy_from_slice(room);
    k[33..].copy_from_slice(feed);
    k
}

/// The room and the second key of a [`room_person_key`].
fn split_room_person_key(k: &[u8]) -> Option<(Key32, Key32)> {
    Some((k.get(1..33)?.try_into().ok()?, k.get(33..65)?.try_into().ok()?))
}

/// `u || room || feed || seq`: the follow-ups of a message.
fn follow_up_key(room: &Key32, target: &MessageRef) -> [u8; 73] {
    let mut k = [0u8; 73];
    k[..65].copy_from_slice(&room_person_key(b'u', room, &target.feed));
    k[65..].copy_from_slice(&target.seq.to_be_bytes());
    k
}

/// `n || feed`: the local contact entry of a writer.
fn contact_key(feed: &Key32) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'n';
    k[1..].copy_from_slice(feed);
    k
}

/// `v || feed`: the user compared this writer's 60-digit safety number.
fn verified_key(feed: &Key32) -> [u8; 33] {
    let mut k = contact_key(feed);
    k[0] = b'v';
    k
}

/// `c || room || chunk id`: a file of the room names the chunk.
fn room_chunk_key(room: &Key32, chunk: &Key32) -> [u8; 65] {
    let mut k = [0u8; 65];
    k[0] = b'c';
    k[1..33].copy_from_slice(room);
    k[33..].copy_from_slice(chunk);
    k
}

fn room_feed_key(room: &Key32, feed: &Key32) -> [u8; 65] {
    let mut k = [0u8; 65];
    k[0] = b'r';
    k[1..33].copy_from_slice(room);
    k[33..].copy_from_slice(feed);
    k
}

/// Where a block's bytes are in its feed's data file.
#[derive(Serialize, Deserialize)]
struct BlockPtr {
    offset: u64,
    len: u32,
    /// First 16 bytes of the BLAKE3 hash of the bytes: catches a torn or damaged file.
    check: [u8; 16],
}

fn checksum(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c.copy_from_slice(&blake3::hash(bytes).as_bytes()[..16]);
    c
}

/// One append-only data file and its length.
struct DataFile {
    file: std::fs::File,
    len: u64,
}

/// The feeds' data files, opened on first use.
struct DataFiles {
    dir: std::path::PathBuf,
    /// sled's log file. sled's own flush ends in `sync_file_range` on Linux, which writes
    /// the pages but neither the file's size nor the drive's cache: a power cut could lose
    /// what it "flushed". [`Store::flush`] fdatasyncs this after it.
    sled_log: std::fs::File,
    open: Mutex<HashMap<FeedKey, Arc<Mutex<DataFile>>>>,
    /// Files written since the last sync.
    dirty: Mutex<std::collections::HashSet<FeedKey>>,
    /// Anything (sled included) written since the last flush.
    unflushed: std::sync::atomic::AtomicBool,
    /// A data file was created since the last sync: the directory needs one too.
    created: std::sync::atomic::AtomicBool,
    /// An fsync failed. The kernel may have dropped the unsynced pages and cleared the
    /// error (a retry would "succeed"), so no later flush may claim durability.
    sync_failed: std::sync::atomic::AtomicBool,
}

/// Data files kept open at most; past this the cache starts over.
const OPEN_FILES: usize = 256;

impl DataFiles {
    fn path(&self, feed: &FeedKey) -> std::path::PathBuf {
        self.dir.join(hex::encode(feed))
    }

    fn file(&self, feed: &FeedKey) -> Result<Arc<Mutex<DataFile>>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(feed) {
            return Ok(f.clone());
        }
        if open.len() >= OPEN_FILES {
            open.clear();
        }
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(self.path(feed))?;
        let len = file.metadata()?.len();
        if len == 0 {
            self.created.store(true, std::sync::atomic::Ordering::Release);
        }
        let f = Arc::new(Mutex::new(DataFile { file, len }));
        open.insert(*feed, f.clone());
        Ok(f)
    }

    fn write(&self, feed: &FeedKey, bytes: &[u8]) -> Result<BlockPtr, StoreError> {
        use std::os::unix::fs::FileExt;
        let f = self.file(feed)?;
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        let offset = f.len;
        f.file.write_all_at(bytes, offset)?;
        f.len += bytes.len() as u64;
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(*feed);
        self.unflushed.store(true, std::sync::atomic::Ordering::Release);
        let len = u32::try_from(bytes.len()).map_err(|_| StoreError::Corrupt("block size"))?;
        Ok(BlockPtr { offset, len, check: checksum(bytes) })
    }

    fn read(&self, feed: &FeedKey, ptr: &BlockPtr) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt;
        let f = self.file(feed)?;
        let mut buf = vec![0u8; ptr.len as usize];
        {
            let f = f.lock().unwrap_or_else(|p| p.into_inner());
            if ptr.offset + u64::from(ptr.len) > f.len {
                return Err(StoreError::Corrupt("block past the end of its data file"));
            }
            f.file.read_exact_at(&mut buf, ptr.offset)?;
        }
        if checksum(&buf) != ptr.check {
            return Err(StoreError::Corrupt("block checksum"));
        }
        Ok(buf)
    }

    /// Syncs every data file written since the last call (and the directory, if a file
    /// was created). A failed sync fails every later one too: see `sync_failed`.
    /// Returns each synced file's length as of its sync.
    fn sync(&self) -> Result<Vec<(FeedKey, u64)>, StoreError> {
        use std::sync::atomic::Ordering;
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(StoreError::SyncFailed);
        }
        let dirty: Vec<FeedKey> = self.dirty.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        let mut synced = Vec::with_capacity(dirty.len());
        self.failing((|| {
            for feed in &dirty {
                synced.push((*feed, self.sync_file(feed)?));
            }
            if self.created.swap(false, Ordering::AcqRel) {
                std::fs::File::open(&self.dir)?.sync_all()?;
            }
            Ok::<_, StoreError>(())
        })())?;
        Ok(synced)
    }

    /// Syncs one feed's data file; returns its length as of the sync.
    fn sync_file(&self, feed: &FeedKey) -> Result<u64, StoreError> {
        let f = self.file(feed)?;
        let (file, len) = {
            let f = f.lock().unwrap_or_else(|p| p.into_inner());
            (f.file.try_clone()?, f.len)
        };
        file.sync_data()?;
        Ok(len)
    }

    /// Syncs sled's log after sled flushed it.
    fn sync_sled(&self) -> Result<(), StoreError> {
        self.failing(self.sled_log.sync_data().map_err(StoreError::from))
    }

    /// A failed sync fails every later one (see `sync_failed`).
    fn failing(&self, result: Result<(), StoreError>) -> Result<(), StoreError> {
        if let Err(e) = &result {
            self.sync_failed.store(true, std::sync::atomic::Ordering::Release);
            tracing::error!(error = %e, "syncing the store failed; nothing more is acknowledged as durable until the daemon restarts");
        }
        result
    }

    fn remove(&self, feed: &FeedKey) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(feed);
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).remove(feed);
        let _ = std::fs::remove_file(self.path(feed));
    }
}

/// Opens sled. Its file lock can outlive a dropped `Db` for a moment (its I/O threads
/// finish first), so reopening in the same process (a daemon restarted in-process, a test)
/// can find it still taken: retried for up to 5 s. Another daemon on the same data dir is
/// refused before this, by the data dir's own lock.
fn open_sled(kv: &Path, cache_bytes: u64) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(kv).cache_capacity(cache_bytes).flush_every_ms(None).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

/// Format 2 → 3: heads now bind the room. Our own feeds' heads are signed again; other
/// writers' stay (verified when stored, so still good for checking what we store) and are
/// marked with an `h` key: they are not sent until their writer (or a peer that has it)
/// announces the same head signed for the room.
fn migrate_heads(db: &sled::Db, log: &sled::Tree, rooms: &sled::Tree) -> Result<(), StoreError> {
    let mut own: HashMap<FeedKey, SigningKey> = HashMap::new();
    for kv in rooms.iter() {
        let (_, v) = kv?;
        let record: RoomRecord = decode(&v, "room")?;
        let key = SigningKey::from_bytes(&record.writer);
        own.insert(FeedKey(key.verifying_key().to_bytes()), key);
    }
    let mut batch = sled::Batch::default();
    let (mut signed, mut marked) = (0usize, 0usize);
    for kv in log.scan_prefix([b'f']) {
        let (k, v) = kv?;
        let feed: FeedKey = k.get(1..33).and_then(|b| b.try_into().ok()).ok_or(StoreError::Corrupt("feed key"))?;
        let mut meta: FeedMeta = decode(&v, "feed meta")?;
        let Some(head) = meta.head.take() else { continue };
        match own.get(&feed) {
            Some(writer) => {
                meta.head = Some(sign_head(writer, &meta.room, head.seq, head.hash));
                batch.insert(k, encode(&meta));
                signed += 1;
            }
            None => {
                batch.insert(&legacy_head_key(&feed)[..], &[][..]);
                marked += 1;
            }
        }
    }
    log.apply_batch(batch)?;
    db.insert("format", &FORMAT.to_be_bytes())?;
    db.flush()?;
    tracing::info!(signed, marked, "store migrated to format {FORMAT}: signed heads now bind the room");
    Ok(())
}

/// Display-order key of a message: `(lamport, time_ms, feed_key, seq)`.
pub type OrderKey = (u64, u64, FeedKey, u64);

/// Lamport clock and time of each entry of a block, delta-encoded (about 3 bytes per entry).
#[derive(Default, Serialize, Deserialize)]
struct BlockIndex(Vec<(u64, i64)>);

impl BlockIndex {
    fn new(messages: &[StoredMessage]) -> Self {
        let (mut lamport, mut time) = (0u64, 0i64);
        Self(
            messages
                .iter()
                .map(|m| {
                    let t = m.message.time_ms as i64;
                    let d = (m.message.lamport.wrapping_sub(lamport), t.wrapping_sub(time));
                    (lamport, time) = (m.message.lamport, t);
                    d
                })
                .collect(),
        )
    }

    /// `(lamport, time_ms)` of each entry.
    fn clocks(&self) -> Vec<(u64, u64)> {
        let mut acc = Vec::with_capacity(self.0.len());
        let (mut lamport, mut time) = (0u64, 0i64);
        for &(dl, dt) in &self.0 {
            lamport = lamport.wrapping_add(dl);
            time = time.wrapping_add(dt);
            acc.push((lamport, time as u64));
        }
        acc
    }
}

/// [`Store::may_remove`] with the room's admins (the bound one first) in hand.
fn may_remove(admins: &[FeedKey], author: &FeedKey, removed: &[FeedKey]) -> bool {
    let Some(root) = admins.first() else { return true };
    admins.contains(author)
        && !removed.contains(root)
        && (author == root || !removed.iter().any(|r| admins.contains(r)))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &'static str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(what))
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    /// Writes entries `start..` as blocks of at most [`BLOCK_ENTRIES`] to the feed's data
    /// file, and adds their pointers to `batch`, with their display-order index when the
    /// messages are known.
    fn put_run(
        &self,
        batch: &mut sled::Batch,
        feed: &FeedKey,
        start: u64,
        entries: &[Entry],
        messages: Option<&[StoredMessage]>,
    ) -> Result<u64, StoreError> {
        let mut bytes = 0;
        for (i, chunk) in entries.chunks(BLOCK_ENTRIES).enumerate() {
            let at = start + (i * BLOCK_ENTRIES) as u64;
            let ptr = self.blocks.write(feed, &encode(chunk))?;
            bytes += u64::from(ptr.len);
            if let Some(n) = self.feed_bytes.lock().unwrap_or_else(|p| p.into_inner()).get_mut(feed) {
                *n += u64::from(ptr.len);
            }
            batch.insert(&block_key(feed, at)[..], encode(&ptr));
            if let Some(messages) = messages {
                let m = &messages[i * BLOCK_ENTRIES..i * BLOCK_ENTRIES + chunk.len()];
                batch.insert(&index_key(feed, at)[..], encode(&BlockIndex::new(m)));
            }
        }
        Ok(bytes)
    }

    /// Bytes of a feed's stored blocks (what sync progress counts in bytes). Counted from
    /// the block pointers on first use, then kept in memory.
    pub fn feed_bytes(&self, feed: &FeedKey) -> Result<u64, StoreError> {
        if let Some(n) = self.feed_bytes.lock().unwrap_or_else(|p| p.into_inner()).get(feed) {
            return Ok(*n);
        }
        // Under the ingest lock no block of the feed is being written while we count.
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        for kv in self.log.scan_prefix(&block_key(feed, 0)[..33]) {
            let (_, v) = kv?;
            total += u64::from(decode::<BlockPtr>(&v, "block pointer")?.len);
        }
        self.feed_bytes.lock().unwrap_or_else(|p| p.into_inner()).insert(*feed, total);
        Ok(total)
    }

    /// Sets the writers' quota (before the store is cloned: clones keep theirs).
    pub fn with_writer_quota(mut self, quota: WriterQuota) -> Self {
        self.quota = quota;
        self
    }

    /// The writers' quota.
    pub fn writer_quota(&self) -> WriterQuota {
        self.quota
    }

    /// Finds a feed's damaged blocks (their checksum fails: a torn write, a bad disk),
    /// forgets them and marks their entries missing, so that catch-up fetches them again
    /// from peers (the stored head, or the successor's `prev`, verifies what comes back).
    /// Returns the ranges forgotten.
    pub fn forget_damaged(&self, feed: &FeedKey) -> Result<Vec<(u64, u64)>, StoreError> {
        self.forget_damaged_from(feed, 0)
    }

    /// [`Store::forget_damaged`] for the blocks that lie (in the data file) at or past
    /// byte `from`.
    fn forget_damaged_from(&self, feed: &FeedKey, from: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut meta) = self.feed_meta(feed)? else { return Ok(Vec::new()) };
        let blocks = self.block_ptrs(feed)?;
        let mut forgotten = Vec::new();
        for (i, (at, ptr)) in blocks.iter().enumerate() {
            if ptr.offset + u64::from(ptr.len) <= from || self.blocks.read(feed, ptr).is_ok() {
                continue;
            }
            let run_end = meta.ranges.iter().find(|&&(s, e)| s <= *at && *at < e).map_or(*at, |&(_, e)| e);
            let end = blocks.get(i + 1).map(|(next, _)| *next).filter(|n| *n <= run_end).unwrap_or(run_end);
            forgotten.push((*at, end));
        }
        if forgotten.is_empty() {
            return Ok(forgotten);
        }
        let mut batch = sled::Batch::default();
        for &(at, end) in &forgotten {
            batch.remove(&block_key(feed, at)[..]);
            batch.remove(&index_key(feed, at)[..]);
            meta.remove_range(at, end);
        }
        batch.insert(&meta_key(feed)[..], encode(&meta));
        self.log.apply_batch(batch)?;
        // Counted again on next use.
        self.feed_bytes.lock().unwrap_or_else(|p| p.into_inner()).remove(feed);
        tracing::warn!(feed = %hex::encode(&feed[..8]), ?forgotten, "damaged blocks forgotten: they will be fetched again from peers");
        Ok(forgotten)
    }

    /// A feed's block pointers, in seq order.
    fn block_ptrs(&self, feed: &FeedKey) -> Result<Vec<(u64, BlockPtr)>, StoreError> {
        self.log
            .scan_prefix(&block_key(feed, 0)[..33])
            .map(|kv| {
                let (k, v) = kv?;
                Ok((key_seq(&k)?, decode::<BlockPtr>(&v, "block pointer")?))
            })
            .collect()
    }

    /// After a crash: checks every block past its feed's synced length (the `s` keys).
    /// Those were written after the last completed flush, so none of them was acknowledged
    /// or announced; sled may have kept pointers to them while their bytes were lost. Our
    /// own feed is cut back to its last intact entry and its head signed again there (a
    /// hole in it would leave every peer wanting entries nobody has); other writers'
    /// damaged blocks are forgotten, to be fetched again. Then every checked data file is
    /// synced and its length recorded. Returns the feeds whose blocks were forgotten.
    fn repair(&self) -> Result<Vec<FeedKey>, StoreError> {
        let mut synced: HashMap<FeedKey, u64> = HashMap::new();
        for kv in self.log.scan_prefix([b's']) {
            let (k, v) = kv?;
            let feed: FeedKey =
                k.get(1..33).and_then(|b| b.try_into().ok()).ok_or(StoreError::Corrupt("synced key"))?;
            synced.insert(
                feed,
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("synced length"))?),
            );
        }
        // Feeds with a block past what is known synced.
        let mut unsure: HashMap<FeedKey, u64> = HashMap::new();
        for kv in self.log.scan_prefix([b'b']) {
            let (k, v) = kv?;
            let feed: FeedKey = k.get(1..33).and_then(|b| b.try_into().ok()).ok_or(StoreError::Corrupt("block key"))?;
            let ptr: BlockPtr = decode(&v, "block pointer")?;
            let from = synced.get(&feed).copied().unwrap_or(0);
            if ptr.offset + u64::from(ptr.len) > from {
                unsure.insert(feed, from);
            }
        }
        if unsure.is_empty() {
            return Ok(Vec::new());
        }
        let own: HashMap<FeedKey, SigningKey> = self
            .rooms()?
            .into_iter()
            .map(|(_, r)| {
                let key = SigningKey::from_bytes(&r.writer);
                (FeedKey(key.verifying_key().to_bytes()), key)
            })
            .collect();
        let mut forgotten = Vec::new();
        for (feed, from) in unsure {
            match own.get(&feed) {
                Some(writer) => self.cut_own_feed(&feed, writer, from)?,
                None if !self.forget_damaged_from(&feed, from)?.is_empty() => forgotten.push(feed),
                None => {}
            }
            let len = self.blocks.sync_file(&feed)?;
            self.log.insert(synced_key(&feed), &len.to_be_bytes())?;
        }
        std::fs::File::open(&self.blocks.dir)?.sync_all()?;
        self.db.flush()?;
        self.blocks.sync_sled()?;
        Ok(forgotten)
    }

    /// Cuts our own feed back to before its first damaged block at or past byte `from` of
    /// its data file, and signs its head again at the last entry kept.
    fn cut_own_feed(&self, feed: &FeedKey, writer: &SigningKey, from: u64) -> Result<(), StoreError> {
        let Some(mut meta) = self.feed_meta(feed)? else { return Ok(()) };
        let blocks = self.block_ptrs(feed)?;
        let Some(cut) = blocks
            .iter()
            .find(|(_, ptr)| ptr.offset + u64::from(ptr.len) > from && self.blocks.read(feed, ptr).is_err())
            .map(|(at, _)| *at)
        else {
            return Ok(());
        };
        let mut batch = sled::Batch::default();
        for (at, _) in blocks.iter().filter(|(at, _)| *at >= cut) {
            batch.remove(&block_key(feed, *at)[..]);
            batch.remove(&index_key(feed, *at)[..]);
        }
        let lost = meta.length().saturating_sub(cut);
        meta.remove_range(cut, u64::MAX);
        meta.head = match cut.checked_sub(1) {
            None => None,
            Some(last) => {
                let entry =
                    self.entries(feed, last, cut)?.pop().ok_or(StoreError::Corrupt("own feed before the cut"))?;
                Some(sign_head(writer, &meta.room, last, hash_entry(feed, last, &entry)))
            }
        };
        batch.insert(&meta_key(feed)[..], encode(&meta));
        self.log.apply_batch(batch)?;
        self.feed_bytes.lock().unwrap_or_else(|p| p.into_inner()).remove(feed);
        tracing::warn!(feed = %hex::encode(&feed[..8]), seq = cut, lost, "our own feed lost entries that were never acknowledged (a crash or power cut before they were synced); it continues from there");
        Ok(())
    }

    /// Feeds whose damaged blocks history found and forgot since the last call.
    pub fn take_forgotten(&self) -> Vec<FeedKey> {
        std::mem::take(&mut *self.forgotten.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Blocks (or unblocks) a writer in a room, or with `room` all zeros in every room:
    /// their entries are no longer stored, served or shown. Kept across restarts.
    pub fn set_blocked(&self, room: &DiscoveryKey, writer: &FeedKey, blocked: bool) -> Result<(), StoreError> {
        let key = room_person_key(b'x', room, writer);
        let mut set = self.blocked.write().unwrap_or_else(|p| p.into_inner());
        if blocked {
            self.log.insert(&key[..], &[][..])?;
            set.insert((*room, *writer));
        } else {
            self.log.remove(&key[..])?;
            set.remove(&(*room, *writer));
        }
        Ok(())
    }

    /// Whether the feed's stored head was signed before heads bound the room (format 2):
    /// it is not sent to peers until the same head, signed anew, replaces it.
    pub fn has_legacy_head(&self, feed: &FeedKey) -> bool {
        self.legacy_heads.read().unwrap_or_else(|p| p.into_inner()).contains(feed)
    }

    /// Replaces a format-2 stored head by `head`, the same seq and hash signed for the
    /// room (which the caller verified). Returns whether it did.
    pub fn upgrade_head(&self, feed: &FeedKey, head: &SignedHead) -> Result<bool, StoreError> {
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.has_legacy_head(feed) {
            return Ok(false);
        }
        let Some(mut meta) = self.feed_meta(feed)? else { return Ok(false) };
        if !meta.head.as_ref().is_some_and(|h| h.seq == head.seq && h.hash == head.hash) {
            return Ok(false);
        }
        meta.head = Some(head.clone());
        let mut batch = sled::Batch::default();
        batch.insert(&meta_key(feed)[..], encode(&meta));
        batch.remove(&legacy_head_key(feed)[..]);
        self.log.apply_batch(batch)?;
        self.legacy_heads.write().unwrap_or_else(|p| p.into_inner()).remove(feed);
        self.touch();
        Ok(true)
    }

    /// Whether a writer is blocked in `room` (or everywhere).
    pub fn is_blocked(&self, room: &DiscoveryKey, writer: &FeedKey) -> Result<bool, StoreError> {
        let set = self.blocked.read().unwrap_or_else(|p| p.into_inner());
        Ok(set.contains(&(*room, *writer)) || set.contains(&(DiscoveryKey(ZERO), *writer)))
    }

    /// Writers blocked in `room` (all zeros: those blocked everywhere).
    pub fn blocked_writers(&self, room: &DiscoveryKey) -> Result<Vec<FeedKey>, StoreError> {
        let set = self.blocked.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<FeedKey> = set.iter().filter(|(r, _)| r == room).map(|(_, w)| *w).collect();
        out.sort_unstable();
        Ok(out)
    }

    /// Opens (or creates) the database in `dir` with sled's default-sized page cache.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the database in `dir`; sled caches up to `cache_bytes`.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(dir, cache_bytes, 0)
    }

    /// Opens (or creates) the database in `dir`; sled caches up to `cache_bytes`; new data
    /// is refused while less than `reserve_bytes` are free on its filesystem.
    pub fn open_with(dir: &Path, cache_bytes: u64, reserve_bytes: u64) -> Result<Self, StoreError> {
        // Format 1 kept sled's files directly in `dir`.
        if dir.join("conf").exists() && !dir.join("kv").exists() {
            return Err(StoreError::Format { found: 1 });
        }
        let blocks_dir = dir.join("blocks");
        std::fs::create_dir_all(&blocks_dir)?;
        let kv = dir.join("kv");
        let db = open_sled(&kv, cache_bytes)?;
        let log = db.open_tree("log")?;
        let rooms = db.open_tree("rooms")?;
        match db.get("format")? {
            Some(v) => {
                let found = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt("format"))?);
                match found {
                    FORMAT => {}
                    2 => migrate_heads(&db, &log, &rooms)?,
                    found => return Err(StoreError::Format { found }),
                }
            }
            // Format 1 had no tag.
            None if !log.is_empty() => return Err(StoreError::Format { found: 1 }),
            None => {
                db.insert("format", &FORMAT.to_be_bytes())?;
            }
        }
        // sled writes its `conf` without a sync, and nobody syncs the directories it and we
        // created: make all of it durable before anything is acknowledged.
        db.flush()?;
        let sled_log = std::fs::OpenOptions::new().read(true).write(true).open(kv.join("db"))?;
        sled_log.sync_data()?;
        std::fs::File::open(kv.join("conf"))?.sync_all()?;
        for d in [&kv, &blocks_dir, dir, dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))] {
            std::fs::File::open(d)?.sync_all()?;
        }
        let blocks = Arc::new(DataFiles {
            dir: blocks_dir,
            sled_log,
            open: Mutex::new(HashMap::new()),
            dirty: Mutex::new(Default::default()),
            unflushed: false.into(),
            created: false.into(),
            sync_failed: false.into(),
        });
        let mut legacy_heads = std::collections::HashSet::new();
        for kv in log.scan_prefix([b'h']) {
            let (k, _) = kv?;
            legacy_heads.insert(FeedKey::try_from(&k[1..]).map_err(|_| StoreError::Corrupt("legacy head key"))?);
        }
        let mut blocked = std::collections::HashSet::new();
        for kv in log.scan_prefix([b'x']) {
            let (k, _) = kv?;
            let key = |r: std::ops::Range<usize>| k.get(r).and_then(|b| <Key32>::try_from(b).ok());
            let (room, writer) = key(1..33).zip(key(33..65)).ok_or(StoreError::Corrupt("blocked key"))?;
            blocked.insert((DiscoveryKey(room), FeedKey(writer)));
        }
        let mut cuts = HashMap::new();
        for kv in log.scan_prefix([b'e']) {
            let (k, v) = kv?;
            let room =
                k.get(1..33).and_then(|b| <Key32>::try_from(b).ok()).ok_or(StoreError::Corrupt("rotation key"))?;
            let rotation: Rotation = decode(&v, "rotation")?;
            cuts.extend(rotation.cuts().map(|(feed, len)| ((DiscoveryKey(room), feed), len)));
        }
        let store = Self {
            db,
            log,
            rooms,
            blocks,
            ingest_lock: Arc::new(Mutex::new(())),
            feed_bytes: Default::default(),
            disk: Arc::new(DiskSpace::new(dir, reserve_bytes)),
            quota: WriterQuota::NONE,
            forgotten: Arc::default(),
            blocked: Arc::new(std::sync::RwLock::new(blocked)),
            cuts: Arc::new(std::sync::RwLock::new(cuts)),
            legacy_heads: Arc::new(std::sync::RwLock::new(legacy_heads)),
        };
        let forgotten = store.repair()?;
        store.forgotten.lock().unwrap_or_else(|p| p.into_inner()).extend(forgotten);
        Ok(store)
    }

    /// The free-space check, shared with whatever else writes to the data dir.
    pub fn disk(&self) -> Arc<DiskSpace> {
        self.disk.clone()
    }

    /// Makes everything written so far durable. Callers never run two at once (the group
    /// committer is the only one while the daemon runs): and sled's own `flush_async`
    /// deadlocks when several run concurrently (sled #1308), so this uses the blocking
    /// flush on a blocking thread.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush_blocking())
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?
    }

    /// [`Store::flush`] on this thread (outside a daemon: a restore, say).
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.blocks.unflushed.store(false, std::sync::atomic::Ordering::Release);
        // Data files first: a durable pointer must never point at bytes that are not.
        for (feed, len) in self.blocks.sync()? {
            self.log.insert(synced_key(&feed), &len.to_be_bytes())?;
        }
        self.db.flush()?;
        self.blocks.sync_sled()
    }

    fn touch(&self) {
        self.blocks.unflushed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether anything was written since the last [`Store::flush`] began.
    pub fn has_unflushed(&self) -> bool {
        self.blocks.unflushed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    // ----- rooms -----

    /// Saves a joined room.
    pub fn put_room(&self, discovery_key: &DiscoveryKey, record: &RoomRecord) -> Result<(), StoreError> {
        self.rooms.insert(discovery_key, encode(record))?;
        self.touch();
        Ok(())
    }

    /// All joined rooms.
    pub fn rooms(&self) -> Result<Vec<(DiscoveryKey, RoomRecord)>, StoreError> {
        self.rooms
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let discovery_key: DiscoveryKey = k.as_ref().try_into().map_err(|_| StoreError::Corrupt("room key"))?;
                Ok((discovery_key, decode(&v, "room")?))
            })
            .collect()
    }

    /// Forgets a room and deletes its feeds, entries and index.
    pub fn remove_room(&self, discovery_key: &DiscoveryKey) -> Result<(), StoreError> {
        self.rooms.remove(discovery_key)?;
        self.touch();
        let mut chunks = sled::Batch::default();
        for tag in [b'c', b'p', b'u', b'e', b'a', b'm', b'g', b'q', b'o', b'd', b'w', b'i'] {
            for kv in self.log.scan_prefix(&room_person_key(tag, discovery_key, &[0; 32])[..33]) {
                chunks.remove(kv?.0);
            }
        }
        self.log.apply_batch(chunks)?;
        self.cuts.write().unwrap_or_else(|p| p.into_inner()).retain(|(r, _), _| r != discovery_key);
        let mut prefix = vec![b'r'];
        prefix.extend_from_slice(&discovery_key.0);
        for kv in self.log.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let feed: FeedKey = k[33..].try_into().map_err(|_| StoreError::Corrupt("room index"))?;
            let mut batch = sled::Batch::default();
            for tag in [b'b', b'l', b'k', b't'] {
                for e in self.log.scan_prefix(&feed_seq_key(tag, &feed, 0)[..33]) {
                    batch.remove(e?.0);
                }
            }
            batch.remove(&meta_key(&feed)[..]);
            batch.remove(&synced_key(&feed)[..]);
            batch.remove(&legacy_head_key(&feed)[..]);
            batch.remove(k);
            self.log.apply_batch(batch)?;
            self.blocks.remove(&feed);
            self.feed_bytes.lock().unwrap_or_else(|p| p.into_inner()).remove(&feed);
        }
        Ok(())
    }

    // ----- follow-ups and search -----

    /// Folds follow-ups (edits, deletions, reactions: `(author, seq, body)`) into the state
    /// of the messages they are about; returns the messages whose state changed.
    pub fn note_follow_ups(
        &self,
        room: &DiscoveryKey,
        follow_ups: &[(FeedKey, u64, &Body)],
    ) -> Result<Vec<MessageRef>, StoreError> {
        let mut changed = Vec::new();
        for (author, seq, body) in follow_ups {
            let Some(target) = body.target() else { continue };
            let key = follow_up_key(room, target);
            let mut state: FollowUps =
                self.log.get(key)?.map(|v| decode(&v, "follow-ups")).transpose()?.unwrap_or_default();
            if state.apply(target, author, *seq, body) {
                self.log.insert(key, encode(&state))?;
                if !changed.contains(target) {
                    changed.push(*target);
                }
            }
        }
        if !changed.is_empty() {
            self.touch();
        }
        Ok(changed)
    }

    /// The folded follow-ups of a message (none: the default).
    pub fn follow_ups(&self, room: &DiscoveryKey, target: &MessageRef) -> Result<FollowUps, StoreError> {
        Ok(self
            .log
            .get(follow_up_key(room, target))?
            .map(|v| decode(&v, "follow-ups"))
            .transpose()?
            .unwrap_or_default())
    }

    /// The search filters of `feed`: `(first seq of the group, entries it covers, filter)`.
    pub fn search_filters(&self, feed: &FeedKey) -> Result<Vec<(u64, u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.log.scan_prefix(&feed_seq_key(b't', feed, 0)[..33]) {
            let (k, v) = kv?;
            let (covered, filter) = decode::<(u64, Vec<u8>)>(&v, "search filter")?;
            out.push((key_seq(&k)? * index::SEARCH_GROUP, covered, filter));
        }
        Ok(out)
    }

    /// Keeps the search filter of the group starting at `start`, made of `covered` entries.
    pub fn put_search_filter(&self, feed: &FeedKey, start: u64, covered: u64, filter: &[u8]) -> Result<(), StoreError> {
        self.log.insert(feed_seq_key(b't', feed, start / index::SEARCH_GROUP), encode(&(covered, filter)))?;
        self.touch();
        Ok(())
    }

    // ----- people -----

    /// Records a writer's display name from a `Profile` message at Lamport `lamport`,
    /// unless a newer one is recorded.
    pub fn note_profile(
        &self,
        room: &DiscoveryKey,
        feed: &FeedKey,
        name: &str,
        lamport: u64,
    ) -> Result<(), StoreError> {
        let key = room_person_key(b'p', room, feed);
        let newer = self.log.get(key)?.map(|v| decode::<(u64, String)>(&v, "profile")).transpose()?;
        if newer.is_some_and(|(l, _)| l >= lamport) {
            return Ok(());
        }
        self.log.insert(key, encode(&(lamport, name)))?;
        self.touch();
        Ok(())
    }

    /// Takes `rotation` (a well-formed `Rotate` entry) as a candidate, and chooses the
    /// room's rotation again among all candidates (see [`Store::choose_rotation`]); returns
    /// whether the chosen one changed.
    pub fn note_rotation(&self, room: &DiscoveryKey, rotation: &Rotation) -> Result<bool, StoreError> {
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut candidates = self.rotation_candidates(room)?;
        if candidates.iter().any(|c| c.at == rotation.at) {
            return Ok(false);
        }
        candidates.push(Rotation { next: None, superseded: Vec::new(), ..rotation.clone() });
        candidates.sort_by_key(|c| (c.lamport, c.at));
        candidates.truncate(ROTATION_CANDIDATES_MAX);
        self.log.insert(room_person_key(b'q', room, &ZERO), encode(&candidates))?;
        self.touch();
        self.choose_rotation(room, &candidates)
    }

    /// Chooses the room's rotation again (its admins changed); returns whether it changed.
    pub fn rechoose_rotation(&self, room: &DiscoveryKey) -> Result<bool, StoreError> {
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let candidates = self.rotation_candidates(room)?;
        if candidates.is_empty() {
            return Ok(false);
        }
        self.choose_rotation(room, &candidates)
    }

    fn rotation_candidates(&self, room: &DiscoveryKey) -> Result<Vec<Rotation>, StoreError> {
        self.log
            .get(room_person_key(b'q', room, &ZERO))?
            .map(|v| decode(&v, "rotation candidates"))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Whether `author` may remove `removed` from the room: anyone may in a room without an
    /// admin; else only admins, nobody removes the admin bound into the room's keys, and
    /// only that admin removes other admins.
    pub fn may_remove(&self, room: &DiscoveryKey, author: &FeedKey, removed: &[FeedKey]) -> Result<bool, StoreError> {
        Ok(may_remove(&self.admins(room)?, author, removed))
    }

    /// The rotation every member chooses from the same candidates, in any order of
    /// arrival: among those whose author may remove whom they remove, the ones that do not
    /// remove the author of another (a removal of a remover wins over the removal it
    /// answers), the first by (Lamport clock, writer, seq); if each removes another's
    /// author (members of a room without an admin removing each other), the first of all.
    /// A chosen rotation stays chosen when no candidate qualifies any more.
    fn choose_rotation(&self, room: &DiscoveryKey, candidates: &[Rotation]) -> Result<bool, StoreError> {
        let admins = self.admins(room)?;
        let eligible: Vec<&Rotation> =
            candidates.iter().filter(|c| may_remove(&admins, &c.at.feed, &c.removed)).collect();
        let undominated = eligible.iter().find(|c| !eligible.iter().any(|o| o.removed.contains(&c.at.feed)));
        let Some(winner) = undominated.or(eligible.first()) else { return Ok(false) };
        let kept = self.rotation(room)?;
        if kept.as_ref().is_some_and(|k| k.at == winner.at) {
            return Ok(false);
        }
        let mut rotation = (*winner).clone();
        if let Some(kept) = kept {
            // The room of the rotation we followed so far gives way to this one's.
            rotation.superseded = kept.superseded;
            rotation.superseded.extend(kept.next);
        }
        self.log.insert(room_person_key(b'e', room, &ZERO), encode(&rotation))?;
        self.touch();
        let mut cuts = self.cuts.write().unwrap_or_else(|p| p.into_inner());
        cuts.retain(|(r, _), _| r != room);
        cuts.extend(rotation.cuts().map(|(feed, len)| ((*room, feed), len)));
        Ok(true)
    }

    /// What a room keeps of `writer`'s feed, if its rotation removed the writer: later
    /// entries are refused, not fetched, not served and not shown.
    pub fn cut(&self, room: &DiscoveryKey, writer: &FeedKey) -> Option<Cut> {
        self.cuts.read().unwrap_or_else(|p| p.into_inner()).get(&(*room, *writer)).cloned()
    }

    /// The rotation a room follows, if any.
    pub fn rotation(&self, room: &DiscoveryKey) -> Result<Option<Rotation>, StoreError> {
        self.log.get(room_person_key(b'e', room, &ZERO))?.map(|v| decode(&v, "rotation")).transpose()
    }

    /// Records `next` as the room we moved to with the rotation at `at`. If an earlier
    /// rotation replaced that one meanwhile, `next` is superseded instead, and this says
    /// false.
    pub fn set_rotation_next(
        &self,
        room: &DiscoveryKey,
        at: &MessageRef,
        next: &DiscoveryKey,
    ) -> Result<bool, StoreError> {
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mut rotation) = self.rotation(room)? else { return Ok(false) };
        let kept = rotation.at == *at;
        if kept {
            rotation.next = Some(*next);
            self.log.insert(room_person_key(b'o', next, &ZERO), &room.0[..])?;
        } else if !rotation.superseded.contains(next) {
            rotation.superseded.push(*next);
        }
        self.log.insert(room_person_key(b'e', room, &ZERO), encode(&rotation))?;
        self.touch();
        Ok(kept)
    }

    /// Records that `room`, an epoch made by a rotation that lost to an earlier one, moved
    /// to `to`, the winner's room.
    pub fn set_superseded(&self, room: &DiscoveryKey, to: &DiscoveryKey) -> Result<(), StoreError> {
        self.log.insert(room_person_key(b'm', room, &ZERO), encode(to))?;
        self.touch();
        Ok(())
    }

    /// The winner's room, for a room made by a rotation that lost to an earlier one.
    pub fn superseded_by(&self, room: &DiscoveryKey) -> Result<Option<DiscoveryKey>, StoreError> {
        self.log.get(room_person_key(b'm', room, &ZERO))?.map(|v| decode(&v, "superseded room")).transpose()
    }

    /// Where a room's members went: the room its rotation led to, or the room that
    /// replaced it if it was made by a rotation that lost to an earlier one.
    pub fn moved_to(&self, room: &DiscoveryKey) -> Result<Option<DiscoveryKey>, StoreError> {
        match self.superseded_by(room)? {
            Some(to) => Ok(Some(to)),
            None => Ok(self.rotation(room)?.and_then(|r| r.next)),
        }
    }

    /// The room whose rotation led here, if one did.
    pub fn moved_from(&self, room: &DiscoveryKey) -> Result<Option<DiscoveryKey>, StoreError> {
        let from = self.log.get(room_person_key(b'o', room, &ZERO))?;
        from.map(|v| Key32::try_from(&v[..]).map(DiscoveryKey).map_err(|_| StoreError::Corrupt("moved-from room")))
            .transpose()
    }

    /// The writers who may remove members from a room: the admin bound into its keys
    /// first, then those it named. None means any member may (a room made from a
    /// passphrase, or an invite without an admin).
    pub fn admins(&self, room: &DiscoveryKey) -> Result<Vec<FeedKey>, StoreError> {
        let Some(bound) = self.admin_binding(room)? else { return Ok(Vec::new()) };
        let mut admins = vec![bound.admin];
        for kv in self.log.scan_prefix(&room_person_key(b'g', room, &ZERO)[..33]) {
            let (k, v) = kv?;
            let (_, named): (u64, bool) = decode(&v, "admin grant")?;
            let member =
                k.get(33..65).and_then(|b| FeedKey::try_from(b).ok()).ok_or(StoreError::Corrupt("grant key"))?;
            if named && member != bound.admin {
                admins.push(member);
            }
        }
        Ok(admins)
    }

    /// Notes that the room's bound admin named `member` an admin (or no longer) in its
    /// entry `seq`: its newest such entry about the member counts.
    pub fn note_admin_grant(
        &self,
        room: &DiscoveryKey,
        member: &FeedKey,
        seq: u64,
        named: bool,
    ) -> Result<(), StoreError> {
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = room_person_key(b'g', room, member);
        if let Some(old) = self.log.get(key)? {
            let (old_seq, _): (u64, bool) = decode(&old, "admin grant")?;
            if old_seq >= seq {
                return Ok(());
            }
        }
        self.log.insert(key, encode(&(seq, named)))?;
        self.touch();
        Ok(())
    }

    /// The seed and admin a room's secret is made from, for a room with an admin.
    pub fn admin_binding(&self, room: &DiscoveryKey) -> Result<Option<crate::keys::AdminBound>, StoreError> {
        self.log.get(room_person_key(b'a', room, &ZERO))?.map(|v| decode(&v, "admin binding")).transpose()
    }

    /// The seed and admin of every room with an admin (for backups).
    pub fn admin_bindings(&self) -> Result<Vec<(DiscoveryKey, crate::keys::AdminBound)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.log.scan_prefix([b'a']) {
            let (k, v) = kv?;
            let (room, _) = split_room_person_key(&k).ok_or(StoreError::Corrupt("binding key"))?;
            out.push((DiscoveryKey(room), decode(&v, "admin binding")?));
        }
        Ok(out)
    }

    /// Records the seed and admin a room's secret is made from.
    pub fn set_admin_binding(&self, room: &DiscoveryKey, bound: &crate::keys::AdminBound) -> Result<(), StoreError> {
        self.log.insert(room_person_key(b'a', room, &ZERO), encode(bound))?;
        self.touch();
        Ok(())
    }

    /// Display names of a room's writers (from their newest `Profile` message).
    pub fn profiles(&self, room: &DiscoveryKey) -> Result<HashMap<FeedKey, String>, StoreError> {
        Ok(self.dated_profiles(room)?.into_iter().map(|(feed, (_, name))| (feed, name)).collect())
    }

    /// Display names of a room's writers with the Lamport clock of the message that gave
    /// each (a person's newest name among its devices is the one shown).
    pub fn dated_profiles(&self, room: &DiscoveryKey) -> Result<HashMap<FeedKey, (u64, String)>, StoreError> {
        let mut out = HashMap::new();
        for kv in self.log.scan_prefix(&room_person_key(b'p', room, &[0; 32])[..33]) {
            let (k, v) = kv?;
            let feed: FeedKey = k[33..].try_into().map_err(|_| StoreError::Corrupt("profile key"))?;
            out.insert(feed, decode::<(u64, String)>(&v, "profile")?);
        }
        Ok(out)
    }

    /// Records that `writer`'s entry `seq` proves it one of a person's devices (the proof
    /// verified): its first such entry counts.
    pub fn note_device(
        &self,
        room: &DiscoveryKey,
        writer: &FeedKey,
        seq: u64,
        person: &Key32,
        device: &Key32,
    ) -> Result<(), StoreError> {
        let key = room_person_key(b'd', room, writer);
        if self.log.get(key)?.is_some_and(|v| decode::<(u64, Key32, Key32)>(&v, "device").is_ok_and(|d| d.0 <= seq)) {
            return Ok(());
        }
        self.log.insert(key, encode(&(seq, person, device)))?;
        self.touch();
        Ok(())
    }

    /// The room's writers that proved themselves a person's device: writer → (person,
    /// device), without the devices their person unlinked.
    pub fn devices(&self, room: &DiscoveryKey) -> Result<HashMap<FeedKey, (Key32, Key32)>, StoreError> {
        let mut out = HashMap::new();
        for (writer, person, device) in self.device_records(room)? {
            if !self.is_unlinked(room, &person, &device)? {
                out.insert(writer, (person, device));
            }
        }
        Ok(out)
    }

    /// The person and device `writer` proved itself, unless its person unlinked it.
    pub fn device_of(&self, room: &DiscoveryKey, writer: &FeedKey) -> Result<Option<(Key32, Key32)>, StoreError> {
        let Some(v) = self.log.get(room_person_key(b'd', room, writer))? else { return Ok(None) };
        let (_, person, device): (u64, Key32, Key32) = decode(&v, "device")?;
        Ok((!self.is_unlinked(room, &person, &device)?).then_some((person, device)))
    }

    /// The room's writers that proved themselves `device`'s, unlinked or not.
    pub fn device_writers(&self, room: &DiscoveryKey, device: &Key32) -> Result<Vec<FeedKey>, StoreError> {
        Ok(self.device_records(room)?.into_iter().filter(|(_, _, d)| d == device).map(|(w, _, _)| w).collect())
    }

    /// Every `Device` proof noted in the room: (writer, person, device).
    fn device_records(&self, room: &DiscoveryKey) -> Result<Vec<(FeedKey, Key32, Key32)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.log.scan_prefix(&room_person_key(b'd', room, &ZERO)[..33]) {
            let (k, v) = kv?;
            let (_, writer) = split_room_person_key(&k).ok_or(StoreError::Corrupt("device key"))?;
            let (_, person, device): (u64, Key32, Key32) = decode(&v, "device")?;
            out.push((FeedKey(writer), person, device));
        }
        Ok(out)
    }

    /// Records a person's (verified) statement that `device` is no longer theirs, written
    /// into the room by `by`.
    pub fn note_unlink(
        &self,
        room: &DiscoveryKey,
        person: &Key32,
        device: &Key32,
        by: &FeedKey,
    ) -> Result<(), StoreError> {
        self.log.insert(room_person_key(b'w', room, device), encode(&(person, by)))?;
        self.touch();
        Ok(())
    }

    /// Whether `person` unlinked `device` in this room.
    pub fn is_unlinked(&self, room: &DiscoveryKey, person: &Key32, device: &Key32) -> Result<bool, StoreError> {
        let Some(v) = self.log.get(room_person_key(b'w', room, device))? else { return Ok(false) };
        Ok(decode::<(Key32, FeedKey)>(&v, "unlink")?.0 == *person)
    }

    /// Every unlink recorded: (room, device, the writer of the `Unlink` entry).
    pub fn unlinks(&self) -> Result<Vec<(DiscoveryKey, Key32, FeedKey)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.log.scan_prefix([b'w']) {
            let (k, v) = kv?;
            let (room, device) = split_room_person_key(&k).ok_or(StoreError::Corrupt("unlink key"))?;
            out.push((DiscoveryKey(room), device, decode::<(Key32, FeedKey)>(&v, "unlink")?.1));
        }
        Ok(out)
    }

    /// Records a verified `Continues` entry of `writer` (it was `from` in the room before)
    /// until what we said of `from` is carried over ([`Store::carried_over`]): a daemon
    /// that stops in between carries it over at its next start.
    pub fn note_continuation(&self, room: &DiscoveryKey, writer: &FeedKey, from: &FeedKey) -> Result<(), StoreError> {
        self.log.insert(room_person_key(b'i', room, writer), from.as_slice())?;
        self.touch();
        Ok(())
    }

    /// The `Continues` entries not carried over yet: (room, writer, from).
    pub fn continuations(&self) -> Result<Vec<(DiscoveryKey, FeedKey, FeedKey)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.log.scan_prefix([b'i']) {
            let (k, v) = kv?;
            let (room, writer) = split_room_person_key(&k).ok_or(StoreError::Corrupt("continuation key"))?;
            let from = Key32::try_from(v.as_ref()).map_err(|_| StoreError::Corrupt("continuation"))?;
            out.push((DiscoveryKey(room), FeedKey(writer), FeedKey(from)));
        }
        Ok(out)
    }

    /// What we said of a `Continues` entry's `from` is carried over.
    pub fn carried_over(&self, room: &DiscoveryKey, writer: &FeedKey) -> Result<(), StoreError> {
        self.log.remove(room_person_key(b'i', room, writer))?;
        self.touch();
        Ok(())
    }

    /// This device's place in a person: the person key and its certificate of us (none
    /// until a device was linked here or to here).
    pub fn person(&self) -> Result<Option<(Key32, Vec<u8>)>, StoreError> {
        self.db.get("person")?.map(|v| decode(&v, "person")).transpose()
    }

    /// Records this device's person and its certificate.
    pub fn set_person(&self, person: &Key32, cert: &[u8]) -> Result<(), StoreError> {
        self.db.insert("person", encode(&(person, cert)))?;
        self.touch();
        Ok(())
    }

    /// Forgets this device's person (it was unlinked).
    pub fn clear_person(&self) -> Result<(), StoreError> {
        self.db.remove("person")?;
        self.touch();
        Ok(())
    }

    /// The link rooms joined (`devices.link`, `devices.accept`), left when the link ends.
    pub fn link_rooms(&self) -> Result<Vec<DiscoveryKey>, StoreError> {
        Ok(self.db.get("link_rooms")?.map(|v| decode(&v, "link rooms")).transpose()?.unwrap_or_default())
    }

    /// Replaces the link rooms joined.
    pub fn set_link_rooms(&self, rooms: &[DiscoveryKey]) -> Result<(), StoreError> {
        self.db.insert("link_rooms", encode(rooms))?;
        self.touch();
        Ok(())
    }

    /// The devices this device linked (it holds the person key): device key, linked at
    /// (ms), unlinked since.
    pub fn linked_devices(&self) -> Result<Vec<(Key32, u64, bool)>, StoreError> {
        Ok(self.db.get("linked_devices")?.map(|v| decode(&v, "linked devices")).transpose()?.unwrap_or_default())
    }

    /// Replaces the devices this device linked.
    pub fn set_linked_devices(&self, devices: &[(Key32, u64, bool)]) -> Result<(), StoreError> {
        self.db.insert("linked_devices", encode(&devices))?;
        self.touch();
        Ok(())
    }

    /// What this node's user says about a writer: nickname and verified mark (local only).
    pub fn contact(&self, feed: &FeedKey) -> Result<Contact, StoreError> {
        Ok(self.log.get(contact_key(feed))?.map(|v| decode(&v, "contact")).transpose()?.unwrap_or_default())
    }

    /// Sets the local nickname and verified mark of a writer.
    pub fn put_contact(&self, feed: &FeedKey, contact: &Contact) -> Result<(), StoreError> {
        self.log.insert(contact_key(feed), encode(contact))?;
        self.touch();
        Ok(())
    }

    /// Every contact entry: writers with a nickname or a mark (for backups).
    pub fn contacts(&self) -> Result<Vec<(FeedKey, Contact, bool)>, StoreError> {
        let mut feeds: Vec<FeedKey> = Vec::new();
        for prefix in [b'n', b'v'] {
            for kv in self.log.scan_prefix([prefix]) {
                let (k, _) = kv?;
                let feed = FeedKey::try_from(&k[1..]).map_err(|_| StoreError::Corrupt("contact key"))?;
                if !feeds.contains(&feed) {
                    feeds.push(feed);
                }
            }
        }
        feeds.into_iter().map(|f| Ok((f, self.contact(&f)?, self.verified(&f)?))).collect()
    }

    /// Every block: `(room, writer)`, the room all zeros for "every room" (for backups).
    pub fn all_blocked(&self) -> Vec<(DiscoveryKey, FeedKey)> {
        let mut all: Vec<_> = self.blocked.read().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        all.sort_unstable();
        all
    }

    /// Whether the user compared this writer's safety number (the 60-digit one; a mark
    /// made against the 12-digit numbers of earlier versions is `Contact::verified`, kept
    /// but no longer counted).
    pub fn verified(&self, feed: &FeedKey) -> Result<bool, StoreError> {
        Ok(self.log.contains_key(verified_key(feed))?)
    }

    /// Sets or clears the mark of [`Store::verified`].
    pub fn set_verified(&self, feed: &FeedKey, verified: bool) -> Result<(), StoreError> {
        if verified {
            self.log.insert(verified_key(feed), &[][..])?;
        } else {
            self.log.remove(verified_key(feed))?;
        }
        self.touch();
        Ok(())
    }

    /// This node's display name (given to rooms joined later).
    pub fn display_name(&self) -> Result<Option<String>, StoreError> {
        self.db.get("display_name")?.map(|v| decode(&v, "display name")).transpose()
    }

    /// Sets this node's display name.
    pub fn put_display_name(&self, name: &str) -> Result<(), StoreError> {
        self.db.insert("display_name", encode(name))?;
        self.touch();
        Ok(())
    }

    // ----- file chunks -----

    /// Notes that a file of `room` names these chunks (they may be served to its peers).
    pub fn note_chunks(&self, room: &DiscoveryKey, chunks: &[ChunkId]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for id in chunks {
            batch.insert(&room_chunk_key(room, id)[..], &[][..]);
        }
        self.log.apply_batch(batch)?;
        self.touch();
        Ok(())
    }

    /// Whether a file of `room` names chunk `id`.
    pub fn room_has_chunk(&self, room: &DiscoveryKey, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(self.log.contains_key(room_chunk_key(room, id))?)
    }

    // ----- feeds -----

    /// What we hold of a feed.
    pub fn feed_meta(&self, feed: &FeedKey) -> Result<Option<FeedMeta>, StoreError> {
        self.log.get(meta_key(feed))?.map(|v| decode(&v, "feed meta")).transpose()
    }

    /// The feeds of a room with what we hold of each.
    pub fn room_feeds(&self, room: &DiscoveryKey) -> Result<Vec<(FeedKey, FeedMeta)>, StoreError> {
        let mut prefix = vec![b'r'];
        prefix.extend_from_slice(&room.0);
        let mut out = Vec::new();
        for kv in self.log.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let feed: FeedKey = k[33..].try_into().map_err(|_| StoreError::Corrupt("room index"))?;
            if let Some(meta) = self.feed_meta(&feed)? {
                out.push((feed, meta));
            }
        }
        Ok(out)
    }

    /// The newest signed head of every feed of a room.
    pub fn room_heads(&self, room: &DiscoveryKey) -> Result<Vec<SignedHead>, StoreError> {
        let mut heads = Vec::new();
        for (feed, meta) in self.room_feeds(room)? {
            // A blocked writer's feed is not announced (nor served, nor shown); a format-2
            // head would not verify at a peer.
            if self.is_blocked(room, &feed)? || self.has_legacy_head(&feed) {
                continue;
            }
            // A removed writer's: no further than what stays of its feed.
            match self.cut(room, &feed) {
                Some(cut) if meta.head.as_ref().is_some_and(|h| h.length() > cut.length) => heads.extend(cut.head),
                _ => heads.extend(meta.head),
            }
        }
        Ok(heads)
    }

    /// Stored entries `start..end` of a feed (stops at the first missing one).
    pub fn entries(&self, feed: &FeedKey, start: u64, end: u64) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(4096) as usize);
        if start >= end {
            return Ok(out);
        }
        // The block holding `start` begins at or before it; later ones follow back to back.
        let first = self.log.range(block_key(feed, 0)..=block_key(feed, start)).next_back();
        let rest = self.log.range(block_key(feed, start.saturating_add(1))..block_key(feed, end));
        let mut next = start;
        for kv in first.into_iter().chain(rest) {
            let (k, v) = kv?;
            let at = key_seq(&k)?;
            if at > next {
                break;
            }
            let ptr: BlockPtr = decode(&v, "block pointer")?;
            let block: Vec<Entry> = decode(&self.blocks.read(feed, &ptr)?, "block")?;
            let skip = (next - at) as usize;
            if skip >= block.len() {
                break;
            }
            let take = (end - next).min((block.len() - skip) as u64) as usize;
            out.extend(block.into_iter().skip(skip).take(take));
            next += take as u64;
            if next >= end {
                break;
            }
        }
        Ok(out)
    }

    fn entry(&self, feed: &FeedKey, seq: u64) -> Result<Option<Entry>, StoreError> {
        Ok(self.entries(feed, seq, seq.saturating_add(1))?.pop())
    }

    /// `(lamport, time_ms)` of stored entry `seq` of a feed we can read.
    fn clock_at(&self, feed: &FeedKey, seq: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(kv) = self.log.range(index_key(feed, 0)..=index_key(feed, seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv?;
        let at = key_seq(&k)?;
        let index: BlockIndex = decode(&v, "block index")?;
        Ok(index.clocks().get((seq - at) as usize).copied())
    }

    /// Appends messages to our own feed in `room` as one batch with one signed head.
    /// The caller serializes appends to one feed. Not durable until [`Store::flush`].
    pub fn append(
        &self,
        room: &DiscoveryKey,
        writer: &SigningKey,
        cipher: &FeedCipher,
        first_lamport: u64,
        bodies: Vec<Body>,
    ) -> Result<Appended, StoreError> {
        let feed = FeedKey(writer.verifying_key().to_bytes());
        self.disk.check(bodies.len() as u64 * 1024)?;
        let mut meta = self.feed_meta(&feed)?.unwrap_or_else(|| FeedMeta { room: *room, ..FeedMeta::default() });
        let first_seq = meta.length();
        let mut prev = meta.head.as_ref().map_or(ZERO, |h| h.hash);
        let time_ms = now_ms();
        let mut entries = Vec::with_capacity(bodies.len());
        let mut messages = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            let lamport = first_lamport.checked_add(i as u64).filter(|&l| l <= LAMPORT_MAX);
            let message = Message { lamport: lamport.ok_or(StoreError::ClockExhausted)?, time_ms, body: Some(body) };
            let entry = cipher.seal(seq, prev, &message.encode());
            prev = hash_entry(&feed, seq, &entry);
            entries.push(entry);
            messages.push(StoredMessage { feed_key: feed, seq, message });
        }
        let Some(last) = messages.last() else { return Err(StoreError::Corrupt("empty append")) };
        let head = sign_head(writer, room, last.seq, prev);
        // Held while blocks are written, like an ingest: `feed_bytes` counts under it.
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        self.put_run(&mut batch, &feed, first_seq, &entries, Some(&messages))?;
        meta.head = Some(head.clone());
        meta.add_range(first_seq, first_seq + entries.len() as u64);
        batch.insert(&meta_key(&feed)[..], encode(&meta));
        batch.insert(&room_feed_key(room, &feed)[..], &[][..]);
        self.log.apply_batch(batch)?;
        self.touch();
        Ok(Appended { head, messages })
    }

    /// Verifies and stores entries `start..start + entries.len()` of `feed` received from a
    /// peer. The batch must be anchored at its top: by `anchor` (a signed head for its
    /// newest entry), by our stored head, or by a stored successor whose `prev` is the
    /// newest entry's hash; the hash chain must hold inside the batch and link to a stored
    /// predecessor; with a `cipher` every entry must decrypt and the writer's Lamport clock
    /// must increase, up to [`LAMPORT_MAX`]. All or nothing.
    pub fn ingest(
        &self,
        room: &DiscoveryKey,
        cipher: Option<&FeedCipher>,
        feed: &FeedKey,
        start: u64,
        entries: &[Entry],
        anchor: Option<&SignedHead>,
    ) -> Result<Ingested, IngestError> {
        self.ingest_bounded(room, cipher, feed, start, entries, anchor, LAMPORT_MAX, &WriterQuota::NONE)
    }

    /// [`Store::ingest`] with the largest Lamport clock accepted (a room passes its own
    /// clock plus [`super::LAMPORT_LEAD`], capped at [`LAMPORT_MAX`]; tests pass `u64::MAX`
    /// to store what versions without the bound stored) and the writer's quota. A blocked
    /// writer's entries are refused whatever the quota.
    #[allow(clippy::too_many_arguments)]
    pub fn ingest_bounded(
        &self,
        room: &DiscoveryKey,
        cipher: Option<&FeedCipher>,
        feed: &FeedKey,
        start: u64,
        entries: &[Entry],
        anchor: Option<&SignedHead>,
        clock_limit: u64,
        quota: &WriterQuota,
    ) -> Result<Ingested, IngestError> {
        let Some(last) = entries.len().checked_sub(1) else { return Ok(Ingested::default()) };
        let end = start.checked_add(entries.len() as u64).ok_or(IngestError::OutOfRange)?;
        let top = end - 1;
        // Pure checks first, without the lock.
        let hashes: Vec<Key32> =
            entries.iter().enumerate().map(|(i, e)| hash_entry(feed, start + i as u64, e)).collect();
        for i in 1..entries.len() {
            if entries[i].prev != hashes[i - 1] {
                return Err(IngestError::BrokenChain(start + i as u64));
            }
        }
        if start == 0 && entries[0].prev != ZERO {
            return Err(IngestError::BrokenChain(0));
        }
        let anchor = anchor.filter(|h| h.feed_key == *feed && h.seq == top);
        if let Some(h) = anchor {
            if !verify_head(room, h) {
                return Err(IngestError::BadHead);
            }
        }
        let mut messages = Vec::new();
        if let Some(cipher) = cipher {
            messages.reserve(entries.len());
            for (i, e) in entries.iter().enumerate() {
                let seq = start + i as u64;
                let plain = cipher.open(seq, e).map_err(|_| IngestError::Decrypt(seq))?;
                let message = Message::decode(&plain).ok_or(IngestError::Decrypt(seq))?;
                if messages.last().is_some_and(|m: &StoredMessage| m.message.lamport >= message.lamport) {
                    return Err(IngestError::Order(seq));
                }
                if message.lamport > clock_limit {
                    return Err(IngestError::ClockAhead(seq));
                }
                messages.push(StoredMessage { feed_key: *feed, seq, message });
            }
        }

        let incoming: usize = entries.iter().map(|e| e.ciphertext.len() + 64).sum();
        self.disk.check(incoming as u64).map_err(StoreError::from)?;
        // Blocked here, or removed from the room (what it wrote after is refused).
        if self.is_blocked(room, feed)? || self.cut(room, feed).is_some_and(|cut| end > cut.length) {
            return Err(IngestError::Blocked);
        }
        if end > quota.entries {
            return Err(IngestError::Quota(QuotaKind::Entries));
        }
        // Counted before the lock (`feed_bytes` takes it); a race only lets one batch by.
        if quota.bytes != u64::MAX && self.feed_bytes(feed)?.saturating_add(incoming as u64) > quota.bytes {
            return Err(IngestError::Quota(QuotaKind::Bytes));
        }
        // A poisoned lock only means another ingest panicked; the data is in sled.
        let _guard = self.ingest_lock.lock().unwrap_or_else(|p| p.into_inner());
        let stored_meta = self.feed_meta(feed)?;
        if stored_meta.is_none()
            && quota.writers != usize::MAX
            && self.log.scan_prefix(&room_feed_key(room, &ZERO)[..33]).count() >= quota.writers
        {
            return Err(IngestError::Quota(QuotaKind::Writers));
        }
        let mut meta = stored_meta.unwrap_or_else(|| FeedMeta { room: *room, ..FeedMeta::default() });
        if meta.room != *room {
            return Err(IngestError::WrongRoom);
        }
        let top_hash = hashes[last];
        let stored_head_at_top = meta.head.as_ref().filter(|h| h.seq == top);
        let mut new_head = None;
        if let Some(h) = anchor {
            if h.hash != top_hash {
                return Err(IngestError::NotAnchored);
            }
            if let Some(ours) = stored_head_at_top {
                if ours.hash != h.hash {
                    self.record_fork(feed, ours, h)?;
                    return Err(IngestError::Fork(top));
                }
            }
            if meta.head.as_ref().is_none_or(|ours| h.seq > ours.seq) {
                new_head = Some(h.clone());
            }
        } else if let Some(ours) = stored_head_at_top {
            if ours.hash != top_hash {
                return Err(IngestError::NotAnchored);
            }
        } else if !meta.has(end) {
            return Err(IngestError::NotAnchored);
        }
        // The batch must join what we hold above and below it. If it does not but the writer
        // signed it (anchored), the writer signed two histories: a fork (e.g. a copied data
        // dir wrote on after the copy), proven by our head and theirs.
        let broken_at =
            if meta.has(end) && self.entry(feed, end)?.ok_or(StoreError::Corrupt("entry index"))?.prev != top_hash {
                Some(end)
            } else if start > 0 && meta.has(start - 1) && {
                let below = self.entry(feed, start - 1)?.ok_or(StoreError::Corrupt("entry index"))?;
                entries[0].prev != hash_entry(feed, start - 1, &below)
            } {
                Some(start)
            } else {
                None
            };
        if let Some(seq) = broken_at {
            if let (Some(theirs), Some(ours)) = (anchor, meta.head.as_ref()) {
                self.record_fork_at(feed, seq, ours, theirs)?;
                return Err(IngestError::Fork(seq));
            }
            return Err(IngestError::BrokenChain(seq));
        }
        if let (Some(first), Some(newest)) = (messages.first(), messages.last()) {
            if start > 0
                && meta.has(start - 1)
                && self.clock_at(feed, start - 1)?.is_some_and(|(l, _)| l >= first.message.lamport)
            {
                return Err(IngestError::Order(start));
            }
            if meta.has(end) && self.clock_at(feed, end)?.is_some_and(|(l, _)| l <= newest.message.lamport) {
                return Err(IngestError::Order(end));
            }
        }

        // Store the runs we do not hold yet.
        let mut batch = sled::Batch::default();
        let mut stored = 0;
        let mut bytes = 0;
        let mut i = 0;
        while i < entries.len() {
            if meta.has(start + i as u64) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < entries.len() && !meta.has(start + j as u64) {
                j += 1;
            }
            let run_messages = (cipher.is_some()).then(|| &messages[i..j]);
            bytes += self.put_run(&mut batch, feed, start + i as u64, &entries[i..j], run_messages)?;
            stored += (j - i) as u64;
            i = j;
        }
        messages.retain(|m| !meta.has(m.seq));
        meta.add_range(start, end);
        if let Some(h) = &new_head {
            meta.head = Some(h.clone());
            batch.remove(&legacy_head_key(feed)[..]);
        }
        batch.insert(&meta_key(feed)[..], encode(&meta));
        batch.insert(&room_feed_key(room, feed)[..], &[][..]);
        self.log.apply_batch(batch)?;
        if new_head.is_some() {
            self.legacy_heads.write().unwrap_or_else(|p| p.into_inner()).remove(feed);
        }
        self.touch();
        Ok(Ingested { messages, stored, bytes, new_head })
    }

    /// Records two valid heads of `feed` for the same seq with different hashes: the proof
    /// that its writer forked.
    pub fn record_fork(&self, feed: &FeedKey, a: &SignedHead, b: &SignedHead) -> Result<(), StoreError> {
        self.record_fork_at(feed, a.seq, a, b)
    }

    /// Records that two validly signed heads of `feed` cannot both be true: their histories
    /// part at `seq` (same seq, different hashes; or one chain does not join the other).
    pub fn record_fork_at(&self, feed: &FeedKey, seq: u64, a: &SignedHead, b: &SignedHead) -> Result<(), StoreError> {
        tracing::warn!(feed = %hex::encode(&feed[..8]), seq, "writer signed two histories: fork recorded");
        self.log.insert(fork_key(feed, seq), encode(&(a, b)))?;
        self.touch();
        Ok(())
    }

    /// Feeds of `room` with a recorded fork, with the seq of the first proof.
    pub fn forks(&self, room: &DiscoveryKey) -> Result<Vec<(FeedKey, u64)>, StoreError> {
        let mut out = Vec::new();
        for (feed, _) in self.room_feeds(room)? {
            if let Some(kv) = self.log.scan_prefix(&fork_key(&feed, 0)[..33]).next() {
                let (k, _) = kv?;
                out.push((feed, key_seq(&k)?));
            }
        }
        Ok(out)
    }

    // ----- reading messages -----

    /// The largest Lamport clock of any stored message of the room, ignoring clocks past
    /// [`LAMPORT_MAX`] (stored by versions that did not bound them: one such message
    /// would otherwise exhaust the room's clock).
    pub fn max_lamport(&self, room: &DiscoveryKey) -> Result<u64, StoreError> {
        let mut max = 0;
        for (feed, _) in self.room_feeds(room)? {
            // Clocks rise with seq: the newest block with a valid clock holds the feed's largest.
            for kv in self.log.scan_prefix(&index_key(&feed, 0)[..33]).rev() {
                let (_, v) = kv?;
                let index: BlockIndex = decode(&v, "block index")?;
                if let Some(&(l, _)) = index.clocks().iter().rev().find(|&&(l, _)| l <= LAMPORT_MAX) {
                    max = max.max(l);
                    break;
                }
            }
        }
        Ok(max)
    }

    /// Whether the clocks of `feed` rise strictly with seq and stay within [`LAMPORT_MAX`]
    /// (peers refuse a feed that breaks this; a version without bounds could write one).
    pub fn feed_clocks_valid(&self, feed: &FeedKey) -> Result<bool, StoreError> {
        let mut last: Option<u64> = None;
        for kv in self.log.scan_prefix(&index_key(feed, 0)[..33]) {
            let (_, v) = kv?;
            let index: BlockIndex = decode(&v, "block index")?;
            for (l, _) in index.clocks() {
                if l > LAMPORT_MAX || last.is_some_and(|p| p >= l) {
                    return Ok(false);
                }
                last = Some(l);
            }
        }
        Ok(true)
    }

    /// The order key of a stored message, for paging.
    pub fn order_key_of(&self, feed: &FeedKey, seq: u64) -> Result<Option<OrderKey>, StoreError> {
        Ok(self.clock_at(feed, seq)?.map(|(lamport, time)| (lamport, time, *feed, seq)))
    }

    /// The newest stored seq of `feed` whose order key is below `before`.
    fn last_below(&self, feed: &FeedKey, meta: &FeedMeta, before: &OrderKey) -> Result<Option<u64>, StoreError> {
        let key_at = |seq: u64| -> Result<Option<OrderKey>, StoreError> {
            Ok(self.clock_at(feed, seq)?.map(|(l, t)| (l, t, *feed, seq)))
        };
        for &(s, e) in meta.ranges.iter().rev() {
            if key_at(s)?.is_none_or(|k| k >= *before) {
                continue;
            }
            // key(lo) < before; the answer is in lo..hi. Keys increase with seq in a feed.
            let (mut lo, mut hi) = (s, e);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if key_at(mid)?.is_some_and(|k| k < *before) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            return Ok(Some(lo));
        }
        Ok(None)
    }

    /// Up to `limit` messages of the room in display order, the newest page, or the page
    /// right before `before`; returned oldest first. A page stops short of `limit` once it
    /// holds [`HISTORY_PAGE_BYTES`] of ciphertext (at least one message): the caller pages
    /// on with the oldest message as `before`.
    pub fn history(
        &self,
        room: &DiscoveryKey,
        content_key: &Key32,
        before: Option<&OrderKey>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // The newest `limit` keys of each feed below `before`, merged.
        let mut keys: Vec<OrderKey> = Vec::new();
        for (feed, meta) in self.room_feeds(room)? {
            if self.is_blocked(room, &feed)? {
                continue;
            }
            let top = match before {
                Some(b) => self.last_below(&feed, &meta, b)?,
                None => meta.ranges.last().map(|&(_, e)| e - 1),
            };
            // A removed writer's entries from before the rotation came in, past what stays.
            let top = match (top, self.cut(room, &feed)) {
                (Some(top), Some(cut)) => cut.length.checked_sub(1).map(|last| top.min(last)),
                (top, _) => top,
            };
            let Some(top) = top else { continue };
            let mut taken = 0;
            for kv in self.log.range(index_key(&feed, 0)..=index_key(&feed, top)).rev() {
                let (k, v) = kv?;
                let at = key_seq(&k)?;
                let index: BlockIndex = decode(&v, "block index")?;
                for (i, (lamport, time)) in index.clocks().into_iter().enumerate().rev() {
                    let seq = at + i as u64;
                    // Clocks past the bound come only from versions that did not check them.
                    if seq > top || taken == limit || lamport > LAMPORT_MAX {
                        continue;
                    }
                    keys.push((lamport, time, feed, seq));
                    taken += 1;
                }
                if taken == limit {
                    break;
                }
            }
        }
        keys.sort_unstable();
        let keys = &keys[keys.len().saturating_sub(limit)..];
        let mut ciphers: HashMap<FeedKey, FeedCipher> = HashMap::new();
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        // Newest first, so that a page cut by its byte budget keeps the newest messages.
        // Consecutive seqs of one feed come from one read of the run that ends at `seq`.
        let mut cache: Option<(FeedKey, u64, Vec<Entry>)> = None;
        let mut damaged: Vec<FeedKey> = Vec::new();
        for &(_, _, feed, seq) in keys.iter().rev() {
            if bytes >= HISTORY_PAGE_BYTES {
                break;
            }
            let cached = cache.as_ref().filter(|(f, s, e)| *f == feed && *s <= seq && seq < s + e.len() as u64);
            let entry = match cached {
                Some((_, s, e)) => e[(seq - s) as usize].clone(),
                None => {
                    // From at most a block below, within the stored run that holds `seq`.
                    let run_start = self.feed_meta(&feed)?.and_then(|m| m.run_start(seq)).unwrap_or(seq);
                    let from = seq.saturating_sub(BLOCK_ENTRIES as u64 - 1).max(run_start);
                    let run = match self.entries(&feed, from, seq + 1) {
                        Ok(run) if run.len() as u64 == seq + 1 - from => run,
                        // A damaged block (its checksum caught it) costs its own messages,
                        // not the page: the others are still shown.
                        Ok(_) | Err(StoreError::Corrupt(_)) => {
                            tracing::warn!(feed = %hex::encode(&feed[..8]), seq, "a stored block is damaged; its messages are left out of history");
                            damaged.push(feed);
                            cache = None;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let entry = run.last().cloned().ok_or(StoreError::Corrupt("block index"))?;
                    cache = Some((feed, from, run));
                    entry
                }
            };
            bytes += entry.ciphertext.len();
            let cipher = ciphers.entry(feed).or_insert_with(|| FeedCipher::new(content_key, &feed));
            let Some(message) = cipher.open(seq, &entry).ok().and_then(|p| Message::decode(&p)) else {
                tracing::warn!(feed = %hex::encode(&feed[..8]), seq, "a stored entry does not decrypt; left out of history");
                continue;
            };
            out.push(StoredMessage { feed_key: feed, seq, message });
        }
        // Damaged blocks are forgotten, so that the next catch-up fetches them again (a
        // short read without damage finds nothing to forget).
        damaged.sort_unstable();
        damaged.dedup();
        for feed in damaged {
            match self.forget_damaged(&feed) {
                Ok(ranges) if !ranges.is_empty() => {
                    self.forgotten.lock().unwrap_or_else(|p| p.into_inner()).push(feed);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(feed = %hex::encode(&feed[..8]), error = %e, "cannot forget damaged blocks"),
            }
        }
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::new_writer;

    fn text(s: &str) -> Body {
        Body::Text { text: s.into() }
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    fn tmp() -> (tempdir::Dir, Store) {
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        (d, s)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "peerlog-store-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn rotation(lamport: u64, feed: u8) -> Rotation {
        Rotation {
            at: MessageRef { feed: FeedKey([feed; 32]), seq: 1 },
            lamport,
            removed: vec![FeedKey([9; 32])],
            kept: vec![],
            sealed: vec![],
            admin: FeedKey([8; 32]),
            next: None,
            superseded: vec![],
        }
    }

    #[test]
    fn the_first_rotation_by_clock_is_kept_in_any_order_of_arrival() {
        let room = DiscoveryKey([3; 32]);
        let (a, b, c) = (rotation(5, 2), rotation(5, 1), rotation(7, 0));
        for order in [[&a, &b, &c], [&c, &a, &b], [&b, &c, &a]] {
            let (_d, s) = tmp();
            for r in order {
                s.note_rotation(&room, r).unwrap();
            }
            assert_eq!(s.rotation(&room).unwrap().as_ref(), Some(&b), "the lowest (clock, writer, seq) wins");
            assert_eq!(
                s.cut(&room, &FeedKey([9; 32])).map(|c| c.length),
                Some(0),
                "the removed writer's entries are refused"
            );
            assert_eq!(s.cut(&room, &FeedKey([1; 32])), None);
            assert!(!s.note_rotation(&room, &b).unwrap(), "the same one again changes nothing");
            assert!(s.set_rotation_next(&room, &b.at, &DiscoveryKey([4; 32])).unwrap());
            assert_eq!(s.moved_to(&room).unwrap(), Some(DiscoveryKey([4; 32])));
            assert_eq!(s.rotation(&DiscoveryKey([5; 32])).unwrap(), None);
        }
    }

    #[test]
    fn every_member_chooses_the_same_rotation_by_who_may_remove_whom() {
        let room = DiscoveryKey([3; 32]);
        let (root, named, member) = (FeedKey([1; 32]), FeedKey([2; 32]), FeedKey([3; 32]));
        let by = |author: FeedKey, lamport: u64, removed: FeedKey| Rotation {
            at: MessageRef { feed: author, seq: lamport },
            removed: vec![removed],
            ..rotation(lamport, 0)
        };
        // The named admin removes a member first by clock; the room's admin removes the named
        // admin; the named admin's try at the room's admin and a member's at anyone count for
        // nothing.
        let (answered, answer) = (by(named, 5, member), by(root, 9, named));
        let (at_root, by_member) = (by(named, 4, root), by(member, 3, named));
        let all = [&answered, &answer, &at_root, &by_member];
        for order in [[0, 1, 2, 3], [1, 0, 3, 2], [3, 2, 1, 0], [2, 3, 0, 1]] {
            let (_d, s) = tmp();
            s.set_admin_binding(&room, &crate::keys::AdminBound { seed: [7; 32], admin: root }).unwrap();
            s.note_admin_grant(&room, &named, 1, true).unwrap();
            for i in order {
                s.note_rotation(&room, all[i]).unwrap();
            }
            let kept = s.rotation(&room).unwrap().map(|r| r.at);
            assert_eq!(kept, Some(answer.at), "order {order:?}: the removal of a remover wins");
            assert!(s.cut(&room, &named).is_some() && s.cut(&room, &member).is_none());
        }
        // A rotation by a member named admin only later counts once the naming arrives.
        let (_d, s) = tmp();
        s.set_admin_binding(&room, &crate::keys::AdminBound { seed: [7; 32], admin: root }).unwrap();
        assert!(!s.note_rotation(&room, &answered).unwrap(), "not an admin yet");
        s.note_admin_grant(&room, &named, 1, true).unwrap();
        assert!(s.rechoose_rotation(&room).unwrap());
        assert_eq!(s.rotation(&room).unwrap().map(|r| r.at), Some(answered.at));
        assert!(!s.may_remove(&room, &named, &[root]).unwrap() && s.may_remove(&room, &root, &[named]).unwrap());
    }

    #[test]
    fn a_followed_rotation_replaced_by_an_earlier_one_leaves_its_room_superseded() {
        let room = DiscoveryKey([3; 32]);
        let (late, early, earliest) = (rotation(7, 1), rotation(6, 2), rotation(5, 3));
        let (_d, s) = tmp();
        s.note_rotation(&room, &late).unwrap();
        assert!(s.set_rotation_next(&room, &late.at, &DiscoveryKey([4; 32])).unwrap());
        assert!(s.note_rotation(&room, &early).unwrap());
        assert_eq!(s.moved_to(&room).unwrap(), None, "the earlier rotation is not followed yet");
        // Following `early` while `earliest` arrives: its room is superseded too.
        assert!(s.note_rotation(&room, &earliest).unwrap());
        assert!(!s.set_rotation_next(&room, &early.at, &DiscoveryKey([5; 32])).unwrap());
        let kept = s.rotation(&room).unwrap().unwrap();
        assert_eq!((kept.at, kept.lamport), (earliest.at, 5));
        assert_eq!(kept.superseded, vec![DiscoveryKey([4; 32]), DiscoveryKey([5; 32])]);
        s.set_superseded(&DiscoveryKey([4; 32]), &DiscoveryKey([6; 32])).unwrap();
        assert_eq!(s.moved_to(&DiscoveryKey([4; 32])).unwrap(), Some(DiscoveryKey([6; 32])));
    }

    #[test]
    fn ranges_merge_and_gaps() {
        let mut m = FeedMeta::default();
        m.add_range(10, 20);
        m.add_range(0, 5);
        m.add_range(5, 7);
        assert_eq!(m.ranges, vec![(0, 7), (10, 20)]);
        assert_eq!(m.missing(25), vec![(20, 25), (7, 10)]);
        assert_eq!(m.missing(8), vec![(7, 8)]);
        assert_eq!(m.run_start(15), Some(10));
        assert!(m.has(6) && !m.has(7));
    }

    /// A writer's feed in one store is copied, verified, into another, newest batch first.
    #[test]
    fn ingest_newest_first_and_reject_tampering() {
        let room = DiscoveryKey([3u8; 32]);
        let content = [4u8; 32];
        let (_d1, a) = tmp();
        let (_d2, b) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&content, &feed);
        let mut head = None;
        for i in 0..10 {
            head = Some(a.append(&room, &w, &c, i + 1, vec![text(&format!("m{i}"))]).unwrap().head);
        }
        let head = head.unwrap();
        let all = a.entries(&feed, 0, 10).unwrap();
        assert_eq!(all.len(), 10);

        // Not anchored: the newest batch without its head.
        assert!(matches!(b.ingest(&room, Some(&c), &feed, 5, &all[5..], None), Err(IngestError::NotAnchored)));
        // Flipped ciphertext byte: the hash no longer matches the signed head.
        let mut bad = all[5..].to_vec();
        bad[4].ciphertext[0] ^= 1;
        assert!(b.ingest(&room, Some(&c), &feed, 5, &bad, Some(&head)).is_err());
        // Broken chain inside the batch.
        let mut bad = all[5..].to_vec();
        bad[2].prev[0] ^= 1;
        assert!(matches!(b.ingest(&room, Some(&c), &feed, 5, &bad, Some(&head)), Err(IngestError::BrokenChain(7))));
        // Bad signature.
        let mut forged = head.clone();
        forged.signature[0] ^= 1;
        assert!(matches!(b.ingest(&room, Some(&c), &feed, 5, &all[5..], Some(&forged)), Err(IngestError::BadHead)));
        // Wrong content key: AEAD fails even though the chain and signature hold.
        let wrong = FeedCipher::new(&[9; 32], &feed);
        assert!(matches!(
            b.ingest(&room, Some(&wrong), &feed, 5, &all[5..], Some(&head)),
            Err(IngestError::Decrypt(5))
        ));
        assert!(b.feed_meta(&feed).unwrap().is_none(), "nothing of a refused batch is stored");
        assert!(b.history(&room, &content, None, 100).unwrap().is_empty());

        // Good: newest half anchored by the head, then the older half by the stored successor.
        let got = b.ingest(&room, Some(&c), &feed, 5, &all[5..], Some(&head)).unwrap();
        assert_eq!((got.stored, got.messages.len()), (5, 5));
        assert_eq!(got.new_head.as_ref(), Some(&head));
        let got = b.ingest(&room, Some(&c), &feed, 0, &all[..5], None).unwrap();
        assert_eq!((got.stored, got.new_head), (5, None));
        let meta = b.feed_meta(&feed).unwrap().unwrap();
        assert_eq!(meta.ranges, vec![(0, 10)]);
        let ha = a.history(&room, &content, None, 100).unwrap();
        let hb = b.history(&room, &content, None, 100).unwrap();
        assert_eq!(ha, hb);
        // Paging: the 3 messages before the 8th.
        let key = b.order_key_of(&feed, 7).unwrap().unwrap();
        let page = b.history(&room, &content, Some(&key), 3).unwrap();
        assert_eq!(page.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5, 6]);
        // Blind store: stores and serves, cannot decrypt, indexes nothing.
        let (_d3, blind) = tmp();
        let got = blind.ingest(&room, None, &feed, 0, &all, Some(&head)).unwrap();
        assert_eq!((got.stored, got.messages.len()), (10, 0));
        assert_eq!(blind.entries(&feed, 0, 10).unwrap(), all);
    }

    /// History merges the feeds of a room in (lamport, time, feed, seq) order, pages
    /// backwards across feeds and blocks, and survives a reopen.
    #[test]
    fn a_history_page_stops_at_its_byte_budget_and_paging_gets_the_rest() {
        let room = DiscoveryKey([6u8; 32]);
        let content = [7u8; 32];
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        let w = new_writer();
        let c = FeedCipher::new(&content, &FeedKey(w.verifying_key().to_bytes()));
        let big = "x".repeat(60_000);
        s.append(&room, &w, &c, 1, (0..150).map(|i| text(&format!("{i} {big}"))).collect()).unwrap();
        let page = s.history(&room, &content, None, 1000).unwrap();
        let budget = HISTORY_PAGE_BYTES / 60_000;
        assert!(page.len() >= budget && page.len() <= budget + 1, "{} messages in a page", page.len());
        assert_eq!(page.last().unwrap().seq, 149, "the newest are kept");
        let key = |m: &StoredMessage| (m.message.lamport, m.message.time_ms, m.feed_key, m.seq);
        let (mut all, mut before) = (page.clone(), Some(key(&page[0])));
        while let Some(b) = before {
            let older = s.history(&room, &content, Some(&b), 1000).unwrap();
            before = older.first().map(key);
            all.splice(0..0, older);
        }
        assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (0..150).collect::<Vec<_>>());
    }

    /// A writer's feed of `n` messages appended in `src`: its writer key, entries and head.
    fn a_feed(src: &Store, room: &DiscoveryKey, content: &Key32, n: u64) -> (FeedKey, Vec<Entry>, SignedHead) {
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(content, &feed);
        let bodies = (0..n).map(|i| text(&format!("m{i}"))).collect();
        let head = src.append(room, &w, &c, 1, bodies).unwrap().head;
        (feed, src.entries(&feed, 0, n).unwrap(), head)
    }

    #[test]
    fn quotas_bound_what_one_writer_and_one_room_can_store() {
        let (room, content) = (DiscoveryKey([3u8; 32]), [4u8; 32]);
        let (_d1, src) = tmp();
        let quota = WriterQuota { entries: 10, bytes: u64::MAX, writers: 2 };
        let (_d2, dst) = tmp();
        let dst = dst.with_writer_quota(quota);
        let ingest = |feed: &FeedKey, entries: &[Entry], head: &SignedHead, quota: &WriterQuota| {
            let c = FeedCipher::new(&content, feed);
            dst.ingest_bounded(&room, Some(&c), feed, 0, entries, Some(head), LAMPORT_MAX, quota)
        };
        let (f1, e1, h1) = a_feed(&src, &room, &content, 11);
        assert!(matches!(ingest(&f1, &e1, &h1, &quota), Err(IngestError::Quota(QuotaKind::Entries))));
        let (f1, e1, h1) = a_feed(&src, &room, &content, 10);
        ingest(&f1, &e1, &h1, &quota).expect("exactly the quota");
        let (f2, e2, h2) = a_feed(&src, &room, &content, 1);
        ingest(&f2, &e2, &h2, &quota).expect("the second writer");
        let (f3, e3, h3) = a_feed(&src, &room, &content, 1);
        assert!(matches!(ingest(&f3, &e3, &h3, &quota), Err(IngestError::Quota(QuotaKind::Writers))));
        let small = WriterQuota { bytes: 100, ..WriterQuota::NONE };
        let (f4, e4, h4) = a_feed(&src, &room, &content, 5);
        assert!(matches!(ingest(&f4, &e4, &h4, &small), Err(IngestError::Quota(QuotaKind::Bytes))));
        assert!(
            dst.feed_meta(&f3).unwrap().is_none() && dst.feed_meta(&f4).unwrap().is_none(),
            "nothing of a refused batch is stored"
        );
    }

    #[test]
    fn a_blocked_writer_is_refused_hidden_and_not_announced_until_unblocked() {
        let (room, content) = (DiscoveryKey([3u8; 32]), [4u8; 32]);
        let (_d1, src) = tmp();
        let (_d2, dst) = tmp();
        let (f1, e1, h1) = a_feed(&src, &room, &content, 3);
        let c1 = FeedCipher::new(&content, &f1);
        dst.set_blocked(&room, &f1, true).unwrap();
        assert!(matches!(dst.ingest(&room, Some(&c1), &f1, 0, &e1, Some(&h1)), Err(IngestError::Blocked)));
        dst.set_blocked(&room, &f1, false).unwrap();
        dst.ingest(&room, Some(&c1), &f1, 0, &e1, Some(&h1)).unwrap();
        assert_eq!(dst.history(&room, &content, None, 10).unwrap().len(), 3);
        // Blocked in every room (the all-zero room): hidden, not announced, refused.
        dst.set_blocked(&DiscoveryKey(ZERO), &f1, true).unwrap();
        assert!(dst.is_blocked(&room, &f1).unwrap());
        assert!(dst.history(&room, &content, None, 10).unwrap().is_empty());
        assert!(dst.room_heads(&room).unwrap().is_empty());
        assert_eq!(dst.blocked_writers(&DiscoveryKey(ZERO)).unwrap(), vec![f1]);
        let (f2, e2, h2) = a_feed(&src, &room, &content, 1);
        dst.ingest(&room, Some(&FeedCipher::new(&content, &f2)), &f2, 0, &e2, Some(&h2))
            .expect("others are not blocked");
        assert_eq!(dst.history(&room, &content, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn history_merges_feeds_and_pages() {
        let room = DiscoveryKey([6u8; 32]);
        let content = [7u8; 32];
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        let (w1, w2) = (new_writer(), new_writer());
        let (c1, c2) = (
            FeedCipher::new(&content, &FeedKey(w1.verifying_key().to_bytes())),
            FeedCipher::new(&content, &FeedKey(w2.verifying_key().to_bytes())),
        );
        // Interleaved clocks; w1 writes a batch larger than a block.
        let big: Vec<Body> = (0..BLOCK_ENTRIES + 10).map(|i| text(&format!("a{i}"))).collect();
        s.append(&room, &w1, &c1, 1, big).unwrap();
        for i in 0..20u64 {
            s.append(&room, &w2, &c2, 2 * i + 1000, vec![text(&format!("b{i}"))]).unwrap();
            s.append(&room, &w1, &c1, 2 * i + 1001, vec![text(&format!("c{i}"))]).unwrap();
        }
        assert_eq!(s.max_lamport(&room).unwrap(), 1039);
        let all = s.history(&room, &content, None, 10_000).unwrap();
        assert_eq!(all.len(), BLOCK_ENTRIES + 10 + 40);
        let key = |m: &StoredMessage| (m.message.lamport, m.message.time_ms, m.feed_key, m.seq);
        assert!(all.windows(2).all(|w| key(&w[0]) < key(&w[1])), "display order");
        // Page backwards 7 at a time and get the same sequence.
        let mut paged = Vec::new();
        let mut before = None;
        loop {
            let page = s.history(&room, &content, before.as_ref(), 7).unwrap();
            if page.is_empty() {
                break;
            }
            before = Some(key(&page[0]));
            assert_eq!(s.order_key_of(&page[0].feed_key, page[0].seq).unwrap(), before);
            paged.splice(0..0, page);
        }
        assert_eq!(paged, all);
        drop(s);
        let s = Store::open(&d.0).unwrap();
        assert_eq!(s.history(&room, &content, None, 10_000).unwrap(), all);
    }

    /// A damaged data file is reported as corrupt, never served as entries.
    #[test]
    fn damaged_block_is_detected() {
        let room = DiscoveryKey([9u8; 32]);
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        s.append(&room, &w, &c, 1, vec![text("one"), text("two")]).unwrap();
        // What a peer holds: a good copy.
        let good = s.entries(&feed, 0, 2).unwrap();
        assert_eq!(good.len(), 2);
        let path = d.0.join("blocks").join(hex::encode(feed));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let e = s.entries(&feed, 0, 2).expect_err("a flipped byte must be caught");
        assert!(e.to_string().contains("checksum"), "{e}");
        // History leaves the damaged block's messages out and shows the rest.
        let w2 = new_writer();
        let c2 = FeedCipher::new(&[1; 32], &FeedKey(w2.verifying_key().to_bytes()));
        s.append(&room, &w2, &c2, 3, vec![text("intact")]).unwrap();
        let page = s.history(&room, &[1; 32], None, 50).expect("a damaged block must not break history");
        let texts: Vec<_> = page.iter().map(|m| m.message.body.clone()).collect();
        assert_eq!(texts, vec![Some(text("intact"))]);
        // The damaged block was forgotten: its entries are missing, to be fetched again,
        // and a good copy (as a peer sends it) is taken back.
        let meta = s.feed_meta(&feed).unwrap().unwrap();
        assert_eq!(meta.missing(2), vec![(0, 2)], "the damaged entries are marked missing");
        s.ingest(&room, Some(&c), &feed, 0, &good, None).expect("re-fetched entries anchor on the stored head");
        let page = s.history(&room, &[1; 32], None, 50).unwrap();
        assert_eq!(page.len(), 3, "the damaged messages are back");
    }

    /// What a power cut can leave: sled kept the pointers of the last appends (it writes
    /// its log between flushes) while their bytes never reached the data file. Drops the
    /// store, as the cut does, after cutting the feed's data file back to its synced length.
    fn lose_unsynced_blocks(d: &tempdir::Dir, s: Store, feed: &FeedKey) {
        s.db.flush().unwrap();
        let synced = u64::from_be_bytes(
            s.log.get(synced_key(feed)).unwrap().expect("synced length").as_ref().try_into().unwrap(),
        );
        drop(s);
        let f = std::fs::OpenOptions::new().write(true).open(d.0.join("blocks").join(hex::encode(feed))).unwrap();
        assert!(f.metadata().unwrap().len() > synced, "the test needs unsynced blocks");
        f.set_len(synced).unwrap();
    }

    /// After a power cut that kept pointers to lost blocks of our own feed, the store opens
    /// with the feed cut back to its last synced entry and its head signed again there, and
    /// the next append continues the chain: a peer takes the whole feed, without a hole.
    #[test]
    fn a_power_cut_that_lost_our_own_unsynced_blocks_is_repaired_at_open() {
        let room = DiscoveryKey([9u8; 32]);
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let record =
            RoomRecord { access: Access::Member([1; 32]), name: "r".into(), writer: w.to_bytes(), joined_ms: 0 };
        s.put_room(&room, &record).unwrap();
        let c = FeedCipher::new(&[1; 32], &feed);
        s.append(&room, &w, &c, 1, vec![text("one"), text("two")]).unwrap();
        block_on(s.flush()).unwrap();
        s.append(&room, &w, &c, 3, vec![text("lost three")]).unwrap();
        s.append(&room, &w, &c, 4, vec![text("lost four")]).unwrap();
        lose_unsynced_blocks(&d, s, &feed);

        let s = Store::open(&d.0).unwrap();
        let meta = s.feed_meta(&feed).unwrap().unwrap();
        assert_eq!((meta.length(), meta.stored()), (2, 2), "our feed is cut back to its synced entries");
        let head = meta.head.clone().unwrap();
        assert!(verify_head(&room, &head) && head.feed_key == feed, "the new head is signed by us");
        assert_eq!(head.hash, hash_entry(&feed, 1, &s.entries(&feed, 1, 2).unwrap()[0]));
        s.append(&room, &w, &c, 3, vec![text("three")]).unwrap();
        let entries = s.entries(&feed, 0, 3).unwrap();
        let head = s.feed_meta(&feed).unwrap().unwrap().head.unwrap();
        let (_d2, peer) = tmp();
        let got =
            peer.ingest(&room, Some(&c), &feed, 0, &entries, Some(&head)).expect("the chain holds across the cut");
        assert_eq!(got.stored, 3);
    }

    /// Another writer's blocks that a power cut lost are forgotten at open and fetched
    /// again (the stored head anchors them); its synced blocks stay.
    #[test]
    fn a_power_cut_that_lost_another_writers_unsynced_blocks_forgets_them_at_open() {
        let room = DiscoveryKey([9u8; 32]);
        let (_dw, writer) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        writer.append(&room, &w, &c, 1, vec![text("one"), text("two")]).unwrap();
        writer.append(&room, &w, &c, 3, vec![text("three")]).unwrap();
        let entries = writer.entries(&feed, 0, 3).unwrap();
        let head = writer.feed_meta(&feed).unwrap().unwrap().head.unwrap();

        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        s.ingest(&room, Some(&c), &feed, 2, &entries[2..], Some(&head)).unwrap();
        block_on(s.flush()).unwrap();
        s.ingest(&room, Some(&c), &feed, 0, &entries[..2], None).unwrap();
        lose_unsynced_blocks(&d, s, &feed);

        let s = Store::open(&d.0).unwrap();
        assert_eq!(s.take_forgotten(), vec![feed], "the feed is re-wanted");
        let meta = s.feed_meta(&feed).unwrap().unwrap();
        assert_eq!(meta.missing(3), vec![(0, 2)], "the lost blocks are missing again, the synced one kept");
        assert_eq!(meta.length(), 3, "the head stays");
        s.ingest(&room, Some(&c), &feed, 0, &entries[..2], None).expect("re-fetched blocks anchor on what is stored");
        assert_eq!(s.history(&room, &[1; 32], None, 10).unwrap().len(), 3);
    }

    /// A head as format 2 signed it: not bound to the room.
    fn sign_head_v1(writer: &SigningKey, seq: u64, hash: Key32) -> SignedHead {
        use ed25519_dalek::Signer;
        let mut m = b"peerlog/head/v1".to_vec();
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(&hash);
        let signature = writer.sign(&m).to_bytes().to_vec();
        SignedHead { feed_key: FeedKey(writer.verifying_key().to_bytes()), seq, hash, signature }
    }

    /// A head signed for another room is refused: a feed cannot be carried from one room
    /// into another.
    /// Device proofs, unlinks and continuations are kept per room, survive a reopen until
    /// acted on, and go with the room.
    #[test]
    fn membership_records_outlive_a_restart_until_acted_on() {
        let (room, other) = (DiscoveryKey([9u8; 32]), DiscoveryKey([10u8; 32]));
        let (person, device, writer, by) = ([1u8; 32], [2u8; 32], FeedKey([3; 32]), FeedKey([4; 32]));
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.note_device(&room, &writer, 5, &person, &device).unwrap();
            s.note_device(&room, &writer, 7, &[8; 32], &device).unwrap();
            assert_eq!(s.devices(&room).unwrap().get(&writer), Some(&(person, device)), "the first proof counts");
            s.note_unlink(&room, &person, &device, &by).unwrap();
            s.note_continuation(&room, &writer, &by).unwrap();
            s.note_continuation(&other, &writer, &by).unwrap();
            s.flush_blocking().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert!(s.devices(&room).unwrap().is_empty(), "an unlinked device is nobody's");
        assert_eq!(s.device_writers(&room, &device).unwrap(), vec![writer]);
        assert!(s.is_unlinked(&room, &person, &device).unwrap() && !s.is_unlinked(&room, &[8; 32], &device).unwrap());
        assert_eq!(s.unlinks().unwrap(), vec![(room, device, by)]);
        assert_eq!(s.continuations().unwrap().len(), 2);
        s.carried_over(&room, &writer).unwrap();
        assert_eq!(s.continuations().unwrap(), vec![(other, writer, by)]);
        s.remove_room(&other).unwrap();
        assert!(s.continuations().unwrap().is_empty());
    }

    #[test]
    fn a_head_signed_for_another_room_anchors_nothing() {
        let (room, other) = (DiscoveryKey([9u8; 32]), DiscoveryKey([10u8; 32]));
        let (_dw, writer) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        writer.append(&other, &w, &c, 1, vec![text("elsewhere")]).unwrap();
        let entries = writer.entries(&feed, 0, 1).unwrap();
        let head = writer.feed_meta(&feed).unwrap().unwrap().head.unwrap();
        let (_d, s) = tmp();
        let e = s.ingest(&room, Some(&c), &feed, 0, &entries, Some(&head)).expect_err("another room's head");
        assert!(matches!(e, IngestError::BadHead), "{e}");
        s.ingest(&other, Some(&c), &feed, 0, &entries, Some(&head)).expect("the head's own room");
    }

    /// Opening a format-2 store (heads not bound to the room): our own heads are signed
    /// again for their room; another writer's head stays for local checks but is not
    /// announced until the same head, bound to the room, replaces it.
    #[test]
    fn a_format_2_store_is_migrated() {
        let room = DiscoveryKey([9u8; 32]);
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        let me = new_writer();
        let mine = FeedKey(me.verifying_key().to_bytes());
        let record =
            RoomRecord { access: Access::Member([1; 32]), name: "r".into(), writer: me.to_bytes(), joined_ms: 0 };
        s.put_room(&room, &record).unwrap();
        let cm = FeedCipher::new(&[1; 32], &mine);
        s.append(&room, &me, &cm, 1, vec![text("mine")]).unwrap();
        let them = new_writer();
        let theirs = FeedKey(them.verifying_key().to_bytes());
        let ct = FeedCipher::new(&[1; 32], &theirs);
        let (_dw, writer) = tmp();
        writer.append(&room, &them, &ct, 2, vec![text("one"), text("two")]).unwrap();
        writer.append(&room, &them, &ct, 4, vec![text("three")]).unwrap();
        let entries = writer.entries(&theirs, 0, 3).unwrap();
        let v3 = writer.feed_meta(&theirs).unwrap().unwrap().head.unwrap();
        let v1 = sign_head_v1(&them, v3.seq, v3.hash);
        s.ingest(&room, Some(&ct), &theirs, 2, &entries[2..], Some(&v3)).unwrap();
        // Make it what format 2 wrote: old heads, format 2.
        for (feed, key) in [(mine, &me), (theirs, &them)] {
            let mut meta = s.feed_meta(&feed).unwrap().unwrap();
            let h = meta.head.take().unwrap();
            meta.head = Some(sign_head_v1(key, h.seq, h.hash));
            s.log.insert(meta_key(&feed), encode(&meta)).unwrap();
        }
        s.db.insert("format", &2u32.to_be_bytes()).unwrap();
        block_on(s.flush()).unwrap();
        drop(s);

        let s = Store::open(&d.0).unwrap();
        let own = s.feed_meta(&mine).unwrap().unwrap().head.unwrap();
        assert!(verify_head(&room, &own), "our own head is signed again for its room");
        assert!(!s.has_legacy_head(&mine));
        assert!(s.has_legacy_head(&theirs), "another writer's old head is marked");
        assert_eq!(s.feed_meta(&theirs).unwrap().unwrap().head, Some(v1.clone()), "and kept");
        let announced: Vec<FeedKey> = s.room_heads(&room).unwrap().iter().map(|h| h.feed_key).collect();
        assert_eq!(announced, vec![mine], "an old head is not announced");
        // It still anchors what we fetch of that feed.
        s.ingest(&room, Some(&ct), &theirs, 0, &entries[..2], None).expect("the old head checks the rest locally");
        // The same head bound to the room replaces it.
        assert!(
            !s.upgrade_head(&theirs, &sign_head(&them, &room, 1, v3.hash)).unwrap(),
            "another seq is not the same head"
        );
        assert!(s.upgrade_head(&theirs, &v3).unwrap());
        assert!(!s.has_legacy_head(&theirs));
        assert_eq!(s.room_heads(&room).unwrap().len(), 2);
        drop(s);
        let s = Store::open(&d.0).unwrap();
        assert!(!s.has_legacy_head(&theirs), "the replacement is stored");
    }

    #[test]
    fn another_format_is_refused() {
        let d = tempdir::Dir::new();
        let s = Store::open(&d.0).unwrap();
        s.db.insert("format", &1u32.to_be_bytes()).unwrap();
        drop(s);
        let e = Store::open(&d.0).err().expect("format 1 must be refused");
        assert!(e.to_string().contains("format 1"), "{e}");
    }

    /// The byte count kept in memory matches a fresh count from the block pointers.
    #[test]
    fn feed_bytes_stay_right_across_writes_and_reopening() {
        let room = DiscoveryKey([4u8; 32]);
        let (d, a) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        assert_eq!(a.feed_bytes(&feed).unwrap(), 0);
        a.append(&room, &w, &c, 1, vec![text("one"), text("two")]).unwrap();
        let first = a.feed_bytes(&feed).unwrap();
        assert!(first > 0);
        a.append(&room, &w, &c, 3, vec![text("three")]).unwrap();
        let second = a.feed_bytes(&feed).unwrap();
        assert!(second > first);
        tokio::runtime::Runtime::new().unwrap().block_on(a.flush()).unwrap();
        drop(a);
        assert_eq!(Store::open(&d.0).unwrap().feed_bytes(&feed).unwrap(), second);
    }

    /// A writer whose clock goes backwards is refused (display order relies on it).
    #[test]
    fn clock_going_backwards_is_refused() {
        let room = DiscoveryKey([8u8; 32]);
        let (_d1, a) = tmp();
        let (_d2, b) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        a.append(&room, &w, &c, 5, vec![text("five")]).unwrap();
        let h = a.append(&room, &w, &c, 3, vec![text("three")]).unwrap().head;
        let e = b.ingest(&room, Some(&c), &feed, 0, &a.entries(&feed, 0, 2).unwrap(), Some(&h));
        assert!(matches!(e, Err(IngestError::Order(1))), "{e:?}");
        // Across batches: the newer entry is stored first, then the older one is refused.
        let e = b.ingest(&room, Some(&c), &feed, 1, &a.entries(&feed, 1, 2).unwrap(), Some(&h));
        assert!(e.is_ok(), "{e:?}");
        let e = b.ingest(&room, Some(&c), &feed, 0, &a.entries(&feed, 0, 1).unwrap(), None);
        assert!(matches!(e, Err(IngestError::Order(1))), "{e:?}");
    }

    #[test]
    fn fork_is_recorded_and_refused() {
        let room = DiscoveryKey([5u8; 32]);
        let (_d1, a) = tmp();
        let (_d2, a2) = tmp();
        let (_d3, b) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        let h1 = a.append(&room, &w, &c, 1, vec![text("one")]).unwrap().head;
        // The same writer key used from a copied data dir signs another seq 0.
        let h2 = a2.append(&room, &w, &c, 1, vec![text("other")]).unwrap().head;
        assert_eq!(h1.seq, h2.seq);
        b.ingest(&room, Some(&c), &feed, 0, &a.entries(&feed, 0, 1).unwrap(), Some(&h1)).unwrap();
        let e = b.ingest(&room, Some(&c), &feed, 0, &a2.entries(&feed, 0, 1).unwrap(), Some(&h2));
        assert!(matches!(e, Err(IngestError::Fork(0))));
        assert_eq!(b.forks(&room).unwrap(), vec![(feed, 0)]);
    }

    /// A copied data dir writes on: both copies share seqs 0..3 and then differ. A peer
    /// that holds one history gets a signed batch of the other, newer than anything it
    /// holds: no head shares a seq with ours, but the batch does not join our entries.
    /// That is a fork too (recorded), and unsigned data that does not join stays an error.
    #[test]
    fn a_signed_batch_that_does_not_join_stored_entries_is_a_fork() {
        let room = DiscoveryKey([6u8; 32]);
        let (d1, a) = tmp();
        let (_d3, b) = tmp();
        let w = new_writer();
        let feed = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &feed);
        for (i, t) in ["zero", "one", "two", "three"].iter().enumerate() {
            a.append(&room, &w, &c, i as u64 + 1, vec![text(t)]).unwrap();
        }
        tokio::runtime::Runtime::new().unwrap().block_on(a.flush()).unwrap();
        drop(a);
        let d2 = tempdir::Dir::new();
        copy_dir(&d1.0, &d2.0);
        let (a, a2) = (Store::open(&d1.0).unwrap(), Store::open(&d2.0).unwrap());
        assert_eq!(a.feed_meta(&feed).unwrap(), a2.feed_meta(&feed).unwrap(), "the copy holds the same history");
        let ours = a.append(&room, &w, &c, 5, vec![text("four")]).unwrap().head;
        a2.append(&room, &w, &c, 5, vec![text("four, copied")]).unwrap();
        let theirs = a2.append(&room, &w, &c, 6, vec![text("five, copied")]).unwrap().head;
        b.ingest(&room, Some(&c), &feed, 0, &a.entries(&feed, 0, 5).unwrap(), Some(&ours)).unwrap();

        // b holds 0..=4 of a's history; a2's seq 5 (signed) does not join a's seq 4.
        let unsigned = b.ingest(&room, Some(&c), &feed, 5, &a2.entries(&feed, 5, 6).unwrap(), None);
        assert!(matches!(unsigned, Err(IngestError::NotAnchored)), "{unsigned:?}");
        let e = b.ingest(&room, Some(&c), &feed, 5, &a2.entries(&feed, 5, 6).unwrap(), Some(&theirs));
        assert!(matches!(e, Err(IngestError::Fork(5))), "{e:?}");
        assert_eq!(b.forks(&room).unwrap(), vec![(feed, 5)]);
        assert_eq!(b.feed_meta(&feed).unwrap().unwrap().stored(), 5, "nothing of the other history stored");
        assert_eq!(b.feed_meta(&feed).unwrap().unwrap().head, Some(ours.clone()));

        // The other way round: c holds the copy's newest entry, then gets a's older history,
        // signed, which the copy's entry does not follow. (This was stored before.)
        let (_d4, c2) = tmp();
        c2.ingest(&room, Some(&c), &feed, 5, &a2.entries(&feed, 5, 6).unwrap(), Some(&theirs)).unwrap();
        let e = c2.ingest(&room, Some(&c), &feed, 0, &a.entries(&feed, 0, 5).unwrap(), Some(&ours));
        assert!(matches!(e, Err(IngestError::Fork(5))), "{e:?}");
        assert_eq!(c2.feed_meta(&feed).unwrap().unwrap().stored(), 1);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
}
