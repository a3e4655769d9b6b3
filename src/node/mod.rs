//! `Node`: the shards this process serves, and the key-value operations over them.
//!
//! A node is composed of:
//! - a [`Session`] (`cluster/session.rs`) that decides which shards it holds: every shard
//!   forever in the embedded mode, its share through etcd leases in cluster mode;
//! - its shard slots (`shards.rs`, `slot.rs`), whose lifecycle is the pure state machine in
//!   `lifecycle.rs` (`NotOwned`, `Open`, `Draining`, `Reopening`, `Fenced`, `Closed`);
//! - the request services over them: point reads (`read.rs`), writes (`write.rs`) and scans
//!   (`scan.rs`), with the hot-key cache and the followers (`reads/`).
//!
//! Invariants:
//! - a write is acknowledged (returns `Ok`) only after it is durable in the object store, and
//!   after the hot-key cache has recorded it;
//! - a read returns only durable, unexpired data, and only if the lease was valid after the
//!   read (so no other gateway can have owned the shard when it was read);
//! - a request holds its slot's gate from start to finish; a release closes the database only
//!   after every such request has finished;
//! - a `Fenced` slot never goes back to `Open` without a new claim.

mod lifecycle;
mod read;
mod scan;
mod shards;
mod slot;
mod write;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::cluster::lease::KeepAliveStats;
use crate::cluster::placement::{ClusterView, Member, Owner, UnownedTime};
use crate::cluster::session::{Role, Session};
use crate::config::NodeConfig;
use crate::error::{BadInput, Error, Result};
use crate::reads::cache::HotCache;
use crate::reads::follower::{Followers, OwnerEpochs};
use crate::shard::{shard_for_key, ShardId};
use crate::stats::Samples;
use crate::storage::commit::CommitLog;
use crate::storage::log::writer::{LogStats, WriterConfig};
use crate::storage::meta;
use crate::storage::objstore::{self, ClusterStore};
use crate::storage::store::{BlockCache, Entry};
use crate::tasks::Tasks;
use shards::{Host, Shards};
use slot::{Entered, ShardSlot};

pub use slot::REOPEN_WAIT;

/// How often the placement loop looks again without a view change (to retry what failed).
const PLACEMENT_TICK: Duration = Duration::from_secs(1);

/// How long a leaving gateway keeps serving after handing its shards over (see `leave`).
const LEAVE_LINGER: Duration = Duration::from_millis(500);

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
    /// Served by any gateway without needing the owner (see `reads/follower/mod.rs`; the gateway may
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
    /// Writes that waited for room in their shard before entering the log
    /// ([`crate::storage::store::ShardStore::admit`]).
    pub write_admission_waits: AtomicU64,
    /// Shards acquired, released or dropped by this node.
    pub ownership_changes: AtomicU64,
    /// Lease keep-alive round trips (cluster mode).
    pub keepalive: Arc<KeepAliveStats>,
    /// Per shard: how long it has had no owner in this node's view (cluster mode).
    pub unowned: UnownedTime,
    /// Reads by what served them: strong, cache, eventual.
    pub reads: [AtomicU64; 3],
    /// Time from a write's acceptance to a follower here being able to serve it.
    pub eventual_lag: Samples,
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

/// The shards this process serves.
pub struct Node {
    config: NodeConfig,
    store: ClusterStore,
    session: Arc<Session>,
    shards: Arc<Shards>,
    /// The log every write of this process goes through.
    commit: Arc<CommitLog>,
    /// Hot keys of the shards served here, and recent follower answers.
    hot: Arc<HotCache>,
    /// Followers of shards served elsewhere, for eventual reads.
    followers: Arc<Followers>,
    stats: Arc<NodeStats>,
    tasks: Tasks,
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
        let commit = CommitLog::start(
            store.clone(),
            &me.id,
            WriterConfig {
                min_interval: config.storage.flush_interval,
                early_groups: config.storage.flush_early_writes,
                ..WriterConfig::default()
            },
        );
        let session = if config.cluster.is_clustered() {
            Session::join(&config.cluster, me, Role::Gateway).await?
        } else {
            Session::embedded(me, config.storage.shard_count, &config.cluster)
        };
        let cache = BlockCache::new(config.storage.block_cache_bytes);
        let hot = Arc::new(HotCache::new(config.reads.hot_key_cache_bytes));
        let stats = Arc::new(NodeStats {
            keepalive: Arc::clone(session.keepalive()),
            ..NodeStats::default()
        });
        let tasks = Tasks::new();
        let shards = Shards::new(
            config.clone(),
            cache.clone(),
            &hot,
            Arc::clone(&session),
            Arc::clone(&commit),
            Arc::clone(&stats),
            tasks.clone(),
        );
        let view = Arc::clone(&session);
        let owner_epochs: OwnerEpochs =
            Arc::new(move |s: ShardId| view.view().owners.get(&s.0).map(|o| o.epoch));
        let node = Arc::new(Node {
            followers: Arc::new(Followers::new(
                &config,
                store.clone(),
                cache,
                Arc::clone(&hot),
                owner_epochs,
                tasks.child(),
            )),
            hot,
            store,
            session,
            shards,
            commit,
            stats,
            tasks,
            record_delay: std::env::var("TESSERA_FAULT_RECORD_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            config,
        });
        let started = std::time::Instant::now();
        let host = Arc::new(Host(Arc::clone(&node.shards)));
        let open_concurrency = node.config.storage.open_concurrency;
        node.session
            .start(host, open_concurrency, PLACEMENT_TICK)
            .await?;
        node.reap_followers();
        node.track_unowned();
        tracing::info!(
            shards = node.owned_shards().len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "node started"
        );
        Ok(node)
    }

    /// Closes idle followers in the background until shutdown.
    fn reap_followers(&self) {
        let followers = Arc::clone(&self.followers);
        let period = (self.config.reads.follower_idle_timeout / 4).max(Duration::from_millis(100));
        self.tasks.spawn("reap followers", async move {
            loop {
                tokio::time::sleep(period).await;
                followers.close_idle().await;
            }
        });
    }

    /// Keeps the per-shard time-without-owner accounting up to date with the view.
    fn track_unowned(&self) {
        let mut changes = self.session.subscribe();
        let shards = self.config.storage.shard_count;
        let stats = Arc::clone(&self.stats);
        self.tasks.spawn("track unowned shards", async move {
            loop {
                let now = std::time::Instant::now();
                stats
                    .unowned
                    .observe(&changes.borrow_and_update(), shards, now);
                if changes.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Where requests for `shard` must go now.
    pub fn locate(&self, shard: ShardId) -> Located {
        if self.shards.slot(shard).is_served() && self.session.lease_valid() {
            return Located::Local;
        }
        match self.session.view().owners.get(&shard.0) {
            Some(owner) if owner.id != self.session.me().id => Located::Remote(owner.clone()),
            _ => Located::Unowned,
        }
    }

    /// The shard owner at `url` gave no answer: expel it if its heartbeat has stopped
    /// ([`Session::suspect`]).
    pub fn suspect(&self, url: &str) {
        let owner = self
            .session
            .view()
            .owners
            .values()
            .find(|o| o.url == url)
            .map(|o| o.id.clone());
        if let Some(id) = owner {
            self.session.suspect(&id);
        }
    }

    /// The cluster as this node sees it.
    pub fn view(&self) -> ClusterView {
        self.session.view().clone()
    }

    /// This node as a cluster member.
    pub fn me(&self) -> &Member {
        self.session.me()
    }

    /// Shards this node serves now.
    pub fn owned_shards(&self) -> Vec<ShardId> {
        self.shards
            .all()
            .iter()
            .filter(|s| s.open_epoch().is_some())
            .map(|s| s.id)
            .collect()
    }

    /// Enters `slot` for one request: the open store and a share of its gate, provided the
    /// lease is valid.
    async fn enter(&self, slot: &ShardSlot) -> Result<Entered> {
        let entered = slot.enter().await?;
        if !self.session.lease_valid() {
            return Err(Error::NotOwner { shard: slot.id });
        }
        Ok(entered)
    }

    /// Confirms, after a read, that the lease still held: nobody else can have owned the
    /// shard when the read happened (see `lease.rs`).
    fn confirm_read(&self, slot: &ShardSlot) -> Result<()> {
        if self.session.lease_valid() && slot.open_epoch().is_some() {
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

    /// What this process's commit logs have written.
    pub fn log_stats(&self) -> &LogStats {
        self.commit.stats()
    }

    /// Returns the shard of `key`.
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.config.storage.shard_count)
    }

    /// Checks a key against the configured limits.
    pub fn validate_key(&self, key: &[u8]) -> Result<()> {
        let max = self.config.limits.max_key_bytes;
        if key.is_empty() {
            return Err(Error::invalid(
                BadInput::InvalidKey,
                "the key must not be empty",
            ));
        }
        if key.len() > max {
            return Err(Error::invalid(
                BadInput::KeyTooLong,
                format!("the key is {} bytes; the limit is {max} bytes", key.len()),
            ));
        }
        Ok(())
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

    /// Planned departure (SIGTERM): deregister so the others take over, then hand every shard
    /// over gracefully. Requests keep being served (forwarded) meanwhile. A no-op in embedded
    /// mode.
    pub async fn leave(&self) {
        let count = self.session.leave(&Host(Arc::clone(&self.shards))).await;
        if count > 0 {
            // Gateways whose view still names us as an owner keep forwarding here for as long
            // as the release takes to reach them. Serving on meanwhile answers them `421` (they
            // look again); closing now would break their pooled connections mid-request, and a
            // write whose connection broke has an unknown outcome (`503`).
            tokio::time::sleep(LEAVE_LINGER).await;
        }
    }

    /// Stops background work and closes every open shard, checkpointing it so the next
    /// owner replays nothing. Call after the HTTP server has drained.
    pub async fn close(&self) -> Result<()> {
        // The session first: no placement pass may open a shard while the rest shuts down.
        self.session.close().await;
        self.tasks.shutdown().await;
        self.followers.close_all().await;
        let failed = self.shards.close_all().await;
        self.commit.shutdown().await;
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
