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
//! [`Marker`]: crate::storage::log::checkpoint::Marker
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

mod registry;
mod upkeep;
mod view;
mod watermarks;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::reads::overlay::{self, Bracket, Merging, Recent};
use crate::stats::Samples;
use crate::storage::store::{now_ms, Entry, ShardReader, ShardScan};

pub use registry::{Followers, OwnerEpochs};
pub use watermarks::Watermarks;

use view::View;

/// How long a read retries while the reader installs a new view under it (see
/// [`overlay::Bracket`]); the install takes microseconds.
const BRACKET_RETRIES: u32 = 50;

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
    pub(crate) fn sample_lag(&self, entry: &Entry, samples: &Samples) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::reads::cache::HotCache;
    use crate::shard::ShardId;
    use crate::storage::commit::CommitLog;
    use crate::storage::log::format::Op;
    use crate::storage::log::writer::WriterConfig;
    use crate::storage::objstore::ClusterStore;
    use crate::storage::store::{BlockCache, ShardStore};
    use crate::storage::testing::open_shard;
    use crate::tasks::Tasks;
    use std::sync::atomic::{AtomicI64, Ordering};

    pub(super) const POLL: Duration = Duration::from_millis(50);

    pub(super) struct Fixture {
        pub(super) store: ClusterStore,
        pub(super) followers: Arc<Followers>,
        pub(super) owner: Arc<AtomicI64>,
        pub(super) tasks: Tasks,
    }

    pub(super) async fn fixture() -> Fixture {
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
    pub(super) async fn own(
        store: &ClusterStore,
        log: &Arc<CommitLog>,
        n: u32,
        epoch: i64,
    ) -> Arc<ShardStore> {
        let db = Arc::new(open_shard(store, ShardId(n)).await);
        log.recover(&db, epoch).await.unwrap();
        db
    }

    pub(super) async fn write(
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

    pub(super) async fn read(f: &Fixture, shard: u32, floor: u64, key: &str) -> Option<String> {
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
}
