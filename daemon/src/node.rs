//! The libp2p node. One task (the [`EventLoop`]) owns the `Swarm`; everyone else holds a
//! [`NodeHandle`] that sends [`Command`]s over a bounded channel and subscribes to
//! [`NodeEvent`]s on a broadcast channel. Pattern: rust-libp2p `examples/file-sharing`.
//!
//! Behaviours: Kademlia on `/peerlog/kad/1.0.0` (room discovery by provider records),
//! identify (feeds peers' listen addresses into Kademlia), ping (keep-alive, RTT), relay
//! client + DCUtR + AutoNAT (NAT traversal), mDNS (LAN, optional), and `libp2p-stream`
//! (replication streams, see `replicate`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

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
use peerlog_proto::wire::Key32;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{DhtMode, RelayServerMode};

/// Kademlia protocol name: a DHT of peerlog nodes only.
pub const KAD_PROTOCOL: &str = "/peerlog/kad/1.0.0";
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
    Build(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        message: String,
    },
    /// A peer could not be reached.
    #[error("cannot connect to {peer}: {message}")]
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why.
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

/// How a connection reaches the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    /// Plain connection, one side dialed the other.
    Direct,
    /// Direct connection made by DCUtR hole punching.
    Holepunched,
    /// Through a circuit relay.
    Relayed,
}

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
    /// Configured bootstrap nodes.
    pub bootstrap_peers: usize,
    /// Bootstrap nodes connected now.
    pub bootstrap_connected: usize,
    /// Plain sentences about what keeps peers from finding or reaching us, if anything.
    pub warnings: Vec<String>,
}

/// Requests to the event loop.
#[derive(Debug)]
enum Command {
    Provide { key: Key32 },
    StopProviding { key: Key32 },
    FindProviders { key: Key32 },
    Dial { addr: Multiaddr },
    Disconnect { peer: PeerId },
    Connect { peer: PeerId, reply: oneshot::Sender<Result<(), String>> },
    AddAddresses { peer: PeerId, addrs: Vec<Multiaddr> },
    Addresses { peers: Vec<PeerId>, reply: oneshot::Sender<Vec<(PeerId, Vec<Multiaddr>)>> },
    Info { reply: oneshot::Sender<NodeInfo> },
    ProbeDht { reply: oneshot::Sender<Result<usize, String>> },
}

/// What the node tells its subscribers.
#[derive(Clone, Debug)]
pub enum NodeEvent {
    /// Providers of a DHT key were found (ourselves excluded); the node dials them.
    ProvidersFound {
        /// The key (a room's discovery key).
        key: Key32,
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
    pub async fn provide(&self, key: Key32) -> Result<(), NodeError> {
        self.send(Command::Provide { key }).await
    }

    /// Stops announcing `key`.
    pub async fn stop_providing(&self, key: Key32) -> Result<(), NodeError> {
        self.send(Command::StopProviding { key }).await
    }

    /// Looks up the providers of `key`; results arrive as [`NodeEvent::ProvidersFound`].
    pub async fn find_providers(&self, key: Key32) -> Result<(), NodeError> {
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

    /// Asks the DHT for the peers closest to us: how many answered, or why none did.
    pub async fn probe_dht(&self) -> Result<Result<usize, String>, NodeError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::ProbeDht { reply }).await?;
        rx.await.map_err(|_| NodeError::Shutdown)
    }
}

struct Connection {
    addr: Multiaddr,
    kind: ConnectionKind,
}

/// The task that owns the swarm.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    /// Open connections per peer.
    connections: HashMap<PeerId, HashMap<ConnectionId, Connection>>,
    /// Last ping RTT per peer.
    rtt: HashMap<PeerId, Duration>,
    /// Agent strings from identify.
    agents: HashMap<PeerId, String>,
    /// Provider lookups in flight.
    provider_queries: HashMap<kad::QueryId, Key32>,
    /// Keys we provide (re-announced on `Provide`).
    provided: HashSet<Key32>,
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
    dht_probes: HashMap<kad::QueryId, oneshot::Sender<Result<usize, String>>>,
    /// `connect` calls waiting for a connection to a peer.
    pending_connects: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
}

/// Builds the swarm, starts listening, waits (bounded) for the listen addresses, and
/// returns the handle and the event loop to spawn.
pub async fn build(keypair: Keypair, config: &NodeConfig) -> Result<(NodeHandle, EventLoop), NodeError> {
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
        .map_err(|e| NodeError::Build(e.to_string()))?
        .with_quic()
        .with_dns()
        .map_err(|e| NodeError::Build(e.to_string()))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NodeError::Build(e.to_string()))?
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
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("peerlog/{}", env!("CARGO_PKG_VERSION")))
                    .with_push_listen_addr_updates(true),
            );
            let mdns =
                if mdns_on { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
            Ok(Behaviour {
                kad,
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
        .map_err(|e| NodeError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();

    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NodeError::Listen { addr: addr.clone(), message: e.to_string() })?;
        listeners.insert(id);
    }
    let streams = swarm.behaviour().stream.new_control();
    let (commands_tx, commands) = mpsc::channel(COMMAND_CAPACITY);
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let mut event_loop = EventLoop {
        swarm,
        commands,
        events: events.clone(),
        connections: HashMap::new(),
        rtt: HashMap::new(),
        agents: HashMap::new(),
        provider_queries: HashMap::new(),
        provided: HashSet::new(),
        nat_status: autonat::NatStatus::Unknown,
        dht_mode,
        reservations: HashMap::new(),
        relay_candidates: HashMap::new(),
        address_book: HashMap::new(),
        declared_external: config.external_addrs.clone(),
        announce_private: config.announce_private,
        bootstrap: config
            .bootstrap
            .iter()
            .filter_map(|a| match a.iter().last() {
                Some(Protocol::P2p(peer)) => Some(peer),
                _ => None,
            })
            .collect(),
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
        event_loop.add_bootstrap(addr.clone());
    }
    let handle = NodeHandle { commands: commands_tx, events, peer_id, streams };
    Ok((handle, event_loop))
}

/// The DHT key under which a room (by its discovery key) is announced: a sha2-256
/// multihash (`0x12 0x20` + digest) of a domain-separated hash of the discovery key.
/// Standard Kademlia servers (go-libp2p-kad-dht, js-libp2p's kad-dht) refuse provider
/// records whose key is not a multihash/CID ("Invalid CID"); a bare sha2-256 multihash is
/// both a valid multihash and a CIDv0. Nothing about the room but this hash is published.
pub fn provider_key(discovery_key: &Key32) -> kad::RecordKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"peerlog/dht/room/v1");
    h.update(discovery_key);
    let mut key = vec![0x12, 0x20];
    key.extend_from_slice(&h.finalize());
    kad::RecordKey::new(&key)
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

    fn on_swarm_event(&mut self, event: libp2p::swarm::FromSwarm) {
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
                _ = maintenance.tick() => self.maintain_reservations(),
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.handle_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.handle_event(event),
            }
        }
        debug!("node event loop stopped");
    }

    fn add_bootstrap(&mut self, addr: Multiaddr) {
        let Some(Protocol::P2p(peer)) = addr.iter().last() else {
            warn!(%addr, "bootstrap address has no /p2p/PEERID suffix; ignored");
            return;
        };
        let transport: Multiaddr = addr.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect();
        self.swarm.behaviour_mut().kad.add_address(&peer, transport);
        if let Err(e) = self.swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Provide { key } => {
                self.provided.insert(key);
                if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(provider_key(&key)) {
                    warn!(error = %e, "cannot store provider record");
                }
            }
            Command::StopProviding { key } => {
                self.provided.remove(&key);
                self.swarm.behaviour_mut().kad.stop_providing(&provider_key(&key));
            }
            Command::FindProviders { key } => {
                let id = self.swarm.behaviour_mut().kad.get_providers(provider_key(&key));
                self.provider_queries.insert(id, key);
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
            Command::ProbeDht { reply } => {
                let me = *self.swarm.local_peer_id();
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(me);
                self.dht_probes.insert(id, reply);
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

    /// Reserves on relay candidates until `MAX_RESERVATIONS` are held.
    fn maintain_reservations(&mut self) {
        if !self.needs_relay() {
            return;
        }
        let candidates: Vec<(PeerId, Multiaddr)> = self
            .relay_candidates
            .iter()
            .filter(|(p, _)| !self.reservations.contains_key(p))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
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

    /// In auto mode: DHT server only with a declared or confirmed public external address.
    fn update_dht_mode(&mut self) {
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
            peers,
            reachability: reachability.into(),
            dht_mode: match self.swarm.behaviour().kad.mode() {
                kad::Mode::Server => "server",
                kad::Mode::Client => "client",
            }
            .into(),
            dht_peers,
            bootstrap_peers: self.bootstrap.len(),
            bootstrap_connected,
            warnings: self.warnings(reachability, dht_peers, bootstrap_connected),
        }
    }

    fn dht_peers(&mut self) -> usize {
        self.swarm.behaviour_mut().kad.kbuckets().map(|b| b.num_entries()).sum()
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

    /// What keeps peers from finding or reaching us, in plain words.
    fn warnings(&self, reachability: &str, dht_peers: usize, bootstrap_connected: usize) -> Vec<String> {
        let mut out = Vec::new();
        let beyond_lan = !matches!(reachability, "lan_only" | "no_peers");
        if self.bootstrap.is_empty() && !beyond_lan {
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
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
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
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, connection_id }) => {
                self.agents.insert(peer_id, info.agent_version.clone());
                let kad_protocol = StreamProtocol::new(KAD_PROTOCOL);
                let speaks_kad = info.protocols.contains(&kad_protocol);
                for addr in &info.listen_addrs {
                    if !addr.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())) {
                        self.remember(peer_id, addr.clone());
                    }
                    if speaks_kad && !is_relayed(addr) {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr.clone());
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
                    self.emit(NodeEvent::HolePunchFailed { peer: remote_peer_id });
                }
            },
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted { relay_peer_id, .. }) => {
                info!(relay = %relay_peer_id, "relay reservation accepted");
                self.accepted_relays.insert(relay_peer_id);
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
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed { id, result, step, .. }) => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                    let Some(&key) = self.provider_queries.get(&id) else { return };
                    let local = *self.swarm.local_peer_id();
                    let peers: Vec<PeerId> = providers.into_iter().filter(|p| *p != local).collect();
                    for peer in &peers {
                        // Dial now: the providers' addresses live only inside this query.
                        let opts = DialOpts::peer_id(*peer).condition(PeerCondition::DisconnectedAndNotDialing).build();
                        if let Err(e) = self.swarm.dial(opts) {
                            debug!(%peer, error = %e, "cannot dial provider");
                        }
                    }
                    if !peers.is_empty() {
                        self.emit(NodeEvent::ProvidersFound { key, peers });
                    }
                }
                kad::QueryResult::GetProviders(_) if step.last => {
                    self.provider_queries.remove(&id);
                }
                kad::QueryResult::StartProviding(Err(e)) => debug!(error = ?e, "provider announcement incomplete"),
                kad::QueryResult::GetClosestPeers(r) if step.last => {
                    if let Some(reply) = self.dht_probes.remove(&id) {
                        let _ = reply.send(match r {
                            Ok(ok) if !ok.peers.is_empty() => Ok(ok.peers.len()),
                            Ok(_) => Err("no DHT server answered".into()),
                            Err(e) => Err(e.to_string()),
                        });
                    }
                }
                _ => {}
            },
            BehaviourEvent::Kad(kad::Event::ModeChanged { new_mode }) => info!(%new_mode, "DHT mode changed"),
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
}

#[cfg(test)]
mod tests {
    use super::{reach, Reach};

    #[test]
    fn a_room_is_announced_under_a_sha2_256_multihash() {
        let dk = [7u8; 32];
        let key = super::provider_key(&dk).to_vec();
        assert_eq!(key.len(), 34);
        assert_eq!(&key[..2], &[0x12, 0x20], "sha2-256 multihash prefix");
        assert!(!key.windows(32).any(|w| w == dk), "the discovery key itself is not published");
        assert_ne!(super::provider_key(&[8u8; 32]).to_vec(), key);
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
