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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::{oneshot, Notify};

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
}

/// Settings of a [`LogWriter`].
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most bytes of records per object (a larger single append still gets an object).
    pub max_object_bytes: usize,
    /// How long appends wait for a failing object store before they fail as unavailable.
    pub give_up_after: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_object_bytes: 8 << 20,
            give_up_after: Duration::from_secs(5),
        }
    }
}

type Waiter = oneshot::Sender<Result<u64, LogError>>;

#[derive(Default)]
struct Queue {
    groups: Vec<(Vec<Record>, usize, Waiter)>,
    sealed: bool,
}

/// The writer of one log.
pub struct LogWriter {
    store: ClusterStore,
    log: String,
    config: WriterConfig,
    queue: Mutex<Queue>,
    wake: Notify,
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

    /// Queues `group` (one atomic write) and resolves with the number of the object that made
    /// it durable.
    pub async fn append(&self, group: Vec<Record>) -> Result<u64, LogError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut queue = self.lock();
            if queue.sealed {
                return Err(LogError::Sealed);
            }
            let bytes = group.iter().map(record_bytes).sum();
            queue.groups.push((group, bytes, tx));
        }
        self.wake.notify_one();
        // The flusher answers every waiter it takes; it only stops with the process.
        rx.await
            .unwrap_or_else(|_| Err(LogError::Unavailable("the log writer stopped".into())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next object's worth of queued appends: at least one, at most
    /// `max_object_bytes` (unless the first alone is larger).
    fn take(&self) -> (Vec<Vec<Record>>, Vec<Waiter>) {
        let mut queue = self.lock();
        let mut bytes = 0;
        let count = queue
            .groups
            .iter()
            .take_while(|(_, b, _)| {
                let fits = bytes == 0 || bytes + b <= self.config.max_object_bytes;
                bytes += b;
                fits
            })
            .count();
        queue
            .groups
            .drain(..count)
            .map(|(group, _, waiter)| (group, waiter))
            .unzip()
    }

    async fn flush_loop(&self, mut seq: u64) {
        loop {
            let (groups, waiters) = self.take();
            if groups.is_empty() {
                self.wake.notified().await;
                continue;
            }
            let bytes = encode_records(&self.log, seq, &groups);
            let outcome = self.write(seq, bytes, waiters).await;
            match outcome {
                Ok(()) => seq += 1,
                Err(LogError::Sealed) => {
                    let mut queue = self.lock();
                    queue.sealed = true;
                    for (_, _, waiter) in queue.groups.drain(..) {
                        let _ = waiter.send(Err(LogError::Sealed));
                    }
                    tracing::warn!(log = %self.log, seq, "log sealed by a new owner; it takes no more writes");
                    return;
                }
                Err(LogError::Unavailable(_)) => unreachable!("write retries until it knows"),
            }
        }
    }

    /// Creates object `seq` with `bytes`, retrying the same bytes until the outcome is known,
    /// then answers `waiters`. Waiters get `Unavailable` once the store has failed for
    /// `give_up_after`; the retries go on.
    async fn write(
        &self,
        seq: u64,
        bytes: Bytes,
        mut waiters: Vec<Waiter>,
    ) -> Result<(), LogError> {
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
                Ok(durable) => {
                    let answer = if durable {
                        Ok(seq)
                    } else {
                        Err(LogError::Sealed)
                    };
                    for waiter in waiters {
                        let _ = waiter.send(answer.clone());
                    }
                    return answer.map(|_| ());
                }
                Err(e) => {
                    tracing::warn!(log = %self.log, seq, error = %e, "log flush failed; retrying");
                    if started.elapsed() >= self.config.give_up_after {
                        for waiter in waiters.drain(..) {
                            let _ = waiter.send(Err(LogError::Unavailable(e.clone())));
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
