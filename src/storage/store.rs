//! `ShardStore`: one shard's SlateDB database. The only module that imports `slatedb`.
//!
//! Decisions recorded here (a SlateDB upgrade should touch only this file and `Cargo.toml`):
//!
//! - **Layout.** Shard `n` lives under `{prefix}/shards/{n:05}` in the cluster's object store.
//! - **Durability.** [`ShardStore::write`] returns a [`PendingWrite`] as soon as SlateDB has the
//!   write in memory; callers acknowledge only after [`PendingWrite::durable`], which waits for
//!   the WAL object holding it to be written (`WriteHandle::await_durable`). SlateDB's WAL is
//!   ordered, so a durable write implies every earlier write of the shard is durable too.
//! - **Group commit.** A shard's WAL is flushed by its own flusher task, woken by every write:
//!   a write to an idle shard is flushed at once (latency = one PUT), and flushes of a busy
//!   shard start at most once per `storage.flush_interval`, so every write arriving meanwhile
//!   shares the next PUT. Batches grow with load and PUTs per second stay bounded by
//!   `1 / flush_interval` per shard. SlateDB's own periodic flush stays on, ten times slower,
//!   as a backstop.
//! - **Bounded WAL replay.** Opening a database replays the WAL written since its last memtable
//!   flush. The flusher task also writes the memtable out `storage.memtable_flush_interval`
//!   after its first WAL flush, so a new owner or a follower replays at most one interval of
//!   WAL objects, not everything since the memtable last filled up. SlateDB's own bound
//!   (`max_wal_flushes_before_l0_flush`, 4096 WAL objects) counts flushes, so a slowly written
//!   shard could still replay hours of WAL; the time bound is what keeps opens fast there. The
//!   memtable flush runs beside the WAL flushes: it can wait on L0 backpressure, and WAL
//!   flushes (acknowledgements) must not wait with it.
//! - **Versions.** A key's version is the SlateDB sequence number of the write that produced it.
//!   Sequence numbers strictly increase per database across restarts and reopenings, so versions
//!   strictly increase per key and are never reused, also after a delete and re-create.
//! - **Reads.** [`Durability::Durable`] reads (every client read) see only data durable in the
//!   object store, so a client never observes a write that a crash could still lose.
//!   [`Durability::Latest`] reads also see writes still in memory; they serve precondition checks,
//!   which must compare against the newest write, acknowledged or not.
//! - **TTL.** SlateDB does not hide expired rows on reads, so every read here compares the row's
//!   `expire_ts` with the wall clock and treats expired rows as absent.
//! - **Retries.** `object_store_max_retries` is bounded (config `object_store.max_retries`): an
//!   unreachable store fails the operation instead of retrying forever. A WAL flush that fails
//!   puts the database in a fatal state ([`ShardStore::wait_closed`] returns); the owner reopens it.
//! - **Fencing.** Opening the database claims a new writer epoch and fences any previous writer.
//!   A fenced database reports [`Error::Fenced`]; its pending writes never become durable, so
//!   they are never acknowledged.
//! - **Caches.** One block cache is shared by every shard of the process
//!   ([`BlockCache`]), keyed by shard number, so memory does not grow with the shard count.
//! - **Followers.** [`ShardReader`] is a read-only follower of a shard owned by another process
//!   (SlateDB's `DbReader` in managed-checkpoint mode: its checkpoint keeps the SSTs it reads
//!   safe from GC). It replays new WAL objects every poll interval, so it sees durable writes
//!   about one interval late and never sees unflushed ones. A failed poll closes it (retries
//!   are bounded), so a follower that is open has refreshed within about one interval.
//! - **Incarnations.** Every open [`ShardStore`] and [`ShardReader`] has a process-unique
//!   [`ShardStore::incarnation`]; caches key entries by it, so nothing cached under one opening of
//!   a shard is ever served under another.
//! - **Compaction and GC.** Run in-process only in the embedded single-gateway mode
//!   ([`crate::NodeConfig::embedded_compaction`]). In cluster mode `compactor_options` and
//!   `garbage_collector_options` are `None`: `tessera-compactor` runs both, and a writer with
//!   its own compactor would be fenced by it. GC boundary files need `If-Match`, which the
//!   local filesystem store lacks, so they are disabled there.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use slatedb::config::{
    CompactorOptions, DbReaderOptions, DurabilityLevel, FlushOptions, FlushType,
    GarbageCollectorOptions, PutOptions, ReadOptions, ScanOptions, Settings, Ttl,
};
use slatedb::db_cache::moka::{MokaCache, MokaCacheOptions};
use slatedb::db_cache::DbCache;
use slatedb::{
    CloseReason, Db, DbIterator, DbReader, DbReaderMode, DbStatus, ErrorKind as SlateErrorKind,
    WriteBatch, WriteHandle,
};

use crate::config::{ObjectStoreConfig, StorageConfig};
use crate::error::{Error, Result};
use crate::shard::ShardId;
use crate::storage::objstore::ClusterStore;
use crate::tasks::Tasks;

/// Which writes a read may observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Only writes durable in the object store.
    Durable,
    /// Also writes still in memory, awaiting their WAL flush.
    Latest,
}

/// A live (present, unexpired) value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// The version: the sequence number of the write that produced the value.
    pub version: u64,
    /// When the value expires, in Unix milliseconds.
    pub expires_at_ms: Option<i64>,
    /// When the writer accepted the value, in Unix milliseconds (0 if unknown).
    pub written_at_ms: i64,
}

/// One mutation of a write.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Sets `key` to `value`, expiring after `ttl_ms` milliseconds if given.
    Put {
        key: Bytes,
        value: Bytes,
        ttl_ms: Option<u64>,
    },
    /// Removes `key`.
    Delete { key: Bytes },
}

/// The block cache shared by every shard of a process.
#[derive(Clone)]
pub struct BlockCache(Arc<dyn DbCache>);

impl BlockCache {
    /// Creates a cache holding at most `bytes` bytes.
    pub fn new(bytes: u64) -> Self {
        BlockCache(Arc::new(MokaCache::new_with_opts(MokaCacheOptions {
            max_capacity: bytes,
            time_to_live: None,
            time_to_idle: None,
        })))
    }
}

/// A write accepted in memory, not yet durable.
pub struct PendingWrite {
    shard: ShardId,
    handle: WriteHandle,
}

impl PendingWrite {
    /// The version the write gave its keys.
    pub fn version(&self) -> u64 {
        self.handle.seqnum()
    }

    /// Waits until the write is durable in the object store and returns its version.
    pub async fn durable(self) -> Result<u64> {
        self.handle
            .await_durable()
            .await
            .map_err(|e| map_error(self.shard, e))?;
        Ok(self.handle.seqnum())
    }
}

/// Why a store stopped accepting operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// A newer writer opened the database: never reopen without re-acquiring the shard.
    Fenced,
    /// Closed by us, or a background task failed (e.g. a WAL flush exhausted its retries):
    /// reopening may succeed once the object store is healthy.
    Other,
}

/// One shard's open database.
pub struct ShardStore {
    shard: ShardId,
    db: Db,
    incarnation: u64,
    /// Wakes the flusher task (see "Group commit").
    flush_wanted: Arc<tokio::sync::Notify>,
    /// The flusher and its memtable flushes; cancelled when the store is dropped.
    tasks: Tasks,
}

impl Drop for ShardStore {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

/// Source of [`ShardStore::incarnation`] and [`ShardReader::incarnation`].
static INCARNATIONS: AtomicU64 = AtomicU64::new(1);

fn next_incarnation() -> u64 {
    INCARNATIONS.fetch_add(1, Ordering::Relaxed)
}

/// The block-cache id of a follower of `shard`: distinct from the writer's (`shard`).
fn follower_cache_id(shard: ShardId) -> u64 {
    (1 << 32) | u64::from(shard.0)
}

impl ShardStore {
    /// Opens (creating if needed) the database of `shard`, fencing any previous writer; runs
    /// SlateDB's compactor and GC in-process if `embedded_compaction`.
    pub async fn open(
        shard: ShardId,
        store: &ClusterStore,
        storage: &StorageConfig,
        object_store: &ObjectStoreConfig,
        cache: &BlockCache,
        embedded_compaction: bool,
    ) -> Result<Self> {
        let path = store.shard_path(shard);
        let settings = Settings {
            // A backstop: the flusher task below flushes first.
            flush_interval: Some(storage.flush_interval * 10),
            manifest_poll_interval: storage.manifest_poll_interval,
            l0_sst_size_bytes: storage.l0_sst_size_bytes,
            max_unflushed_bytes: storage.max_unflushed_bytes,
            object_store_max_retries: Some(object_store.max_retries),
            // SlateDB also stops flushing once any key is covered by `l0_max_ssts_per_key` L0
            // SSTs (default 8). With hashed, unordered keys every L0 SST spans the whole shard,
            // so that limit, not `l0_max_ssts`, would decide: both follow the configured one.
            l0_max_ssts: storage.l0_max_ssts,
            l0_max_ssts_per_key: storage.l0_max_ssts,
            compactor_options: embedded_compaction.then(CompactorOptions::default),
            garbage_collector_options: embedded_compaction.then(|| GarbageCollectorOptions {
                boundary_files_enabled: !object_store.is_local(),
                object_store_max_retries: Some(object_store.max_retries),
                ..Default::default()
            }),
            ..Settings::default()
        };
        let db = Db::builder(path, Arc::clone(&store.store))
            .with_settings(settings)
            .with_db_cache(Arc::clone(&cache.0), u64::from(shard.0))
            .build()
            .await
            .map_err(|e| map_error(shard, e))?;
        let flush_wanted = Arc::new(tokio::sync::Notify::new());
        let tasks = Tasks::new();
        tasks.spawn(
            "group commit",
            group_commit(
                db.clone(),
                Arc::clone(&flush_wanted),
                storage.flush_interval,
                storage.memtable_flush_interval,
                tasks.clone(),
            ),
        );
        Ok(ShardStore {
            shard,
            db,
            incarnation: next_incarnation(),
            flush_wanted,
            tasks,
        })
    }

    /// Unique to this opening of the database in this process.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Returns the live value of `key`, if any.
    pub async fn get(&self, key: &[u8], durability: Durability) -> Result<Option<Entry>> {
        let options = ReadOptions {
            durability_filter: level(durability),
            ..ReadOptions::default()
        };
        let kv = self
            .db
            .get_key_value_with_options(key, &options)
            .await
            .map_err(|e| self.map(e))?;
        Ok(kv.and_then(|kv| live(kv, now_ms())))
    }

    /// Applies `mutations` atomically, in memory. Await [`PendingWrite::durable`] before
    /// acknowledging.
    pub async fn write(&self, mutations: Vec<Mutation>) -> Result<PendingWrite> {
        let mut batch = WriteBatch::new();
        for m in mutations {
            match m {
                Mutation::Put { key, value, ttl_ms } => {
                    let ttl = ttl_ms.map_or(Ttl::NoExpiry, Ttl::ExpireAfterMillis);
                    batch.put_with_options(key, value, &PutOptions { ttl });
                }
                Mutation::Delete { key } => batch.delete(key),
            }
        }
        let handle = self.db.write(batch).await.map_err(|e| self.map(e))?;
        self.flush_wanted.notify_one();
        Ok(PendingWrite {
            shard: self.shard,
            handle,
        })
    }

    /// Iterates the durable live entries in `range`, in key order.
    pub async fn scan(&self, range: (Bound<Bytes>, Bound<Bytes>)) -> Result<ShardScan> {
        let iter = self
            .db
            .scan_with_options(range, &scan_options())
            .await
            .map_err(|e| self.map(e))?;
        Ok(ShardScan::new(self.shard, iter))
    }

    /// Makes every write accepted so far durable (one WAL flush).
    pub async fn flush(&self) -> Result<()> {
        self.db.flush().await.map_err(|e| self.map(e))
    }

    /// Waits until the database stops (fenced, failed or closed) and returns why.
    pub async fn wait_closed(&self) -> Closed {
        wait_closed(self.db.subscribe()).await
    }

    /// Flushes the memtable and closes the database, so the next open replays no WAL.
    pub async fn close(&self) -> Result<()> {
        self.db.close().await.map_err(|e| self.map(e))
    }

    fn map(&self, e: slatedb::Error) -> Error {
        map_error(self.shard, e)
    }
}

/// A read-only follower of a shard written by another process.
pub struct ShardReader {
    shard: ShardId,
    reader: DbReader,
    incarnation: u64,
}

impl ShardReader {
    /// Opens a follower of `shard` that polls the object store every `poll_interval`.
    pub async fn open(
        shard: ShardId,
        store: &ClusterStore,
        object_store: &ObjectStoreConfig,
        poll_interval: Duration,
        cache: &BlockCache,
    ) -> Result<Self> {
        let options = DbReaderOptions {
            manifest_poll_interval: poll_interval,
            // Must exceed two poll intervals; a crashed gateway's checkpoint expires after it.
            checkpoint_lifetime: (poll_interval * 4).max(Duration::from_secs(60)),
            // Bounded: a poll that cannot reach the store fails and closes the follower, so an
            // open follower is never silently stuck in the past.
            object_store_max_retries: Some(object_store.max_retries),
            ..DbReaderOptions::default()
        };
        let reader = DbReader::builder(store.shard_path(shard), Arc::clone(&store.store))
            .with_reader_mode(DbReaderMode::ManagedCheckpoint)
            .with_options(options)
            .with_db_cache(Arc::clone(&cache.0), follower_cache_id(shard))
            .build()
            .await
            .map_err(|e| map_error(shard, e))?;
        Ok(ShardReader {
            shard,
            reader,
            incarnation: next_incarnation(),
        })
    }

    /// Unique to this follower in this process.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The sequence number up to which the follower has replayed the shard's writes.
    pub fn durable_seq(&self) -> u64 {
        self.reader.status().durable_seq
    }

    /// A receiver that changes whenever the follower's `durable_seq` advances or it closes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<DbStatus> {
        self.reader.subscribe()
    }

    /// True once the follower has stopped (a failed poll, or closed).
    pub fn is_closed(&self) -> bool {
        self.reader.status().close_reason.is_some()
    }

    /// Returns the live value of `key` as the follower sees it.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let kv = self
            .reader
            .get_key_value(key)
            .await
            .map_err(|e| map_error(self.shard, e))?;
        Ok(kv.and_then(|kv| live(kv, now_ms())))
    }

    /// Iterates the live entries in `range` as the follower sees them, in key order.
    pub async fn scan(&self, range: (Bound<Bytes>, Bound<Bytes>)) -> Result<ShardScan> {
        let iter = self
            .reader
            .scan_with_options(range, &scan_options())
            .await
            .map_err(|e| map_error(self.shard, e))?;
        Ok(ShardScan::new(self.shard, iter))
    }

    /// Stops polling and deletes the follower's checkpoint.
    pub async fn close(&self) -> Result<()> {
        self.reader
            .close()
            .await
            .map_err(|e| map_error(self.shard, e))
    }
}

/// An ordered iterator over one shard's durable live entries.
pub struct ShardScan {
    shard: ShardId,
    iter: DbIterator,
    now_ms: i64,
}

impl ShardScan {
    fn new(shard: ShardId, iter: DbIterator) -> Self {
        ShardScan {
            shard,
            iter,
            now_ms: now_ms(),
        }
    }

    /// Returns the next live entry, skipping expired ones.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            match self
                .iter
                .next()
                .await
                .map_err(|e| map_error(self.shard, e))?
            {
                None => return Ok(None),
                Some(kv) => {
                    if let Some(entry) = live(kv, self.now_ms) {
                        return Ok(Some(entry));
                    }
                }
            }
        }
    }
}

/// The flusher task of one shard: flushes the WAL when writes are waiting, at once if the
/// last flush started at least `gap` ago, else when it has; starts a memtable flush
/// `memtable_every` after the first WAL flush since the last one (see "Bounded WAL replay").
/// A failed flush needs no handling here: the writes waiting on it see the error (or the next
/// flush) through `await_durable`, and a memtable left in memory is written by a later flush.
async fn group_commit(
    db: Db,
    wanted: Arc<tokio::sync::Notify>,
    gap: Duration,
    memtable_every: Duration,
    tasks: Tasks,
) {
    let mut last = Instant::now() - gap;
    // When the memtable is due to be written out; `None` while no WAL was flushed since.
    let mut memtable_due: Option<tokio::time::Instant> = None;
    // Set while a memtable flush runs.
    let flushing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let due = async {
            match memtable_due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wanted.notified() => {}
            _ = due => {
                // One memtable flush at a time; if one is still waiting (L0 backpressure), it
                // will include what was written since.
                if !flushing.swap(true, Ordering::AcqRel) {
                    memtable_due = None;
                    let (db, flushing) = (db.clone(), Arc::clone(&flushing));
                    tasks.spawn("memtable flush", async move {
                        let options = FlushOptions { flush_type: FlushType::MemTable };
                        if let Err(e) = db.flush_with_options(options).await {
                            tracing::debug!(error = %e, "memtable flush failed");
                        }
                        flushing.store(false, Ordering::Release);
                    });
                } else {
                    memtable_due = Some(tokio::time::Instant::now() + memtable_every);
                }
                continue;
            }
        }
        memtable_due.get_or_insert_with(|| tokio::time::Instant::now() + memtable_every);
        let wait = gap.saturating_sub(last.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        last = Instant::now();
        if let Err(e) = db.flush().await {
            if matches!(e.kind(), SlateErrorKind::Closed(_)) {
                return;
            }
            tracing::debug!(error = %e, "WAL flush failed");
        }
    }
}

/// Scans read only durable data, keep their blocks cached and read ahead 64 KiB.
fn scan_options() -> ScanOptions {
    ScanOptions {
        durability_filter: DurabilityLevel::Remote,
        cache_blocks: true,
        read_ahead_bytes: 64 * 1024,
        ..ScanOptions::default()
    }
}

async fn wait_closed(mut status: tokio::sync::watch::Receiver<DbStatus>) -> Closed {
    let reason = status
        .wait_for(|s| s.close_reason.is_some())
        .await
        .ok()
        .and_then(|s| s.close_reason);
    match reason {
        Some(CloseReason::Fenced) => Closed::Fenced,
        _ => Closed::Other,
    }
}

fn level(durability: Durability) -> DurabilityLevel {
    match durability {
        Durability::Durable => DurabilityLevel::Remote,
        Durability::Latest => DurabilityLevel::Memory,
    }
}

/// Converts a row to an [`Entry`], or `None` if it has expired at `now_ms`.
fn live(kv: slatedb::KeyValue, now_ms: i64) -> Option<Entry> {
    if kv.expire_ts.is_some_and(|t| t <= now_ms) {
        return None;
    }
    Some(Entry {
        key: kv.key,
        value: kv.value,
        version: kv.seq,
        expires_at_ms: kv.expire_ts,
        written_at_ms: kv.create_ts,
    })
}

/// The wall clock in Unix milliseconds, the clock SlateDB stamps `expire_ts` with.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn map_error(shard: ShardId, e: slatedb::Error) -> Error {
    match e.kind() {
        SlateErrorKind::Closed(CloseReason::Fenced) => Error::Fenced { shard },
        SlateErrorKind::Closed(_) | SlateErrorKind::Unavailable => Error::ShardUnavailable {
            shard,
            reason: e.to_string(),
        },
        SlateErrorKind::Data => {
            tracing::error!(%shard, error = %e, "shard data is in an unexpected state");
            Error::Internal(format!("shard {shard}: {e}"))
        }
        // Transactions are not used; every input is validated before it reaches SlateDB, so
        // `Invalid` is a bug here too. `ErrorKind` is non-exhaustive: new kinds are internal.
        _ => Error::Internal(format!("shard {shard}: {e}")),
    }
}
