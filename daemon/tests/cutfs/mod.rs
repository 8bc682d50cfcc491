//! CutFs: a filesystem that can lose power, for crash-consistency tests (the idea of
//! Jepsen's LazyFS). It is a FUSE filesystem held in this test process's memory. A write
//! reaches "the disk" only when its file is fsynced; until then it is pending, as in the
//! page cache. Creates, renames and unlinks reach it at the next fsync of any file or
//! directory, as a journalling filesystem commits its journal.
//!
//! A power cut ([`CutFs::power_cut`]) first fails every further operation with EIO, then
//! lets the caller kill the processes using the mount, then unmounts. It keeps what the disk
//! holds and drops the rest: every pending write is dropped, or in [`Cut::Torn`] mode a
//! random subset of them is kept, in 4 KiB pieces, since the kernel writes dirty pages back
//! in no particular order. It then mounts the filesystem again, with no cache left over.
//!
//! This is stricter than ext4's default `data=ordered`, which also writes a file's data
//! before committing its metadata. What passes here relies only on what POSIX promises.
//! Files are opened with `direct_io`, so the kernel's page cache never holds our data: a
//! read after the cut sees what survived, not what the kernel remembered.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

const ROOT: u64 = fuser::FUSE_ROOT_ID;
/// Attributes and names are never cached by the kernel: sizes change under it.
const TTL: Duration = Duration::ZERO;
/// The granularity of what survives a torn cut: a page.
const PAGE: usize = 4096;

/// What a power cut keeps of the writes that were not synced.
#[derive(Clone, Copy, Debug)]
pub enum Cut {
    /// Nothing.
    Clean,
    /// A random subset, page by page, chosen from this seed.
    Torn(u64),
}

/// What a power cut dropped and kept.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutReport {
    /// Pending writes (and truncations) when the power went.
    pub pending: usize,
    /// Bytes of them.
    pub pending_bytes: usize,
    /// Pages (or truncations) of them that reached the disk anyway (torn mode).
    pub kept_pieces: usize,
    /// Names (creates, renames, unlinks) whose change never reached the journal.
    pub names_reverted: usize,
}

/// Operations on a mounted CutFs so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub writes: u64,
    pub fsyncs: u64,
}

enum Pending {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

struct Inode {
    dir: bool,
    perm: u16,
    /// What reads see.
    data: Vec<u8>,
    /// What the disk holds.
    durable: Vec<u8>,
    /// Writes since the last fsync of this file, in order.
    pending: Vec<Pending>,
    /// A directory's names, as reads see them.
    children: BTreeMap<OsString, u64>,
    mtime: SystemTime,
}

impl Inode {
    fn new(dir: bool, perm: u16) -> Self {
        Self {
            dir,
            perm,
            data: Vec::new(),
            durable: Vec::new(),
            pending: Vec::new(),
            children: BTreeMap::new(),
            mtime: SystemTime::now(),
        }
    }
}

struct State {
    /// Every inode since the last mount, reachable or not: an unlink is undone by a cut
    /// that comes before the journal commit, so its inode must still be there.
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Each directory's names as of the last journal commit.
    journal: HashMap<u64, BTreeMap<OsString, u64>>,
    /// The power is off: every operation fails.
    off: bool,
    counts: Counts,
}

impl State {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let i = self.inodes.get(&ino)?;
        let size = if i.dir { 4096 } else { i.data.len() as u64 };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: i.mtime,
            mtime: i.mtime,
            ctime: i.mtime,
            crtime: i.mtime,
            kind: if i.dir { FileType::Directory } else { FileType::RegularFile },
            perm: i.perm,
            nlink: if i.dir { 2 } else { 1 },
            // SAFETY: geteuid and getegid have no preconditions and cannot fail.
            uid: unsafe { libc::geteuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getegid() },
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64, i32> {
        let p = self.inodes.get(&parent).ok_or(libc::ENOENT)?;
        if !p.dir {
            return Err(libc::ENOTDIR);
        }
        p.children.get(name).copied().ok_or(libc::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, dir: bool, perm: u16) -> Result<u64, i32> {
        let p = self.inodes.get(&parent).ok_or(libc::ENOENT)?;
        if !p.dir {
            return Err(libc::ENOTDIR);
        }
        if p.children.contains_key(name) {
            return Err(libc::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(dir, perm));
        self.inodes.get_mut(&parent).ok_or(libc::ENOENT)?.children.insert(name.to_owned(), ino);
        Ok(ino)
    }

    fn file(&mut self, ino: u64) -> Result<&mut Inode, i32> {
        match self.inodes.get_mut(&ino) {
            Some(i) if i.dir => Err(libc::EISDIR),
            Some(i) => Ok(i),
            None => Err(libc::ENOENT),
        }
    }

    /// A journal commit: every directory's names as they are now.
    fn commit_names(&mut self) {
        self.journal = self.inodes.iter().filter(|(_, i)| i.dir).map(|(&ino, i)| (ino, i.children.clone())).collect();
    }

    /// The power comes back: what the disk held, plus (torn) some pending pages.
    fn reboot(&mut self, cut: Cut) -> CutReport {
        let mut report = CutReport::default();
        let mut rng = match cut {
            Cut::Clean => None,
            Cut::Torn(seed) => Some(seed | 1),
        };
        let mut coin = || {
            rng.as_mut().is_some_and(|s| {
                *s ^= *s << 13;
                *s ^= *s >> 7;
                *s ^= *s << 17;
                *s & 1 == 1
            })
        };
        // Names: back to the last journal commit; what it does not reach is gone.
        let mut reachable = vec![ROOT];
        let mut seen = std::collections::HashSet::new();
        while let Some(dir) = reachable.pop() {
            if !seen.insert(dir) {
                continue;
            }
            let names = self.journal.get(&dir).cloned().unwrap_or_default();
            if let Some(i) = self.inodes.get_mut(&dir) {
                if i.children != names {
                    report.names_reverted += 1;
                }
                i.children = names;
                reachable.extend(i.children.values().copied());
            }
        }
        self.inodes.retain(|ino, _| seen.contains(ino));
        // Data: the disk's bytes, and in torn mode some pending pieces in order.
        for i in self.inodes.values_mut().filter(|i| !i.dir) {
            let mut data = std::mem::take(&mut i.durable);
            for p in i.pending.drain(..) {
                report.pending += 1;
                match p {
                    Pending::SetLen(len) => {
                        if coin() {
                            report.kept_pieces += 1;
                            data.resize(len as usize, 0);
                        }
                    }
                    Pending::Write { offset, bytes } => {
                        report.pending_bytes += bytes.len();
                        // Page by page: up to the first page boundary, then whole pages.
                        let mut at = offset as usize;
                        let mut rest = &bytes[..];
                        while !rest.is_empty() {
                            let n = rest.len().min(PAGE - at % PAGE);
                            if coin() {
                                report.kept_pieces += 1;
                                if data.len() < at + n {
                                    data.resize(at + n, 0);
                                }
                                data[at..at + n].copy_from_slice(&rest[..n]);
                            }
                            at += n;
                            rest = &rest[n..];
                        }
                    }
                }
            }
            i.durable = data.clone();
            i.data = data;
        }
        self.commit_names();
        report
    }
}

/// The FUSE side: every request locks the shared state.
struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state if the power is on; else EIO.
    fn on(&self) -> Result<std::sync::MutexGuard<'_, State>, i32> {
        let s = self.state();
        if s.off {
            return Err(libc::EIO);
        }
        Ok(s)
    }
}

macro_rules! try_reply {
    ($reply:ident, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(errno) => return $reply.error(errno),
        }
    };
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let s = try_reply!(reply, self.on());
        let ino = try_reply!(reply, s.child(parent, name));
        match s.attr(ino) {
            Some(a) => reply.entry(&TTL, &a, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let s = try_reply!(reply, self.on());
        match s.attr(ino) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut s = try_reply!(reply, self.on());
        let Some(i) = s.inodes.get_mut(&ino) else { return reply.error(libc::ENOENT) };
        if let Some(mode) = mode {
            i.perm = (mode & 0o7777) as u16;
        }
        if let Some(len) = size {
            if i.dir {
                return reply.error(libc::EISDIR);
            }
            i.data.resize(len as usize, 0);
            i.pending.push(Pending::SetLen(len));
            i.mtime = SystemTime::now();
        }
        let a = s.attr(ino).expect("just found");
        reply.attr(&TTL, &a)
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut s = try_reply!(reply, self.on());
        let ino = try_reply!(reply, s.add(parent, name, true, (mode & !umask & 0o7777) as u16));
        let a = s.attr(ino).expect("just made");
        reply.entry(&TTL, &a, 0)
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = try_reply!(reply, self.on());
        let ino = try_reply!(reply, s.child(parent, name));
        if s.inodes.get(&ino).is_some_and(|i| i.dir) {
            return reply.error(libc::EISDIR);
        }
        s.inodes.get_mut(&parent).expect("looked up").children.remove(name);
        reply.ok()
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut s = try_reply!(reply, self.on());
        let ino = try_reply!(reply, s.child(parent, name));
        match s.inodes.get(&ino) {
            Some(i) if !i.dir => return reply.error(libc::ENOTDIR),
            Some(i) if !i.children.is_empty() => return reply.error(libc::ENOTEMPTY),
            _ => {}
        }
        s.inodes.get_mut(&parent).expect("looked up").children.remove(name);
        reply.ok()
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut s = try_reply!(reply, self.on());
        let ino = try_reply!(reply, s.child(parent, name));
        match s.child(newparent, newname) {
            Ok(_) if flags & libc::RENAME_NOREPLACE != 0 => return reply.error(libc::EEXIST),
            Ok(old) if s.inodes.get(&old).is_some_and(|o| o.dir && !o.children.is_empty()) => {
                return reply.error(libc::ENOTEMPTY)
            }
            Err(libc::ENOENT) | Ok(_) => {}
            Err(e) => return reply.error(e),
        }
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return reply.error(libc::EINVAL);
        }
        s.inodes.get_mut(&parent).expect("looked up").children.remove(name);
        s.inodes.get_mut(&newparent).expect("looked up").children.insert(newname.to_owned(), ino);
        reply.ok()
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let mut s = try_reply!(reply, self.on());
        try_reply!(reply, s.file(ino));
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO)
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = try_reply!(reply, self.on());
        let ino = try_reply!(reply, s.add(parent, name, false, (mode & !umask & 0o7777) as u16));
        let a = s.attr(ino).expect("just made");
        reply.created(&TTL, &a, 0, 0, fuser::consts::FOPEN_DIRECT_IO)
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let mut s = try_reply!(reply, self.on());
        let i = try_reply!(reply, s.file(ino));
        let start = (offset.max(0) as usize).min(i.data.len());
        let end = (start + size as usize).min(i.data.len());
        reply.data(&i.data[start..end])
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut s = try_reply!(reply, self.on());
        s.counts.writes += 1;
        let i = try_reply!(reply, s.file(ino));
        let at = offset.max(0) as usize;
        if i.data.len() < at + data.len() {
            i.data.resize(at + data.len(), 0);
        }
        i.data[at..at + data.len()].copy_from_slice(data);
        i.pending.push(Pending::Write { offset: at as u64, bytes: data.to_vec() });
        i.mtime = SystemTime::now();
        reply.written(data.len() as u32)
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut s = try_reply!(reply, self.on());
        let i = try_reply!(reply, s.file(ino));
        if mode != 0 {
            return reply.error(libc::EOPNOTSUPP);
        }
        let end = (offset + length).max(0) as u64;
        if (i.data.len() as u64) < end {
            i.data.resize(end as usize, 0);
            i.pending.push(Pending::SetLen(end));
        }
        reply.ok()
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        let _s = try_reply!(reply, self.on());
        reply.ok()
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut s = try_reply!(reply, self.on());
        s.counts.fsyncs += 1;
        let i = try_reply!(reply, s.file(ino));
        i.pending.clear();
        i.durable = i.data.clone();
        s.commit_names();
        reply.ok()
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let s = try_reply!(reply, self.on());
        match s.inodes.get(&ino) {
            Some(i) if i.dir => reply.opened(0, 0),
            Some(_) => reply.error(libc::ENOTDIR),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let s = try_reply!(reply, self.on());
        let Some(dir) = s.inodes.get(&ino).filter(|i| i.dir) else { return reply.error(libc::ENOTDIR) };
        let entries =
            [(ino, FileType::Directory, OsString::from(".")), (ino, FileType::Directory, OsString::from(".."))]
                .into_iter()
                .chain(dir.children.iter().map(|(name, &c)| {
                    let kind = if s.inodes.get(&c).is_some_and(|i| i.dir) {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    (c, kind, name.clone())
                }));
        for (n, (ino, kind, name)) in entries.enumerate().skip(offset.max(0) as usize) {
            if reply.add(ino, n as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let mut s = try_reply!(reply, self.on());
        s.counts.fsyncs += 1;
        s.commit_names();
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let _s = try_reply!(reply, self.on());
        // 64 GiB, nearly all free: the daemon refuses writes on a full disk.
        let blocks = 16 << 20;
        reply.statfs(blocks, blocks - 1024, blocks - 1024, 1 << 20, 1 << 20, PAGE as u32, 255, PAGE as u32)
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        let _s = try_reply!(reply, self.on());
        reply.ok()
    }
}

/// A mounted CutFs.
pub struct CutFs {
    state: Arc<Mutex<State>>,
    dir: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

impl CutFs {
    /// Mounts an empty CutFs on `dir` (an empty directory).
    pub fn mount(dir: &Path) -> Result<Self> {
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, Inode::new(true, 0o755));
        let state = Arc::new(Mutex::new(State {
            inodes,
            next_ino: ROOT + 1,
            journal: HashMap::from([(ROOT, BTreeMap::new())]),
            off: false,
            counts: Counts::default(),
        }));
        let mut fs = Self { state, dir: dir.to_path_buf(), session: None };
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&mut self) -> Result<()> {
        let options = [MountOption::FSName("cutfs".into()), MountOption::DefaultPermissions];
        let session = fuser::spawn_mount2(Fs(self.state.clone()), &self.dir, &options)
            .with_context(|| format!("mounting a FUSE filesystem on {}", self.dir.display()))?;
        self.session = Some(session);
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Operations since the mount.
    pub fn counts(&self) -> Counts {
        self.state().counts
    }

    /// Cuts the power: from now on every operation fails; `stop` then kills whatever uses
    /// the mount. The disk keeps what `cut` says, and the filesystem is mounted again.
    pub fn power_cut(&mut self, cut: Cut, stop: impl FnOnce() -> Result<()>) -> Result<CutReport> {
        self.state().off = true;
        let stopped = stop();
        // Unmounting drops whatever the kernel still caches of names and attributes.
        drop(self.session.take());
        let report = {
            let mut s = self.state();
            let report = s.reboot(cut);
            s.off = false;
            report
        };
        stopped?;
        self.attach()?;
        Ok(report)
    }
}

impl Drop for CutFs {
    fn drop(&mut self) {
        drop(self.session.take());
    }
}

/// Why FUSE cannot be mounted here, if it cannot (probed once per process).
pub fn unavailable() -> Option<String> {
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !crate::is_root() {
                return Some("not root".into());
            }
            if !Path::new("/dev/fuse").exists() {
                return Some("/dev/fuse is missing (modprobe fuse)".into());
            }
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => return Some(format!("no temporary directory: {e}")),
            };
            let probe = (|| {
                let fs = CutFs::mount(dir.path())?;
                std::fs::write(dir.path().join("probe"), b"probe")?;
                anyhow::ensure!(std::fs::read(dir.path().join("probe"))? == b"probe", "read back something else");
                drop(fs);
                Ok(())
            })();
            probe.err().map(|e| format!("cannot mount FUSE: {e:#}"))
        })
        .clone()
}
