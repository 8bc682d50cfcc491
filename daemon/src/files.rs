//! Files: split into chunks of [`CHUNK_BYTES`], each encrypted under a key derived from
//! the room's content key and the file's random id, and addressed by the BLAKE3 hash of its
//! ciphertext. The log holds a `file` message (name, size, mime type, chunk ids); chunks
//! replicate on demand (`WantChunk` / `Chunk` / `NoChunk`, see `docs/PROTOCOL.md`) from any
//! room peer that has them, and are verified against their id before they are stored.
//!
//! Chunks live in `<data>/chunks/<2 hex>/<64 hex>`, written to a temporary name and renamed
//! once complete, so a chunk file is never partial; a chunk whose bytes no longer hash to
//! its name (a crash, a bad disk) is deleted when read and fetched again.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ids::SessionId;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use peerlog_proto::wire::{ChunkId, Key32};

/// Plaintext bytes per chunk (the last one may be shorter).
pub const CHUNK_BYTES: usize = 1 << 20;
/// AES-GCM tag bytes added to each chunk.
pub const TAG_BYTES: usize = 16;
/// Chunk requests one session has in flight.
pub const CHUNKS_PER_SESSION: usize = 4;

/// Errors of file operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Over the configured size limit.
    #[error("file is {size} bytes; the limit is {limit} bytes (limits.file_bytes)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A chunk did not decrypt (wrong key or tampered).
    #[error("chunk {0} does not decrypt")]
    Decrypt(usize),
    /// A chunk is not stored here (any more: a damaged one is deleted when read).
    #[error("chunk {0} of the file is not here (ask for the file again to fetch it)")]
    MissingChunk(usize),
}

/// The key of one file's chunks: `HKDF(content_key, "peerlog/file/v1" || file_id)`.
pub struct FileKey {
    file_id: Key32,
    aead: Aes256Gcm,
}

impl FileKey {
    /// Derives the key of file `file_id` in a room with `content_key`.
    pub fn new(content_key: &Key32, file_id: &Key32) -> Self {
        Self { file_id: *file_id, aead: crate::log::subkey_aead(content_key, b"peerlog/file/v1", file_id) }
    }

    /// The nonce is the chunk index: the key is unique per file (random id) and each index
    /// is sealed once.
    fn nonce_aad(&self, index: usize) -> ([u8; 12], [u8; 40]) {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(index as u64).to_be_bytes());
        let mut aad = [0u8; 40];
        aad[..32].copy_from_slice(&self.file_id);
        aad[32..].copy_from_slice(&(index as u64).to_be_bytes());
        (nonce, aad)
    }

    /// Encrypts chunk `index`.
    pub fn seal(&self, index: usize, plain: &[u8]) -> Vec<u8> {
        let (nonce, aad) = self.nonce_aad(index);
        self.aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail")
    }

    /// Decrypts chunk `index`.
    pub fn open(&self, index: usize, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
        let (nonce, aad) = self.nonce_aad(index);
        self.aead
            .decrypt(Nonce::from_slice(&nonce), Payload { msg: sealed, aad: &aad })
            .map_err(|_| FileError::Decrypt(index))
    }
}

/// The id of a chunk: BLAKE3 of its ciphertext.
pub fn chunk_id(sealed: &[u8]) -> ChunkId {
    ChunkId(*blake3::hash(sealed).as_bytes())
}

/// Content-addressed chunk files.
#[derive(Clone, Debug)]
pub struct Chunks {
    dir: PathBuf,
    disk: Option<std::sync::Arc<crate::disk::DiskSpace>>,
}

impl Chunks {
    /// Chunks under `<data_dir>/chunks`.
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("chunks"), disk: None }
    }

    /// Chunks under `<data_dir>/chunks`, refused while `disk` says space is low.
    pub fn with_disk(data_dir: &Path, disk: std::sync::Arc<crate::disk::DiskSpace>) -> Self {
        Self { dir: data_dir.join("chunks"), disk: Some(disk) }
    }

    fn path(&self, id: &ChunkId) -> PathBuf {
        let name = hex::encode(id);
        self.dir.join(&name[..2]).join(name)
    }

    /// Whether chunk `id` is stored.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.path(id).is_file()
    }

    /// Chunk `id`'s ciphertext, if stored and intact (a damaged one is deleted).
    pub fn read(&self, id: &ChunkId) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.path(id);
        match std::fs::read(&path) {
            Ok(bytes) if chunk_id(&bytes) == *id => Ok(Some(bytes)),
            Ok(_) => {
                tracing::warn!(chunk = %hex::encode(&id[..8]), "stored chunk is damaged; deleting it");
                let _ = std::fs::remove_file(&path);
                Ok(None)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores a chunk whose id the caller checked: under a temporary name first, so a
    /// chunk file is never partial. Not synced: a chunk fetched from a peer that a power
    /// cut damages is found on read (its id is its hash) and fetched again.
    pub fn write(&self, id: &ChunkId, sealed: &[u8]) -> std::io::Result<()> {
        self.write_with(id, sealed, false)
    }

    /// [`Chunks::write`], durably: synced, renamed, and the directories synced. For our own
    /// uploads, which nobody else holds yet: the message that names them is acknowledged
    /// only once they survive a power cut.
    pub fn write_durable(&self, id: &ChunkId, sealed: &[u8]) -> std::io::Result<()> {
        self.write_with(id, sealed, true)
    }

    fn write_with(&self, id: &ChunkId, sealed: &[u8], durable: bool) -> std::io::Result<()> {
        let path = self.path(id);
        if path.is_file() && !durable {
            return Ok(());
        }
        if let Some(disk) = &self.disk {
            disk.check(sealed.len() as u64).map_err(|e| std::io::Error::new(std::io::ErrorKind::StorageFull, e))?;
        }
        let parent = path.parent().expect("chunk paths have a parent");
        let new_dirs = !parent.is_dir();
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".{}.{}", hex::encode(&id[..8]), rand::random::<u32>()));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(sealed)?;
        if durable {
            file.sync_data()?;
        }
        drop(file);
        std::fs::rename(&tmp, &path)?;
        if durable {
            // The chunk's name, and the names of directories made for it.
            let mut dirs = vec![parent];
            if new_dirs {
                dirs.extend(parent.ancestors().skip(1).take(2));
            }
            for dir in dirs {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Bytes of all stored chunks.
    pub fn bytes(&self) -> u64 {
        crate::disk::dir_bytes(&self.dir)
    }
}

/// Splits plaintext pushed into it into sealed, stored chunks.
pub struct Encoder {
    key: FileKey,
    chunks: Chunks,
    buf: Vec<u8>,
    ids: Vec<ChunkId>,
    size: u64,
    limit: u64,
}

impl Encoder {
    /// Starts a file `file_id` of at most `limit` bytes.
    pub fn new(content_key: &Key32, file_id: &Key32, chunks: Chunks, limit: u64) -> Self {
        Self {
            key: FileKey::new(content_key, file_id),
            chunks,
            buf: Vec::with_capacity(CHUNK_BYTES),
            ids: Vec::new(),
            size: 0,
            limit,
        }
    }

    /// Takes the next bytes of the file.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<(), FileError> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            return Err(FileError::TooLarge { size: self.size, limit: self.limit });
        }
        while !bytes.is_empty() {
            let take = (CHUNK_BYTES - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == CHUNK_BYTES {
                self.seal_chunk()?;
            }
        }
        Ok(())
    }

    fn seal_chunk(&mut self) -> Result<(), FileError> {
        let sealed = self.key.seal(self.ids.len(), &self.buf);
        let id = chunk_id(&sealed);
        self.chunks.write_durable(&id, &sealed)?;
        self.ids.push(id);
        self.buf.clear();
        Ok(())
    }

    /// Bytes taken so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Seals the last chunk; returns the chunk ids and the size.
    pub fn finish(mut self) -> Result<(Vec<ChunkId>, u64), FileError> {
        if !self.buf.is_empty() || self.ids.is_empty() {
            self.seal_chunk()?;
        }
        Ok((self.ids, self.size))
    }
}

/// Reads, verifies and decrypts a file's chunks in order, handing each plaintext to `sink`
/// until it returns false. A missing or damaged chunk is an error.
pub fn read_plain(
    chunks: &Chunks,
    key: &FileKey,
    ids: &[ChunkId],
    mut sink: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), FileError> {
    for (i, id) in ids.iter().enumerate() {
        let sealed = chunks.read(id)?.ok_or(FileError::MissingChunk(i))?;
        if !sink(key.open(i, &sealed)?) {
            break;
        }
    }
    Ok(())
}

/// Writes a complete file to `dest`: every chunk read, verified and decrypted into a
/// temporary file beside it, synced, then renamed. Nothing partial appears at `dest`.
pub fn assemble(chunks: &Chunks, key: &FileKey, ids: &[ChunkId], size: u64, dest: &Path) -> Result<(), FileError> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A fresh random name, created exclusively and never through a symlink: a link planted
    // at a predictable name would have us write through it.
    let tmp = dir.join(format!(".{name}.{}.peerlog-part", hex::encode(rand::random::<[u8; 8]>())));
    let created = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(&tmp)
    };
    let result = (|| {
        let mut out = std::io::BufWriter::new(created?);
        let mut written = 0u64;
        let mut write_error = None;
        read_plain(chunks, key, ids, |plain| {
            written += plain.len() as u64;
            write_error = out.write_all(&plain).err();
            write_error.is_none()
        })?;
        if let Some(e) = write_error {
            return Err(e.into());
        }
        if written != size {
            return Err(FileError::Io(std::io::Error::other(format!("chunks hold {written} bytes, the file {size}"))));
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        rename_no_replace(&tmp, dest).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                FileError::Io(std::io::Error::new(e.kind(), format!("{} exists; not overwriting it", dest.display())))
            }
            _ => e.into(),
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    // The temporary goes in every case: on success `dest` is its other name.
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Renames `from` to `to` unless `to` exists (or appears meanwhile, or is a symlink): then
/// `AlreadyExists`, and nothing is replaced. `renameat2(RENAME_NOREPLACE)`, or `link(2)`
/// (which never replaces either) where the filesystem lacks it.
fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD resolves them like rename(2).
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        std::fs::hard_link(from, to)?;
        return std::fs::remove_file(from);
    }
    Err(e)
}

/// Chunks a room wants from its peers, and which session fetches each.
#[derive(Debug, Default)]
pub struct ChunkWants {
    /// Ordered: chunks are asked for in a deterministic order (the simulation replays).
    wants: BTreeMap<ChunkId, Want>,
}

#[derive(Debug, Default)]
struct Want {
    /// The session it was asked of.
    session: Option<SessionId>,
    /// Sessions whose peer said it does not have it.
    lacking: BTreeSet<SessionId>,
    /// Downloads waiting for it.
    waiters: usize,
}

impl ChunkWants {
    /// Wants `ids` (one more waiter each).
    pub fn want(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        for id in ids {
            self.wants.entry(id).or_default().waiters += 1;
        }
    }

    /// A download gave up on `ids`.
    pub fn unwant(&mut self, ids: &[ChunkId]) {
        for id in ids {
            if let Some(w) = self.wants.get_mut(id) {
                w.waiters = w.waiters.saturating_sub(1);
                if w.waiters == 0 {
                    self.wants.remove(id);
                }
            }
        }
    }

    /// Chunks `session` is fetching.
    pub fn in_flight(&self, session: SessionId) -> usize {
        self.wants.values().filter(|w| w.session == Some(session)).count()
    }

    /// Assigns a wanted chunk nobody fetches, whose lack `session`'s peer has not reported.
    pub fn next_for(&mut self, session: SessionId) -> Option<ChunkId> {
        let (id, w) = self.wants.iter_mut().find(|(_, w)| w.session.is_none() && !w.lacking.contains(&session))?;
        w.session = Some(session);
        Some(*id)
    }

    /// Whether `session` was asked for `id`.
    pub fn asked(&self, session: SessionId, id: &ChunkId) -> bool {
        self.wants.get(id).is_some_and(|w| w.session == Some(session))
    }

    /// Chunk `id` arrived and is stored.
    pub fn done(&mut self, id: &ChunkId) {
        self.wants.remove(id);
    }

    /// `session`'s peer lacks `id` (or sent a bad copy): another may have it.
    pub fn lacking(&mut self, session: SessionId, id: &ChunkId) {
        if let Some(w) = self.wants.get_mut(id) {
            w.lacking.insert(session);
            if w.session == Some(session) {
                w.session = None;
            }
        }
    }

    /// A session ended: what it was fetching goes back to the queue.
    pub fn session_ended(&mut self, session: SessionId) {
        for w in self.wants.values_mut() {
            w.lacking.remove(&session);
            if w.session == Some(session) {
                w.session = None;
            }
        }
    }
}

/// A guess of a file's type from its name, for `file` messages sent from a path.
pub fn mime_from_name(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "txt" | "md" => "text/plain",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_through_chunks_and_damage_is_caught() {
        let dir = tempfile_dir();
        let chunks = Chunks::new(&dir);
        let data: Vec<u8> = (0..(2 * CHUNK_BYTES + 1234)).map(|i| (i * 7 % 251) as u8).collect();
        let mut enc = Encoder::new(&[1; 32], &[2; 32], chunks.clone(), 10 << 20);
        for part in data.chunks(100_000) {
            enc.push(part).unwrap();
        }
        let (ids, size) = enc.finish().unwrap();
        assert_eq!((ids.len(), size), (3, data.len() as u64));
        let dest = dir.join("out.bin");
        assemble(&chunks, &FileKey::new(&[1; 32], &[2; 32]), &ids, size, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        // Another room key does not decrypt, and leaves no file behind.
        let other = dir.join("other.bin");
        assert!(assemble(&chunks, &FileKey::new(&[9; 32], &[2; 32]), &ids, size, &other).is_err());
        assert!(!other.exists() && !dir.join(".other.bin.peerlog-part").exists());
        // A damaged chunk is not returned, and is gone.
        std::fs::write(chunks.path(&ids[1]), b"garbage").unwrap();
        assert!(chunks.read(&ids[1]).unwrap().is_none());
        assert!(!chunks.has(&ids[1]));
        // Over the limit.
        let mut small = Encoder::new(&[1; 32], &[3; 32], chunks, 10);
        assert!(matches!(small.push(&[0; 11]), Err(FileError::TooLarge { size: 11, limit: 10 })));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn chunk_wants_go_to_one_session_at_a_time_and_back_when_it_ends() {
        let mut w = ChunkWants::default();
        w.want([ChunkId([1; 32]), ChunkId([2; 32])]);
        let a = w.next_for(SessionId(10)).unwrap();
        let b = w.next_for(SessionId(10)).unwrap();
        assert_ne!(a, b);
        assert!(w.next_for(SessionId(11)).is_none(), "both are being fetched");
        w.lacking(SessionId(10), &a);
        assert!(w.next_for(SessionId(10)).is_none(), "10's peer lacks a");
        assert_eq!(w.next_for(SessionId(11)), Some(a));
        w.session_ended(SessionId(10));
        assert_eq!(w.next_for(SessionId(12)), Some(b));
        w.done(&b);
        assert_eq!(w.in_flight(SessionId(12)), 0);
        assert!(w.asked(SessionId(11), &a));
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("peerlog-files-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
