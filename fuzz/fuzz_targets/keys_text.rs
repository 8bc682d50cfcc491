//! Invites and seed capabilities as people paste them: parsing never panics, and what
//! parses prints back to the same keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlog::keys::{RoomSecret, SeedCapability};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(secret) = RoomSecret::from_invite(text) {
        let again = RoomSecret::from_invite(&secret.to_invite()).expect("a parsed invite prints to a valid one");
        assert_eq!(secret.keys().discovery_key, again.keys().discovery_key);
    }
    if let Ok(cap) = SeedCapability::parse(text) {
        let again = SeedCapability::parse(&cap.to_text()).expect("a parsed capability prints to a valid one");
        assert_eq!(cap.keys().discovery_key, again.keys().discovery_key);
    }
});
