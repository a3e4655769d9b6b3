//! Commit-log GC in the compactor: passes of `tessera::storage::log::gc::collect` (the rules
//! and their safety argument are there), every `compaction.log_gc_interval` in the daemon and
//! once at the end of `--once`.
//!
//! **One runner per fleet.** Among daemons, the one holding shard 0's compaction claim runs
//! the passes: claims are already exclusive while leases hold, so this needs no election of
//! its own, and when that daemon dies shard 0 (and GC with it) moves with the claim. Passes
//! are safe to overlap (each decision rests on the pass's own LIST and reads; deleting a
//! deleted object is no error), so the claim only avoids duplicated work: a pass still
//! running when shard 0 moves is left to finish, and `--once` runs its pass without any
//! claim.

use std::sync::Arc;
use std::time::Instant;

use tessera::objstore::ClusterStore;
use tessera::storage::log::gc::{self, GcOptions, GcReport};
use tokio::task::JoinHandle;

use crate::config::CompactionConfig;
use crate::error::Result;
use crate::metrics::Metrics;

/// The pass settings from the compactor's configuration.
pub fn options(cfg: &CompactionConfig) -> GcOptions {
    GcOptions {
        fence_min_age: cfg.log_fence_min_age,
    }
}

/// Runs one pass.
pub async fn pass(store: &ClusterStore, cfg: &CompactionConfig) -> Result<GcReport> {
    Ok(gc::collect(store, &options(cfg)).await?)
}

/// The daemon's schedule: at most one pass at a time, one every `log_gc_interval` (counted
/// from the start of the previous one) while this daemon is the runner.
#[derive(Default)]
pub struct Schedule {
    next: Option<Instant>,
    running: Option<JoinHandle<()>>,
}

impl Schedule {
    /// Starts a pass in the background if this daemon is the runner (`runner`), none is
    /// running, and one is due. Cheap; call on every loop pass.
    pub fn tick(
        &mut self,
        runner: bool,
        store: &ClusterStore,
        cfg: &CompactionConfig,
        metrics: &Arc<Metrics>,
    ) {
        if self.running.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        self.running = None;
        let now = Instant::now();
        if !runner || self.next.is_some_and(|t| now < t) {
            return;
        }
        self.next = Some(now + cfg.log_gc_interval);
        let (store, cfg, metrics) = (store.clone(), cfg.clone(), Arc::clone(metrics));
        self.running = Some(tokio::spawn(async move {
            match pass(&store, &cfg).await {
                Ok(report) => metrics.log_gc_done(&report),
                Err(e) => {
                    tracing::warn!(error = %e, "log GC pass failed");
                    metrics.log_gc_failed();
                }
            }
        }));
    }

    /// Stops a running pass (safe at any point: every delete stands on its own).
    pub fn stop(&mut self) {
        if let Some(t) = self.running.take() {
            t.abort();
        }
    }
}
