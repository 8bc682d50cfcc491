//! peerlog: a peer-to-peer chat and file-sharing daemon. See `docs/ARCHITECTURE.md`.

pub mod config;
pub mod keys;
pub mod log;
