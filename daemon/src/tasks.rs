//! The daemon's task tree. Every long-lived task is spawned through [`Tasks`], which
//! tracks it for shutdown ([`Tasks::close`], [`Tasks::wait`]) and watches it for panics. A
//! panic is a bug: it is logged with the task's name and ends the daemon cleanly
//! ([`Tasks::failed`]; `main` then shuts down and exits 70, so that the service manager
//! starts it again) instead of leaving a daemon that runs with a part missing.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tracks and watches the daemon's tasks. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    failed: CancellationToken,
    /// The first failure.
    why: Arc<Mutex<Option<String>>>,
}

impl Tasks {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `fut` as the task `name`: tracked, and watched for a panic (then the result is
    /// `None` and the daemon fails).
    pub fn spawn<F>(&self, name: &'static str, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(self.watch(name, fut))
    }

    /// `fut`, watched for a panic like a spawned task, for tasks that something else spawns
    /// (axum's WebSocket handlers, a client's requests).
    pub fn watch<F: Future>(&self, name: &'static str, fut: F) -> impl Future<Output = Option<F::Output>> {
        let this = self.clone();
        async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(out) => Some(out),
                Err(panic) => {
                    this.fail(format!("task {name} panicked: {}", panic_message(panic.as_ref())));
                    None
                }
            }
        }
    }

    /// The daemon cannot go on: says why (the first reason is kept) and wakes [`Tasks::failed`].
    pub fn fail(&self, why: String) {
        tracing::error!(%why, "the daemon stops (a bug: it is restarted by its service manager)");
        self.why.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(why);
        self.failed.cancel();
    }

    /// Resolves with the reason once a task failed.
    pub async fn failed(&self) -> String {
        self.failed.cancelled().await;
        self.why.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default()
    }

    /// No new tasks: [`Tasks::wait`] can end.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Waits for every task, once closed.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_fails_the_tree_with_its_name_and_the_others_finish() {
        let tasks = Tasks::new();
        let fine = tasks.spawn("fine", async { 7 });
        let bad = tasks.spawn("sessions", async {
            if true {
                panic!("index out of bounds");
            }
        });
        assert_eq!(fine.await.unwrap(), Some(7));
        assert_eq!(bad.await.unwrap(), None, "a panic is caught, not propagated");
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), tasks.failed()).await.unwrap();
        assert!(why.contains("sessions") && why.contains("index out of bounds"), "{why}");
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait()).await.unwrap();
    }
}
