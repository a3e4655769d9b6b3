//! Point reads: strong reads from the owner (its hot-key cache or its database) and eventual
//! reads from a follower, with the per-gateway floors that keep eventual reads from going
//! back in time (`reads/follower/mod.rs`).
//!
//! A strong read is linearizable: the owner reads the cache (under cache rule 4, `cache.rs`)
//! or the database, then confirms its lease still held *after* the read, so nobody else can
//! have owned the shard at the instant it read.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::cluster::placement::{self, Member};
use crate::error::{Error, Result};
use crate::node::slot::ShardSlot;
use crate::node::{Located, Node, Read, ReadSource};
use crate::reads::cache::{Cached, HotCache};
use crate::shard::ShardId;
use crate::storage::store::now_ms;

impl Node {
    /// Returns the durable, live value of `key` (linearizable): from the hot-key cache or the
    /// database of the shard, which this gateway must own.
    pub async fn get(&self, key: &[u8]) -> Result<Read> {
        self.validate_key(key)?;
        let shard = self.shard_of(key);
        let slot = self.shards.slot(shard);
        let entered = self.enter(slot).await?;
        let scope = entered.store.incarnation();
        let stripe = ShardSlot::stripe(key);
        // CACHE RULE 4 (cache.rs): a write of this stripe may be durable, and so already
        // revealed by another path, before its writer records it; until then only the
        // database's durable state is current. The check comes before the lookup.
        let cached = if slot.stripe_settled(stripe) {
            self.hot.get(scope, key, None, 0)
        } else {
            None
        };
        // An expired cached value falls through to the database, which decides expiry.
        let read = match cached {
            Some(Cached::Absent { .. }) => Read {
                entry: None,
                source: ReadSource::Cache,
            },
            Some(Cached::Value(e)) if e.expires_at_ms.is_none_or(|t| t > now_ms()) => Read {
                entry: Some(e),
                source: ReadSource::Cache,
            },
            _ => {
                let stripe = &slot.stripe_writes[stripe];
                let before = stripe.load(Ordering::Acquire);
                let found = self.observe(entered.store.get(key).await)?;
                let filled = found
                    .clone()
                    .map_or(Cached::Absent { version: 0 }, Cached::Value);
                self.hot
                    .fill(scope, Bytes::copy_from_slice(key), filled, 0, || {
                        stripe.load(Ordering::Acquire) == before
                    });
                Read {
                    entry: found,
                    source: ReadSource::Strong,
                }
            }
        };
        self.confirm_read(slot)?;
        Ok(self.served(shard, read))
    }

    /// Returns the value of `key` without contacting its owner: served here if this gateway
    /// owns the shard, else by a follower that has reached at least version `floor` (see
    /// `reads/follower/mod.rs` for the guarantees).
    pub async fn get_eventual(&self, key: &[u8], floor: u64) -> Result<Read> {
        self.validate_key(key)?;
        let shard = self.shard_of(key);
        if self.locate(shard) == Located::Local {
            match self.get(key).await {
                Err(Error::NotOwner { .. }) => {}
                other => return other,
            }
        }
        // The follower serves only once it has replayed up to the floor (the caller's, or what
        // this gateway returned for the shard); so does its cache: an entry read before the
        // follower got there may be older than a version already returned.
        let floor = floor.max(self.watermark(shard));
        let follower = self.followers.get(shard, floor).await?;
        let scope = follower.incarnation();
        let max_age = Some(self.config.reads.follower_cache_ttl);
        let cached = self.hot.get(scope, key, max_age, floor);
        let entry = match cached {
            Some(Cached::Absent { .. }) => None,
            Some(Cached::Value(e)) if e.expires_at_ms.is_none_or(|t| t > now_ms()) => Some(e),
            _ => {
                // The answer holds every write up to the position it was read at.
                let before = follower.position();
                let found = self.observe(self.followers.read(&follower, key).await)?;
                if let Some(e) = &found {
                    follower.sample_lag(e, &self.stats.eventual_lag);
                }
                let filled = found
                    .clone()
                    .map_or(Cached::Absent { version: 0 }, Cached::Value);
                self.hot
                    .fill(scope, Bytes::copy_from_slice(key), filled, before, || {
                        follower.position() == before
                    });
                found
            }
        };
        Ok(self.served(
            shard,
            Read {
                entry,
                source: ReadSource::Eventual,
            },
        ))
    }

    /// Whether this gateway's follower of `shard` is open and caught up with everything the
    /// gateway has returned for the shard, i.e. answers an eventual read without waiting for
    /// an open or a poll. When not, the gateway may ask the owner meanwhile (a strong answer
    /// is also a valid eventual one).
    pub fn follower_ready(&self, shard: ShardId) -> bool {
        self.followers.ready(shard)
    }

    /// The gateway to send this shard's eventual reads to, when it is not this one: the
    /// first of the shard's follower gateways (`reads.follower_gateways`) unless this gateway
    /// owns the shard or is one of them. `None`: read here.
    pub fn follower_gateway(&self, shard: ShardId) -> Option<Member> {
        let k = self.config.reads.follower_gateways;
        let me = &self.session.me().id;
        let view = self.session.view();
        let owner = view.owners.get(&shard.0).map(|o| o.id.as_str());
        if owner == Some(me.as_str()) {
            return None;
        }
        let candidates = view
            .members
            .values()
            .filter(|m| Some(m.id.as_str()) != owner);
        // Every candidate is a follower gateway: no need to rank them (small clusters).
        if k == 0 || candidates.clone().count() <= k {
            return None;
        }
        let chosen = &placement::ranked(shard, candidates)[..k];
        if chosen.iter().any(|m| &m.id == me) {
            return None;
        }
        Some(chosen[0].clone())
    }

    /// The version a follower here must reach before serving `shard`: the highest this gateway
    /// has returned (sent along with reads it forwards to a follower gateway).
    pub fn watermark(&self, shard: ShardId) -> u64 {
        self.followers.watermarks.get(shard)
    }

    /// Records that `version` of a key of `shard` was returned by this gateway (also for reads
    /// forwarded to the owner), so later eventual reads here never go back before it.
    pub fn note_served(&self, shard: ShardId, version: u64) {
        self.followers.watermarks.note(shard, version);
    }

    fn served(&self, shard: ShardId, read: Read) -> Read {
        if let Some(e) = &read.entry {
            self.note_served(shard, e.version);
        }
        let i = match read.source {
            ReadSource::Strong => 0,
            ReadSource::Cache => 1,
            ReadSource::Eventual => 2,
        };
        self.stats.reads[i].fetch_add(1, Ordering::Relaxed);
        read
    }

    /// The hot-key cache.
    pub fn hot_cache(&self) -> &HotCache {
        &self.hot
    }

    /// Followers open now.
    pub fn followers_open(&self) -> u64 {
        self.followers.open_count()
    }

    /// Follower reads that finished after their request had been answered by the owner.
    pub fn follower_reads_finished_late(&self) -> u64 {
        self.followers.finished_late()
    }
}
