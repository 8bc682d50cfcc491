//! One person, several devices. A person key (ed25519, `<data>/person.key`, on the device
//! that first linked another) certifies device keys; a device key is the daemon's node
//! identity (its PeerId's ed25519 key); and in each room a device signs its writer key
//! there. The chain person → device → writer, written into the writer's own feed
//! (`Body::Device`), lets every member show a person's writers as one person; nobody can
//! copy it into another feed (the device signed the room and the writer), and nobody
//! can claim a device without its key (the person signed the device). A person unlinks a
//! device by signing that (`Body::Unlink`); its writers are then removed from each room
//! like a member (`docs/PROTOCOL.md`, "Several devices").

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use peerlog_proto::wire::{DiscoveryKey, FeedKey, Key32};
use serde::{Deserialize, Serialize};

/// Label of a person's certificate of a device.
const CERT_LABEL: &[u8] = b"peerlog/device-cert/v1";
/// Label of a device's signature over its writer key in a room.
const WRITER_LABEL: &[u8] = b"peerlog/device-writer/v1";
/// Label of a person's statement that a device is no longer theirs.
const UNLINK_LABEL: &[u8] = b"peerlog/device-unlink/v1";

/// The proof that a room's writer is one of a person's devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProof {
    /// The person's key.
    pub person: Key32,
    /// The device's key (its node identity).
    pub device: Key32,
    /// The person's signature over the device key.
    #[serde(with = "serde_bytes")]
    pub cert: Vec<u8>,
    /// The device's signature over the room and the writer key.
    #[serde(with = "serde_bytes")]
    pub link: Vec<u8>,
}

impl DeviceProof {
    /// Whether the chain holds for `writer` in `room`.
    pub fn verify(&self, room: &DiscoveryKey, writer: &FeedKey) -> bool {
        verify_cert(&self.person, &self.device, &self.cert) && verify_writer(&self.device, room, writer, &self.link)
    }
}

fn cert_bytes(device: &Key32) -> Vec<u8> {
    [CERT_LABEL, device.as_slice()].concat()
}

fn writer_bytes(room: &DiscoveryKey, writer: &FeedKey) -> Vec<u8> {
    [WRITER_LABEL, room.0.as_slice(), writer.0.as_slice()].concat()
}

fn unlink_bytes(device: &Key32) -> Vec<u8> {
    [UNLINK_LABEL, device.as_slice()].concat()
}

fn verify(key: &Key32, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else { return false };
    let Ok(sig) = <[u8; 64]>::try_from(sig) else { return false };
    key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&sig)).is_ok()
}

/// Whether `cert` is `person`'s certificate of `device`.
pub fn verify_cert(person: &Key32, device: &Key32, cert: &[u8]) -> bool {
    verify(person, &cert_bytes(device), cert)
}

/// Whether `link` is `device`'s signature over `writer` in `room`.
pub fn verify_writer(device: &Key32, room: &DiscoveryKey, writer: &FeedKey, link: &[u8]) -> bool {
    verify(device, &writer_bytes(room, writer), link)
}

/// Whether `signature` is `person`'s statement that `device` is no longer theirs.
pub fn verify_unlink(person: &Key32, device: &Key32, signature: &[u8]) -> bool {
    verify(person, &unlink_bytes(device), signature)
}

/// The person key's public half.
pub fn public(key: &SigningKey) -> Key32 {
    key.verifying_key().to_bytes()
}

/// The person's certificate of `device`.
pub fn certify(person: &SigningKey, device: &Key32) -> Vec<u8> {
    person.sign(&cert_bytes(device)).to_bytes().to_vec()
}

/// The person's statement that `device` is no longer theirs.
pub fn unlink(person: &SigningKey, device: &Key32) -> Vec<u8> {
    person.sign(&unlink_bytes(device)).to_bytes().to_vec()
}

/// The device's signature over its writer key in a room.
pub fn sign_writer(device: &SigningKey, room: &DiscoveryKey, writer: &FeedKey) -> Vec<u8> {
    device.sign(&writer_bytes(room, writer)).to_bytes().to_vec()
}

/// The device key of a node: its libp2p identity's ed25519 key (the PeerId names it).
pub fn device_key(identity: &libp2p::identity::Keypair) -> Option<SigningKey> {
    let ed = identity.clone().try_into_ed25519().ok()?;
    let secret: [u8; 32] = ed.secret().as_ref().try_into().ok()?;
    Some(SigningKey::from_bytes(&secret))
}

/// The PeerId of a device key.
pub fn peer_id(device: &Key32) -> Option<libp2p::PeerId> {
    let key = libp2p::identity::ed25519::PublicKey::try_from_bytes(device).ok()?;
    Some(libp2p::identity::PublicKey::from(key).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        crate::log::new_writer()
    }

    #[test]
    fn the_chain_binds_person_device_room_and_writer() {
        let (person, device, writer, other) = (key(), key(), key(), key());
        let room = DiscoveryKey([7; 32]);
        let w = FeedKey(public(&writer));
        let proof = DeviceProof {
            person: public(&person),
            device: public(&device),
            cert: certify(&person, &public(&device)),
            link: sign_writer(&device, &room, &w),
        };
        assert!(proof.verify(&room, &w));
        // Copied into another feed, or another room: no.
        assert!(!proof.verify(&room, &FeedKey(public(&other))));
        assert!(!proof.verify(&DiscoveryKey([8; 32]), &w));
        // A writer claiming a device without its key: the link is the device's.
        let stolen = DeviceProof { link: sign_writer(&other, &room, &w), ..proof.clone() };
        assert!(!stolen.verify(&room, &w));
        assert!(verify_unlink(&public(&person), &public(&device), &unlink(&person, &public(&device))));
        assert!(!verify_unlink(&public(&other), &public(&device), &unlink(&person, &public(&device))));
    }

    #[test]
    fn a_node_identity_is_its_device_key() {
        let identity = libp2p::identity::Keypair::generate_ed25519();
        let device = device_key(&identity).unwrap();
        assert_eq!(peer_id(&public(&device)), Some(identity.public().to_peer_id()));
    }
}
