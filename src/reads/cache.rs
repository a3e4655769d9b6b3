//! `HotCache`: the process-wide cache of hot keys (moka, bounded by bytes).
//!
//! Entries are keyed by `(scope, key)`, where `scope` is the incarnation of the open database
//! (owner) or follower that produced them ([`crate::storage::store::ShardStore::incarnation`]). A new
//! opening of a shard gets a new scope, so entries of a lost shard are never served again; they
//! are also invalidated in bulk ([`HotCache::drop_scope`]) to give their memory back.
//!
//! **Owner entries** (strong reads) must never be older than the last acknowledged write.
//! Invariants that make that hold without relying on expiry:
//! 1. A write updates the entries of its keys that are cached after it is durable and before
//!    it is acknowledged ([`HotCache::record_write`]), keeping the highest version (writes of
//!    one key may finish out of order). Keys that are not cached stay so: reads fill the
//!    cache, writes only keep it current (write-around), so a write-heavy workload neither
//!    pays for entries nobody reads nor evicts the ones that are read.
//! 2. A deletion of a cached key is recorded as a versioned `Absent` entry, not a removal, so
//!    an older value read before the deletion cannot be filled back in over it.
//! 3. A read fills a missing entry only if no write to the key's stripe finished while it read
//!    ([`HotCache::fill`] re-checks the stripe's write counter under the key's lock, which
//!    [`HotCache::record_write`] also takes, and the writer bumps the counter before it takes
//!    the lock). So a fill either lands before the write's update, which then finds the entry
//!    and updates it, or sees the counter moved and does nothing. Without it a fill of a
//!    value read before a write could land after that write found the key uncached, or after
//!    its update was evicted or rejected by moka's admission policy.
//!
//! 4. A write's keys are *marked* (per stripe of its shard) before the write is handed to
//!    SlateDB, and the mark is cleared only after the write's outcome is recorded (rule 1).
//!    A strong read serves from the cache only if it found its stripe unmarked, and checks
//!    that before the lookup. Without it, a write made durable by *another* path before its
//!    writer's task ran again (a precondition check flushing it to answer 412, a group flush
//!    revealed by a scan, a follower, a `DELETE If-Match`) would be visible in the database
//!    while the cache still served the older value: a 412 or a scan could reveal version
//!    `v`, and a later cached read return `v - 1`.
//!
//! So after any read or write of version `v` returns, the cache holds `v` or newer, or nothing;
//! and a strong read served from the cache is linearizable. Why (rule 4): let the read find
//! its stripe unmarked at `t` and return version `u` from the cache. Every write of the stripe
//! submitted before `t` had recorded its outcome before `t`, so at `t` the cache held the
//! newest durable version or newer (rules 1-3; versions in the cache never go back). Any write
//! newer than `u` that was revealed before the read returned was submitted after `t`. So
//! `u` was the current state at some instant in `[t, return]`, inside the read.
//!
//! The mark is cleared whatever the request does: the write finishes in a task of its own,
//! so a request dropped mid-write (client gone, deadline) still records the outcome. A write
//! whose durability fails leaves its mark until the shard's store is no longer served, since
//! it might still surface; its cache scope dies with that store.
//!
//! **Follower entries** (eventual reads) carry the time they were read and serve only for
//! `max_age`; they add at most that much to a follower's staleness. They also carry the
//! follower's replay position when read, and a read that must not go back before a floor (a
//! version this gateway, or the one forwarding to it, already returned for the shard) takes
//! only entries read at or after it.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;

use crate::storage::store::Entry;

/// Per-entry bookkeeping bytes counted on top of key and value.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    scope: u64,
    key: Bytes,
}

/// What the cache knows about a key.
#[derive(Clone, Debug)]
pub enum Cached {
    /// The key's live value.
    Value(Entry),
    /// The key is absent as of `version` (0: absent when read, version unknown).
    Absent { version: u64 },
}

impl Cached {
    fn version(&self) -> u64 {
        match self {
            Cached::Value(e) => e.version,
            Cached::Absent { version } => *version,
        }
    }

    /// The entry, or `None` if absent or expired at `now_ms`.
    pub fn live(&self, now_ms: i64) -> Option<&Entry> {
        match self {
            Cached::Value(e) if e.expires_at_ms.is_none_or(|t| t > now_ms) => Some(e),
            _ => None,
        }
    }
}

#[derive(Clone)]
struct Slot {
    cached: Cached,
    filled: Instant,
    /// Follower entries: the follower's replay position (`durable_seq`) when read, so a read
    /// that must not go back before a floor never takes an entry read before it. 0 for owner
    /// entries (never asked for a floor).
    as_of: u64,
}

/// Cache counters for metrics.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: AtomicU64,
    /// Lookups that had to read the database.
    pub misses: AtomicU64,
    /// Entries evicted to stay within the byte bound.
    pub evictions: Arc<AtomicU64>,
}

/// Key lock stripes ([`HotCache::lock`]).
const KEY_LOCKS: usize = 1024;

/// The hot-key cache shared by every shard of the process.
pub struct HotCache {
    cache: Cache<CacheKey, Slot>,
    /// Every change this module makes to a key's entry holds the key's stripe (rules 1-3);
    /// moka itself only ever removes entries (eviction), which never breaks them.
    locks: Box<[Mutex<()>]>,
    hasher: RandomState,
    stats: CacheStats,
}

impl HotCache {
    /// A cache holding at most `max_bytes` of keys and values (0 disables it).
    pub fn new(max_bytes: u64) -> Self {
        let stats = CacheStats::default();
        let evictions = Arc::clone(&stats.evictions);
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, v: &Slot| {
                let value = match &v.cached {
                    Cached::Value(e) => e.value.len(),
                    Cached::Absent { .. } => 0,
                };
                u32::try_from(k.key.len() + value + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_, _, cause| {
                if cause.was_evicted() {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .support_invalidation_closures()
            .build();
        HotCache {
            cache,
            locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
            stats,
        }
    }

    /// The lock stripe of `key`, held while its entry is changed. Never held across an await.
    fn lock(&self, key: &CacheKey) -> MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(key) as usize % KEY_LOCKS;
        // A panic while holding it cannot leave an entry half-changed: moka's calls are atomic.
        self.locks[stripe]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached state of `key` in `scope`, if it was filled less than `max_age` ago
    /// (`None`: any age) as of replay position `min_as_of` or later. Counts a hit or a miss.
    pub fn get(
        &self,
        scope: u64,
        key: &[u8],
        max_age: Option<Duration>,
        min_as_of: u64,
    ) -> Option<Cached> {
        let found = self
            .cache
            .get(&CacheKey {
                scope,
                key: Bytes::copy_from_slice(key),
            })
            .filter(|slot| max_age.is_none_or(|age| slot.filled.elapsed() < age))
            .filter(|slot| slot.as_of >= min_as_of)
            .map(|slot| slot.cached);
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Records what a read found (as of replay position `as_of`, for follower entries), unless
    /// `unchanged()` (checked atomically with respect to [`HotCache::record_write`] of the same
    /// key) says a write may have overtaken the read, or the cache already holds a newer
    /// version. The same version is stored again, which renews its fill time and position
    /// (follower entries serve only while young).
    pub fn fill(
        &self,
        scope: u64,
        key: Bytes,
        found: Cached,
        as_of: u64,
        unchanged: impl FnOnce() -> bool,
    ) {
        let version = found.version();
        let slot = Slot {
            cached: found,
            filled: Instant::now(),
            as_of,
        };
        // An equal version is re-filled: that renews a follower entry's age.
        self.store_unless(CacheKey { scope, key }, slot, |current| {
            current.is_some_and(|c| c.cached.version() > version) || !unchanged()
        });
    }

    /// Records a durable write of `key` (before it is acknowledged) if the key is cached: its
    /// new value, or its deletion, at `version`. Keeps the newer version if the cache already
    /// has one. The caller has bumped the key's stripe write counter first (rule 3).
    pub fn record_write(&self, scope: u64, key: Bytes, written: Cached) {
        let version = written.version();
        let slot = Slot {
            cached: written,
            filled: Instant::now(),
            as_of: 0,
        };
        self.store_unless(CacheKey { scope, key }, slot, |current| {
            current.is_none_or(|c| c.cached.version() >= version)
        });
    }

    /// Stores `slot` at `key` unless `keep`, given what the cache holds there, says otherwise;
    /// both under the key's lock (rules 1-3).
    fn store_unless(&self, key: CacheKey, slot: Slot, keep: impl FnOnce(Option<&Slot>) -> bool) {
        let _locked = self.lock(&key);
        // `contains_key` does not count as an access; most written keys are not cached.
        let current = if self.cache.contains_key(&key) {
            self.cache.get(&key)
        } else {
            None
        };
        if !keep(current.as_ref()) {
            self.cache.insert(key, slot);
        }
    }

    /// Forgets every entry of `scope` (the shard was lost, or its follower closed).
    pub fn drop_scope(&self, scope: u64) {
        // Fails only if invalidation closures were not enabled, which `new` does.
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| k.scope == scope);
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// Bytes currently held (keys, values and bookkeeping), as the weigher counts them.
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Number of entries held.
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(v: u64, data: &str) -> Cached {
        Cached::Value(Entry {
            key: Bytes::from_static(b"k"),
            value: Bytes::copy_from_slice(data.as_bytes()),
            version: v,
            expires_at_ms: None,
            written_at_ms: 0,
        })
    }

    fn version(c: &HotCache, scope: u64) -> Option<u64> {
        c.get(scope, b"k", None, 0).map(|c| c.version())
    }

    #[test]
    fn versions_never_go_back() {
        let c = HotCache::new(1 << 20);
        let k = || Bytes::from_static(b"k");
        c.fill(1, k(), value(2, "two"), 0, || true);
        c.record_write(1, k(), value(5, "five"));
        c.record_write(1, k(), value(3, "three"));
        c.fill(1, k(), value(4, "four"), 0, || true);
        assert_eq!(version(&c, 1), Some(5));
        c.record_write(1, k(), Cached::Absent { version: 7 });
        c.fill(1, k(), value(5, "five"), 0, || true);
        assert_eq!(version(&c, 1), Some(7));
        assert!(c.get(1, b"k", None, 0).unwrap().live(0).is_none());
        // Another scope (a later opening of the shard) sees nothing.
        assert_eq!(version(&c, 2), None);
    }

    #[test]
    fn writes_keep_cached_keys_current_and_leave_the_others_out() {
        let c = HotCache::new(1 << 20);
        c.record_write(1, Bytes::from_static(b"k"), value(5, "five"));
        assert_eq!(version(&c, 1), None, "written, never read: not cached");
        c.fill(1, Bytes::from_static(b"k"), value(5, "five"), 0, || true);
        c.record_write(1, Bytes::from_static(b"k"), value(6, "six"));
        assert_eq!(version(&c, 1), Some(6));
    }

    /// Rules 1 and 3 under a race: a writer makes versions durable and records them while
    /// readers fill what they read and an evictor keeps removing the entry (as moka may at
    /// any time), and a checker asserts that once a version was recorded the cache never
    /// holds an older one. Each fill dawdles between its check and its insert, where a write
    /// that does not take the key's lock would slip in.
    #[test]
    fn a_fill_never_lands_over_a_newer_write() {
        use std::sync::atomic::AtomicBool;
        let c = Arc::new(HotCache::new(1 << 20));
        let durable = Arc::new(AtomicU64::new(1)); // the database's version of "k"
        let writes = Arc::new(AtomicU64::new(0)); // the stripe's write counter
        let recorded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let k = || Bytes::from_static(b"k");
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (c, durable, writes, stop) = (
                    Arc::clone(&c),
                    Arc::clone(&durable),
                    Arc::clone(&writes),
                    Arc::clone(&stop),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let before = writes.load(Ordering::SeqCst);
                        let found = durable.load(Ordering::SeqCst);
                        c.fill(1, k(), value(found, "v"), 0, || {
                            let unchanged = writes.load(Ordering::SeqCst) == before;
                            std::thread::yield_now();
                            unchanged
                        });
                    }
                })
            })
            .collect();
        let evictor = {
            let (c, stop) = (Arc::clone(&c), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    c.cache.invalidate(&CacheKey { scope: 1, key: k() });
                    std::thread::yield_now();
                }
            })
        };
        let writer = {
            let (c, durable, writes, recorded) = (
                Arc::clone(&c),
                Arc::clone(&durable),
                Arc::clone(&writes),
                Arc::clone(&recorded),
            );
            std::thread::spawn(move || {
                for v in 2..20_000 {
                    durable.store(v, Ordering::SeqCst);
                    writes.fetch_add(1, Ordering::SeqCst);
                    c.record_write(1, k(), value(v, "v"));
                    recorded.store(v, Ordering::SeqCst);
                }
            })
        };
        let mut checks = 0u64;
        while !writer.is_finished() {
            let floor = recorded.load(Ordering::SeqCst);
            if let Some(v) = version(&c, 1) {
                assert!(
                    v >= floor,
                    "the cache went back to {v} after {floor} was recorded"
                );
            }
            checks += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for t in readers.into_iter().chain([evictor]) {
            t.join().unwrap();
        }
        writer.join().unwrap();
        assert!(checks > 0);
    }

    #[test]
    fn fill_skipped_when_a_write_overtook_the_read() {
        let c = HotCache::new(1 << 20);
        c.fill(1, Bytes::from_static(b"k"), value(4, "four"), 0, || false);
        assert_eq!(version(&c, 1), None);
        c.fill(1, Bytes::from_static(b"k"), value(4, "four"), 0, || true);
        assert_eq!(version(&c, 1), Some(4));
        c.drop_scope(1);
        assert_eq!(version(&c, 1), None);
    }

    #[test]
    fn refilling_the_same_version_renews_a_follower_entry() {
        let c = HotCache::new(1 << 20);
        let age = Some(Duration::from_millis(20));
        c.fill(1, Bytes::from_static(b"k"), value(4, "four"), 0, || true);
        assert!(c.get(1, b"k", age, 0).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(c.get(1, b"k", age, 0).is_none(), "too old");
        c.fill(1, Bytes::from_static(b"k"), value(4, "four"), 0, || true);
        assert!(c.get(1, b"k", age, 0).is_some(), "renewed");
    }

    #[test]
    fn a_follower_entry_serves_only_reads_whose_floor_it_has_reached() {
        let c = HotCache::new(1 << 20);
        c.fill(1, Bytes::from_static(b"k"), value(1, "one"), 5, || true);
        assert!(c.get(1, b"k", None, 5).is_some());
        assert!(
            c.get(1, b"k", None, 6).is_none(),
            "read before the floor: it may be older than what was returned"
        );
        // Read again after the follower replayed further: the same version, a later position.
        c.fill(1, Bytes::from_static(b"k"), value(1, "one"), 9, || true);
        assert!(c.get(1, b"k", None, 6).is_some());
    }

    #[test]
    fn byte_bound_holds() {
        let c = HotCache::new(1 << 20);
        let big = "x".repeat(64 * 1024);
        for i in 0..100u64 {
            c.fill(1, Bytes::from(i.to_string()), value(i + 1, &big), 0, || {
                true
            });
        }
        assert!(c.weighted_bytes() <= 1 << 20, "{}", c.weighted_bytes());
        assert!(c.stats().evictions.load(Ordering::Relaxed) > 0);
    }
}
