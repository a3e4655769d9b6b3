//! `ShardStore`: one shard's SlateDB database. The only module that imports `slatedb`.
//!
//! Decisions recorded here (a SlateDB upgrade should touch only this file and `Cargo.toml`):
//!
//! - **Layout.** Shard `n` lives under `{prefix}/shards/{n:05}` in the cluster's object store.
//! - **No WAL.** Gateway shards run with SlateDB's WAL off (feature `wal_disable`): the
//!   gateway's commit log (`storage/log`, `storage/commit.rs`) makes writes durable, and a
//!   write reaches the memtable ([`ShardStore::apply`]) only after its log object exists. So the
//!   memtable holds nothing a crash can take away, and reads see it
//!   (`DurabilityLevel::Memory`). The database is the shard's checkpoint: a memtable flush
//!   carries the [`Marker`] that says how far into the log it reaches.
//! - **Keys.** A user key `k` is stored as `0x01 ‖ k`; `0x00 ‖ …` holds internal keys (the
//!   checkpoint marker), so no user key can collide with them.
//! - **Versions.** A key's version is the SlateDB sequence number of the write that produced
//!   it, assigned by the owner (`ShardStore::next_version`) and carried in the log record, so
//!   a replay writes the very version the client was given (`WriteOptions::seqnum`). SlateDB
//!   requires each write's sequence number to exceed every earlier one: the owner assigns
//!   versions in log order and applies in log order; a replay skips records at or below
//!   the database's flushed sequence number (they are in its SSTs already).
//! - **TTL.** SlateDB does not hide expired rows on reads, so every read here compares the row's
//!   `expire_ts` with the wall clock and treats expired rows as absent.
//! - **Retries.** `object_store_max_retries` is bounded (config `object_store.max_retries`): an
//!   unreachable store fails the operation instead of retrying forever. A memtable flush that
//!   fails puts the database in a fatal state ([`ShardStore::wait_closed`] returns); the owner
//!   reopens it, which replays the log.
//! - **Fencing.** Opening the database claims a new writer epoch and fences any previous writer.
//!   A fenced database reports [`Error::Fenced`]; its pending writes never become durable, so
//!   they are never acknowledged.
//! - **Caches.** One block cache is shared by every shard of the process
//!   ([`BlockCache`]), keyed by shard number, so memory does not grow with the shard count.
//! - **Followers.** [`ShardReader`] is a read-only follower of a shard owned by another process
//!   (SlateDB's `DbReader` in managed-checkpoint mode: its checkpoint keeps the SSTs it reads
//!   safe from GC). It sees the shard's checkpoints (flushed memtables) and never looks for a
//!   WAL (there is none: `skip_wal_replay`); the follower layer (`reads/follower/`) adds the
//!   owner's log records past them. Its view of the SSTs up to sequence number `D` holds
//!   every write of the shard with a version `<= D` (versions are applied in order), and
//!   [`ShardReader::installed_seq`] and [`ShardReader::durable_seq`] bracket the `D` of the
//!   view a read sees. A failed poll closes it (retries are bounded).
//! - **Incarnations.** Every open [`ShardStore`] and [`ShardReader`] has a process-unique
//!   [`ShardStore::incarnation`]; caches key entries by it, so nothing cached under one opening of
//!   a shard is ever served under another.
//! - **Compaction and GC.** Run in-process only in the embedded single-gateway mode
//!   ([`crate::NodeConfig::embedded_compaction`]). In cluster mode `compactor_options` and
//!   `garbage_collector_options` are `None`: `tessera-compactor` runs both, and a writer with
//!   its own compactor would be fenced by it. GC boundary files need `If-Match`, which the
//!   local filesystem store lacks, so they are disabled there.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use slatedb::config::{
    CloseOptions, CompactorOptions, DbReaderOptions, DurabilityLevel, FlushOptions, FlushType,
    GarbageCollectorOptions, PutOptions, ReadOptions, ScanOptions, Settings, Ttl, WriteOptions,
};
use slatedb::db_cache::moka::{MokaCache, MokaCacheOptions};
use slatedb::db_cache::DbCache;
use slatedb::{
    CloseReason, Db, DbIterator, DbReader, DbReaderMode, DbStatus, ErrorKind as SlateErrorKind,
    WriteBatch,
};

use crate::config::{ObjectStoreConfig, StorageConfig};
use crate::error::{Error, Result};
use crate::shard::ShardId;
use crate::storage::log::checkpoint::Marker;
use crate::storage::log::format::{Op, Record};
use crate::storage::log::writer::{Apply, LogWriter};
use crate::storage::objstore::ClusterStore;

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
    /// The highest version handed out (see "Versions").
    version: AtomicU64,
    /// Held while a version is assigned and its record submitted to the log, so versions
    /// follow log order; and by a checkpoint, so none is submitted while it is taken.
    pub(crate) order: tokio::sync::Mutex<()>,
    /// The highest version applied to the memtable (from the SSTs' flushed sequence number at
    /// open: records at or below it are in them already).
    applied: AtomicU64,
    /// The database's status, read without copying it (`Db::status` clones the manifest, and
    /// supervisors look at L0 every second).
    status: tokio::sync::watch::Receiver<DbStatus>,
    /// The log this store's writes go to: the one its recovery checkpoint names. Never
    /// another: a write in a log no checkpoint of the shard names would be lost by a replay.
    log: std::sync::OnceLock<Arc<LogWriter>>,
    /// What was applied and is not in an SST yet, for [`ShardStore::admit`].
    unflushed: std::sync::Mutex<Unflushed>,
    /// [`ShardStore::admit`] lets writes in while `unflushed` is below this.
    admit_below: usize,
}

/// The records applied since the last memtable flush: `(version, bytes)` in version order,
/// and their sum.
#[derive(Default)]
struct Unflushed {
    applied: VecDeque<(u64, usize)>,
    bytes: usize,
}

/// What a record counts for in [`Unflushed`] besides its key and value (SlateDB's own count
/// is of encoded bytes, a little more than the raw ones).
const RECORD_OVERHEAD: usize = 64;

/// Source of [`ShardStore::incarnation`] and [`ShardReader::incarnation`].
static INCARNATIONS: AtomicU64 = AtomicU64::new(1);

fn next_incarnation() -> u64 {
    INCARNATIONS.fetch_add(1, Ordering::Relaxed)
}

/// The block-cache id of a follower of `shard`: distinct from the writer's (`shard`).
fn follower_cache_id(shard: ShardId) -> u64 {
    (1 << 32) | u64::from(shard.0)
}

/// Where user keys live in the database (see "Keys").
const USER: u8 = 0x01;
/// The checkpoint marker's key.
const MARKER_KEY: &[u8] = &[0x00, b'c'];

fn stored(key: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(USER);
    out.extend_from_slice(key);
    Bytes::from(out)
}

/// Maps a range of user keys to the stored keys holding them.
fn stored_range(range: (Bound<Bytes>, Bound<Bytes>)) -> (Bound<Bytes>, Bound<Bytes>) {
    let start = match range.0 {
        Bound::Included(k) => Bound::Included(stored(&k)),
        Bound::Excluded(k) => Bound::Excluded(stored(&k)),
        Bound::Unbounded => Bound::Included(Bytes::from_static(&[USER])),
    };
    let end = match range.1 {
        Bound::Included(k) => Bound::Included(stored(&k)),
        Bound::Excluded(k) => Bound::Excluded(stored(&k)),
        Bound::Unbounded => Bound::Excluded(Bytes::from_static(&[USER + 1])),
    };
    (start, end)
}

impl ShardStore {
    /// Opens (creating if needed) the database of `shard`, fencing any previous writer; runs
    /// SlateDB's compactor and GC in-process if `embedded_compaction`. The caller recovers it
    /// from the log (`commit.rs`) before serving it.
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
            wal_enabled: false,
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
        // With no WAL, what the database has is what its SSTs have.
        let flushed = db.status().durable_seq;
        let status = db.subscribe();
        Ok(ShardStore {
            shard,
            db,
            incarnation: next_incarnation(),
            version: AtomicU64::new(flushed),
            order: tokio::sync::Mutex::new(()),
            applied: AtomicU64::new(flushed),
            status,
            log: std::sync::OnceLock::new(),
            unflushed: std::sync::Mutex::default(),
            // Halfway between the size at which a memtable is written out and the limit at
            // which SlateDB makes writes wait: normal flushing never reaches it, and what is
            // admitted at once (concurrent writers) stays below SlateDB's limit.
            admit_below: storage.l0_sst_size_bytes
                + (storage.max_unflushed_bytes - storage.l0_sst_size_bytes) / 2,
        })
    }

    /// Unique to this opening of the database in this process.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Binds the store to `log` (once; later calls keep the first) and returns the bound log.
    pub(crate) fn bind(&self, log: Arc<LogWriter>) -> &Arc<LogWriter> {
        self.log.get_or_init(|| log)
    }

    /// The log the store is bound to, if any yet.
    pub(crate) fn log(&self) -> Option<&Arc<LogWriter>> {
        self.log.get()
    }

    /// Hands out the next version. Call with [`order`](Self::order) held, and submit the
    /// record before releasing it.
    pub(crate) fn next_version(&self) -> u64 {
        self.version.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The highest version handed out.
    pub fn max_version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Raises the version counter to at least `version` (a replay, a marker).
    pub(crate) fn raise_version(&self, version: u64) {
        self.version.fetch_max(version, Ordering::AcqRel);
    }

    /// The highest version applied to the memtable.
    pub fn applied_version(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Returns the live value of `key`, if any.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let kv = self
            .db
            .get_key_value_with_options(stored(key), &read_options())
            .await
            .map_err(|e| self.map(e))?;
        Ok(kv.and_then(|kv| live(kv, now_ms())))
    }

    /// Applies `group` (one atomic write, one version, durable in the log) to the memtable.
    /// A record at or below what the SSTs already hold is skipped (a replay).
    pub async fn apply(&self, group: &[Record]) -> Result<()> {
        let Some(version) = group.first().map(|r| r.version) else {
            return Ok(());
        };
        if version <= self.applied_version() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        let mut bytes = 0;
        for r in group {
            bytes += r.key.len() + RECORD_OVERHEAD;
            match &r.op {
                Op::Put {
                    value,
                    expires_at_ms,
                } => {
                    bytes += value.len();
                    let ttl = expires_at_ms.map_or(Ttl::NoExpiry, Ttl::ExpireAtMillis);
                    batch.put_with_options(stored(&r.key), value, &PutOptions { ttl });
                }
                Op::Delete => batch.delete(stored(&r.key)),
            }
        }
        self.write_at(batch, version).await?;
        let mut unflushed = self.lock_unflushed();
        unflushed.applied.push_back((version, bytes));
        unflushed.bytes += bytes;
        Ok(())
    }

    /// Waits until the shard has room for a write: while what was applied since its last
    /// memtable flush is at `admit_below` or more (its L0 is full and no compactor drained it,
    /// so memtables pile up), until a flush makes room. A request's deadline bounds the wait.
    ///
    /// Why here, before the write is submitted: SlateDB makes a write wait once the database's
    /// unflushed bytes reach `storage.max_unflushed_bytes`. The shard's lane in the log would
    /// keep that wait from other shards, but the write would already be durable, and the
    /// shard's later writes would pile up behind it in the lane. Waiting before the log, a
    /// full shard's writes wait (and time out) without ever having been submitted.
    /// Counts in `waits` a write that has to wait, when it starts to (a request may be
    /// dropped at its deadline while it waits).
    pub async fn admit(&self, waits: &AtomicU64) {
        let mut status = self.status.clone();
        let mut counted = false;
        loop {
            status.borrow_and_update();
            if self.unflushed_bytes() < self.admit_below {
                return;
            }
            if !counted {
                waits.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            // A flush changes the status; a closed database fails the write later.
            if status.changed().await.is_err() {
                return;
            }
        }
    }

    /// Bytes applied (as [`Unflushed`] counts them) and not yet in an SST.
    fn unflushed_bytes(&self) -> usize {
        let flushed = self.flushed_version();
        let mut unflushed = self.lock_unflushed();
        while let Some(&(version, bytes)) = unflushed.applied.front() {
            if version > flushed {
                break;
            }
            unflushed.applied.pop_front();
            unflushed.bytes -= bytes;
        }
        unflushed.bytes
    }

    fn lock_unflushed(&self) -> std::sync::MutexGuard<'_, Unflushed> {
        self.unflushed.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn write_at(&self, batch: WriteBatch, version: u64) -> Result<()> {
        let options = WriteOptions { seqnum: version };
        self.db
            .write_with_options(batch, &options)
            .await
            .map_err(|e| self.map(e))?;
        self.applied.fetch_max(version, Ordering::AcqRel);
        self.raise_version(version);
        Ok(())
    }

    /// The highest version in the SSTs: every write at or below it is flushed.
    pub fn flushed_version(&self) -> u64 {
        self.status.borrow().durable_seq
    }

    /// L0 SSTs in the manifest as this writer last read it.
    pub fn l0_len(&self) -> usize {
        self.status.borrow().current_manifest.l0().len()
    }

    /// Reads the manifest now (compaction results: L0 room), instead of at the next poll.
    pub async fn refresh_manifest(&self) -> Result<()> {
        self.db.refresh_manifest().await.map_err(|e| self.map(e))
    }

    /// The checkpoint marker in the database, if any.
    pub async fn marker(&self) -> Result<Option<Marker>> {
        let found = self
            .db
            .get_with_options(MARKER_KEY, &read_options())
            .await
            .map_err(|e| self.map(e))?;
        found
            .map(|bytes| Marker::decode(self.shard, &bytes))
            .transpose()
    }

    /// Writes `marker` after everything applied so far and flushes the memtable: once this
    /// returns, the marker and every record before it are in the SSTs. Call with
    /// [`order`](Self::order) held, once every submitted record is applied, at a version
    /// from [`next_version`](Self::next_version).
    pub(crate) async fn write_marker(&self, marker: &Marker, version: u64) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(MARKER_KEY, marker.encode()?);
        self.write_at(batch, version).await
    }

    /// Writes the memtable out (with the marker last written, if any).
    pub(crate) async fn flush_memtable(&self) -> Result<()> {
        let options = FlushOptions {
            flush_type: FlushType::MemTable,
        };
        self.db
            .flush_with_options(options)
            .await
            .map_err(|e| self.map(e))
    }

    /// Iterates the live entries in `range`, in key order.
    pub async fn scan(&self, range: (Bound<Bytes>, Bound<Bytes>)) -> Result<ShardScan> {
        let iter = self
            .db
            .scan_with_options(stored_range(range), &scan_options())
            .await
            .map_err(|e| self.map(e))?;
        Ok(ShardScan::new(self.shard, iter))
    }

    /// Waits until the database stops (fenced, failed or closed) and returns why.
    pub async fn wait_closed(&self) -> Closed {
        wait_closed(self.db.subscribe()).await
    }

    /// Closes the database without flushing: a clean hand-over checkpoints first, and what
    /// is not checkpointed is in the log.
    pub async fn close(&self) -> Result<()> {
        let options = CloseOptions { flush_type: None };
        self.db
            .close_with_options(options)
            .await
            .map_err(|e| self.map(e))
    }

    fn map(&self, e: slatedb::Error) -> Error {
        map_error(self.shard, e)
    }
}

#[async_trait::async_trait]
impl Apply for ShardStore {
    async fn apply(&self, group: &[Record]) -> std::result::Result<(), String> {
        ShardStore::apply(self, group)
            .await
            .map_err(|e| e.to_string())
    }

    fn lane(&self) -> u64 {
        self.incarnation
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
            // Shards have no WAL: a poll would only LIST an empty directory.
            skip_wal_replay: true,
            ..DbReaderOptions::default()
        };
        let build = || {
            DbReader::builder(store.shard_path(shard), Arc::clone(&store.store))
                .with_reader_mode(DbReaderMode::ManagedCheckpoint)
                .with_options(options.clone())
                .with_db_cache(Arc::clone(&cache.0), follower_cache_id(shard))
                .build()
        };
        let reader = match build().await {
            // A shard's first owner claims it in etcd before it creates the database, so a
            // follower can come first (at a cluster's first start). Nothing was written then;
            // it is a wait, not a fault.
            Err(e) if e.kind() == SlateErrorKind::Data => {
                if !has_manifest(store, shard).await? {
                    return Err(Error::ShardUnavailable {
                        shard,
                        reason: "its database does not exist yet: its first owner is creating it"
                            .into(),
                    });
                }
                // The first owner created it between the open and the check: open again. A
                // second data error is a fault.
                build().await
            }
            reader => reader,
        }
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

    /// An upper bound of the `D` of the view the reader shows now (see "Followers"): SlateDB
    /// advances it just *before* it installs a new view. Read after a read, it bounds the
    /// view that read saw from above.
    pub fn durable_seq(&self) -> u64 {
        self.reader.status().durable_seq
    }

    /// A lower bound of the `D` of the view the reader shows now: the `last_l0_seq` of the
    /// manifest SlateDB reports just *after* it installed a view. Read before a read, it
    /// bounds the view that read sees from below; every write up to it is visible.
    pub fn installed_seq(&self) -> u64 {
        self.reader.status().current_manifest.last_l0_seq()
    }

    /// A receiver that changes whenever the follower's view advances or it closes.
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
            .get_key_value(stored(key))
            .await
            .map_err(|e| map_error(self.shard, e))?;
        Ok(kv.and_then(|kv| live(kv, now_ms())))
    }

    /// Iterates the live entries in `range` as the follower sees them, in key order.
    pub async fn scan(&self, range: (Bound<Bytes>, Bound<Bytes>)) -> Result<ShardScan> {
        let iter = self
            .reader
            .scan_with_options(stored_range(range), &scan_options())
            .await
            .map_err(|e| map_error(self.shard, e))?;
        Ok(ShardScan::new(self.shard, iter))
    }

    /// The checkpoint marker the follower sees: its view holds every record of the shard up
    /// to the marker's position in the marker's log.
    pub async fn marker(&self) -> Result<Option<Marker>> {
        let found = self
            .reader
            .get(MARKER_KEY)
            .await
            .map_err(|e| map_error(self.shard, e))?;
        found
            .map(|bytes| Marker::decode(self.shard, &bytes))
            .transpose()
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

/// Reads see the memtable: everything in it is durable in the log (see "No WAL").
fn read_options() -> ReadOptions {
    ReadOptions {
        durability_filter: DurabilityLevel::Memory,
        ..ReadOptions::default()
    }
}

/// Scans see the memtable too, keep their blocks cached and read ahead 64 KiB.
fn scan_options() -> ScanOptions {
    ScanOptions {
        durability_filter: DurabilityLevel::Memory,
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

/// Converts a row to an [`Entry`], or `None` if it has expired at `now_ms`.
fn live(kv: slatedb::KeyValue, now_ms: i64) -> Option<Entry> {
    if kv.expire_ts.is_some_and(|t| t <= now_ms) {
        return None;
    }
    Some(Entry {
        key: kv.key.slice(1..),
        value: kv.value,
        version: kv.seq,
        expires_at_ms: kv.expire_ts,
        written_at_ms: kv.create_ts,
    })
}

/// Whether `shard`'s database has a manifest, that is, whether any owner ever created it.
async fn has_manifest(store: &ClusterStore, shard: ShardId) -> Result<bool> {
    let manifest = store
        .admin(shard)
        .read_manifest(None)
        .await
        .map_err(|e| map_error(shard, e))?;
    Ok(manifest.is_some())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectStoreConfig;

    fn put(key: &str, version: u64) -> Vec<Record> {
        vec![Record {
            shard: ShardId(0),
            epoch: 1,
            version,
            written_at_ms: 0,
            key: Bytes::from(key.to_string()),
            op: Op::Put {
                value: Bytes::from(format!("v{version}")),
                expires_at_ms: None,
            },
        }]
    }

    async fn open(store: &ClusterStore) -> ShardStore {
        crate::storage::testing::open_shard(store, ShardId(0)).await
    }

    #[tokio::test]
    async fn applied_writes_are_flushed_only_by_a_memtable_flush() {
        let store = crate::storage::testing::memory();
        let db = open(&store).await;
        db.apply(&put("a", 5)).await.unwrap();
        assert_eq!(db.get(b"a").await.unwrap().unwrap().version, 5);
        assert_eq!(db.applied_version(), 5);
        assert!(db.flushed_version() < 5, "applied is not flushed");
        db.flush_memtable().await.unwrap();
        assert_eq!(db.flushed_version(), 5);
        db.apply(&put("b", 7)).await.unwrap();
        db.close().await.unwrap();
        let db = open(&store).await;
        assert_eq!(db.get(b"a").await.unwrap().unwrap().version, 5);
        assert!(db.get(b"b").await.unwrap().is_none(), "not flushed: gone");
        assert_eq!(db.applied_version(), 5);
    }

    /// A follower opening while the shard's first owner creates the database: its open finds
    /// no manifest, and by the time it checks, one exists. It opens again instead of failing.
    #[tokio::test]
    async fn a_follower_opening_while_the_database_is_created_opens_it() {
        use crate::storage::testing::{hooked, memory, Request};
        use futures::FutureExt;
        /// Opens a follower of shard 0, creating the database just before the `create_at`th
        /// LIST of its manifests (counting from 0); returns the open and how many it made.
        async fn race(create_at: u64) -> (Result<ShardReader>, u64) {
            let store = memory();
            let manifests = store.shard_path(ShardId(0)).join("manifest");
            let lists = Arc::new(AtomicU64::new(0));
            let hook = {
                let (store, lists) = (store.clone(), Arc::clone(&lists));
                Arc::new(move |request: Request, path: &object_store::path::Path| {
                    let create = request == Request::List
                        && path.prefix_matches(&manifests)
                        && lists.fetch_add(1, Ordering::SeqCst) == create_at;
                    let store = store.clone();
                    async move {
                        if create {
                            open(&store).await.close().await.unwrap();
                        }
                    }
                    .boxed()
                })
            };
            let follower = ShardReader::open(
                ShardId(0),
                &hooked(&store, hook),
                &ObjectStoreConfig::default(),
                Duration::from_secs(1),
                &BlockCache::new(1 << 20),
            )
            .await;
            (follower, lists.load(Ordering::SeqCst))
        }
        // With no database, the open's last LIST is the check after SlateDB's open failed.
        let (none, lists) = race(u64::MAX).await;
        assert!(matches!(none, Err(Error::ShardUnavailable { .. })));
        let (follower, _) = race(lists - 1).await;
        follower.expect("a database created during the open is opened");
    }
}
