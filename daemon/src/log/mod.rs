//! The room log, Corestore-style: one append-only feed per writer. This file holds the
//! pure parts (messages, hashing, signing, encryption); [`store`] keeps feeds in sled.
//!
//! ```text
//! hash(entry) = BLAKE3(feed_key || seq (BE) || prev || nonce || ciphertext)
//! head        = ed25519(feed_key, "peerlog/head/v1" || seq (BE) || hash)
//! ciphertext  = AES-256-GCM(HKDF(content_key, "peerlog/entry/v1" || feed_key),
//!                           random nonce, aad = feed_key || seq (BE), message)
//! ```

pub mod commit;
pub mod index;
pub mod store;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use peerlog_proto::wire::{ChunkId, DiscoveryKey, Entry, FeedKey, Key32, SignedHead};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub use store::Store;

/// The largest Lamport clock a message may carry: 2^53 - 1, so that clocks stay exact as
/// JavaScript numbers (the web UI, JSON clients) and no sum of clocks can overflow.
pub const LAMPORT_MAX: u64 = (1 << 53) - 1;

/// How far above the largest clock a room holds here a received message's clock may be.
/// An honest writer's clock exceeds the room's by at most the number of messages we have
/// not seen yet (a joiner fetches newest first), so the margin is sized for rooms of
/// billions of messages. It bounds what one hostile member can do to the room clock: with
/// no bound, one message at `u64::MAX` made every other writer's next clock overflow.
/// Walking the clock up to [`LAMPORT_MAX`] in steps of this size takes 2^21 messages.
pub const LAMPORT_LEAD: u64 = 1 << 32;

/// What a message says. New kinds are appended at the end (postcard encodes the variant
/// index); a kind this version does not know decodes as `None` and is skipped in views.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A chat message.
    Text {
        /// The text, UTF-8.
        text: String,
    },
    /// The writer's display name from now on.
    Profile {
        /// The name.
        display_name: String,
    },
    /// A shared file: its chunks replicate on demand (see `crate::files`).
    File {
        /// Random id; with the room's content key it derives the chunks' key.
        file_id: Key32,
        /// The file's name (no directories).
        name: String,
        /// Its size in bytes.
        size: u64,
        /// Its media type as the sender saw it (a claim: shown, never trusted).
        mime: String,
        /// Ids (BLAKE3 of the ciphertext) of its chunks, in order.
        chunks: Vec<ChunkId>,
    },
    /// A chat message that answers an earlier one and/or names members (mentions).
    Post {
        /// The text, UTF-8.
        text: String,
        /// The message it answers.
        reply_to: Option<MessageRef>,
        /// The members it names, by feed key (at most [`index::MENTIONS_MAX`] count).
        mentions: Vec<FeedKey>,
    },
    /// The author's new text for one of its own messages (others' edits are ignored).
    Edit {
        /// The message edited.
        target: MessageRef,
        /// Its text from now on.
        text: String,
    },
    /// The author takes one of its own messages back: its text is no longer shown.
    Delete {
        /// The message deleted.
        target: MessageRef,
    },
    /// A reaction to a message, or (`on: false`) its withdrawal.
    React {
        /// The message reacted to.
        target: MessageRef,
        /// An emoji (at most [`index::EMOJI_MAX_BYTES`]).
        emoji: String,
        /// Added (true) or taken back (false).
        on: bool,
    },
    /// The room moves to a new epoch without `removed`: a fresh room secret, sealed to
    /// each remaining member's writer key in this room (`keys::seal`). Whoever holds one
    /// of the seals joins the new room; the removed members hold none. See
    /// `docs/PROTOCOL.md`, "Removing members".
    Rotate {
        /// The members removed, by feed key (at most [`ROTATE_REMOVED_MAX`]).
        removed: Vec<FeedKey>,
        /// The newest signed head the remover held of each removed member's feed (none for
        /// one it holds nothing of): what it covers stays in the room, every member refuses
        /// later entries, and members that stored some serve up to this head.
        kept: Vec<SignedHead>,
        /// The new secret, sealed to every other member (at most [`ROTATE_SEALED_MAX`]).
        sealed: Vec<crate::keys::seal::Sealed>,
        /// The remover's writer key in the new room: its admin, the only member there who
        /// may remove members in turn.
        admin: FeedKey,
    },
    /// The room's admin (the one bound into its keys) names `member` an admin too, who
    /// may then remove members; or (`admin: false`) takes that back. Written by anyone
    /// else, it counts for nothing.
    Admin {
        /// The member, by feed key.
        member: FeedKey,
        /// Named (true) or no longer (false).
        admin: bool,
    },
    /// The writer is one of a person's devices: the chain person → device → this writer
    /// (`keys::device`). Counts only in the feed of the writer it names.
    Device {
        /// The proof.
        proof: crate::keys::device::DeviceProof,
    },
    /// In a link room (`devices.link`): a new device asks to be linked. `link` is the
    /// device key's signature over the link room and this writer, as in a `Device` proof.
    LinkAsk {
        /// The device key (its node identity).
        device: Key32,
        /// The device's signature over the link room and the asking writer.
        #[serde(with = "serde_bytes")]
        link: Vec<u8>,
    },
    /// In a link room: the person's answer to `to`'s `LinkAsk`: its certificate, its
    /// display name and invites to the person's rooms (at most [`LINK_INVITES_MAX`]).
    LinkGrant {
        /// The asking writer.
        to: FeedKey,
        /// The person key.
        person: Key32,
        /// The person's certificate of the device.
        #[serde(with = "serde_bytes")]
        cert: Vec<u8>,
        /// The person's display name.
        display_name: Option<String>,
        /// Invites to the person's rooms.
        invites: Vec<String>,
    },
    /// The person says `device` is no longer theirs: its writers stop counting as theirs,
    /// and the room's admins remove them (`keys::device::unlink`).
    Unlink {
        /// The person key.
        person: Key32,
        /// The device unlinked.
        device: Key32,
        /// The person's signature.
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// The first entry of a member in a room made by a removal: it wrote as `from` in the
    /// room before (its writer key there signs this room and this writer,
    /// [`continuation_bytes`]), so members carry over what they said of `from`: nickname,
    /// verified mark, block, and (the new room's admin) the admin role.
    Continues {
        /// Our writer key in the room this one continues.
        from: FeedKey,
        /// Its signature.
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
}

/// Label of a `Continues` signature.
const CONTINUES_LABEL: &[u8] = b"peerlog/continues/v1";

/// What a `Continues` entry's old writer key signs: the new room and the new writer key.
pub fn continuation_bytes(room: &DiscoveryKey, writer: &FeedKey) -> Vec<u8> {
    [CONTINUES_LABEL, room.0.as_slice(), writer.0.as_slice()].concat()
}

/// Whether `signature` is `from`'s continuation into `room` as `writer`.
pub fn verify_continuation(room: &DiscoveryKey, writer: &FeedKey, from: &FeedKey, signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(from) else { return false };
    let Ok(sig) = <[u8; 64]>::try_from(signature) else { return false };
    key.verify_strict(&continuation_bytes(room, writer), &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
}

/// The most rooms one `LinkGrant` invites to (about 110 bytes each, under the 64 KiB a
/// message may take).
pub const LINK_INVITES_MAX: usize = 256;

/// The most members one rotation removes.
pub const ROTATE_REMOVED_MAX: usize = 64;
/// The most members one rotation seals the new secret to: 512 seals of about 115 bytes
/// keep the entry under 64 KiB, the size of the longest message.
pub const ROTATE_SEALED_MAX: usize = 512;

/// A message of a room, by its writer's feed and its place in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MessageRef {
    /// The writer's feed key.
    pub feed: FeedKey,
    /// Its seq in that feed.
    pub seq: u64,
}

impl MessageRef {
    /// Its id in the API: `<feed key hex>:<seq>`.
    pub fn id(&self) -> String {
        format!("{}:{}", hex::encode(self.feed), self.seq)
    }

    /// Parses an id made by [`MessageRef::id`].
    pub fn parse(id: &str) -> Option<Self> {
        let (feed, seq) = id.split_once(':')?;
        let feed = FeedKey::try_from(hex::decode(feed).ok()?.as_slice()).ok()?;
        Some(Self { feed, seq: seq.parse().ok()? })
    }
}

impl Body {
    /// The message a follow-up (edit, delete, reaction) is about.
    pub fn target(&self) -> Option<&MessageRef> {
        match self {
            Body::Edit { target, .. } | Body::Delete { target } | Body::React { target, .. } => Some(target),
            _ => None,
        }
    }

    /// The text a search finds it by: a message's text, a file's name, an edit's new text.
    pub fn searchable(&self) -> Option<&str> {
        match self {
            Body::Text { text } | Body::Post { text, .. } | Body::Edit { text, .. } => Some(text),
            Body::File { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The plaintext of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Lamport clock: greater than every message the writer had seen in the room.
    pub lamport: u64,
    /// The writer's wall clock, milliseconds since the Unix epoch (a claim, not a fact).
    pub time_ms: u64,
    /// The content; `None` for a kind this version does not know.
    pub body: Option<Body>,
}

impl Message {
    /// Serializes: the (lamport, time) header, then the body, so that the header of a
    /// newer kind still decodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = postcard::to_stdvec(&(self.lamport, self.time_ms)).unwrap_or_default();
        if let Some(body) = &self.body {
            out.extend(postcard::to_stdvec(body).unwrap_or_default());
        }
        out
    }

    /// Parses; `None` if even the header is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let ((lamport, time_ms), rest) = postcard::take_from_bytes::<(u64, u64)>(bytes).ok()?;
        Some(Self { lamport, time_ms, body: postcard::from_bytes(rest).ok() })
    }
}

/// BLAKE3 hash of an entry at `seq` of `feed_key`.
pub fn hash_entry(feed_key: &FeedKey, seq: u64, entry: &Entry) -> Key32 {
    let mut h = blake3::Hasher::new();
    h.update(&feed_key.0);
    h.update(&seq.to_be_bytes());
    h.update(&entry.prev);
    h.update(&entry.nonce);
    h.update(&entry.ciphertext);
    *h.finalize().as_bytes()
}

/// Signs the head of a feed at `seq` in the room of `discovery_key`.
pub fn sign_head(writer: &SigningKey, discovery_key: &DiscoveryKey, seq: u64, hash: Key32) -> SignedHead {
    let sig = writer.sign(&SignedHead::signed_bytes(discovery_key, seq, &hash));
    SignedHead { feed_key: FeedKey(writer.verifying_key().to_bytes()), seq, hash, signature: sig.to_bytes().to_vec() }
}

/// Checks a head's signature against its feed key, strictly: weak (small-order) keys and
/// non-canonical signatures are refused. With the lax check, the identity point as a key
/// and a signature of (identity, 0) "verify" for any message: anyone could sign any head
/// of such a feed. A head signed for another room does not verify.
pub fn verify_head(discovery_key: &DiscoveryKey, head: &SignedHead) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&head.feed_key) else { return false };
    let Ok(sig_bytes) = <[u8; 64]>::try_from(head.signature.as_slice()) else { return false };
    let sig = ed25519_dalek::Signature::from_bytes(&sig_bytes);
    key.verify_strict(&SignedHead::signed_bytes(discovery_key, head.seq, &head.hash), &sig).is_ok()
}

/// AES-256-GCM under `HKDF-SHA256(content_key, info = label || id)`: the per-writer key of
/// entries and the per-file key of chunks.
pub fn subkey_aead(content_key: &Key32, label: &[u8], id: &Key32) -> Aes256Gcm {
    let hk = Hkdf::<Sha256>::new(None, content_key);
    let mut info = label.to_vec();
    info.extend_from_slice(id);
    let mut key = [0u8; 32];
    hk.expand(&info, &mut key).expect("32 bytes is a valid HKDF-SHA256 output length");
    Aes256Gcm::new_from_slice(&key).expect("AES-256 takes a 32-byte key")
}

/// The AEAD of one writer's entries in one room.
#[derive(Clone)]
pub struct FeedCipher {
    feed_key: FeedKey,
    aead: Aes256Gcm,
}

/// An entry's ciphertext failed to authenticate.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("entry does not decrypt (wrong room key or tampered ciphertext)")]
pub struct DecryptError;

impl FeedCipher {
    /// Derives the per-writer key `HKDF(content_key, "peerlog/entry/v1" || feed_key)`.
    pub fn new(content_key: &Key32, feed_key: &FeedKey) -> Self {
        Self { feed_key: *feed_key, aead: subkey_aead(content_key, b"peerlog/entry/v1", feed_key) }
    }

    fn aad(&self, seq: u64) -> [u8; 40] {
        let mut aad = [0u8; 40];
        aad[..32].copy_from_slice(&self.feed_key.0);
        aad[32..].copy_from_slice(&seq.to_be_bytes());
        aad
    }

    /// Encrypts `plaintext` as entry `seq` with a fresh random nonce.
    pub fn seal(&self, seq: u64, prev: Key32, plaintext: &[u8]) -> Entry {
        let nonce: [u8; 12] = rand::random();
        let ciphertext = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad: &self.aad(seq) })
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        Entry { prev, nonce, ciphertext }
    }

    /// Decrypts entry `seq`.
    pub fn open(&self, seq: u64, entry: &Entry) -> Result<Vec<u8>, DecryptError> {
        self.aead
            .decrypt(Nonce::from_slice(&entry.nonce), Payload { msg: &entry.ciphertext, aad: &self.aad(seq) })
            .map_err(|_| DecryptError)
    }
}

/// A writer's fresh feed key pair.
pub fn new_writer() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_roundtrip_and_unknown_kind() {
        let m = Message { lamport: 3, time_ms: 99, body: Some(Body::Text { text: "hi".into() }) };
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        let mut unknown = postcard::to_stdvec(&(5u64, 6u64)).unwrap();
        unknown.extend([200, 1, 2]);
        let d = Message::decode(&unknown).unwrap();
        assert_eq!((d.lamport, d.time_ms, d.body), (5, 6, None));
    }

    #[test]
    fn seal_open_sign_verify() {
        let w = new_writer();
        let fk = FeedKey(w.verifying_key().to_bytes());
        let c = FeedCipher::new(&[1; 32], &fk);
        let e = c.seal(0, [0; 32], b"hello");
        assert_eq!(c.open(0, &e).unwrap(), b"hello");
        assert!(c.open(1, &e).is_err(), "seq is bound as AAD");
        assert!(FeedCipher::new(&[2; 32], &fk).open(0, &e).is_err());
        let room = DiscoveryKey([7u8; 32]);
        let head = sign_head(&w, &room, 0, hash_entry(&fk, 0, &e));
        assert!(verify_head(&room, &head));
        let mut bad = head.clone();
        bad.seq = 1;
        assert!(!verify_head(&room, &bad));
        assert!(!verify_head(&DiscoveryKey([8; 32]), &head), "a head binds its room: it does not verify in another");
    }

    #[test]
    fn a_head_of_a_weak_key_does_not_verify() {
        use ed25519_dalek::Verifier;
        // The identity point as the key, (R = identity, s = 0) as the signature: the lax
        // check accepts it for every message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut signature = vec![0u8; 64];
        signature[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).expect("the identity point decodes");
        let sig = ed25519_dalek::Signature::from_bytes(&signature.clone().try_into().unwrap());
        assert!(key.verify(b"anything", &sig).is_ok(), "the lax check accepts it (what this guards against)");
        let forged = SignedHead { feed_key: FeedKey(identity), seq: 7, hash: [9; 32], signature };
        assert!(!verify_head(&DiscoveryKey([7; 32]), &forged));
    }
}
