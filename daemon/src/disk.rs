//! Free disk space, checked before new data is written: while the filesystem of the data
//! dir has less than the reserve free, the store takes nothing new (our appends, entries
//! and chunks from peers) and says why. sled 0.34 does not recover from running out of
//! space: after one `ENOSPC` in its log every later operation fails until the database is
//! reopened. So it must never get there: the reserve keeps room for sled's own writes.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a free-space reading is reused (a `statvfs` per write would cost little, but
/// the reserve is far larger than what a daemon writes in this time).
const READING_TTL: Duration = Duration::from_millis(100);

/// The data dir's filesystem has less free space than the reserve.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the disk holding the data dir has {} MiB free, less than the {} MiB kept in reserve (limits.disk_reserve_mb); free some space: writing resumes by itself",
    .free >> 20,
    .reserve >> 20
)]
pub struct LowDisk {
    /// Bytes free.
    pub free: u64,
    /// Bytes that must stay free.
    pub reserve: u64,
}

/// Checks free space on the data dir's filesystem.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    reserve: u64,
    reading: Mutex<Option<(Instant, u64)>>,
}

impl DiskSpace {
    /// Keeps `reserve` bytes free on the filesystem of `dir` (0: no check).
    pub fn new(dir: &Path, reserve: u64) -> Self {
        Self { dir: dir.to_path_buf(), reserve, reading: Mutex::new(None) }
    }

    /// Whether `incoming` more bytes may be written.
    pub fn check(&self, incoming: u64) -> Result<(), LowDisk> {
        if self.reserve == 0 {
            return Ok(());
        }
        let free = {
            let mut reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            match *reading {
                Some((at, free)) if at.elapsed() < READING_TTL => free,
                _ => {
                    // Unknown (statvfs failed): let the write try, and fail on its own.
                    let Some(free) = free_bytes(&self.dir) else { return Ok(()) };
                    *reading = Some((Instant::now(), free));
                    free
                }
            }
        };
        if free.saturating_sub(incoming) < self.reserve {
            return Err(LowDisk { free, reserve: self.reserve });
        }
        Ok(())
    }
}

/// Bytes available to unprivileged writers on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, for which all zero bytes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed statvfs for the kernel to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Bytes of the files under `dir`, recursively.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reserve_never_refuses_and_a_huge_one_always_does() {
        let dir = std::env::temp_dir();
        assert!(DiskSpace::new(&dir, 0).check(u64::MAX).is_ok());
        let err = DiskSpace::new(&dir, u64::MAX).check(0).unwrap_err();
        assert!(err.to_string().contains("limits.disk_reserve_mb"), "{err}");
    }
}
