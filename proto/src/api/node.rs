//! `node.*`: this daemon's network state and connectivity checks.

use serde::{Deserialize, Serialize};

use super::{method, NoParams};

/// How a connection reaches a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    /// Plain connection, one side dialed the other.
    Direct,
    /// Direct connection made by DCUtR hole punching.
    Holepunched,
    /// Through a circuit relay.
    Relayed,
}

/// One connectivity check of `node.doctor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Check {
    /// What was checked: `bootstrap`, `dht`, `public_dht`, `reachability`, `relay`, `holepunch`.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when it passed).
    pub advice: String,
}

/// `node.doctor` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DoctorResult {
    /// Every check passed.
    pub ok: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

method!(
    /// `node.doctor`: probes what keeps peers away, with advice.
    Doctor, "node.doctor", NoParams => DoctorResult;
    "probes what keeps peers away, with advice"
);

/// `node.info` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeInfo {
    /// Our PeerId.
    pub peer_id: String,
    /// Where we listen.
    pub listen_addrs: Vec<String>,
    /// Addresses others can reach us at (confirmed, declared or relayed).
    pub external_addrs: Vec<String>,
    /// AutoNAT's verdict.
    pub nat_status: String,
    /// Relays we hold a reservation on.
    pub relays: Vec<String>,
    /// `public`, `relayed`, `lan_only`, ...
    pub reachability: String,
    /// `client` or `server`.
    pub dht_mode: String,
    /// Peers in the peerlog DHT's routing table.
    pub dht_peers: usize,
    /// `public` or `private`.
    pub network: String,
    /// Peers in the public DHT's routing table (public network only).
    pub public_dht_peers: Option<usize>,
    /// Reservations on peerlog relays.
    pub peerlog_relays: Vec<String>,
    /// Hole punches that succeeded.
    pub holepunch_ok: u64,
    /// Hole punches that failed.
    pub holepunch_failed: u64,
    /// Configured bootstrap peers.
    pub bootstrap_peers: usize,
    /// Of them, connected.
    pub bootstrap_connected: usize,
    /// What keeps peers away, in words.
    pub warnings: Vec<String>,
    /// Peers connected.
    pub connected_peers: usize,
    /// Rooms joined.
    pub rooms: usize,
    /// Bytes of the database and file chunks.
    pub storage_bytes: u64,
    /// Our display name, if set.
    pub display_name: Option<String>,
    /// The daemon's version.
    pub version: String,
    /// [`super::API_VERSION`].
    pub api_version: u32,
}

method!(
    /// `node.info`: this daemon's network state.
    Info, "node.info", NoParams => NodeInfo;
    "this daemon's network state"
);

/// `token.rotate` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TokenRotated {
    /// Always true.
    pub rotated: bool,
    /// Where the new token is (`<data>/api-token`).
    pub path: String,
}

method!(
    /// `token.rotate`: a new API token; browser sessions and scripts using the old one end.
    RotateToken, "token.rotate", NoParams => TokenRotated;
    "a new API token; browser sessions and scripts using the old one end (the CLI credential only)"
);

/// `backup.create` params.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BackupParams {
    /// What the backup is sealed with (at least 8 characters; never stored).
    pub passphrase: String,
}

/// `backup.create` result.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BackupResult {
    /// The sealed backup, base64 (see `peerlog restore`).
    pub backup: String,
    /// Rooms in it.
    pub rooms: usize,
}

method!(
    /// `backup.create`: identity, room secrets, contacts and blocks, sealed with a passphrase.
    CreateBackup, "backup.create", BackupParams => BackupResult;
    "the node's identity, room secrets, contacts and blocks, sealed with a passphrase (never the logs; the CLI credential only)"
);
