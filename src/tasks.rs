//! Background tasks: every one named, tracked, and cancelled on shutdown.
//!
//! A component (a node, a session, a shard's database) owns one [`Tasks`]. [`Tasks::spawn`]
//! runs a future until it ends or the component shuts down, whichever comes first, inside a
//! `task` span carrying its name, so a log line always says which background job wrote it.
//! [`Tasks::shutdown`] cancels them all and waits until every one has returned: nothing
//! outlives its owner. [`Tasks::detach`] is for the one other kind: work moved off a request so
//! that it finishes even if the request is dropped (a write's cache record); it is named but
//! never cancelled.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The background tasks of one component.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set cancelled with this one (and on its own [`Tasks::shutdown`]) with its own
    /// tracker: shutting the child down waits only for its tasks.
    pub fn child(&self) -> Self {
        Tasks {
            cancel: self.cancel.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Runs `task` in the background until it returns or the set shuts down.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        let run = async move {
            tokio::select! {
                _ = cancel.cancelled() => tracing::debug!("cancelled"),
                () = task => {}
            }
        };
        self.tracker
            .spawn(run.instrument(tracing::debug_span!("task", name)));
    }

    /// Runs `work` to its end in the background, whether or not anyone awaits the handle.
    /// Never cancelled, and not waited for on shutdown: for work a dropped request must not
    /// abandon, which ends by itself (it waits on a store that shutdown closes).
    pub fn detach<F>(&self, name: &'static str, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(work.instrument(tracing::debug_span!("task", name)))
    }

    /// Cancels every task without waiting (for owners that stop in `Drop`).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Closes the set to new tasks and waits until each task has returned on its own.
    pub async fn finished(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Cancels every task and waits until each has returned. Idempotent.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new();
        let child = tasks.child();
        let (ran, finished) = tokio::sync::oneshot::channel();
        tasks.spawn("finishes", async move { ran.send(()).unwrap() });
        finished.await.expect("a task runs to its end");
        child.spawn("forever", std::future::pending());
        tasks.spawn("forever", std::future::pending());
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.shutdown())
            .await
            .expect("pending tasks are cancelled");
        tokio::time::timeout(std::time::Duration::from_secs(5), child.finished())
            .await
            .expect("a child's tasks are cancelled with its parent");
    }
}
