//! `Node`: the shards this process serves, and the key-value operations over them.
//!
//! In the embedded (single-process) mode a node owns every shard of the cluster: it opens them
//! all at start-up, which fences any earlier writer of the same data, and serves them until
//! shutdown. In cluster mode it owns the shards it acquired through etcd (`ownership.rs`) and
//! serves them only while its lease deadline holds ([`LeaseClock`]).
//!
//! Each shard has a [`ShardSlot`] whose state is `NotOwned`, `Open`, `Draining` (a planned
//! release waits for in-flight requests), `Reopening` (its database hit a fatal
//! error, e.g. a WAL flush that exhausted its retries while the object store was down, and a
//! background task is reopening it), `Fenced` (another process opened the database: we must
//! never serve it again) or `Closed` (shutdown). Requests reach a store only through
//! `ShardSlot::store`, so nothing is served from a database in any state but `Open`; a
//! request that finds its shard `Reopening` waits for it (bounded by [`REOPEN_WAIT`]).
//!
//! A supervisor task per open database watches its status: when the database stops on its own
//! it moves the slot to `Fenced` or starts the reopen task, so shards recover after an outage
//! without waiting for a request to notice.
//!
//! Conditional writes: every write to a key holds the key's stripe lock while it checks its
//! precondition against the newest value (in memory or durable) and hands the write to SlateDB;
//! it releases the lock before waiting for durability, so writers of one shard still share WAL
//! flushes (group commit). Because the WAL is ordered, a write that depended on an earlier,
//! unacknowledged write can only become durable after it.
//!
//! Reads: strong reads (the default) are served by the owner, from the hot-key cache
//! (`cache.rs`, which explains why a cached answer is never older than the last acknowledged
//! write) or from the database. Eventual reads are served by the owner if this gateway is
//! one, else by a follower (`follower.rs`) without contacting the owner.
//!
//! Invariants:
//! - a write is acknowledged (returns `Ok`) only after it is durable in the object store, and
//!   after the hot-key cache has recorded it;
//! - a read returns only durable, unexpired data, and only if the lease was valid after the
//!   read (so no other gateway can have owned the shard when it was read);
//! - a request holds its slot's gate from start to finish; a release closes the database only
//!   after every such request has finished;
//! - a `Fenced` slot never goes back to `Open` without a new acquisition.

use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{watch, Mutex, OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::{Cached, HotCache};
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::follower::{Followers, LagSamples};
use crate::lease::LeaseClock;
use crate::meta;
use crate::objstore::{self, ClusterStore};
use crate::placement::{self, ClusterView, Member, Owner};
use crate::shard::{shard_for_key, ShardId};
use crate::store::{
    now_ms, BlockCache, Closed, Durability, Entry, Mutation, PendingWrite, ShardScan, ShardStore,
};

/// Longest a request waits for its shard to finish reopening before it gets 503.
pub const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// Write locks per shard. Keys hash onto stripes; a batch takes its stripes in ascending order.
const STRIPES: usize = 64;

/// A condition a write requires of the key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No condition.
    None,
    /// The key must exist with exactly this version (`If-Match: "N"`).
    IfMatch(u64),
    /// The key must be absent or expired (`If-None-Match: *`).
    IfAbsent,
    /// The key must exist, with any version (`If-Match: *`).
    IfExists,
}

/// What a write does to its key.
#[derive(Debug, Clone)]
pub enum WriteKind {
    /// Sets the value, expiring after `ttl_secs` if given.
    Put { value: Bytes, ttl_secs: Option<u64> },
    /// Removes the key.
    Delete,
}

/// One conditional mutation.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// The key.
    pub key: Bytes,
    /// What to do.
    pub kind: WriteKind,
    /// What must hold first.
    pub precondition: Precondition,
}

/// A scan request over the whole key space. Bounds combine: the scanned range is the
/// intersection of `[start, end)`, the keys starting with `prefix`, and the keys after `after`.
#[derive(Debug, Clone, Default)]
pub struct ScanRequest {
    /// Only keys with this prefix.
    pub prefix: Option<Bytes>,
    /// First key (inclusive).
    pub start: Option<Bytes>,
    /// Last key (exclusive).
    pub end: Option<Bytes>,
    /// Resume after this key (from a previous page's cursor).
    pub after: Option<Bytes>,
    /// Most items to return; 0 means the configured default.
    pub limit: usize,
}

/// The consistency a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Linearizable: served by the shard's owner.
    #[default]
    Strong,
    /// Served by any gateway without needing the owner (see `follower.rs`; the gateway may
    /// also ask the owner when the follower is slow).
    Eventual,
}

/// What served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// The owner's database: linearizable.
    Strong,
    /// The owner's hot-key cache: linearizable too.
    Cache,
    /// A follower of the shard (or this gateway's cache of its answers): eventual.
    Eventual,
}

impl ReadSource {
    /// The name used in the `X-Tessera-Read` header.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSource::Strong => "strong",
            ReadSource::Cache => "cache",
            ReadSource::Eventual => "eventual",
        }
    }
}

/// The answer to a point read.
#[derive(Debug, Clone)]
pub struct Read {
    /// The key's live value, or `None` if it is absent or expired.
    pub entry: Option<Entry>,
    /// What served it.
    pub source: ReadSource,
}

/// One page of a scan.
#[derive(Debug, Clone)]
pub struct ScanPage {
    /// Entries in key order.
    pub items: Vec<Entry>,
    /// True if more entries follow the last one returned.
    pub more: bool,
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Storage errors seen by requests (object store unreachable, shard closed, fenced).
    pub storage_errors: AtomicU64,
    /// Times a shard database was reopened after a fatal error.
    pub shard_reopens: AtomicU64,
    /// Shards acquired, released or dropped by this node.
    pub ownership_changes: AtomicU64,
    /// Lease keep-alive round trips (cluster mode).
    pub keepalive: Arc<crate::lease::KeepAliveStats>,
    /// Per shard: how long it has had no owner in this node's view (cluster mode).
    pub unowned: placement::UnownedTime,
    /// Reads by what served them: strong, cache, eventual.
    pub reads: [AtomicU64; 3],
    /// Time from a write's acceptance to a follower here being able to serve it.
    pub eventual_lag: LagSamples,
}

#[derive(Clone)]
pub(crate) enum SlotState {
    NotOwned,
    Open { store: Arc<ShardStore>, epoch: i64 },
    Draining,
    Reopening,
    Fenced,
    Closed,
}

/// Where a request for a shard must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// This gateway owns and serves the shard.
    Local,
    /// Another gateway owns it.
    Remote(Owner),
    /// Nobody serves it right now (failover or handoff in progress): wait and look again.
    Unowned,
}

/// One shard's place in the node.
pub struct ShardSlot {
    pub(crate) id: ShardId,
    pub(crate) state: watch::Sender<SlotState>,
    stripes: Vec<Mutex<()>>,
    /// Per stripe: writes made durable and recorded in the cache (see `cache.rs`, rule 3).
    stripe_writes: Vec<AtomicU64>,
    /// Per stripe: writes handed to SlateDB whose outcome the cache has not recorded yet
    /// (`cache.rs`, rule 4). While non-zero, strong reads of the stripe skip the cache.
    stripe_pending: Vec<AtomicU64>,
    /// Where the entries of this slot's open store are cached; dropped when it stops serving.
    hot: Arc<HotCache>,
    /// Held shared by every request for its whole duration; a release takes it exclusively
    /// before closing the database.
    pub(crate) gate: Arc<RwLock<()>>,
}

/// A request's pass into an open shard: the store and a share of the slot's gate.
struct Entered {
    store: Arc<ShardStore>,
    _gate: OwnedRwLockReadGuard<()>,
}

/// Keeps what a shard scan reads from open until the scan ends.
enum ScanGuard {
    Owner(#[allow(dead_code)] Entered),
    Follower(#[allow(dead_code)] Arc<crate::follower::Follower>),
}

impl ShardSlot {
    fn new(id: ShardId, hot: Arc<HotCache>) -> Self {
        ShardSlot {
            id,
            state: watch::Sender::new(SlotState::NotOwned),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            stripe_writes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            stripe_pending: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hot,
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// The epoch of the ownership this slot holds, if it is open.
    pub(crate) fn open_epoch(&self) -> Option<i64> {
        match &*self.state.borrow() {
            SlotState::Open { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }

    /// Returns the open store, waiting up to [`REOPEN_WAIT`] if it is reopening, or why the
    /// shard cannot be served now.
    async fn store(&self) -> Result<Arc<ShardStore>> {
        let mut rx = self.state.subscribe();
        let settled = tokio::time::timeout(
            REOPEN_WAIT,
            rx.wait_for(|s| !matches!(s, SlotState::Reopening)),
        )
        .await;
        if let Ok(Ok(state)) = settled {
            if let SlotState::Open { store, .. } = &*state {
                return Ok(Arc::clone(store));
            }
        }
        self.try_store()
    }

    /// Returns the open store without waiting.
    fn try_store(&self) -> Result<Arc<ShardStore>> {
        match &*self.state.borrow() {
            SlotState::Open { store, .. } => Ok(Arc::clone(store)),
            SlotState::Reopening => Err(Error::ShardUnavailable {
                shard: self.id,
                reason: "reopening after an object-store failure".into(),
            }),
            SlotState::Fenced => Err(Error::Fenced { shard: self.id }),
            SlotState::NotOwned | SlotState::Draining => Err(Error::NotOwner { shard: self.id }),
            SlotState::Closed => Err(Error::ShuttingDown),
        }
    }

    pub(crate) fn set(&self, new: SlotState) -> SlotState {
        let old = self.state.send_replace(new);
        self.forget(&old);
        old
    }

    /// Replaces `Open { store, .. }` with `new`; false if the slot no longer holds `store`.
    pub(crate) fn replace_open(&self, store: &Arc<ShardStore>, new: SlotState) -> bool {
        let replaced = self.state.send_if_modified(|state| {
            if matches!(state, SlotState::Open { store: s, .. } if Arc::ptr_eq(s, store)) {
                *state = new;
                true
            } else {
                false
            }
        });
        if replaced {
            self.hot.drop_scope(store.incarnation());
        }
        replaced
    }

    /// Drops the cache entries of a store this slot no longer serves.
    fn forget(&self, old: &SlotState) {
        if let SlotState::Open { store, .. } = old {
            self.hot.drop_scope(store.incarnation());
        }
    }

    fn stripe(key: &[u8]) -> usize {
        (xxhash_rust::xxh3::xxh3_64_with_seed(key, 1) % STRIPES as u64) as usize
    }
}

/// The shards this process serves.
pub struct Node {
    pub(crate) config: NodeConfig,
    pub(crate) store: ClusterStore,
    pub(crate) cache: BlockCache,
    /// Hot keys of the shards served here, and recent follower answers.
    pub(crate) hot: Arc<HotCache>,
    /// Followers of shards served elsewhere, for eventual reads.
    pub(crate) followers: Arc<Followers>,
    pub(crate) shards: Vec<Arc<ShardSlot>>,
    pub(crate) stats: Arc<NodeStats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// This gateway as a cluster member.
    pub(crate) me: Member,
    /// Until when the node may serve its shards (forever in embedded mode).
    pub(crate) lease: std::sync::RwLock<Arc<LeaseClock>>,
    /// The cluster as last seen (in embedded mode: every shard owned by this node).
    pub(crate) view: watch::Sender<ClusterView>,
    /// The etcd connection in cluster mode.
    pub(crate) etcd: Option<Etcd>,
    /// The etcd lease id (0 in embedded mode).
    pub(crate) lease_id: std::sync::atomic::AtomicI64,
    /// Cancelled when the node starts leaving: no more acquisitions.
    pub(crate) leaving: CancellationToken,
    /// Fault injection for tests only (`TESSERA_FAULT_RECORD_DELAY_MS`): a pause between a
    /// write becoming durable and the cache recording it, which widens the window cache rule
    /// 4 closes. Never set in production.
    record_delay: Option<Duration>,
}

impl Node {
    /// Opens the cluster in `config.object_store` (creating it if new). In embedded mode it
    /// opens every shard; in cluster mode it joins through etcd and acquires its share.
    /// `me` is how other gateways reach this one.
    pub async fn open(config: NodeConfig, me: Member) -> Result<Arc<Node>> {
        config.validate()?;
        let store = objstore::open(&config.object_store)?;
        meta::create_or_check(&store, config.storage.shard_count).await?;
        let etcd = if config.cluster.is_clustered() {
            Some(
                Etcd::connect(
                    &config.cluster.etcd_endpoints,
                    &config.cluster.name,
                    config.cluster.etcd_timeout,
                )
                .await?,
            )
        } else {
            None
        };
        let cache = BlockCache::new(config.storage.block_cache_bytes);
        let hot = Arc::new(HotCache::new(config.reads.hot_key_cache_bytes));
        let node = Arc::new(Node {
            followers: Arc::new(Followers::new(
                config.storage.shard_count,
                store.clone(),
                config.object_store.clone(),
                config.reads.clone(),
                config.staleness_bound(),
                cache.clone(),
                Arc::clone(&hot),
            )),
            shards: (0..config.storage.shard_count)
                .map(|n| Arc::new(ShardSlot::new(ShardId(n), Arc::clone(&hot))))
                .collect(),
            cache,
            hot,
            store,
            stats: Arc::default(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            me,
            lease: std::sync::RwLock::new(Arc::new(LeaseClock::forever())),
            view: watch::Sender::new(ClusterView::default()),
            etcd,
            lease_id: std::sync::atomic::AtomicI64::new(0),
            leaving: CancellationToken::new(),
            record_delay: std::env::var("TESSERA_FAULT_RECORD_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            config,
        });
        if node.etcd.is_some() {
            node.join().await?;
            node.reap_followers();
        } else {
            node.open_all().await?;
        }
        Ok(node)
    }

    /// Closes idle followers in the background until shutdown.
    fn reap_followers(self: &Arc<Self>) {
        let node = Arc::clone(self);
        let period = (self.config.reads.follower_idle_timeout / 4).max(Duration::from_millis(100));
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = node.cancel.cancelled() => return,
                    _ = tokio::time::sleep(period) => node.followers.close_idle().await,
                }
            }
        });
    }

    /// Embedded mode: opens every shard and records this node as their owner.
    async fn open_all(self: &Arc<Self>) -> Result<()> {
        let started = std::time::Instant::now();
        futures::stream::iter(self.shards.clone())
            .map(|slot| {
                let node = Arc::clone(self);
                async move { node.install(&slot, 0).await }
            })
            .buffer_unordered(self.config.storage.open_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        self.view.send_modify(|v| {
            v.members.insert(self.me.id.clone(), self.me.clone());
            for slot in &self.shards {
                v.owners.insert(
                    slot.id.0,
                    Owner {
                        id: self.me.id.clone(),
                        url: self.me.url.clone(),
                        epoch: 0,
                    },
                );
            }
        });
        tracing::info!(
            shards = self.shards.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "opened all shards"
        );
        Ok(())
    }

    /// Opens `shard`'s database with this node's settings, fencing any previous writer.
    async fn open_store(&self, shard: ShardId) -> Result<ShardStore> {
        ShardStore::open(
            shard,
            &self.store,
            &self.config.storage,
            &self.config.object_store,
            &self.cache,
            self.config.embedded_compaction(),
        )
        .await
    }

    /// Opens `slot`'s database (fencing any previous writer) and serves it under `epoch`.
    pub(crate) async fn install(self: &Arc<Self>, slot: &Arc<ShardSlot>, epoch: i64) -> Result<()> {
        let store = Arc::new(self.open_store(slot.id).await?);
        slot.set(SlotState::Open {
            store: Arc::clone(&store),
            epoch,
        });
        self.supervise(Arc::clone(slot), store);
        Ok(())
    }

    /// The lease clock currently in force.
    pub(crate) fn lease(&self) -> Arc<LeaseClock> {
        Arc::clone(&self.lease.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where requests for `shard` must go now.
    pub fn locate(&self, shard: ShardId) -> Located {
        let slot = &self.shards[shard.0 as usize];
        // A reopening shard is still ours: its requests wait for the reopen (bounded) here.
        let ours = matches!(
            &*slot.state.borrow(),
            SlotState::Open { .. } | SlotState::Reopening
        );
        if ours && self.lease().valid() {
            return Located::Local;
        }
        match self.view.borrow().owners.get(&shard.0) {
            Some(owner) if owner.id != self.me.id => Located::Remote(owner.clone()),
            _ => Located::Unowned,
        }
    }

    /// The cluster as this node sees it.
    pub fn view(&self) -> ClusterView {
        self.view.borrow().clone()
    }

    /// This node as a cluster member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// Shards this node serves now.
    pub fn owned_shards(&self) -> Vec<ShardId> {
        self.shards
            .iter()
            .filter(|s| s.open_epoch().is_some())
            .map(|s| s.id)
            .collect()
    }

    /// Enters `slot` for one request: the open store and a share of its gate, provided the
    /// lease is valid.
    async fn enter(&self, slot: &ShardSlot) -> Result<Entered> {
        let store = slot.store().await?;
        let gate = Arc::clone(&slot.gate)
            .try_read_owned()
            .map_err(|_| Error::NotOwner { shard: slot.id })?;
        // The slot may have changed between the two steps: re-check under the gate.
        let still = matches!(&*slot.state.borrow(), SlotState::Open { store: s, .. } if Arc::ptr_eq(s, &store));
        if !still || !self.lease().valid() {
            return Err(Error::NotOwner { shard: slot.id });
        }
        Ok(Entered { store, _gate: gate })
    }

    /// Confirms, after a read, that the lease still held: nobody else can have owned the
    /// shard when the read happened (see `lease.rs`).
    fn confirm_read(&self, slot: &ShardSlot) -> Result<()> {
        if self.lease().valid() && slot.open_epoch().is_some() {
            Ok(())
        } else {
            Err(Error::NotOwner { shard: slot.id })
        }
    }

    /// The configuration the node runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Object-store requests made by this node so far, by kind.
    pub fn object_store_requests(&self) -> &objstore::RequestCounts {
        &self.store.requests
    }

    /// Returns the shard of `key`.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.config.storage.shard_count)
    }

    /// Checks a key against the configured limits.
    pub fn validate_key(&self, key: &[u8]) -> Result<()> {
        let max = self.config.limits.max_key_bytes;
        if key.is_empty() {
            return Err(Error::invalid("invalid_key", "the key must not be empty"));
        }
        if key.len() > max {
            return Err(Error::invalid(
                "key_too_long",
                format!("the key is {} bytes; the limit is {max} bytes", key.len()),
            ));
        }
        Ok(())
    }

    /// Returns the durable, live value of `key` (linearizable): from the hot-key cache or the
    /// database of the shard, which this gateway must own.
    pub async fn get(&self, key: &[u8]) -> Result<Read> {
        self.validate_key(key)?;
        let shard = self.shard_of(key);
        let slot = &self.shards[shard.0 as usize];
        let entered = self.enter(slot).await?;
        let scope = entered.store.incarnation();
        let stripe = ShardSlot::stripe(key);
        // CACHE RULE 4 (cache.rs): a write of this stripe may be durable, and so already
        // revealed by another path, before its writer records it; until then only the
        // database's durable state is current. The check comes before the lookup.
        let cached = if slot.stripe_pending[stripe].load(Ordering::SeqCst) == 0 {
            self.hot.get(scope, key, None, 0)
        } else {
            None
        };
        // An expired cached value falls through to the database, which decides expiry.
        let read = match cached {
            Some(Cached::Absent { .. }) => Read {
                entry: None,
                source: ReadSource::Cache,
            },
            Some(Cached::Value(e)) if e.expires_at_ms.is_none_or(|t| t > now_ms()) => Read {
                entry: Some(e),
                source: ReadSource::Cache,
            },
            _ => {
                let stripe = &slot.stripe_writes[stripe];
                let before = stripe.load(Ordering::Acquire);
                let found = self.observe(entered.store.get(key, Durability::Durable).await)?;
                let filled = found
                    .clone()
                    .map_or(Cached::Absent { version: 0 }, Cached::Value);
                self.hot
                    .fill(scope, Bytes::copy_from_slice(key), filled, 0, || {
                        stripe.load(Ordering::Acquire) == before
                    });
                Read {
                    entry: found,
                    source: ReadSource::Strong,
                }
            }
        };
        self.confirm_read(slot)?;
        Ok(self.served(shard, read))
    }

    /// Returns the value of `key` without contacting its owner: served here if this gateway
    /// owns the shard, else by a follower that has reached at least version `floor` (see
    /// `follower.rs` for the guarantees).
    pub async fn get_eventual(&self, key: &[u8], floor: u64) -> Result<Read> {
        self.validate_key(key)?;
        let shard = self.shard_of(key);
        if self.locate(shard) == Located::Local {
            match self.get(key).await {
                Err(Error::NotOwner { .. }) => {}
                other => return other,
            }
        }
        // The follower serves only once it has replayed up to the floor (the caller's, or what
        // this gateway returned for the shard); so does its cache: an entry read before the
        // follower got there may be older than a version already returned.
        let floor = floor.max(self.watermark(shard));
        let follower = self.followers.get(shard, floor).await?;
        let scope = follower.reader.incarnation();
        let max_age = Some(self.config.reads.follower_cache_ttl);
        let cached = self.hot.get(scope, key, max_age, floor);
        let entry = match cached {
            Some(Cached::Absent { .. }) => None,
            Some(Cached::Value(e)) if e.expires_at_ms.is_none_or(|t| t > now_ms()) => Some(e),
            _ => {
                let before = follower.reader.durable_seq();
                let found = self.observe(self.followers.read(&follower, key).await)?;
                if let Some(e) = &found {
                    follower.sample_lag(e, &self.stats.eventual_lag);
                }
                let filled = found
                    .clone()
                    .map_or(Cached::Absent { version: 0 }, Cached::Value);
                self.hot
                    .fill(scope, Bytes::copy_from_slice(key), filled, before, || {
                        follower.reader.durable_seq() == before
                    });
                found
            }
        };
        Ok(self.served(
            shard,
            Read {
                entry,
                source: ReadSource::Eventual,
            },
        ))
    }

    /// Whether this gateway's follower of `shard` is open and caught up with everything the
    /// gateway has returned for the shard, i.e. answers an eventual read without waiting for
    /// an open or a poll. When not, the gateway may ask the owner meanwhile (a strong answer
    /// is also a valid eventual one).
    pub fn follower_ready(&self, shard: ShardId) -> bool {
        self.followers.ready(shard)
    }

    /// The gateway to send this shard's eventual reads to, when it is not this one: the
    /// first of the shard's follower gateways (`reads.follower_gateways`) unless this gateway
    /// owns the shard or is one of them. `None`: read here.
    pub fn follower_gateway(&self, shard: ShardId) -> Option<Member> {
        let k = self.config.reads.follower_gateways;
        let view = self.view.borrow();
        let owner = view.owners.get(&shard.0).map(|o| o.id.as_str());
        if owner == Some(self.me.id.as_str()) {
            return None;
        }
        let candidates = view
            .members
            .values()
            .filter(|m| Some(m.id.as_str()) != owner);
        // Every candidate is a follower gateway: no need to rank them (small clusters).
        if k == 0 || candidates.clone().count() <= k {
            return None;
        }
        let chosen = &placement::ranked(shard, candidates)[..k];
        if chosen.iter().any(|m| m.id == self.me.id) {
            return None;
        }
        Some(chosen[0].clone())
    }

    /// The version a follower here must reach before serving `shard`: the highest this gateway
    /// has returned (sent along with reads it forwards to a follower gateway).
    pub fn watermark(&self, shard: ShardId) -> u64 {
        self.followers.watermarks.get(shard)
    }

    /// Records that `version` of a key of `shard` was returned by this gateway (also for reads
    /// forwarded to the owner), so later eventual reads here never go back before it.
    pub fn note_served(&self, shard: ShardId, version: u64) {
        self.followers.watermarks.note(shard, version);
    }

    fn served(&self, shard: ShardId, read: Read) -> Read {
        if let Some(e) = &read.entry {
            self.note_served(shard, e.version);
        }
        let i = match read.source {
            ReadSource::Strong => 0,
            ReadSource::Cache => 1,
            ReadSource::Eventual => 2,
        };
        self.stats.reads[i].fetch_add(1, Ordering::Relaxed);
        read
    }

    /// The hot-key cache.
    pub fn hot_cache(&self) -> &HotCache {
        &self.hot
    }

    /// Followers open now.
    pub fn followers_open(&self) -> u64 {
        self.followers.open_count()
    }

    /// Follower reads that finished after their request had been answered by the owner.
    pub fn follower_reads_finished_late(&self) -> u64 {
        self.followers.finished_late()
    }

    /// Writes one key; returns the new version once durable.
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        ttl_secs: Option<u64>,
        precondition: Precondition,
    ) -> Result<u64> {
        self.apply(vec![WriteOp {
            key,
            kind: WriteKind::Put { value, ttl_secs },
            precondition,
        }])
        .await
    }

    /// Deletes one key (absent keys included); returns once durable.
    pub async fn delete(&self, key: Bytes, precondition: Precondition) -> Result<()> {
        self.apply(vec![WriteOp {
            key,
            kind: WriteKind::Delete,
            precondition,
        }])
        .await
        .map(|_| ())
    }

    /// Applies `ops` atomically: all preconditions hold and every op is applied, or nothing is.
    /// Every key must map to one shard. Returns the version all written keys now have.
    pub async fn apply(&self, ops: Vec<WriteOp>) -> Result<u64> {
        let slot = self.check_write(&ops)?;
        let entered = self.enter(slot).await?;
        let store = &entered.store;
        // Expiry as the cache records it: measured before SlateDB stamps the write, so the
        // cache never believes a value lives longer than the database does.
        let written_ms = now_ms();
        // The new state of each key, versioned once the write is durable.
        let touched: Vec<(Bytes, Option<Entry>)> = ops
            .iter()
            .map(|op| {
                let entry = match &op.kind {
                    WriteKind::Put { value, ttl_secs } => Some(Entry {
                        key: op.key.clone(),
                        value: value.clone(),
                        version: 0,
                        expires_at_ms: ttl_secs
                            .map(|t| written_ms.saturating_add((t as i64).saturating_mul(1000))),
                        written_at_ms: written_ms,
                    }),
                    WriteKind::Delete => None,
                };
                (op.key.clone(), entry)
            })
            .collect();
        let mut stripes: Vec<usize> = ops.iter().map(|op| ShardSlot::stripe(&op.key)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // The stripe locks are held until SlateDB has the write (ordered in the WAL); durability
        // is awaited outside them so concurrent writers share WAL flushes.
        let (pending, mark) = {
            let mut guards = Vec::with_capacity(stripes.len());
            for &s in &stripes {
                guards.push(slot.stripes[s].lock().await);
            }
            for op in &ops {
                self.check_precondition(store, op).await?;
            }
            let mutations = ops
                .into_iter()
                .map(|op| match op.kind {
                    WriteKind::Put { value, ttl_secs } => Mutation::Put {
                        key: op.key,
                        value,
                        ttl_ms: ttl_secs.map(|s| s.saturating_mul(1000)),
                    },
                    WriteKind::Delete => Mutation::Delete { key: op.key },
                })
                .collect();
            // CACHE RULE 4: marked before SlateDB has the write, so before anything can reveal
            // it. Dropped at once if the write is refused (nothing was submitted).
            let mark = PendingMark::new(slot, &stripes);
            let written = store.write(mutations).await;
            (self.observe(written)?, mark)
        };
        // The rest runs in a task of its own so that it finishes, and the cache learns the
        // outcome, even if this request is dropped (client gone, deadline passed): the write
        // may still become durable, and a mark never cleared would only cost cache hits, but
        // an outcome never recorded would leave the cache behind the database.
        let finish = tokio::spawn(finish_write(
            pending,
            mark,
            Arc::clone(store),
            touched,
            self.cancel.clone(),
            self.record_delay,
        ));
        let version = finish
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("write task failed: {e}"))));
        self.observe(version)
    }

    /// Validates a write's ops and returns the one shard they all map to.
    fn check_write(&self, ops: &[WriteOp]) -> Result<&Arc<ShardSlot>> {
        let limits = &self.config.limits;
        if ops.is_empty() {
            return Err(Error::invalid(
                "invalid_batch",
                "a batch needs at least one operation",
            ));
        }
        if ops.len() > limits.max_batch_ops {
            return Err(Error::invalid(
                "batch_too_large",
                format!(
                    "the batch has {} operations; the limit is {}",
                    ops.len(),
                    limits.max_batch_ops
                ),
            ));
        }
        let mut shards: Vec<ShardId> = Vec::with_capacity(ops.len());
        let mut keys: Vec<&[u8]> = Vec::with_capacity(ops.len());
        for op in ops {
            self.validate_key(&op.key)?;
            if let WriteKind::Put { value, ttl_secs } = &op.kind {
                if value.len() > limits.max_value_bytes {
                    return Err(Error::ValueTooLarge {
                        size: value.len(),
                        limit: limits.max_value_bytes,
                    });
                }
                if let Some(ttl) = ttl_secs {
                    if *ttl == 0 || *ttl > limits.max_ttl_secs {
                        return Err(Error::invalid(
                            "invalid_ttl",
                            format!("ttl must be 1..={} seconds, got {ttl}", limits.max_ttl_secs),
                        ));
                    }
                }
            }
            shards.push(self.shard_of(&op.key));
            keys.push(&op.key);
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                "duplicate_key",
                "a batch may name each key at most once",
            ));
        }
        shards.sort_unstable();
        shards.dedup();
        if shards.len() > 1 {
            return Err(Error::CrossShard {
                shards: shards.len(),
            });
        }
        Ok(&self.shards[shards[0].0 as usize])
    }

    async fn check_precondition(&self, store: &Arc<ShardStore>, op: &WriteOp) -> Result<()> {
        if op.precondition == Precondition::None {
            return Ok(());
        }
        let latest = store.get(&op.key, Durability::Latest).await;
        let current = self.observe(latest)?.map(|e| e.version);
        let holds = match op.precondition {
            Precondition::None => true,
            Precondition::IfMatch(v) => current == Some(v),
            Precondition::IfAbsent => current.is_none(),
            Precondition::IfExists => current.is_some(),
        };
        if holds {
            return Ok(());
        }
        // LINEARIZABILITY: the failure was decided on the newest value, which may still be
        // awaiting its WAL flush and so be invisible to reads. Answering 412 now would let a
        // later read see the older value. Make it durable first (a failed flush turns the
        // answer into 503: the write we saw may never happen).
        let durable = store.get(&op.key, Durability::Durable).await;
        if self.observe(durable)?.map(|e| e.version) != current {
            self.observe(store.flush().await)?;
        }
        Err(Error::PreconditionFailed { current })
    }

    /// The page size of a scan asked for `requested` items (0: the configured default).
    pub fn scan_limit(&self, requested: usize) -> Result<usize> {
        let limits = &self.config.limits;
        match requested {
            0 => Ok(limits.default_scan_limit),
            n if n > limits.max_scan_limit => Err(Error::invalid(
                "invalid_limit",
                format!("limit must be 1..={}, got {n}", limits.max_scan_limit),
            )),
            n => Ok(n),
        }
    }

    /// Returns one page of the durable live entries of `shards` matching `req`, merged in key
    /// order. Strong: each shard must be served here (the gateway merges such pages across
    /// owners). Eventual: shards served here are read here, the others from followers, each
    /// once it has reached the version at the same index of `floors` (if any; see
    /// [`Node::get_eventual`]).
    pub async fn scan_shards(
        &self,
        req: ScanRequest,
        shards: &[ShardId],
        consistency: Consistency,
        floors: &[u64],
    ) -> Result<ScanPage> {
        let limits = &self.config.limits;
        let limit = self.scan_limit(req.limit)?;
        let Some(range) = scan_range(&req) else {
            return Ok(ScanPage {
                items: Vec::new(),
                more: false,
            });
        };
        // Open one iterator per shard, then merge them with a min-heap keyed by each shard's
        // next key. Every shard must be available: a page with a shard missing would be wrong.
        let slots: Vec<&ShardSlot> = shards
            .iter()
            .map(|s| {
                self.shards
                    .get(s.0 as usize)
                    .map(|slot| slot.as_ref())
                    .ok_or_else(|| Error::invalid("invalid_query", format!("no shard {s}")))
            })
            .collect::<Result<_>>()?;
        let opened = futures::future::try_join_all(slots.iter().enumerate().map(|(i, slot)| {
            let floor = floors.get(i).copied().unwrap_or(0);
            self.open_scan(slot, range.clone(), consistency, floor)
        }))
        .await?;
        let (mut scans, _guards): (Vec<ShardScan>, Vec<ScanGuard>) = opened.into_iter().unzip();
        let mut heap = BinaryHeap::new();
        for (i, scan) in scans.iter_mut().enumerate() {
            if let Some(entry) = self.scan_next(i, scan).await? {
                heap.push(Head(entry, i));
            }
        }
        let mut items = Vec::new();
        let mut bytes = 0usize;
        while items.len() < limit && (items.is_empty() || bytes < limits.max_scan_bytes) {
            let Some(Head(entry, i)) = heap.pop() else {
                break;
            };
            if let Some(next) = self.scan_next(i, &mut scans[i]).await? {
                heap.push(Head(next, i));
            }
            bytes += entry.key.len() + entry.value.len();
            items.push(entry);
        }
        if consistency == Consistency::Strong {
            for slot in &slots {
                self.confirm_read(slot)?;
            }
        }
        for e in &items {
            self.note_served(self.shard_of(&e.key), e.version);
        }
        Ok(ScanPage {
            items,
            more: !heap.is_empty(),
        })
    }

    async fn open_scan(
        &self,
        slot: &ShardSlot,
        range: (Bound<Bytes>, Bound<Bytes>),
        consistency: Consistency,
        floor: u64,
    ) -> Result<(ShardScan, ScanGuard)> {
        let entered = match consistency {
            Consistency::Strong => Some(self.enter(slot).await?),
            Consistency::Eventual if self.locate(slot.id) == Located::Local => {
                self.enter(slot).await.ok()
            }
            Consistency::Eventual => None,
        };
        match entered {
            Some(entered) => {
                let scan = self.observe(entered.store.scan(range).await)?;
                Ok((scan, ScanGuard::Owner(entered)))
            }
            None => {
                let follower = self.followers.get(slot.id, floor).await?;
                let scan = self.observe(follower.reader.scan(range).await)?;
                Ok((scan, ScanGuard::Follower(follower)))
            }
        }
    }

    async fn scan_next(&self, i: usize, scan: &mut ShardScan) -> Result<Option<Entry>> {
        let next = scan.next().await;
        if let Err(e) = &next {
            self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard = i, error = %e, "scan failed");
        }
        next
    }

    /// Passes `result` through, counting storage errors.
    fn observe<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(Error::ShardUnavailable { .. } | Error::Fenced { .. } | Error::Internal(_)) =
            &result
        {
            self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Spawns the supervisor of `store`: when the database stops on its own, the slot moves to
    /// `Fenced` (never served again) or `Reopening` (and the reopen task starts).
    fn supervise(self: &Arc<Self>, slot: Arc<ShardSlot>, store: Arc<ShardStore>) {
        let node = Arc::clone(self);
        self.tasks.spawn(async move {
            let why = tokio::select! {
                _ = node.cancel.cancelled() => return,
                why = store.wait_closed() => why,
            };
            let Some(epoch) = slot.open_epoch() else {
                return;
            };
            match why {
                Closed::Fenced if node.etcd.is_some() => {
                    // Someone else opened the database: the shard is theirs now.
                    if slot.replace_open(&store, SlotState::NotOwned) {
                        tracing::warn!(shard = %slot.id, epoch, "shard fenced by a newer owner; dropped");
                        node.release_key(slot.id, epoch).await;
                    }
                }
                Closed::Fenced => {
                    if slot.replace_open(&store, SlotState::Fenced) {
                        tracing::error!(shard = %slot.id, "shard fenced by another writer; no longer served");
                    }
                }
                Closed::Other => {
                    if slot.replace_open(&store, SlotState::Reopening) {
                        tracing::warn!(shard = %slot.id, "shard database stopped; reopening");
                        drop(store);
                        node.reopen(slot, epoch).await;
                    }
                }
            }
        });
    }

    /// Reopens a `Reopening` slot's database, retrying with backoff until it opens or the node
    /// shuts down.
    async fn reopen(self: &Arc<Self>, slot: Arc<ShardSlot>, epoch: i64) {
        let mut delay = Duration::from_millis(100);
        loop {
            // In cluster mode, reopen only while the ownership still holds: opening fences,
            // and must never fence a newer owner.
            if self.etcd.is_some() && !self.still_owner(slot.id, epoch) {
                slot.set(SlotState::NotOwned);
                tracing::warn!(shard = %slot.id, epoch, "ownership lost while reopening");
                return;
            }
            let opened = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = self.open_store(slot.id) => r,
            };
            match opened {
                Ok(store) => {
                    let store = Arc::new(store);
                    self.stats.shard_reopens.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(shard = %slot.id, "shard reopened");
                    slot.set(SlotState::Open {
                        store: Arc::clone(&store),
                        epoch,
                    });
                    self.supervise(slot, store);
                    return;
                }
                Err(e) => {
                    tracing::warn!(shard = %slot.id, error = %e, "reopen failed; retrying")
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Stops background work and closes every open shard, flushing its memtable so the next
    /// open replays no WAL. Call after the HTTP server has drained.
    pub async fn close(&self) -> Result<()> {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.followers.close_all().await;
        self.revoke_lease().await;
        let results =
            futures::future::join_all(self.shards.iter().map(|slot| close_slot(slot))).await;
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "{} shard(s) failed to close: {}",
                failed.len(),
                failed.join("; ")
            )))
        }
    }
}

/// Stripes of a slot marked as having a write in flight (cache rule 4), until dropped.
struct PendingMark {
    slot: Arc<ShardSlot>,
    stripes: Vec<usize>,
}

impl PendingMark {
    fn new(slot: &Arc<ShardSlot>, stripes: &[usize]) -> Self {
        for &s in stripes {
            slot.stripe_pending[s].fetch_add(1, Ordering::SeqCst);
        }
        PendingMark {
            slot: Arc::clone(slot),
            stripes: stripes.to_vec(),
        }
    }

    /// Keeps the mark until the slot no longer serves `store` (its cache scope is then dead).
    async fn hold_while_serving(self, store: Arc<ShardStore>, cancel: CancellationToken) {
        let mut state = self.slot.state.subscribe();
        let replaced = state.wait_for(
            |st| !matches!(st, SlotState::Open { store: open, .. } if Arc::ptr_eq(open, &store)),
        );
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = replaced => {}
        }
    }
}

impl Drop for PendingMark {
    fn drop(&mut self) {
        for &s in &self.stripes {
            self.slot.stripe_pending[s].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Waits for a submitted write to become durable, then records its keys' new state in the hot
/// cache and clears its mark (cache rules 1, 3 and 4), and returns its version.
async fn finish_write(
    pending: PendingWrite,
    mark: PendingMark,
    store: Arc<ShardStore>,
    touched: Vec<(Bytes, Option<Entry>)>,
    cancel: CancellationToken,
    record_delay: Option<Duration>,
) -> Result<u64> {
    let version = match pending.durable().await {
        Ok(version) => version,
        Err(e) => {
            // The outcome is unknown and the database is stopping (fenced, or a WAL flush
            // failed): the write may still surface in it or in a follower. Keep the stripes
            // off the cache for as long as this store is served.
            tokio::spawn(mark.hold_while_serving(store, cancel));
            return Err(e);
        }
    };
    if let Some(delay) = record_delay {
        tokio::time::sleep(delay).await;
    }
    let slot = &mark.slot;
    let scope = store.incarnation();
    for (key, _) in &touched {
        slot.stripe_writes[ShardSlot::stripe(key)].fetch_add(1, Ordering::AcqRel);
    }
    for (key, entry) in touched {
        let cached = match entry {
            Some(e) => Cached::Value(Entry { version, ..e }),
            None => Cached::Absent { version },
        };
        slot.hot.record_write(scope, key, cached);
    }
    drop(mark);
    Ok(version)
}

async fn close_slot(slot: &ShardSlot) -> Result<()> {
    match slot.set(SlotState::Closed) {
        SlotState::Open { store, .. } => store.close().await,
        _ => Ok(()),
    }
}

/// A shard iterator's next entry, ordered so that `BinaryHeap` (a max-heap) pops the smallest
/// key first.
struct Head(Entry, usize);

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.key.cmp(&self.0.key)
    }
}

/// The key range of a scan request, or `None` if it is empty.
fn scan_range(req: &ScanRequest) -> Option<(Bound<Bytes>, Bound<Bytes>)> {
    let mut lower: Bound<Bytes> = Bound::Unbounded;
    let mut upper: Bound<Bytes> = Bound::Unbounded;
    let mut raise = |b: Bound<Bytes>| {
        if lower_after(&b, &lower) {
            lower = b;
        }
    };
    if let Some(s) = &req.start {
        raise(Bound::Included(s.clone()));
    }
    if let Some(p) = &req.prefix {
        raise(Bound::Included(p.clone()));
    }
    if let Some(a) = &req.after {
        raise(Bound::Excluded(a.clone()));
    }
    let mut lower_upper = |b: Bound<Bytes>| {
        let tighter = match (&b, &upper) {
            (_, Bound::Unbounded) => true,
            (Bound::Excluded(x), Bound::Excluded(y)) => x < y,
            _ => false,
        };
        if tighter {
            upper = b;
        }
    };
    if let Some(e) = &req.end {
        lower_upper(Bound::Excluded(e.clone()));
    }
    if let Some(p) = &req.prefix {
        if let Some(succ) = prefix_successor(p) {
            lower_upper(Bound::Excluded(succ));
        }
    }
    let empty = match (&lower, &upper) {
        (Bound::Included(l), Bound::Excluded(u)) => l >= u,
        (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
    };
    (!empty).then_some((lower, upper))
}

/// True if lower bound `a` starts after lower bound `b`.
fn lower_after(a: &Bound<Bytes>, b: &Bound<Bytes>) -> bool {
    match (a, b) {
        (Bound::Unbounded, _) => false,
        (_, Bound::Unbounded) => true,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y))
            if x != y =>
        {
            x > y
        }
        (Bound::Excluded(_), Bound::Included(_)) => true,
        _ => false,
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none.
fn prefix_successor(prefix: &[u8]) -> Option<Bytes> {
    let mut succ = prefix.to_vec();
    while let Some(last) = succ.pop() {
        if last < 0xff {
            succ.push(last + 1);
            return Some(Bytes::from(succ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn scan_ranges_intersect() {
        let req = ScanRequest {
            prefix: Some(b("ab")),
            start: Some(b("aa")),
            end: Some(b("abz")),
            after: Some(b("abc")),
            limit: 0,
        };
        assert_eq!(
            scan_range(&req),
            Some((Bound::Excluded(b("abc")), Bound::Excluded(b("abz"))))
        );
        let req = ScanRequest {
            prefix: Some(b("b")),
            end: Some(b("a")),
            ..Default::default()
        };
        assert_eq!(scan_range(&req), None);
        assert_eq!(
            prefix_successor(&[0x61, 0xff]),
            Some(Bytes::from_static(&[0x62]))
        );
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }
}
