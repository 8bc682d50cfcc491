//! A session's I/O: opening and accepting streams, the handshake (Hello, Auth), framing,
//! and the reader and writer pumps that connect an authenticated stream to its room's task
//! (`driver.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use peerlog_proto::wire::{DiscoveryKey, Frame, Key32, PeerAddrs, Refusal, PROTOCOL, PROTOCOL_V3};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, info, warn};

use super::driver::{Control, FromPeer};
use super::state::{SessionUp, PEX_ADDRS, PEX_PEERS};
use super::{Replicator, SessionError, NOT_PEERLOG_FOR, NOT_PEERLOG_MAX};
use crate::ids::SessionId;
use crate::keys::{auth_mac, verify_auth_mac};
use crate::rooms::{DaemonEvent, Room};

/// Time allowed for Hello + Auth.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to open a stream (including dialing).
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Frames buffered between the room's task and the session's writer.
const OUTBOUND_FRAMES: usize = 8;
/// Most unauthenticated inbound sessions at once.
pub(super) const MAX_HANDSHAKES: usize = 64;
/// …and per peer: one peer cannot take every slot with streams that never say Hello.
const MAX_HANDSHAKES_PER_PEER: usize = 4;
/// How long an inbound stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest frame before the peer proved membership (Hello and Auth are under 100 bytes):
/// a non-member cannot make us buffer megabytes.
const PRE_AUTH_FRAME_BYTES: usize = 1024;
/// Target size of a `Data` frame's entries, well under the frame limit.
const BATCH_BYTES: usize = 1 << 20;
/// The same over a relayed connection: a relay closes a circuit after 128 KiB by default, so
/// each circuit must be able to carry several whole frames (resume then goes on from there).
const RELAYED_BATCH_BYTES: usize = 8 << 10;
/// A circuit that may carry at least this much (a peerlog relay's, 64 MiB by default) is
/// used like a direct connection: whole batches and chunks, several in flight.
const ROOMY_CIRCUIT_BYTES: u64 = 8 << 20;

pub(super) type Io = Framed<tokio_util::compat::Compat<Stream>, LengthDelimitedCodec>;

impl Replicator {
    /// Frames a new stream, with the small pre-authentication frame limit (raised by
    /// [`Replicator::authenticated`]).
    fn framed(&self, stream: Stream) -> Io {
        let codec = LengthDelimitedCodec::builder().max_frame_length(PRE_AUTH_FRAME_BYTES).new_codec();
        Framed::new(stream.compat(), codec)
    }

    /// The peer proved membership: frames up to the configured limit from now on.
    fn authenticated(&self, io: &mut Io) {
        io.codec_mut().set_max_frame_length(self.inner.limits.frame_bytes);
    }

    pub(super) async fn run_outbound(
        &self,
        peer: PeerId,
        discovery_key: DiscoveryKey,
        id: SessionId,
        established: Arc<AtomicBool>,
    ) -> Result<(), SessionError> {
        // Connect first with every address we know (the stream control alone would dial
        // with Kademlia's addresses only).
        tokio::time::timeout(OPEN_TIMEOUT, self.inner.node.connect(peer))
            .await
            .map_err(|_| SessionError::Timeout("connect"))??;
        // The newest version first; a node that knows only version 3 gets a session without
        // presence records.
        let open = async {
            let mut control = self.control();
            match control.open_stream(peer, StreamProtocol::new(PROTOCOL)).await {
                Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
                    control.open_stream(peer, StreamProtocol::new(PROTOCOL_V3)).await.map(|s| (s, false))
                }
                opened => opened.map(|s| (s, true)),
            }
        };
        let (stream, presence) = tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| SessionError::Timeout("open"))?
            .map_err(|e| match e {
                libp2p_stream::OpenStreamError::UnsupportedProtocol(_) => {
                    let mut not = self.inner.not_peerlog.lock().unwrap_or_else(|p| p.into_inner());
                    if not.len() >= NOT_PEERLOG_MAX {
                        not.retain(|_, at| at.elapsed() < NOT_PEERLOG_FOR);
                    }
                    if not.len() < NOT_PEERLOG_MAX {
                        not.insert(peer, std::time::Instant::now());
                    }
                    SessionError::NotPeerlog
                }
                e => SessionError::OpenStream(e),
            })?;
        let mut io = self.framed(stream);
        let Some(room) = self.inner.rooms.get(&discovery_key) else { return Ok(()) };
        let nonce: Key32 = rand::random();
        let handshake = async {
            let room_tag = crate::keys::room_tag(&discovery_key, &nonce, &self.inner.local, &peer);
            send(&mut io, &Frame::Hello { room_tag, nonce }).await?;
            let (their_tag, their_nonce) = match recv(&mut io).await? {
                Frame::Hello { room_tag, nonce } => (room_tag, nonce),
                Frame::Refuse { reason } => return Err(SessionError::Refused(reason)),
                _ => return Err(SessionError::Protocol("expected Hello")),
            };
            if !verify_auth_mac(
                &crate::keys::room_tag(&discovery_key, &their_nonce, &peer, &self.inner.local),
                &their_tag,
            ) {
                return Err(SessionError::Protocol("Hello for another room"));
            }
            self.authenticate(&mut io, &room, peer, &nonce, &their_nonce).await
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| SessionError::Timeout("handshake"))??;
        self.authenticated(&mut io);
        if !self.mark_established(peer, discovery_key, id) {
            return Ok(());
        }
        established.store(true, Ordering::Relaxed);
        self.run_established(io, room, peer, id, presence).await
    }

    /// An inbound stream; `presence` whether it speaks version 4 (`Alive`).
    pub(super) async fn run_inbound(
        &self,
        peer: PeerId,
        stream: Stream,
        presence: bool,
        permit: HandshakeSlot,
    ) -> Result<(), SessionError> {
        let mut io = self.framed(stream);
        let (their_tag, their_nonce) = match tokio::time::timeout(HELLO_TIMEOUT, recv(&mut io)).await {
            Err(_) => return Err(SessionError::Timeout("Hello")),
            Ok(Ok(Frame::Hello { room_tag, nonce })) => (room_tag, nonce),
            Ok(Ok(_)) => return Err(SessionError::Protocol("expected Hello")),
            Ok(Err(e)) => return Err(e),
        };
        // Which of our rooms the tag names, if any (one HMAC per joined room).
        let found = self.inner.rooms.list().into_iter().find(|r| {
            let expected = crate::keys::room_tag(&r.discovery_key, &their_nonce, &peer, &self.inner.local);
            verify_auth_mac(&expected, &their_tag)
        });
        let Some(room) = found else {
            refuse(&mut io, Refusal::UnknownRoom).await;
            return Ok(());
        };
        let discovery_key = room.discovery_key;
        let Some((id, cancel)) = self.reserve_slot(peer, discovery_key, false) else {
            refuse(&mut io, Refusal::Duplicate).await;
            return Ok(());
        };
        let established = AtomicBool::new(false);
        let result = tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            r = async {
                let nonce: Key32 = rand::random();
                let handshake = async {
                    let room_tag = crate::keys::room_tag(&discovery_key, &nonce, &self.inner.local, &peer);
                    send(&mut io, &Frame::Hello { room_tag, nonce }).await?;
                    self.authenticate(&mut io, &room, peer, &their_nonce, &nonce).await
                };
                tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await.map_err(|_| SessionError::Timeout("handshake"))??;
                drop(permit);
                self.authenticated(&mut io);
                // A member, but the room has all the sessions it takes: other peers to try
                // (now that it proved membership), then the refusal.
                if !self.accepts(peer, discovery_key) {
                    let peers = self.peers_frame(&discovery_key, peer).await;
                    let _ = send(&mut io, &peers).await;
                    refuse(&mut io, Refusal::Full).await;
                    return Ok(());
                }
                if !self.mark_established(peer, discovery_key, id) {
                    return Ok(());
                }
                established.store(true, Ordering::Relaxed);
                self.run_established(io, room, peer, id, presence).await
            } => r,
        };
        self.release(peer, discovery_key, id);
        if !cancel.is_cancelled() {
            self.after_session(peer, discovery_key, established.load(Ordering::Relaxed), &result);
        }
        result
    }

    /// Exchanges membership proofs; the nonces are given in initiator, responder order.
    async fn authenticate(
        &self,
        io: &mut Io,
        room: &Room,
        peer: PeerId,
        initiator_nonce: &Key32,
        responder_nonce: &Key32,
    ) -> Result<(), SessionError> {
        let key = &room.keys.auth_key;
        let mine = auth_mac(key, initiator_nonce, responder_nonce, &self.inner.local, &peer);
        send(io, &Frame::Auth { mac: mine }).await?;
        let theirs = match recv(io).await? {
            Frame::Auth { mac } => mac,
            Frame::Refuse { reason } => return Err(SessionError::Refused(reason)),
            _ => return Err(SessionError::Protocol("expected Auth")),
        };
        let expected = auth_mac(key, initiator_nonce, responder_nonce, &peer, &self.inner.local);
        if !verify_auth_mac(&expected, &theirs) {
            warn!(%peer, room = %room.id, "peer failed the membership proof (wrong passphrase?)");
            refuse(io, Refusal::BadAuth).await;
            return Err(SessionError::Refused(Refusal::BadAuth));
        }
        Ok(())
    }

    async fn run_established(
        &self,
        io: Io,
        room: Arc<Room>,
        peer: PeerId,
        id: SessionId,
        presence: bool,
    ) -> Result<(), SessionError> {
        let Some(link) = self.room_link(&room.discovery_key) else { return Ok(()) };
        let connection = self.inner.node.connection(peer).await;
        let kind = connection.as_ref().map(|c| c.connection);
        let circuit_bytes = connection.as_ref().and_then(|c| c.circuit_bytes);
        // Relayed: the relay's address says how far away the peer is.
        let pex_reach = connection
            .as_ref()
            .and_then(|c| {
                c.addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()).map(|a| crate::node::reach(&a)).max()
            })
            .unwrap_or(crate::node::Reach::Public);
        // A relay with small circuits (a public one): small frames, one chunk at a time.
        let small_circuit =
            kind == Some(crate::node::ConnectionKind::Relayed) && circuit_bytes.is_none_or(|b| b < ROOMY_CIRCUIT_BYTES);
        let batch_bytes = if small_circuit { RELAYED_BATCH_BYTES } else { BATCH_BYTES };
        debug!(%peer, ?kind, ?circuit_bytes, batch_bytes, "session framing");
        if kind == Some(crate::node::ConnectionKind::Relayed) {
            self.mark_relayed(peer, room.discovery_key, id);
        }
        info!(%peer, room = %room.id, ?kind, "room peer connected");
        room.emit(DaemonEvent::PeerJoined { room: room.discovery_key, peer, kind });
        let greeting = vec![
            Frame::Writer { feed_key: room.feed_key, signature: room.writer_proof(&self.inner.local) },
            self.peers_frame(&room.discovery_key, peer).await,
        ];
        let up = SessionUp { peer, batch_bytes, small_circuit, pex_reach, greeting, presence };
        let (out, mut out_rx) = mpsc::channel::<Frame>(OUTBOUND_FRAMES);
        let (done, ended) = oneshot::channel();
        if link.control.send(Control::Up { session: id, up, out, done }).is_err() {
            return Ok(()); // the room's task ended: the room was left
        }
        // Also when this future is dropped (the session was cancelled): the room's task
        // hands what it was fetching to other sessions.
        let _gone = Gone(link.control.clone(), id);
        let (mut sink, mut source) = io.split();
        // The reader holds nothing of the daemon's state: a stream whose connection is gone
        // may never end, and the task with it (it is aborted when the session ends).
        let budgets = self.inner.budgets.clone();
        let frames = link.frames;
        let reader = self.inner.tasks.spawn("session reader", async move {
            let end = loop {
                let frame = match source.next().await {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(SessionError::from(e)),
                    Some(Ok(bytes)) => match Frame::decode(&bytes) {
                        Ok(frame) => frame,
                        Err(_) => break Err(SessionError::Protocol("undecodable frame")),
                    },
                };
                let pause = match &frame {
                    Frame::Data { entries, .. } => {
                        budgets.charge(peer, entries.iter().map(|e| e.ciphertext.len() as u64 + 44).sum())
                    }
                    _ => Duration::ZERO,
                };
                if frames.send((id, FromPeer::Frame(frame))).await.is_err() {
                    return;
                }
                if !pause.is_zero() {
                    debug!(%peer, pause_ms = pause.as_millis() as u64, "peer sends entries faster than limits.peer_bytes_per_s; pausing reads");
                    tokio::time::sleep(pause).await;
                }
            };
            let _ = frames.send((id, FromPeer::End(end))).await;
        });
        let writer = self.inner.tasks.spawn("session writer", async move {
            while let Some(frame) = out_rx.recv().await {
                if sink.send(Bytes::from(frame.encode())).await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let reader = AbortOnDrop(reader);
        let result = ended.await.unwrap_or(Ok(()));
        // Free the slot before the stream closes, so that the peer's next session (it
        // sees the close first) is not refused as a duplicate.
        self.release(peer, room.discovery_key, id);
        drop(reader);
        // The writer drains what was queued, then closes the stream; a peer that does not
        // read gets 2 s, then the stream is dropped (the writer would wait on it forever).
        let mut writer = writer;
        if tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_err() {
            writer.abort();
        }
        info!(%peer, room = %room.id, reason = ?result.as_ref().err(), "room peer disconnected");
        result
    }

    /// The room's other peers with their addresses, for peer exchange.
    async fn peers_frame(&self, room: &DiscoveryKey, to: PeerId) -> Frame {
        let others: Vec<PeerId> =
            self.room_peers(Some(room)).into_iter().map(|p| p.peer).filter(|p| *p != to).take(PEX_PEERS).collect();
        let known = self.inner.node.addresses(others).await.unwrap_or_default();
        let peers = known
            .into_iter()
            .filter(|(_, addrs)| !addrs.is_empty())
            .map(|(peer, addrs)| PeerAddrs {
                peer_id: peer.to_bytes(),
                addrs: addrs.into_iter().take(PEX_ADDRS).map(|a| serde_bytes::ByteBuf::from(a.to_vec())).collect(),
            })
            .collect();
        Frame::Peers { peers }
    }
}

/// Aborts a task when dropped (also when the future holding it is cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<Option<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tells the room's task that a session's task ended (harmless if the room's task ended
/// the session first).
struct Gone(mpsc::UnboundedSender<Control>, SessionId);

impl Drop for Gone {
    fn drop(&mut self) {
        let _ = self.0.send(Control::Gone(self.1));
    }
}

/// Sends a refusal and closes our side of the stream (FIN). Dropping the stream instead
/// resets it, and a peer may then lose the refusal (js-libp2p drops data on a reset).
async fn refuse(io: &mut Io, reason: Refusal) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if send(io, &Frame::Refuse { reason }).await.is_ok() {
            let _ = SinkExt::<Bytes>::close(io).await;
        }
    })
    .await;
}

async fn send(io: &mut Io, frame: &Frame) -> Result<(), SessionError> {
    io.send(Bytes::from(frame.encode())).await?;
    Ok(())
}

async fn recv(io: &mut Io) -> Result<Frame, SessionError> {
    match io.next().await {
        Some(Ok(bytes)) => Frame::decode(&bytes).map_err(|_| SessionError::Protocol("undecodable frame")),
        Some(Err(e)) => Err(e.into()),
        None => Err(SessionError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

/// An inbound handshake's place: one of [`MAX_HANDSHAKES`], and one of its peer's
/// [`MAX_HANDSHAKES_PER_PEER`]; given back on drop.
pub(super) struct HandshakeSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    replicator: Replicator,
    peer: PeerId,
}

impl HandshakeSlot {
    pub(super) fn take(r: &Replicator, peer: PeerId) -> Option<Self> {
        let mut per_peer = r.inner.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_peer.entry(peer).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        let permit = r.inner.handshakes.clone().try_acquire_owned().ok()?;
        *n += 1;
        Some(Self { _permit: permit, replicator: r.clone(), peer })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut per_peer = self.replicator.inner.handshaking.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}
