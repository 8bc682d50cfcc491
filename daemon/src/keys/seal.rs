//! Sealing a room secret to one member: when a room moves to a new epoch (a member was
//! removed), its new secret reaches each remaining member encrypted to that member's writer
//! key in the room, inside the rotating member's signed log entry. HPKE (RFC 9180, base
//! mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305); the recipient's
//! X25519 key is its ed25519 writer key mapped to Montgomery form (the secret side is the
//! scalar of the writer key, as libsodium's `crypto_sign_ed25519_sk_to_curve25519`), so no
//! member has to publish another key. The `info` binds the sealed secret to the room it is
//! sent in and to its recipient: it cannot be replayed to another member or another room.

use ed25519_dalek::{SigningKey, VerifyingKey};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
use peerlog_proto::wire::{DiscoveryKey, FeedKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::RoomSecret;

/// Label of the HPKE `info` (with the room's discovery key and the recipient's feed key).
const SEAL_LABEL: &[u8] = b"peerlog/epoch/v1";

type KemKey = <X25519HkdfSha256 as Kem>::PublicKey;
type KemSecret = <X25519HkdfSha256 as Kem>::PrivateKey;
type Encapped = <X25519HkdfSha256 as Kem>::EncappedKey;

/// A room secret sealed to one member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The recipient: its writer (feed) key in the room the secret is sent in.
    pub to: FeedKey,
    /// The HPKE encapsulated key (X25519: 32 bytes).
    #[serde(with = "serde_bytes")]
    pub enc: Vec<u8>,
    /// The secret, sealed (32 bytes and a 16-byte tag).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

/// Why a seal or an open failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The recipient's key is not a valid ed25519 point.
    #[error("not a valid writer key")]
    BadKey,
    /// The sealed secret is not addressed to this key, or was altered.
    #[error("the sealed secret does not open with this key")]
    NotOurs,
}

fn info(room: &DiscoveryKey, to: &FeedKey) -> Vec<u8> {
    [SEAL_LABEL, &room.0, &to.0].concat()
}

/// Seals `secret` to the member whose writer key in `room` is `to`.
pub fn seal(room: &DiscoveryKey, to: &FeedKey, secret: &RoomSecret) -> Result<Sealed, SealError> {
    let ed = VerifyingKey::from_bytes(&to.0).map_err(|_| SealError::BadKey)?;
    let public = KemKey::from_bytes(ed.to_montgomery().as_bytes()).map_err(|_| SealError::BadKey)?;
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &public,
        &info(room, to),
        &secret.0,
        &[],
        &mut <rand_chacha::ChaCha20Rng as rand_chacha::rand_core::SeedableRng>::from_seed(rand::random()),
    )
    .map_err(|_| SealError::BadKey)?;
    Ok(Sealed { to: *to, enc: enc.to_bytes().to_vec(), ciphertext })
}

/// Opens a secret sealed to our writer key `writer` in `room`.
pub fn open(room: &DiscoveryKey, writer: &SigningKey, sealed: &Sealed) -> Result<RoomSecret, SealError> {
    let ours = FeedKey(writer.verifying_key().to_bytes());
    if sealed.to != ours {
        return Err(SealError::NotOurs);
    }
    let mut scalar = writer.to_scalar_bytes();
    let secret = KemSecret::from_bytes(&scalar).map_err(|_| SealError::BadKey);
    scalar.zeroize();
    let enc = Encapped::from_bytes(&sealed.enc).map_err(|_| SealError::NotOurs)?;
    let mut plain = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &secret?,
        &enc,
        &info(room, &ours),
        &sealed.ciphertext,
        &[],
    )
    .map_err(|_| SealError::NotOurs)?;
    let bytes: Result<[u8; 32], _> = plain.as_slice().try_into();
    plain.zeroize();
    Ok(RoomSecret(bytes.map_err(|_| SealError::NotOurs)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_member_in_its_room() {
        let room = DiscoveryKey([7; 32]);
        let (bob, carol) = (crate::log::new_writer(), crate::log::new_writer());
        let bob_key = FeedKey(bob.verifying_key().to_bytes());
        let secret = RoomSecret::random();
        let sealed = seal(&room, &bob_key, &secret).unwrap();
        assert_eq!(open(&room, &bob, &sealed).unwrap(), secret);
        assert_eq!((sealed.enc.len(), sealed.ciphertext.len()), (32, 48));
        assert_ne!(sealed.ciphertext[..32], secret.0[..], "sealed, not copied");
        // Another member cannot open it, even claiming to be its recipient.
        assert!(matches!(open(&room, &carol, &sealed), Err(SealError::NotOurs)));
        let claimed = Sealed { to: FeedKey(carol.verifying_key().to_bytes()), ..sealed.clone() };
        assert!(matches!(open(&room, &carol, &claimed), Err(SealError::NotOurs)));
        // Bound to the room it was sent in, and to its bytes.
        assert!(matches!(open(&DiscoveryKey([8; 32]), &bob, &sealed), Err(SealError::NotOurs)));
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(matches!(open(&room, &bob, &altered), Err(SealError::NotOurs)));
        // Each seal is fresh: a new ephemeral key every time.
        assert_ne!(seal(&room, &bob_key, &secret).unwrap().enc, sealed.enc);
    }
}
