//! What a gateway keeps of what it returned: per shard, the highest version (for monotonic
//! eventual reads).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::shard::ShardId;

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
