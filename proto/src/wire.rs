//! Replication frames of `/peerlog/replicate/4` (and of version 3, which lacks `Alive`).
//!
//! Each frame travels as one length-delimited record (a 4-byte big-endian length, then
//! the [postcard] encoding of [`Frame`]). The framing itself lives with the I/O in the
//! daemon; this module only defines what is inside and how it is encoded.
//!
//! Session: both sides send [`Frame::Hello`], then [`Frame::Auth`]. Nothing else is
//! accepted before the peer's `Auth` verified. Then [`Frame::Have`] both ways (and again
//! after every local append or newly stored data), [`Frame::Want`] for missing ranges and
//! [`Frame::Data`] in answer. See `docs/PROTOCOL.md` for the rules.

use serde::{Deserialize, Serialize};

/// The libp2p protocol name of this version of the replication protocol.
pub const PROTOCOL: &str = "/peerlog/replicate/4";
/// The previous version's name: the same frames but [`Frame::Alive`], which a version 3
/// node cannot decode. Still spoken, without `Alive`, with nodes that know no newer one.
pub const PROTOCOL_V3: &str = "/peerlog/replicate/3";

/// Domain separation label of the membership proof (`Auth.mac`).
pub const AUTH_LABEL: &[u8] = b"peerlog/auth/v1";
/// Domain label of the room tag in `Hello`.
pub const HELLO_LABEL: &[u8] = b"peerlog/hello/v1";
/// Domain separation label of a signed head (v2: the head binds the room).
pub const HEAD_LABEL: &[u8] = b"peerlog/head/v2";
/// Domain separation label of a writer proof (`Frame::Writer`).
pub const WRITER_LABEL: &[u8] = b"peerlog/writer/v1";
/// Domain separation label of a presence record (`Frame::Alive`).
pub const ALIVE_LABEL: &[u8] = b"peerlog/alive/v1";

/// The bytes a writer signs to say that it writes from `peer_id` in the room of
/// `discovery_key`: `WRITER_LABEL || discovery_key || len16(peer_id) || peer_id`.
pub fn writer_proof_bytes(discovery_key: &DiscoveryKey, peer_id: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(WRITER_LABEL.len() + 32 + 2 + peer_id.len());
    m.extend_from_slice(WRITER_LABEL);
    m.extend_from_slice(&discovery_key.0);
    m.extend_from_slice(&(peer_id.len() as u16).to_be_bytes());
    m.extend_from_slice(peer_id);
    m
}

/// A 32-byte key or hash.
pub type Key32 = [u8; 32];

/// Declares a kind of 32-byte value: on the wire the 32 bytes as they are (serde
/// transparent), in code a type of its own, so that one kind cannot be passed for another.
macro_rules! key_kind {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Key32);

        impl std::ops::Deref for $name {
            type Target = Key32;
            fn deref(&self) -> &Key32 {
                &self.0
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl From<Key32> for $name {
            fn from(bytes: Key32) -> Self {
                Self(bytes)
            }
        }

        impl TryFrom<&[u8]> for $name {
            type Error = std::array::TryFromSliceError;
            fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
                Ok(Self(bytes.try_into()?))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        /// Lowercase hex of the first 8 bytes (the full value: `{:#}`).
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let n = if f.alternate() { 32 } else { 8 };
                self.0[..n].iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    };
}

key_kind!(
    /// A room's public identity on the wire and on the DHT, derived from its secret.
    DiscoveryKey
);
key_kind!(
    /// A writer's ed25519 public key: the identity of its feed.
    FeedKey
);
key_kind!(
    /// A file chunk's id: the BLAKE3 hash of its ciphertext.
    ChunkId
);

/// One entry of a writer's feed, as stored and as sent. `feed_key` and `seq` are not
/// repeated inside: they are the storage key, and in [`Frame::Data`] they follow from
/// the frame's `feed_key` and `start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// BLAKE3 hash of the previous entry of this feed; all zero for seq 0.
    pub prev: Key32,
    /// AES-256-GCM nonce, random per entry.
    pub nonce: [u8; 12],
    /// AES-256-GCM ciphertext (with tag) of a serialized message.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// A writer's signature over the hash of entry `seq` of its feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// The writer's ed25519 public key: the feed's identity.
    pub feed_key: FeedKey,
    /// Sequence number of the newest entry this head covers (length - 1).
    pub seq: u64,
    /// Hash of entry `seq`.
    pub hash: Key32,
    /// ed25519 signature by `feed_key` over `HEAD_LABEL || discovery_key || seq (BE) || hash`
    /// ([`SignedHead::signed_bytes`]): valid in one room only.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedHead {
    /// The bytes a writer signs for a head of its feed in the room of `discovery_key`.
    pub fn signed_bytes(discovery_key: &DiscoveryKey, seq: u64, hash: &Key32) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEAD_LABEL.len() + 32 + 8 + 32);
        m.extend_from_slice(HEAD_LABEL);
        m.extend_from_slice(&discovery_key.0);
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash);
        m
    }

    /// Number of entries this head covers.
    pub fn length(&self) -> u64 {
        self.seq + 1
    }
}

/// Reasons a session is refused or closed, sent before closing the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// This node is not in the room named by the Hello.
    UnknownRoom,
    /// The membership proof did not verify.
    BadAuth,
    /// A frame broke the protocol (out of order, over a limit, undecodable).
    ProtocolViolation,
    /// A session for this peer and room already exists.
    Duplicate,
    /// The room has all the sessions it takes here; try the peers of the `Peers` frame
    /// sent just before.
    Full,
}

/// One message of the replication protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Opens a session for one room.
    Hello {
        /// The room, blinded: `HMAC-SHA256(discovery_key, "peerlog/hello/v1" || nonce ||
        /// sender || receiver)` (see `docs/PROTOCOL.md`). A peer that is not in the room
        /// (a LAN neighbour that mDNS found, say) cannot tell which room this is.
        room_tag: Key32,
        /// Fresh random challenge for the peer's membership proof.
        nonce: Key32,
    },
    /// Membership proof: HMAC-SHA256 under the room's auth key, see `docs/PROTOCOL.md`.
    Auth {
        /// The MAC.
        mac: Key32,
    },
    /// The feeds the sender holds for this room, each with its newest signed head.
    Have {
        /// One head per feed.
        heads: Vec<SignedHead>,
        /// Bytes the sender stores of each feed (`bytes[i]` for `heads[i]`; may be shorter):
        /// an unverified estimate, for progress only.
        bytes: Vec<u64>,
    },
    /// Asks for entries `start..end` of a feed; the sender answers newest batch first.
    Want {
        /// Which feed.
        feed_key: FeedKey,
        /// First seq wanted.
        start: u64,
        /// One past the last seq wanted.
        end: u64,
    },
    /// Consecutive entries `start..start + entries.len()` of a feed.
    Data {
        /// Which feed.
        feed_key: FeedKey,
        /// Seq of `entries[0]`.
        start: u64,
        /// The entries, ascending.
        entries: Vec<Entry>,
        /// The signed head of the newest entry, when the sender has it (always on live
        /// pushes): lets the receiver verify the batch without a prior `Have`.
        head: Option<SignedHead>,
    },
    /// The sender has no entries left to send for a `Want` (it does not hold them).
    NoData {
        /// Which feed.
        feed_key: FeedKey,
        /// The seq below which (down to the Want's start) nothing more will come.
        below: u64,
    },
    /// The sender refuses or ends the session.
    Refuse {
        /// Why.
        reason: Refusal,
    },
    /// Peer exchange: other peers of this room the sender has a session with, and their
    /// addresses, so that a room stays connected without the DHT.
    Peers {
        /// The peers.
        peers: Vec<PeerAddrs>,
    },
    /// Asks for a file chunk by its id (BLAKE3 of its ciphertext), named in a `file`
    /// message of this room, from byte `offset` on (a part may have arrived already).
    /// Answered by [`Frame::Chunk`]s or [`Frame::NoChunk`].
    WantChunk {
        /// The chunk id.
        id: ChunkId,
        /// First byte wanted.
        offset: u32,
    },
    /// Bytes `offset..offset + bytes.len()` of a chunk's ciphertext of `total` bytes: the
    /// whole chunk in one frame on a direct connection, small parts over a relay. The
    /// receiver checks the assembled chunk against `id` before storing it.
    Chunk {
        /// The chunk id.
        id: ChunkId,
        /// Where these bytes start in the chunk.
        offset: u32,
        /// The chunk's size (at most the chunk size + 16 bytes of tag).
        total: u32,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The sender does not hold this chunk (or not for this room).
    NoChunk {
        /// The chunk id.
        id: ChunkId,
    },
    /// Which writer (feed key) the sender is in this room, signed by that key over
    /// [`writer_proof_bytes`] with the sender's PeerId: lets people see who is online.
    Writer {
        /// The sender's feed key in this room.
        feed_key: FeedKey,
        /// ed25519 signature by `feed_key`.
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// Presence (version 4): members' signed records of being online, passed on over the
    /// room's sessions so that a member shows as online to those it has no session with.
    Alive {
        /// The records, at most one per member.
        records: Vec<Alive>,
    },
}

/// A member's signed "online at `at_ms`" in one room (see [`Frame::Alive`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// The member's feed key in the room.
    pub feed_key: FeedKey,
    /// When it was online: milliseconds since the Unix epoch, by its own clock.
    pub at_ms: u64,
    /// ed25519 signature by `feed_key` over [`Alive::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl Alive {
    /// The bytes a member signs to say it is online in the room of `discovery_key`:
    /// `ALIVE_LABEL || discovery_key || at_ms (BE)`.
    pub fn signed_bytes(discovery_key: &DiscoveryKey, at_ms: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(ALIVE_LABEL.len() + 32 + 8);
        m.extend_from_slice(ALIVE_LABEL);
        m.extend_from_slice(&discovery_key.0);
        m.extend_from_slice(&at_ms.to_be_bytes());
        m
    }
}

/// A peer and where it may be reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddrs {
    /// The libp2p PeerId, in its binary form.
    #[serde(with = "serde_bytes")]
    pub peer_id: Vec<u8>,
    /// Multiaddrs, in their binary form.
    pub addrs: Vec<serde_bytes::ByteBuf>,
}

/// Errors decoding a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes are not a valid frame of this protocol version.
    #[error("undecodable replication frame: {0}")]
    Invalid(#[from] postcard::Error),
}

impl Frame {
    /// Encodes the frame (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data structs into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a frame (without the length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_garbage_is_an_error() {
        let f = Frame::Data {
            feed_key: FeedKey([7; 32]),
            start: 42,
            entries: vec![Entry { prev: [1; 32], nonce: [2; 12], ciphertext: vec![3; 100] }],
            head: None,
        };
        let bytes = f.encode();
        assert_eq!(Frame::decode(&bytes).unwrap(), f);
        assert!(Frame::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Frame::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn key_kinds_travel_as_their_32_bytes() {
        // Typed keys changed nothing on the wire: a variant tag, then the key's bytes as
        // they are (postcard writes a fixed array without a length).
        let want = Frame::Want { feed_key: FeedKey([7; 32]), start: 1, end: 2 }.encode();
        assert_eq!(want[1..33], [7; 32]);
        assert_eq!(want.len(), 35);
        let chunk = Frame::NoChunk { id: ChunkId([9; 32]) }.encode();
        assert_eq!(chunk[1..], [9; 32]);
        assert_eq!(format!("{}", FeedKey([0xab; 32])), "abababababababab");
        assert_eq!(format!("{:#}", DiscoveryKey([1; 32])).len(), 64);
    }
}
