//! peerlog wire formats, with no I/O: the replication frames spoken over
//! `/peerlog/replicate/3` ([`wire`]) and the local WebSocket API envelope ([`api`]).
//!
//! Both are contracts between independently upgraded programs. A breaking change to
//! [`wire`] gets a new protocol name (`/peerlog/replicate/3`); [`api`] only grows
//! (new methods, new optional params, new result fields).

pub mod api;
pub mod wire;
