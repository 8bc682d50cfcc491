//! Group commit: appends are applied to sled at once, and each caller then waits for a
//! flush that started after its append. One flush covers every append made before it, so
//! concurrent senders share an fsync instead of queueing behind one each.
//!
//! It is also the store's only flusher (sled's own timer is off, see `store.rs`): while
//! anything was written, e.g. entries received from peers, it flushes every
//! [`BACKGROUND_FLUSH`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::store::{Store, StoreError};

/// How often written but unflushed data is flushed without anyone waiting for it.
pub const BACKGROUND_FLUSH: std::time::Duration = std::time::Duration::from_millis(200);

/// Waiters queued for the next flush.
const QUEUE: usize = 4096;

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// Handle to the flushing task. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Waiter>,
    failed: tokio::sync::watch::Receiver<Option<Arc<StoreError>>>,
}

/// Whether a failed flush leaves the store unable to make anything durable again in this
/// process: sled 0.34 keeps failing after an I/O error in its log, and after a failed
/// fsync the kernel may have dropped the unsynced pages (a retry would lie). Like
/// PostgreSQL after a failed fsync, the daemon then stops; its service manager restarts it
/// and the store recovers from what is on disk.
fn is_fatal(e: &StoreError) -> bool {
    matches!(e, StoreError::Sled(_) | StoreError::SyncFailed)
}

/// The flush failed, or the committer stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// sled could not flush.
    #[error("flush failed: {0}")]
    Flush(Arc<StoreError>),
    /// The committer has stopped (shutdown).
    #[error("the committer has stopped")]
    Shutdown,
}

impl GroupCommit {
    /// Starts the flushing task; it ends when `cancel` fires and the queue is drained.
    pub fn spawn(store: Store, cancel: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Waiter>(QUEUE);
        let (failed_tx, failed) = tokio::sync::watch::channel(None);
        let fail = move |e: &Arc<StoreError>| {
            if is_fatal(e) && failed_tx.borrow().is_none() {
                tracing::error!(error = %e, "storage cannot make data durable any more; stopping (a restart recovers from what is on disk)");
                let _ = failed_tx.send(Some(e.clone()));
            }
        };
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(BACKGROUND_FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let first = tokio::select! {
                    w = rx.recv() => match w { Some(w) => w, None => break },
                    _ = tick.tick() => {
                        if store.has_unflushed() {
                            if let Err(e) = timed_flush(&store).await {
                                tracing::error!(error = %e, "background flush failed");
                                fail(&Arc::new(e));
                            }
                        }
                        continue;
                    }
                    _ = cancel.cancelled() => break,
                };
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let result = timed_flush(&store).await.map_err(Arc::new);
                if let Err(e) = &result {
                    fail(e);
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            // Whoever is still queued gets a final flush.
            rx.close();
            let mut rest = Vec::new();
            while let Ok(w) = rx.try_recv() {
                rest.push(w);
            }
            if !rest.is_empty() {
                let result = timed_flush(&store).await.map_err(Arc::new);
                for w in rest {
                    let _ = w.send(result.clone());
                }
            }
        });
        (Self { tx, failed }, task)
    }

    /// Resolves when a flush failed in a way this process cannot recover from (see
    /// `is_fatal`), with that error; never otherwise.
    pub async fn fatal(&self) -> Arc<StoreError> {
        let mut failed = self.failed.clone();
        loop {
            if let Some(e) = failed.borrow_and_update().clone() {
                return e;
            }
            if failed.changed().await.is_err() {
                // The committer stopped (shutdown) without a fatal error.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The fatal flush failure, if one happened.
    pub fn failed_now(&self) -> Option<Arc<StoreError>> {
        self.failed.borrow().clone()
    }

    /// Returns once everything appended before this call is on disk.
    pub async fn durable(&self) -> Result<(), CommitError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| CommitError::Shutdown)?;
        rx.await.map_err(|_| CommitError::Shutdown)?.map_err(CommitError::Flush)
    }
}

/// How long the committer's flushes take (the fsyncs of sled's log and the data files), in
/// seconds: one histogram for the process (`peerlog_flush_seconds`, `crate::metrics`).
pub static FLUSH_SECONDS: std::sync::LazyLock<prometheus_client::metrics::histogram::Histogram> =
    std::sync::LazyLock::new(|| {
        prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
        )
    });

/// [`Store::flush`], timed into [`FLUSH_SECONDS`].
async fn timed_flush(store: &Store) -> Result<(), StoreError> {
    let start = std::time::Instant::now();
    let result = store.flush().await;
    FLUSH_SECONDS.observe(start.elapsed().as_secs_f64());
    result
}
