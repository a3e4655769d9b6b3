//! Followers: read-only replicas of shards owned by other gateways, for eventual reads.
//!
//! A follower of shard `s` is two things merged:
//! - a **reader** ([`ShardReader`], SlateDB's `DbReader`): the shard's checkpoints, i.e. the
//!   SSTs its owner flushed (every `storage.memtable_flush_interval` while written, and on
//!   release). With the shards' WAL off, that is all the database shows a reader;
//! - an **overlay** (`overlay.rs`): the shard's records from its owner's commit log past the
//!   checkpoint, read by this gateway's tail of that log (`tail.rs`, one per owner log,
//!   shared by every shard followed in it), which polls it every
//!   `reads.follower_poll_interval`.
//!
//! Reads take, per key, the newer of the two by version (the merge rule, `overlay.rs`), which
//! is right whatever the checkpoints and the tail have reached, so neither waits for the
//! other. The follower is opened on the first eventual read of a shard this gateway does not
//! serve and closed after `reads.follower_idle_timeout` without reads. Opening runs in a task
//! of its own, so a read that stops waiting (the owner answered it, or its deadline passed)
//! never cancels it; and a read of a key the owner answered first finishes in the background
//! (`Followers::read`), so that the blocks it fetches reach the block cache. Eventual reads
//! never need the owner, so they keep working while it is dead, paused or partitioned.
//!
//! # Which log, from where
//!
//! A checkpoint [`Marker`] says: every record of the shard in `log` up to object
//! `through_seq` is in the database, and versions up to `max_version` were handed out. The
//! follower tails the log of the newest published checkpoint (`checkpoints/{s}.json`; it
//! leads the marker in the database when a checkpoint needed no flush, and may lag it by a
//! crash between flush and publish, which only means re-reading a few objects) from
//! `through_seq + 1`. The owner changes when its log ends in a fence (a failover sealed it),
//! when a record of the shard under another claim epoch turns up in it, or when this
//! gateway's view of the cluster names an owner with a newer epoch (a planned hand-over
//! leaves no trace in the old log). Each makes the follower read the published checkpoint
//! (once per poll interval until a newer one is there; the new owner publishes it before
//! serving) and move to its log; the overlay is kept (versions keep the merge right). Every
//! `PUBLISHED_EVERY_POLLS` intervals it reads it anyway, in case it was told of nothing.
//!
//! # Position
//!
//! The follower's *position* `P` is a version such that every write of the shard with a
//! version `<= P` is in its reader's view or its overlay. Reads wait for `P` to reach a
//! floor (below), and a cached answer carries the `P` it was read at. `P` is the largest of:
//! - the reader's view `D` (its manifest's `last_l0_seq`: the SSTs hold every write up to
//!   it, versions being applied in order);
//! - when the tail is *anchored*: the highest version of the shard (under the tailed
//!   checkpoint's epoch) read from the log. Anchored means the reader's view or the overlay
//!   already holds every write up to the checkpoint's `max_version`; the tail then holds
//!   every later write of that owner, in order (an owner assigns versions in log order, and
//!   every record after `through_seq` got its version after the checkpoint's).
//!
//! A follower is anchored when opened: it reads the published checkpoint *before* it opens
//! its reader, whose first view is then at least as new as the database was when that
//! checkpoint was published, which held every write up to its `max_version`. After an owner
//! change it is anchored at once if `P >= max_version - 1` (the usual case: the tail read the
//! old log to its fence; the checkpoint's own version is no write). It is not when versions
//! before the new checkpoint were handed out but never seen here (writes the old owner never
//! made durable, a checkpoint of its that the follower never read): the follower then opens
//! a new reader, anchored for the same reason as at open, and swaps it in. Until then reads
//! go on (the merge rule does not need the anchor), only floors above `P` wait.
//!
//! # Guarantees (documented in docs/consistency.md)
//!
//! - **No phantoms**: the overlay holds only records of log objects, which exist only once
//!   durable; the reader only flushed data.
//! - **Bounded staleness**: a write durable at `t` is in an object that exists at `t`; the
//!   tail GETs the next object at least every poll interval and reads on until one is
//!   missing, so reads that start a poll interval plus one GET after `t` see it. An open
//!   follower's tail has done so within about one interval: a failed GET closes the followers
//!   of that log (a read then reopens one, or gets `503`). The follower cache adds at most
//!   `follower_cache_ttl`.
//! - **Monotonic per gateway**: [`Watermarks`] records, per shard, the highest version this
//!   gateway has returned; a follower serves a shard only once its position has reached that
//!   (waiting up to one staleness bound, then 503), and positions only move forward. A read
//!   forwarded here by another gateway (`reads.follower_gateways`) also waits for that
//!   gateway's watermark, and the answer raises it there. Per key, answers never go back
//!   either: the overlay keeps a key's newest record, the reader's view only moves forward,
//!   and overlay records are dropped only once the view holds them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::{NodeConfig, ObjectStoreConfig, ReadsConfig};
use crate::error::{Error, Result};
use crate::reads::cache::HotCache;
use crate::reads::overlay::{self, Bracket, Merging, Overlay, Recent};
use crate::reads::tail::{LogTails, Sink, Subscription};
use crate::shard::ShardId;
use crate::storage::log::checkpoint::{self, Marker};
use crate::storage::log::format::Segment;
use crate::storage::objstore::ClusterStore;
use crate::storage::store::{now_ms, BlockCache, Entry, ShardReader, ShardScan};
use crate::tasks::Tasks;

/// Most follower reads finishing in tasks of their own at once (see [`Followers::read`]).
const MAX_READS_IN_TASKS: usize = 1024;

/// A follower's reader re-reads the shard's manifest every this many poll intervals.
const READER_POLLS: u32 = 10;

/// How long a follower's replaced reader stays open for the reads and scans begun on it.
const REPLACED_READER_GRACE: Duration = Duration::from_secs(30);

/// Every this many poll intervals a follower reads the published checkpoint even without a
/// reason to: a safety net for an owner change it was not told of.
const PUBLISHED_EVERY_POLLS: u32 = 30;

/// How long a read retries while the reader installs a new view under it (see
/// [`overlay::Bracket`]); the install takes microseconds.
const BRACKET_RETRIES: u32 = 50;

/// The claim epoch of each shard's owner in this gateway's view of the cluster (`None`:
/// unowned, or no view).
pub type OwnerEpochs = Arc<dyn Fn(ShardId) -> Option<i64> + Send + Sync>;

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

/// What reads waiting on a follower look at.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// See "Position".
    position: u64,
    /// The tail has read its log up to an object that did not exist yet (or to its end).
    caught_up: bool,
    /// The follower stopped: a read of the object store failed, or it could not anchor.
    closed: bool,
}

/// An open follower of one shard.
pub struct Follower {
    /// Unique to this follower in this process: the scope of its cached answers, which stay
    /// valid when its reader is replaced (they carry the position they were read at).
    id: u64,
    /// Replaced by a newer one to anchor the tail after an owner change (see "Position").
    reader: std::sync::RwLock<Arc<ShardReader>>,
    view: Arc<View>,
    last_used: Mutex<Instant>,
    /// Cancelled when the follower is retired: stops its task.
    stop: CancellationToken,
}

/// The part of a follower its log's tail writes to.
struct View {
    shard: ShardId,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    /// Wakes the follower's task: its tail ended, lost an object or met another owner.
    wake: Notify,
    /// The last advance of the overlay, for lag samples.
    advance: Mutex<Advance>,
}

struct State {
    overlay: Overlay,
    /// The checkpoint the tail started after.
    base: Option<Marker>,
    /// See "Position".
    anchored: bool,
    /// The tail subscription, while its log is being read.
    sub: Option<Arc<Subscription>>,
    /// The base's log ended in a fence.
    ended: bool,
    /// The highest version of the shard under the base's epoch read from the log (or the
    /// base's `max_version`).
    seen: u64,
    /// The reader's view `D` last looked at.
    installed: u64,
    position: u64,
    caught_up: bool,
    /// Look for a newer checkpoint: the owner changed or the tail lost its way.
    rebase: bool,
    closed: Option<String>,
    /// The highest version put in the overlay.
    top: u64,
}

impl State {
    fn new(base: Option<Marker>, installed: u64) -> Self {
        let seen = base.as_ref().map_or(0, |b| b.max_version);
        let mut state = State {
            overlay: Overlay::default(),
            caught_up: base.is_none(),
            base,
            anchored: true,
            sub: None,
            ended: false,
            seen,
            installed,
            position: 0,
            rebase: false,
            closed: None,
            top: 0,
        };
        state.reposition();
        state
    }

    fn reposition(&mut self) {
        let tailed = if self.anchored { self.seen } else { 0 };
        self.position = self.position.max(self.installed).max(tailed);
    }

    fn progress(&self) -> Progress {
        Progress {
            position: self.position,
            caught_up: self.caught_up,
            closed: self.closed.is_some(),
        }
    }

    fn is_current(&self, sub: &Subscription) -> bool {
        self.sub.as_deref().is_some_and(|s| std::ptr::eq(s, sub))
    }

    /// Anchors the tail if the view or the overlay holds every write up to the base's
    /// `max_version`: `P` reaches the version before it (the marker's own version is not a
    /// write). Returns whether the tail is anchored.
    fn maybe_anchor(&mut self) -> bool {
        if !self.anchored
            && self
                .base
                .as_ref()
                .is_some_and(|b| self.position >= b.max_version.saturating_sub(1))
        {
            self.anchored = true;
            self.reposition();
        }
        self.anchored
    }
}

impl View {
    fn publish(&self, state: &State) {
        let progress = state.progress();
        self.progress.send_if_modified(|p| {
            let changed = p.position != progress.position
                || p.caught_up != progress.caught_up
                || p.closed != progress.closed;
            *p = progress;
            changed
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self, why: String) {
        let mut state = self.lock();
        if state.closed.is_none() {
            tracing::debug!(shard = %self.shard, why, "follower closed");
            state.closed = Some(why);
        }
        if let Some(sub) = state.sub.take() {
            sub.cancel();
        }
        self.publish(&state);
    }
}

impl Sink for View {
    fn deliver(&self, sub: &Subscription, _seq: u64, segment: &Segment) {
        let Segment::Records { shards, groups, .. } = segment else {
            return;
        };
        if !shards.contains(&self.shard) {
            return;
        }
        let mut state = self.lock();
        if !state.is_current(sub) {
            return;
        }
        let epoch = state.base.as_ref().map(|b| b.epoch);
        let before = state.top;
        for r in groups.iter().flatten().filter(|r| r.shard == self.shard) {
            state.overlay.apply(r);
            state.top = state.top.max(r.version);
            if Some(r.epoch) == epoch {
                state.seen = state.seen.max(r.version);
            } else {
                // Another claim on the shard wrote to this log: it changed owners since
                // the base, and the versions between may be in a log not tailed here.
                state.rebase = true;
                self.wake.notify_one();
            }
        }
        if state.top > before && state.caught_up {
            *self.advance.lock().unwrap_or_else(|e| e.into_inner()) = Advance {
                from: before,
                to: state.top,
                at_ms: now_ms(),
            };
        }
        state.reposition();
        self.publish(&state);
    }

    fn polled(&self, sub: &Subscription, _frontier: u64) {
        let mut state = self.lock();
        if state.is_current(sub) && !state.caught_up {
            state.caught_up = true;
            let top = state.top;
            *self.advance.lock().unwrap_or_else(|e| e.into_inner()) = Advance {
                from: top,
                to: top,
                at_ms: 0,
            };
            self.publish(&state);
        }
    }

    fn missing(&self, sub: &Subscription, seq: u64) {
        let mut state = self.lock();
        if state.is_current(sub) {
            tracing::debug!(
                shard = %self.shard,
                log = sub.log(),
                seq,
                "tailed object gone; looking for a newer checkpoint"
            );
            state.sub = None;
            state.rebase = true;
            // Nothing more to wait for in this log: the checkpoint past it is newer.
            state.caught_up = true;
            self.publish(&state);
            self.wake.notify_one();
        }
    }

    fn ended(&self, sub: &Subscription, fence: u64) {
        let mut state = self.lock();
        if state.is_current(sub) {
            tracing::debug!(
                shard = %self.shard,
                log = sub.log(),
                fence,
                "tailed log sealed; looking for the new owner's"
            );
            state.sub = None;
            state.ended = true;
            state.caught_up = true;
            state.rebase = true;
            self.publish(&state);
            self.wake.notify_one();
        }
    }

    fn failed(&self, sub: &Subscription, error: &str) {
        if self.lock().is_current(sub) {
            self.close(format!("reading log {} failed: {error}", sub.log()));
        }
    }
}

impl Follower {
    /// Unique to this follower in this process (the scope of its cached answers).
    pub(crate) fn incarnation(&self) -> u64 {
        self.id
    }

    /// See "Position": every write of the shard up to it is visible to this follower's reads.
    pub(crate) fn position(&self) -> u64 {
        self.view.progress.borrow().position
    }

    fn reader(&self) -> Arc<ShardReader> {
        Arc::clone(&self.reader.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether `reader` is still the follower's reader.
    fn is_reader(&self, reader: &Arc<ShardReader>) -> bool {
        Arc::ptr_eq(
            reader,
            &self.reader.read().unwrap_or_else(|e| e.into_inner()),
        )
    }

    fn is_closed(&self) -> bool {
        self.reader().is_closed() || self.view.progress.borrow().closed
    }

    fn unavailable(&self, reason: &str) -> Error {
        Error::ShardUnavailable {
            shard: self.view.shard,
            reason: reason.to_string(),
        }
    }

    /// Records a lag sample if `entry` became visible in the follower's last advance: the
    /// time from the owner accepting the write to this follower first being able to serve it.
    pub(crate) fn sample_lag(&self, entry: &Entry, samples: &LagSamples) {
        let a = *self.view.advance.lock().unwrap_or_else(|e| e.into_inner());
        if entry.version > a.from && entry.version <= a.to && entry.written_at_ms > 0 {
            samples.push((a.at_ms - entry.written_at_ms).max(0) as f64 / 1000.0);
        }
    }

    /// The live value of `key`, by the merge rule.
    async fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let key = Bytes::copy_from_slice(key);
        for _ in 0..BRACKET_RETRIES {
            if self.is_closed() {
                return Err(self.unavailable("the follower closed"));
            }
            // ORDERING: the reader's view bounds (`installed_seq` is reported after a view
            // is installed, so the read sees at least it), then the overlay, then the read,
            // then the upper bound. An overlay record dropped before the overlay is read is
            // in every view of this reader from then on; a reader replaced meanwhile (whose
            // successor's view may be what the overlay was trimmed to) retries.
            let reader = self.reader();
            let (low, above) = (reader.installed_seq(), reader.durable_seq());
            let recent: Option<Recent> = self.view.lock().overlay.get(&key).cloned();
            // A record newer than anything the reader's view has now decides the key without
            // reading it: a recently written key costs no block fetch (and no hedge to the
            // owner while the follower's blocks are cold).
            if let Some(r) = recent.as_ref().filter(|r| r.version > above) {
                return Ok(r.live(&key, now_ms()));
            }
            let found = match reader.get(&key).await {
                Ok(found) => found,
                // Replaced (and closed) under the read: read the new one.
                Err(_) if !self.is_reader(&reader) => continue,
                Err(e) => return Err(e),
            };
            let bracket = Bracket {
                low,
                high: reader.durable_seq(),
            };
            let merged = overlay::merge(&key, found, recent.as_ref(), bracket, now_ms());
            if let Some(merged) = merged.filter(|_| self.is_reader(&reader)) {
                return Ok(merged);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(self.unavailable("the follower's view kept changing under the read"))
    }

    /// Iterates the live entries in `range`, by the merge rule.
    pub(crate) async fn scan(
        &self,
        range: (std::ops::Bound<Bytes>, std::ops::Bound<Bytes>),
    ) -> Result<FollowerScan> {
        for _ in 0..BRACKET_RETRIES {
            if self.is_closed() {
                return Err(self.unavailable("the follower closed"));
            }
            // ORDERING: as in `get`. The scan's view is taken when it opens.
            let reader = self.reader();
            let low = reader.installed_seq();
            let recent = self.view.lock().overlay.range_above(&range, low);
            let inner = match reader.scan(range.clone()).await {
                Ok(inner) => inner,
                Err(_) if !self.is_reader(&reader) => continue,
                Err(e) => return Err(e),
            };
            let high = reader.durable_seq();
            if recent.iter().all(|(_, r)| r.version > high) && self.is_reader(&reader) {
                return Ok(FollowerScan {
                    inner,
                    merging: Box::new(Merging::new(recent, now_ms())),
                });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Err(self.unavailable("the follower's view kept changing under the scan"))
    }
}

/// A follower's scan: its reader's, merged with its overlay.
pub struct FollowerScan {
    inner: ShardScan,
    /// Boxed: the scan sits beside owner scans (`ShardScan`) in one enum.
    merging: Box<Merging>,
}

impl FollowerScan {
    /// Returns the next live entry.
    pub async fn next(&mut self) -> Result<Option<Entry>> {
        loop {
            if self.merging.wants_reader() {
                let next = self.inner.next().await?;
                self.merging.push_reader(next);
            }
            if let Some(next) = self.merging.step() {
                return Ok(next);
            }
        }
    }
}

/// What followers need to open readers and tails, and their upkeep.
struct Env {
    store: ClusterStore,
    tasks: Tasks,
    object_store: ObjectStoreConfig,
    blocks: BlockCache,
    tails: LogTails,
    poll_interval: Duration,
    owner_epochs: OwnerEpochs,
}

impl Env {
    /// Starts tailing `base`'s log after it.
    fn subscribe(&self, view: &Arc<View>, base: &Marker) -> Arc<Subscription> {
        let sink: Weak<View> = Arc::downgrade(view);
        let sink: Weak<dyn Sink> = sink;
        self.tails.subscribe(&base.log, base.through_seq + 1, sink)
    }

    /// Opens a reader of `shard`'s checkpoints. It re-reads the manifest only every
    /// [`READER_POLLS`] poll intervals: freshness comes from the log, and the reader's new
    /// views only let the overlay shrink.
    async fn open_reader(&self, shard: ShardId) -> Result<ShardReader> {
        ShardReader::open(
            shard,
            &self.store,
            &self.object_store,
            self.poll_interval * READER_POLLS,
            &self.blocks,
        )
        .await
    }
}

/// The follower's own upkeep, every poll interval and whenever its reader's view or its
/// tail changes.
struct Upkeep {
    follower: Arc<Follower>,
    env: Arc<Env>,
    last_published: Option<Instant>,
}

impl Upkeep {
    async fn run(mut self) {
        let mut reader = self.follower.reader();
        let mut status = reader.subscribe();
        let mut ticks = tokio::time::interval(self.env.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let view = Arc::clone(&self.follower.view);
        let stop = self.follower.stop.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                changed = status.changed() => if changed.is_err() { return },
                _ = view.wake.notified() => {}
                _ = ticks.tick() => {}
            }
            if let Err(e) = self.step().await {
                view.close(e.to_string());
            }
            if self.follower.is_closed() {
                view.close("its reader closed".into());
                return;
            }
            if !self.follower.is_reader(&reader) {
                reader = self.follower.reader();
                status = reader.subscribe();
            }
        }
    }

    async fn step(&mut self) -> Result<()> {
        let view = &self.follower.view;
        self.trim();
        // A newer owner in this gateway's view: its checkpoint names its log.
        if let Some(epoch) = (self.env.owner_epochs)(view.shard) {
            let mut state = view.lock();
            if state.base.as_ref().is_none_or(|b| epoch > b.epoch) {
                state.rebase = true;
            }
        }
        let rebase = view.lock().rebase;
        let since = self.last_published.map(|t| t.elapsed());
        let poll = self.env.poll_interval;
        // Looking for a new owner's checkpoint: once per poll interval. Otherwise, rarely.
        let due = since.is_none_or(|t| t >= poll * if rebase { 1 } else { PUBLISHED_EVERY_POLLS });
        if due {
            self.last_published = Some(Instant::now());
            if let Some(m) = checkpoint::published(&self.env.store, view.shard).await? {
                self.consider(m);
            }
        }
        let anchored = view.lock().maybe_anchor();
        if !anchored {
            self.reanchor().await?;
        }
        view.publish(&view.lock());
        Ok(())
    }

    /// Drops from the overlay what the reader's view now holds.
    fn trim(&self) {
        let installed = self.follower.reader().installed_seq();
        let view = &self.follower.view;
        let mut state = view.lock();
        if installed > state.installed {
            state.installed = installed;
            state.overlay.trim(installed);
            state.reposition();
            view.publish(&state);
        }
    }

    /// Anchors the tail on its new base by replacing the reader with one opened now. The
    /// base was read (published) before this open, and was published once the database
    /// held every write up to its `max_version`: the new reader's first view holds them.
    async fn reanchor(&self) -> Result<()> {
        let (follower, view) = (&self.follower, &self.follower.view);
        let fresh = Arc::new(self.env.open_reader(view.shard).await?);
        let old = std::mem::replace(
            &mut *follower.reader.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        tracing::debug!(
            shard = %view.shard,
            "follower reopened its reader to anchor on a new owner's checkpoint"
        );
        {
            let mut state = view.lock();
            state.anchored = true;
            state.reposition();
            view.publish(&state);
        }
        self.trim();
        // Reads and scans begun on the old reader finish on it first.
        self.env
            .tasks
            .spawn("close a replaced follower reader", async move {
                tokio::time::sleep(REPLACED_READER_GRACE).await;
                if let Err(e) = old.close().await {
                    tracing::debug!(error = %e, "closing a replaced follower reader failed");
                }
            });
        Ok(())
    }

    /// Moves the tail to `marker` if it is newer than the base (see "Which log, from
    /// where").
    fn consider(&self, marker: Marker) {
        let view = &self.follower.view;
        let mut state = view.lock();
        if state.closed.is_some()
            || state
                .base
                .as_ref()
                .is_some_and(|b| marker.order() <= b.order())
        {
            return;
        }
        let same_owner = state
            .base
            .as_ref()
            .is_some_and(|b| b.log == marker.log && b.epoch == marker.epoch);
        let read_past = state
            .sub
            .as_ref()
            .is_some_and(|s| s.next() > marker.through_seq);
        if same_owner && (read_past || state.ended) && state.anchored {
            // A later checkpoint of the owner and log being tailed (or sealed), which the
            // tail has read past: every write before it is in objects already read, and
            // versions up to its own are spoken for.
            state.seen = state.seen.max(marker.max_version);
            state.base = Some(marker);
            state.reposition();
            view.publish(&state);
            return;
        }
        tracing::debug!(
            shard = %view.shard,
            log = marker.log,
            through_seq = marker.through_seq,
            "follower moves to a newer checkpoint"
        );
        if let Some(old) = state.sub.take() {
            old.cancel();
        }
        state.sub = Some(self.env.subscribe(view, &marker));
        state.seen = marker.max_version;
        state.base = Some(marker);
        state.anchored = false;
        state.ended = false;
        state.caught_up = false;
        state.rebase = false;
        // Anchored at once if the position already covers the base (the tail read the old
        // owner's log to its end); else `step` replaces the reader.
        state.maybe_anchor();
        view.publish(&state);
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
    use crate::config::StorageConfig;
    use crate::storage::commit::CommitLog;
    use crate::storage::log::format::Op;
    use crate::storage::log::writer::WriterConfig;
    use crate::storage::store::ShardStore;
    use std::sync::atomic::AtomicI64;

    const POLL: Duration = Duration::from_millis(50);

    struct Fixture {
        store: ClusterStore,
        followers: Arc<Followers>,
        owner: Arc<AtomicI64>,
        tasks: Tasks,
    }

    async fn fixture() -> Fixture {
        let mut config = NodeConfig::default();
        config.object_store.url = "memory://".into();
        config.storage.shard_count = 2;
        config.reads.follower_poll_interval = POLL;
        let store = crate::storage::objstore::open(&config.object_store).unwrap();
        let owner = Arc::new(AtomicI64::new(0));
        let epochs = Arc::clone(&owner);
        let owner_epochs: OwnerEpochs = Arc::new(move |_| {
            let e = epochs.load(Ordering::Relaxed);
            (e > 0).then_some(e)
        });
        let tasks = Tasks::new();
        let followers = Arc::new(Followers::new(
            &config,
            store.clone(),
            BlockCache::new(1 << 20),
            Arc::new(HotCache::new(1 << 20)),
            owner_epochs,
            tasks.clone(),
        ));
        Fixture {
            store,
            followers,
            owner,
            tasks,
        }
    }

    /// Opens shard `n` as its owner under `epoch` through `log`, recovered (a takeover).
    async fn own(
        store: &ClusterStore,
        log: &Arc<CommitLog>,
        n: u32,
        epoch: i64,
    ) -> Arc<ShardStore> {
        let db = ShardStore::open(
            ShardId(n),
            store,
            &StorageConfig::default(),
            &ObjectStoreConfig::default(),
            &BlockCache::new(1 << 20),
            false,
        )
        .await
        .unwrap();
        let db = Arc::new(db);
        log.recover(&db, epoch).await.unwrap();
        db
    }

    async fn write(
        log: &Arc<CommitLog>,
        db: &Arc<ShardStore>,
        epoch: i64,
        key: &str,
        value: Option<&str>,
    ) -> u64 {
        let op = match value {
            Some(v) => Op::Put {
                value: Bytes::from(v.to_string()),
                expires_at_ms: None,
            },
            None => Op::Delete,
        };
        Arc::clone(log)
            .commit(
                Arc::clone(db),
                epoch,
                vec![(Bytes::from(key.to_string()), op)],
            )
            .await
            .unwrap()
    }

    async fn read(f: &Fixture, shard: u32, floor: u64, key: &str) -> Option<String> {
        let follower = tokio::time::timeout(
            Duration::from_secs(10),
            f.followers.get(ShardId(shard), floor),
        )
        .await
        .expect("the follower reached the floor")
        .unwrap();
        assert!(follower.position() >= floor);
        let e = f.followers.read(&follower, key.as_bytes()).await.unwrap();
        e.map(|e| String::from_utf8(e.value.to_vec()).unwrap())
    }

    async fn scan(f: &Fixture, shard: u32) -> Vec<(String, String)> {
        let follower = f.followers.get(ShardId(shard), 0).await.unwrap();
        let mut scan = follower
            .scan((std::ops::Bound::Unbounded, std::ops::Bound::Unbounded))
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(e) = scan.next().await.unwrap() {
            out.push((
                String::from_utf8(e.key.to_vec()).unwrap(),
                String::from_utf8(e.value.to_vec()).unwrap(),
            ));
        }
        out
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Reads merge the checkpoint (SSTs) with the owner's log past it: an overwrite, a
    /// delete and a new key that exist only in the log are seen, by point reads and scans,
    /// and a later checkpoint changes nothing but the overlay's size.
    #[tokio::test]
    async fn a_follower_merges_its_checkpoint_with_the_log_past_it() {
        let f = fixture().await;
        let log = CommitLog::start(f.store.clone(), "a", WriterConfig::default());
        let db = own(&f.store, &log, 0, 1).await;
        f.owner.store(1, Ordering::Relaxed);
        write(&log, &db, 1, "k1", Some("one")).await;
        write(&log, &db, 1, "gone", Some("x")).await;
        write(&log, &db, 1, "kept", Some("sst")).await;
        log.checkpoint(&db, 1, false).await.unwrap();
        write(&log, &db, 1, "k1", Some("two")).await;
        write(&log, &db, 1, "gone", None).await;
        let last = write(&log, &db, 1, "k2", Some("new")).await;

        assert_eq!(read(&f, 0, last, "k1").await.as_deref(), Some("two"));
        assert_eq!(read(&f, 0, last, "gone").await, None);
        assert_eq!(read(&f, 0, last, "k2").await.as_deref(), Some("new"));
        assert_eq!(read(&f, 0, last, "kept").await.as_deref(), Some("sst"));
        let all = pairs(&[("k1", "two"), ("k2", "new"), ("kept", "sst")]);
        assert_eq!(scan(&f, 0).await, all);

        // Writes after the open arrive through the tail.
        let v = write(&log, &db, 1, "k3", Some("three")).await;
        assert_eq!(read(&f, 0, v, "k3").await.as_deref(), Some("three"));

        // A checkpoint: once the reader's view has it, the overlay empties; reads agree.
        log.checkpoint(&db, 1, false).await.unwrap();
        let follower = f.followers.get(ShardId(0), 0).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while follower.view.lock().overlay.len() > 0 {
            assert!(Instant::now() < deadline, "the overlay was never trimmed");
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(read(&f, 0, v, "gone").await, None);
        let all = pairs(&[
            ("k1", "two"),
            ("k2", "new"),
            ("k3", "three"),
            ("kept", "sst"),
        ]);
        assert_eq!(scan(&f, 0).await, all);
        f.followers.close_all().await;
        f.tasks.shutdown().await;
    }

    /// After a failover the follower moves to the new owner's log: the old log ends in the
    /// new owner's fence, the new owner's writes (never checkpointed) are seen, and the
    /// position never goes back.
    #[tokio::test]
    async fn a_follower_moves_to_the_new_owners_log() {
        let f = fixture().await;
        let a = CommitLog::start(f.store.clone(), "a", WriterConfig::default());
        let db_a = own(&f.store, &a, 0, 1).await;
        f.owner.store(1, Ordering::Relaxed);
        let v1 = write(&a, &db_a, 1, "k", Some("a1")).await;
        assert_eq!(read(&f, 0, v1, "k").await.as_deref(), Some("a1"));
        let v2 = write(&a, &db_a, 1, "k", Some("a2")).await;
        assert_eq!(read(&f, 0, v2, "k").await.as_deref(), Some("a2"));
        let before = f.followers.get(ShardId(0), v2).await.unwrap().position();

        // B takes over (A never checkpointed since its takeover): fences A's database,
        // seals A's log, replays it, and checkpoints into its own log.
        let b = CommitLog::start(f.store.clone(), "b", WriterConfig::default());
        let db_b = own(&f.store, &b, 0, 2).await;
        f.owner.store(2, Ordering::Relaxed);
        let v3 = write(&b, &db_b, 2, "k", Some("b1")).await;
        assert!(v3 > v2);
        let follower = f.followers.get(ShardId(0), v3).await.unwrap();
        assert!(follower.position() >= before);
        assert_eq!(read(&f, 0, v3, "k").await.as_deref(), Some("b1"));
        let base = follower.view.lock().base.clone().unwrap();
        assert!(base.log.starts_with("b-"), "tails {}", base.log);
        assert!(follower.view.lock().anchored);
        f.followers.close_all().await;
        f.tasks.shutdown().await;
    }

    /// A planned hand-over leaves no trace in the old log: the owner epoch in the gateway's
    /// view sends the follower to the new owner's published checkpoint and log.
    #[tokio::test]
    async fn a_follower_moves_to_the_new_owners_log_after_a_clean_handover() {
        let f = fixture().await;
        let a = CommitLog::start(f.store.clone(), "a", WriterConfig::default());
        let db_a = own(&f.store, &a, 0, 1).await;
        f.owner.store(1, Ordering::Relaxed);
        let v1 = write(&a, &db_a, 1, "k", Some("a1")).await;
        assert_eq!(read(&f, 0, v1, "k").await.as_deref(), Some("a1"));
        a.checkpoint(&db_a, 1, true).await.unwrap();
        db_a.close().await.unwrap();

        let b = CommitLog::start(f.store.clone(), "b", WriterConfig::default());
        let db_b = own(&f.store, &b, 0, 2).await;
        f.owner.store(2, Ordering::Relaxed);
        let v2 = write(&b, &db_b, 2, "k", Some("b1")).await;
        assert_eq!(read(&f, 0, v2, "k").await.as_deref(), Some("b1"));
        f.followers.close_all().await;
        f.tasks.shutdown().await;
    }

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
