//! The log's writer: appends wait in a queue; one flusher turns whatever is queued into the
//! next object, and the next flush starts as soon as the previous one ends. So batching grows
//! with load by itself, an idle log writes nothing, and at most one object is in flight.
//!
//! A durable object's groups go to their targets' *lanes* (one per target, that is, per open
//! shard database): each lane applies its groups in log order, lanes apply independently of
//! each other and of the flusher. So a shard whose database makes a write wait (its L0 full)
//! holds up its own writes only, not the log nor the other shards of the gateway.
//!
//! Invariants:
//! - an append resolves `Ok(seq)` only once object `seq`, holding it, exists in the store;
//! - objects are created at consecutive numbers, each with `If-None-Match: *`, and the content
//!   meant for a number never changes: after an ambiguous failure (the PUT may or may not have
//!   happened) the same bytes are retried, and finding them there counts as success;
//! - finding a fence at the next number ends the log for good ([`LogError::Sealed`]): every
//!   queued and future append fails, and none of them can ever become durable in this log;
//!   groups already durable are still applied;
//! - a lane applies its groups in the order they were submitted (a shard's versions arrive in
//!   order), each before its appender hears of it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::{oneshot, watch, Notify};

use super::format::{encode_records, Op, Record};
use super::{create, object_path};
use crate::stats::Samples;
use crate::storage::objstore::ClusterStore;
use crate::tasks::Tasks;

/// Why an append did not become durable (or may not have).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// A new owner sealed the log: the append is not durable, and never will be.
    #[error("the log was sealed by a new owner")]
    Sealed,
    /// The object store failed for longer than the writer waits; the append may still become
    /// durable (the writer keeps retrying the same object).
    #[error("the log's object store is unavailable: {0}")]
    Unavailable(String),
    /// The append is durable, but its shard could not apply it (its database stopped): the
    /// shard is recovered by a replay, which applies it.
    #[error("durable, but not applied: {0}")]
    NotApplied(String),
}

/// Where a durable group goes before its appender hears of it: its shard's database.
#[async_trait::async_trait]
pub trait Apply: Send + Sync {
    /// Applies `group` (all records of one shard, one version).
    async fn apply(&self, group: &[Record]) -> Result<(), String>;

    /// The lane of this target: unique to it among the targets of the process.
    fn lane(&self) -> u64;
}

/// Settings of a [`LogWriter`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most bytes of records per object (a larger single append still gets an object).
    pub max_object_bytes: usize,
    /// How long appends wait for a failing object store before they fail as unavailable.
    pub give_up_after: Duration,
    /// Shortest time between the starts of two flushes (zero: the next starts as soon as the
    /// previous ends).
    pub min_interval: Duration,
    /// A flush starts before `min_interval` has passed once this many groups wait, and at
    /// least as many as the previous flush took: writers waiting on each flush (a closed
    /// loop) are then answered about one PUT after their next writes arrive, not one interval,
    /// and every early object still carries this many groups. 0: never early.
    pub early_groups: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_object_bytes: 8 << 20,
            give_up_after: Duration::from_secs(5),
            min_interval: Duration::ZERO,
            early_groups: 0,
        }
    }
}

/// What the logs of a process have written, for metrics (shared by its successive logs).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Objects created.
    pub objects: AtomicU64,
    /// Writes (groups) those objects carried: `writes / objects` is the batching.
    pub writes: AtomicU64,
    /// Bytes of those objects.
    pub bytes: AtomicU64,
    /// Flushes started before the interval because enough writes waited.
    pub early_flushes: AtomicU64,
    /// Per object: from the start of its flush until it existed in the store.
    pub flush_seconds: Samples,
}

type Waiter = oneshot::Sender<Result<u64, LogError>>;

struct Queued {
    /// Submission number, unique in this writer and increasing in submission order.
    index: u64,
    group: Vec<Record>,
    bytes: usize,
    target: Arc<dyn Apply>,
    waiter: Option<Waiter>,
}

#[derive(Default)]
struct Queue {
    groups: Vec<Queued>,
    /// Groups ever submitted (the next one's index).
    submitted: u64,
    sealed: bool,
    /// The last object created (0: none yet).
    durable_seq: u64,
    /// Per target with groups not yet settled (applied, or failed for good).
    lanes: HashMap<u64, Lane>,
}

/// One target's groups, from submission until settled.
#[derive(Default)]
struct Lane {
    /// Indexes of the groups submitted and not settled, durable or not, ascending.
    unsettled: VecDeque<u64>,
    /// Durable groups waiting to be applied, in log order, with their objects' numbers.
    durable: VecDeque<(u64, Queued)>,
    /// Whether a runner applies this lane's groups now (one at a time).
    running: bool,
}

/// The writer of one log.
pub struct LogWriter {
    store: ClusterStore,
    log: String,
    config: WriterConfig,
    queue: Mutex<Queue>,
    wake: Notify,
    /// Bumped whenever a group settles: what [`LogWriter::sync`] waits on.
    settled: watch::Sender<u64>,
    sealed: watch::Sender<bool>,
    stats: Arc<LogStats>,
    /// Where the lanes run.
    tasks: Tasks,
}

impl LogWriter {
    /// Starts writing `log` at object `first_seq` (1 for a new log), flushing on `tasks` and
    /// counting in `stats`.
    pub fn start(
        store: ClusterStore,
        log: String,
        first_seq: u64,
        config: WriterConfig,
        stats: Arc<LogStats>,
        tasks: &Tasks,
    ) -> Arc<LogWriter> {
        let writer = Arc::new(LogWriter {
            store,
            log,
            config,
            queue: Mutex::new(Queue {
                durable_seq: first_seq - 1,
                ..Queue::default()
            }),
            wake: Notify::new(),
            settled: watch::Sender::new(0),
            sealed: watch::Sender::new(false),
            stats,
            tasks: tasks.clone(),
        });
        let flusher = Arc::clone(&writer);
        tasks.spawn("log flusher", flusher.flush_loop(first_seq));
        writer
    }

    /// The log's id.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// Queues `group` (one atomic write of one shard) at once, in call order. The returned
    /// future resolves once the group's object is durable and `target` has applied it, with
    /// the object's number.
    pub fn submit(
        &self,
        group: Vec<Record>,
        target: Arc<dyn Apply>,
    ) -> impl Future<Output = Result<u64, LogError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.lock();
            if queue.sealed {
                let _ = tx.send(Err(LogError::Sealed));
            } else {
                let bytes = group.iter().map(record_bytes).sum();
                let index = queue.submitted;
                queue.submitted += 1;
                let lane = queue.lanes.entry(target.lane()).or_default();
                lane.unsettled.push_back(index);
                queue.groups.push(Queued {
                    index,
                    group,
                    bytes,
                    target,
                    waiter: Some(tx),
                });
            }
        }
        self.wake.notify_one();
        // The flusher answers every waiter it takes; it only stops with the process.
        async move {
            rx.await
                .unwrap_or_else(|_| Err(LogError::Unavailable("the log writer stopped".into())))
        }
    }

    /// Waits until every group submitted before the call is settled (applied or failed), in
    /// every lane, and returns the last object created. If no group of a shard was submitted
    /// meanwhile (its caller holds them off), no object holds a group of it not applied.
    pub async fn sync(&self) -> u64 {
        let lanes: Vec<(u64, u64)> = {
            let queue = self.lock();
            let last = |(id, lane): (&u64, &Lane)| Some((*id, *lane.unsettled.back()?));
            queue.lanes.iter().filter_map(last).collect()
        };
        for (lane, through) in lanes {
            self.settled_through(lane, through).await;
        }
        self.last_object()
    }

    /// Waits until `target`'s lane has settled every group submitted to it before the call,
    /// and returns the last object created. If no group of `target` was submitted meanwhile
    /// (the caller holds them off), no object holds a group of it that is not applied. Other
    /// lanes, however slow, are not waited for.
    pub async fn sync_target(&self, target: &dyn Apply) -> u64 {
        let lane = target.lane();
        let through = self
            .lock()
            .lanes
            .get(&lane)
            .and_then(|l| l.unsettled.back().copied());
        if let Some(through) = through {
            self.settled_through(lane, through).await;
        }
        self.last_object()
    }

    /// Waits until lane `id` has settled every group up to index `through`. Indexes only
    /// grow, so a lane dropped and made again meanwhile counts as settled.
    async fn settled_through(&self, id: u64, through: u64) {
        let mut settled = self.settled.subscribe();
        let done = |_: &u64| {
            let queue = self.lock();
            let oldest = queue.lanes.get(&id).and_then(|l| l.unsettled.front());
            oldest.is_none_or(|oldest| *oldest > through)
        };
        // The sender lives as long as `self`.
        let _ = settled.wait_for(done).await;
    }

    /// The last object created (0: none yet).
    pub fn last_object(&self) -> u64 {
        self.lock().durable_seq
    }

    /// Resolves once a new owner has sealed the log (never, while it has not).
    pub async fn sealed(&self) {
        let _ = self.sealed.subscribe().wait_for(|s| *s).await;
    }

    /// True once an object was created, or something waits to be: the log may have objects.
    pub fn used(&self) -> bool {
        let queue = self.lock();
        queue.durable_seq > 0 || !queue.groups.is_empty()
    }

    /// True once the log is sealed.
    pub fn is_sealed(&self) -> bool {
        *self.sealed.borrow()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next object's worth of queued appends: at least one, at most
    /// `max_object_bytes` (unless the first alone is larger).
    fn take(&self) -> Vec<Queued> {
        let mut queue = self.lock();
        let mut bytes = 0;
        let count = queue
            .groups
            .iter()
            .take_while(|q| {
                let fits = bytes == 0 || bytes + q.bytes <= self.config.max_object_bytes;
                bytes += q.bytes;
                fits
            })
            .count();
        queue.groups.drain(..count).collect()
    }

    /// Counts `q` settled in its lane; the lane goes once nothing of it is left unsettled.
    fn settle(queue: &mut Queue, q: &Queued) {
        let id = q.target.lane();
        if let Some(lane) = queue.lanes.get_mut(&id) {
            lane.unsettled.retain(|index| *index != q.index);
            if lane.unsettled.is_empty() {
                queue.lanes.remove(&id);
            }
        }
    }

    async fn flush_loop(self: Arc<Self>, mut seq: u64) {
        let mut last_start = tokio::time::Instant::now() - self.config.min_interval;
        let mut last_count = usize::MAX;
        loop {
            let early = self
                .until_due(last_start + self.config.min_interval, last_count)
                .await;
            let mut batch = self.take();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            last_start = tokio::time::Instant::now();
            last_count = batch.len();
            let groups: Vec<Vec<Record>> = batch.iter().map(|q| q.group.clone()).collect();
            let bytes = encode_records(&self.log, seq, &groups);
            drop(groups);
            let (size, started) = (bytes.len() as u64, Instant::now());
            match self.write(seq, bytes, &mut batch).await {
                Ok(()) => {
                    let stats = &self.stats;
                    stats.objects.fetch_add(1, Relaxed);
                    stats.writes.fetch_add(batch.len() as u64, Relaxed);
                    stats.bytes.fetch_add(size, Relaxed);
                    stats.early_flushes.fetch_add(u64::from(early), Relaxed);
                    stats.flush_seconds.push(started.elapsed().as_secs_f64());
                    self.hand_to_lanes(seq, batch);
                    seq += 1;
                }
                Err(()) => {
                    let mut queue = self.lock();
                    queue.sealed = true;
                    let mut rest = std::mem::take(&mut queue.groups);
                    rest.append(&mut batch);
                    for mut q in rest {
                        if let Some(waiter) = q.waiter.take() {
                            let _ = waiter.send(Err(LogError::Sealed));
                        }
                        Self::settle(&mut queue, &q);
                    }
                    drop(queue);
                    self.settled.send_modify(|n| *n += 1);
                    self.sealed.send_replace(true);
                    tracing::warn!(log = %self.log, seq, "log sealed by a new owner; it takes no more writes");
                    return;
                }
            }
        }
    }

    /// Waits until `due`, or until enough groups wait to flush early: `early_groups`, and at
    /// least the `previous` flush's count. True if it returns early.
    async fn until_due(&self, due: tokio::time::Instant, previous: usize) -> bool {
        let early = match self.config.early_groups {
            0 => usize::MAX,
            n => n.max(previous),
        };
        loop {
            if tokio::time::Instant::now() >= due {
                return false;
            }
            if self.lock().groups.len() >= early {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep_until(due) => return false,
                () = self.wake.notified() => {}
            }
        }
    }

    /// Queues the groups of durable object `seq` on their lanes, starting the lanes that are
    /// idle. The flusher goes on to the next object at once.
    fn hand_to_lanes(self: &Arc<Self>, seq: u64, batch: Vec<Queued>) {
        let mut idle = Vec::new();
        {
            let mut queue = self.lock();
            queue.durable_seq = seq;
            for q in batch {
                let id = q.target.lane();
                // Present: its groups are unsettled until applied.
                let lane = queue.lanes.entry(id).or_default();
                if !lane.running {
                    lane.running = true;
                    idle.push(id);
                }
                lane.durable.push_back((seq, q));
            }
        }
        for id in idle {
            let writer = Arc::clone(self);
            self.tasks
                .spawn("log lane", async move { writer.run_lane(id).await });
        }
    }

    /// Applies lane `id`'s durable groups in order until it has none, answering each
    /// appender once its group is applied. One runs per lane at a time: a lane stops
    /// `running` (and [`Self::hand_to_lanes`] starts a runner) only once its runner has found
    /// it empty, in the same critical section as its last pop.
    async fn run_lane(&self, id: u64) {
        let mut next = self.next_of_lane(&mut self.lock(), id);
        while let Some((seq, mut q)) = next {
            let outcome = match q.target.apply(&q.group).await {
                Ok(()) => Ok(seq),
                Err(e) => Err(LogError::NotApplied(e)),
            };
            {
                // ORDERING: the group is settled before its appender hears of it, and a
                // `sync` that sees it settled sees it applied: what a checkpoint's `sync`
                // returns never passes a record of the shard not in its database yet.
                let mut queue = self.lock();
                Self::settle(&mut queue, &q);
                next = self.next_of_lane(&mut queue, id);
            }
            self.settled.send_modify(|n| *n += 1);
            if let Some(waiter) = q.waiter.take() {
                let _ = waiter.send(outcome);
            }
        }
    }

    /// Takes lane `id`'s next durable group, marked as being applied; `None` leaves the
    /// lane idle.
    fn next_of_lane(&self, queue: &mut Queue, id: u64) -> Option<(u64, Queued)> {
        let lane = queue.lanes.get_mut(&id)?;
        let next = lane.durable.pop_front();
        lane.running = next.is_some();
        next
    }

    /// Creates object `seq` with `bytes`, retrying the same bytes until the outcome is known:
    /// `Ok` once it exists, `Err` if a fence holds the number. Waiters of `batch` get
    /// `Unavailable` once the store has failed for `give_up_after`; the retries go on (the
    /// groups are still applied if the object is created).
    async fn write(&self, seq: u64, bytes: Bytes, batch: &mut [Queued]) -> Result<(), ()> {
        let path = object_path(&self.store, &self.log, seq);
        let started = Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let attempt = match create(&self.store, &path, bytes.clone()).await {
                Ok(true) => Ok(true),
                // Something is there: our own bytes (an earlier attempt's PUT did happen), or
                // anything else, a fence, which means this number can never be ours.
                Ok(false) => match self.store.store.get(&path).await {
                    Ok(got) => match got.bytes().await {
                        Ok(there) => Ok(there == bytes),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match attempt {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(()),
                Err(e) => {
                    tracing::warn!(log = %self.log, seq, error = %e, "log flush failed; retrying");
                    if started.elapsed() >= self.config.give_up_after {
                        for q in batch.iter_mut() {
                            if let Some(waiter) = q.waiter.take() {
                                let _ = waiter.send(Err(LogError::Unavailable(e.clone())));
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// A record's share of an object's size (close enough for the cap).
fn record_bytes(r: &Record) -> usize {
    let value = match &r.op {
        Op::Put { value, .. } => value.len(),
        Op::Delete => 0,
    };
    45 + r.key.len() + value
}
