//! WebSocket API requests as clients send them, through the daemon's own dispatch: a real
//! daemon (private network, loopback, a temporary data dir) answers each input, and every
//! answer is a well-formed reply. Methods that cost seconds by design (Argon2 joins,
//! connectivity checks) are left out so that the fuzzer explores the rest.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use peerlog::api::fuzzing::Harness;

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| Harness::start().expect("a daemon for the fuzzer"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let reply = harness().request(text);
    let v: serde_json::Value = serde_json::from_str(&reply).expect("every reply is JSON");
    assert!(v.get("result").is_some() != v.get("error").is_some(), "exactly one of result and error: {reply}");
});
