//! Layered configuration: defaults < TOML file < `PEERLOG_*` environment < command-line
//! flags (applied by the binary). Every option is documented in `config/peerlog.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// An environment variable has a value that does not parse.
    #[error("invalid value in environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Why.
        message: String,
    },
    /// No data directory was given and none can be derived (no `$HOME`).
    #[error("no data directory: set --data-dir, PEERLOG_DATA_DIR or $XDG_DATA_HOME")]
    NoDataDir,
}

/// How the node takes part in the Kademlia DHT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhtMode {
    /// Client until an external address is confirmed (AutoNAT) or declared, then server.
    #[default]
    Auto,
    /// Always answer DHT queries (bootstrap nodes, nodes on a LAN or test net).
    Server,
    /// Never answer DHT queries.
    Client,
}

impl std::str::FromStr for DhtMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "server" => Ok(Self::Server),
            "client" => Ok(Self::Client),
            other => Err(format!("expected auto, server or client, got {other:?}")),
        }
    }
}

/// Which network the node takes part in beyond its configured bootstrap nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Also join the public libp2p DHT (Amino, `/ipfs/kad/1.0.0`) as a client, through
    /// `public_bootstrap`: rooms are found from anywhere with no configuration.
    #[default]
    Public,
    /// Only the configured bootstrap nodes, mDNS and room peers: no packet to the public DHT.
    Private,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Self::Public),
            "private" => Ok(Self::Private),
            other => Err(format!("expected public or private, got {other:?}")),
        }
    }
}

/// The well-known bootstrap peers of the public libp2p DHT (as kubo ships them): each
/// `/dnsaddr` name resolves, through its `_dnsaddr` TXT records, to the peer's addresses.
pub const PUBLIC_BOOTSTRAP: [&str; 6] = [
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/dnsaddr/va1.bootstrap.libp2p.io/p2p/12D3KooWKnDdG3iXw9eTFijk3EWSunZcFi54Zka4wmtqtt6rPxc8",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
];

/// Whether the node serves circuit relay v2 reservations to NATed peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayServerMode {
    /// Serve while the node has a direct external address, declared or confirmed by AutoNAT.
    #[default]
    Auto,
    /// The same, and warn at start if none is declared (a relay cannot serve without one).
    On,
    /// Never serve.
    Off,
}

impl std::str::FromStr for RelayServerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("expected auto, on or off, got {other:?}")),
        }
    }
}

/// Size and count limits on everything that comes from a peer or a client.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message a client may send, in bytes.
    pub ws_message_bytes: usize,
    /// Largest replication frame a peer may send, in bytes.
    pub frame_bytes: usize,
    /// Largest message text, in bytes of UTF-8.
    pub message_bytes: usize,
    /// Most entries in one `Data` frame this node sends.
    pub batch_entries: usize,
    /// Largest file that may be sent or fetched, in bytes.
    pub file_bytes: u64,
    /// Most concurrent requests per WebSocket client.
    pub requests_per_client: usize,
    /// Most replication sessions (peer, room) at once.
    pub sessions: usize,
    /// Sessions a room keeps: more room peers are dialed while it has fewer. A room of
    /// up to this many other members is a full mesh; in a bigger one the others are known
    /// (a passive list) and reached through the room's peers.
    pub room_sessions: usize,
    /// Most sessions of one room: inbound ones past it are refused, with other room peers
    /// to try instead.
    pub room_sessions_max: usize,
    /// Most established libp2p connections.
    pub connections: u32,
    /// Most established connections per peer.
    pub connections_per_peer: u32,
    /// Most connections being set up at once, each way.
    pub pending_connections: u32,
    /// As a relay: bytes one relayed circuit may carry before it is closed.
    pub relay_circuit_bytes: u64,
    /// As a relay: seconds one relayed circuit may last.
    pub relay_circuit_secs: u64,
    /// As a relay: circuits relayed at once, in all.
    pub relay_circuits: usize,
    /// As a relay: circuits relayed at once for one peer.
    pub relay_circuits_per_peer: usize,
    /// MiB that must stay free on the data dir's disk: below it, new messages, entries
    /// and file chunks are refused (until space is freed) rather than filling the disk.
    pub disk_reserve_mb: u64,
    /// Most entries stored of one writer (other than us) in one room.
    pub writer_entries: u64,
    /// Most bytes stored of one writer (other than us) in one room.
    pub writer_bytes: u64,
    /// Most writers (feeds) stored in one room.
    pub room_writers: usize,
    /// Bytes of entries per second one peer may send us to verify and store, once it has
    /// used [`Limits::peer_burst_bytes`]; past it we stop reading from the peer for a while
    /// (nothing is dropped). 0: no limit.
    pub peer_bytes_per_s: u64,
    /// Bytes of entries one peer may send at full speed before `peer_bytes_per_s` applies.
    pub peer_burst_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ws_message_bytes: 1 << 20,
            frame_bytes: 4 << 20,
            message_bytes: 64 << 10,
            batch_entries: 512,
            file_bytes: 1 << 30,
            requests_per_client: 32,
            sessions: 1024,
            room_sessions: 12,
            room_sessions_max: 16,
            connections: 512,
            connections_per_peer: 4,
            pending_connections: 128,
            relay_circuit_bytes: 64 << 20,
            relay_circuit_secs: 600,
            relay_circuits: 32,
            relay_circuits_per_peer: 4,
            disk_reserve_mb: 64,
            writer_entries: 1_000_000,
            writer_bytes: 256 << 20,
            room_writers: 1024,
            peer_bytes_per_s: 32 << 20,
            peer_burst_bytes: 512 << 20,
        }
    }
}

/// The daemon's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where identity, token, rooms and the sled database live.
    pub data_dir: Option<PathBuf>,
    /// Address of the local API and web UI. Keep it on loopback.
    pub api_listen: SocketAddr,
    /// Allow `api_listen` beyond loopback (refused at start otherwise).
    pub insecure_remote_api: bool,
    /// Let the data dir's group read the API token and port (`api-token`, `api-port`: mode
    /// 0640, the data dir 0750; everything else stays the daemon's alone), so that the
    /// members of a system service's group can open its web UI (`peerlog open`). Off: 0600
    /// and 0700.
    pub share_api_token: bool,
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers (`/ip4/../tcp/../p2p/PEERID`).
    pub bootstrap: Vec<Multiaddr>,
    /// Public or private network (see [`Network`]).
    pub network: Network,
    /// Bootstrap peers of the public libp2p DHT, used with `network = "public"`.
    pub public_bootstrap: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Announce private-network listen addresses (LAN, VPN; loopback when listening on
    /// nothing else) in DHT records, so that peers on those networks can dial us.
    pub announce_private_addrs: bool,
    /// DHT participation.
    pub dht_mode: DhtMode,
    /// Serving relay reservations.
    pub relay_server: RelayServerMode,
    /// Addresses this node is reachable at from the internet (public nodes, relays).
    pub external_addresses: Vec<Multiaddr>,
    /// Seconds between re-announcing and re-querying each room on the DHT, at the slowest
    /// (the first rounds after a join come faster, doubling up to this).
    pub discovery_interval_secs: u64,
    /// Lifetime of our provider records on other nodes, in seconds.
    pub provider_ttl_secs: u64,
    /// Memory sled may use to cache the database, in MiB.
    pub cache_mb: u64,
    /// Input limits.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7777)),
            insecure_remote_api: false,
            share_api_token: false,
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().expect("valid literal multiaddr"),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().expect("valid literal multiaddr"),
            ],
            bootstrap: Vec::new(),
            network: Network::Public,
            public_bootstrap: PUBLIC_BOOTSTRAP.iter().map(|a| a.parse().expect("valid literal multiaddr")).collect(),
            mdns: true,
            announce_private_addrs: true,
            dht_mode: DhtMode::Auto,
            relay_server: RelayServerMode::Auto,
            external_addresses: Vec::new(),
            discovery_interval_secs: 60,
            provider_ttl_secs: 600,
            cache_mb: 16,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Defaults, then the TOML file (the given one, else `$XDG_CONFIG_HOME/peerlog/config.toml`
    /// if it exists), then the `PEERLOG_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let default_file = config_home().map(|d| d.join("peerlog/config.toml"));
        let path = match file {
            Some(p) => Some(p.to_path_buf()),
            None => default_file.filter(|p| p.exists()),
        };
        let mut config = match path {
            Some(path) => Self::from_file(&path)?,
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Applies `PEERLOG_*` variables read through `get`.
    pub fn apply_env(&mut self, get: impl Fn(&'static str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim().parse().map_err(|e: T::Err| ConfigError::Env { name, message: e.to_string() })
        }
        fn list(name: &'static str, v: &str) -> Result<Vec<Multiaddr>, ConfigError> {
            v.split(',').filter(|s| !s.trim().is_empty()).map(|s| parse(name, s)).collect()
        }
        if let Some(v) = get("PEERLOG_DATA_DIR") {
            self.data_dir = Some(v.into());
        }
        if let Some(v) = get("PEERLOG_API_LISTEN") {
            self.api_listen = parse("PEERLOG_API_LISTEN", &v)?;
        }
        if let Some(v) = get("PEERLOG_INSECURE_REMOTE_API") {
            self.insecure_remote_api = parse("PEERLOG_INSECURE_REMOTE_API", &v)?;
        }
        if let Some(v) = get("PEERLOG_SHARE_API_TOKEN") {
            self.share_api_token = parse("PEERLOG_SHARE_API_TOKEN", &v)?;
        }
        if let Some(v) = get("PEERLOG_LISTEN") {
            self.listen = list("PEERLOG_LISTEN", &v)?;
        }
        if let Some(v) = get("PEERLOG_BOOTSTRAP") {
            self.bootstrap = list("PEERLOG_BOOTSTRAP", &v)?;
        }
        if let Some(v) = get("PEERLOG_NETWORK") {
            self.network = parse("PEERLOG_NETWORK", &v)?;
        }
        if let Some(v) = get("PEERLOG_PUBLIC_BOOTSTRAP") {
            self.public_bootstrap = list("PEERLOG_PUBLIC_BOOTSTRAP", &v)?;
        }
        if let Some(v) = get("PEERLOG_MDNS") {
            self.mdns = parse("PEERLOG_MDNS", &v)?;
        }
        if let Some(v) = get("PEERLOG_ANNOUNCE_PRIVATE_ADDRS") {
            self.announce_private_addrs = parse("PEERLOG_ANNOUNCE_PRIVATE_ADDRS", &v)?;
        }
        if let Some(v) = get("PEERLOG_DHT_MODE") {
            self.dht_mode = parse("PEERLOG_DHT_MODE", &v)?;
        }
        if let Some(v) = get("PEERLOG_RELAY_SERVER") {
            self.relay_server = parse("PEERLOG_RELAY_SERVER", &v)?;
        }
        if let Some(v) = get("PEERLOG_EXTERNAL_ADDRESSES") {
            self.external_addresses = list("PEERLOG_EXTERNAL_ADDRESSES", &v)?;
        }
        Ok(())
    }

    /// The data directory: configured, else `$XDG_DATA_HOME/peerlog`, else
    /// `~/.local/share/peerlog`.
    pub fn resolved_data_dir(&self) -> Result<PathBuf, ConfigError> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Ok(PathBuf::from(d).join("peerlog"));
        }
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".local/share/peerlog"))
            .ok_or(ConfigError::NoDataDir)
    }
}

fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example file is valid and states the defaults.
    #[test]
    fn example_config_file_matches_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/peerlog.toml"));
        let file = Config::from_file(path).expect("config/peerlog.toml parses");
        let d = Config::default();
        assert_eq!(format!("{:?}", file), format!("{:?}", d), "config/peerlog.toml drifted from Config::default()");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("peerlog-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "api_listen = \"127.0.0.1:9000\"\nmdns = false\n[limits]\nframe_bytes = 1000\n").unwrap();
        let mut c = Config::from_file(&file).unwrap();
        assert_eq!(c.api_listen.port(), 9000);
        assert!(!c.mdns);
        assert_eq!(c.limits.frame_bytes, 1000);
        assert_eq!(c.limits.message_bytes, Limits::default().message_bytes);
        c.apply_env(|n| (n == "PEERLOG_API_LISTEN").then(|| "127.0.0.1:9001".into())).unwrap();
        assert_eq!(c.api_listen.port(), 9001);
        let bad = c.apply_env(|n| (n == "PEERLOG_DHT_MODE").then(|| "sometimes".into()));
        assert!(matches!(bad, Err(ConfigError::Env { name: "PEERLOG_DHT_MODE", .. })));
        assert_eq!(c.network, Network::Public, "the public DHT is the default");
        c.apply_env(|n| (n == "PEERLOG_NETWORK").then(|| "private".into())).unwrap();
        assert_eq!(c.network, Network::Private);
        std::fs::write(&file, "no_such_option = 1\n").unwrap();
        assert!(matches!(Config::from_file(&file), Err(ConfigError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
