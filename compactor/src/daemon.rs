//! The daemon: joins the compactors' member set, claims the shards rendezvous hashing gives it,
//! compacts and garbage-collects them, and follows the member set as compactors come and go.
//!
//! The ownership protocol (lease, membership, placement, claim and release, rejoining after a
//! lost lease) is the gateways' session (`tessera::cluster::session`); this module is the
//! compactor's [`ShardHost`]: opening a shard starts its compaction job, closing stops it.
//! On every pass (each view change and every `TICK`):
//! 1. A job whose claim no longer holds (lease deadline passed, claim key gone) stops at once.
//!    A job that stopped on its own (fenced by another compactor, object-store failure, a
//!    shard no gateway has created yet) is counted as failed and its claim released; the shard
//!    is claimed and started afresh after a backoff (`poll_interval`, doubling per consecutive
//!    failure up to `MAX_BACKOFF`), so a shard that cannot be compacted costs no steady
//!    stream of claims, jobs and etcd writes.
//! 2. Every `poll_interval`: read each held shard's manifest into the metrics.
//! 3. While it holds shard 0's claim: a commit-log GC pass every `log_gc_interval`, in the
//!    background ([`crate::log_gc`]).
//!
//! Shutdown hands every shard over (stop the job, then release its claim), then deregisters
//! and revokes the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tessera::cluster::session::{Claim, Role, Session, ShardHost};
use tessera::objstore::ClusterStore;
use tessera::placement::Holding;
use tessera::{Member, ShardId};

use crate::config::CompactorConfig;
use crate::engine::{read_stats, Counters, ShardJob};
use crate::error::Result;
use crate::log_gc;
use crate::metrics::Metrics;

/// How often the loop runs without a view change.
const TICK: Duration = Duration::from_millis(250);

/// Longest wait before a shard whose job failed is claimed again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A shard this daemon holds.
struct Held {
    claim: Claim,
    job: ShardJob,
    /// The job's counters already added to the metrics.
    reported: Counters,
    /// Sorted runs seen so far (a new one is a committed compaction); `None` before the first
    /// manifest reading.
    runs: Option<BTreeSet<u32>>,
}

/// Runs the daemon until `shutdown` resolves.
pub async fn run(
    cfg: CompactorConfig,
    store: ClusterStore,
    shard_count: u32,
    me: Member,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let session = Session::join(&cfg.cluster, me, Role::Compactor).await?;
    tracing::info!(member = %session.me().id, shards = shard_count, "compactor joined");
    let job_timeout = cfg.compaction.job_timeout;
    let daemon = Arc::new(Daemon {
        cfg,
        store,
        shard_count,
        session: Arc::clone(&session),
        metrics,
        state: Mutex::default(),
    });
    session.start(Arc::clone(&daemon), 1, TICK).await?;
    shutdown.await;
    tracing::info!(
        shards = daemon.lock().held.len(),
        "stopping: releasing claims"
    );
    // All shards at once, and at most `job_timeout`: with the object store or etcd down each
    // stop waits out its retries. Leaving is safe: a claim not released expires with the
    // lease, and SlateDB's compactor fencing covers a job cut off mid-way, as after a crash.
    if tokio::time::timeout(job_timeout, session.leave(daemon.as_ref()))
        .await
        .is_err()
    {
        tracing::warn!("shards not stopped within compaction.job_timeout; leaving them to expire");
    }
    // A log GC pass still running is cut short: each delete stands on its own, and the next
    // holder of shard 0 runs the next pass.
    daemon.lock().log_gc.stop();
    session.close().await;
    Ok(())
}

struct Daemon {
    cfg: CompactorConfig,
    store: ClusterStore,
    shard_count: u32,
    session: Arc<Session>,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    held: BTreeMap<ShardId, Held>,
    /// Shards whose last job failed: consecutive failures, and when to claim again. Cleared by
    /// the first reading of an existing manifest while the shard's next job runs.
    backoff: BTreeMap<ShardId, (u32, Instant)>,
    /// When to read the held shards' manifests next.
    next_stats: Option<Instant>,
    /// Commit-log GC passes (run while this daemon holds shard 0's claim).
    log_gc: log_gc::Schedule,
}

#[async_trait::async_trait]
impl ShardHost for Daemon {
    fn holdings(&self) -> Vec<(ShardId, Holding)> {
        let now = Instant::now();
        let state = self.lock();
        (0..self.shard_count)
            .map(ShardId)
            .map(|s| {
                let holding = match (state.held.get(&s), state.backoff.get(&s)) {
                    (Some(h), _) => Holding::Held(h.claim.epoch),
                    (None, Some((_, retry_at))) if *retry_at > now => Holding::Busy,
                    (None, _) => Holding::Free,
                };
                (s, holding)
            })
            .collect()
    }

    async fn open(&self, claim: Claim) -> tessera::Result<()> {
        let job = ShardJob::start(
            &self.store,
            &self.cfg.object_store,
            &self.cfg.compaction,
            claim.shard,
            true,
        );
        tracing::info!(shard = %claim.shard, epoch = claim.epoch, "claimed shard");
        let held = Held {
            claim,
            job,
            reported: Counters::default(),
            runs: None,
        };
        let mut state = self.lock();
        state.held.insert(claim.shard, held);
        self.metrics.set_claimed(state.held.len());
        Ok(())
    }

    async fn close(&self, claim: Claim) {
        if let Some(h) = self.take(claim) {
            self.stop(h).await;
            tracing::info!(shard = %claim.shard, "released shard");
        }
    }

    async fn drop_claim(&self, claim: Claim) {
        if let Some(h) = self.take(claim) {
            tracing::warn!(shard = %claim.shard, epoch = claim.epoch, "compaction claim lost; stopping");
            self.stop(h).await;
        }
    }

    async fn tick(&self) {
        // Work only while the claim holds (lease deadline and claim key).
        let gone: Vec<Held> = {
            let mut state = self.lock();
            let shards: Vec<ShardId> = state
                .held
                .iter()
                .filter(|(_, h)| !self.session.holds(&h.claim) || h.job.finished())
                .map(|(s, _)| *s)
                .collect();
            shards.iter().filter_map(|s| state.held.remove(s)).collect()
        };
        for h in gone {
            let (shard, claim) = (h.job.shard(), h.claim);
            if h.job.finished() {
                // Free the shard so a later pass claims it and starts afresh.
                self.stop(h).await;
                self.session.release(claim).await;
                let mut state = self.lock();
                let failures = state.backoff.get(&shard).map_or(0, |(n, _)| *n) + 1;
                let wait = self
                    .cfg
                    .compaction
                    .poll_interval
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_BACKOFF);
                state
                    .backoff
                    .insert(shard, (failures, Instant::now() + wait));
            } else {
                tracing::warn!(%shard, epoch = claim.epoch, "compaction claim lost; stopping");
                self.stop(h).await;
            }
        }
        let due = self.lock().next_stats.is_none_or(|t| Instant::now() >= t);
        if due {
            self.refresh_stats().await;
            self.lock().next_stats = Some(Instant::now() + self.cfg.compaction.poll_interval);
        }
        {
            let mut state = self.lock();
            let State { held, log_gc, .. } = &mut *state;
            let runner = held
                .get(&ShardId(0))
                .is_some_and(|h| self.session.holds(&h.claim));
            log_gc.tick(runner, &self.store, &self.cfg.compaction, &self.metrics);
        }
        self.metrics.set_claimed(self.lock().held.len());
        self.metrics.lease(self.session.keepalive());
    }
}

impl Daemon {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `claim`'s shard out of the held set, if this daemon holds it under that claim.
    fn take(&self, claim: Claim) -> Option<Held> {
        let mut state = self.lock();
        if state.held.get(&claim.shard)?.claim != claim {
            return None;
        }
        let held = state.held.remove(&claim.shard);
        self.metrics.set_claimed(state.held.len());
        held
    }

    /// Stops `h`'s job and records its final counters (and its failure, if it failed).
    async fn stop(&self, mut h: Held) {
        let shard = h.job.shard();
        let (counters, outcome) = h.job.stop().await;
        self.report(shard, &mut h.reported, counters, 0);
        if let Err(e) = outcome {
            tracing::warn!(%shard, error = %e, "compactor stopped with an error");
            self.metrics.failed(shard);
        }
        self.metrics.forget(shard);
    }

    fn report(&self, shard: ShardId, reported: &mut Counters, now: Counters, compactions: u64) {
        let delta = Counters {
            bytes_written: now.bytes_written.saturating_sub(reported.bytes_written),
            ssts_written: now.ssts_written.saturating_sub(reported.ssts_written),
            gc_deleted: now.gc_deleted.saturating_sub(reported.gc_deleted),
        };
        self.metrics.add(shard, delta, compactions);
        *reported = now;
    }

    /// Reads every held shard's manifest (concurrently, so the loop stays responsive) into the
    /// metrics, with the jobs' counters.
    async fn refresh_stats(&self) {
        let shards: Vec<ShardId> = self.lock().held.keys().copied().collect();
        let (store, object_store) = (&self.store, &self.cfg.object_store);
        let readings =
            join_all(shards.iter().map(|&shard| async move {
                (shard, read_stats(store, object_store, shard).await)
            }))
            .await;
        let mut state = self.lock();
        let State { held, backoff, .. } = &mut *state;
        for (shard, stats) in readings {
            let Some(h) = held.get_mut(&shard) else {
                continue;
            };
            let now = h.job.counters();
            let mut compactions = 0;
            match stats {
                Ok(stats) => {
                    let runs: BTreeSet<u32> = stats.run_ids.iter().copied().collect();
                    if let Some(seen) = &h.runs {
                        compactions = runs.difference(seen).count() as u64;
                    }
                    h.runs = Some(runs);
                    self.metrics.observe(shard, &stats);
                    if stats.exists {
                        backoff.remove(&shard);
                    }
                }
                Err(e) => tracing::warn!(%shard, error = %e, "reading the manifest failed"),
            }
            self.report(shard, &mut h.reported, now, compactions);
        }
    }
}
