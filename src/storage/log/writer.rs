//! The log's writer: appends wait in a queue; one flusher turns whatever is queued into the
//! next object, and the next flush starts as soon as the previous one ends. So batching grows
//! with load by itself, an idle log writes nothing, and at most one object is in flight.
//!
//! Invariants:
//! - an append resolves `Ok(seq)` only once object `seq`, holding it, exists in the store;
//! - objects are created at consecutive numbers, each with `If-None-Match: *`, and the content
//!   meant for a number never changes: after an ambiguous failure (the PUT may or may not have
//!   happened) the same bytes are retried, and finding them there counts as success;
//! - finding a fence at the next number ends the log for good ([`LogError::Sealed`]): every
//!   queued and future append fails, and none of them can ever become durable in this log.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::{oneshot, watch, Notify};

use super::format::{encode_records, Op, Record};
use super::{create, object_path};
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
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_object_bytes: 8 << 20,
            give_up_after: Duration::from_secs(5),
            min_interval: Duration::ZERO,
        }
    }
}

type Waiter = oneshot::Sender<Result<u64, LogError>>;

struct Queued {
    group: Vec<Record>,
    bytes: usize,
    target: Arc<dyn Apply>,
    waiter: Option<Waiter>,
}

#[derive(Default)]
struct Queue {
    groups: Vec<Queued>,
    /// Groups ever queued.
    submitted: u64,
    sealed: bool,
}

/// Progress of the flusher, for [`LogWriter::sync`] and checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Progress {
    /// Groups whose outcome is settled (applied, or failed for good).
    settled: u64,
    /// The last object whose groups are all applied (0: none yet).
    applied_seq: u64,
}

/// The writer of one log.
pub struct LogWriter {
    store: ClusterStore,
    log: String,
    config: WriterConfig,
    queue: Mutex<Queue>,
    wake: Notify,
    progress: watch::Sender<Progress>,
    sealed: watch::Sender<bool>,
}

impl LogWriter {
    /// Starts writing `log` at object `first_seq` (1 for a new log), flushing on `tasks`.
    pub fn start(
        store: ClusterStore,
        log: String,
        first_seq: u64,
        config: WriterConfig,
        tasks: &Tasks,
    ) -> Arc<LogWriter> {
        let writer = Arc::new(LogWriter {
            store,
            log,
            config,
            queue: Mutex::default(),
            wake: Notify::new(),
            progress: watch::Sender::new(Progress {
                settled: 0,
                applied_seq: first_seq - 1,
            }),
            sealed: watch::Sender::new(false),
        });
        let flusher = Arc::clone(&writer);
        tasks.spawn(
            "log flusher",
            async move { flusher.flush_loop(first_seq).await },
        );
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
                queue.submitted += 1;
                queue.groups.push(Queued {
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

    /// Waits until every group submitted before the call is settled (applied or failed), and
    /// returns the last object whose groups are all applied. With no new submissions for a
    /// shard meanwhile, every durable record of it is then in its database.
    pub async fn sync(&self) -> u64 {
        let target = self.lock().submitted;
        let mut progress = self.progress.subscribe();
        let settled = progress.wait_for(|p| p.settled >= target).await;
        settled.map_or(0, |p| p.applied_seq)
    }

    /// The last object whose groups are all applied.
    pub fn applied_seq(&self) -> u64 {
        self.progress.borrow().applied_seq
    }

    /// Resolves once a new owner has sealed the log (never, while it has not).
    pub async fn sealed(&self) {
        let _ = self.sealed.subscribe().wait_for(|s| *s).await;
    }

    /// True once anything was submitted: the log may have objects.
    pub fn used(&self) -> bool {
        self.lock().submitted > 0
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

    fn settle(&self, groups: u64, applied_seq: Option<u64>) {
        self.progress.send_modify(|p| {
            p.settled += groups;
            if let Some(seq) = applied_seq {
                p.applied_seq = seq;
            }
        });
    }

    async fn flush_loop(&self, mut seq: u64) {
        let mut last_start = tokio::time::Instant::now() - self.config.min_interval;
        loop {
            let wait = self
                .config
                .min_interval
                .saturating_sub(last_start.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut batch = self.take();
            if batch.is_empty() {
                self.wake.notified().await;
                continue;
            }
            last_start = tokio::time::Instant::now();
            let groups: Vec<Vec<Record>> = batch.iter().map(|q| q.group.clone()).collect();
            let bytes = encode_records(&self.log, seq, &groups);
            drop(groups);
            match self.write(seq, bytes, &mut batch).await {
                Ok(()) => {
                    // ORDERING: groups are applied in log order, each before its appender
                    // hears of it, so `applied_seq` (what checkpoints record) never passes a
                    // record that is not in its database yet.
                    for q in &mut batch {
                        let outcome = match q.target.apply(&q.group).await {
                            Ok(()) => Ok(seq),
                            Err(e) => Err(LogError::NotApplied(e)),
                        };
                        if let Some(waiter) = q.waiter.take() {
                            let _ = waiter.send(outcome);
                        }
                    }
                    self.settle(batch.len() as u64, Some(seq));
                    seq += 1;
                }
                Err(()) => {
                    let mut rest = {
                        let mut queue = self.lock();
                        queue.sealed = true;
                        std::mem::take(&mut queue.groups)
                    };
                    rest.append(&mut batch);
                    for q in &mut rest {
                        if let Some(waiter) = q.waiter.take() {
                            let _ = waiter.send(Err(LogError::Sealed));
                        }
                    }
                    self.settle(rest.len() as u64, None);
                    self.sealed.send_replace(true);
                    tracing::warn!(log = %self.log, seq, "log sealed by a new owner; it takes no more writes");
                    return;
                }
            }
        }
    }

    /// Creates object `seq` with `bytes`, retrying the same bytes until the outcome is known:
    /// `Ok` once it exists, `Err` if a fence holds the number. Waiters of `batch` get
    /// `Unavailable` once the store has failed for `give_up_after`; the retries go on (the
    /// groups are still applied if the object is created).
    async fn write(&self, seq: u64, bytes: Bytes, batch: &mut [Queued]) -> Result<(), ()> {
        let path = object_path(&self.store, &self.log, seq);
        let started = std::time::Instant::now();
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
