//! Key material: the node identity, room secrets (from a passphrase with Argon2id, or
//! random for invites), the keys derived from them with HKDF, and the membership proof.
//! The derivations are a contract (`docs/PROTOCOL.md`): changing one splits rooms.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::{LazyLock, Mutex};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use libp2p::identity::Keypair;
use libp2p::PeerId;
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Key32, AUTH_LABEL, HELLO_LABEL};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub mod device;
pub mod seal;

/// Salt of the passphrase KDF: fixed so that everyone with the passphrase reaches the room.
pub const ROOM_SALT: &[u8] = b"peerlog/room/v1";
/// Argon2id memory cost in KiB (64 MiB, RFC 9106's second recommended setting).
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes.
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes.
pub const ARGON2_P: u32 = 4;
/// Prefix of an invite string.
pub const INVITE_PREFIX: &str = "peerlog:";
/// Prefix of a seed capability.
pub const SEED_PREFIX: &str = "peerlog-seed:";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key file exists but does not hold a valid key.
    #[error("key file {0} is corrupt")]
    Corrupt(String),
    /// The invite string is not `peerlog:` followed by 32 or 64 bytes in base32.
    #[error("not a peerlog invite (expected peerlog:<52 or 103 base32 characters>)")]
    BadInvite,
    /// The seed capability string is not `peerlog-seed:` followed by 64 bytes in base32.
    #[error("not a peerlog seed capability (expected peerlog-seed:<103 base32 characters>)")]
    BadSeed,
    /// A seed capability was given where an invite belongs.
    #[error("this is a seed capability, which lets a daemon store and serve a room without reading it; use `peerlog seed` (rooms.seed), or ask for an invite to join")]
    SeedNotInvite,
    /// The passphrase is empty.
    #[error("the passphrase is empty")]
    EmptyPassphrase,
}

/// A room's 32-byte root secret. Never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct RoomSecret(pub [u8; 32]);

impl std::fmt::Debug for RoomSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoomSecret(<redacted>)")
    }
}

impl RoomSecret {
    /// Argon2id(NFC(passphrase), salt = "peerlog/room/v1", m = 64 MiB, t = 3, p = 4).
    /// Takes about a second of CPU: call it off the async threads.
    pub fn from_passphrase(passphrase: &str) -> Result<Self, KeyError> {
        let normalized: String = passphrase.nfc().collect();
        if normalized.trim().is_empty() {
            return Err(KeyError::EmptyPassphrase);
        }
        let params = argon2::Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .expect("constant Argon2 parameters are valid");
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(normalized.as_bytes(), ROOM_SALT, &mut out)
            .expect("output length and salt length are within Argon2's bounds");
        Ok(Self(out))
    }

    /// A fresh random secret (for rooms created with an invite).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Parses an invite (`peerlog:<base32>`, with or without a suggested name).
    pub fn from_invite(invite: &str) -> Result<Self, KeyError> {
        Ok(Invite::parse(invite)?.key.secret())
    }

    /// `peerlog:<base32 secret>`, lower case.
    pub fn to_invite(&self) -> String {
        format!("{INVITE_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&self.0).to_ascii_lowercase())
    }

    /// Derives the room's keys.
    pub fn keys(&self) -> RoomKeys {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let expand = |label: &[u8]| {
            let mut k = [0u8; 32];
            hk.expand(label, &mut k).expect("32 bytes is a valid HKDF-SHA256 output length");
            k
        };
        RoomKeys {
            discovery_key: DiscoveryKey(expand(b"peerlog/discovery/v1")),
            auth_key: expand(b"peerlog/auth/v1"),
            content_key: Some(expand(b"peerlog/content/v1")),
        }
    }
}

/// The secret of a room with an admin: made from a random seed and the admin's writer key
/// (HKDF-SHA256, ikm = seed, info = "peerlog/admin-room/v1" || admin). The admin is bound
/// into every key of the room: the same seed with another admin is another room, so an
/// invite whose admin was swapped leads nowhere. Rooms made by `rooms.create` have their
/// creator as admin; rooms made by a removal, the remover.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AdminBound {
    /// The random seed (as secret as the room secret).
    pub seed: [u8; 32],
    /// The admin's writer key in the room (public).
    #[zeroize(skip)]
    pub admin: FeedKey,
}

impl std::fmt::Debug for AdminBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminBound(<redacted>, admin {})", hex::encode(self.admin))
    }
}

impl AdminBound {
    /// A fresh room with `admin` as its admin.
    pub fn random(admin: FeedKey) -> Self {
        Self { seed: rand::random(), admin }
    }

    /// The room's secret.
    pub fn secret(&self) -> RoomSecret {
        let mut info = b"peerlog/admin-room/v1".to_vec();
        info.extend_from_slice(&self.admin.0);
        let mut out = [0u8; 32];
        Hkdf::<Sha256>::new(None, &self.seed)
            .expand(&info, &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        RoomSecret(out)
    }
}

/// What an invite admits to: a room secret (a room without admins), or the seed and admin
/// a room's secret is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteKey {
    /// `peerlog:` and the 32-byte secret: rooms without admins (and invites made before
    /// rooms had them).
    Secret(RoomSecret),
    /// `peerlog:` and 64 bytes: the seed, then the admin's writer key.
    Bound(AdminBound),
}

impl InviteKey {
    /// The room's secret.
    pub fn secret(&self) -> RoomSecret {
        match self {
            Self::Secret(secret) => secret.clone(),
            Self::Bound(bound) => bound.secret(),
        }
    }

    fn to_text(&self) -> String {
        match self {
            Self::Secret(secret) => secret.to_invite(),
            Self::Bound(bound) => {
                let mut bytes = [0u8; 64];
                bytes[..32].copy_from_slice(&bound.seed);
                bytes[32..].copy_from_slice(&bound.admin.0);
                let text =
                    format!("{INVITE_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase());
                bytes.zeroize();
                text
            }
        }
    }
}

/// What a blind seeder holds: enough to find the room's peers and pass the membership
/// proof, and nothing to decrypt or write with.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SeedCapability {
    /// The room's discovery key (public: nothing to wipe).
    #[zeroize(skip)]
    pub discovery_key: DiscoveryKey,
    /// The room's membership key.
    pub auth_key: Key32,
}

impl std::fmt::Debug for SeedCapability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeedCapability({})", room_id(&self.discovery_key))
    }
}

impl SeedCapability {
    /// The seed capability of a room whose keys we hold.
    pub fn of(keys: &RoomKeys) -> Self {
        Self { discovery_key: keys.discovery_key, auth_key: keys.auth_key }
    }

    /// `peerlog-seed:<base32 of discovery key and auth key>`, lower case.
    pub fn to_text(&self) -> String {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&self.discovery_key.0);
        bytes[32..].copy_from_slice(&self.auth_key);
        let text = format!("{SEED_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&bytes).to_ascii_lowercase());
        bytes.zeroize();
        text
    }

    /// Parses [`SeedCapability::to_text`]'s output.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let body = text.trim().strip_prefix(SEED_PREFIX).ok_or(KeyError::BadSeed)?;
        let mut bytes =
            data_encoding::BASE32_NOPAD.decode(body.to_ascii_uppercase().as_bytes()).map_err(|_| KeyError::BadSeed)?;
        if bytes.len() != 64 {
            bytes.zeroize();
            return Err(KeyError::BadSeed);
        }
        let mut cap = Self { discovery_key: DiscoveryKey::default(), auth_key: [0; 32] };
        cap.discovery_key.0.copy_from_slice(&bytes[..32]);
        cap.auth_key.copy_from_slice(&bytes[32..]);
        bytes.zeroize();
        Ok(cap)
    }

    /// The keys a seeder works with: no content key.
    pub fn keys(&self) -> RoomKeys {
        RoomKeys { discovery_key: self.discovery_key, auth_key: self.auth_key, content_key: None }
    }
}

/// The keys of one room.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RoomKeys {
    /// Public: the DHT key and the room's name on the wire (nothing to wipe).
    #[zeroize(skip)]
    pub discovery_key: DiscoveryKey,
    /// Proves membership in the replication handshake.
    pub auth_key: Key32,
    /// Encrypts entries (through a per-writer subkey). None for a blind seeder.
    pub content_key: Option<Key32>,
}

impl std::fmt::Debug for RoomKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoomKeys({})", room_id(&self.discovery_key))
    }
}

/// A room's short public id: the first 8 bytes of its discovery key, in hex.
pub fn room_id(discovery_key: &DiscoveryKey) -> String {
    hex::encode(&discovery_key[..8])
}

/// The name a room gets when nobody gave it one.
pub fn default_room_name(discovery_key: &DiscoveryKey) -> String {
    format!("room {}", &room_id(discovery_key)[..6])
}

/// The longest room name, in bytes.
pub const ROOM_NAME_MAX: usize = 100;

/// An invite as people pass it on: `peerlog:<base32 key>` (see [`InviteKey`]), then
/// optionally `?name=` and the name its sender gave the room, percent-encoded. The name is a
/// suggestion for the joiner's own list (who may change it); the key alone admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// What admits.
    pub key: InviteKey,
    /// The suggested name: control characters dropped, at most `ROOM_NAME_MAX` bytes.
    pub name: Option<String>,
}

impl Invite {
    /// Parses an invite. A name that is not valid percent-encoded UTF-8 is left out; the
    /// secret must be exact.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.starts_with(SEED_PREFIX) {
            return Err(KeyError::SeedNotInvite);
        }
        let (secret, query) = text.split_once('?').map_or((text, None), |(s, q)| (s, Some(q)));
        let body = secret.strip_prefix(INVITE_PREFIX).ok_or(KeyError::BadInvite)?;
        let mut bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| KeyError::BadInvite)?;
        let key = match bytes.len() {
            32 => InviteKey::Secret(RoomSecret(bytes[..].try_into().map_err(|_| KeyError::BadInvite)?)),
            64 => {
                let mut bound = AdminBound { seed: [0; 32], admin: FeedKey::default() };
                bound.seed.copy_from_slice(&bytes[..32]);
                bound.admin.0.copy_from_slice(&bytes[32..]);
                InviteKey::Bound(bound)
            }
            _ => {
                bytes.zeroize();
                return Err(KeyError::BadInvite);
            }
        };
        bytes.zeroize();
        let name = query
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("name=")))
            .and_then(|n| percent_encoding::percent_decode_str(n).decode_utf8().ok())
            .map(|n| clean_room_name(&n))
            .filter(|n| !n.is_empty());
        Ok(Self { key, name })
    }

    /// The text to pass on.
    pub fn to_text(&self) -> String {
        let mut text = self.key.to_text();
        if let Some(name) = &self.name {
            text.push_str("?name=");
            text.extend(percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC));
        }
        text
    }
}

/// A room name from someone else: trimmed, no control characters, cut (at a character) to
/// `ROOM_NAME_MAX` bytes.
fn clean_room_name(name: &str) -> String {
    let mut out = String::new();
    for c in name.trim().chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > ROOM_NAME_MAX {
            break;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

/// Membership proof sent by `sender` to `receiver` in a session opened with the two nonces.
/// Binding the direction (sender first) stops a peer from reflecting our own proof back.
pub fn auth_mac(
    auth_key: &Key32,
    initiator_nonce: &Key32,
    responder_nonce: &Key32,
    sender: &PeerId,
    receiver: &PeerId,
) -> Key32 {
    mac_for_pair(auth_key, &[AUTH_LABEL, initiator_nonce, responder_nonce], sender, receiver)
}

/// The room tag of a `Hello` from `sender` to `receiver` with `nonce` (the sender's own):
/// `HMAC-SHA256(discovery_key, "peerlog/hello/v1" || nonce || len16(sender) || sender ||
/// len16(receiver) || receiver)`. Only a peer that knows the discovery key can tell which
/// room it names, and it names it for this pair of peers only (no replay to a third).
pub fn room_tag(discovery_key: &DiscoveryKey, nonce: &Key32, sender: &PeerId, receiver: &PeerId) -> Key32 {
    mac_for_pair(&discovery_key.0, &[HELLO_LABEL, nonce], sender, receiver)
}

/// `HMAC-SHA256(key, parts… || len16(sender) || sender || len16(receiver) || receiver)`.
fn mac_for_pair(key: &Key32, parts: &[&[u8]], sender: &PeerId, receiver: &PeerId) -> Key32 {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    for peer in [sender, receiver] {
        let bytes = peer.to_bytes();
        mac.update(&(bytes.len() as u16).to_be_bytes());
        mac.update(&bytes);
    }
    mac.finalize().into_bytes().into()
}

/// Checks a membership proof in constant time.
pub fn verify_auth_mac(expected: &Key32, got: &Key32) -> bool {
    // No early exit: the time taken does not depend on where the MACs differ.
    expected.iter().zip(got).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes `bytes` to `path` with mode 0600, atomically (temp file, fsync, rename).
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    write_file_with_mode(path, bytes, 0o600)
}

/// [`write_secret_file`] with another mode (0640: the group may read it too).
pub fn write_file_with_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io)?;
    // The umask may have taken bits away: set exactly `mode`.
    f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// Loads the node identity from `path`, creating it (0600) on first start.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, KeyError> {
    match std::fs::read(path) {
        Ok(mut bytes) => {
            let kp = Keypair::ed25519_from_bytes(&mut bytes).map_err(|_| KeyError::Corrupt(path.display().to_string()));
            bytes.zeroize();
            kp
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = libp2p::identity::ed25519::Keypair::generate();
            let mut secret = kp.secret().as_ref().to_vec();
            write_secret_file(path, &secret)?;
            secret.zeroize();
            Ok(kp.into())
        }
        Err(source) => Err(KeyError::Io { path: path.display().to_string(), source }),
    }
}

/// zxcvbn's scale ends at 64 bits (2^64 guesses): four random common words reach it.
pub const PASSPHRASE_BITS_MAX: u32 = 64;
/// Below this many bits, joining a room announced on the public DHT needs an explicit
/// confirmation (`weak_ok`; `--i-know-it-is-weak`; the UI asks).
pub const PUBLIC_CONFIRM_BELOW: u32 = 60;
/// Below this many bits a private-network room gets a warning.
const PRIVATE_WARN_BELOW: u32 = 45;

/// What to tell someone joining a room by a passphrase of `bits` (see [`passphrase_bits`]),
/// if anything. A room announced on the public DHT (`public`) shows its daily provider key to
/// every crawler of that DHT, who can then test guesses offline (one Argon2id each): it asks
/// for more, and says so loudly.
pub fn passphrase_warning(bits: u32, public: bool) -> Option<String> {
    if public && bits < PASSPHRASE_BITS_MAX {
        Some(format!(
            "WEAK PASSPHRASE ({bits} bits) for a room announced on the public libp2p DHT: anyone crawling it sees the room's \
             daily key and can test guesses offline until one opens the room. Use an invite (create the room with \
             `peerlog create`), or 4+ random words"
        ))
    } else if bits < PRIVATE_WARN_BELOW {
        Some(format!(
            "weak passphrase ({bits} bits): anyone who sees the room's DHT key can guess it offline; use 4+ random words or an invite"
        ))
    } else {
        None
    }
}

/// Strength of a passphrase in bits: log2 of the guesses zxcvbn (Dropbox's estimator:
/// dictionaries, keyboard patterns, dates, l33t, repeats) expects an attacker to need.
/// Only the first 128 characters are looked at (the estimator's cost grows with length,
/// and a passphrase whose first 128 characters are strong is strong).
pub fn passphrase_bits(passphrase: &str) -> u32 {
    let normalized: String = passphrase.nfc().take(128).collect();
    if normalized.is_empty() {
        return 0;
    }
    let entropy = zxcvbn::zxcvbn(&normalized, &["peerlog"]);
    (entropy.guesses_log10() * std::f64::consts::LOG2_10) as u32
}

/// Iterations of SHA-512 per side of a safety number (as Signal's): grinding a key whose
/// half matches costs this many hashes per try, on top of 2^100 tries.
const SAFETY_ITERATIONS: usize = 5200;

/// One side of a safety number: 30 digits from a stretched hash of a writer key.
fn safety_half(key: &Key32) -> String {
    use sha2::{Digest, Sha512};
    static CACHE: LazyLock<Mutex<HashMap<Key32, String>>> = LazyLock::new(Mutex::default);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(half) = cache.get(key) {
        return half.clone();
    }
    let mut h =
        Sha512::new().chain_update(2u16.to_be_bytes()).chain_update(key).chain_update(b"peerlog writer").finalize();
    for _ in 1..SAFETY_ITERATIONS {
        h = Sha512::new().chain_update(h).chain_update(key).finalize();
    }
    // Six 5-digit groups, each from 5 bytes (Signal's encoding).
    let half: String = h[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)) % 100_000;
            format!("{n:05}")
        })
        .collect();
    if cache.len() >= 10_000 {
        cache.clear();
    }
    cache.insert(*key, half.clone());
    half
}

/// The safety number of two writers (ours and theirs in a room): 60 digits in twelve
/// groups of five, the same on both sides, that two people compare out of band (side by
/// side, read aloud, or one scanning the other's QR code) to check that each sees the
/// other's real key. Built as Signal's: each half is 5,200 rounds of SHA-512 over one key.
pub fn safety_number(ours: &Key32, theirs: &Key32) -> String {
    let (a, b) = (safety_half(ours), safety_half(theirs));
    let digits = if a <= b { a + &b } else { b + &a };
    digits.as_bytes().chunks(5).map(|c| std::str::from_utf8(c).unwrap_or("")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_room_tag_hides_the_room_and_binds_the_pair() {
        let discovery_key = DiscoveryKey([4u8; 32]);
        let (a, b) = (PeerId::random(), PeerId::random());
        let tag = room_tag(&discovery_key, &[1; 32], &a, &b);
        assert_ne!(tag, discovery_key.0);
        assert_eq!(tag, room_tag(&discovery_key, &[1; 32], &a, &b));
        assert_ne!(tag, room_tag(&discovery_key, &[2; 32], &a, &b), "fresh per nonce");
        assert_ne!(tag, room_tag(&discovery_key, &[1; 32], &b, &a), "bound to who sends to whom");
        assert_ne!(tag, room_tag(&DiscoveryKey([5; 32]), &[1; 32], &a, &b));
    }

    use super::*;

    #[test]
    fn passphrase_derivation_is_stable_and_normalized() {
        let a = RoomSecret::from_passphrase("caf\u{e9} correct horse").unwrap();
        let b = RoomSecret::from_passphrase("cafe\u{301} correct horse").unwrap();
        assert_eq!(a, b, "NFC and NFD spellings must reach the same room");
        let c = RoomSecret::from_passphrase("cafe correct horse").unwrap();
        assert_ne!(a, c);
        let k = a.keys();
        assert_ne!(k.discovery_key.0, k.auth_key);
        assert_ne!(Some(k.auth_key), k.content_key);
        assert!(matches!(RoomSecret::from_passphrase("  "), Err(KeyError::EmptyPassphrase)));
    }

    #[test]
    fn seed_capabilities_carry_no_content_key() {
        let keys = RoomSecret::random().keys();
        let cap = SeedCapability::of(&keys);
        let text = cap.to_text();
        assert!(text.starts_with(SEED_PREFIX));
        let back = SeedCapability::parse(&text).unwrap();
        assert_eq!(back, cap);
        let seeded = back.keys();
        assert_eq!(
            (seeded.discovery_key, seeded.auth_key, seeded.content_key),
            (keys.discovery_key, keys.auth_key, None)
        );
        // Neither the content key nor the secret can be recovered from the text.
        let decoded =
            data_encoding::BASE32_NOPAD.decode(text[SEED_PREFIX.len()..].to_ascii_uppercase().as_bytes()).unwrap();
        let content = keys.content_key.unwrap();
        assert!(!decoded.windows(32).any(|w| w == content));
        assert!(matches!(RoomSecret::from_invite(&text), Err(KeyError::SeedNotInvite)));
        assert!(matches!(SeedCapability::parse("peerlog-seed:abc"), Err(KeyError::BadSeed)));
        assert!(matches!(SeedCapability::parse(&RoomSecret::random().to_invite()), Err(KeyError::BadSeed)));
    }

    #[test]
    fn invites_roundtrip_and_reject_garbage() {
        let s = RoomSecret::random();
        let inv = s.to_invite();
        assert!(inv.starts_with("peerlog:"));
        assert_eq!(RoomSecret::from_invite(&inv).unwrap(), s);
        assert_eq!(RoomSecret::from_invite(&inv.to_uppercase().replace("PEERLOG:", "peerlog:")).unwrap(), s);
        assert!(RoomSecret::from_invite("peerlog:abc").is_err());
        assert!(RoomSecret::from_invite("hello").is_err());
        assert!(format!("{s:?}").contains("redacted"));
    }

    #[test]
    fn invites_carry_a_suggested_name() {
        let secret = RoomSecret::random();
        let named = Invite { key: InviteKey::Secret(secret.clone()), name: Some("Family & friends ü/#?".into()) };
        let text = named.to_text();
        assert!(text.starts_with(&secret.to_invite()) && !text[8..].contains(['&', '#', ' ', '/']), "{text}");
        assert_eq!(Invite::parse(&text).unwrap(), named);
        assert_eq!(RoomSecret::from_invite(&text).unwrap(), secret);
        // Without a name, or with one that is not text, the secret still admits.
        assert_eq!(Invite::parse(&secret.to_invite()).unwrap().name, None);
        assert_eq!(Invite::parse(&format!("{}?name=%ff%fe", secret.to_invite())).unwrap().name, None);
        // Control characters go, and the name is cut to its bound at a character.
        let long = format!("{}?name={}%0Aend", secret.to_invite(), "%C3%BC".repeat(80));
        let name = Invite::parse(&long).unwrap().name.unwrap();
        assert!(name.len() <= ROOM_NAME_MAX && name.chars().all(|c| c == 'ü'), "{name}");
        assert!(Invite::parse(&format!("{}x?name=a", secret.to_invite())).is_err());
    }

    #[test]
    fn an_invite_binds_the_rooms_admin_into_its_keys() {
        let bound = AdminBound::random(FeedKey([7; 32]));
        let invite = Invite { key: InviteKey::Bound(bound.clone()), name: Some("club".into()) };
        let text = invite.to_text();
        assert_eq!(text.split('?').next().unwrap().len(), INVITE_PREFIX.len() + 103, "{text}");
        assert_eq!(Invite::parse(&text).unwrap(), invite);
        assert_eq!(RoomSecret::from_invite(&text).unwrap(), bound.secret());
        assert!(!format!("{bound:?}").contains(&hex::encode(bound.seed)));
        // Another admin with the same seed is another room.
        let swapped = AdminBound { seed: bound.seed, admin: FeedKey([8; 32]) };
        assert_ne!(swapped.secret().keys().discovery_key, bound.secret().keys().discovery_key);
        assert_ne!(bound.secret(), RoomSecret(bound.seed));
        // 32 and 64 bytes are invites, nothing else.
        let odd = format!("{INVITE_PREFIX}{}", data_encoding::BASE32_NOPAD.encode(&[1; 48]).to_ascii_lowercase());
        assert!(matches!(Invite::parse(&odd), Err(KeyError::BadInvite)));
    }

    #[test]
    fn auth_mac_binds_direction() {
        let key = [9u8; 32];
        let (a, b) = (PeerId::random(), PeerId::random());
        let m_ab = auth_mac(&key, &[1; 32], &[2; 32], &a, &b);
        let m_ba = auth_mac(&key, &[1; 32], &[2; 32], &b, &a);
        assert_ne!(m_ab, m_ba, "a reflected proof must not verify");
        assert!(verify_auth_mac(&m_ab, &auth_mac(&key, &[1; 32], &[2; 32], &a, &b)));
        assert!(!verify_auth_mac(&m_ab, &auth_mac(&[8; 32], &[1; 32], &[2; 32], &a, &b)));
    }

    #[test]
    fn identity_is_created_0600_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("peerlog-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("identity.key");
        let a = load_or_create_identity(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create_identity(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_publicly_announced_room_asks_more_of_its_passphrase_and_says_so_loudly() {
        let three = passphrase_bits("sofa marble orbit");
        assert!((PRIVATE_WARN_BELOW..PUBLIC_CONFIRM_BELOW).contains(&three), "{three}");
        assert_eq!(passphrase_warning(three, false), None);
        let public = passphrase_warning(three, true).expect("warned on the public DHT");
        assert!(public.starts_with("WEAK PASSPHRASE") && public.contains("public libp2p DHT"), "{public}");
        assert!(passphrase_warning(passphrase_bits("Summer2024!"), false).is_some());
        assert_eq!(passphrase_warning(passphrase_bits("sofa marble orbit glacier tuxedo lantern"), true), None);
    }

    #[test]
    fn safety_numbers_are_per_pair_symmetric_and_60_digits() {
        let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let ab = safety_number(&a, &b);
        assert_eq!(ab, safety_number(&b, &a), "both sides see the same number");
        assert_ne!(ab, safety_number(&a, &c));
        assert_eq!(ab.len(), 60 + 11, "{ab}");
        assert!(ab.split(' ').all(|g| g.len() == 5 && g.bytes().all(|d| d.is_ascii_digit())), "{ab}");
        // One key's half is the same in every pair it is part of.
        let (h, ac) = (safety_half(&a), safety_number(&a, &c).replace(' ', ""));
        assert!(ab.replace(' ', "").contains(&h) && ac.contains(&h));
    }

    #[test]
    fn strength_estimate_orders_sensibly() {
        let bits = |p: &str| passphrase_bits(p);
        assert!(bits("aaaa") < 20);
        // What the character-class estimate rated strong, zxcvbn knows as patterns.
        for weak in ["Password1!", "Summer2024!", "qwertyuiop12"] {
            assert!(bits(weak) < 40, "{weak}: {}", bits(weak));
        }
        assert!(bits("sofa marble orbit") < bits("sofa marble orbit glacier"));
        assert_eq!(bits("sofa marble orbit glacier tuxedo lantern"), PASSPHRASE_BITS_MAX);
        assert_eq!(bits(""), 0);
        assert_eq!(bits(&"x".repeat(1 << 20)), bits(&"x".repeat(128)), "long input is cut, not slow");
    }
}
