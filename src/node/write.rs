//! Writes: validation, preconditions, and the path from a request to a durable, cached write.
//!
//! Every write to a key holds the key's stripe lock from its precondition check until it is
//! applied to the memtable (or has failed): the memtable holds only writes durable in the
//! commit log, and with the lock held it also holds every earlier write of those keys, so a
//! precondition is decided on the newest value, which is durable. Writes of different keys
//! share log objects (`storage/commit.rs`).
//!
//! A write is acknowledged (returns `Ok`) only after it is durable in the object store, the
//! lease still holds, and the hot-key cache has recorded it (cache rules 1, 3 and 4 in
//! `cache.rs`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::OwnedMutexGuard;

use crate::error::{BadInput, Error, Result};
use crate::node::slot::ShardSlot;
use crate::node::{Node, Precondition, WriteKind, WriteOp};
use crate::reads::cache::Cached;
use crate::shard::ShardId;
use crate::storage::log::format::Op;
use crate::storage::store::{now_ms, Entry, ShardStore};
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
        // Before any lock or mark: a shard out of room makes its own writes wait, not the
        // gateway's log (`ShardStore::admit`).
        store.admit(&self.stats.write_admission_waits).await;
        // The expiry the log record carries, so the cache, the database and any replay agree.
        let written_ms = now_ms();
        let expiry = |ttl_secs: &Option<u64>| {
            ttl_secs.map(|t| written_ms.saturating_add((t as i64).saturating_mul(1000)))
        };
        // The new state of each key, versioned once the write is applied.
        let touched: Vec<(Bytes, Option<Entry>)> = ops
            .iter()
            .map(|op| {
                let entry = match &op.kind {
                    WriteKind::Put { value, ttl_secs } => Some(Entry {
                        key: op.key.clone(),
                        value: value.clone(),
                        version: 0,
                        expires_at_ms: expiry(ttl_secs),
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
        let mut guards = Vec::with_capacity(stripes.len());
        for &s in &stripes {
            guards.push(Arc::clone(&slot.stripes[s]).lock_owned().await);
        }
        for op in &ops {
            self.check_precondition(store, op).await?;
        }
        let records = ops
            .into_iter()
            .map(|op| match op.kind {
                WriteKind::Put { value, ttl_secs } => (
                    op.key,
                    Op::Put {
                        value,
                        expires_at_ms: expiry(&ttl_secs),
                    },
                ),
                WriteKind::Delete => (op.key, Op::Delete),
            })
            .collect();
        // CACHE RULE 4: marked before the write is submitted, so before anything can reveal
        // it.
        let held = Held {
            mark: PendingMark::new(slot, &stripes),
            guards,
        };
        let commit = Arc::clone(&self.commit).commit(Arc::clone(store), entered.epoch, records);
        // The rest runs in a task of its own so that it finishes, the stripe locks are held
        // until the outcome is known, and the cache learns it, even if this request is dropped
        // (client gone, deadline passed): the write may still become durable, and a mark never
        // cleared would only cost cache hits, but an outcome never recorded would leave the
        // cache behind the database.
        let finish = self.tasks.detach(
            "finish write",
            finish_write(
                commit,
                held,
                Arc::clone(store),
                touched,
                self.tasks.clone(),
                self.record_delay,
            ),
        );
        let version = finish
            .await
            .unwrap_or_else(|e| Err(Error::Internal(format!("write task failed: {e}"))));
        let version = self.observe(version)?;
        // SAFETY: acknowledged only while the lease holds. A gateway that lost it may already
        // have been replaced; the new owner sealed this log before serving, so this write,
        // being durable, was in its replay, but its outcome is reported as unknown.
        if !self.session.lease_valid() {
            return Err(Error::ShardUnavailable {
                shard: slot.id,
                reason:
                    "the lease expired before the write was acknowledged; it may have been applied"
                        .into(),
            });
        }
        Ok(version)
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

    /// Checks `op`'s precondition against the memtable: with the key's stripe locked, it
    /// holds the newest write of the key, which is durable.
    async fn check_precondition(&self, store: &Arc<ShardStore>, op: &WriteOp) -> Result<()> {
        if op.precondition == Precondition::None {
            return Ok(());
        }
        let current = self.observe(store.get(&op.key).await)?.map(|e| e.version);
        let holds = match op.precondition {
            Precondition::None => true,
            Precondition::IfMatch(v) => current == Some(v),
            Precondition::IfAbsent => current.is_none(),
            Precondition::IfExists => current.is_some(),
        };
        if holds {
            Ok(())
        } else {
            Err(Error::PreconditionFailed { current })
        }
    }
}

/// What a write holds until its outcome is known: its stripes' locks and its cache mark.
struct Held {
    mark: PendingMark,
    guards: Vec<OwnedMutexGuard<()>>,
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

/// Waits for a submitted write to be durable and applied, then records its keys' new state in
/// the hot cache, clears its mark (cache rules 1, 3 and 4) and unlocks its stripes; returns
/// its version.
async fn finish_write(
    commit: impl Future<Output = Result<u64>>,
    held: Held,
    store: Arc<ShardStore>,
    touched: Vec<(Bytes, Option<Entry>)>,
    tasks: Tasks,
    record_delay: Option<Duration>,
) -> Result<u64> {
    let version = match commit.await {
        Ok(version) => version,
        Err(e) => {
            // The outcome is unknown (the store is unavailable, or the write is durable but
            // its shard stopped): it may still surface, through a replay or a follower. Keep
            // the stripes off the cache for as long as this store is served, and locked until
            // the log has settled the write (the writer retries it): a later write of these
            // keys must not decide its precondition without it.
            let log = store.log().cloned();
            let target = Arc::clone(&store);
            tasks.spawn("hold cache mark", held.mark.hold_while_serving(store));
            tasks.spawn("hold stripes", async move {
                if let Some(log) = log {
                    log.sync_target(target.as_ref()).await;
                }
                drop(held.guards);
            });
            return Err(e);
        }
    };
    if let Some(delay) = record_delay {
        tokio::time::sleep(delay).await;
    }
    let slot = &held.mark.slot;
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
    drop(held);
    Ok(version)
}
