//! Followers: read-only replicas of shards owned by other gateways, for eventual reads.
//!
//! A follower ([`ShardReader`]) is opened on the first eventual read of a shard this gateway
//! does not serve, polls the object store every `reads.follower_poll_interval`, and is closed
//! after `reads.follower_idle_timeout` without reads. Opening runs in a task of its own, so a
//! read that stops waiting (the gateway answered it from the owner meanwhile, or its deadline
//! passed) never cancels it; and a read of a key the owner answered first finishes in the
//! background (`Followers::read`), so that the blocks it fetches reach the block cache.
//! Eventual reads never need the owner, so they keep working while it is dead, paused or
//! partitioned.
//!
//! Guarantees (documented in docs/consistency.md):
//! - **No phantoms**: a follower only replays WAL objects the owner wrote, i.e. durable writes.
//! - **Bounded staleness**: a follower that is open has completed a poll within about one
//!   interval (a failed poll closes it, see `store.rs`); reads then see every write durable
//!   before that poll began. The follower cache adds at most `follower_cache_ttl`.
//! - **Monotonic per gateway**: [`Watermarks`] records, per shard, the highest version this
//!   gateway has returned; a follower serves a shard only once it has replayed at least that
//!   far (waiting up to one staleness bound, then 503), and followers only move forward. A
//!   read forwarded here by another gateway (`reads.follower_gateways`) also waits for that
//!   gateway's watermark, and the answer raises it there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::config::{NodeConfig, ObjectStoreConfig, ReadsConfig};
use crate::error::{Error, Result};
use crate::reads::cache::HotCache;
use crate::shard::ShardId;
use crate::storage::objstore::ClusterStore;
use crate::storage::store::{BlockCache, Entry, ShardReader};
use crate::tasks::Tasks;

/// How long a read waits after its follower reached the floor, for SlateDB to install the
/// replayed state (see [`Followers::get`]).
const INSTALL_GRACE: Duration = Duration::from_millis(2);

/// Most follower reads finishing in tasks of their own at once (see [`Followers::read`]).
const MAX_READS_IN_TASKS: usize = 1024;

/// Per shard: the highest version this gateway has returned to a client.
pub struct Watermarks(Vec<AtomicU64>);

impl Watermarks {
    pub(crate) fn new(shards: u32) -> Self {
        Watermarks((0..shards).map(|_| AtomicU64::new(0)).collect())
    }

    /// Notes that version `v` of a key of `shard` was returned.
    pub fn note(&self, shard: ShardId, v: u64) {
        if let Some(w) = self.0.get(shard.0 as usize) {
            w.fetch_max(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn get(&self, shard: ShardId) -> u64 {
        self.0[shard.0 as usize].load(Ordering::Relaxed)
    }
}

/// Eventual-read lag samples, drained by the metrics exporter.
#[derive(Debug, Default)]
pub struct LagSamples(Mutex<Vec<f64>>);

impl LagSamples {
    /// Most samples kept between two drains.
    const MAX: usize = 10_000;

    fn push(&self, seconds: f64) {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < Self::MAX {
            v.push(seconds);
        }
    }

    /// Takes the samples recorded since the last call.
    pub fn drain(&self) -> Vec<f64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The last advance of a follower: writes with versions in `(from, to]` became visible at
/// `at_ms` (Unix milliseconds).
#[derive(Clone, Copy, Default)]
struct Advance {
    from: u64,
    to: u64,
    at_ms: i64,
}

/// An open follower of one shard.
pub struct Follower {
    pub(crate) reader: ShardReader,
    last_used: Mutex<Instant>,
    /// Updated by a task that watches the reader's progress.
    advance: Arc<Mutex<Advance>>,
}

impl Follower {
    /// Records a lag sample if `entry` became visible in the follower's last advance: the
    /// time from the owner accepting the write to this follower first being able to serve it.
    pub(crate) fn sample_lag(&self, entry: &Entry, samples: &LagSamples) {
        let a = *self.advance.lock().unwrap_or_else(|e| e.into_inner());
        if entry.version > a.from && entry.version <= a.to && entry.written_at_ms > 0 {
            samples.push((a.at_ms - entry.written_at_ms).max(0) as f64 / 1000.0);
        }
    }
}

/// A follower read in progress; dropped before it finished, it finishes in a task of its own
/// (see [`Followers::read`]).
struct FinishOnDrop<'a> {
    read: Option<BoxFuture<'static, Result<Option<Entry>>>>,
    followers: &'a Followers,
}

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        let Some(read) = self.read.take() else {
            return;
        };
        let (Ok(runtime), Ok(permit)) = (
            tokio::runtime::Handle::try_current(),
            Arc::clone(&self.followers.read_permits).try_acquire_owned(),
        ) else {
            return;
        };
        let late = Arc::clone(&self.followers.finished_late);
        let _enter = runtime.enter();
        self.followers.tasks.detach("finish late read", async move {
            // Only the blocks it caches matter now, not its answer.
            let _ = read.await;
            drop(permit);
            late.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// One shard's follower, if open.
#[derive(Default)]
struct Slot {
    /// Held while the follower is opened or retired: one open per shard at a time.
    opening: tokio::sync::Mutex<()>,
    /// Only changed with `opening` held.
    follower: Mutex<Option<Arc<Follower>>>,
}

impl Slot {
    /// The open follower, if any (a closed one does not count).
    fn current(&self) -> Option<Arc<Follower>> {
        let f = self.follower.lock().unwrap_or_else(|e| e.into_inner());
        f.as_ref().filter(|f| !f.reader.is_closed()).cloned()
    }

    fn take(&self) -> Option<Arc<Follower>> {
        self.follower
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The followers of this gateway, one slot per shard.
pub struct Followers {
    slots: Vec<Slot>,
    store: ClusterStore,
    object_store: ObjectStoreConfig,
    reads: ReadsConfig,
    /// How long a read waits for a follower behind the watermark: the staleness bound.
    bound: Duration,
    blocks: BlockCache,
    hot: Arc<HotCache>,
    open: AtomicU64,
    /// Permits for reads finishing in tasks of their own: bounds the reads that outlive their
    /// requests (an object store that hangs would otherwise collect one task per read).
    read_permits: Arc<Semaphore>,
    /// Reads that finished after their request had stopped waiting for them.
    finished_late: Arc<AtomicU64>,
    /// Opens and late reads, which finish even if their request is dropped, and each
    /// follower's progress tracker.
    tasks: Tasks,
    /// Set by [`Followers::close_all`]: no more opens.
    closed: AtomicBool,
    pub(crate) watermarks: Watermarks,
}

impl Followers {
    /// Followers for a node configured by `config`, reading `store` through `blocks`, caching
    /// answers in `hot`, with their background work on `tasks`.
    pub(crate) fn new(
        config: &NodeConfig,
        store: ClusterStore,
        blocks: BlockCache,
        hot: Arc<HotCache>,
        tasks: Tasks,
    ) -> Self {
        let shards = config.storage.shard_count;
        Followers {
            slots: (0..shards).map(|_| Slot::default()).collect(),
            store,
            object_store: config.object_store.clone(),
            reads: config.reads.clone(),
            bound: config.staleness_bound(),
            blocks,
            hot,
            tasks,
            open: AtomicU64::new(0),
            read_permits: Arc::new(Semaphore::new(MAX_READS_IN_TASKS)),
            finished_late: Arc::default(),
            closed: AtomicBool::new(false),
            watermarks: Watermarks::new(shards),
        }
    }

    /// Followers open now.
    pub fn open_count(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Follower reads that finished after their request had stopped waiting for them (the
    /// owner answered a hedged read first).
    pub fn finished_late(&self) -> u64 {
        self.finished_late.load(Ordering::Relaxed)
    }

    /// Whether the follower of `shard` is open and has caught up with everything this gateway
    /// has returned for the shard, i.e. [`Followers::get`] would answer without waiting.
    pub(crate) fn ready(&self, shard: ShardId) -> bool {
        self.slots[shard.0 as usize]
            .current()
            .is_some_and(|f| f.reader.durable_seq() >= self.watermarks.get(shard))
    }

    /// The follower of `shard`, opened if needed, once it has caught up with everything this
    /// gateway has returned for the shard and with version `floor` (what the gateway that
    /// forwarded the read had returned; 0 when none did).
    pub(crate) async fn get(self: &Arc<Self>, shard: ShardId, floor: u64) -> Result<Arc<Follower>> {
        let follower = match self.slots[shard.0 as usize].current() {
            Some(f) => f,
            // In its own task: dropping this read's future must not abandon the open.
            None => {
                let followers = Arc::clone(self);
                self.tasks
                    .detach(
                        "open follower",
                        async move { followers.open_slot(shard).await },
                    )
                    .await
                    .map_err(|e| Error::Internal(format!("opening a follower: {e}")))??
            }
        };
        *follower.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let floor = floor.max(self.watermarks.get(shard));
        if follower.reader.durable_seq() < floor {
            let caught_up = {
                let mut status = follower.reader.subscribe();
                let waited = tokio::time::timeout(
                    self.bound,
                    status.wait_for(|s| s.durable_seq >= floor || s.close_reason.is_some()),
                )
                .await;
                matches!(waited, Ok(Ok(s)) if s.close_reason.is_none())
            };
            if !caught_up {
                return Err(Error::ShardUnavailable {
                    shard,
                    reason: "the follower has not caught up with what was already served".into(),
                });
            }
            // SlateDB 0.18's DbReader advances `durable_seq` (waking this wait) just *before*
            // it installs the replayed WAL as its readable state (`maybe_replay_new_wals`,
            // no await in between). A read on another thread in that window saw the state
            // before the floor: caught in CI as an eventual read and an eventual scan older
            // than the floor. The install takes microseconds; wait that out.
            tokio::time::sleep(INSTALL_GRACE).await;
        }
        Ok(follower)
    }

    /// Reads `key` through `follower`. A hedged read whose owner answered first drops this
    /// future; the read then finishes in a task of its own (while fewer than
    /// [`MAX_READS_IN_TASKS`] do), so the blocks it was fetching are cached. Cancelling them
    /// instead kept followers cold for good once the object store answered slower than the
    /// hedge delay: every read of a cold block went to the owner again.
    pub(crate) async fn read(&self, follower: &Arc<Follower>, key: &[u8]) -> Result<Option<Entry>> {
        let (follower, key) = (Arc::clone(follower), key.to_vec());
        let mut read = FinishOnDrop {
            read: Some(Box::pin(async move { follower.reader.get(&key).await })),
            followers: self,
        };
        let result = read.read.as_mut().expect("set above").await;
        read.read = None;
        result
    }

    /// Opens the follower of `shard` unless another caller did meanwhile.
    async fn open_slot(&self, shard: ShardId) -> Result<Arc<Follower>> {
        let slot = &self.slots[shard.0 as usize];
        let _opening = slot.opening.lock().await;
        if let Some(f) = slot.current() {
            return Ok(f);
        }
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::ShardUnavailable {
                shard,
                reason: "the gateway is shutting down".into(),
            });
        }
        if let Some(dead) = slot.take() {
            self.retire(dead).await;
        }
        let f = Arc::new(self.open(shard).await?);
        self.open.fetch_add(1, Ordering::Relaxed);
        *slot.follower.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&f));
        Ok(f)
    }

    async fn open(&self, shard: ShardId) -> Result<Follower> {
        let reader = ShardReader::open(
            shard,
            &self.store,
            &self.object_store,
            self.reads.follower_poll_interval,
            &self.blocks,
        )
        .await?;
        let seq = reader.durable_seq();
        let advance = Arc::new(Mutex::new(Advance {
            from: seq,
            to: seq,
            at_ms: 0,
        }));
        // Ends when the reader is dropped (its status channel closes).
        let mut status = reader.subscribe();
        let track = Arc::clone(&advance);
        self.tasks.spawn("track follower", async move {
            while status.changed().await.is_ok() {
                let seq = status.borrow_and_update().durable_seq;
                let mut a = track.lock().unwrap_or_else(|e| e.into_inner());
                if seq > a.to {
                    *a = Advance {
                        from: a.to,
                        to: seq,
                        at_ms: crate::storage::store::now_ms(),
                    };
                }
            }
        });
        tracing::debug!(%shard, seq, "follower opened");
        Ok(Follower {
            reader,
            last_used: Mutex::new(Instant::now()),
            advance,
        })
    }

    /// Closes followers unused for the idle timeout, and dead ones. Slots being opened are
    /// left for the next round.
    pub(crate) async fn close_idle(&self) {
        for slot in &self.slots {
            let Ok(_opening) = slot.opening.try_lock() else {
                continue;
            };
            let idle = slot
                .follower
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|f| {
                    f.reader.is_closed()
                        || f.last_used
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .elapsed()
                            >= self.reads.follower_idle_timeout
                });
            if idle {
                if let Some(f) = slot.take() {
                    self.retire(f).await;
                }
            }
        }
    }

    /// Closes every follower (shutdown), after any open in progress.
    pub(crate) async fn close_all(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for slot in &self.slots {
            let _opening = slot.opening.lock().await;
            if let Some(f) = slot.take() {
                self.retire(f).await;
            }
        }
    }

    async fn retire(&self, f: Arc<Follower>) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.hot.drop_scope(f.reader.incarnation());
        if let Err(e) = f.reader.close().await {
            tracing::debug!(error = %e, "follower close failed");
        }
    }
}
