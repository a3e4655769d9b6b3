//! One shard's SlateDB compaction and garbage collection: the compactor crate's only SlateDB
//! user (the gateways' SlateDB decisions live in `tessera::store`).
//!
//! - [`ShardJob::start`] runs SlateDB's standalone compactor coordinator with an embedded
//!   worker (`CompactorBuilder` on `{prefix}/shards/{shard:05}`). Starting the coordinator
//!   claims a new compactor epoch in the shard's manifest, which fences any older compactor of
//!   that shard: the safety backstop behind the etcd claims. A fenced or failed run ends the
//!   job with an error ([`ShardJob::finished`]).
//! - Garbage collection is one-shot passes ([`collect_garbage_once`]), scheduled by the daemon
//!   and `--once`: SlateDB's continuous collector would list every shard's directories on its
//!   own timer, hinted or not.
//! - Gateways in cluster mode run neither (`compactor_options: None`), so the epoch claim never
//!   fences a writer.
//! - The size-tiered scheduler's `min_compaction_sources` is the configured L0 threshold, so
//!   "needs compaction" means the same thing to SlateDB and to `--once`.
//! - Counters come from SlateDB's in-process metrics recorder, one per job: bytes and SSTs
//!   written by compactions, objects deleted by GC. SlateDB exposes no bytes-read counter.
//! - Manifest reads ([`read_stats`]) are bounded by a timeout, since SlateDB's admin reads
//!   retry without bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use slatedb::compactor::Compactor;
use slatedb::config::{
    CompactionWorkerOptions, CompactorOptions, GarbageCollectorDirectoryOptions,
    GarbageCollectorOptions,
};
use slatedb::{CompactorBuilder, GarbageCollectorBuilder};
use slatedb_common::metrics::{DefaultMetricsRecorder, MetricValue};
use tessera::objstore::ClusterStore;
use tessera::{Error, ObjectStoreConfig, ShardId};
use tokio::task::JoinHandle;

use crate::config::CompactionConfig;
use crate::error::{CompactorError, Result};

/// What a shard's latest manifest says about its LSM tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// False for a shard whose database no gateway has created yet.
    pub exists: bool,
    /// L0 SSTs (flushed memtables not yet compacted).
    pub l0: usize,
    /// Sorted runs below L0.
    pub sorted_runs: usize,
    /// Ids of those sorted runs (a compaction writes a new one).
    pub run_ids: Vec<u32>,
}

/// Reads `shard`'s latest manifest. A shard whose database was never opened has empty stats.
pub async fn read_stats(
    store: &ClusterStore,
    object_store: &ObjectStoreConfig,
    shard: ShardId,
) -> Result<ShardStats> {
    let admin = store.admin(shard);
    let bound = object_store.request_timeout * (object_store.max_retries + 1);
    let manifest = tokio::time::timeout(bound, admin.read_manifest(None))
        .await
        .map_err(|_| Error::ShardUnavailable {
            shard,
            reason: format!("reading the manifest took longer than {bound:?}"),
        })?
        .map_err(|source| CompactorError::Shard { shard, source })?;
    Ok(manifest.map_or_else(ShardStats::default, |m| ShardStats {
        exists: true,
        l0: m.l0().len(),
        sorted_runs: m.compacted().len(),
        run_ids: m.compacted().iter().map(|r| r.id).collect(),
    }))
}

/// Cumulative work counters of a shard's jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes written to compacted SSTs.
    pub bytes_written: u64,
    /// Compacted SSTs written.
    pub ssts_written: u64,
    /// Objects (WAL SSTs, SSTs, manifests, job files) deleted by the garbage collector.
    pub gc_deleted: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.bytes_written += o.bytes_written;
        self.ssts_written += o.ssts_written;
        self.gc_deleted += o.gc_deleted;
    }
}

/// SlateDB's compactor running on one shard.
pub struct ShardJob {
    shard: ShardId,
    compactor: Compactor,
    run: JoinHandle<Result<(), slatedb::Error>>,
    recorder: Arc<DefaultMetricsRecorder>,
}

impl ShardJob {
    /// Starts compacting `shard`. Call only while holding the shard's claim.
    pub fn start(
        store: &ClusterStore,
        object_store: &ObjectStoreConfig,
        cfg: &CompactionConfig,
        shard: ShardId,
    ) -> ShardJob {
        let recorder = Arc::new(DefaultMetricsRecorder::new());
        let path = store.shard_path(shard);
        let retries = Some(object_store.max_retries);
        let worker = CompactionWorkerOptions {
            max_concurrent_compactions: cfg.max_concurrent_compactions,
            compactions_poll_interval: cfg.poll_interval,
            heartbeat_interval: cfg.job_timeout / 3,
            object_store_max_retries: retries,
            ..CompactionWorkerOptions::default()
        };
        let options = CompactorOptions {
            poll_interval: cfg.poll_interval,
            max_concurrent_compactions: cfg.max_concurrent_compactions,
            scheduler_options: HashMap::from([(
                "min_compaction_sources".to_string(),
                cfg.l0_threshold.to_string(),
            )]),
            worker: Some(worker),
            checkpoint_lifetime: cfg.gc_min_age,
            worker_heartbeat_timeout: cfg.job_timeout,
            object_store_max_retries: retries,
            ..CompactorOptions::default()
        };
        let compactor = CompactorBuilder::new(path, Arc::clone(&store.store))
            .with_options(options)
            .with_metrics_recorder(recorder.clone())
            .build();
        let run = {
            let c = compactor.clone();
            tokio::spawn(async move { c.run().await })
        };
        ShardJob {
            shard,
            compactor,
            run,
            recorder,
        }
    }

    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// True once the compactor stopped on its own (fenced, or a failure).
    pub fn finished(&self) -> bool {
        self.run.is_finished()
    }

    /// Work done so far by this job.
    pub fn counters(&self) -> Counters {
        counters_of(&self.recorder)
    }

    /// Stops the compactor and waits for it. Returns the job's counters and, if it
    /// had stopped on its own, why (a fenced compactor reports `Closed(Fenced)`).
    pub async fn stop(self) -> (Counters, Result<()>) {
        // A compactor that already stopped on its own reports why through `run`.
        let mut outcome = if self.run.is_finished() {
            Ok(())
        } else {
            self.compactor.stop().await
        };
        if let Ok(r) = self.run.await {
            outcome = outcome.and(r);
        }
        let shard = self.shard;
        (
            counters_of(&self.recorder),
            outcome.map_err(|source| CompactorError::Shard { shard, source }),
        )
    }
}

/// Sums SlateDB's counters of one job, over all labels.
fn counters_of(recorder: &DefaultMetricsRecorder) -> Counters {
    let snapshot = recorder.snapshot();
    let sum = |name: &str| -> u64 {
        snapshot
            .by_name(name)
            .iter()
            .map(|m| match m.value {
                MetricValue::Counter(v) => v,
                _ => 0,
            })
            .sum()
    };
    Counters {
        bytes_written: sum(slatedb::compactor::stats::BYTES_COMPACTED),
        ssts_written: sum(slatedb::compactor::stats::SSTS_WRITTEN),
        gc_deleted: sum(slatedb::garbage_collector_stats::DELETED_COUNT),
    }
}

/// Runs one garbage-collection pass over `shard` (every directory SlateDB manages: a few
/// LISTs, then deletes of what is obsolete and older than `gc_min_age`). Call only while
/// holding the shard's claim.
pub async fn collect_garbage_once(
    store: &ClusterStore,
    object_store: &ObjectStoreConfig,
    cfg: &CompactionConfig,
    shard: ShardId,
) -> Counters {
    let recorder = Arc::new(DefaultMetricsRecorder::new());
    let gc = GarbageCollectorBuilder::new(store.shard_path(shard), Arc::clone(&store.store))
        .with_options(gc_options(object_store, cfg))
        .with_metrics_recorder(recorder.clone())
        .build();
    gc.run_gc_once().await;
    counters_of(&recorder)
}

/// GC of every directory SlateDB manages, with our interval and minimum age. WAL fences stay
/// (SlateDB's default: deleting them can let a stale writer succeed). Boundary files need
/// `If-Match`, which the local filesystem store lacks.
fn gc_options(object_store: &ObjectStoreConfig, cfg: &CompactionConfig) -> GarbageCollectorOptions {
    let dir = Some(GarbageCollectorDirectoryOptions {
        interval: Some(cfg.gc_interval),
        min_age: cfg.gc_min_age,
        dry_run: false,
    });
    GarbageCollectorOptions {
        manifest_options: dir,
        wal_options: dir,
        wal_fence_options: None,
        compacted_options: dir,
        compactions_options: dir,
        boundary_files_enabled: !object_store.is_local(),
        object_store_max_retries: Some(object_store.max_retries),
        ..GarbageCollectorOptions::default()
    }
}

/// Time to wait between checks of a shard's progress.
pub const PROGRESS_POLL: Duration = Duration::from_millis(250);
