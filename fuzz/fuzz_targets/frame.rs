//! Replication frames as a peer sends them: decoding never panics, and what decodes
//! encodes back to a frame that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerlog_proto::wire::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let again = Frame::decode(&frame.encode()).expect("a decoded frame re-encodes to a valid one");
        assert_eq!(format!("{frame:?}"), format!("{again:?}"));
    }
});
