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
    // No reply: a notification (or a batch of them), which JSON-RPC 2.0 leaves unanswered.
    let Some(reply) = harness().request(text) else { return };
    let v: serde_json::Value = serde_json::from_str(&reply).expect("every reply is JSON");
    // One reply, or a batch's array of them; each a JSON-RPC 2.0 response.
    let replies = v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]);
    assert!(!replies.is_empty(), "an empty batch reply: {reply}");
    for r in replies {
        assert!(r.get("result").is_some() != r.get("error").is_some(), "exactly one of result and error: {reply}");
        assert!(r["jsonrpc"] == "2.0" && r.get("id").is_some(), "not a JSON-RPC 2.0 response: {reply}");
    }
});
