//! Followers: read-only replicas of shards owned by other gateways, for eventual reads.
//!
//! A follower ([`ShardReader`]) is opened on the first eventual read of a shard this gateway
//! does not serve, polls the object store every `reads.follower_poll_interval`, and is closed
//! after `reads.follower_idle_timeout` without reads. Eventual reads never contact the owner,
//! so they keep working while it is dead, paused or partitioned.
//!
//! Guarantees (documented in the README):
//! - **No phantoms**: a follower only replays WAL objects the owner wrote, i.e. durable writes.
//! - **Bounded staleness**: a follower that is open has completed a poll within about one
//!   interval (a failed poll closes it, see `store.rs`); reads then see every write durable
//!   before that poll began. The follower cache adds at most `follower_cache_ttl`.
//! - **Monotonic per gateway**: [`Watermarks`] records, per shard, the highest version this
//!   gateway has returned; a follower serves a shard only once it has replayed at least that
//!   far (waiting up to one staleness bound, then 503), and followers only move forward.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::HotCache;
use crate::config::{ObjectStoreConfig, ReadsConfig};
use crate::error::{Error, Result};
use crate::objstore::ClusterStore;
use crate::shard::ShardId;
use crate::store::{BlockCache, Entry, ShardReader};

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

    fn get(&self, shard: ShardId) -> u64 {
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

/// The followers of this gateway, one slot per shard.
pub struct Followers {
    slots: Vec<tokio::sync::Mutex<Option<Arc<Follower>>>>,
    store: ClusterStore,
    object_store: ObjectStoreConfig,
    reads: ReadsConfig,
    /// How long a read waits for a follower behind the watermark: the staleness bound.
    bound: Duration,
    blocks: BlockCache,
    hot: Arc<HotCache>,
    open: AtomicU64,
    pub(crate) watermarks: Watermarks,
}

impl Followers {
    pub(crate) fn new(
        shards: u32,
        store: ClusterStore,
        object_store: ObjectStoreConfig,
        reads: ReadsConfig,
        bound: Duration,
        blocks: BlockCache,
        hot: Arc<HotCache>,
    ) -> Self {
        Followers {
            slots: (0..shards).map(|_| tokio::sync::Mutex::new(None)).collect(),
            store,
            object_store,
            reads,
            bound,
            blocks,
            hot,
            open: AtomicU64::new(0),
            watermarks: Watermarks::new(shards),
        }
    }

    /// Followers open now.
    pub fn open_count(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// The follower of `shard`, opened if needed, once it has caught up with everything this
    /// gateway has returned for the shard.
    pub(crate) async fn get(&self, shard: ShardId) -> Result<Arc<Follower>> {
        let follower = {
            let mut slot = self.slots[shard.0 as usize].lock().await;
            match &*slot {
                Some(f) if !f.reader.is_closed() => Arc::clone(f),
                _ => {
                    if let Some(dead) = slot.take() {
                        self.retire(dead).await;
                    }
                    let f = Arc::new(self.open(shard).await?);
                    self.open.fetch_add(1, Ordering::Relaxed);
                    *slot = Some(Arc::clone(&f));
                    f
                }
            }
        };
        *follower.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let floor = self.watermarks.get(shard);
        if follower.reader.durable_seq() < floor {
            let mut status = follower.reader.subscribe();
            let caught_up = tokio::time::timeout(
                self.bound,
                status.wait_for(|s| s.durable_seq >= floor || s.close_reason.is_some()),
            )
            .await;
            if !matches!(caught_up, Ok(Ok(s)) if s.close_reason.is_none()) {
                return Err(Error::ShardUnavailable {
                    shard,
                    reason: "the follower has not caught up with what this gateway already served"
                        .into(),
                });
            }
        }
        Ok(follower)
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
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let seq = status.borrow_and_update().durable_seq;
                let mut a = track.lock().unwrap_or_else(|e| e.into_inner());
                if seq > a.to {
                    *a = Advance {
                        from: a.to,
                        to: seq,
                        at_ms: crate::store::now_ms(),
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

    /// Closes followers unused for the idle timeout, and dead ones.
    pub(crate) async fn close_idle(&self) {
        for slot in &self.slots {
            let mut slot = slot.lock().await;
            let idle = slot.as_ref().is_some_and(|f| {
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

    /// Closes every follower (shutdown).
    pub(crate) async fn close_all(&self) {
        for slot in &self.slots {
            if let Some(f) = slot.lock().await.take() {
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
