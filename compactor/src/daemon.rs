//! The daemon: joins the compactors' member set, claims the shards rendezvous hashing gives it,
//! compacts and garbage-collects them, and follows the member set as compactors come and go.
//!
//! One loop, woken by view changes and every `TICK`:
//! 1. Lease lost (etcd does not know it or said TTL 0, or a whole TTL passed without an
//!    acknowledged keep-alive, e.g. cut off from etcd): every claim went with it; stop every
//!    job, then grant a new lease, retried every tick until etcd answers.
//! 2. A job whose claim no longer holds (lease deadline passed, claim key gone) stops at once.
//!    A job that stopped on its own (fenced by another compactor, object-store failure, a
//!    shard no gateway has created yet) is counted as failed and its claim released; the shard
//!    is claimed and started afresh after a backoff (`poll_interval`, doubling per consecutive
//!    failure up to `MAX_BACKOFF`), so a shard that cannot be compacted costs no steady
//!    stream of claims, jobs and etcd writes.
//! 3. Unless a membership change is younger than `rebalance_delay`: release the shards another
//!    live compactor should have (stop the job first, then delete the claim) and claim the
//!    unclaimed shards this compactor should have.
//! 4. Every `poll_interval`: read each held shard's manifest into the metrics.
//!
//! Shutdown stops every job, then releases its claim, then deregisters and revokes the lease.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use tessera::claims::{Claim, Claims};
use tessera::objstore::ClusterStore;
use tessera::placement::Holding;
use tessera::{Member, ShardId};

use crate::config::CompactorConfig;
use crate::engine::{read_stats, Counters, ShardJob};
use crate::error::Result;
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
    let claims = Claims::join(&cfg.cluster, me, true).await?;
    tracing::info!(member = %claims.me().id, shards = shard_count, "compactor joined");
    let mut daemon = Daemon {
        cfg,
        store,
        shard_count,
        claims,
        metrics,
        held: BTreeMap::new(),
        backoff: BTreeMap::new(),
    };
    let mut changes = daemon.claims.subscribe();
    let mut members = BTreeMap::new();
    let mut quiet_until = Instant::now();
    let mut next_stats = Instant::now();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let view_members = changes.borrow_and_update().members.clone();
        if view_members != members {
            members = view_members;
            quiet_until = Instant::now() + daemon.cfg.cluster.rebalance_delay;
        }
        daemon.step(Instant::now() >= quiet_until).await;
        if Instant::now() >= next_stats {
            daemon.refresh_stats().await;
            next_stats = Instant::now() + daemon.cfg.compaction.poll_interval;
        }
    }
    tracing::info!(shards = daemon.held.len(), "stopping: releasing claims");
    // All shards at once, and at most `job_timeout`: with the object store or etcd down each
    // stop waits out its retries. Leaving is safe: a claim not released expires with the
    // lease, and SlateDB's compactor fencing covers a job cut off mid-way, as after a crash.
    let held = std::mem::take(&mut daemon.held);
    let release = join_all(held.into_values().map(|h| daemon.stop_and_release(h)));
    if tokio::time::timeout(daemon.cfg.compaction.job_timeout, release)
        .await
        .is_err()
    {
        tracing::warn!("shards not stopped within compaction.job_timeout; leaving them to expire");
    }
    daemon.claims.close().await;
    Ok(())
}

struct Daemon {
    cfg: CompactorConfig,
    store: ClusterStore,
    shard_count: u32,
    claims: Arc<Claims>,
    metrics: Arc<Metrics>,
    held: BTreeMap<ShardId, Held>,
    /// Shards whose last job failed: consecutive failures, and when to claim again. Cleared by
    /// the first reading of an existing manifest while the shard's next job runs.
    backoff: BTreeMap<ShardId, (u32, Instant)>,
}

impl Daemon {
    async fn step(&mut self, rebalance: bool) {
        if self.claims.lease_lost() {
            let held = std::mem::take(&mut self.held);
            if !held.is_empty() {
                tracing::warn!(shards = held.len(), "lease lost: stopping every shard");
                join_all(held.into_values().map(|h| self.stop(h))).await;
                self.metrics.set_claimed(0);
            }
            if let Err(e) = self.claims.renew().await {
                tracing::warn!(error = %e, "rejoin failed; retrying");
            }
            self.metrics.lease(self.claims.lease_stats());
            return;
        }
        self.claims.keep_registered().await;
        // Work only while the claim holds (lease deadline and claim key).
        let gone: Vec<ShardId> = self
            .held
            .iter()
            .filter(|(_, h)| !self.claims.holds(&h.claim) || h.job.finished())
            .map(|(s, _)| *s)
            .collect();
        for shard in gone {
            let Some(h) = self.held.remove(&shard) else {
                continue;
            };
            if h.job.finished() {
                // Free the shard so a later pass claims it and starts afresh.
                self.stop_and_release(h).await;
                let failures = self.backoff.get(&shard).map_or(0, |(n, _)| *n) + 1;
                let wait = self
                    .cfg
                    .compaction
                    .poll_interval
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(MAX_BACKOFF);
                self.backoff
                    .insert(shard, (failures, Instant::now() + wait));
            } else {
                tracing::warn!(%shard, epoch = h.claim.epoch, "compaction claim lost; stopping");
                self.stop(h).await;
            }
        }
        if !rebalance {
            return;
        }
        let now = Instant::now();
        let holdings = (0..self.shard_count).map(ShardId).map(|s| {
            let holding = match (self.held.get(&s), self.backoff.get(&s)) {
                (Some(h), _) => Holding::Held(h.claim.epoch),
                (None, Some((_, retry_at))) if *retry_at > now => Holding::Busy,
                (None, _) => Holding::Free,
            };
            (s, holding)
        });
        let moves = self.claims.plan(holdings);
        for (shard, _) in moves.lost.into_iter().chain(moves.release) {
            if let Some(h) = self.held.remove(&shard) {
                self.stop_and_release(h).await;
                tracing::info!(%shard, "released shard");
            }
        }
        for shard in moves.acquire {
            match self.claims.claim(shard).await {
                Ok(Some(claim)) => {
                    let job = ShardJob::start(
                        &self.store,
                        &self.cfg.object_store,
                        &self.cfg.compaction,
                        shard,
                        true,
                    );
                    tracing::info!(%shard, epoch = claim.epoch, "claimed shard");
                    self.held.insert(
                        shard,
                        Held {
                            claim,
                            job,
                            reported: Counters::default(),
                            runs: None,
                        },
                    );
                }
                Ok(None) => {} // claimed by someone else; the watch will tell us
                Err(e) => tracing::warn!(%shard, error = %e, "claim failed"),
            }
        }
        self.metrics.set_claimed(self.held.len());
        self.metrics.lease(self.claims.lease_stats());
    }

    /// Stops `h`'s job and records its final counters (and its failure, if it failed).
    /// Stops `h`'s job, then deletes its claim. ORDERING: compacting stops before the claim
    /// goes, so the next holder never overlaps with us.
    async fn stop_and_release(&self, h: Held) {
        let claim = h.claim;
        self.stop(h).await;
        self.claims.release(claim).await;
    }

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
    async fn refresh_stats(&mut self) {
        let shards: Vec<ShardId> = self.held.keys().copied().collect();
        let (store, object_store) = (&self.store, &self.cfg.object_store);
        let readings =
            join_all(shards.iter().map(|&shard| async move {
                (shard, read_stats(store, object_store, shard).await)
            }))
            .await;
        for (shard, stats) in readings {
            let Some(h) = self.held.get_mut(&shard) else {
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
                        self.backoff.remove(&shard);
                    }
                }
                Err(e) => tracing::warn!(%shard, error = %e, "reading the manifest failed"),
            }
            let mut reported = h.reported;
            self.report(shard, &mut reported, now, compactions);
            if let Some(h) = self.held.get_mut(&shard) {
                h.reported = reported;
            }
        }
    }
}
