//! The commit path of a process: its one log, shared by every shard it owns, and the three
//! things done with it: committing a write, recovering a shard it takes over, and
//! checkpointing a shard. Design and safety argument: `docs/architecture.md`, "The commit log".
//!
//! Invariants (each argued where it is kept):
//! - a write is acknowledged only once its log object exists and its shard's memtable has it;
//! - versions of a shard are assigned in log order (`ShardStore::order`), so applying in log
//!   order (the flusher, a replay) writes increasing sequence numbers;
//! - a shard is served only after [`CommitLog::recover`]: the previous owner's log is sealed
//!   (it can make nothing more durable), its records are replayed, and a checkpoint names
//!   this process's log, so a crash from then on is recovered from this log alone;
//! - a checkpoint's `through_seq` never passes a record of its shard that is not in the
//!   database.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::shard::ShardId;
use crate::storage::log::checkpoint::{self, Marker, Takeover};
use crate::storage::log::format::{Op, Record};
use crate::storage::log::writer::{Apply, LogError, LogStats, LogWriter, WriterConfig};
use crate::storage::log::{self, new_log_id};
use crate::storage::objstore::ClusterStore;
use crate::storage::store::{now_ms, ShardStore};
use crate::tasks::Tasks;

/// How long an exiting process tries to seal its log: an unreachable store must not hold
/// up the exit (the log is then left as after a crash).
const SEAL_AT_EXIT: Duration = Duration::from_secs(5);

/// A process's commit log.
pub struct CommitLog {
    store: ClusterStore,
    member: String,
    config: WriterConfig,
    stats: Arc<LogStats>,
    tasks: Tasks,
    /// The log being written. Replaced by a new log once sealed ([`CommitLog::renew`]).
    writer: RwLock<Arc<LogWriter>>,
}

impl CommitLog {
    /// Starts a new log for the process `member`.
    pub fn start(store: ClusterStore, member: &str, config: WriterConfig) -> Arc<Self> {
        let tasks = Tasks::new();
        let stats = Arc::new(LogStats::default());
        let writer = LogWriter::start(
            store.clone(),
            new_log_id(member),
            1,
            config.clone(),
            Arc::clone(&stats),
            &tasks,
        );
        tracing::info!(log = writer.log(), "writing a new commit log");
        Arc::new(CommitLog {
            store,
            member: member.to_string(),
            config,
            stats,
            tasks,
            writer: RwLock::new(writer),
        })
    }

    /// The object store the log (and the shards) live in.
    pub fn store(&self) -> &ClusterStore {
        &self.store
    }

    /// What this process's logs have written.
    pub fn stats(&self) -> &LogStats {
        &self.stats
    }

    /// The log being written now: a new one if the last was sealed.
    pub fn writer(&self) -> Arc<LogWriter> {
        let current = Arc::clone(&self.writer.read().unwrap_or_else(|e| e.into_inner()));
        if current.is_sealed() {
            self.renew(&current)
        } else {
            current
        }
    }

    /// Replaces `sealed`, if it is still the current log, by a new log, and returns the
    /// current one. Stores bound to the sealed log stop taking writes; their supervisors
    /// reopen them, which recovers them into the new log.
    fn renew(&self, sealed: &Arc<LogWriter>) -> Arc<LogWriter> {
        let mut current = self.writer.write().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, sealed) {
            *current = LogWriter::start(
                self.store.clone(),
                new_log_id(&self.member),
                1,
                self.config.clone(),
                Arc::clone(&self.stats),
                &self.tasks,
            );
            tracing::warn!(
                sealed = sealed.log(),
                log = current.log(),
                "commit log sealed by another owner; writing a new one"
            );
        }
        Arc::clone(&current)
    }

    /// Commits one atomic write of `ops` to the shard of `store`, owned under `epoch`:
    /// resolves with the version once the write is durable and applied.
    pub async fn commit(
        self: Arc<Self>,
        store: Arc<ShardStore>,
        epoch: i64,
        ops: Vec<(Bytes, Op)>,
    ) -> Result<u64> {
        let shard = store.shard();
        let written_at_ms = now_ms();
        let writer = Arc::clone(bound(&store)?);
        let (version, pending) = {
            // ORDERING: the version is assigned and the record queued under one lock, so a
            // shard's versions increase in log order.
            let _order = store.order.lock().await;
            let version = store.next_version();
            let group = ops
                .into_iter()
                .map(|(key, op)| Record {
                    shard,
                    epoch,
                    version,
                    written_at_ms,
                    key,
                    op,
                })
                .collect();
            let target: Arc<dyn Apply> = Arc::clone(&store) as Arc<dyn Apply>;
            (version, writer.submit(group, target))
        };
        pending.await.map_err(|e| unavailable(shard, e))?;
        Ok(version)
    }

    /// Makes a freshly opened `store` (its previous writer fenced by the open) whole before it
    /// is served under claim `epoch`: seals the log its checkpoint names unless the hand-over
    /// was clean or the log is this process's, replays the shard's records after the
    /// checkpoint, and checkpoints into this process's log.
    pub async fn recover(&self, store: &Arc<ShardStore>, epoch: i64) -> Result<()> {
        let shard = store.shard();
        // SAFETY: the store takes writes only into the log its checkpoint below names (see
        // `ShardStore::bind`); if that log is sealed meanwhile, its writes fail and its
        // supervisor reopens it into a new one.
        let writer = Arc::clone(store.bind(self.writer()));
        // The newer of the marker in the database and the published copy: the copy leads
        // when the last checkpoint needed no flush (see `checkpoint`).
        let (in_db, published) =
            tokio::try_join!(store.marker(), checkpoint::published(&self.store, shard))?;
        let marker = [in_db, published]
            .into_iter()
            .flatten()
            .max_by_key(Marker::order);
        if let Some(marker) = marker {
            store.raise_version(marker.max_version);
            if let Takeover::Replay { log, from_seq } = marker.takeover() {
                let through = if log == writer.log() {
                    // Our own log (a reopen after a failure): no seal. Every record submitted
                    // before now is settled (in every lane: the previous store of this shard
                    // had a lane of its own), and none for this shard is submitted meanwhile
                    // (it is not served), so reading up to the last object created reads all
                    // of them.
                    writer.sync().await
                } else {
                    // SAFETY: after the seal no object can be created in `log` past the
                    // fence, so the records read below are all its writer ever made durable.
                    log::seal(&self.store, &log, from_seq).await?
                };
                let segments = log::read_range(&self.store, &log, from_seq, through).await?;
                let (groups, max_version) = checkpoint::replay(&marker, shard, &segments);
                store.raise_version(max_version);
                let replayed = groups.len();
                for group in groups {
                    store.apply(&group).await?;
                }
                tracing::info!(%shard, log, from_seq, objects = segments.len(), writes = replayed, "replayed the previous owner's log");
            }
        }
        self.checkpoint(store, epoch, false).await
    }

    /// Checkpoints `store` (owned under `epoch`): a marker covering every record of the shard
    /// in the current log, made durable, then published for GC. `clean`: a planned hand-over,
    /// after which the shard takes no more writes here.
    ///
    /// If the memtable holds nothing the SSTs lack (nothing written since the last flush: an
    /// idle shard changing hands), the published copy alone is the checkpoint: no SST, no
    /// manifest write. Otherwise the marker goes into the database and the memtable is
    /// flushed first, so the copy never claims more than the database holds.
    pub async fn checkpoint(&self, store: &Arc<ShardStore>, epoch: i64, clean: bool) -> Result<()> {
        let shard = store.shard();
        let (marker, flush) = {
            // ORDERING: no record of the shard is queued while the lock is held, and
            // `sync_target` waits until every queued one is settled, so every record of the
            // shard up to `through_seq` is applied (a record that failed to apply has stopped
            // the database, and the marker write below fails with it).
            let _order = store.order.lock().await;
            let writer = bound(store)?;
            let through_seq = writer.sync_target(store.as_ref()).await;
            let version = store.next_version();
            let marker = Marker {
                log: writer.log().to_string(),
                through_seq,
                epoch,
                max_version: version,
                clean,
            };
            let flush = store.applied_version() > store.flushed_version();
            if flush {
                store.write_marker(&marker, version).await?;
            }
            (marker, flush)
        };
        fault(Fault::MarkerWritten, flush);
        if flush {
            store.flush_memtable().await?;
        }
        fault(Fault::Flushed, flush);
        checkpoint::publish(&self.store, shard, &marker).await
    }

    /// Stops the flusher (after every shard has checkpointed or closed), then seals the log.
    /// Log GC keeps the last object of an unsealed log (a seal must land above it), so a
    /// log left unsealed would keep one object forever; sealed, all of it goes once its
    /// shards' checkpoints cover it. If a clean checkpoint failed, the next owner finds the
    /// fence in place and replays up to it, as after a crash.
    pub async fn shutdown(&self) {
        self.tasks.shutdown().await;
        let writer = Arc::clone(&self.writer.read().unwrap_or_else(|e| e.into_inner()));
        if !writer.used() || writer.is_sealed() {
            return;
        }
        let from = writer.last_object().max(1);
        match tokio::time::timeout(SEAL_AT_EXIT, log::seal(&self.store, writer.log(), from)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(log = writer.log(), error = %e, "sealing the log at exit failed")
            }
            Err(_) => tracing::warn!(log = writer.log(), "sealing the log at exit timed out"),
        }
    }
}

/// Where a checkpoint can be made to crash, for tests only
/// (`TESSERA_FAULT_CRASH_IN_CHECKPOINT=marker|flushed`; never set in production): after its
/// marker is written to the memtable, or after the memtable flush, before the publish.
#[derive(PartialEq)]
enum Fault {
    MarkerWritten,
    Flushed,
}

/// Aborts the process at `at` if the fault is set and the checkpoint flushes.
fn fault(at: Fault, flush: bool) {
    static SET: std::sync::OnceLock<Option<Fault>> = std::sync::OnceLock::new();
    let set =
        SET.get_or_init(
            || match std::env::var("TESSERA_FAULT_CRASH_IN_CHECKPOINT").as_deref() {
                Ok("marker") => Some(Fault::MarkerWritten),
                Ok("flushed") => Some(Fault::Flushed),
                _ => None,
            },
        );
    if flush && set.as_ref() == Some(&at) {
        eprintln!("TESSERA_FAULT_CRASH_IN_CHECKPOINT: aborting mid-checkpoint");
        std::process::abort();
    }
}

/// The log `store` is bound to.
fn bound(store: &ShardStore) -> Result<&Arc<LogWriter>> {
    store.log().ok_or_else(|| {
        Error::Internal(format!(
            "shard {}: written before it was recovered",
            store.shard()
        ))
    })
}

fn unavailable(shard: ShardId, e: LogError) -> Error {
    let reason = match e {
        LogError::Sealed => {
            "another gateway took the shard over; the write was not made durable".to_string()
        }
        LogError::Unavailable(e) => {
            format!("the commit log's object store is unavailable; the write may still become durable: {e}")
        }
        LogError::NotApplied(e) => format!("the write is durable but the shard stopped: {e}"),
    };
    Error::ShardUnavailable { shard, reason }
}
