//! peerlog: a peer-to-peer chat and file-sharing daemon. See `docs/ARCHITECTURE.md`.

pub mod api;
pub mod backup;
pub mod bench;
pub mod client;
pub mod config;
pub mod daemon;
pub mod disk;
pub mod files;
pub mod ids;
pub mod keys;
pub mod log;
pub mod metrics;
pub mod node;
pub mod replicate;
pub mod rooms;
pub mod service;
pub mod tasks;

pub use config::Config;
pub use daemon::Daemon;
pub use service::Service;
