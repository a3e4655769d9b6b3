//! The followers of one gateway, one slot per shard: opened on a shard's first eventual
//! read, closed when idle.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, ReadsConfig};
use crate::error::{Error, Result};
use crate::reads::cache::HotCache;
use crate::reads::tail::LogTails;
use crate::shard::ShardId;
use crate::storage::log::checkpoint;
use crate::storage::objstore::ClusterStore;
use crate::storage::store::{BlockCache, Entry};
use crate::tasks::Tasks;

use super::upkeep::{Env, Upkeep};
use super::view::{State, View};
use super::{Follower, Watermarks};

/// Most follower reads finishing in tasks of their own at once (see [`Followers::read`]).
const MAX_READS_IN_TASKS: usize = 1024;

/// The claim epoch of each shard's owner in this gateway's view of the cluster (`None`:
/// unowned, or no view).
pub type OwnerEpochs = Arc<dyn Fn(ShardId) -> Option<i64> + Send + Sync>;

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
        f.as_ref().filter(|f| !f.is_closed()).cloned()
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
    env: Arc<Env>,
    reads: ReadsConfig,
    /// How long a read waits for a follower behind the watermark: the staleness bound.
    bound: Duration,
    hot: Arc<HotCache>,
    open: AtomicU64,
    /// Permits for reads finishing in tasks of their own: bounds the reads that outlive their
    /// requests (an object store that hangs would otherwise collect one task per read).
    read_permits: Arc<Semaphore>,
    /// Reads that finished after their request had stopped waiting for them.
    finished_late: Arc<AtomicU64>,
    /// Opens and late reads, which finish even if their request is dropped, each
    /// follower's upkeep and the log tails.
    tasks: Tasks,
    /// Set by [`Followers::close_all`]: no more opens.
    closed: AtomicBool,
    pub(crate) watermarks: Watermarks,
}

impl Followers {
    /// Followers for a node configured by `config`, reading `store` through `blocks`, caching
    /// answers in `hot`, told of owner changes by `owner_epochs`, with their background work
    /// on `tasks`.
    pub(crate) fn new(
        config: &NodeConfig,
        store: ClusterStore,
        blocks: BlockCache,
        hot: Arc<HotCache>,
        owner_epochs: OwnerEpochs,
        tasks: Tasks,
    ) -> Self {
        let shards = config.storage.shard_count;
        let poll_interval = config.reads.follower_poll_interval;
        Followers {
            slots: (0..shards).map(|_| Slot::default()).collect(),
            env: Arc::new(Env {
                tails: LogTails::new(store.clone(), poll_interval, tasks.clone()),
                store,
                tasks: tasks.clone(),
                object_store: config.object_store.clone(),
                blocks,
                poll_interval,
                owner_epochs,
            }),
            reads: config.reads.clone(),
            bound: config.staleness_bound(),
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

    /// Owner logs being tailed now.
    pub fn logs_tailed(&self) -> usize {
        self.env.tails.count()
    }

    /// GETs of log objects issued by this gateway's tails so far.
    pub fn log_gets(&self) -> u64 {
        self.env.tails.gets()
    }

    /// Follower reads that finished after their request had stopped waiting for them (the
    /// owner answered a hedged read first).
    pub fn finished_late(&self) -> u64 {
        self.finished_late.load(Ordering::Relaxed)
    }

    /// Whether the follower of `shard` is open, has read its log, and has caught up with
    /// everything this gateway has returned for the shard, i.e. [`Followers::get`] would
    /// answer without waiting.
    pub(crate) fn ready(&self, shard: ShardId) -> bool {
        self.slots[shard.0 as usize].current().is_some_and(|f| {
            let p = *f.view.progress.borrow();
            p.caught_up && p.position >= self.watermarks.get(shard)
        })
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
        if follower.position() < floor {
            let caught_up = {
                let mut progress = follower.view.progress.subscribe();
                let waited = tokio::time::timeout(
                    self.bound,
                    progress.wait_for(|p| p.position >= floor || p.closed),
                )
                .await;
                matches!(waited, Ok(Ok(p)) if !p.closed)
            };
            if !caught_up {
                return Err(Error::ShardUnavailable {
                    shard,
                    reason: "the follower has not caught up with what was already served".into(),
                });
            }
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
            read: Some(Box::pin(async move { follower.get(&key).await })),
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
        let f = self.open(shard).await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        *slot.follower.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&f));
        Ok(f)
    }

    /// Opens a follower of `shard` and waits until its tail has read the log to the end.
    async fn open(&self, shard: ShardId) -> Result<Arc<Follower>> {
        // ORDERING: the published checkpoint before the reader opens. The reader's first view
        // is then at least as new as the database was when that checkpoint was published,
        // which held every write up to its `max_version`: the tail starts anchored.
        let published = checkpoint::published(&self.env.store, shard).await?;
        let reader = self.env.open_reader(shard).await?;
        // The marker in the reader's view is not read: it may be newer than the published
        // one (a crash between flush and publish), which only means re-reading a few objects,
        // while reading it would fetch blocks of the newest SST before any read needs them.
        let installed = reader.installed_seq();
        let base = published;
        let state = State::new(base.clone(), installed);
        let (progress, _) = watch::channel(state.progress());
        let view = Arc::new(View {
            shard,
            state: Mutex::new(state),
            progress,
            wake: Notify::new(),
            advance: Mutex::default(),
        });
        if let Some(base) = &base {
            let sub = self.env.subscribe(&view, base);
            view.lock().sub = Some(sub);
        }
        let follower = Arc::new(Follower {
            id: reader.incarnation(),
            reader: std::sync::RwLock::new(Arc::new(reader)),
            view,
            last_used: Mutex::new(Instant::now()),
            stop: CancellationToken::new(),
        });
        let opened = {
            let mut progress = follower.view.progress.subscribe();
            progress
                .wait_for(|p| p.caught_up || p.closed)
                .await
                .map(|p| !p.closed)
                .unwrap_or(false)
        };
        if !opened {
            let why = follower.view.lock().closed.clone().unwrap_or_default();
            follower.stop.cancel();
            follower.view.close(why.clone());
            let _ = follower.reader().close().await;
            return Err(Error::ShardUnavailable {
                shard,
                reason: format!("opening the follower failed: {why}"),
            });
        }
        let upkeep = Upkeep {
            follower: Arc::clone(&follower),
            env: Arc::clone(&self.env),
            last_published: Some(Instant::now()),
        };
        self.tasks.spawn("follower upkeep", upkeep.run());
        tracing::debug!(
            %shard,
            position = follower.position(),
            log = base.as_ref().map(|b| b.log.as_str()),
            "follower opened"
        );
        Ok(follower)
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
                    f.is_closed()
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
        self.hot.drop_scope(f.incarnation());
        f.stop.cancel();
        f.view.close("retired".into());
        if let Err(e) = f.reader().close().await {
            tracing::debug!(error = %e, "follower close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reads::follower::tests::{fixture, own, read, write, POLL};
    use crate::storage::commit::CommitLog;
    use crate::storage::log::writer::WriterConfig;

    /// Followers of two shards written to one log share one tail, which costs about one
    /// GET per poll interval when the log is idle.
    #[tokio::test]
    async fn followers_of_one_log_share_its_tail() {
        let f = fixture().await;
        let log = CommitLog::start(f.store.clone(), "a", WriterConfig::default());
        let db0 = own(&f.store, &log, 0, 1).await;
        let db1 = own(&f.store, &log, 1, 1).await;
        f.owner.store(1, Ordering::Relaxed);
        let v0 = write(&log, &db0, 1, "zero", Some("0")).await;
        let v1 = write(&log, &db1, 1, "one", Some("1")).await;
        assert_eq!(read(&f, 0, v0, "zero").await.as_deref(), Some("0"));
        assert_eq!(read(&f, 1, v1, "one").await.as_deref(), Some("1"));
        assert_eq!(f.followers.logs_tailed(), 1);
        let (gets, t) = (f.followers.log_gets(), Instant::now());
        tokio::time::sleep(POLL * 20).await;
        let (gets, polls) = (
            f.followers.log_gets() - gets,
            t.elapsed().as_secs_f64() / POLL.as_secs_f64(),
        );
        assert!(
            gets as f64 <= polls + 2.0,
            "{gets} GETs in {polls:.0} polls"
        );
        // Idle followers close: the tail stops.
        f.followers.close_all().await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while f.followers.logs_tailed() > 0 {
            assert!(Instant::now() < deadline, "the tail outlived its followers");
            tokio::time::sleep(POLL).await;
        }
        f.tasks.shutdown().await;
    }
}
