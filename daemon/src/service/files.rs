//! Sending and fetching files (the service side of `files.send` / `files.get`); the chunk
//! format is in [`crate::files`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use peerlog_proto::wire::{ChunkId, Key32};
use tokio::sync::{broadcast, mpsc};

use super::{Service, ServiceError};
use crate::files::{assemble, mime_from_name, Encoder, FileError, FileKey, CHUNK_BYTES};
use crate::log::store::{StoreError, StoredMessage};
use crate::log::Body;
use crate::rooms::{ChunkEvent, DaemonEvent, Room};

/// A streamed upload that sends nothing for this long is abandoned (its blocking thread
/// is freed).
const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// A fetch fails when no chunk arrived for this long (what arrived is kept).
pub const STALL: Duration = Duration::from_secs(60);
/// Longest file name kept (bytes).
const NAME_BYTES: usize = 255;

/// Where the bytes of a file to send come from.
pub enum FileSource {
    /// A file on the daemon's machine.
    Path(PathBuf),
    /// Bytes streamed by a client, `size` in all.
    Stream {
        /// How many bytes will come.
        size: u64,
        /// The bytes.
        rx: mpsc::Receiver<Bytes>,
    },
}

/// A `file` message: the file's description.
#[derive(Clone, Debug)]
pub struct FileInfo {
    /// The message.
    pub message: StoredMessage,
    /// Random file id.
    pub file_id: Key32,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Media type (the sender's claim).
    pub mime: String,
    /// Chunk ids.
    pub chunks: Vec<ChunkId>,
}

impl From<FileError> for ServiceError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::TooLarge { size, limit } => {
                ServiceError::TooLarge { what: "file", size: size as usize, limit: limit as usize }
            }
            FileError::Io(e) => ServiceError::Store(StoreError::Io(e)),
            e @ FileError::Decrypt(_) => ServiceError::Invalid(e.to_string()),
            e @ FileError::MissingChunk(_) => ServiceError::Unavailable(e.to_string()),
        }
    }
}

/// The name part of a path or name, trimmed to [`NAME_BYTES`].
pub fn clean_name(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("").trim();
    if base.is_empty() || base == "." || base == ".." {
        return None;
    }
    let mut end = base.len().min(NAME_BYTES);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    Some(base[..end].chars().filter(|c| !c.is_control()).collect())
}

impl Service {
    /// Reads a file in as encrypted chunks and appends its `file` message; returns once the
    /// message is durable. Progress goes out as `file.progress` (sending).
    pub async fn send_file(
        &self,
        room: &Room,
        name: &str,
        mime: Option<String>,
        source: FileSource,
    ) -> Result<FileInfo, ServiceError> {
        let content_key = *room.content_key().ok_or(StoreError::Blind)?;
        let name = clean_name(name).ok_or_else(|| ServiceError::Invalid("a file needs a name".into()))?;
        let mime = mime.filter(|m| !m.is_empty() && m.len() <= 100).unwrap_or_else(|| mime_from_name(&name).into());
        let limit = self.config.limits.file_bytes;
        let total = match &source {
            FileSource::Path(p) => {
                std::fs::metadata(p).map_err(|source| ServiceError::LocalFile { path: p.clone(), source })?.len()
            }
            FileSource::Stream { size, .. } => *size,
        };
        if total > limit {
            return Err(FileError::TooLarge { size: total, limit }.into());
        }
        let file_id: Key32 = rand::random();
        let mut encoder = Encoder::new(&content_key, &file_id, self.chunks.clone(), limit);
        let events = self.rooms.events.clone();
        let discovery_key = room.discovery_key;
        let progress = move |done: u64, finished: bool| {
            let _ = events.send(DaemonEvent::FileProgress {
                room: discovery_key,
                file_id,
                receiving: false,
                bytes_done: done,
                bytes_total: total,
                done: finished,
            });
        };
        let runtime = tokio::runtime::Handle::current();
        let (chunks, size) = tokio::task::spawn_blocking(move || -> Result<(Vec<ChunkId>, u64), ServiceError> {
            match source {
                FileSource::Path(path) => {
                    use std::io::Read;
                    let local = |source| ServiceError::LocalFile { path: path.clone(), source };
                    let mut f = std::fs::File::open(&path).map_err(local)?;
                    let mut buf = vec![0u8; CHUNK_BYTES];
                    loop {
                        let n = f.read(&mut buf).map_err(local)?;
                        if n == 0 {
                            break;
                        }
                        encoder.push(&buf[..n])?;
                        progress(encoder.size(), false);
                    }
                }
                FileSource::Stream { size, mut rx } => {
                    while encoder.size() < size {
                        let next = runtime.block_on(tokio::time::timeout(UPLOAD_IDLE, rx.recv()));
                        let Ok(next) = next else {
                            return Err(ServiceError::UploadIncomplete(format!(
                                "no bytes for {} s after {} of {size}: upload abandoned",
                                UPLOAD_IDLE.as_secs(),
                                encoder.size()
                            )));
                        };
                        let Some(bytes) = next else {
                            return Err(ServiceError::UploadIncomplete(format!(
                                "the upload ended after {} of {size} bytes",
                                encoder.size()
                            )));
                        };
                        if bytes.is_empty() {
                            return Err(ServiceError::UploadIncomplete(format!(
                                "cancelled by the client after {} of {size} bytes",
                                encoder.size()
                            )));
                        }
                        if encoder.size() + bytes.len() as u64 > size {
                            return Err(ServiceError::Invalid(format!(
                                "more than the announced {size} bytes were sent"
                            )));
                        }
                        encoder.push(&bytes)?;
                        progress(encoder.size(), false);
                    }
                }
            }
            let done = encoder.finish()?;
            progress(done.1, true);
            Ok(done)
        })
        .await
        .map_err(|_| ServiceError::Shutdown)??;
        let body = Body::File { file_id, name: name.clone(), size, mime: mime.clone(), chunks: chunks.clone() };
        let message = self
            .append_durable(room, vec![body])
            .await?
            .pop()
            .ok_or(ServiceError::Invalid("nothing appended".into()))?;
        Ok(FileInfo { message, file_id, name, size, mime, chunks })
    }

    /// The `file` message `id` (`<feed hex>:<seq>`) of a room.
    pub fn file_info(&self, room: &Room, id: &str) -> Result<FileInfo, ServiceError> {
        let (feed, seq) =
            StoredMessage::parse_id(id).ok_or_else(|| ServiceError::Invalid(format!("bad message id {id:?}")))?;
        let message = room
            .message(&feed, seq)?
            .ok_or_else(|| ServiceError::NotFound(format!("no message {id:?} in this room")))?;
        match message.message.body.clone() {
            Some(Body::File { file_id, name, size, mime, chunks }) => {
                Ok(FileInfo { message, file_id, name, size, mime, chunks })
            }
            _ => Err(ServiceError::Invalid(format!("message {id:?} is not a file"))),
        }
    }

    /// Makes sure every chunk of a file is here, fetching the missing ones from the room's
    /// peers (any that has them, several at once). Chunks already here are not fetched
    /// again, so asking again after a failure resumes. Fails after [`STALL`] without any
    /// chunk arriving.
    pub async fn fetch_file(&self, room: &Room, file: &FileInfo) -> Result<(), ServiceError> {
        if file.size > self.config.limits.file_bytes {
            return Err(FileError::TooLarge { size: file.size, limit: self.config.limits.file_bytes }.into());
        }
        let size_of = |i: usize| (file.size - (i * CHUNK_BYTES) as u64).min(CHUNK_BYTES as u64);
        let mut events = room.subscribe_chunks();
        let missing: Vec<(usize, ChunkId)> =
            file.chunks.iter().copied().enumerate().filter(|(_, id)| !self.chunks.has(id)).collect();
        let mut done: u64 = file.size - missing.iter().map(|(i, _)| size_of(*i)).sum::<u64>();
        let progress = |done: u64, finished: bool| {
            let _ = self.rooms.events.send(DaemonEvent::FileProgress {
                room: room.discovery_key,
                file_id: file.file_id,
                receiving: true,
                bytes_done: done,
                bytes_total: file.size,
                done: finished,
            });
        };
        if missing.is_empty() {
            progress(done, true);
            return Ok(());
        }
        let ids: Vec<ChunkId> = missing.iter().map(|(_, id)| *id).collect();
        room.want_chunks(&ids);
        // Whatever ends this wait, the room stops asking for what we no longer wait for.
        struct Unwant<'a>(&'a Room, Vec<ChunkId>);
        impl Drop for Unwant<'_> {
            fn drop(&mut self) {
                self.0.unwant_chunks(&self.1);
            }
        }
        let _unwant = Unwant(room, ids);
        let mut remaining: std::collections::HashMap<ChunkId, usize> =
            missing.into_iter().map(|(i, id)| (id, i)).collect();
        progress(done, false);
        loop {
            let event = tokio::time::timeout(STALL, events.recv()).await;
            match event {
                Err(_) => {
                    return Err(ServiceError::Unavailable(format!(
                    "no room peer sent a chunk of {:?} for {} s: {} of {} chunks are here (kept; ask again to resume)",
                    file.name,
                    STALL.as_secs(),
                    file.chunks.len() - remaining.len(),
                    file.chunks.len()
                )))
                }
                Ok(Ok(ChunkEvent::Stored { id, .. })) => {
                    if let Some(i) = remaining.remove(&id) {
                        done += size_of(i);
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    let arrived: HashSet<ChunkId> =
                        remaining.keys().filter(|id| self.chunks.has(id)).copied().collect();
                    for id in arrived {
                        if let Some(i) = remaining.remove(&id) {
                            done += size_of(i);
                        }
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return Err(ServiceError::Shutdown),
            }
            let finished = remaining.is_empty();
            progress(done, finished);
            if finished {
                return Ok(());
            }
        }
    }

    /// Fetches a file (see [`Service::fetch_file`]) and writes it to `dest`, which must not
    /// exist: it appears only complete and verified.
    pub async fn save_file(&self, room: &Room, file: &FileInfo, dest: &Path) -> Result<(), ServiceError> {
        if !dest.is_absolute() {
            return Err(ServiceError::Invalid(format!("{} is not an absolute path", dest.display())));
        }
        if dest.symlink_metadata().is_ok() {
            let source = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists; not overwriting it");
            return Err(ServiceError::LocalFile { path: dest.to_path_buf(), source });
        }
        self.fetch_file(room, file).await?;
        let content_key = *room.content_key().ok_or(StoreError::Blind)?;
        let (chunks, file, dest) = (self.chunks.clone(), file.clone(), dest.to_path_buf());
        let path = dest.clone();
        let saved = tokio::task::spawn_blocking(move || {
            assemble(&chunks, &FileKey::new(&content_key, &file.file_id), &file.chunks, file.size, &dest)
        })
        .await
        .map_err(|_| ServiceError::Shutdown)?;
        match saved {
            // Writing the destination (its directory, the temporary, the rename) failed.
            Err(FileError::Io(source)) => Err(ServiceError::LocalFile { path, source }),
            other => Ok(other?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::clean_name;

    #[test]
    fn names_lose_directories_and_control_characters() {
        assert_eq!(clean_name("/etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(clean_name("..\\..\\evil.exe").as_deref(), Some("evil.exe"));
        assert_eq!(clean_name("a\u{7}b.txt").as_deref(), Some("ab.txt"));
        assert_eq!(clean_name("../"), None);
        assert_eq!(clean_name(""), None);
        assert!(clean_name(&"é".repeat(300)).unwrap().len() <= 255);
    }
}
