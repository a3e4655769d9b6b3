//! Tailing owners' commit logs: one tail per (gateway, owner log), shared by every follower
//! of this gateway that follows a shard written to that log.
//!
//! A [`LogTail`] is a task that reads `logs/{log}/{seq}` in order and hands each object to
//! its [`Subscription`]s (one per follower; each takes the records of its own shard). When
//! it has read everything that exists it sleeps `reads.follower_poll_interval` and GETs the
//! next number again: an idle log costs one GET (a 404) per interval, however many shards
//! this gateway follows in it. A busy one is read ahead, up to [`READ_AHEAD`] GETs at once.
//!
//! A follower that subscribes later than the others starts at its own checkpoint
//! (`through_seq + 1`), which may be behind the tail's frontier: the tail first reads the
//! objects it missed, for it alone, then goes on with everybody. A subscriber that starts
//! ahead of the frontier just skips the objects before its start.
//!
//! A tail ends when its log ends (a fence: a new owner sealed it), when its last subscriber
//! leaves (so a gateway that no longer follows any shard of a log stops polling it), or when
//! a GET fails (its subscribers' followers close, as a follower whose poll failed always has:
//! an open follower has read its log within about one interval).
//!
//! Invariants:
//! - each subscription receives the objects of its log from its start on, in order, each
//!   once, or is told why not ([`Sink::missing`], [`Sink::ended`], [`Sink::failed`]);
//! - [`Sink::polled`] is called only after every object before the frontier was delivered,
//!   and after a GET of the frontier, begun after the previous `polled`, found nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::Result;
use crate::storage::log::{self, format::Segment};
use crate::storage::objstore::ClusterStore;
use crate::tasks::Tasks;

/// Most GETs of one tail in flight at once.
pub(crate) const READ_AHEAD: u64 = 16;

/// What a subscription's owner (a follower) is told.
pub(crate) trait Sink: Send + Sync {
    /// Object `seq` of the log, a records object.
    fn deliver(&self, sub: &Subscription, seq: u64, segment: &Segment);
    /// Everything before `frontier` was delivered, and `frontier` did not exist yet.
    fn polled(&self, sub: &Subscription, frontier: u64);
    /// Object `seq` no longer exists though later ones do: the log's GC deleted it, which it
    /// does only once the shard has a checkpoint past it.
    fn missing(&self, sub: &Subscription, seq: u64);
    /// The log is sealed: nothing exists after `fence - 1`.
    fn ended(&self, sub: &Subscription, fence: u64);
    /// Reading the log failed.
    fn failed(&self, sub: &Subscription, error: &str);
}

/// One follower's interest in one log, from one object on.
pub(crate) struct Subscription {
    log: String,
    /// The next object it needs.
    next: AtomicU64,
    /// Set by its follower when it moves to another log or closes; the tail then drops it.
    cancelled: AtomicBool,
    sink: Weak<dyn Sink>,
}

impl Subscription {
    /// The log it reads.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// The next object it needs: every object before it was delivered.
    pub fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Stops deliveries; the tail forgets it on its next round.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    fn live(&self) -> Option<Arc<dyn Sink>> {
        if self.cancelled.load(Ordering::Acquire) {
            return None;
        }
        self.sink.upgrade()
    }
}

/// The tails of this gateway, one per log some follower reads.
pub(crate) struct LogTails {
    store: ClusterStore,
    poll_interval: Duration,
    tasks: Tasks,
    registry: Arc<Registry>,
    /// GETs of log objects issued by tails.
    gets: Arc<AtomicU64>,
}

/// The running tails by log.
#[derive(Default)]
struct Registry {
    tails: Mutex<HashMap<String, Arc<LogTail>>>,
}

impl Registry {
    /// Removes `tail` if it has no live subscriber (with `force`, anyway: its subscribers
    /// were told it ended). Returns whether it is gone.
    fn remove(&self, tail: &Arc<LogTail>, force: bool) -> bool {
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        let subs = tail.subs.lock().unwrap_or_else(|e| e.into_inner());
        if !force && subs.iter().any(|s| s.live().is_some()) {
            return false;
        }
        if tails.get(&tail.log).is_some_and(|t| Arc::ptr_eq(t, tail)) {
            tails.remove(&tail.log);
        }
        true
    }
}

impl LogTails {
    pub fn new(store: ClusterStore, poll_interval: Duration, tasks: Tasks) -> Self {
        LogTails {
            store,
            poll_interval,
            tasks,
            registry: Arc::default(),
            gets: Arc::default(),
        }
    }

    /// Subscribes `sink` to `log` from object `from` on, starting a tail of the log if none
    /// runs.
    pub fn subscribe(&self, log: &str, from: u64, sink: Weak<dyn Sink>) -> Arc<Subscription> {
        let sub = Arc::new(Subscription {
            log: log.to_string(),
            next: AtomicU64::new(from.max(1)),
            cancelled: AtomicBool::new(false),
            sink,
        });
        let mut tails = self
            .registry
            .tails
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tail = tails.entry(log.to_string()).or_insert_with(|| {
            let tail = Arc::new(LogTail {
                log: log.to_string(),
                frontier: AtomicU64::new(from.max(1)),
                subs: Mutex::default(),
                wake: Notify::new(),
            });
            let run = Arc::clone(&tail);
            let (store, registry) = (self.store.clone(), Arc::clone(&self.registry));
            let (interval, gets) = (self.poll_interval, Arc::clone(&self.gets));
            self.tasks.spawn("tail a log", async move {
                run.run(&store, interval, &gets, &registry).await;
            });
            tail
        });
        // Under the registry lock: a tail leaves the registry under it too, and only with no
        // live subscriber, so a subscription is never added to a tail that has stopped.
        tail.subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&sub));
        tail.wake.notify_one();
        sub
    }

    /// Logs being tailed now.
    pub fn count(&self) -> usize {
        self.registry
            .tails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// GETs of log objects the tails issued so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }
}

/// One log being tailed.
pub(crate) struct LogTail {
    log: String,
    /// The next object the tail has not read yet.
    frontier: AtomicU64,
    subs: Mutex<Vec<Arc<Subscription>>>,
    /// Woken by a new subscriber, so that it is served without waiting for the interval.
    wake: Notify,
}

/// What a GET found.
enum Found {
    Records(u64, Segment),
    Missing(u64),
    Fence(u64),
}

type Live = Vec<(Arc<Subscription>, Arc<dyn Sink>)>;

impl LogTail {
    async fn run(
        self: Arc<Self>,
        store: &ClusterStore,
        interval: Duration,
        gets: &AtomicU64,
        registry: &Registry,
    ) {
        loop {
            let subs = self.live_subs();
            if subs.is_empty() && registry.remove(&self, false) {
                return;
            }
            let end = match self.round(store, &subs, gets).await {
                Ok(None) => None,
                Ok(Some(fence)) => Some(Ok(fence)),
                Err(e) => Some(Err(e.to_string())),
            };
            if let Some(end) = end {
                // ORDERING: out of the registry first: no subscriber joins after that, so
                // every one is told below.
                registry.remove(&self, true);
                for (sub, sink) in self.live_subs() {
                    match &end {
                        Ok(fence) => sink.ended(&sub, *fence),
                        Err(error) => sink.failed(&sub, error),
                    }
                }
                tracing::debug!(log = self.log, ?end, "stopped tailing a log");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    fn live_subs(&self) -> Live {
        let mut subs = self.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| s.live().is_some());
        subs.iter()
            .filter_map(|s| Some((Arc::clone(s), s.live()?)))
            .collect()
    }

    /// One round: catches the subscribers that start behind the frontier up, then reads
    /// from the frontier until an object is missing. Returns the fence's number if the log
    /// ended.
    async fn round(
        &self,
        store: &ClusterStore,
        subs: &Live,
        gets: &AtomicU64,
    ) -> Result<Option<u64>> {
        let mut frontier = self.frontier.load(Ordering::Acquire);
        // Nobody needs the objects before the earliest start (all started ahead of it).
        if let Some(low) = subs.iter().map(|(s, _)| s.next()).min() {
            frontier = frontier.max(low);
        }
        // Catch-up: every object below the frontier was created (numbers are consecutive);
        // one that is gone was deleted by the log's GC.
        let behind = subs
            .iter()
            .map(|(s, _)| s.next())
            .filter(|n| *n < frontier)
            .min();
        if let Some(low) = behind {
            let mut seq = low;
            while seq < frontier {
                let end = (seq + READ_AHEAD).min(frontier);
                for found in read(store, &self.log, seq..end, false, gets).await? {
                    match found {
                        Found::Records(n, segment) => deliver(subs, n, &segment),
                        Found::Missing(n) => {
                            for (sub, sink) in subs.iter().filter(|(s, _)| s.next() == n) {
                                sub.cancel();
                                sink.missing(sub, n);
                            }
                        }
                        // Objects below the frontier are records: the frontier stops at a fence.
                        Found::Fence(n) => return Ok(Some(n)),
                    }
                }
                seq = end;
            }
        }
        // Every object before the latest start was created (its subscriber's checkpoint
        // reaches it).
        let created = subs
            .iter()
            .map(|(s, _)| s.next())
            .max()
            .unwrap_or(0)
            .saturating_sub(1);
        // Forward: one GET when idle; once an object is found, the next ones in growing
        // windows (2, 4, … READ_AHEAD) for as long as a whole window exists.
        let mut window = 1;
        loop {
            let found = read(store, &self.log, frontier..frontier + window, true, gets).await?;
            let whole = found.len() as u64 == window
                && found.iter().all(|f| matches!(f, Found::Records(..)));
            for f in found {
                match f {
                    Found::Records(n, segment) => {
                        deliver(subs, n, &segment);
                        frontier = n + 1;
                    }
                    Found::Fence(n) => {
                        self.frontier.store(n, Ordering::Release);
                        return Ok(Some(n));
                    }
                    Found::Missing(n) if n <= created => {
                        // A subscriber ahead started past it, so it was created: GC deleted
                        // it. Those waiting for it must find a newer checkpoint; the others
                        // go on at the next round, without waiting for the interval.
                        self.frontier.store(frontier, Ordering::Release);
                        for (sub, sink) in subs.iter().filter(|(s, _)| s.next() == n) {
                            sub.cancel();
                            sink.missing(sub, n);
                        }
                        self.wake.notify_one();
                        return Ok(None);
                    }
                    Found::Missing(_) => {}
                }
            }
            self.frontier.store(frontier, Ordering::Release);
            if !whole {
                break;
            }
            window = (window * 2).min(READ_AHEAD);
        }
        for (sub, sink) in subs {
            if sub.next() == frontier {
                sink.polled(sub, frontier);
            }
        }
        Ok(None)
    }
}

/// Hands object `seq` to the subscriptions waiting for it.
fn deliver(subs: &Live, seq: u64, segment: &Segment) {
    for (sub, sink) in subs {
        if sub.next() == seq && !sub.cancelled.load(Ordering::Acquire) {
            sink.deliver(sub, seq, segment);
            sub.next.store(seq + 1, Ordering::Release);
        }
    }
}

/// Objects `seqs` of `log`, in order, GET in parallel. With `stop`, up to and including the
/// first that is missing or a fence.
async fn read(
    store: &ClusterStore,
    log: &str,
    seqs: std::ops::Range<u64>,
    stop: bool,
    gets: &AtomicU64,
) -> Result<Vec<Found>> {
    gets.fetch_add(seqs.end.saturating_sub(seqs.start), Ordering::Relaxed);
    let start = seqs.start;
    let objects = futures::future::try_join_all(seqs.map(|seq| log::get(store, log, seq))).await?;
    let mut out = Vec::new();
    for (seq, object) in (start..).zip(objects) {
        let (found, last) = match object {
            Some(segment @ Segment::Records { .. }) => (Found::Records(seq, segment), false),
            Some(Segment::Fence { .. }) => (Found::Fence(seq), true),
            None => (Found::Missing(seq), stop),
        };
        out.push(found);
        if last {
            break;
        }
    }
    Ok(out)
}
