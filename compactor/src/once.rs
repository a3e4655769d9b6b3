//! The batch job (`tessera-compactor --once`): one maintenance pass over every shard, for a
//! Kubernetes CronJob or a manual run.
//!
//! For each shard, at most `once_concurrency` at a time and all within `once_timeout`:
//! - claim it under the job's own lease, without joining the compactors' member set (so
//!   daemons never place shards onto a batch job);
//! - if its L0 has `l0_threshold` SSTs or more, run SlateDB's compactor until it has fewer
//!   (the batch job reads every manifest rather than following compaction hints, as the
//!   daemon does: a pass that runs now and then is not idle polling, and it also catches a
//!   shard whose owner could not write its hint);
//! - run one garbage-collection pass, then release the claim.
//!
//! Then one commit-log GC pass ([`crate::log_gc`]), without a claim: passes may overlap a
//! daemon's.
//!
//! A shard claimed by someone else (a daemon, another batch job) is left to them: the job
//! waits until its L0 is below the threshold, and claims it itself if the claim goes away
//! first. So a batch job never works on a shard concurrently with a daemon, and it may run
//! next to daemons. It succeeds (exit 0) when every shard ends below the threshold and no
//! compactor run failed.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tessera::cluster::session::{Claim, Role, Session};
use tessera::objstore::ClusterStore;
use tessera::storage::log::gc::GcReport;
use tessera::{Member, ShardId};

use crate::config::CompactorConfig;
use crate::engine::{collect_garbage_once, read_stats, Counters, ShardJob, PROGRESS_POLL};
use crate::error::Result;
use crate::log_gc;
use crate::progress::Progress;

/// What happened to one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Already below the threshold; garbage-collected only.
    AlreadyCompact,
    /// Compacted by this job.
    Compacted,
    /// Another compactor held the shard and brought it below the threshold.
    ByOther,
    /// Not below the threshold in time, or a compactor run failed.
    Failed(String),
}

/// One shard's part of the summary.
#[derive(Debug, Clone)]
pub struct ShardReport {
    /// The shard.
    pub shard: ShardId,
    /// L0 SSTs before and after.
    pub l0_before: usize,
    pub l0_after: usize,
    /// Work done by this job.
    pub counters: Counters,
    /// What happened.
    pub outcome: Outcome,
    /// Time spent on the shard.
    pub elapsed: Duration,
}

impl fmt::Display for ShardReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.outcome {
            Outcome::AlreadyCompact => "below threshold".to_string(),
            Outcome::Compacted => "compacted".to_string(),
            Outcome::ByOther => "compacted by another compactor".to_string(),
            Outcome::Failed(why) => format!("FAILED: {why}"),
        };
        write!(
            f,
            "shard {}: {what}; L0 {} -> {}, {} bytes written, {} objects deleted ({:.1}s)",
            self.shard,
            self.l0_before,
            self.l0_after,
            self.counters.bytes_written,
            self.counters.gc_deleted,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Per shard, in shard order.
    pub shards: Vec<ShardReport>,
    /// The commit-log GC pass, or why it failed.
    pub log_gc: std::result::Result<GcReport, String>,
    /// Wall time.
    pub elapsed: Duration,
}

impl Summary {
    /// True if every shard ended below the threshold, nothing failed, and the log GC pass ran.
    pub fn succeeded(&self) -> bool {
        self.log_gc.is_ok()
            && !self
                .shards
                .iter()
                .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |o: fn(&Outcome) -> bool| self.shards.iter().filter(|r| o(&r.outcome)).count();
        let mut total = Counters::default();
        for r in &self.shards {
            total += r.counters;
        }
        write!(
            f,
            "{} shards: {} compacted, {} already below threshold, {} compacted by others, {} failed; \
             {} bytes written, {} objects deleted in {:.1}s",
            self.shards.len(),
            count(|o| *o == Outcome::Compacted),
            count(|o| *o == Outcome::AlreadyCompact),
            count(|o| *o == Outcome::ByOther),
            count(|o| matches!(o, Outcome::Failed(_))),
            total.bytes_written,
            total.gc_deleted,
            self.elapsed.as_secs_f64()
        )?;
        match &self.log_gc {
            Ok(report) => write!(f, "\nlog GC: {report}"),
            Err(e) => write!(f, "\nlog GC: FAILED: {e}"),
        }
    }
}

/// Runs one pass over every shard.
pub async fn run(
    cfg: &CompactorConfig,
    store: &ClusterStore,
    shard_count: u32,
    me: Member,
    progress: &Progress,
) -> Result<Summary> {
    let started = Instant::now();
    let deadline = started + cfg.compaction.once_timeout;
    let claims = Session::join(&cfg.cluster, me, Role::BatchJob).await?;
    progress.start(shard_count as u64);
    let mut shards: Vec<ShardReport> = futures::stream::iter((0..shard_count).map(ShardId))
        .map(|shard| {
            let claims = Arc::clone(&claims);
            async move {
                let report = one_shard(cfg, store, &claims, shard, deadline).await;
                progress.shard_done(&report);
                report
            }
        })
        .buffer_unordered(cfg.compaction.once_concurrency)
        .collect()
        .await;
    claims.close().await;
    shards.sort_by_key(|r| r.shard);
    let log_gc = log_gc::pass(store, &cfg.compaction)
        .await
        .map_err(|e| e.to_string());
    Ok(Summary {
        shards,
        log_gc,
        elapsed: started.elapsed(),
    })
}

async fn one_shard(
    cfg: &CompactorConfig,
    store: &ClusterStore,
    claims: &Session,
    shard: ShardId,
    deadline: Instant,
) -> ShardReport {
    let started = Instant::now();
    let threshold = cfg.compaction.l0_threshold;
    let mut report = ShardReport {
        shard,
        l0_before: 0,
        l0_after: 0,
        counters: Counters::default(),
        outcome: Outcome::Failed("not started".into()),
        elapsed: Duration::ZERO,
    };
    let mut first = true;
    report.outcome = loop {
        let l0 = match read_stats(store, &cfg.object_store, shard).await {
            Ok(s) => s.l0,
            Err(e) => break Outcome::Failed(e.to_string()),
        };
        if first {
            report.l0_before = l0;
            first = false;
        }
        report.l0_after = l0;
        match claims.claim(shard).await {
            Ok(Some(claim)) => {
                let outcome = if l0 >= threshold {
                    compact(cfg, store, claims, &claim, deadline, &mut report).await
                } else if report.l0_before >= threshold {
                    Outcome::ByOther // compacted by its previous holder meanwhile
                } else {
                    Outcome::AlreadyCompact
                };
                if claims.holds(&claim) {
                    report.counters +=
                        collect_garbage_once(store, &cfg.object_store, &cfg.compaction, shard)
                            .await;
                }
                claims.release(claim).await;
                break outcome;
            }
            // Held by a daemon or another batch job: it compacts; wait until the shard is
            // below the threshold or the claim goes away.
            Ok(None) if l0 < threshold => {
                break if report.l0_before >= threshold {
                    Outcome::ByOther
                } else {
                    Outcome::AlreadyCompact
                };
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(%shard, error = %e, "claim failed; retrying"),
        }
        if Instant::now() + PROGRESS_POLL >= deadline {
            break Outcome::Failed(format!(
                "L0 still {l0} (threshold {threshold}) at the deadline"
            ));
        }
        tokio::time::sleep(PROGRESS_POLL).await;
    };
    report.elapsed = started.elapsed();
    report
}

/// Runs the shard's compactor until its L0 is below the threshold, the deadline passes, the
/// claim stops holding, or the compactor fails.
async fn compact(
    cfg: &CompactorConfig,
    store: &ClusterStore,
    claims: &Session,
    claim: &Claim,
    deadline: Instant,
    report: &mut ShardReport,
) -> Outcome {
    let threshold = cfg.compaction.l0_threshold;
    let job = ShardJob::start(store, &cfg.object_store, &cfg.compaction, claim.shard);
    let mut outcome = loop {
        tokio::time::sleep(PROGRESS_POLL).await;
        if !claims.holds(claim) {
            break Outcome::Failed("compaction claim lost".into());
        }
        if job.finished() {
            break Outcome::Failed("compactor stopped".into());
        }
        match read_stats(store, &cfg.object_store, claim.shard).await {
            Ok(s) if s.l0 < threshold => {
                report.l0_after = s.l0;
                break Outcome::Compacted;
            }
            Ok(s) => report.l0_after = s.l0,
            Err(e) => {
                tracing::warn!(shard = %claim.shard, error = %e, "reading the manifest failed")
            }
        }
        if Instant::now() >= deadline {
            break Outcome::Failed(format!(
                "L0 still {} (threshold {threshold}) at the deadline",
                report.l0_after
            ));
        }
    };
    let (counters, stopped) = job.stop().await;
    report.counters += counters;
    if let (Err(e), Outcome::Failed(why)) = (stopped, &mut outcome) {
        *why = format!("{why}: {e}");
    }
    outcome
}
