//! What a gateway keeps of what it returned: per shard, the highest version (for monotonic
//! eventual reads), and eventual-read lag samples for the metrics exporter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// Eventual-read lag samples, drained by the metrics exporter.
#[derive(Debug, Default)]
pub struct LagSamples(Mutex<Vec<f64>>);

impl LagSamples {
    /// Most samples kept between two drains.
    const MAX: usize = 10_000;

    pub(super) fn push(&self, seconds: f64) {
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
