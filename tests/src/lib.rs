//! Test harness: real peerlog daemons in this process on loopback (ephemeral ports,
//! temporary data dirs), driven through their WebSocket API; and a raw replication peer
//! that speaks `/peerlog/replicate/2` frame by frame, to send what a daemon never would.

pub mod browser;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use peerlog::client::Client;
use peerlog::config::{Config, DhtMode, Network};
use peerlog::keys::{auth_mac, RoomKeys};
use peerlog::node::{self, NodeConfig, NodeHandle};
use peerlog::Daemon;
use peerlog_proto::api::messages::MessageInfo;
use peerlog_proto::api::{events, messages, peers, rooms, NoParams};
use peerlog_proto::wire::{DiscoveryKey, Frame, Key32, PROTOCOL};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

/// Default wait for anything over the network in tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut` for at most `limit`, failing with a message naming what did not happen.
pub async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// The config every test daemon starts from: the shipped defaults, with only what a test on
/// one machine must change (data dir, ports on loopback, no mDNS, quicker re-discovery, and
/// the private network: no test sends a packet to the real public DHT).
/// The DHT mode is the default (auto): a daemon on loopback is a DHT client, as a user's
/// daemon behind a home router is. Tests that need a DHT server start a bootstrap node.
pub fn test_config(data_dir: &Path) -> Config {
    Config {
        data_dir: Some(data_dir.to_path_buf()),
        api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("literal multiaddr")],
        mdns: false,
        discovery_interval_secs: 2,
        // Never a packet to the real public DHT from a test (tests that are about the public
        // DHT point `public_bootstrap` at simulated nodes and say so).
        network: Network::Private,
        ..Config::default()
    }
}

/// A daemon under test with its own data dir.
pub struct TestDaemon {
    /// The running daemon (None while stopped).
    pub daemon: Option<Daemon>,
    /// Its configuration.
    pub config: Config,
    dir: tempfile::TempDir,
}

impl TestDaemon {
    /// Starts a daemon with the test config, changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path());
        tweak(&mut config);
        let daemon = Daemon::start(config.clone()).await.context("daemon start")?;
        Ok(Self { daemon: Some(daemon), config, dir })
    }

    /// Starts a daemon with the test config.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a bootstrap node the way the README's private-network recipe runs one
    /// (`--dht-mode server` at an address without a public external address): a DHT server
    /// that others bootstrap from. Also a daemon like any other (it can join rooms).
    pub async fn start_bootstrap_node() -> Result<Self> {
        Self::start_with(|c| c.dht_mode = DhtMode::Server).await
    }

    /// Starts a daemon that bootstraps from `boot` (see [`TestDaemon::start_bootstrap_node`]).
    pub async fn start_bootstrapped(boot: &TestDaemon) -> Result<Self> {
        let addr = boot.p2p_addr().await?;
        Self::start_with(|c| c.bootstrap = vec![addr]).await
    }

    /// The running daemon (an error once stopped).
    pub fn running(&self) -> Result<&Daemon> {
        self.daemon.as_ref().context("daemon is stopped")
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// A new API client with the API token (what the web UI and scripts use).
    pub async fn client(&self) -> Result<Client> {
        let d = self.running()?;
        Ok(Client::connect(d.api_addr(), &d.token()).await?)
    }

    /// A new API client with the CLI credential (may name files on this machine).
    pub async fn cli_client(&self) -> Result<Client> {
        let d = self.running()?;
        Ok(Client::connect(d.api_addr(), d.cli_token()).await?)
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> Result<PeerId> {
        Ok(self.running()?.peer_id())
    }

    /// The daemon's first listen address with `/p2p/PEERID`.
    pub async fn p2p_addr(&self) -> Result<Multiaddr> {
        let info = self.running()?.service().node_info().await?;
        let a = info.listen_addrs.first().context("daemon has no listen address")?;
        Ok(a.parse()?)
    }

    /// Stops the daemon (clean shutdown).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            within(WAIT, "daemon shutdown", d.shutdown()).await??;
        }
        Ok(())
    }

    /// Starts the daemon again on the same data dir and config.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.daemon = Some(Daemon::start(self.config.clone()).await?);
        Ok(())
    }
}

/// Joins a room by passphrase; returns the room id.
pub async fn join(c: &mut Client, passphrase: &str) -> Result<String> {
    let params = rooms::JoinParams { passphrase: Some(passphrase.into()), ..Default::default() };
    Ok(c.request::<rooms::Join>(&params).await?.room.id)
}

/// Sends a message; returns its id.
pub async fn send(c: &mut Client, room: &str, text: &str) -> Result<String> {
    let params = messages::SendParams { room: room.into(), text: text.into(), reply_to: None, mentions: Vec::new() };
    Ok(c.request::<messages::Send>(&params).await?.message.context("messages.send returned no message")?.id)
}

/// The whole history of a room, oldest first, fetched page by page.
pub async fn full_history(c: &mut Client, room: &str) -> Result<Vec<MessageInfo>> {
    let mut all: Vec<MessageInfo> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let params = messages::HistoryParams { room: room.into(), before: before.clone(), limit: Some(500) };
        let mut page = c.request::<messages::History>(&params).await?.messages;
        let Some(first) = page.first() else { break };
        before = Some(first.id.clone());
        page.append(&mut all);
        all = page;
    }
    Ok(all)
}

/// Sends `texts` as one batch (`messages.send_batch`).
pub async fn send_batch(c: &mut Client, room: &str, texts: &[String]) -> Result<()> {
    let params = messages::SendBatchParams { room: room.into(), texts: texts.to_vec() };
    c.request::<messages::SendBatch>(&params).await?;
    Ok(())
}

/// Chooses the events this connection receives (`subscribe`).
pub async fn subscribe(c: &mut Client, names: &[&str]) -> Result<()> {
    let params =
        peerlog_proto::api::files::SubscribeParams { events: Some(names.iter().map(|n| n.to_string()).collect()) };
    c.request::<peerlog_proto::api::files::Subscribe>(&params).await?;
    Ok(())
}

/// The texts of a room's whole history, oldest first (messages without text left out).
pub async fn texts(c: &mut Client, room: &str) -> Result<Vec<String>> {
    Ok(full_history(c, room).await?.into_iter().filter_map(|m| m.text).collect())
}

/// The newest `limit` messages of a room (one page), oldest first.
pub async fn history(c: &mut Client, room: &str, limit: usize) -> Result<Vec<MessageInfo>> {
    let params = messages::HistoryParams { room: room.into(), before: None, limit: Some(limit) };
    Ok(c.request::<messages::History>(&params).await?.messages)
}

/// The rooms joined here (`rooms.list`).
pub async fn rooms_list(c: &mut Client) -> Result<Vec<rooms::RoomInfo>> {
    Ok(c.request::<rooms::List>(&NoParams {}).await?.rooms)
}

/// The members of a room (`rooms.members`).
pub async fn members(c: &mut Client, room: &str) -> Result<Vec<peers::Member>> {
    Ok(c.request::<peers::Members>(&rooms::RoomParam { room: room.into() }).await?.members)
}

/// The peers with a session (`peers.list`), in one room or all.
pub async fn peers_list(c: &mut Client, room: Option<&str>) -> Result<Vec<peers::RoomPeer>> {
    Ok(c.request::<peers::List>(&peers::OptRoomParam { room: room.map(String::from) }).await?.peers)
}

/// `node.info`.
pub async fn node_info(c: &mut Client) -> Result<peerlog_proto::api::node::NodeInfo> {
    Ok(c.request::<peerlog_proto::api::node::Info>(&NoParams {}).await?)
}

/// Creates a room with a random secret; returns its id and member invite.
pub async fn create(c: &mut Client, name: &str) -> Result<(String, String)> {
    let r = c.request::<rooms::Create>(&rooms::CreateParams { name: Some(name.into()) }).await?;
    Ok((r.room.id, r.invite.context("rooms.create returned no invite")?))
}

/// Joins a room by invite (or seed capability: `rooms.join` takes member invites only);
/// returns the room.
pub async fn join_invite(c: &mut Client, invite: &str) -> Result<rooms::RoomInfo> {
    let params = rooms::JoinParams { invite: Some(invite.into()), ..Default::default() };
    Ok(c.request::<rooms::Join>(&params).await?.room)
}

/// A room's member invite (`rooms.invite`).
pub async fn invite(c: &mut Client, room: &str) -> Result<String> {
    Ok(c.request::<rooms::Invite>(&rooms::InviteParams { room: room.into(), kind: None }).await?.invite)
}

/// Sets this daemon's display name (`profile.set`).
pub async fn set_name(c: &mut Client, name: &str) -> Result<()> {
    c.request::<peers::SetProfile>(&peers::ProfileParams { display_name: name.into() }).await?;
    Ok(())
}

/// Waits until `c` has seen `text` arrive as a `message` event in `room`.
pub async fn wait_for_text(c: &mut Client, room: &str, text: &str, limit: Duration) -> Result<MessageInfo> {
    let what = format!("message {text:?} in room {room}");
    Ok(c.wait_for::<events::Message>(limit, &what, |m| m.room == room && m.text.as_deref() == Some(text)).await?)
}

/// A bare libp2p node that speaks the replication protocol frame by frame.
pub struct RawPeer {
    /// Its node.
    pub node: NodeHandle,
    cancel: CancellationToken,
}

impl Drop for RawPeer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One raw replication stream.
pub struct RawSession {
    io: Framed<Compat<libp2p::Stream>, LengthDelimitedCodec>,
}

impl RawPeer {
    /// Starts the node on loopback.
    pub async fn start() -> Result<Self> {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let config = NodeConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: vec![],
            public_dht: None,
            mdns: false,
            announce_private: false,
            dht_mode: DhtMode::Client,
            provider_ttl: Duration::from_secs(60),
            relay_server: peerlog::config::RelayServerMode::Off,
            external_addrs: vec![],
            connection_limits: node::ConnectionLimits::default(),
            relay_circuit_bytes: 128 << 10,
            relay_circuit_duration: Duration::from_secs(120),
            relay_circuits: 16,
            relay_circuits_per_peer: 4,
        };
        let (node, event_loop) = node::build(keypair, &config).await?;
        let cancel = CancellationToken::new();
        tokio::spawn(event_loop.run(cancel.clone()));
        Ok(Self { node, cancel })
    }

    /// Opens a replication stream to `peer` at `addr`, with no handshake.
    pub async fn stream(&self, addr: Multiaddr, peer: PeerId) -> Result<RawSession> {
        self.stream_speaking(addr, peer, PROTOCOL).await
    }

    /// The same, for a given version of the protocol (`/peerlog/replicate/N`).
    pub async fn stream_speaking(&self, addr: Multiaddr, peer: PeerId, protocol: &'static str) -> Result<RawSession> {
        if !self.node.info().await?.peers.iter().any(|p| p.peer_id == peer.to_string()) {
            let mut events = self.node.subscribe();
            self.node.dial(addr).await?;
            within(WAIT, "the raw peer to connect to the daemon", async {
                loop {
                    match events.recv().await {
                        Ok(node::NodeEvent::Connected { peer: p, .. }) if p == peer => return Ok(()),
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(e) => return Err(anyhow!("node stopped: {e}")),
                    }
                }
            })
            .await??;
        }
        let mut control = self.node.streams();
        let stream =
            within(WAIT, "replication stream to open", control.open_stream(peer, StreamProtocol::new(protocol)))
                .await?
                .map_err(|e| anyhow!("open stream: {e}"))?;
        let codec = LengthDelimitedCodec::builder().max_frame_length(4 << 20).new_codec();
        Ok(RawSession { io: Framed::new(stream.compat(), codec) })
    }

    /// Opens a stream to `peer` at `addr` and runs Hello + Auth with `auth_key` for the room
    /// `discovery_key`. Returns the session, or the frame the daemon answered instead.
    pub async fn open(
        &self,
        addr: Multiaddr,
        peer: PeerId,
        discovery_key: DiscoveryKey,
        auth_key: Key32,
    ) -> Result<std::result::Result<RawSession, Frame>> {
        self.open_speaking(addr, peer, discovery_key, auth_key, PROTOCOL).await
    }

    /// [`RawPeer::open`] for a given version of the protocol.
    pub async fn open_speaking(
        &self,
        addr: Multiaddr,
        peer: PeerId,
        discovery_key: DiscoveryKey,
        auth_key: Key32,
        protocol: &'static str,
    ) -> Result<std::result::Result<RawSession, Frame>> {
        let mut s = self.stream_speaking(addr, peer, protocol).await?;
        let nonce: Key32 = [7; 32];
        let room_tag = peerlog::keys::room_tag(&discovery_key, &nonce, &self.node.peer_id(), &peer);
        s.send(&Frame::Hello { room_tag, nonce }).await?;
        let their_nonce = match s.recv().await? {
            Frame::Hello { nonce, .. } => nonce,
            other => return Ok(Err(other)),
        };
        let mac = auth_mac(&auth_key, &nonce, &their_nonce, &self.node.peer_id(), &peer);
        s.send(&Frame::Auth { mac }).await?;
        match s.recv().await? {
            Frame::Auth { .. } => {}
            other => return Ok(Err(other)),
        }
        Ok(Ok(s))
    }
}

impl RawSession {
    /// Sends bytes as one frame, whatever they hold.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.io.send(Bytes::from(bytes)).await?;
        Ok(())
    }

    /// Sends frames with one flush at the end.
    pub async fn send_many(&mut self, frames: impl IntoIterator<Item = Frame>) -> Result<()> {
        for f in frames {
            self.io.feed(Bytes::from(f.encode())).await?;
        }
        SinkExt::<Bytes>::flush(&mut self.io).await?;
        Ok(())
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &Frame) -> Result<()> {
        self.io.send(Bytes::from(frame.encode())).await?;
        Ok(())
    }

    /// Receives one frame (within [`WAIT`]).
    pub async fn recv(&mut self) -> Result<Frame> {
        match within(WAIT, "a frame from the daemon", self.io.next()).await? {
            Some(Ok(b)) => Ok(Frame::decode(&b)?),
            Some(Err(e)) => Err(e.into()),
            None => bail!("stream closed by the daemon"),
        }
    }

    /// Receives frames until one matches, or the stream ends.
    pub async fn recv_until(&mut self, what: &str, mut pred: impl FnMut(&Frame) -> bool) -> Result<Frame> {
        within(WAIT, what, async {
            loop {
                let f = self.recv().await?;
                if pred(&f) {
                    return Ok(f);
                }
            }
        })
        .await?
    }

    /// Reads until the stream ends: the frames, and whether it ended cleanly (the daemon
    /// closed it, FIN) rather than by a reset or another error.
    pub async fn read_to_end(&mut self) -> Result<(Vec<Frame>, bool)> {
        let mut seen = Vec::new();
        let clean = within(WAIT, "the daemon to end the stream", async {
            loop {
                match self.io.next().await {
                    Some(Ok(b)) => seen.push(Frame::decode(&b)?),
                    Some(Err(_)) => return Ok::<_, anyhow::Error>(false),
                    None => return Ok(true),
                }
            }
        })
        .await??;
        Ok((seen, clean))
    }

    /// Whether the daemon closed the stream (reads until EOF, skipping frames).
    pub async fn expect_closed(&mut self) -> Result<Vec<Frame>> {
        let mut seen = Vec::new();
        within(WAIT, "the daemon to close the stream", async {
            loop {
                match self.io.next().await {
                    Some(Ok(b)) => seen.push(Frame::decode(&b)?),
                    Some(Err(_)) | None => return Ok::<_, anyhow::Error>(()),
                }
            }
        })
        .await??;
        Ok(seen)
    }
}

/// Room keys for a passphrase, as the daemon derives them.
pub fn room_keys(passphrase: &str) -> RoomKeys {
    peerlog::keys::RoomSecret::from_passphrase(passphrase).expect("non-empty passphrase").keys()
}

/// A minimal HTTP/1.1 GET, with an `Authorization` header if given: (status, body).
pub async fn http_get(url: &str, authorization: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let headers: Vec<(&str, &str)> = authorization.map(|a| ("Authorization", a)).into_iter().collect();
    let (status, _, body) = http_request("GET", url, &headers).await?;
    Ok((status, body))
}

/// A minimal HTTP/1.1 request with these headers: (status, response head, body).
pub async fn http_request(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<(u16, String, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("http URL")?;
    let (host, path) = rest.split_at(rest.find('/').context("path")?);
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").context("end of headers")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
    let mut body = buf[end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, head, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").context("chunk size line")?;
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol])?.trim(), 16)?;
        b = &b[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}
