//! Backups: what cannot be fetched again from peers (the node's identity, every room's
//! secret and our writer key in it, contacts, blocks, the display name), sealed with a
//! passphrase. Never the logs: peers serve them again, and a restored daemon catches up
//! (its own feed first, before it writes on, see `replicate::state`).
//!
//! File format: `PEERLOGBACKUP1` (14 bytes), a 16-byte salt, a 12-byte nonce, then
//! AES-256-GCM under `Argon2id(passphrase, salt)` (the parameters of room passphrases) of
//! the postcard encoding of [`Backup`].

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use peerlog_proto::wire::{DiscoveryKey, FeedKey};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{write_secret_file, ARGON2_M_KIB, ARGON2_P, ARGON2_T};
use crate::log::store::{Contact, RoomRecord, StoreError};
use crate::log::Store;

const MAGIC: &[u8; 14] = b"PEERLOGBACKUP1";
/// Shortest passphrase a backup is sealed with.
pub const MIN_PASSPHRASE: usize = 8;

/// Why a backup could not be made, read or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The passphrase is too short to seal with.
    #[error("a backup passphrase has at least {MIN_PASSPHRASE} characters")]
    WeakPassphrase,
    /// Not a backup, or a damaged one.
    #[error("not a peerlog backup (or a damaged one)")]
    NotABackup,
    /// The passphrase does not open it (or it was altered).
    #[error("wrong passphrase, or the backup was altered")]
    WrongPassphrase,
    /// Restoring over a data dir in use.
    #[error("{0} already holds a node (identity.key or a database): restore into a fresh data dir")]
    NotFresh(String),
    /// Reading or writing files.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing a key file.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
}

/// What a backup holds.
#[derive(Serialize, Deserialize)]
pub struct Backup {
    /// The node's ed25519 secret key (`identity.key`); wiped on drop.
    pub identity: Vec<u8>,
    /// Every room: its secret (or seed capability) and our writer key in it.
    pub rooms: Vec<(DiscoveryKey, RoomRecord)>,
    /// Nicknames and verified marks: (writer, contact, verified).
    pub contacts: Vec<(FeedKey, Contact, bool)>,
    /// Blocks: (room, all zeros for every room; writer).
    pub blocked: Vec<(DiscoveryKey, FeedKey)>,
    /// Our display name.
    pub display_name: Option<String>,
}

impl Drop for Backup {
    fn drop(&mut self) {
        self.identity.zeroize();
    }
}

impl Backup {
    /// Collects what a backup holds from a running daemon's data dir and store.
    pub fn collect(data_dir: &Path, store: &Store) -> Result<Self, BackupError> {
        let path = data_dir.join("identity.key");
        let identity =
            std::fs::read(&path).map_err(|source| BackupError::Io { path: path.display().to_string(), source })?;
        Ok(Self {
            identity,
            rooms: store.rooms()?,
            contacts: store.contacts()?,
            blocked: store.all_blocked(),
            display_name: store.display_name()?,
        })
    }

    /// Seals it with `passphrase`.
    pub fn seal(&self, passphrase: &str) -> Result<Vec<u8>, BackupError> {
        if passphrase.chars().count() < MIN_PASSPHRASE {
            return Err(BackupError::WeakPassphrase);
        }
        let salt: [u8; 16] = rand::random();
        let nonce: [u8; 12] = rand::random();
        let plain = Zeroizing::new(postcard::to_stdvec(self).map_err(|_| BackupError::NotABackup)?);
        let sealed = cipher(passphrase, &salt)
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .map_err(|_| BackupError::NotABackup)?;
        Ok([MAGIC.as_slice(), &salt, &nonce, &sealed].concat())
    }

    /// Opens a sealed backup.
    pub fn open(bytes: &[u8], passphrase: &str) -> Result<Self, BackupError> {
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(BackupError::NotABackup)?;
        if rest.len() < 16 + 12 + 16 {
            return Err(BackupError::NotABackup);
        }
        let (salt, rest) = rest.split_at(16);
        let (nonce, sealed) = rest.split_at(12);
        let plain = Zeroizing::new(
            cipher(passphrase, salt)
                .decrypt(Nonce::from_slice(nonce), sealed)
                .map_err(|_| BackupError::WrongPassphrase)?,
        );
        postcard::from_bytes(&plain).map_err(|_| BackupError::NotABackup)
    }

    /// Writes it into a fresh data dir: the identity, then every room, contact, block and
    /// the display name. A daemon started there rejoins the rooms and catches up.
    pub fn restore(&self, data_dir: &Path) -> Result<(), BackupError> {
        let io = |path: &Path, source| BackupError::Io { path: path.display().to_string(), source };
        let identity = data_dir.join("identity.key");
        if identity.exists() || data_dir.join("db").join("kv").exists() {
            return Err(BackupError::NotFresh(data_dir.display().to_string()));
        }
        std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
        std::fs::set_permissions(data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| io(data_dir, e))?;
        let store = Store::open(&data_dir.join("db"))?;
        for (discovery_key, record) in &self.rooms {
            store.put_room(discovery_key, record)?;
        }
        for (feed, contact, verified) in &self.contacts {
            store.put_contact(feed, contact)?;
            store.set_verified(feed, *verified)?;
        }
        for (room, writer) in &self.blocked {
            store.set_blocked(room, writer, true)?;
        }
        if let Some(name) = &self.display_name {
            store.put_display_name(name)?;
        }
        store.flush_blocking()?;
        drop(store);
        // Last: a data dir with an identity is one that is in use.
        write_secret_file(&identity, &self.identity)?;
        Ok(())
    }
}

/// AES-256-GCM under `Argon2id(passphrase, salt)`.
fn cipher(passphrase: &str, salt: &[u8]) -> Aes256Gcm {
    let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32)).expect("valid Argon2 parameters");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon.hash_password_into(passphrase.as_bytes(), salt, &mut key).expect("valid Argon2 output and salt lengths");
    let cipher = Aes256Gcm::new_from_slice(&key).expect("a 32-byte key");
    key.zeroize();
    cipher
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_opens_with_its_passphrase_only() {
        let backup = Backup {
            identity: vec![7; 32],
            rooms: Vec::new(),
            contacts: vec![(FeedKey([1; 32]), Contact { nickname: Some("ada".into()), verified: false }, true)],
            blocked: vec![(DiscoveryKey([0; 32]), FeedKey([2; 32]))],
            display_name: Some("me".into()),
        };
        assert!(matches!(backup.seal("short"), Err(BackupError::WeakPassphrase)));
        let sealed = backup.seal("a long enough passphrase").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"ada"), "sealed, not plain");
        let back = Backup::open(&sealed, "a long enough passphrase").unwrap();
        assert_eq!(back.contacts, backup.contacts);
        assert_eq!(back.identity.as_slice(), &[7; 32]);
        assert!(matches!(Backup::open(&sealed, "another passphrase!"), Err(BackupError::WrongPassphrase)));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(Backup::open(&altered, "a long enough passphrase"), Err(BackupError::WrongPassphrase)));
        assert!(matches!(Backup::open(b"hello", "x"), Err(BackupError::NotABackup)));
    }
}
