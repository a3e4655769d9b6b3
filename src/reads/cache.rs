//! `HotCache`: the process-wide cache of hot keys (moka, bounded by bytes).
//!
//! Entries are keyed by `(scope, key)`, where `scope` is the incarnation of the open database
//! (owner) or follower that produced them ([`crate::storage::store::ShardStore::incarnation`]). A new
//! opening of a shard gets a new scope, so entries of a lost shard are never served again; they
//! are also invalidated in bulk ([`HotCache::drop_scope`]) to give their memory back.
//!
//! **Owner entries** (strong reads) must never be older than the last acknowledged write.
//! Invariants that make that hold without relying on expiry:
//! 1. A write updates its keys' entries after it is durable and before it is acknowledged
//!    ([`HotCache::record_write`]), keeping the highest version (writes of one key may
//!    finish out of order).
//! 2. A deletion is recorded as a versioned `Absent` entry, not a removal, so an older value
//!    read before the deletion cannot be filled back in over it.
//! 3. A read fills a missing entry only if no write to the key's stripe finished while it read
//!    ([`HotCache::fill`] re-checks the stripe's write counter inside moka's per-key atomic
//!    compute, the same lock [`HotCache::record_write`] takes). Without it a fill of a value
//!    read before a write could land after that write's update was evicted or rejected by
//!    moka's admission policy.
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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::ops::compute::Op;
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

/// The hot-key cache shared by every shard of the process.
pub struct HotCache {
    cache: Cache<CacheKey, Slot>,
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
        HotCache { cache, stats }
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
        self.cache
            .entry(CacheKey { scope, key })
            .and_compute_with(|current| {
                // An equal version is re-filled: that renews a follower entry's age.
                let newer = current.is_some_and(|c| c.value().cached.version() > found.version());
                if newer || !unchanged() {
                    Op::Nop
                } else {
                    Op::Put(Slot {
                        cached: found,
                        filled: Instant::now(),
                        as_of,
                    })
                }
            });
    }

    /// Records a durable write of `key` (before it is acknowledged): its new value, or its
    /// deletion, at `version`. Keeps the newer version if the cache already has one.
    pub fn record_write(&self, scope: u64, key: Bytes, written: Cached) {
        self.cache
            .entry(CacheKey { scope, key })
            .and_compute_with(|current| {
                if current.is_some_and(|c| c.value().cached.version() >= written.version()) {
                    Op::Nop
                } else {
                    Op::Put(Slot {
                        cached: written,
                        filled: Instant::now(),
                        as_of: 0,
                    })
                }
            });
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
            c.record_write(1, Bytes::from(i.to_string()), value(i + 1, &big));
        }
        assert!(c.weighted_bytes() <= 1 << 20, "{}", c.weighted_bytes());
        assert!(c.stats().evictions.load(Ordering::Relaxed) > 0);
    }
}
