//! The composition root: [`Daemon::start`] builds the store, the node, the replicator and
//! the [`Service`] on them, serves the API over it, and returns a handle with the bound
//! addresses; [`Daemon::shutdown`] stops them in order. Nothing below imports this module.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ConfigError, Network};
use crate::files::Chunks;
use crate::keys::{self, KeyError};
use crate::log::commit::GroupCommit;
use crate::log::store::{StoreError, WriterQuota};
use crate::log::Store;
use crate::node::{self, NodeConfig, NodeError};
use crate::replicate::Replicator;
use crate::rooms::Rooms;
use crate::service::{Service, KDF_SLOTS};
use crate::tasks::Tasks;

/// How long shutdown waits for tasks before flushing anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Key files.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// libp2p.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Another daemon runs on this data dir.
    #[error("the data dir {} is in use by another peerlog daemon{}; stop it first, or use another --data-dir", .path.display(), .pid.map(|p| format!(" (PID {p})")).unwrap_or_default())]
    InUse {
        /// The data dir.
        path: PathBuf,
        /// The PID written by the daemon holding it, if readable.
        pid: Option<u32>,
    },
    /// The API listener.
    #[error("cannot listen for the API on {addr}: {source}")]
    Api {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running daemon.
pub struct Daemon {
    service: Arc<Service>,
    api_addr: SocketAddr,
    api_cancel: CancellationToken,
    api_task: tokio::task::JoinHandle<Option<()>>,
    node_task: tokio::task::JoinHandle<()>,
    /// The root of the shutdown tree (see [`Daemon::start`]); cancelled on drop.
    _root: tokio_util::sync::DropGuard,
    commit_task: tokio::task::JoinHandle<()>,
    /// `<data>/lock`, held (flock) while this daemon runs.
    _lock: std::fs::File,
}

/// Takes `<data>/lock` (an exclusive `flock`, released when the process or the daemon
/// ends) and writes our PID in it; a daemon already running there is named with its PID.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StartError> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let path = dir.join("lock");
    let err = |source| StartError::DataDir { path: path.clone(), source };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(StartError::InUse { path: dir.to_path_buf(), pid: pid.trim().parse().ok() });
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    writeln!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

fn prepare_data_dir(dir: &Path, shared: bool) -> Result<(), StartError> {
    let err = |source| StartError::DataDir { path: dir.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    // Room secrets live in the database: nobody else may read anything here. With
    // `share_api_token` the group may list the dir and read the token and port, and still
    // nothing else: the database and chunks are 0700 whatever the umask.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(if shared { 0o750 } else { 0o700 })).map_err(err)?;
    for sub in ["db", "chunks"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// The mode of the files a member of the data dir's group may read (`share_api_token`).
fn shared_mode(shared: bool) -> u32 {
    if shared {
        0o640
    } else {
        0o600
    }
}

fn load_or_create_token(path: &Path, mode: u32) -> Result<String, KeyError> {
    let token = match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 32 => t.trim().to_string(),
        Ok(_) => return Err(KeyError::Corrupt(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = hex::encode(rand::random::<[u8; 32]>());
            keys::write_file_with_mode(path, token.as_bytes(), mode)?;
            return Ok(token);
        }
        Err(source) => return Err(KeyError::Io { path: path.display().to_string(), source }),
    };
    // The setting may have changed since the file was written.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
    Ok(token)
}

impl Daemon {
    /// Starts a daemon with this configuration.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let data_dir = config.resolved_data_dir()?;
        prepare_data_dir(&data_dir, config.share_api_token)?;
        let lock = lock_data_dir(&data_dir)?;
        let keypair = keys::load_or_create_identity(&data_dir.join("identity.key"))?;
        let device = keys::device::device_key(&keypair)
            .ok_or_else(|| KeyError::Corrupt(data_dir.join("identity.key").display().to_string()))?;
        let token_path = data_dir.join("api-token");
        let mode = shared_mode(config.share_api_token);
        let token = crate::service::token::ApiToken::new(load_or_create_token(&token_path, mode)?, token_path, mode);
        let cli_token = load_or_create_token(&data_dir.join("cli-token"), 0o600)?;
        let db_path = data_dir.join("db");
        let cache_bytes = config.cache_mb.saturating_mul(1 << 20);
        let reserve = config.limits.disk_reserve_mb.saturating_mul(1 << 20);
        let quota = WriterQuota {
            entries: config.limits.writer_entries,
            bytes: config.limits.writer_bytes,
            writers: config.limits.room_writers.max(1),
        };
        let store = tokio::task::spawn_blocking(move || {
            Store::open_with(&db_path, cache_bytes, reserve).map(|s| s.with_writer_quota(quota))
        })
        .await
        .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e.to_string()))))??;

        let node_config = NodeConfig {
            listen: config.listen.clone(),
            bootstrap: config.bootstrap.clone(),
            public_dht: (config.network == Network::Public).then(|| config.public_bootstrap.clone()),
            mdns: config.mdns,
            announce_private: config.announce_private_addrs,
            dht_mode: config.dht_mode,
            provider_ttl: Duration::from_secs(config.provider_ttl_secs.max(10)),
            relay_server: config.relay_server,
            external_addrs: config.external_addresses.clone(),
            connection_limits: node::ConnectionLimits {
                max_established: config.limits.connections,
                max_per_peer: config.limits.connections_per_peer,
                max_pending_incoming: config.limits.pending_connections,
                max_pending_outgoing: config.limits.pending_connections,
            },
            relay_circuit_bytes: config.limits.relay_circuit_bytes,
            relay_circuit_duration: Duration::from_secs(config.limits.relay_circuit_secs),
            relay_circuits: config.limits.relay_circuits,
            relay_circuits_per_peer: config.limits.relay_circuits_per_peer,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let (node, event_loop) =
            node::build_metered(keypair, &node_config, registry.sub_registry_with_prefix("libp2p")).await?;
        let metrics = crate::metrics::Metrics::new(registry);
        // The shutdown tree: `shutdown` cancels the branches in order (API, commits,
        // network); dropping the daemon cancels them all.
        let root = CancellationToken::new();
        let net_cancel = root.child_token();
        let tasks = Tasks::new();
        // The event loop ending on its own (a panic, ours or a libp2p behaviour's) leaves a
        // daemon that cannot reach anyone: the daemon fails, and `main` exits so that the
        // service manager restarts it.
        let node_task = {
            let event_loop = tasks.spawn("libp2p node", event_loop.run(net_cancel.clone()));
            let (tasks, asked) = (tasks.clone(), net_cancel.clone());
            tokio::spawn(async move {
                if matches!(event_loop.await, Ok(Some(()))) && !asked.is_cancelled() {
                    tasks.fail("the libp2p node stopped on its own".into());
                }
            })
        };
        let rooms = Arc::new(Rooms::default());
        let chunks = Chunks::with_disk(&data_dir, store.disk());
        let replicator = Replicator::new(
            store.clone(),
            chunks.clone(),
            rooms.clone(),
            node.clone(),
            config.limits.clone(),
            tasks.clone(),
            net_cancel.clone(),
        );
        replicator.spawn_acceptor().map_err(|_| NodeError::Build("replication protocol registered twice".into()))?;
        replicator.spawn_rotation();
        let commit_cancel = root.child_token();
        let (commit, commit_task) = GroupCommit::spawn(store.clone(), commit_cancel.clone());
        let service = Arc::new(Service {
            metrics,
            config: config.clone(),
            data_dir: data_dir.clone(),
            commit,
            commit_cancel,
            store,
            chunks,
            node,
            device,
            rooms,
            replicator,
            token,
            cli_token,
            kdf_slots: tokio::sync::Semaphore::new(KDF_SLOTS),
            epoch_turn: tokio::sync::Mutex::new(()),
            lan_peers: Default::default(),
            tasks,
            net_cancel,
        });
        service.resume()?;

        let listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .map_err(|source| StartError::Api { addr: config.api_listen, source })?;
        let api_addr = listener.local_addr().map_err(|source| StartError::Api { addr: config.api_listen, source })?;
        keys::write_file_with_mode(&data_dir.join("api-port"), format!("{}\n", api_addr.port()).as_bytes(), mode)?;
        let api_cancel = root.child_token();
        let api_task =
            tokio::spawn(service.tasks.watch("api", crate::api::serve(listener, service.clone(), api_cancel.clone())));
        info!(peer_id = %service.node.peer_id(), api = %api_addr, data_dir = %data_dir.display(), "peerlog started");
        Ok(Self {
            service,
            api_addr,
            api_cancel,
            api_task,
            node_task,
            commit_task,
            _root: root.drop_guard(),
            _lock: lock,
        })
    }

    /// The service the API drives.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Where the API listens.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The API token (it changes when rotated).
    pub fn token(&self) -> String {
        self.service.token.get()
    }

    /// Resolves if storage failed for good (a failed fsync, sled's log unwritable): the
    /// caller should shut down and exit non-zero, so that a restart recovers.
    pub async fn storage_failed(&self) -> Arc<StoreError> {
        self.service.commit.fatal().await
    }

    /// Resolves, with the reason, if a task of the daemon panicked or the libp2p node
    /// stopped on its own: a bug. The caller should shut down and exit non-zero, so that a
    /// restart brings the daemon back whole.
    pub async fn failed(&self) -> String {
        self.service.tasks.failed().await
    }

    /// The CLI credential (the API token's rights plus paths on this machine).
    pub fn cli_token(&self) -> &str {
        &self.service.cli_token
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.service.node.peer_id()
    }

    /// The web UI URL with the token in the fragment.
    pub fn ui_url(&self) -> String {
        format!("http://{}/#token={}", self.api_addr, self.service.token.get())
    }

    /// Stops accepting API requests (finishing those in flight, appends included), stops
    /// the network, flushes and closes the database. When it returns without a warning,
    /// nothing of this daemon holds the data dir any more (a new daemon may open it).
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.api_cancel.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.api_task).await.is_err() {
            warn!("API clients did not close in time");
        }
        self.service.commit_cancel.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.commit_task).await;
        self.service.net_cancel.cancel();
        self.service.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.service.tasks.wait()).await.is_err() {
            warn!("some sessions did not stop in time");
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.node_task).await;
        self.service.store.flush().await?;
        let holders = Arc::strong_count(&self.service) - 1;
        if holders > 0 {
            warn!(holders, "daemon state still referenced after shutdown; the database stays open until they drop");
        }
        info!("peerlog stopped");
        Ok(())
    }
}
