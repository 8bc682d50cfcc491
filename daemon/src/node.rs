//! The libp2p node. One task (the [`EventLoop`]) owns the `Swarm`; everyone else holds a
//! [`NodeHandle`] that sends [`Command`]s over a bounded channel and subscribes to
//! [`NodeEvent`]s on a broadcast channel. Pattern: rust-libp2p `examples/file-sharing`.
//!
//! Behaviours: Kademlia on `/peerlog/kad/1.0.0` (room discovery by provider records),
//! a second Kademlia on `/ipfs/kad/1.0.0` (the public Amino DHT, always a client, only with
//! `network = "public"`), identify (feeds peers' listen addresses into Kademlia), ping (keep-alive, RTT), relay
//! client + DCUtR + AutoNAT (NAT traversal), mDNS (LAN, optional), and `libp2p-stream`
//! (replication streams, see `replicate`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    autonat, connection_limits, dcutr, identify, identity::Keypair, kad, mdns, noise, ping, relay, tcp, yamux,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use peerlog_proto::wire::DiscoveryKey;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{DhtMode, RelayServerMode};

/// Kademlia protocol name: a DHT of peerlog nodes only.
pub const KAD_PROTOCOL: &str = "/peerlog/kad/1.0.0";
/// Kademlia protocol of the public libp2p DHT (Amino), which IPFS and many libp2p
/// applications share.
pub const AMINO_PROTOCOL: &str = "/ipfs/kad/1.0.0";
/// Public provider keys of a room change every epoch (a day), so that a crawler of the
/// public DHT cannot link a room's members across days.
pub const PUBLIC_KEY_EPOCH_SECS: u64 = 86_400;
/// Within this long of an epoch boundary, the neighbouring epoch's key is announced and
/// looked up too (clocks are not exact).
const PUBLIC_KEY_OVERLAP_SECS: u64 = 3_600;
/// Provider records we publish ourselves are published again after this long (and at once
/// after a publication that reached no server, e.g. before the DHT answered).
const REANNOUNCE_AFTER: Duration = Duration::from_secs(6 * 3600);
/// A DHT counts as answering if one of its servers identified itself this recently.
const DHT_CONTACT_FRESH: Duration = Duration::from_secs(600);
/// A node that needs a relay and holds no reservation on a peerlog relay looks for one on
/// the DHTs after this long, then at doubling intervals up to `RELAY_LOOKUP_MAX`.
const RELAY_LOOKUP_FIRST: Duration = Duration::from_secs(10);
const RELAY_LOOKUP_MAX: Duration = Duration::from_secs(600);
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/peerlog/id/1.0.0";
/// Capacity of the command channel.
const COMMAND_CAPACITY: usize = 256;
/// Capacity of the event broadcast channel (slow subscribers see `Lagged`).
const EVENT_CAPACITY: usize = 1024;
/// How long start-up waits for the listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);
/// Most relays a node behind NAT keeps a reservation on.
const MAX_RESERVATIONS: usize = 2;
/// How often the node checks its relay reservations.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses remembered per peer (for redials), and peers remembered.
const ADDRS_PER_PEER: usize = 8;
const ADDRESS_BOOK_PEERS: usize = 4096;

/// Errors of the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The swarm could not be built (transport set-up failed).
    #[error("cannot build the libp2p swarm: {0}")]
    Build(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        source: libp2p::TransportError<std::io::Error>,
    },
    /// A peer could not be reached.
    #[error("cannot connect to {peer}: {message}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why: libp2p's `DialError`, rendered once for every caller waiting on the same
        /// dial (it cannot be cloned).
        message: String,
    },
    /// The event loop has stopped.
    #[error("the node is shut down")]
    Shutdown,
}

/// What the node needs from the configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers, each with `/p2p/PEERID`.
    pub bootstrap: Vec<Multiaddr>,
    /// Join the public libp2p DHT (Amino) as a client through these bootstrap peers;
    /// `None`: never contact it (`network = "private"`).
    pub public_dht: Option<Vec<Multiaddr>>,
    /// mDNS on the LAN.
    pub mdns: bool,
    /// Announce private-network (and, alone, loopback) listen addresses.
    pub announce_private: bool,
    /// Kademlia mode.
    pub dht_mode: DhtMode,
    /// Provider record lifetime.
    pub provider_ttl: Duration,
    /// Whether to serve circuit relay v2 reservations.
    pub relay_server: RelayServerMode,
    /// Addresses this node is known to be reachable at (declared, not probed).
    pub external_addrs: Vec<Multiaddr>,
    /// Connection limits.
    pub connection_limits: ConnectionLimits,
    /// As a relay: bytes and duration one circuit may use.
    pub relay_circuit_bytes: u64,
    /// As a relay: duration one circuit may last.
    pub relay_circuit_duration: Duration,
    /// As a relay: circuits at once in all.
    pub relay_circuits: usize,
    /// As a relay: circuits at once per peer.
    pub relay_circuits_per_peer: usize,
}

/// Limits on connections, so that a flood of dials cannot take the node down.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most established connections in all.
    pub max_established: u32,
    /// Most established connections per peer.
    pub max_per_peer: u32,
    /// Most incoming connections still handshaking.
    pub max_pending_incoming: u32,
    /// Most outgoing dials in flight.
    pub max_pending_outgoing: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { max_established: 512, max_per_peer: 4, max_pending_incoming: 128, max_pending_outgoing: 128 }
    }
}

/// How a connection reaches the peer (part of the API).
pub use peerlog_proto::api::node::ConnectionKind;

/// A connected peer as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    /// The peer.
    pub peer_id: String,
    /// Remote address of each open connection.
    pub addrs: Vec<String>,
    /// The best connection kind (direct beats relayed).
    pub connection: ConnectionKind,
    /// Last ping round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The peer's agent string (from identify).
    pub agent: Option<String>,
    /// Over a relayed connection: the bytes its circuit may carry, as the relay said
    /// (`u64::MAX`: no limit); `None` when not relayed or not known.
    pub circuit_bytes: Option<u64>,
}

/// A snapshot of the node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    /// Our PeerId.
    pub peer_id: String,
    /// Our listen addresses (with `/p2p/` suffix).
    pub listen_addrs: Vec<String>,
    /// Confirmed or declared external addresses.
    pub external_addrs: Vec<String>,
    /// AutoNAT's verdict: `public`, `private` or `unknown`.
    pub nat_status: String,
    /// Relays we hold a reservation on.
    pub relays: Vec<String>,
    /// Of those, the ones that are peerlog relays (room-sized circuit limits).
    pub peerlog_relays: Vec<String>,
    /// Connected peers.
    pub peers: Vec<PeerInfo>,
    /// How others can reach us: `public` (a declared or confirmed public address),
    /// `relayed` (only through a relay reservation), `behind_nat` (we reach the internet,
    /// nobody reaches us), `lan_only` (connected to nobody beyond private networks),
    /// `no_peers`.
    pub reachability: String,
    /// Our DHT mode now: `server` or `client`.
    pub dht_mode: String,
    /// Peers in our DHT routing table.
    pub dht_peers: usize,
    /// `public` (also on the public libp2p DHT) or `private`.
    pub network: String,
    /// Peers in our routing table of the public DHT (`None` on a private network).
    pub public_dht_peers: Option<usize>,
    /// Configured bootstrap nodes.
    pub bootstrap_peers: usize,
    /// Bootstrap nodes connected now.
    pub bootstrap_connected: usize,
    /// Plain sentences about what keeps peers from finding or reaching us, if anything.
    pub warnings: Vec<String>,
    /// Hole punches (DCUtR) since start: how many made a direct connection.
    pub holepunch_ok: u64,
    /// Hole punches since start that failed (the connection stayed relayed).
    pub holepunch_failed: u64,
}

/// Requests to the event loop.
#[derive(Debug)]
enum Command {
    Provide { key: DiscoveryKey },
    StopProviding { key: DiscoveryKey },
    FindProviders { key: DiscoveryKey },
    Dial { addr: Multiaddr },
    Disconnect { peer: PeerId },
    Connect { peer: PeerId, reply: oneshot::Sender<Result<(), String>> },
    AddAddresses { peer: PeerId, addrs: Vec<Multiaddr> },
    Addresses { peers: Vec<PeerId>, reply: oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>> },
    Info { reply: oneshot::Sender<NodeInfo> },
    ProbeDht { dht: Dht, reply: oneshot::Sender<Result<usize, String>> },
}

/// One of the node's two DHTs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dht {
    /// The peerlog DHT (`/peerlog/kad/1.0.0`).
    Peerlog,
    /// The public libp2p DHT (Amino, `/ipfs/kad/1.0.0`).
    Public,
}

/// What a provider lookup looks for.
#[derive(Clone, Copy, Debug)]
enum Lookup {
    /// The peers of a room, by its discovery key.
    Room(DiscoveryKey),
    /// peerlog relays (see [`relay_provider_key`]).
    Relays,
}

/// What the node tells its subscribers.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    /// Providers of a DHT key were found (ourselves excluded); the node dials them.
    ProvidersFound {
        /// The key (a room's discovery key).
        key: DiscoveryKey,
        /// The providers.
        peers: Vec<PeerId>,
    },
    /// A peer discovered on the LAN.
    LanPeer {
        /// The peer.
        peer: PeerId,
    },
    /// The first connection to a peer opened.
    Connected {
        /// The peer.
        peer: PeerId,
        /// How.
        kind: ConnectionKind,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer.
        peer: PeerId,
    },
    /// The best connection kind to a peer changed (e.g. relayed → holepunched).
    ConnectionChanged {
        /// The peer.
        peer: PeerId,
        /// The new best kind.
        kind: ConnectionKind,
    },
    /// DCUtR could not upgrade a relayed connection; it stays relayed.
    HolePunchFailed {
        /// The peer.
        peer: PeerId,
    },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    kad: kad::Behaviour<kad::store::MemoryStore>,
    amino: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    relay_server: Toggle<DirectOnly<relay::Behaviour>>,
    limits: connection_limits::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// A cheap handle to the node.
#[derive(Clone)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NodeEvent>,
    peer_id: PeerId,
    streams: libp2p_stream::Control,
}

impl NodeHandle {
    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Subscribes to node events.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// A control to open and accept libp2p streams.
    pub fn streams(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    async fn send(&self, cmd: Command) -> Result<(), NodeError> {
        self.commands.send(cmd).await.map_err(|_| NodeError::Shutdown)
    }

    /// Announces that we provide `key` on the DHT.
    pub async fn provide(&self, key: DiscoveryKey) -> Result<(), NodeError> {
        self.send(Command::Provide { key }).await
    }

    /// Stops announcing `key`.
    pub async fn stop_providing(&self, key: DiscoveryKey) -> Result<(), NodeError> {
        self.send(Command::StopProviding { key }).await
    }

    /// Looks up the providers of `key`; results arrive as [`NodeEvent::ProvidersFound`].
    pub async fn find_providers(&self, key: DiscoveryKey) -> Result<(), NodeError> {
        self.send(Command::FindProviders { key }).await
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NodeError> {
        self.send(Command::Dial { addr }).await
    }

    /// Closes every connection to a peer (its sessions end and redial with backoff).
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NodeError> {
        self.send(Command::Disconnect { peer }).await
    }

    /// Connects to a peer (at the addresses the node knows for it) unless connected, and
    /// waits until a connection is up or the dial failed.
    pub async fn connect(&self, peer: PeerId) -> Result<(), NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Connect { peer, reply }).await?;
        rx.await.map_err(|_| NodeError::Shutdown)?.map_err(|message| NodeError::Dial { peer, message })
    }

    /// Remembers addresses of a peer (from peer exchange).
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), NodeError> {
        self.send(Command::AddAddresses { peer, addrs }).await
    }

    /// The best connection kind to `peer`, if connected.
    pub async fn connection_kind(&self, peer: PeerId) -> Option<ConnectionKind> {
        self.connection(peer).await.map(|p| p.connection)
    }

    /// How we are connected to `peer`, if we are.
    pub async fn connection(&self, peer: PeerId) -> Option<PeerInfo> {
        let info = self.info().await.ok()?;
        let id = peer.to_string();
        info.peers.into_iter().find(|p| p.peer_id == id)
    }

    /// The addresses known for each of `peers`.
    pub async fn addresses(&self, peers: Vec<PeerId>) -> Result<Vec<(PeerId, Vec<Multiaddr>)>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Addresses { peers, reply }).await?;
        rx.await.map_err(|_| NodeError::Shutdown)
    }

    /// A snapshot of the node's state.
    pub async fn info(&self) -> Result<NodeInfo, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Info { reply }).await?;
        rx.await.map_err(|_| NodeError::Shutdown)
    }

    /// Asks a DHT for the peers closest to us: how many answered, or why none did.
    pub async fn probe_dht(&self, dht: Dht) -> Result<Result<usize, String>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ProbeDht { dht, reply }).await?;
        rx.await.map_err(|_| NodeError::Shutdown)
    }
}

struct Connection {
    addr: Multiaddr,
    kind: ConnectionKind,
}

/// One provider record we publish: a query in flight, or when one last reached a server.
#[derive(Default)]
struct Announcement {
    pending: Option<kad::QueryId>,
    reached: Option<Instant>,
}

/// The task that owns the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    /// libp2p's metrics (see [`build_metered`]).
    metrics: libp2p::metrics::Metrics,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    /// Open connections per peer.
    connections: HashMap<PeerId, HashMap<ConnectionId, Connection>>,
    /// Last ping RTT per peer.
    rtt: HashMap<PeerId, Duration>,
    /// Agent strings from identify.
    agents: HashMap<PeerId, String>,
    /// Provider lookups in flight, per DHT (query ids are per behaviour).
    lookups: HashMap<(Dht, kad::QueryId), Lookup>,
    /// On the public DHT: the provider keys each room is announced under now.
    public_provided: HashMap<DiscoveryKey, Vec<kad::RecordKey>>,
    /// Public DHT bootstrap peers.
    public_bootstrap: Vec<PeerId>,
    /// Whether we announce ourselves as a peerlog relay.
    advertising_relay: bool,
    /// Provider records we publish ourselves (rather than leave to Kademlia's republishing):
    /// the public DHT's room keys and the relay key, with when each last reached a server.
    announcements: HashMap<(Dht, kad::RecordKey), Announcement>,
    /// When we next look for peerlog relays, and the wait after that (doubling).
    relay_lookup: (Instant, Duration),
    /// When a peer that speaks each DHT's protocol last identified itself to us.
    dht_contact: HashMap<Dht, Instant>,
    /// Hole punches since start: succeeded, failed.
    holepunches: (u64, u64),
    nat_status: autonat::NatStatus,
    dht_mode: DhtMode,
    /// Relays that accepted (or are asked for) a reservation, with the listener.
    reservations: HashMap<PeerId, ListenerId>,
    /// Peers that serve circuit relay v2, with an address we reached them at.
    relay_candidates: HashMap<PeerId, Multiaddr>,
    /// Addresses of peers: where we reached them and what they told us (identify, peer exchange).
    address_book: HashMap<PeerId, Vec<Multiaddr>>,
    /// External addresses declared in the config (never expire).
    declared_external: Vec<Multiaddr>,
    /// Whether private listen addresses are published (see `publish_listen_addrs`).
    announce_private: bool,
    /// Bootstrap nodes from the config.
    bootstrap: Vec<PeerId>,
    /// Data limits of circuits, as relays announce them: per relay (our circuits through it)
    /// and per source peer (circuits to us).
    relay_limits: HashMap<PeerId, u64>,
    inbound_limits: HashMap<PeerId, u64>,
    /// Relays that accepted our reservation.
    accepted_relays: HashSet<PeerId>,
    /// DHT probes (`ProbeDht`) waiting for their query.
    dht_probes: HashMap<(Dht, kad::QueryId), oneshot::Sender<Result<usize, String>>>,
    /// `connect` calls waiting for a connection to a peer.
    pending_connects: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
}

/// Builds the swarm, starts listening, waits (bounded) for the listen addresses, and
/// returns the handle and the event loop to spawn.
pub async fn build(keypair: Keypair, config: &NodeConfig) -> Result<(NodeHandle, EventLoop), NodeError> {
    build_metered(keypair, config, &mut libp2p::metrics::Registry::default()).await
}

/// [`build`], with libp2p's own metrics (connections, bandwidth, protocols, Kademlia,
/// identify, ping, DCUtR, relay) registered in `registry`.
pub async fn build_metered(
    keypair: Keypair,
    config: &NodeConfig,
    registry: &mut libp2p::metrics::Registry,
) -> Result<(NodeHandle, EventLoop), NodeError> {
    let peer_id = keypair.public().to_peer_id();
    let kad_protocol = StreamProtocol::new(KAD_PROTOCOL);
    let ttl = config.provider_ttl;
    let mdns_on = config.mdns;
    let dht_mode = config.dht_mode;
    // The relay serves (and advertises itself) only while it has a direct external address,
    // declared or confirmed by AutoNAT; `DirectOnly` hides our own relayed addresses from it.
    let relay_server_on = config.relay_server != RelayServerMode::Off;
    let declared = config.external_addrs.clone();
    let limits = config.connection_limits;
    let public_dht = config.public_dht.is_some();
    let relay_config = relay::Config {
        max_circuit_bytes: config.relay_circuit_bytes,
        max_circuit_duration: config.relay_circuit_duration,
        max_circuits: config.relay_circuits.max(1),
        max_circuits_per_peer: config.relay_circuits_per_peer.max(1),
        ..relay::Config::default()
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NodeError::Build(e.into()))?
        .with_quic()
        .with_dns()
        .map_err(|e| NodeError::Build(e.into()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NodeError::Build(e.into()))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key, relay_client| {
            let mut kad_config = kad::Config::new(kad_protocol);
            kad_config
                .set_provider_record_ttl(Some(ttl))
                .set_provider_publication_interval(Some(ttl / 2))
                .set_query_timeout(Duration::from_secs(30));
            let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
            // Auto is managed by the event loop: server only with a non-relayed external address.
            kad.set_mode(Some(match dht_mode {
                DhtMode::Server => kad::Mode::Server,
                DhtMode::Auto | DhtMode::Client => kad::Mode::Client,
            }));
            // The public DHT: a client only, ever. A server there would carry other
            // people's load (and AutoNAT must not be able to promote it).
            let amino = public_dht.then(|| {
                let mut config = kad::Config::new(StreamProtocol::new(AMINO_PROTOCOL));
                config.set_query_timeout(Duration::from_secs(60));
                let mut amino = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config);
                amino.set_mode(Some(kad::Mode::Client));
                amino
            });
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("peerlog/{}", env!("CARGO_PKG_VERSION")))
                    .with_push_listen_addr_updates(true),
            );
            let mdns =
                if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
            Ok(Behaviour {
                kad,
                amino: Toggle::from(amino),
                identify,
                ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(15))),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                mdns: Toggle::from(mdns),
                relay_server: Toggle::from(relay_server_on.then(|| DirectOnly {
                    inner: relay::Behaviour::new(peer_id, relay_config),
                    declared: declared.clone(),
                })),
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(limits.max_established))
                        .with_max_established_per_peer(Some(limits.max_per_peer))
                        .with_max_pending_incoming(Some(limits.max_pending_incoming))
                        .with_max_pending_outgoing(Some(limits.max_pending_outgoing)),
                ),
                stream: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|e| NodeError::Build(e.into()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();

    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|source| NodeError::Listen { addr: addr.clone(), source })?;
        listeners.insert(id);
    }
    let streams = swarm.behaviour().stream.new_control();
    let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let metrics = libp2p::metrics::Metrics::new(registry);
    let mut event_loop = EventLoop {
        metrics,
        swarm,
        commands,
        events: events.clone(),
        connections: HashMap::new(),
        rtt: HashMap::new(),
        agents: HashMap::new(),
        lookups: HashMap::new(),
        public_provided: HashMap::new(),
        public_bootstrap: Vec::new(),
        advertising_relay: false,
        announcements: HashMap::new(),
        relay_lookup: (Instant::now(), RELAY_LOOKUP_FIRST),
        dht_contact: HashMap::new(),
        holepunches: (0, 0),
        nat_status: autonat::NatStatus::Unknown,
        dht_mode,
        reservations: HashMap::new(),
        relay_candidates: HashMap::new(),
        address_book: HashMap::new(),
        declared_external: config.external_addrs.clone(),
        announce_private: config.announce_private,
        bootstrap: Vec::new(),
        accepted_relays: HashSet::new(),
        relay_limits: HashMap::new(),
        inbound_limits: HashMap::new(),
        dht_probes: HashMap::new(),
        pending_connects: HashMap::new(),
    };
    for addr in &config.external_addrs {
        event_loop.swarm.add_external_address(addr.clone());
    }
    // A declared address makes the node a DHT server in auto mode (the public bootstrap
    // node of the README declares one and sets nothing else).
    event_loop.update_dht_mode();
    if config.relay_server == RelayServerMode::On && config.external_addrs.is_empty() {
        warn!("relay_server = on, but no external address is declared: the relay serves only once one is confirmed");
    }
    // Wait until every listener reported an address, so that callers can print and
    // share them right away.
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while !listeners.is_empty() {
        match tokio::time::timeout_at(deadline, event_loop.swarm.select_next_some()).await {
            Ok(SwarmEvent::NewListenAddr { listener_id, .. }) => {
                listeners.remove(&listener_id);
            }
            Ok(SwarmEvent::ListenerError { listener_id, error }) => {
                warn!(?listener_id, %error, "listener failed");
                listeners.remove(&listener_id);
            }
            Ok(other) => event_loop.handle_event(other),
            Err(_) => {
                warn!("listeners did not report addresses within {LISTEN_WAIT:?}");
                break;
            }
        }
    }
    event_loop.publish_listen_addrs();
    for addr in &config.bootstrap {
        event_loop.add_bootstrap(Dht::Peerlog, addr.clone());
    }
    for addr in config.public_dht.iter().flatten() {
        event_loop.add_bootstrap(Dht::Public, addr.clone());
    }
    let handle = NodeHandle { commands: commands_tx, events, peer_id, streams };
    Ok((handle, event_loop))
}

/// The DHT key under which a room (by its discovery key) is announced: a sha2-256
/// multihash (`0x12 0x20` + digest) of a domain-separated hash of the discovery key.
/// Standard Kademlia servers (go-libp2p-kad-dht, js-libp2p's kad-dht) refuse provider
/// records whose key is not a multihash/CID ("Invalid CID"); a bare sha2-256 multihash is
/// both a valid multihash and a CIDv0. Nothing about the room but this hash is published.
pub fn provider_key(discovery_key: &DiscoveryKey) -> kad::RecordKey {
    sha256_multihash(&[b"peerlog/dht/room/v1", &discovery_key.0])
}

/// The key under which a room is announced on the public DHT in `epoch` (days since the
/// Unix epoch): it changes every day, so a crawler that sees it cannot link the room's
/// members across days. Shaped as [`provider_key`].
pub fn public_provider_key(discovery_key: &DiscoveryKey, epoch: u64) -> kad::RecordKey {
    sha256_multihash(&[b"peerlog/amino/room/v1", &discovery_key.0, &epoch.to_be_bytes()])
}

/// The public provider keys of a room at `unix_secs`: this epoch's, and near a boundary
/// the neighbouring epoch's as well (members' clocks differ a little).
pub fn public_provider_keys(discovery_key: &DiscoveryKey, unix_secs: u64) -> Vec<kad::RecordKey> {
    let epoch = unix_secs / PUBLIC_KEY_EPOCH_SECS;
    let into = unix_secs % PUBLIC_KEY_EPOCH_SECS;
    let mut keys = vec![public_provider_key(discovery_key, epoch)];
    if into >= PUBLIC_KEY_EPOCH_SECS - PUBLIC_KEY_OVERLAP_SECS {
        keys.push(public_provider_key(discovery_key, epoch + 1));
    }
    if into < PUBLIC_KEY_OVERLAP_SECS && epoch > 0 {
        keys.push(public_provider_key(discovery_key, epoch - 1));
    }
    keys
}

/// The well-known key under which peerlog relays (room-sized circuit limits) announce
/// themselves, on both DHTs.
pub fn relay_provider_key() -> kad::RecordKey {
    sha256_multihash(&[b"peerlog relays v1"])
}

/// A sha2-256 multihash (`0x12 0x20` + digest) of the concatenated parts.
fn sha256_multihash(parts: &[&[u8]]) -> kad::RecordKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update(part);
    }
    let mut key = vec![0x12, 0x20];
    key.extend_from_slice(&h.finalize());
    kad::RecordKey::new(&key)
}

/// The PeerId at the end of an address (`/p2p/PEERID`).
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// The Kademlia behaviour of a DHT, if this node takes part in it.
fn kad_of(b: &mut Behaviour, dht: Dht) -> Option<&mut kad::Behaviour<kad::store::MemoryStore>> {
    match dht {
        Dht::Peerlog => Some(&mut b.kad),
        Dht::Public => b.amino.as_mut(),
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where an address can be reached from, as far as publishing it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// A public IP, or a DNS name: the world.
    Public,
    /// A private network (RFC 1918, CGNAT/Tailscale 100.64/10, IPv6 ULA): a LAN or VPN.
    Private,
    /// Loopback: this machine.
    Loopback,
    /// Link-local, unspecified, multicast, documentation and the like: nobody. Never published.
    Nowhere,
}

/// The reach of an address by its IP (relayed addresses: see [`is_relayed`]).
pub fn reach(addr: &Multiaddr) -> Reach {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => {
            let [a, b, ..] = ip.octets();
            if ip.is_loopback() {
                Reach::Loopback
            } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
                Reach::Private
            } else if ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_documentation()
                || a == 0
                || a >= 240
            {
                Reach::Nowhere
            } else {
                Reach::Public
            }
        }
        Some(Protocol::Ip6(ip)) => {
            let first = ip.segments()[0];
            if ip.is_loopback() {
                Reach::Loopback
            } else if first & 0xfe00 == 0xfc00 {
                Reach::Private
            } else if ip.is_unspecified()
                || ip.is_multicast()
                || first & 0xffc0 == 0xfe80
                || first == 0x2001 && ip.segments()[1] == 0xdb8
            {
                Reach::Nowhere
            } else {
                Reach::Public
            }
        }
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) | Protocol::Dnsaddr(_)) => Reach::Public,
        _ => Reach::Nowhere,
    }
}

/// Wraps the relay server so that it hears only about our public external addresses
/// (declared, or public and confirmed): not relayed ones (a node reachable only through
/// someone else's relay must not offer itself as a relay), nor the private listen
/// addresses we publish for LAN and VPN peers (the relay server counts any external
/// address as "reachable").
struct DirectOnly<B> {
    inner: B,
    declared: Vec<Multiaddr>,
}

impl<B> DirectOnly<B> {
    fn hears(&self, addr: &Multiaddr) -> bool {
        !is_relayed(addr) && (self.declared.contains(addr) || reach(addr) == Reach::Public)
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for DirectOnly<B> {
    type ConnectionHandler = B::ConnectionHandler;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), libp2p::swarm::ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
        self.inner.handle_established_inbound_connection(id, peer, local, remote)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: libp2p::core::Endpoint,
    ) -> Result<Vec<Multiaddr>, libp2p::swarm::ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: libp2p::core::Endpoint,
        port_use: libp2p::core::transport::PortUse,
    ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
        self.inner.handle_established_outbound_connection(id, peer, addr, role, port_use)
    }

    fn on_swarm_event(&mut self, event: libp2p::swarm::FromSwarm<'_>) {
        use libp2p::swarm::FromSwarm;
        match &event {
            FromSwarm::ExternalAddrConfirmed(e) if !self.hears(e.addr) => {}
            FromSwarm::ExternalAddrExpired(e) if !self.hears(e.addr) => {}
            _ => self.inner.on_swarm_event(event),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: libp2p::swarm::THandlerOutEvent<Self>,
    ) {
        self.inner.on_connection_handler_event(peer, id, event)
    }

    fn poll(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::swarm::ToSwarm<Self::ToSwarm, libp2p::swarm::THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}

/// Preference among connection kinds: lower is better.
fn kind_rank(kind: ConnectionKind) -> u8 {
    match kind {
        ConnectionKind::Holepunched => 0,
        ConnectionKind::Direct => 1,
        ConnectionKind::Relayed => 2,
    }
}

/// The relay of a `/p2p/RELAY/p2p-circuit` address.
fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

fn kind_of(endpoint: &ConnectedPoint) -> ConnectionKind {
    if endpoint.is_relayed() || is_relayed(endpoint.get_remote_address()) {
        ConnectionKind::Relayed
    } else if matches!(endpoint, ConnectedPoint::Dialer { role_override: libp2p::core::Endpoint::Listener, .. }) {
        // DCUtR's simultaneous open: a dial that takes the listener role.
        ConnectionKind::Holepunched
    } else {
        ConnectionKind::Direct
    }
}

/// The address that describes a connection: the remote one, except for relayed
/// connections we accepted, whose remote address is only `/p2p/PEER`.
fn connection_addr(endpoint: &ConnectedPoint) -> Multiaddr {
    match endpoint {
        ConnectedPoint::Listener { local_addr, .. } if is_relayed(local_addr) => local_addr.clone(),
        _ => endpoint.get_remote_address().clone(),
    }
}

impl EventLoop {
    /// Runs until `cancel` fires or every handle is dropped.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = maintenance.tick() => self.maintain(),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_event(event),
            }
        }
        debug!("node event loop stopped");
    }

    /// Adds a bootstrap peer to a DHT's routing table and dials it (a `/dnsaddr` name is
    /// resolved by the DNS transport when dialed).
    fn add_bootstrap(&mut self, dht: Dht, addr: Multiaddr) {
        let Some(peer) = peer_of(&addr) else {
            warn!(%addr, "bootstrap address has no /p2p/PEERID suffix; ignored");
            return;
        };
        let transport: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
        let Some(kad) = self.dht(dht) else { return };
        kad.add_address(&peer, transport);
        match dht {
            Dht::Peerlog if !self.bootstrap.contains(&peer) => self.bootstrap.push(peer),
            Dht::Public if !self.public_bootstrap.contains(&peer) => self.public_bootstrap.push(peer),
            _ => {}
        }
        if let Err(e) = self.swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    /// The Kademlia behaviour of a DHT, if this node takes part in it.
    fn dht(&mut self, dht: Dht) -> Option<&mut kad::Behaviour<kad::store::MemoryStore>> {
        kad_of(self.swarm.behaviour_mut(), dht)
    }

    /// Starts a provider lookup on a DHT.
    fn look_up(&mut self, dht: Dht, key: kad::RecordKey, what: Lookup) {
        if let Some(kad) = self.dht(dht) {
            let id = kad.get_providers(key);
            self.lookups.insert((dht, id), what);
        }
    }

    /// Publishes a provider record unless a publication is in flight or one reached a
    /// server within `REANNOUNCE_AFTER`.
    fn announce(&mut self, dht: Dht, key: kad::RecordKey) {
        let entry = self.announcements.entry((dht, key.clone())).or_default();
        if entry.pending.is_some() || entry.reached.is_some_and(|t| t.elapsed() < REANNOUNCE_AFTER) {
            return;
        }
        // Not `self.dht`: `entry` borrows `self.announcements` meanwhile.
        let Some(kad) = kad_of(self.swarm.behaviour_mut(), dht) else { return };
        match kad.start_providing(key) {
            Ok(id) => entry.pending = Some(id),
            Err(e) => warn!(error = %e, "cannot store provider record"),
        }
    }

    /// Stops publishing a provider record.
    fn withdraw(&mut self, dht: Dht, key: &kad::RecordKey) {
        self.announcements.remove(&(dht, key.clone()));
        if let Some(kad) = self.dht(dht) {
            kad.stop_providing(key);
        }
    }

    /// Announces every room again on the public DHT, because the addresses that reach us
    /// changed (a new relay): its servers keep what a provider record said until it is
    /// published again. (The peerlog DHT's records are re-announced every discovery round.)
    fn reprovide_publicly(&mut self) {
        let keys: Vec<kad::RecordKey> = self.public_provided.values().flatten().cloned().collect();
        for key in keys {
            if let Some(a) = self.announcements.get_mut(&(Dht::Public, key.clone())) {
                a.reached = None;
            }
            self.announce(Dht::Public, key);
        }
    }

    /// Announces a room on the public DHT under its keys of the day (a new day brings a
    /// new key, and the old one is dropped).
    fn provide_publicly(&mut self, room: DiscoveryKey) {
        if !self.public_dht() {
            return;
        }
        let keys = public_provider_keys(&room, unix_secs());
        let old = self.public_provided.insert(room, keys.clone()).unwrap_or_default();
        for key in old.iter().filter(|k| !keys.contains(k)) {
            self.withdraw(Dht::Public, key);
        }
        for key in keys {
            self.announce(Dht::Public, key);
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Provide { key } => {
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(provider_key(&key)) {
                    warn!(error = %e, "cannot store provider record");
                }
                self.provide_publicly(key);
            }
            Command::StopProviding { key } => {
                self.swarm.behaviour_mut().kad.stop_providing(&provider_key(&key));
                for old in self.public_provided.remove(&key).unwrap_or_default() {
                    self.withdraw(Dht::Public, &old);
                }
            }
            Command::FindProviders { key } => {
                self.look_up(Dht::Peerlog, provider_key(&key), Lookup::Room(key));
                // On the public DHT one lookup at a time per room: each is a walk across
                // strangers' nodes.
                let busy = self
                    .lookups
                    .iter()
                    .any(|((d, _), l)| *d == Dht::Public && matches!(l, Lookup::Room(k) if *k == key));
                if !busy {
                    for public_key in public_provider_keys(&key, unix_secs()) {
                        self.look_up(Dht::Public, public_key, Lookup::Room(key));
                    }
                }
            }
            Command::Dial { addr } => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    warn!(%addr, error = %e, "dial failed");
                }
            }
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Connect { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let addrs = self.address_book.get(&peer).cloned().unwrap_or_default();
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .extend_addresses_through_behaviour()
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                match self.swarm.dial(opts) {
                    // Already dialing: wait for that dial's outcome.
                    Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                        self.pending_connects.entry(peer).or_default().push(reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Command::AddAddresses { peer, addrs } => {
                for addr in addrs {
                    self.remember(peer, addr);
                }
            }
            Command::Addresses { peers, reply } => {
                let out = peers
                    .into_iter()
                    .map(|p| {
                        let addrs = self.address_book.get(&p).cloned().unwrap_or_default();
                        (p, addrs)
                    })
                    .collect();
                let _ = reply.send(out);
            }
            Command::Info { reply } => {
                let _ = reply.send(self.info());
            }
            Command::ProbeDht { dht, reply } => {
                let me = *self.swarm.local_peer_id();
                match self.dht(dht) {
                    Some(kad) => {
                        let id = kad.get_closest_peers(me);
                        self.dht_probes.insert((dht, id), reply);
                    }
                    None => {
                        let _ =
                            reply.send(Err("this node does not take part in that DHT (network = \"private\")".into()));
                    }
                }
            }
        }
    }

    /// Remembers an address of a peer (bounded).
    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        if self.address_book.len() >= ADDRESS_BOOK_PEERS && !self.address_book.contains_key(&peer) {
            // Forget a peer we are not connected to, to make room.
            if let Some(old) = self.address_book.keys().find(|p| !self.connections.contains_key(p)).copied() {
                self.address_book.remove(&old);
            } else {
                return;
            }
        }
        let addrs = self.address_book.entry(peer).or_default();
        if !addrs.contains(&addr) {
            if addrs.len() >= ADDRS_PER_PEER {
                addrs.remove(0);
            }
            addrs.push(addr);
        }
    }

    /// Whether this node should hold relay reservations: it has no declared or confirmed
    /// public external address.
    fn needs_relay(&self) -> bool {
        self.declared_external.is_empty() && !self.has_public_external()
    }

    /// A declared external address, or a confirmed public one (not relayed). The private
    /// listen addresses we publish for LAN and VPN peers do not count.
    fn has_public_external(&self) -> bool {
        self.swarm
            .external_addresses()
            .any(|a| !is_relayed(a) && (self.declared_external.contains(a) || reach(a) == Reach::Public))
    }

    /// Our listen addresses that peers on our networks can dial, published (in provider
    /// records and identify) as external addresses: private-network ones always, loopback
    /// ones only when we listen on nothing else (one machine: tests, a local setup).
    /// AutoNAT confirms only public addresses, so without this a node on a LAN or VPN
    /// announced rooms with no address anyone could dial. Link-local: never.
    fn publish_listen_addrs(&mut self) {
        let listen: Vec<Multiaddr> = self.swarm.listeners().filter(|a| !is_relayed(a)).cloned().collect();
        let only_loopback = listen.iter().all(|a| reach(a) == Reach::Loopback);
        let wanted: Vec<Multiaddr> = listen
            .into_iter()
            .filter(|a| {
                self.announce_private && (reach(a) == Reach::Private || (only_loopback && reach(a) == Reach::Loopback))
            })
            .collect();
        let stale: Vec<Multiaddr> = self
            .swarm
            .external_addresses()
            .filter(|a| matches!(reach(a), Reach::Private | Reach::Loopback) && !self.declared_external.contains(a))
            .filter(|a| !wanted.contains(a))
            .cloned()
            .collect();
        for addr in stale {
            self.swarm.remove_external_address(&addr);
        }
        for addr in wanted {
            if !self.swarm.external_addresses().any(|a| *a == addr) {
                self.swarm.add_external_address(addr);
            }
        }
    }

    /// Periodic work: relay reservations, announcing ourselves as a relay, and looking
    /// for peerlog relays.
    fn maintain(&mut self) {
        self.maintain_reservations();
        self.advertise_relay();
        let (due, wait) = self.relay_lookup;
        let has_peerlog_relay = self.reservations.keys().any(|p| self.is_peerlog(p));
        if self.needs_relay() && !has_peerlog_relay && Instant::now() >= due {
            self.relay_lookup = (Instant::now() + wait, (wait * 2).min(RELAY_LOOKUP_MAX));
            for dht in [Dht::Peerlog, Dht::Public] {
                self.look_up(dht, relay_provider_key(), Lookup::Relays);
            }
        }
    }

    /// A peerlog relay serves while it has a public address: it then announces itself
    /// under [`relay_provider_key`], so that peers find it and prefer it to public relays
    /// (whose circuits carry 128 KiB for 2 minutes: enough for a hole punch, not a room).
    fn advertise_relay(&mut self) {
        let serving = self.swarm.behaviour().relay_server.is_enabled() && self.has_public_external();
        if serving != self.advertising_relay {
            self.advertising_relay = serving;
            if serving {
                info!("serving as a peerlog relay: announcing it on the DHT");
            } else {
                for dht in [Dht::Peerlog, Dht::Public] {
                    self.withdraw(dht, &relay_provider_key());
                }
            }
        }
        if serving {
            for dht in [Dht::Peerlog, Dht::Public] {
                self.announce(dht, relay_provider_key());
            }
        }
    }

    /// Gives up reservations on relays that are not peerlog relays: once a peerlog relay
    /// carries us, an address through a limited relay only lures dialers onto circuits
    /// that close after 128 KiB.
    fn leave_limited_relays(&mut self) {
        let limited: Vec<PeerId> = self.reservations.keys().filter(|p| !self.is_peerlog(p)).copied().collect();
        for relay in limited {
            info!(%relay, "leaving a limited relay: a peerlog relay carries us");
            self.drop_reservation(relay);
        }
    }

    /// Gives up our reservation on a relay by closing our connections to it (which ends
    /// the reservation and its listener). Not `Swarm::remove_listener`: libp2p-relay 0.22
    /// panics ("Relay connection exist") when a reservation answer arrives on a connection
    /// whose listener was removed a moment before, and that panic takes the node down.
    fn drop_reservation(&mut self, relay: PeerId) {
        self.reservations.remove(&relay);
        self.accepted_relays.remove(&relay);
        let _ = self.swarm.disconnect_peer_id(relay);
    }

    /// Whether a peer runs peerlog (by its identify agent string).
    fn is_peerlog(&self, peer: &PeerId) -> bool {
        self.agents.get(peer).is_some_and(|a| a.starts_with("peerlog/"))
    }

    /// Reserves on relay candidates until `MAX_RESERVATIONS` are held, peerlog relays
    /// first; a reservation on another relay gives way to a peerlog relay.
    fn maintain_reservations(&mut self) {
        if !self.needs_relay() {
            return;
        }
        let mut candidates: Vec<(PeerId, Multiaddr)> = self
            .relay_candidates
            .iter()
            .filter(|(p, _)| !self.reservations.contains_key(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        // Where a peerlog relay is to be had, limited relays are not asked at all.
        let peerlog_waiting = candidates.iter().any(|(p, _)| self.is_peerlog(p));
        if peerlog_waiting || self.reservations.keys().any(|p| self.is_peerlog(p)) {
            candidates.retain(|(p, _)| self.is_peerlog(p));
        }
        if peerlog_waiting && self.reservations.len() >= MAX_RESERVATIONS {
            let limited = self.reservations.keys().find(|p| !self.is_peerlog(p)).copied();
            if let Some(relay) = limited {
                info!(%relay, "leaving a limited relay to make room for a peerlog relay");
                self.drop_reservation(relay);
            }
        }
        for (relay, addr) in candidates {
            if self.reservations.len() >= MAX_RESERVATIONS {
                break;
            }
            let circuit = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    info!(%relay, "requesting a relay reservation");
                    self.reservations.insert(relay, id);
                }
                Err(e) => debug!(%circuit, error = %e, "cannot listen on relay"),
            }
        }
    }

    /// In auto mode: DHT server (on the peerlog DHT; never on the public one) only with a
    /// declared or confirmed public external address.
    fn update_dht_mode(&mut self) {
        self.advertise_relay();
        if self.dht_mode != DhtMode::Auto {
            return;
        }
        let mode = if self.has_public_external() { kad::Mode::Server } else { kad::Mode::Client };
        self.swarm.behaviour_mut().kad.set_mode(Some(mode));
    }

    fn best_kind(&self, peer: &PeerId) -> Option<ConnectionKind> {
        self.connections.get(peer)?.values().map(|c| c.kind).min_by_key(|k| kind_rank(*k))
    }

    fn info(&mut self) -> NodeInfo {
        let reachability = self.reachability();
        let dht_peers = self.dht_peers();
        let public_dht_peers = self.dht(Dht::Public).map(|k| k.kbuckets().map(|b| b.num_entries()).sum::<usize>());
        let bootstrap_connected = self.bootstrap.iter().filter(|p| self.connections.contains_key(p)).count();
        let local = *self.swarm.local_peer_id();
        let with_p2p = |a: &Multiaddr| a.clone().with_p2p(local).unwrap_or_else(|a| a).to_string();
        let mut peers: Vec<PeerInfo> = self
            .connections
            .iter()
            .map(|(peer, conns)| {
                let best =
                    conns.values().map(|c| c.kind).min_by_key(|k| kind_rank(*k)).unwrap_or(ConnectionKind::Direct);
                let circuit_bytes = (best == ConnectionKind::Relayed)
                    .then(|| {
                        conns
                            .values()
                            .find_map(|c| relay_of(&c.addr).and_then(|r| self.relay_limits.get(&r)))
                            .or_else(|| self.inbound_limits.get(peer))
                            .copied()
                    })
                    .flatten();
                PeerInfo {
                    peer_id: peer.to_string(),
                    addrs: conns.values().map(|c| c.addr.to_string()).collect(),
                    connection: best,
                    rtt_ms: self.rtt.get(peer).map(|d| d.as_secs_f64() * 1000.0),
                    agent: self.agents.get(peer).cloned(),
                    circuit_bytes,
                }
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        NodeInfo {
            peer_id: local.to_string(),
            listen_addrs: self.swarm.listeners().map(with_p2p).collect(),
            external_addrs: self.swarm.external_addresses().map(with_p2p).collect(),
            nat_status: match self.nat_status {
                autonat::NatStatus::Public(_) => "public",
                autonat::NatStatus::Private => "private",
                autonat::NatStatus::Unknown => "unknown",
            }
            .into(),
            relays: self.reservations.keys().map(|p| p.to_string()).collect(),
            peerlog_relays: self.reservations.keys().filter(|p| self.is_peerlog(p)).map(|p| p.to_string()).collect(),
            peers,
            reachability: reachability.into(),
            dht_mode: match self.swarm.behaviour().kad.mode() {
                kad::Mode::Server => "server",
                kad::Mode::Client => "client",
            }
            .into(),
            dht_peers,
            network: if public_dht_peers.is_some() { "public" } else { "private" }.into(),
            public_dht_peers,
            bootstrap_peers: self.bootstrap.len(),
            bootstrap_connected,
            warnings: self.warnings(reachability, dht_peers + public_dht_peers.unwrap_or(0), bootstrap_connected),
            holepunch_ok: self.holepunches.0,
            holepunch_failed: self.holepunches.1,
        }
    }

    fn dht_peers(&mut self) -> usize {
        self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum()
    }

    fn public_dht(&self) -> bool {
        self.swarm.behaviour().amino.is_enabled()
    }

    /// See [`NodeInfo::reachability`].
    fn reachability(&self) -> &'static str {
        if self.has_public_external() {
            "public"
        } else if !self.accepted_relays.is_empty() {
            "relayed"
        } else if self.connections.values().flat_map(|c| c.values()).any(|c| reach(&c.addr) == Reach::Public) {
            "behind_nat"
        } else if !self.connections.is_empty() {
            "lan_only"
        } else {
            "no_peers"
        }
    }

    /// What keeps peers from finding or reaching us, in plain words (`dht_peers`: in
    /// both DHTs' routing tables).
    fn warnings(&self, reachability: &str, dht_peers: usize, bootstrap_connected: usize) -> Vec<String> {
        let mut out = Vec::new();
        let beyond_lan = !matches!(reachability, "lan_only" | "no_peers");
        // Routing tables hold the bootstrap addresses whether they answer or not: what counts
        // is a DHT server that identified itself, lately.
        let answered = self.dht_contact.values().any(|t| t.elapsed() < DHT_CONTACT_FRESH);
        if self.public_dht() && !beyond_lan && !answered && bootstrap_connected == 0 {
            out.push(format!(
                "none of the {} public DHT bootstrap node(s) answers, and no other DHT peer is known: rooms cannot be found beyond the LAN; check this machine's internet access and DNS, or add a reachable peerlog node with --bootstrap",
                self.public_bootstrap.len()
            ));
        } else if self.public_dht() {
            // Connected to the public DHT: no bootstrap node of our own is needed.
        } else if self.bootstrap.is_empty() && !beyond_lan {
            out.push(
                "no bootstrap node is configured: this daemon finds room peers on its LAN only (mDNS); \
                 add one with --bootstrap or `bootstrap` in the config to reach others"
                    .to_string(),
            );
        } else if !self.bootstrap.is_empty() && bootstrap_connected == 0 && dht_peers == 0 {
            out.push(format!(
                "none of the {} bootstrap node(s) is reachable and the DHT has no peers: rooms cannot be found beyond the LAN; check the bootstrap addresses and this machine's network",
                self.bootstrap.len()
            ));
        }
        if reachability == "behind_nat" && self.needs_relay() {
            out.push(
                "behind NAT with no relay reservation: peers behind other NATs cannot reach this daemon until a relay is found"
                    .to_string(),
            );
        }
        out
    }

    fn emit(&self, event: NodeEvent) {
        // No subscriber is fine: nobody is interested yet.
        let _ = self.events.send(event);
    }

    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.metrics.record(&event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                if is_relayed(&address) {
                    // Reachable through the relay: say so in provider records and identify.
                    self.swarm.add_external_address(address);
                } else {
                    self.publish_listen_addrs();
                }
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if is_relayed(&address) {
                    self.swarm.remove_external_address(&address);
                } else {
                    self.publish_listen_addrs();
                }
            }
            SwarmEvent::ListenerClosed { listener_id, reason, addresses } => {
                for addr in addresses.iter().filter(|a| is_relayed(a)) {
                    self.swarm.remove_external_address(addr);
                }
                if let Some(relay) = self.reservations.iter().find(|(_, id)| **id == listener_id).map(|(p, _)| *p) {
                    warn!(%relay, ?reason, "relay reservation ended");
                    self.reservations.remove(&relay);
                    self.accepted_relays.remove(&relay);
                    // Ask again only after identify says it is a relay again.
                    self.relay_candidates.remove(&relay);
                }
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "external address confirmed");
                self.update_dht_mode();
            }
            SwarmEvent::ExternalAddrExpired { .. } => self.update_dht_mode(),
            SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
                let kind = kind_of(&endpoint);
                let before = self.best_kind(&peer_id);
                if endpoint.is_dialer() && !is_relayed(endpoint.get_remote_address()) {
                    self.remember(peer_id, endpoint.get_remote_address().clone());
                }
                let conns = self.connections.entry(peer_id).or_default();
                conns.insert(connection_id, Connection { addr: connection_addr(&endpoint), kind });
                debug!(peer = %peer_id, ?kind, "connection established");
                for waiter in self.pending_connects.remove(&peer_id).unwrap_or_default() {
                    let _ = waiter.send(Ok(()));
                }
                match before {
                    None => self.emit(NodeEvent::Connected { peer: peer_id, kind }),
                    Some(b) if kind_rank(kind) < kind_rank(b) => {
                        self.emit(NodeEvent::ConnectionChanged { peer: peer_id, kind })
                    }
                    Some(_) => {}
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, connection_id, .. } => {
                let before = self.best_kind(&peer_id);
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                    if conns.is_empty() {
                        self.connections.remove(&peer_id);
                        self.rtt.remove(&peer_id);
                        self.emit(NodeEvent::Disconnected { peer: peer_id });
                    } else if let Some(now) = self.best_kind(&peer_id).filter(|k| Some(*k) != before) {
                        self.emit(NodeEvent::ConnectionChanged { peer: peer_id, kind: now });
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "outgoing connection failed");
                if let Some(peer) = peer_id.filter(|p| !self.swarm.is_connected(p)) {
                    for waiter in self.pending_connects.remove(&peer).unwrap_or_default() {
                        let _ = waiter.send(Err(error.to_string()));
                    }
                }
            }
            SwarmEvent::Behaviour(event) => self.handle_behaviour(event),
            _ => {}
        }
    }

    fn handle_behaviour(&mut self, event: BehaviourEvent) {
        use libp2p::metrics::Recorder;
        match &event {
            BehaviourEvent::Identify(e) => self.metrics.record(e),
            BehaviourEvent::Ping(e) => self.metrics.record(e),
            BehaviourEvent::Kad(e) => self.metrics.record(e),
            BehaviourEvent::Dcutr(e) => self.metrics.record(e),
            BehaviourEvent::RelayServer(e) => self.metrics.record(e),
            _ => {}
        }
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, connection_id }) => {
                self.agents.insert(peer_id, info.agent_version.clone());
                let speaks_kad = info.protocols.contains(&StreamProtocol::new(KAD_PROTOCOL));
                let speaks_amino = info.protocols.contains(&StreamProtocol::new(AMINO_PROTOCOL));
                for (dht, speaks) in [(Dht::Peerlog, speaks_kad), (Dht::Public, speaks_amino)] {
                    if speaks {
                        self.dht_contact.insert(dht, Instant::now());
                    }
                }
                for addr in &info.listen_addrs {
                    if !addr.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())) {
                        self.remember(peer_id, addr.clone());
                    }
                    if speaks_kad && !is_relayed(addr) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
                    }
                    // The public DHT's routing table holds public addresses only, as
                    // kubo's does: a private one is someone else's LAN.
                    if speaks_amino && !is_relayed(addr) && reach(addr) == Reach::Public {
                        if let Some(amino) = self.dht(Dht::Public) {
                            amino.add_address(&peer_id, addr.clone());
                        }
                    }
                }
                if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
                    // A relay: reach it where this connection reached it, if we dialed it.
                    let addr = self
                        .connections
                        .get(&peer_id)
                        .and_then(|c| c.get(&connection_id))
                        .map(|c| c.addr.clone())
                        .filter(|a| !is_relayed(a));
                    if let Some(addr) = addr {
                        let transport: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
                        if self.relay_candidates.insert(peer_id, transport).is_none() {
                            self.maintain_reservations();
                        }
                    }
                }
            }
            BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result }) => match result {
                Ok(connection_id) => {
                    info!(peer = %remote_peer_id, "hole punch succeeded: direct connection");
                    self.holepunches.0 += 1;
                    if let Some(c) = self.connections.get_mut(&remote_peer_id).and_then(|c| c.get_mut(&connection_id)) {
                        c.kind = ConnectionKind::Holepunched;
                    }
                    self.emit(NodeEvent::ConnectionChanged { peer: remote_peer_id, kind: ConnectionKind::Holepunched });
                    // Relay circuits are small and short: move everything to the direct path.
                    let relayed: Vec<ConnectionId> = self
                        .connections
                        .get(&remote_peer_id)
                        .map(|c| {
                            c.iter().filter(|(_, c)| c.kind == ConnectionKind::Relayed).map(|(id, _)| *id).collect()
                        })
                        .unwrap_or_default();
                    for id in relayed {
                        self.swarm.close_connection(id);
                    }
                }
                Err(e) => {
                    info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying on the relay");
                    self.holepunches.1 += 1;
                    self.emit(NodeEvent::HolePunchFailed { peer: remote_peer_id });
                }
            },
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                info!(relay = %relay_peer_id, renewal, "relay reservation accepted");
                self.accepted_relays.insert(relay_peer_id);
                if !renewal && self.is_peerlog(&relay_peer_id) {
                    self.leave_limited_relays();
                }
                if !renewal {
                    self.reprovide_publicly();
                }
            }
            BehaviourEvent::RelayClient(relay::client::Event::OutboundCircuitEstablished { relay_peer_id, limit }) => {
                let bytes = limit.and_then(|l| l.data_in_bytes()).unwrap_or(u64::MAX);
                self.relay_limits.insert(relay_peer_id, bytes);
            }
            BehaviourEvent::RelayClient(relay::client::Event::InboundCircuitEstablished { src_peer_id, limit }) => {
                let bytes = limit.and_then(|l| l.data_in_bytes()).unwrap_or(u64::MAX);
                if self.inbound_limits.len() < ADDRESS_BOOK_PEERS || self.inbound_limits.contains_key(&src_peer_id) {
                    self.inbound_limits.insert(src_peer_id, bytes);
                }
            }
            BehaviourEvent::Kad(event) => self.handle_kad(Dht::Peerlog, event),
            BehaviourEvent::Amino(event) => self.handle_kad(Dht::Public, event),
            BehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. }) => {
                self.rtt.insert(peer, rtt);
            }
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                info!(status = ?new, "NAT status changed");
                self.nat_status = new;
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut seen = HashSet::new();
                for (peer, addr) in list {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    if seen.insert(peer) {
                        let opts = DialOpts::peer_id(peer)
                            .addresses(vec![addr])
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        let _ = self.swarm.dial(opts);
                        self.emit(NodeEvent::LanPeer { peer });
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_kad(&mut self, dht: Dht, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed { id, result, step, stats } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                    let Some(&what) = self.lookups.get(&(dht, id)) else { return };
                    let local = *self.swarm.local_peer_id();
                    let peers: Vec<PeerId> = providers.into_iter().filter(|p| *p != local).collect();
                    for peer in &peers {
                        // Dial now: the providers' addresses live only inside this query.
                        let opts = DialOpts::peer_id(*peer).condition(PeerCondition::DisconnectedAndNotDialing).build();
                        if let Err(e) = self.swarm.dial(opts) {
                            debug!(%peer, error = %e, "cannot dial provider");
                        }
                    }
                    if step.last {
                        self.lookups.remove(&(dht, id));
                    }
                    match what {
                        Lookup::Room(key) if !peers.is_empty() => self.emit(NodeEvent::ProvidersFound { key, peers }),
                        // Relays: identify says they relay once connected, and they are
                        // preferred as peerlog peers.
                        _ => {}
                    }
                }
                kad::QueryResult::GetProviders(_) if step.last => {
                    self.lookups.remove(&(dht, id));
                }
                kad::QueryResult::StartProviding(r) => {
                    let key = match &r {
                        Ok(ok) => ok.key.clone(),
                        Err(e) => e.key().clone(),
                    };
                    let reached = r.is_ok() && stats.num_successes() > 0;
                    if let Some(a) = self.announcements.get_mut(&(dht, key)).filter(|a| a.pending == Some(id)) {
                        a.pending = None;
                        if reached {
                            a.reached = Some(Instant::now());
                        }
                    }
                    if !reached {
                        debug!(?dht, result = ?r, "provider announcement reached no DHT server");
                    }
                }
                kad::QueryResult::GetClosestPeers(r) if step.last => {
                    if let Some(reply) = self.dht_probes.remove(&(dht, id)) {
                        let _ = reply.send(match r {
                            Ok(ok) if !ok.peers.is_empty() => Ok(ok.peers.len()),
                            Ok(_) => Err("no DHT server answered".into()),
                            Err(e) => Err(e.to_string()),
                        });
                    }
                }
                _ => {}
            },
            kad::Event::ModeChanged { new_mode } => info!(?dht, %new_mode, "DHT mode changed"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{reach, DiscoveryKey, Reach};

    #[test]
    fn a_room_is_announced_under_a_sha2_256_multihash() {
        let discovery_key = DiscoveryKey([7u8; 32]);
        let key = super::provider_key(&discovery_key).to_vec();
        assert_eq!(key.len(), 34);
        assert_eq!(&key[..2], &[0x12, 0x20], "sha2-256 multihash prefix");
        assert!(!key.windows(32).any(|w| w == discovery_key.0), "the discovery key itself is not published");
        assert_ne!(super::provider_key(&DiscoveryKey([8u8; 32])).to_vec(), key);
    }

    #[test]
    fn public_provider_keys_change_every_day_and_overlap_at_the_boundary() {
        use super::{public_provider_key, public_provider_keys, PUBLIC_KEY_EPOCH_SECS as DAY};
        let discovery_key = DiscoveryKey([7u8; 32]);
        let day = 20_000;
        let noon = day * DAY + DAY / 2;
        assert_eq!(public_provider_keys(&discovery_key, noon), vec![public_provider_key(&discovery_key, day)]);
        assert_ne!(
            public_provider_key(&discovery_key, day),
            public_provider_key(&discovery_key, day + 1),
            "the key rotates daily"
        );
        assert_ne!(
            public_provider_key(&discovery_key, day).to_vec(),
            super::provider_key(&discovery_key).to_vec(),
            "not the peerlog DHT's key"
        );
        let key = public_provider_key(&discovery_key, day).to_vec();
        assert_eq!((key.len(), &key[..2]), (34, &[0x12u8, 0x20][..]), "a sha2-256 multihash (CIDv0)");
        // Half an hour before midnight: today's and tomorrow's; half an hour after: both again.
        let late = public_provider_keys(&discovery_key, (day + 1) * DAY - 1800);
        assert_eq!(late, vec![public_provider_key(&discovery_key, day), public_provider_key(&discovery_key, day + 1)]);
        let early = public_provider_keys(&discovery_key, (day + 1) * DAY + 1800);
        assert_eq!(early, vec![public_provider_key(&discovery_key, day + 1), public_provider_key(&discovery_key, day)]);
        // Another room never shares a key.
        assert!(
            !public_provider_keys(&DiscoveryKey([8u8; 32]), noon).contains(&public_provider_key(&discovery_key, day))
        );
        let relay = super::relay_provider_key().to_vec();
        assert_eq!((relay.len(), &relay[..2]), (34, &[0x12u8, 0x20][..]));
    }

    #[test]
    fn addresses_are_published_by_reach() {
        let r = |a: &str| reach(&a.parse().expect("multiaddr"));
        assert_eq!(r("/ip4/8.8.8.8/tcp/4001"), Reach::Public);
        assert_eq!(r("/dns4/boot.example.org/tcp/4001"), Reach::Public);
        assert_eq!(r("/ip6/2a01:4f8::1/udp/4001/quic-v1"), Reach::Public);
        for private in [
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/192.168.1.5/tcp/1",
            "/ip4/100.101.102.103/tcp/1",
            "/ip6/fd7a:115c:a1e0::1/tcp/1",
        ] {
            assert_eq!(r(private), Reach::Private, "{private}");
        }
        assert_eq!(r("/ip4/127.0.0.1/tcp/1"), Reach::Loopback);
        assert_eq!(r("/ip6/::1/tcp/1"), Reach::Loopback);
        for nowhere in [
            "/ip4/169.254.3.4/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip4/0.0.0.0/tcp/1",
            "/ip6/::/tcp/1",
            "/ip4/224.0.0.251/udp/5353",
        ] {
            assert_eq!(r(nowhere), Reach::Nowhere, "{nowhere}");
        }
        // 100.64/10 is CGNAT (Tailscale); its neighbours are public.
        assert_eq!(r("/ip4/100.63.255.255/tcp/1"), Reach::Public);
        assert_eq!(r("/ip4/100.128.0.1/tcp/1"), Reach::Public);
    }
}
