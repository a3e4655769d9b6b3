//! Cluster mode: joining through etcd, keeping the lease, following the cluster view, and
//! moving shards to their rendezvous-hash owners.
//!
//! Protocol (the safety argument is in `lease.rs` and `docs/architecture.md`):
//!
//! - **Join**: grant a lease, register `members/{id}` under it, start the keep-alive and the
//!   watch. Every owner key this gateway creates hangs off the same lease.
//! - **Acquire** (the shard has no owner and this gateway is its HRW choice): create the owner
//!   key in a transaction that requires it to be absent; its create revision is the epoch.
//!   Only then open the database, which fences any previous writer. A previous owner's key is
//!   gone only if it released it or its lease expired, and either way it no longer serves.
//! - **Release** (planned move: another live member is the HRW choice, or shutdown): mark the
//!   slot `Draining` so new requests go elsewhere, wait for in-flight requests (the slot gate),
//!   flush and close the database, then delete the owner key guarded by the epoch. The next
//!   owner opens a cleanly closed database: no WAL to replay.
//! - **Lease lost** (etcd does not know it, says TTL 0, or a whole TTL passed without an
//!   acknowledged keep-alive, e.g. cut off from etcd: `lease.rs`): every owner key is gone
//!   with it, or soon will be; drop every slot without serving another request (they have been
//!   unservable since the deadline), then join again with a new lease as soon as etcd answers,
//!   retrying with backoff. A lost lease is never retried: etcd has answered for it.
//! - Membership changes are acted on after `rebalance_delay` of quiet, so a flapping member
//!   does not move shards back and forth; owner-key changes (releases, expiries) at once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use crate::error::Result;
use crate::etcd::{LeaseHolder, Registration};
use crate::node::{Node, ShardSlot, SlotState};
use crate::placement::{plan, Holding};
use crate::shard::ShardId;

/// Shards acquired or released concurrently by one rebalance pass.
const MOVE_CONCURRENCY: usize = 8;

/// How long a leaving gateway keeps serving after handing its shards over (see `leave`).
const LEAVE_LINGER: Duration = Duration::from_millis(500);

impl Node {
    /// Joins the cluster: lease, registration, keep-alive, watch, rebalancer.
    pub(crate) async fn join(self: &Arc<Self>) -> Result<()> {
        self.new_lease().await?;
        let etcd = self.etcd.clone().expect("cluster mode");
        let (view, cancel) = (self.view.clone(), self.cancel.clone());
        self.tasks
            .spawn(async move { etcd.watch_view(view, cancel).await });
        let node = Arc::clone(self);
        self.tasks.spawn(async move { node.rebalance_loop().await });
        let node = Arc::clone(self);
        self.tasks.spawn(async move { node.track_unowned().await });
        tracing::info!(member = %self.me.id, url = %self.me.url, "joined the cluster");
        Ok(())
    }

    /// Grants a fresh lease, registers this member under it and starts its keep-alive.
    async fn new_lease(self: &Arc<Self>) -> Result<()> {
        let etcd = self.etcd.as_ref().expect("cluster mode");
        let (id, clock) = etcd.start_lease(&self.lease_holder()).await?;
        self.lease_id.store(id, Ordering::SeqCst);
        *self.lease.write().unwrap_or_else(|e| e.into_inner()) = clock;
        Ok(())
    }

    /// This gateway as the holder of its lease: registered as a member.
    fn lease_holder(&self) -> LeaseHolder<'_> {
        LeaseHolder {
            member: Some(&self.me),
            config: &self.config.cluster,
            stats: &self.stats.keepalive,
            tasks: &self.tasks,
            cancel: &self.cancel,
        }
    }

    /// True while `epoch` is this node's current ownership of `shard`, per the lease and view.
    pub(crate) fn still_owner(&self, shard: ShardId, epoch: i64) -> bool {
        self.lease().valid()
            && self
                .view
                .borrow()
                .owners
                .get(&shard.0)
                .is_some_and(|o| o.id == self.me.id && o.epoch == epoch)
    }

    /// Keeps the per-shard time-without-owner accounting up to date with the view.
    async fn track_unowned(self: Arc<Self>) {
        let mut changes = self.view.subscribe();
        let shards = self.config.storage.shard_count;
        loop {
            let now = std::time::Instant::now();
            self.stats
                .unowned
                .observe(&changes.borrow_and_update(), shards, now);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = changes.changed() => if r.is_err() { return },
            }
        }
    }

    async fn rebalance_loop(self: Arc<Self>) {
        let mut changes = self.view.subscribe();
        let delay = self.config.cluster.rebalance_delay;
        let mut members = BTreeMap::new();
        let etcd = self.etcd.clone().expect("cluster mode");
        let registration = Registration::new(etcd, self.me.clone());
        loop {
            // Wake on a view change, on the lease's loss, or periodically to retry what failed.
            let lease = self.lease();
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.leaving.cancelled() => return,
                _ = changes.changed() => {}
                _ = lease.lost() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if self.lease().is_lost() {
                self.rejoin().await;
                continue;
            }
            // Quiet period after a membership change: let a burst (a flapping member, several
            // joins) settle before moving shards. Owner-key changes alone (a release, an
            // expiry) are acted on at once: they are the critical path of every handoff.
            // Only the member set must hold still: other writes under the cluster prefix (a
            // peer acquiring its shards, compactor claims) never end the wait otherwise, and a
            // steady stream of them left this gateway owning nothing.
            while self.view.borrow().members != members {
                members = self.view.borrow().members.clone();
                tokio::select! {
                    _ = self.cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if self.lease().valid() {
                let present = self.view.borrow().members.contains_key(&self.me.id);
                let lease = self.lease_id.load(Ordering::SeqCst);
                registration.check(present, lease).await;
            }
            self.rebalance().await;
        }
    }

    /// One pass: acquire the unowned shards this node should own, release the ones another
    /// live member should own, drop slots whose owner key is gone.
    async fn rebalance(self: &Arc<Self>) {
        if !self.lease().valid() {
            return;
        }
        let view = self.view.borrow().clone();
        if !view.members.contains_key(&self.me.id) {
            return; // our registration is not visible yet (or we are leaving)
        }
        let holdings = self.shards.iter().map(|slot| {
            let holding = match (slot.open_epoch(), &*slot.state.borrow()) {
                (Some(epoch), _) => Holding::Held(epoch),
                (None, SlotState::NotOwned | SlotState::Fenced) => Holding::Free,
                (None, _) => Holding::Busy,
            };
            (slot.id, holding)
        });
        let planned = plan(&view, &self.me.id, holdings);
        let slot = |shard: ShardId| Arc::clone(&self.shards[shard.0 as usize]);
        for (shard, epoch) in planned.lost {
            // Our owner key is gone or belongs to someone else: stop serving at once.
            tracing::warn!(%shard, epoch, "owner key lost; dropping shard");
            self.drop_slot(&slot(shard)).await;
        }
        let acquire: Vec<_> = planned.acquire.into_iter().map(slot).collect();
        let release: Vec<_> = planned
            .release
            .into_iter()
            .map(|(s, e)| (slot(s), e))
            .collect();
        let mut moves: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        for slot in acquire {
            let node = Arc::clone(self);
            moves.push(async move { node.acquire(&slot).await }.boxed());
        }
        for (slot, epoch) in release {
            let node = Arc::clone(self);
            moves.push(async move { node.release(&slot, epoch).await }.boxed());
        }
        run_concurrently(moves).await;
    }

    async fn acquire(self: &Arc<Self>, slot: &Arc<ShardSlot>) {
        let etcd = self.etcd.as_ref().expect("cluster mode");
        let lease = self.lease_id.load(Ordering::SeqCst);
        let epoch = match etcd.acquire(slot.id, &self.me, lease).await {
            Ok(Some(epoch)) => epoch,
            Ok(None) => return, // someone else holds it; the watch will tell us
            Err(e) => {
                tracing::warn!(shard = %slot.id, error = %e, "acquire failed");
                return;
            }
        };
        // Opening fences the previous writer. Only with a valid lease: otherwise our key may
        // already be gone and another owner on its way.
        if !self.lease().valid() {
            self.release_key(slot.id, epoch).await;
            return;
        }
        let started = std::time::Instant::now();
        match self.install(slot, epoch).await {
            Ok(()) => {
                self.stats.ownership_changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(shard = %slot.id, epoch, open_ms = started.elapsed().as_millis() as u64, "acquired shard");
            }
            Err(e) => {
                tracing::warn!(shard = %slot.id, error = %e, "opening acquired shard failed; releasing");
                slot.set(SlotState::NotOwned);
                self.release_key(slot.id, epoch).await;
            }
        }
    }

    /// Planned release: drain, flush and close, then delete the owner key (guarded).
    pub(crate) async fn release(&self, slot: &ShardSlot, epoch: i64) {
        let store = match slot.set(SlotState::Draining) {
            SlotState::Open { store, .. } => store,
            other => {
                slot.set(other);
                return;
            }
        };
        let started = std::time::Instant::now();
        // ORDERING: wait for in-flight requests, close the store, and only then delete the
        // owner key, so the next owner never fences us mid-flush.
        let _drained = slot.gate.write().await;
        if let Err(e) = store.close().await {
            tracing::warn!(shard = %slot.id, error = %e, "closing released shard failed");
        }
        self.release_key(slot.id, epoch).await;
        slot.set(SlotState::NotOwned);
        self.stats.ownership_changes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(shard = %slot.id, epoch, drain_ms = started.elapsed().as_millis() as u64, "released shard");
    }

    /// Deletes our owner key of `shard` if it still has `epoch`.
    pub(crate) async fn release_key(&self, shard: ShardId, epoch: i64) {
        if let Some(etcd) = &self.etcd {
            if let Err(e) = etcd.release(shard, epoch).await {
                tracing::warn!(shard = %shard, error = %e, "deleting owner key failed; it expires with the lease");
            }
        }
    }

    /// Stops serving `slot` immediately (no drain: the ownership is already gone).
    async fn drop_slot(&self, slot: &ShardSlot) {
        if let SlotState::Open { store, .. } = slot.set(SlotState::NotOwned) {
            self.stats.ownership_changes.fetch_add(1, Ordering::Relaxed);
            // Closing may fail if a newer owner fenced us; nothing in it is acknowledged.
            let _ = store.close().await;
        }
    }

    /// After the lease was lost: stops serving every shard at once, then joins again with a
    /// new lease, retrying with backoff until etcd answers (or the node stops or leaves).
    async fn rejoin(self: &Arc<Self>) {
        // Unservable since the deadline already: stop at once, and close the databases in the
        // background (a new owner may have fenced them: nothing in them is unacknowledged).
        let mut closing = Vec::new();
        for slot in &self.shards {
            if let SlotState::Open { store, .. } = slot.set(SlotState::NotOwned) {
                self.stats.ownership_changes.fetch_add(1, Ordering::Relaxed);
                closing.push(store);
            }
        }
        self.tasks.spawn(async move {
            futures::future::join_all(closing.iter().map(|store| store.close())).await;
        });
        let etcd = self.etcd.clone().expect("cluster mode");
        let old = self.lease();
        let old_id = self.lease_id.load(Ordering::SeqCst);
        let mut backoff = Duration::from_millis(100);
        loop {
            let replaced = etcd.replace_lease(old_id, &old, &self.lease_holder()).await;
            match replaced {
                Ok((id, clock)) => {
                    self.lease_id.store(id, Ordering::SeqCst);
                    *self.lease.write().unwrap_or_else(|e| e.into_inner()) = clock;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "rejoin failed; retrying"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.leaving.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Planned departure (SIGTERM): deregister so the others take over, then release every
    /// shard gracefully. Requests keep being served (forwarded) meanwhile.
    pub async fn leave(self: &Arc<Self>) {
        let Some(etcd) = self.etcd.clone() else {
            return;
        };
        self.leaving.cancel(); // no more acquisitions
        if let Err(e) = etcd.deregister(&self.me.id).await {
            tracing::warn!(error = %e, "deregister failed");
        }
        let owned: Vec<(Arc<ShardSlot>, i64)> = self
            .shards
            .iter()
            .filter_map(|s| s.open_epoch().map(|e| (Arc::clone(s), e)))
            .collect();
        let count = owned.len();
        let mut moves: Vec<futures::future::BoxFuture<'static, ()>> = Vec::new();
        for (slot, epoch) in owned {
            let node = Arc::clone(self);
            moves.push(async move { node.release(&slot, epoch).await }.boxed());
        }
        run_concurrently(moves).await;
        tracing::info!(shards = count, "left the cluster");
        if count == 0 {
            return;
        }
        // Gateways whose view still names us as an owner keep forwarding here for as long as
        // the release takes to reach them. Serving on meanwhile answers them `421` (they look
        // again); closing now would break their pooled connections mid-request, and a write
        // whose connection broke has an unknown outcome (`503`).
        tokio::time::sleep(LEAVE_LINGER).await;
    }

    /// Revokes the lease (last step of shutdown), so nothing waits for it to expire.
    pub(crate) async fn revoke_lease(&self) {
        if let Some(etcd) = &self.etcd {
            let id = self.lease_id.load(Ordering::SeqCst);
            if let Err(e) = etcd.revoke(id).await {
                tracing::warn!(error = %e, "revoking the lease failed; it will expire");
            }
        }
    }
}

/// Runs shard moves, at most [`MOVE_CONCURRENCY`] at a time.
async fn run_concurrently(moves: Vec<futures::future::BoxFuture<'static, ()>>) {
    futures::stream::iter(moves)
        .buffer_unordered(MOVE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}
