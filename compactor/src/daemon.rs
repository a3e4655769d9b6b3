//! The daemon: joins the compactors' member set, claims the shards rendezvous hashing gives it,
//! compacts and garbage-collects them, and follows the member set as compactors come and go.
//!
//! The ownership protocol (lease, membership, placement, claim and release, rejoining after a
//! lost lease) is the gateways' session (`tessera::cluster::session`); this module is the
//! compactor's [`ShardHost`]. Holding a shard's claim costs nothing in the object store by
//! itself: work follows the owners' compaction hints (`tessera::storage::hints`), so an idle
//! shard has no SlateDB compactor polling its manifest. On every pass (each view change and
//! every `TICK`):
//! 1. A shard whose claim no longer holds (lease deadline passed, claim key gone) stops at
//!    once. A job that stopped on its own (fenced by another compactor, object-store failure)
//!    is counted as failed and its claim released; the shard is claimed afresh after a backoff
//!    (`poll_interval`, doubling per consecutive failure up to `MAX_BACKOFF`), so a shard that
//!    cannot be compacted costs no steady stream of claims, jobs and etcd writes.
//! 2. Every `poll_interval`: one LIST of the hints (for all shards at once). A held shard that
//!    is hinted gets a compaction job ([`ShardJob`]) if it has none; a job whose shard was
//!    missing from `LINGER_PASSES` consecutive lists stops. The linger rides out an owner
//!    clearing and setting its hint around a flush, and lets a compaction that the scheduler
//!    already planned finish. Then the manifests of the shards with a job (and of newly
//!    claimed shards, once) are read into the metrics.
//! 3. Garbage collection: one-shot passes ([`collect_garbage_once`], a few LISTs), each held
//!    shard's every `gc_interval`, its first at a point of the interval that depends on the
//!    shard (so a daemon's shards do not all sweep together), at most `GC_CONCURRENCY` at a
//!    time. A pass also reads the shard's manifest for the metrics: the slow sweep that keeps
//!    the gauges of idle shards. A shard whose job stopped gets its next pass at most
//!    `gc_min_age` later, once the SSTs that compaction replaced may be deleted.
//! 4. While it holds shard 0's claim: a commit-log GC pass every `log_gc_interval`, in the
//!    background ([`crate::log_gc`]).
//!
//! Shutdown hands every shard over (stop the job and GC pass, then release its claim), then
//! deregisters and revokes the lease.
//!
//! Invariant: a job or GC pass runs on a shard only while this daemon holds its claim (it is
//! stopped before the claim is released, and as soon as the claim stops holding).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::FutureExt;
use tessera::cluster::session::{Claim, Role, Session, ShardHost};
use tessera::objstore::ClusterStore;
use tessera::placement::Holding;
use tessera::storage::hints;
use tessera::{Member, ShardId};
use tokio::task::JoinHandle;

use crate::config::CompactorConfig;
use crate::engine::{collect_garbage_once, read_stats, Counters, ShardJob, ShardStats};
use crate::error::Result;
use crate::log_gc;
use crate::metrics::Metrics;

/// How often the loop runs without a view change.
const TICK: Duration = Duration::from_millis(250);

/// Longest wait before a shard whose job failed is claimed again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Consecutive hint lists without a shard after which its job stops.
const LINGER_PASSES: u32 = 2;

/// GC passes running at once in one daemon.
const GC_CONCURRENCY: usize = 4;

/// A GC pass's result: its work, and the manifest reading taken before it.
type GcPass = JoinHandle<(Counters, Result<ShardStats>)>;

/// A shard this daemon holds.
struct Held {
    claim: Claim,
    /// The shard's compactor, while it is hinted (and `LINGER_PASSES` lists after).
    job: Option<ShardJob>,
    /// Consecutive hint lists without this shard while its job runs.
    unhinted: u32,
    /// The running job's counters already added to the metrics.
    reported: Counters,
    /// Sorted runs seen so far (a new one is a committed compaction); `None` before the first
    /// manifest reading.
    runs: Option<BTreeSet<u32>>,
    /// When the next GC pass is due.
    gc_at: Instant,
    /// The running GC pass.
    gc: Option<GcPass>,
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
    /// When to list the hints (and read the compacting shards' manifests) next.
    next_poll: Option<Instant>,
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
        tracing::info!(shard = %claim.shard, epoch = claim.epoch, "claimed shard");
        // The shard's place in the GC interval (Knuth's multiplicative hash, as the gateways
        // spread their checkpoints).
        let spread = f64::from(claim.shard.0.wrapping_mul(2_654_435_761) % 1000) / 1000.0;
        let held = Held {
            claim,
            job: None,
            unhinted: 0,
            reported: Counters::default(),
            runs: None,
            gc_at: Instant::now() + self.cfg.compaction.gc_interval.mul_f64(spread),
            gc: None,
        };
        let mut state = self.lock();
        state.held.insert(claim.shard, held);
        self.metrics.set_claimed(state.held.len());
        // List the hints on the next pass: a newly claimed hinted shard starts compacting now,
        // not a poll interval later.
        state.next_poll = None;
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
        self.stop_lost_and_failed().await;
        self.collect_gc_passes();
        let due = self.lock().next_poll.is_none_or(|t| Instant::now() >= t);
        if due {
            self.lock().next_poll = Some(Instant::now() + self.cfg.compaction.poll_interval);
            self.follow_hints().await;
            self.refresh_stats().await;
        }
        self.start_gc_passes();
        {
            let mut state = self.lock();
            let State { held, log_gc, .. } = &mut *state;
            let runner = held
                .get(&ShardId(0))
                .is_some_and(|h| self.session.holds(&h.claim));
            log_gc.tick(runner, &self.store, &self.cfg.compaction, &self.metrics);
        }
        {
            let state = self.lock();
            self.metrics.set_claimed(state.held.len());
            let compacting = state.held.values().filter(|h| h.job.is_some()).count();
            self.metrics.set_compacting(compacting);
        }
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

    /// Stops the shards whose claim no longer holds, and releases (with a backoff) those whose
    /// job stopped on its own.
    async fn stop_lost_and_failed(&self) {
        let gone: Vec<Held> = {
            let mut state = self.lock();
            let shards: Vec<ShardId> = state
                .held
                .iter()
                .filter(|(_, h)| !self.session.holds(&h.claim) || failed(h))
                .map(|(s, _)| *s)
                .collect();
            shards.iter().filter_map(|s| state.held.remove(s)).collect()
        };
        for h in gone {
            let (shard, claim) = (h.claim.shard, h.claim);
            if failed(&h) {
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
    }

    /// Stops `h`'s job and GC pass and records the job's final counters (and its failure, if
    /// it failed).
    async fn stop(&self, mut h: Held) {
        let shard = h.claim.shard;
        if let Some(gc) = h.gc.take() {
            // Safe at any point: every delete stands on its own.
            gc.abort();
        }
        if let Some(job) = h.job.take() {
            self.stop_job(job, h.reported).await;
        }
        self.metrics.forget(shard);
    }

    /// Stops `job` and records its counters beyond `reported` (and its failure, if it failed).
    async fn stop_job(&self, job: ShardJob, mut reported: Counters) {
        let shard = job.shard();
        let (counters, outcome) = job.stop().await;
        self.report(shard, &mut reported, counters, 0);
        if let Err(e) = outcome {
            tracing::warn!(%shard, error = %e, "compactor stopped with an error");
            self.metrics.failed(shard);
        }
    }

    /// Lists the hints once and starts or stops the held shards' jobs to match. A failed LIST
    /// changes nothing (the next poll retries).
    async fn follow_hints(&self) {
        let os = &self.cfg.object_store;
        let bound = os.request_timeout * (os.max_retries + 1);
        let hinted: BTreeSet<ShardId> =
            match tokio::time::timeout(bound, hints::list(&self.store)).await {
                Ok(Ok(shards)) => shards.into_iter().collect(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "listing compaction hints failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!("listing compaction hints took longer than {bound:?}");
                    return;
                }
            };
        let idle: Vec<(ShardJob, Counters)> = {
            let mut state = self.lock();
            let mut idle = Vec::new();
            let after_compaction = Instant::now() + self.cfg.compaction.gc_min_age;
            for (&shard, h) in state.held.iter_mut() {
                if hinted.contains(&shard) {
                    h.unhinted = 0;
                    if h.job.is_none() && self.session.holds(&h.claim) {
                        tracing::info!(%shard, "shard hinted; compacting");
                        h.job = Some(ShardJob::start(
                            &self.store,
                            os,
                            &self.cfg.compaction,
                            shard,
                        ));
                    }
                } else if h.job.is_some() {
                    h.unhinted += 1;
                    if h.unhinted >= LINGER_PASSES {
                        tracing::info!(%shard, "shard no longer hinted; stopping its compactor");
                        h.unhinted = 0;
                        // Reclaim what the compaction replaced once it may be deleted.
                        h.gc_at = h.gc_at.min(after_compaction);
                        idle.extend(h.job.take().map(|j| (j, std::mem::take(&mut h.reported))));
                    }
                }
            }
            idle
        };
        // Stopped outside the lock: a stop waits for the job.
        join_all(
            idle.into_iter()
                .map(|(job, reported)| self.stop_job(job, reported)),
        )
        .await;
    }

    /// Starts the due GC passes, at most `GC_CONCURRENCY` running at once.
    fn start_gc_passes(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let running = state.held.values().filter(|h| h.gc.is_some()).count();
        let mut free = GC_CONCURRENCY.saturating_sub(running);
        for (&shard, h) in state.held.iter_mut() {
            if free == 0 {
                break;
            }
            if h.gc.is_some() || now < h.gc_at || !self.session.holds(&h.claim) {
                continue;
            }
            free -= 1;
            h.gc_at = now + self.cfg.compaction.gc_interval;
            let (store, os, cfg) = (
                self.store.clone(),
                self.cfg.object_store.clone(),
                self.cfg.compaction.clone(),
            );
            h.gc = Some(tokio::spawn(async move {
                let stats = read_stats(&store, &os, shard).await;
                // A shard no gateway has created yet has nothing to collect.
                let counters = match &stats {
                    Ok(s) if s.exists => collect_garbage_once(&store, &os, &cfg, shard).await,
                    _ => Counters::default(),
                };
                (counters, stats)
            }));
        }
    }

    /// Records the GC passes that finished.
    fn collect_gc_passes(&self) {
        let mut state = self.lock();
        let State { held, backoff, .. } = &mut *state;
        for (&shard, h) in held.iter_mut() {
            if !h.gc.as_ref().is_some_and(JoinHandle::is_finished) {
                continue;
            }
            let Some(Ok((counters, stats))) = h.gc.take().and_then(|t| t.now_or_never()) else {
                continue;
            };
            self.metrics.add(shard, counters, 0);
            self.apply_stats(shard, h, backoff, stats);
        }
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

    /// Records a manifest reading of held shard `shard`: the gauges, and the compactions
    /// committed since the last reading.
    fn apply_stats(
        &self,
        shard: ShardId,
        h: &mut Held,
        backoff: &mut BTreeMap<ShardId, (u32, Instant)>,
        stats: Result<ShardStats>,
    ) {
        match stats {
            Ok(stats) => {
                let runs: BTreeSet<u32> = stats.run_ids.iter().copied().collect();
                let compactions = h
                    .runs
                    .as_ref()
                    .map_or(0, |seen| runs.difference(seen).count() as u64);
                h.runs = Some(runs);
                self.metrics.add(shard, Counters::default(), compactions);
                self.metrics.observe(shard, &stats);
                if stats.exists && h.job.is_some() {
                    backoff.remove(&shard);
                }
            }
            Err(e) => tracing::warn!(%shard, error = %e, "reading the manifest failed"),
        }
    }

    /// Reads the manifests of the held shards with a job, and of those never read yet
    /// (concurrently, so the loop stays responsive), into the metrics, with the jobs' counters.
    async fn refresh_stats(&self) {
        let shards: Vec<ShardId> = self
            .lock()
            .held
            .iter()
            .filter(|(_, h)| h.job.is_some() || h.runs.is_none())
            .map(|(s, _)| *s)
            .collect();
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
            if let Some(job) = &h.job {
                let now = job.counters();
                self.report(shard, &mut h.reported, now, 0);
            }
            self.apply_stats(shard, h, backoff, stats);
        }
    }
}

/// True if `h`'s job stopped on its own.
fn failed(h: &Held) -> bool {
    h.job.as_ref().is_some_and(ShardJob::finished)
}
