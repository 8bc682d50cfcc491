//! Backups: what cannot be fetched again from peers (the node's identity, every room's
//! secret and our writer key in it, the seed and admin a room's secret is made from,
//! contacts, blocks, the display name, the person key and this device's certificate),
//! sealed with a passphrase. Never the logs: peers serve them again, and a restored daemon catches up
//! (its own feed first, before it writes on, see `replicate::state`).
//!
//! File format: `PEERLOGBACKUP2` (14 bytes), a 16-byte salt, a 12-byte nonce, then
//! AES-256-GCM under `Argon2id(passphrase, salt)` (the parameters of room passphrases) of
//! the postcard encoding of [`Backup`]. `PEERLOGBACKUP1` backups (without admin bindings
//! and devices) still open.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Key32};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::{write_secret_file, AdminBound, ARGON2_M_KIB, ARGON2_P, ARGON2_T};
use crate::log::store::{Contact, RoomRecord, StoreError};
use crate::log::Store;

const MAGIC: &[u8; 14] = b"PEERLOGBACKUP2";
/// Backups made before admin bindings and devices.
const MAGIC_1: &[u8; 14] = b"PEERLOGBACKUP1";
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
    /// The seed and admin of each room with an admin: without them a restored daemon would
    /// take any member's removal as an admin's.
    pub admin_bindings: Vec<(DiscoveryKey, AdminBound)>,
    /// The person key (`person.key`), on the device that holds it; wiped on drop.
    pub person_key: Option<Vec<u8>>,
    /// Our person and its certificate of this device.
    pub person: Option<(Key32, Vec<u8>)>,
    /// The devices this one linked: device key, linked at (ms), unlinked.
    pub linked_devices: Vec<(Key32, u64, bool)>,
}

/// What a `PEERLOGBACKUP1` backup holds (the first fields of [`Backup`]).
#[derive(Deserialize)]
struct BackupV1 {
    identity: Vec<u8>,
    rooms: Vec<(DiscoveryKey, RoomRecord)>,
    contacts: Vec<(FeedKey, Contact, bool)>,
    blocked: Vec<(DiscoveryKey, FeedKey)>,
    display_name: Option<String>,
}

impl Drop for Backup {
    fn drop(&mut self) {
        self.identity.zeroize();
        if let Some(key) = self.person_key.as_mut() {
            key.zeroize();
        }
    }
}

impl Backup {
    /// Collects what a backup holds from a running daemon's data dir and store.
    pub fn collect(data_dir: &Path, store: &Store) -> Result<Self, BackupError> {
        let path = data_dir.join("identity.key");
        let identity =
            std::fs::read(&path).map_err(|source| BackupError::Io { path: path.display().to_string(), source })?;
        let person_path = data_dir.join("person.key");
        let person_key = match std::fs::read(&person_path) {
            Ok(key) => Some(key),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(BackupError::Io { path: person_path.display().to_string(), source }),
        };
        // Link rooms last minutes, and are left at the next start anyway.
        let links = store.link_rooms()?;
        Ok(Self {
            identity,
            rooms: store.rooms()?.into_iter().filter(|(r, _)| !links.contains(r)).collect(),
            contacts: store.contacts()?,
            blocked: store.all_blocked(),
            display_name: store.display_name()?,
            admin_bindings: store.admin_bindings()?,
            person_key,
            person: store.person()?,
            linked_devices: store.linked_devices()?,
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
        let (first, rest) = match (bytes.strip_prefix(MAGIC.as_slice()), bytes.strip_prefix(MAGIC_1.as_slice())) {
            (Some(rest), _) => (false, rest),
            (None, Some(rest)) => (true, rest),
            (None, None) => return Err(BackupError::NotABackup),
        };
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
        if !first {
            return postcard::from_bytes(&plain).map_err(|_| BackupError::NotABackup);
        }
        let v1: BackupV1 = postcard::from_bytes(&plain).map_err(|_| BackupError::NotABackup)?;
        Ok(Self {
            identity: v1.identity,
            rooms: v1.rooms,
            contacts: v1.contacts,
            blocked: v1.blocked,
            display_name: v1.display_name,
            admin_bindings: Vec::new(),
            person_key: None,
            person: None,
            linked_devices: Vec::new(),
        })
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
        for (room, bound) in &self.admin_bindings {
            store.set_admin_binding(room, bound)?;
        }
        if let Some((person, cert)) = &self.person {
            store.set_person(person, cert)?;
        }
        store.set_linked_devices(&self.linked_devices)?;
        if let Some(key) = &self.person_key {
            write_secret_file(&data_dir.join("person.key"), key)?;
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
            admin_bindings: vec![(DiscoveryKey([3; 32]), AdminBound { seed: [4; 32], admin: FeedKey([5; 32]) })],
            person_key: Some(vec![6; 32]),
            person: Some(([8; 32], vec![9; 64])),
            linked_devices: vec![([10; 32], 11, false)],
        };
        assert!(matches!(backup.seal("short"), Err(BackupError::WeakPassphrase)));
        let sealed = backup.seal("a long enough passphrase").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"ada"), "sealed, not plain");
        let back = Backup::open(&sealed, "a long enough passphrase").unwrap();
        assert_eq!(back.contacts, backup.contacts);
        assert_eq!(back.identity.as_slice(), &[7; 32]);
        assert_eq!(back.admin_bindings, backup.admin_bindings);
        assert_eq!((back.person_key.clone(), back.person.clone()), (backup.person_key.clone(), backup.person.clone()));
        assert_eq!(back.linked_devices, backup.linked_devices);
        assert!(matches!(Backup::open(&sealed, "another passphrase!"), Err(BackupError::WrongPassphrase)));
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(Backup::open(&altered, "a long enough passphrase"), Err(BackupError::WrongPassphrase)));
        assert!(matches!(Backup::open(b"hello", "x"), Err(BackupError::NotABackup)));
    }

    #[test]
    fn a_backup_of_the_first_format_still_opens() {
        #[derive(Serialize)]
        struct V1<'a>(
            &'a [u8],
            Vec<(DiscoveryKey, RoomRecord)>,
            Vec<(FeedKey, Contact, bool)>,
            Vec<(DiscoveryKey, FeedKey)>,
            Option<String>,
        );
        let plain = postcard::to_stdvec(&V1(&[7; 32], Vec::new(), Vec::new(), Vec::new(), Some("me".into()))).unwrap();
        let (salt, nonce) = ([1u8; 16], [2u8; 12]);
        let sealed =
            cipher("a long enough passphrase", &salt).encrypt(Nonce::from_slice(&nonce), plain.as_slice()).unwrap();
        let bytes = [MAGIC_1.as_slice(), &salt, &nonce, &sealed].concat();
        let back = Backup::open(&bytes, "a long enough passphrase").unwrap();
        assert_eq!(back.display_name.as_deref(), Some("me"));
        assert!(back.admin_bindings.is_empty() && back.person_key.is_none());
    }
}
