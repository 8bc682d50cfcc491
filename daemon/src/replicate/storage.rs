//! The rules' storage: [`Storage`] over the daemon's [`Store`] and [`Chunks`], and the
//! outputs that write to them ([`perform`]), shared by the room task and the simulation.

use peerlog_proto::wire::{ChunkId, DiscoveryKey, Entry, FeedKey, SignedHead};
use tracing::{debug, warn};

use super::state::{Ingest, IngestJob, Input, Output, Storage};
use crate::files::Chunks;
use crate::log::store::{Cut, FeedMeta, IngestError, StoreError};
use crate::log::Store;
use crate::rooms::Room;

/// The daemon's storage, as the rules read it.
#[derive(Clone)]
pub struct Local {
    /// Feeds, heads, blocks.
    pub store: Store,
    /// File chunks.
    pub chunks: Chunks,
}

impl Storage for Local {
    fn feed_meta(&self, feed: &FeedKey) -> Result<Option<FeedMeta>, StoreError> {
        self.store.feed_meta(feed)
    }

    fn feed_bytes(&self, feed: &FeedKey) -> u64 {
        self.store.feed_bytes(feed).unwrap_or(0)
    }

    fn entries(&self, feed: &FeedKey, start: u64, end: u64) -> Result<Vec<Entry>, StoreError> {
        self.store.entries(feed, start, end)
    }

    fn room_feeds(&self, room: &DiscoveryKey) -> Result<Vec<FeedKey>, StoreError> {
        Ok(self.store.room_feeds(room)?.into_iter().map(|(feed, _)| feed).collect())
    }

    fn room_heads(&self, room: &DiscoveryKey) -> Result<Vec<SignedHead>, StoreError> {
        self.store.room_heads(room)
    }

    fn is_blocked(&self, room: &DiscoveryKey, writer: &FeedKey) -> Result<bool, StoreError> {
        self.store.is_blocked(room, writer)
    }

    fn cut(&self, room: &DiscoveryKey, writer: &FeedKey) -> Option<Cut> {
        self.store.cut(room, writer)
    }

    fn has_legacy_head(&self, feed: &FeedKey) -> bool {
        self.store.has_legacy_head(feed)
    }

    fn room_has_chunk(&self, room: &DiscoveryKey, id: &ChunkId) -> Result<bool, StoreError> {
        self.store.room_has_chunk(room, id)
    }

    fn read_chunk(&self, id: &ChunkId) -> std::io::Result<Option<Vec<u8>>> {
        self.chunks.read(id)
    }

    fn has_chunk(&self, id: &ChunkId) -> bool {
        self.chunks.has(id)
    }
}

/// What became of an output, for whoever performs it.
pub enum Performed {
    /// Written; this input answers it (to be handled before any other).
    Answer(Input),
    /// Written; nothing to answer.
    Done,
    /// Not a storage output: the driver's to perform.
    Other(Output),
}

/// Performs an output that writes to storage (blocking: call it off the async threads when
/// it may take long, as [`Output::Ingest`] and [`Output::StoreChunk`] may).
pub fn perform(room: &Room, local: &Local, output: Output) -> Performed {
    match output {
        Output::Ingest(job) => {
            let result = ingest(room, &job);
            Performed::Answer(Input::Ingested { job, result })
        }
        Output::StoreChunk { session, id, bytes } => {
            let stored = match local.chunks.write(&id, &bytes) {
                Ok(()) => Some(bytes.len() as u64),
                Err(e) => {
                    warn!(error = %e, "cannot store a chunk");
                    None
                }
            };
            Performed::Answer(Input::ChunkStored { session, id, stored })
        }
        Output::RecordFork(a, b) => {
            if let Err(e) = local.store.record_fork(&a.feed_key, &a, &b) {
                warn!(error = %e, "cannot record a fork");
            }
            Performed::Done
        }
        Output::UpgradeHead(head) => {
            match local.store.upgrade_head(&head.feed_key, &head) {
                Ok(true) => {
                    debug!(feed = %hex::encode(&head.feed_key[..8]), seq = head.seq, "stored head replaced by the same head bound to the room")
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "cannot upgrade a stored head"),
            }
            Performed::Done
        }
        Output::ForgetDamaged(feed) => match local.store.forget_damaged(&feed) {
            Ok(forgotten) if !forgotten.is_empty() => Performed::Answer(Input::Refetch(feed)),
            Ok(_) => Performed::Done,
            Err(e) => {
                warn!(error = %e, "cannot forget a damaged block");
                Performed::Done
            }
        },
        other => Performed::Other(other),
    }
}

/// Verifies and stores a batch; the rules hear what came of it.
fn ingest(room: &Room, job: &IngestJob) -> Ingest {
    match room.store_received(&job.feed, job.start, &job.entries, job.anchor.as_ref()) {
        Ok(i) => Ingest::Stored { stored: i.stored, bytes: i.bytes, new_head: i.new_head, messages: i.messages },
        Err(IngestError::NotAnchored) => Ingest::NotAnchored,
        Err(IngestError::Blocked) => Ingest::Blocked,
        Err(IngestError::Quota(kind)) => Ingest::Quota(kind),
        Err(IngestError::Store(e)) => Ingest::Failed(e),
        Err(e) => Ingest::Invalid(e.to_string()),
    }
}
