//! The shards a gateway serves: the slot registry, and what opening, closing and recovering a
//! shard means for a gateway. This is the gateway's [`ShardHost`]: the session decides which
//! shards to hold, this carries it out through each slot's lifecycle (`lifecycle.rs`).
//!
//! Opening a shard recovers it from the commit log before it is served
//! ([`CommitLog::recover`]); releasing it or shutting down checkpoints it first (clean: the
//! next owner replays nothing).
//!
//! A supervisor task per open database watches its status: when the database stops on its own
//! the slot is told ([`Event::Stopped`]) and either gives the shard up (fenced) or reopens it,
//! so shards recover after an outage without waiting for a request to notice. It also
//! checkpoints the shard every `storage.memtable_flush_interval` while it is written, which
//! bounds what a crash leaves to replay, and keeps the shard's compaction hint
//! (`storage/hints.rs`) in step with its L0. When another process seals the log a store is
//! bound to, the store stops taking writes and is reopened, which recovers it into a new log.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::placement::Holding;
use crate::cluster::session::{Claim, Session, ShardHost};
use crate::config::NodeConfig;
use crate::error::Result;
use crate::node::lifecycle::{Action, Event};
use crate::node::slot::ShardSlot;
use crate::node::NodeStats;
use crate::reads::cache::HotCache;
use crate::shard::ShardId;
use crate::storage::commit::CommitLog;
use crate::storage::hints;
use crate::storage::store::{BlockCache, Closed, ShardStore};
use crate::tasks::Tasks;

/// How often a supervisor looks whether its shard is near its L0 limit, and if so reads the
/// manifest at once: the manifest poll (`storage.manifest_poll_interval`, 60 s) is slow, and
/// a shard at its limit stops checkpointing until it sees the compactor's result.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Periodic checkpoints a gateway runs at once: each is an SST, a manifest and a checkpoint
/// write; hundreds of shards checkpointing together would swamp the object store and delay
/// the log's own PUTs (seen in the scale test).
const CHECKPOINTS_AT_ONCE: usize = 4;

/// Longest pause between attempts to reopen a stopped database.
const MAX_REOPEN_BACKOFF: Duration = Duration::from_secs(2);

/// Every shard slot of a node, and how they open and close.
pub(crate) struct Shards {
    slots: Vec<Arc<ShardSlot>>,
    config: NodeConfig,
    cache: BlockCache,
    session: Arc<Session>,
    commit: Arc<CommitLog>,
    /// Bounds periodic checkpoints in flight (`CHECKPOINTS_AT_ONCE`).
    checkpoints: Arc<tokio::sync::Semaphore>,
    stats: Arc<NodeStats>,
    tasks: Tasks,
}

/// The gateway's open/close hooks for its session.
pub(crate) struct Host(pub(crate) Arc<Shards>);

impl Shards {
    pub(crate) fn new(
        config: NodeConfig,
        cache: BlockCache,
        hot: &Arc<HotCache>,
        session: Arc<Session>,
        commit: Arc<CommitLog>,
        stats: Arc<NodeStats>,
        tasks: Tasks,
    ) -> Arc<Self> {
        Arc::new(Shards {
            slots: (0..config.storage.shard_count)
                .map(|n| Arc::new(ShardSlot::new(ShardId(n), Arc::clone(hot))))
                .collect(),
            config,
            cache,
            session,
            commit,
            checkpoints: Arc::new(tokio::sync::Semaphore::new(CHECKPOINTS_AT_ONCE)),
            stats,
            tasks,
        })
    }

    /// The slot of `shard` (which must be below the shard count).
    pub(crate) fn slot(&self, shard: ShardId) -> &Arc<ShardSlot> {
        &self.slots[shard.0 as usize]
    }

    /// The slot of `shard`, if the shard exists.
    pub(crate) fn get(&self, shard: ShardId) -> Option<&Arc<ShardSlot>> {
        self.slots.get(shard.0 as usize)
    }

    /// Every slot.
    pub(crate) fn all(&self) -> &[Arc<ShardSlot>] {
        &self.slots
    }

    /// Opens `shard`'s database with this node's settings, fencing any previous writer, and
    /// recovers it from the log for the claim `epoch`: ready to serve.
    async fn open_store(&self, shard: ShardId, epoch: i64) -> Result<Arc<ShardStore>> {
        let store = Arc::new(
            ShardStore::open(
                shard,
                self.commit.store(),
                &self.config.storage,
                &self.config.object_store,
                &self.cache,
                self.config.embedded_compaction(),
            )
            .await?,
        );
        if let Err(e) = self.commit.recover(&store, epoch).await {
            let _ = store.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// Checkpoints `store` for a planned hand-over (the next owner replays nothing), then
    /// closes it. If the checkpoint fails, the next owner seals this process's log and
    /// replays it: nothing is lost, but every shard here then reopens into a new log.
    async fn checkpoint_and_close(&self, store: &Arc<ShardStore>, epoch: i64) -> Result<()> {
        let checkpointed = self.commit.checkpoint(store, epoch, true).await;
        if let Err(e) = &checkpointed {
            tracing::warn!(shard = %store.shard(), error = %e, "clean checkpoint failed; the next owner will replay the log");
        }
        let closed = store.close().await;
        checkpointed.and(closed)
    }

    /// Applies `event` to `slot` and carries out what follows.
    async fn apply(self: &Arc<Self>, slot: &Arc<ShardSlot>, event: Event<ShardStore>) {
        let actions = slot.apply(event, self.session.places());
        for action in actions {
            match action {
                // Dropped by `ShardSlot::apply`.
                Action::Forget(_) => {}
                Action::Supervise(store) => self.supervise(Arc::clone(slot), store),
                Action::Drain(store, epoch) => {
                    // ORDERING: in-flight requests finish, then the store checkpoints and
                    // closes; the session deletes the claim only after this returns.
                    let _drained = slot.drained().await;
                    if let Err(e) = self.checkpoint_and_close(&store, epoch).await {
                        tracing::warn!(shard = %slot.id, error = %e, "closing released shard failed");
                    }
                    slot.apply(Event::Released, self.session.places());
                }
                // A newer owner may have fenced it: nothing in it is unacknowledged.
                Action::Close(store) => self.tasks.spawn("close store", async move {
                    let _ = store.close().await;
                }),
                Action::CloseAndWait(store, epoch) => {
                    if let Err(e) = self.checkpoint_and_close(&store, epoch).await {
                        tracing::warn!(shard = %slot.id, error = %e, "closing shard failed");
                    }
                }
                Action::ReleaseClaim(epoch) => {
                    self.session
                        .release(Claim {
                            shard: slot.id,
                            epoch,
                        })
                        .await
                }
                Action::Reopen(epoch) => self.spawn_reopen(Arc::clone(slot), epoch),
            }
        }
    }

    /// Watches `store` until it stops on its own, and tells its slot; checkpoints it every
    /// `memtable_flush_interval` in which it was written.
    fn supervise(self: &Arc<Self>, slot: Arc<ShardSlot>, store: Arc<ShardStore>) {
        let shards = Arc::clone(self);
        let every = self.config.storage.memtable_flush_interval;
        let near_stall = self.config.storage.l0_max_ssts.saturating_sub(1);
        let hint_l0 = self.config.storage.compaction_hint_l0;
        self.tasks.spawn("supervise shard", async move {
            let mut checkpointed = store.applied_version();
            // The first checkpoint comes at a point of the interval that depends on the shard,
            // so the shards a gateway opened together do not all checkpoint together.
            let spread = f64::from(slot.id.0.wrapping_mul(2_654_435_761) % 1000) / 1000.0;
            let mut due = tokio::time::Instant::now() + every.mul_f64(0.5 + spread / 2.0);
            // Whether the compaction hint is set (None: unknown, e.g. a previous owner's).
            let mut hinted: Option<bool> = None;
            let stopped = async {
                loop {
                    let want = store.l0_len() >= hint_l0;
                    if hinted != Some(want) && slot.serves(&store) {
                        let objects = shards.commit.store();
                        let done = if want {
                            hints::set(objects, slot.id, store.l0_len()).await
                        } else {
                            hints::clear(objects, slot.id).await
                        };
                        if done.is_ok() {
                            hinted = Some(want);
                        }
                    }
                    tokio::select! {
                        closed = store.wait_closed() => return closed,
                        // Its log was sealed: it takes no more writes; reopen it into a new one.
                        _ = sealed(&store) => return Closed::Other,
                        _ = tokio::time::sleep(STALL_CHECK) => {}
                    }
                    if store.l0_len() >= near_stall {
                        let _ = store.refresh_manifest().await;
                    }
                    if tokio::time::Instant::now() < due {
                        continue;
                    }
                    due = tokio::time::Instant::now() + every;
                    let Some(epoch) = slot.open_epoch().filter(|_| slot.serves(&store)) else {
                        continue;
                    };
                    if store.applied_version() == checkpointed {
                        continue;
                    }
                    let _permit = shards.checkpoints.acquire().await;
                    match shards.commit.checkpoint(&store, epoch, false).await {
                        Ok(()) => checkpointed = store.applied_version(),
                        Err(e) => {
                            tracing::warn!(shard = %slot.id, error = %e, "checkpoint failed")
                        }
                    }
                }
            };
            let fenced = match stopped.await {
                Closed::Fenced => true,
                Closed::Other => false,
            };
            if slot.serves(&store) {
                if fenced {
                    tracing::warn!(shard = %slot.id, "shard fenced by another writer; no longer served");
                } else {
                    tracing::warn!(shard = %slot.id, "shard database stopped; reopening");
                }
            }
            shards.apply(&slot, Event::Stopped { store, fenced }).await;
        });
    }

    /// Starts reopening `slot`'s database for the claim `epoch` in the background.
    fn spawn_reopen(self: &Arc<Self>, slot: Arc<ShardSlot>, epoch: i64) {
        let shards = Arc::clone(self);
        self.tasks.spawn(
            "reopen shard",
            async move { shards.reopen(slot, epoch).await },
        );
    }

    /// Reopens a `Reopening` slot's database, retrying with backoff while the claim holds:
    /// opening fences, and must never fence a newer owner.
    async fn reopen(self: Arc<Self>, slot: Arc<ShardSlot>, epoch: i64) {
        let claim = Claim {
            shard: slot.id,
            epoch,
        };
        let mut delay = Duration::from_millis(100);
        while slot.is_reopening(epoch) {
            if !self.session.holds(&claim) {
                tracing::warn!(shard = %slot.id, epoch, "ownership lost while reopening");
                self.apply(&slot, Event::ReopenAbandoned { epoch }).await;
                return;
            }
            match self.open_store(slot.id, epoch).await {
                Ok(store) => {
                    self.stats.shard_reopens.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(shard = %slot.id, "shard reopened");
                    self.apply(&slot, Event::Reopened { store, epoch }).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(shard = %slot.id, error = %e, "reopen failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_REOPEN_BACKOFF);
        }
    }

    /// Counts a shard acquired, released or dropped.
    fn count_move(&self) {
        self.stats.ownership_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Closes every slot for good, waiting for open stores to flush. Errors are reported, not
    /// returned early: every slot is closed.
    pub(crate) async fn close_all(self: &Arc<Self>) -> Vec<String> {
        let closing = self.slots.iter().map(|slot| async move {
            let actions = slot.apply(Event::Shutdown, self.session.places());
            let mut failed = None;
            for action in actions {
                if let Action::CloseAndWait(store, epoch) = action {
                    failed = self
                        .checkpoint_and_close(&store, epoch)
                        .await
                        .err()
                        .map(|e| e.to_string());
                }
            }
            failed
        });
        futures::future::join_all(closing)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Resolves once the log `store` is bound to is sealed.
async fn sealed(store: &ShardStore) {
    match store.log() {
        Some(log) => log.sealed().await,
        None => std::future::pending().await,
    }
}

#[async_trait::async_trait]
impl ShardHost for Host {
    fn holdings(&self) -> Vec<(ShardId, Holding)> {
        self.0.slots.iter().map(|s| (s.id, s.holding())).collect()
    }

    async fn open(&self, claim: Claim) -> Result<()> {
        let started = std::time::Instant::now();
        let store = self.0.open_store(claim.shard, claim.epoch).await?;
        let slot = self.0.slot(claim.shard);
        self.0
            .apply(
                slot,
                Event::Opened {
                    store,
                    epoch: claim.epoch,
                },
            )
            .await;
        self.0.count_move();
        tracing::info!(shard = %claim.shard, epoch = claim.epoch, open_ms = started.elapsed().as_millis() as u64, "acquired shard");
        Ok(())
    }

    async fn close(&self, claim: Claim) {
        let started = std::time::Instant::now();
        let slot = self.0.slot(claim.shard);
        if slot.open_epoch() != Some(claim.epoch) {
            return;
        }
        self.0
            .apply(slot, Event::Release { epoch: claim.epoch })
            .await;
        self.0.count_move();
        tracing::info!(shard = %claim.shard, epoch = claim.epoch, drain_ms = started.elapsed().as_millis() as u64, "released shard");
    }

    async fn drop_claim(&self, claim: Claim) {
        let slot = self.0.slot(claim.shard);
        if slot.open_epoch() == Some(claim.epoch) {
            self.0.count_move();
        }
        self.0.apply(slot, Event::Lost).await;
    }
}
