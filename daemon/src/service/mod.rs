//! The service: what the API (and the tests) call. [`Service`] holds the joined rooms, the
//! store, the node and the replicator, and owns the rules of room and message operations;
//! [`crate::daemon::Daemon`] builds it and stops it; [`crate::api`] serves it. Sending and
//! fetching files is in [`files`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use peerlog_proto::wire::{DiscoveryKey, FeedKey};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Network};
use crate::files::Chunks;
use crate::keys::{self, KeyError, RoomSecret, SeedCapability};
use crate::log::commit::{CommitError, GroupCommit};
use crate::log::store::{now_ms, Access, OrderKey, RoomRecord, StoreError, StoredMessage};
use crate::log::{new_writer, Body, Store};
use crate::node::{self, Dht, NodeHandle, NodeInfo};
use crate::replicate::Replicator;
use crate::rooms::{Room, Rooms};
use crate::tasks::Tasks;

mod chat;
mod devices;
mod epochs;
mod files;
pub mod token;

pub use devices::{LinkCode, Linked, Unlinked, LINK_PREFIX, LINK_TTL};
pub use files::{FileInfo, FileSource, STALL};

/// Passphrase derivations (Argon2id, 64 MiB each) running at once; others wait their turn.
pub(crate) const KDF_SLOTS: usize = 2;

/// Errors of room and message operations (mapped to stable API codes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No such room joined.
    #[error("no joined room matches {0:?}")]
    RoomNotFound(String),
    /// Input over a limit.
    #[error("{what} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// What.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// The named message (or file) is not in the room here.
    #[error("{0}")]
    NotFound(String),
    /// A file on the daemon's machine cannot be read or written.
    #[error("{}: {source}", .path.display())]
    LocalFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A streamed upload ended early or stalled.
    #[error("{0}")]
    UploadIncomplete(String),
    /// No room peer sent what was asked for in time.
    #[error("{0}")]
    Unavailable(String),
    /// Bad invite.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An append failed (shared by every caller of a grouped append).
    #[error("storage: {0}")]
    Append(Arc<StoreError>),
    /// Making an append durable failed.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// Only the room's admins may do this.
    #[error("{0}")]
    NotAdmin(String),
    /// Shutting down.
    #[error("the daemon is shutting down")]
    Shutdown,
}

/// One connectivity check of [`Service::doctor`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// What was checked: `bootstrap`, `dht`, `reachability`, `relay`.
    pub name: &'static str,
    /// Whether it passed.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do about it (empty when it passed).
    pub advice: String,
}

impl Check {
    fn ok(name: &'static str, detail: String) -> Self {
        Self { name, ok: true, detail, advice: String::new() }
    }

    fn fail(name: &'static str, detail: String, advice: &str) -> Self {
        Self { name, ok: false, detail, advice: advice.into() }
    }
}

/// The daemon's state and operations, shared by the API, the background tasks and the handle.
pub struct Service {
    /// Effective configuration.
    pub config: Config,
    /// Resolved data directory.
    pub data_dir: PathBuf,
    /// The database.
    pub store: Store,
    /// File chunks.
    pub chunks: Chunks,
    /// Group commit of local appends.
    pub(crate) commit: GroupCommit,
    /// Stops the committer, after the API is closed.
    pub(crate) commit_cancel: CancellationToken,
    /// The libp2p node.
    pub node: NodeHandle,
    /// Our device key: the node identity's ed25519 key (`keys::device`).
    pub(crate) device: ed25519_dalek::SigningKey,
    /// Joined rooms.
    pub rooms: Arc<Rooms>,
    /// Replication sessions.
    pub replicator: Replicator,
    /// The API token (`<data>/api-token`): the web UI and scripts.
    pub(crate) token: token::ApiToken,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    /// The CLI credential (`<data>/cli-token`): the API token's rights plus paths on this
    /// machine (`files.send {path}`, `files.get {path}`). Never given to a browser.
    pub(crate) cli_token: String,
    /// Turns for passphrase derivations: 32 joins at once used to take 2 GiB.
    pub(crate) kdf_slots: tokio::sync::Semaphore,
    /// Held while following a rotation: one move to a room's new epoch at a time (two
    /// would each make the new room with a writer key of its own).
    pub(crate) epoch_turn: tokio::sync::Mutex<()>,
    /// Peers found on the LAN (mDNS): offered a session for every room, at every discovery round.
    pub(crate) lan_peers: std::sync::Mutex<std::collections::HashSet<PeerId>>,
    /// Network-side tasks (sessions, discovery).
    pub(crate) tasks: Tasks,
    /// Cancels the network side.
    pub(crate) net_cancel: CancellationToken,
}

/// See [`Service::health`].
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Health {
    /// The store can make data durable.
    pub store: bool,
    /// The libp2p node's event loop answers.
    pub node: bool,
    /// Peers in the DHTs' routing tables.
    pub dht_peers: usize,
}

impl Health {
    /// Ready to serve: store and node up (the DHT may still be empty).
    pub fn ready(&self) -> bool {
        self.store && self.node
    }
}

impl Service {
    /// The daemon's task tree (see [`Tasks`]).
    pub fn tasks(&self) -> &Tasks {
        &self.tasks
    }

    /// Takes up the rooms joined before: each one's discovery, and the search for peers.
    pub(crate) fn resume(self: &Arc<Self>) -> Result<(), StoreError> {
        // A link (devices.link) does not outlive the daemon: its room is left.
        let links = self.store.link_rooms()?;
        if !links.is_empty() {
            for room in &links {
                self.store.remove_room(room)?;
            }
            self.store.set_link_rooms(&[])?;
        }
        for (discovery_key, record) in self.store.rooms()? {
            let room = Room::new(
                &discovery_key,
                &record,
                &self.store,
                self.rooms.events.clone(),
                self.net_cancel.child_token(),
            )?;
            let (room, _) = self.rooms.insert(room);
            self.replicator.start_room(room.clone())?;
            self.start_discovery(&room);
        }
        self.spawn_peer_finder();
        self.spawn_rotation_follower();
        self.spawn_membership_watcher();
        Ok(())
    }

    /// Announces and looks up a room on the DHT, quickly at first, then every
    /// `discovery_interval_secs`.
    fn start_discovery(self: &Arc<Self>, room: &Arc<Room>) {
        let this = self.clone();
        let node = self.node.clone();
        let discovery_key = room.discovery_key;
        let cancel = room.cancel.clone();
        let max = Duration::from_secs(self.config.discovery_interval_secs.max(1));
        self.tasks.spawn("room discovery", async move {
            let mut delay = Duration::from_millis(250);
            loop {
                if node.provide(discovery_key).await.is_err() || node.find_providers(discovery_key).await.is_err() {
                    break;
                }
                let lan: Vec<PeerId> =
                    this.lan_peers.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
                for peer in lan {
                    this.replicator.ensure_session(peer, discovery_key);
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max);
            }
        });
    }

    /// Opens sessions with room peers as the node finds them.
    fn spawn_peer_finder(self: &Arc<Self>) {
        let mut events = self.node.subscribe();
        let this = self.clone();
        let cancel = self.net_cancel.clone();
        self.tasks.spawn("peer finder", async move {
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => break,
                    e = events.recv() => e,
                };
                match event {
                    Ok(node::NodeEvent::ProvidersFound { key, peers }) => {
                        if this.rooms.get(&key).is_some() {
                            for peer in peers {
                                this.replicator.ensure_session(peer, key);
                            }
                        }
                    }
                    Ok(node::NodeEvent::ConnectionChanged { peer, kind }) => {
                        let rooms: Vec<DiscoveryKey> =
                            this.room_peers(None).into_iter().filter(|(p, _)| *p == peer).map(|(_, r)| r).collect();
                        if !rooms.is_empty() {
                            let _ =
                                this.rooms.events.send(crate::rooms::DaemonEvent::PeerConnection { peer, kind, rooms });
                        }
                        if kind == node::ConnectionKind::Holepunched {
                            this.replicator.restart_peer(peer);
                        }
                    }
                    Ok(node::NodeEvent::Disconnected { peer }) => this.replicator.peer_disconnected(peer),
                    Ok(node::NodeEvent::LanPeer { peer }) => {
                        this.lan_peers.lock().unwrap_or_else(|p| p.into_inner()).insert(peer);
                        for room in this.rooms.list() {
                            this.replicator.ensure_session(peer, room.discovery_key);
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => warn!(missed = n, "peer finder lagged"),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// Joins the room of a passphrase (Argon2id runs on a blocking thread).
    pub async fn join_passphrase(
        self: &Arc<Self>,
        passphrase: String,
        name: Option<String>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        let turn = self.kdf_slots.acquire().await.map_err(|_| ServiceError::Shutdown)?;
        let secret = tokio::task::spawn_blocking(move || RoomSecret::from_passphrase(&passphrase))
            .await
            .map_err(|_| ServiceError::Shutdown)??;
        drop(turn);
        self.join_secret(secret, name).await
    }

    /// Joins the room of a secret; returns the room and whether it is new here.
    pub async fn join_secret(
        self: &Arc<Self>,
        secret: RoomSecret,
        name: Option<String>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        self.join_secret_as(secret, name, None).await
    }

    /// Joins the room an invite admits to; a room with an admin records the seed and admin
    /// its secret is made from (for its invites, and to judge removals by).
    pub async fn join_invite(
        self: &Arc<Self>,
        key: keys::InviteKey,
        name: Option<String>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        match key {
            keys::InviteKey::Secret(secret) => self.join_secret(secret, name).await,
            keys::InviteKey::Bound(bound) => self.join_bound(bound, name, None).await,
        }
    }

    /// Creates a room with us as its admin: a random seed bound to our writer there.
    pub async fn create_room(self: &Arc<Self>, name: Option<String>) -> Result<Arc<Room>, ServiceError> {
        let writer = new_writer();
        let bound = keys::AdminBound::random(FeedKey(writer.verifying_key().to_bytes()));
        Ok(self.join_bound(bound, name, Some(&writer)).await?.0)
    }

    /// Joins the room of an admin-bound secret (writing with `writer` if the room is new
    /// here). The binding is stored first: removals in the room are judged by it from the
    /// first entry on.
    pub(crate) async fn join_bound(
        self: &Arc<Self>,
        bound: keys::AdminBound,
        name: Option<String>,
        writer: Option<&ed25519_dalek::SigningKey>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        let secret = bound.secret();
        let discovery_key = secret.keys().discovery_key;
        if self.store.admin_binding(&discovery_key)?.is_none() {
            self.store.set_admin_binding(&discovery_key, &bound)?;
        }
        self.join_secret_as(secret, name, writer).await
    }

    /// Joins the room of a secret, writing with `writer` if the room is new here (a fresh
    /// key otherwise).
    async fn join_secret_as(
        self: &Arc<Self>,
        secret: RoomSecret,
        name: Option<String>,
        writer: Option<&ed25519_dalek::SigningKey>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        let discovery_key = secret.keys().discovery_key;
        if self.rooms.get(&discovery_key).is_some_and(|r| r.is_seeder()) {
            return Err(ServiceError::Invalid(
                "this daemon seeds that room blindly; leave it (rooms.leave) before joining it as a member".into(),
            ));
        }
        let (room, created) = self.add_room(discovery_key, Access::Member(secret.0), name, writer).await?;
        if created {
            let profile = self.store.display_name()?.map(|display_name| Body::Profile { display_name });
            let device = self.device_entry(&room)?.filter(|_| !self.link_rooms().contains(&discovery_key));
            let bodies: Vec<Body> = profile.into_iter().chain(device).collect();
            if !bodies.is_empty() {
                self.append_durable(&room, bodies).await?;
            }
        }
        Ok((room, created))
    }

    /// Sets the display name: remembered for rooms joined later, and announced in every
    /// room we are a member of (a `Profile` message: it is part of the log, like any).
    pub async fn set_display_name(&self, name: &str) -> Result<(String, usize), ServiceError> {
        let name: String = name.trim().chars().filter(|c| !c.is_control()).collect();
        if name.is_empty() || name.len() > 64 {
            return Err(ServiceError::Invalid("a display name is 1 to 64 bytes".into()));
        }
        self.store.put_display_name(&name)?;
        let mut announced = 0;
        for room in self.rooms.list().into_iter().filter(|r| !r.is_seeder() && self.check_not_moved(r).is_ok()) {
            self.append_durable(&room, vec![Body::Profile { display_name: name.clone() }]).await?;
            announced += 1;
        }
        Ok((name, announced))
    }

    /// Seeds a room blindly: finds its peers, authenticates, stores and serves its
    /// ciphertext, and cannot read or write it. Seeding a room we are a member of returns it
    /// as it is (a member already stores and serves everything).
    pub async fn seed(
        self: &Arc<Self>,
        cap: SeedCapability,
        name: Option<String>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        self.add_room(cap.discovery_key, Access::Seeder(cap.auth_key), name, None).await
    }

    async fn add_room(
        self: &Arc<Self>,
        discovery_key: DiscoveryKey,
        access: Access,
        name: Option<String>,
        writer: Option<&ed25519_dalek::SigningKey>,
    ) -> Result<(Arc<Room>, bool), ServiceError> {
        if let Some(room) = self.rooms.get(&discovery_key) {
            return Ok((room, false));
        }
        let name = name.map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
        if name.as_ref().is_some_and(|n| n.len() > keys::ROOM_NAME_MAX) {
            return Err(ServiceError::Invalid("room name longer than 100 bytes".into()));
        }
        let record = RoomRecord {
            access,
            name: name.unwrap_or_else(|| keys::default_room_name(&discovery_key)),
            writer: writer.map_or_else(|| new_writer().to_bytes(), |w| w.to_bytes()),
            joined_ms: now_ms(),
        };
        self.store.put_room(&discovery_key, &record)?;
        // Every flush goes through the group committer: sled 0.34 can deadlock when
        // several flushes run at once (eight concurrent joins froze the store for good).
        self.commit.durable().await?;
        let room =
            Room::new(&discovery_key, &record, &self.store, self.rooms.events.clone(), self.net_cancel.child_token())?;
        let (room, created) = self.rooms.insert(room);
        if created {
            info!(room = %room.id, "joined room");
            self.replicator.start_room(room.clone())?;
            self.start_discovery(&room);
        }
        Ok((room, created))
    }

    /// Finds a joined room by id, id prefix or name.
    pub fn room(&self, query: &str) -> Result<Arc<Room>, ServiceError> {
        self.rooms.find(query).ok_or_else(|| ServiceError::RoomNotFound(query.to_string()))
    }

    /// Leaves a room: stops its sessions and discovery and deletes its data here.
    pub async fn leave(&self, query: &str) -> Result<(), ServiceError> {
        let room = self.room(query)?;
        self.rooms.remove(&room.discovery_key);
        room.cancel.cancel();
        self.replicator.close_room(&room.discovery_key);
        let _ = self.node.stop_providing(room.discovery_key).await;
        let store = self.store.clone();
        let discovery_key = room.discovery_key;
        tokio::task::spawn_blocking(move || store.remove_room(&discovery_key))
            .await
            .map_err(|_| ServiceError::Shutdown)??;
        self.commit.durable().await?;
        info!(room = %room.id, "left room");
        Ok(())
    }

    /// Sends a text message; returns once it is durable.
    pub async fn send_text(&self, room: &Room, text: String) -> Result<StoredMessage, ServiceError> {
        let (first, _) = self.send_texts(room, vec![text]).await?;
        Ok(first)
    }

    /// Appends several text messages as one batch with one signed head; returns the first
    /// and last once all are durable. Every text is checked before anything is written.
    pub async fn send_texts(
        &self,
        room: &Room,
        texts: Vec<String>,
    ) -> Result<(StoredMessage, StoredMessage), ServiceError> {
        for text in &texts {
            self.check_text(text)?;
        }
        let appended = self.append_durable(room, texts.into_iter().map(|text| Body::Text { text }).collect()).await?;
        let mut messages = appended.into_iter();
        let first = messages.next().ok_or(ServiceError::Invalid("nothing appended".into()))?;
        let last = messages.next_back().unwrap_or_else(|| first.clone());
        Ok((first, last))
    }

    /// A message's text is not empty and within `limits.message_bytes`.
    fn check_text(&self, text: &str) -> Result<(), ServiceError> {
        let limit = self.config.limits.message_bytes;
        if text.len() > limit {
            return Err(ServiceError::TooLarge { what: "message", size: text.len(), limit });
        }
        if text.trim().is_empty() {
            return Err(ServiceError::Invalid("message text is empty".into()));
        }
        Ok(())
    }

    /// Appends `bodies` (sharing the append with concurrent callers) and returns once
    /// they are durable.
    pub(crate) async fn append_durable(
        &self,
        room: &Room,
        bodies: Vec<Body>,
    ) -> Result<Vec<StoredMessage>, ServiceError> {
        self.check_not_moved(room)?;
        let appended = room.append_grouped(bodies).await.map_err(ServiceError::Append)?;
        self.commit.durable().await?;
        room.announce(&appended.head, &appended.messages);
        Ok(appended.messages)
    }

    /// A page of history, oldest first: the newest `limit`, or those before message `before`.
    pub fn history(&self, room: &Room, before: Option<&str>, limit: usize) -> Result<Vec<StoredMessage>, ServiceError> {
        let content_key = room.keys.content_key.as_ref().ok_or(StoreError::Blind)?;
        let before_key: Option<OrderKey> = match before {
            None => None,
            Some(id) => {
                let (feed, seq) = StoredMessage::parse_id(id)
                    .ok_or_else(|| ServiceError::Invalid(format!("bad message id {id:?}")))?;
                Some(
                    self.store
                        .order_key_of(&feed, seq)?
                        .ok_or_else(|| ServiceError::NotFound(format!("no message {id:?} in this room")))?,
                )
            }
        };
        let page = self.store.history(&room.discovery_key, content_key, before_key.as_ref(), limit)?;
        // Damaged blocks found on the way were forgotten: fetch them again from peers.
        for feed in self.store.take_forgotten() {
            room.refetch(&feed);
        }
        Ok(page)
    }

    /// Blocks (or unblocks) a writer in `room`, or in every room: its entries are no longer
    /// stored, served or shown, and sessions with peers that write as it end now (and are
    /// refused when they come back).
    pub async fn block_writer(&self, room: Option<&Room>, writer: &FeedKey, blocked: bool) -> Result<(), ServiceError> {
        if self
            .rooms
            .list()
            .iter()
            .any(|r| r.feed_key == *writer && room.is_none_or(|x| x.discovery_key == r.discovery_key))
        {
            return Err(ServiceError::Invalid("that writer key is this daemon's own".into()));
        }
        self.store.set_blocked(&room.map_or(DiscoveryKey::default(), |r| r.discovery_key), writer, blocked)?;
        if blocked {
            for p in self.replicator.room_peers(room.map(|r| &r.discovery_key)) {
                if p.writer == Some(*writer) {
                    let _ = self.node.disconnect(p.peer).await;
                }
            }
        }
        Ok(())
    }

    /// Readiness, for `/api/health` and the service manager's watchdog: the store can
    /// still make data durable, and the node's event loop answers (within 2 s); and
    /// whether the DHT has peers (a daemon without is up, but finds no one).
    pub async fn health(&self) -> Health {
        let store = self.commit.failed_now().is_none();
        let info = self.node_info_within_2s().await;
        let dht_peers = info.as_ref().map(|i| i.dht_peers + i.public_dht_peers.unwrap_or(0));
        Health { store, node: info.is_some(), dht_peers: dht_peers.unwrap_or(0) }
    }

    /// The Prometheus metrics now (`GET /metrics`).
    pub async fn metrics_text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let rooms = self.rooms.list();
        let entries_stored = rooms
            .iter()
            .filter_map(|r| self.store.room_feeds(&r.discovery_key).ok())
            .flatten()
            .map(|(_, meta)| meta.stored())
            .sum();
        let now = crate::metrics::Snapshot {
            rooms: rooms.len(),
            sessions: self.replicator.room_peers(None).len(),
            entries_stored,
            entries_received: rooms.iter().map(|r| r.received.load(Relaxed)).sum(),
            entries_served: rooms.iter().map(|r| r.served.load(Relaxed)).sum(),
            frames_received: rooms.iter().map(|r| r.frames_received.load(Relaxed)).sum(),
            frames_sent: rooms.iter().map(|r| r.frames_sent.load(Relaxed)).sum(),
            catchup_backlog: rooms.iter().map(|r| r.backlog.load(Relaxed)).sum(),
            node: self.node_info_within_2s().await,
        };
        self.metrics.render(&now)
    }

    /// The node snapshot if the node loop answers within 2 s (health and metrics must not
    /// hang on a stuck node).
    async fn node_info_within_2s(&self) -> Option<NodeInfo> {
        tokio::time::timeout(Duration::from_secs(2), self.node_info()).await.ok().and_then(Result::ok)
    }

    /// Node snapshot.
    pub async fn node_info(&self) -> Result<NodeInfo, ServiceError> {
        self.node.info().await.map_err(|_| ServiceError::Shutdown)
    }

    /// Runs the connectivity checks of `peerlog doctor` (bounded: about 15 s at most):
    /// bootstrap nodes, the DHT, NAT and relay. Each check says what to do if it failed.
    pub async fn doctor(&self) -> Result<Vec<Check>, ServiceError> {
        const WAIT: Duration = Duration::from_secs(10);
        let mut checks = Vec::new();
        let bootstrap: Vec<PeerId> = self.config.bootstrap.iter().filter_map(node::peer_of).collect();
        let public = self.config.network == Network::Public;
        if bootstrap.is_empty() && public {
            checks.push(Check::ok("bootstrap", "none configured: rooms are found on the public DHT".into()));
        } else if bootstrap.is_empty() {
            checks.push(Check::fail(
                "bootstrap",
                "no bootstrap node is configured".into(),
                "with network = \"private\" this daemon finds room peers on its LAN only (mDNS): add a reachable peerlog node with --bootstrap, or `bootstrap` in the config",
            ));
        } else {
            let tries = bootstrap.iter().map(|p| tokio::time::timeout(WAIT, self.node.connect(*p)));
            let results = futures::future::join_all(tries).await;
            let ok = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
            let detail = format!("{ok} of {} bootstrap node(s) reachable", bootstrap.len());
            checks.push(if ok > 0 {
                Check::ok("bootstrap", detail)
            } else {
                Check::fail("bootstrap", detail, "check the bootstrap addresses (with /p2p/<PeerId>) and that this machine can reach them (firewall, network)")
            });
        }
        let probes = futures::future::join(
            tokio::time::timeout(WAIT, self.node.probe_dht(Dht::Peerlog)),
            tokio::time::timeout(WAIT, self.node.probe_dht(Dht::Public)),
        );
        let (dht, public_dht) = probes.await;
        if public {
            checks.push(match public_dht {
                Ok(Ok(Ok(n))) => Check::ok("public_dht", format!("{n} public DHT (Amino) server(s) answered")),
                Ok(Ok(Err(why))) => Check::fail("public_dht", format!("the public DHT did not answer: {why}"), "check this machine's internet access and DNS (the public bootstrap nodes are /dnsaddr names); on a network of your own, set network = \"private\" and configure bootstrap nodes"),
                Ok(Err(_)) => return Err(ServiceError::Shutdown),
                Err(_) => Check::fail("public_dht", "the public DHT did not answer within 10 s".into(), "check this machine's internet access and DNS"),
            });
        }
        if !(public && bootstrap.is_empty()) {
            checks.push(match dht {
                Ok(Ok(Ok(n))) => Check::ok("dht", format!("{n} DHT server(s) answered")),
                Ok(Ok(Err(why))) => Check::fail("dht", format!("the DHT did not answer: {why}"), "rooms cannot be found beyond the LAN: a bootstrap node must be reachable and run as a DHT server (a declared external address, or --dht-mode server on a private network)"),
                Ok(Err(_)) => return Err(ServiceError::Shutdown),
                Err(_) => Check::fail("dht", "the DHT did not answer within 10 s".into(), "check the bootstrap nodes and this machine's network"),
            });
        }
        let info = self.node_info().await?;
        let nat = format!("AutoNAT says {}; reachability: {}", info.nat_status, info.reachability);
        // Connected to a bootstrap node, and to nobody on the internet: a private network
        // (a LAN or VPN with its own bootstrap node), where that is the point.
        let private_network = info.reachability == "lan_only" && info.bootstrap_connected > 0;
        checks.push(match info.reachability.as_str() {
            "public" | "relayed" => Check::ok("reachability", nat),
            _ if private_network => Check::ok("reachability", format!("{nat}: a private network, whose peers can reach this daemon")),
            "behind_nat" => Check::fail("reachability", nat, "peers cannot reach this daemon: it needs a relay reservation (a bootstrap node with a declared public address serves as one)"),
            _ => Check::fail("reachability", nat, "this daemon is connected to nobody beyond its LAN: see the bootstrap check"),
        });
        // Hole punching needs two peers behind NAT and a relay between them: the check
        // reports what the punches tried so far did (the doctor cannot summon a peer).
        checks.push(match (info.holepunch_ok, info.holepunch_failed) {
            (0, 0) => Check::ok("holepunch", "not tried yet: no peer behind another NAT reached us through a relay".into()),
            (ok, failed) if ok > 0 => Check::ok("holepunch", format!("{ok} hole punch(es) made direct connections, {failed} failed")),
            (_, failed) => Check::fail(
                "holepunch",
                format!("all {failed} hole punch(es) failed: connections to peers behind NAT stay relayed"),
                "this NAT (or the peers') defeats hole punching (symmetric NAT): rooms still work through relays; a peerlog relay (any peerlog node with a public address) carries them at full speed, or forward a port to this machine and declare it with --external-address",
            ),
        });
        checks.push(if !info.relays.is_empty() {
            Check::ok("relay", format!("reservation(s) on {} relay(s)", info.relays.len()))
        } else if info.reachability == "public" {
            Check::ok("relay", "not needed: this daemon has a public address".into())
        } else if private_network {
            Check::ok("relay", "not needed on a private network".into())
        } else {
            Check::fail("relay", "no relay reservation".into(), "peers behind other NATs cannot reach this daemon; a relay is found among peers that serve one (a bootstrap node with a declared public address does)")
        });
        Ok(checks)
    }

    /// Rooms each peer shares with us (authenticated sessions).
    pub fn room_peers(&self, room: Option<&DiscoveryKey>) -> Vec<(PeerId, DiscoveryKey)> {
        self.replicator.room_peers(room).into_iter().map(|p| (p.peer, p.room)).collect()
    }
}
