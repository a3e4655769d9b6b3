//! Writes: validation, preconditions, and the path from a request to a durable, cached write.
//!
//! Every write to a key holds the key's stripe lock while it checks its precondition against
//! the newest value (in memory or durable) and hands the write to SlateDB; it releases the lock
//! before waiting for durability, so writers of one shard still share WAL flushes (group
//! commit). Because the WAL is ordered, a write that depended on an earlier, unacknowledged
//! write can only become durable after it.
//!
//! A write is acknowledged (returns `Ok`) only after it is durable in the object store and the
//! hot-key cache has recorded it (cache rules 1, 3 and 4 in `cache.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{BadInput, Error, Result};
use crate::node::slot::ShardSlot;
use crate::node::{Node, Precondition, WriteKind, WriteOp};
use crate::reads::cache::Cached;
use crate::shard::ShardId;
use crate::storage::store::{now_ms, Durability, Entry, Mutation, PendingWrite, ShardStore};
use crate::tasks::Tasks;

impl Node {
    /// Writes one key; returns the new version once durable.
    pub async fn put(
        &self,
        key: Bytes,
        value: Bytes,
        ttl_secs: Option<u64>,
        precondition: Precondition,
    ) -> Result<u64> {
        self.apply(vec![WriteOp {
            key,
            kind: WriteKind::Put { value, ttl_secs },
            precondition,
        }])
        .await
    }

    /// Deletes one key (absent keys included); returns once durable.
    pub async fn delete(&self, key: Bytes, precondition: Precondition) -> Result<()> {
        self.apply(vec![WriteOp {
            key,
            kind: WriteKind::Delete,
            precondition,
        }])
        .await
        .map(|_| ())
    }

    /// Applies `ops` atomically: all preconditions hold and every op is applied, or nothing is.
    /// Every key must map to one shard. Returns the version all written keys now have.
    pub async fn apply(&self, ops: Vec<WriteOp>) -> Result<u64> {
        let slot = self.check_write(&ops)?;
        let entered = self.enter(slot).await?;
        let store = &entered.store;
        // Expiry as the cache records it: measured before SlateDB stamps the write, so the
        // cache never believes a value lives longer than the database does.
        let written_ms = now_ms();
        // The new state of each key, versioned once the write is durable.
        let touched: Vec<(Bytes, Option<Entry>)> = ops
            .iter()
            .map(|op| {
                let entry = match &op.kind {
                    WriteKind::Put { value, ttl_secs } => Some(Entry {
                        key: op.key.clone(),
                        value: value.clone(),
                        version: 0,
                        expires_at_ms: ttl_secs
                            .map(|t| written_ms.saturating_add((t as i64).saturating_mul(1000))),
                        written_at_ms: written_ms,
                    }),
                    WriteKind::Delete => None,
                };
                (op.key.clone(), entry)
            })
            .collect();
        let mut stripes: Vec<usize> = ops.iter().map(|op| ShardSlot::stripe(&op.key)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // The stripe locks are held until SlateDB has the write (ordered in the WAL); durability
        // is awaited outside them so concurrent writers share WAL flushes.
        let (pending, mark) = {
            let mut guards = Vec::with_capacity(stripes.len());
            for &s in &stripes {
                guards.push(slot.stripes[s].lock().await);
            }
            for op in &ops {
                self.check_precondition(store, op).await?;
            }
            let mutations = ops
                .into_iter()
                .map(|op| match op.kind {
                    WriteKind::Put { value, ttl_secs } => Mutation::Put {
                        key: op.key,
                        value,
                        ttl_ms: ttl_secs.map(|s| s.saturating_mul(1000)),
                    },
                    WriteKind::Delete => Mutation::Delete { key: op.key },
                })
                .collect();
            // CACHE RULE 4: marked before SlateDB has the write, so before anything can reveal
            // it. Dropped at once if the write is refused (nothing was submitted).
            let mark = PendingMark::new(slot, &stripes);
            let written = store.write(mutations).await;
            (self.observe(written)?, mark)
        };
        // The rest runs in a task of its own so that it finishes, and the cache learns the
        // outcome, even if this request is dropped (client gone, deadline passed): the write
        // may still become durable, and a mark never cleared would only cost cache hits, but
        // an outcome never recorded would leave the cache behind the database.
        let finish = self.tasks.detach(
            "finish write",
            finish_write(
                pending,
                mark,
                Arc::clone(store),
                touched,
                self.tasks.clone(),
                self.record_delay,
            ),
        );
        let version = finish
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("write task failed: {e}"))));
        self.observe(version)
    }

    /// Validates a write's ops and returns the one shard they all map to.
    fn check_write(&self, ops: &[WriteOp]) -> Result<&Arc<ShardSlot>> {
        let limits = &self.config.limits;
        if ops.is_empty() {
            return Err(Error::invalid(
                BadInput::InvalidBatch,
                "a batch needs at least one operation",
            ));
        }
        if ops.len() > limits.max_batch_ops {
            return Err(Error::invalid(
                BadInput::BatchTooLarge,
                format!(
                    "the batch has {} operations; the limit is {}",
                    ops.len(),
                    limits.max_batch_ops
                ),
            ));
        }
        let mut shards: Vec<ShardId> = Vec::with_capacity(ops.len());
        let mut keys: Vec<&[u8]> = Vec::with_capacity(ops.len());
        for op in ops {
            self.validate_key(&op.key)?;
            if let WriteKind::Put { value, ttl_secs } = &op.kind {
                if value.len() > limits.max_value_bytes {
                    return Err(Error::ValueTooLarge {
                        size: value.len(),
                        limit: limits.max_value_bytes,
                    });
                }
                if let Some(ttl) = ttl_secs {
                    if *ttl == 0 || *ttl > limits.max_ttl_secs {
                        return Err(Error::invalid(
                            BadInput::InvalidTtl,
                            format!("ttl must be 1..={} seconds, got {ttl}", limits.max_ttl_secs),
                        ));
                    }
                }
            }
            shards.push(self.shard_of(&op.key));
            keys.push(&op.key);
        }
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::invalid(
                BadInput::DuplicateKey,
                "a batch may name each key at most once",
            ));
        }
        shards.sort_unstable();
        shards.dedup();
        if shards.len() > 1 {
            return Err(Error::CrossShard {
                shards: shards.len(),
            });
        }
        Ok(self.shards.slot(shards[0]))
    }

    async fn check_precondition(&self, store: &Arc<ShardStore>, op: &WriteOp) -> Result<()> {
        if op.precondition == Precondition::None {
            return Ok(());
        }
        let latest = store.get(&op.key, Durability::Latest).await;
        let current = self.observe(latest)?.map(|e| e.version);
        let holds = match op.precondition {
            Precondition::None => true,
            Precondition::IfMatch(v) => current == Some(v),
            Precondition::IfAbsent => current.is_none(),
            Precondition::IfExists => current.is_some(),
        };
        if holds {
            return Ok(());
        }
        // LINEARIZABILITY: the failure was decided on the newest value, which may still be
        // awaiting its WAL flush and so be invisible to reads. Answering 412 now would let a
        // later read see the older value. Make it durable first (a failed flush turns the
        // answer into 503: the write we saw may never happen).
        let durable = store.get(&op.key, Durability::Durable).await;
        if self.observe(durable)?.map(|e| e.version) != current {
            self.observe(store.flush().await)?;
        }
        Err(Error::PreconditionFailed { current })
    }
}

/// Stripes of a slot marked as having a write in flight (cache rule 4), until dropped.
struct PendingMark {
    slot: Arc<ShardSlot>,
    stripes: Vec<usize>,
}

impl PendingMark {
    fn new(slot: &Arc<ShardSlot>, stripes: &[usize]) -> Self {
        for &s in stripes {
            slot.stripe_pending[s].fetch_add(1, Ordering::SeqCst);
        }
        PendingMark {
            slot: Arc::clone(slot),
            stripes: stripes.to_vec(),
        }
    }

    /// Keeps the mark until the slot no longer serves `store` (its cache scope is then dead).
    async fn hold_while_serving(self, store: Arc<ShardStore>) {
        self.slot.stopped_serving(&store).await;
    }
}

impl Drop for PendingMark {
    fn drop(&mut self) {
        for &s in &self.stripes {
            self.slot.stripe_pending[s].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Waits for a submitted write to become durable, then records its keys' new state in the hot
/// cache and clears its mark (cache rules 1, 3 and 4), and returns its version.
async fn finish_write(
    pending: PendingWrite,
    mark: PendingMark,
    store: Arc<ShardStore>,
    touched: Vec<(Bytes, Option<Entry>)>,
    tasks: Tasks,
    record_delay: Option<Duration>,
) -> Result<u64> {
    let version = match pending.durable().await {
        Ok(version) => version,
        Err(e) => {
            // The outcome is unknown and the database is stopping (fenced, or a WAL flush
            // failed): the write may still surface in it or in a follower. Keep the stripes
            // off the cache for as long as this store is served.
            tasks.spawn("hold cache mark", mark.hold_while_serving(store));
            return Err(e);
        }
    };
    if let Some(delay) = record_delay {
        tokio::time::sleep(delay).await;
    }
    let slot = &mark.slot;
    let scope = store.incarnation();
    for (key, _) in &touched {
        slot.stripe_writes[ShardSlot::stripe(key)].fetch_add(1, Ordering::AcqRel);
    }
    for (key, entry) in touched {
        let cached = match entry {
            Some(e) => Cached::Value(Entry { version, ..e }),
            None => Cached::Absent { version },
        };
        slot.hot.record_write(scope, key, cached);
    }
    drop(mark);
    Ok(version)
}
