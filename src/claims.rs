//! Compaction claims: which compactor process may compact which shard, decided through etcd.
//!
//! Compactors are a member set of their own, one level below the gateways' keys
//! (`/tessera/{cluster}/compactor/`, see `etcd.rs`), and follow the gateways' ownership
//! protocol (`ownership.rs`, `lease.rs`):
//!
//! - **Join**: a daemon grants its own lease, registers `compactor/members/{id}` under it and
//!   keeps it alive. Shards are placed by rendezvous hashing over the live compactors
//!   ([`crate::placement::plan`], the gateways' rule), so a compactor joining or leaving moves
//!   about 1/N of the shards.
//! - **Claim**: `compactor/owners/{shard:05}` is created in a transaction that requires it to
//!   be absent, under the claimant's lease; its create revision is the claim's epoch.
//! - **Work** on a shard only while [`Claims::holds`]: the claim is in the watched view and the
//!   lease deadline (last acknowledged keep-alive sent + TTL − margin) has not passed.
//! - **Release** (planned): stop the shard's compactor first, then delete the claim guarded by
//!   its epoch. A lost lease drops every claim at once (etcd deletes them with the lease).
//! - **Batch jobs** (`tessera-compactor --once`) claim shards under their own lease *without*
//!   registering as members: daemons never place shards onto them, and a daemon whose shard is
//!   claimed by a batch job waits until the claim is released or expires.
//!
//! The claim gives availability, not safety: two compactors could overlap briefly if one is
//! paused past its deadline. SlateDB's compactor epoch is the backstop: starting a compactor on
//! a database claims a new epoch in its manifest, and the older compactor's next manifest
//! write fails as fenced, so the database never takes results from two compactors.

use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::etcd::{Etcd, LeaseHolder, Registration};
use crate::lease::{KeepAliveStats, LeaseClock};
use crate::placement::{plan, ClusterView, Holding, Member, Moves};
use crate::shard::ShardId;

/// The etcd sub-prefix of compactor keys.
const COMPACTOR_KEYS: &str = "compactor";

/// A compaction claim this process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The claimed shard.
    pub shard: ShardId,
    /// The claim's epoch: the create revision of its etcd key.
    pub epoch: i64,
}

/// A compactor's session with etcd: its lease, (for daemons) its membership, and its claims.
pub struct Claims {
    etcd: Etcd,
    me: Member,
    /// True for daemons (registered members that shards are placed onto).
    member: bool,
    config: ClusterConfig,
    /// The lease id and its serving deadline.
    lease: RwLock<(i64, Arc<LeaseClock>)>,
    view: watch::Sender<ClusterView>,
    keepalive: Arc<KeepAliveStats>,
    /// Daemons only: re-registers a member key deleted under a live lease.
    registration: Option<Registration>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Claims {
    /// Connects to etcd, grants a lease (registering `me` as a member if `member`) and starts
    /// following the compactors' view.
    pub async fn join(config: &ClusterConfig, me: Member, member: bool) -> Result<Arc<Claims>> {
        if !config.is_clustered() {
            return Err(Error::Config(
                "compactors coordinate through etcd: set cluster.etcd_endpoints (--etcd)".into(),
            ));
        }
        config.validate()?;
        let etcd = Etcd::connect(&config.etcd_endpoints, &config.name, config.etcd_timeout)
            .await?
            .scoped(COMPACTOR_KEYS);
        let keepalive = Arc::new(KeepAliveStats::default());
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let holder = LeaseHolder {
            member: member.then_some(&me),
            config,
            stats: &keepalive,
            tasks: &tasks,
            cancel: &cancel,
        };
        let lease = etcd.start_lease(&holder).await?;
        let registration = member.then(|| Registration::new(etcd.clone(), me.clone()));
        let claims = Arc::new(Claims {
            etcd,
            me,
            member,
            config: config.clone(),
            lease: RwLock::new(lease),
            view: watch::Sender::new(ClusterView::default()),
            keepalive,
            registration,
            cancel,
            tasks,
        });
        let (etcd, view, cancel) = (
            claims.etcd.clone(),
            claims.view.clone(),
            claims.cancel.clone(),
        );
        claims
            .tasks
            .spawn(async move { etcd.watch_view(view, cancel).await });
        Ok(claims)
    }

    /// This compactor.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The compactors' view: live members and claims.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.view.subscribe()
    }

    fn clock(&self) -> Arc<LeaseClock> {
        Arc::clone(&self.lease.read().unwrap_or_else(|e| e.into_inner()).1)
    }

    fn lease_id(&self) -> i64 {
        self.lease.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// True while the lease deadline holds.
    pub fn lease_valid(&self) -> bool {
        self.clock().valid()
    }

    /// True once the lease is lost (etcd does not know it, said TTL 0, or a whole TTL passed
    /// without an acknowledged keep-alive): every claim went with it; call [`Self::renew`].
    pub fn lease_lost(&self) -> bool {
        self.clock().is_lost()
    }

    /// Keep-alive round trips, lease losses and rejoins.
    pub fn lease_stats(&self) -> &KeepAliveStats {
        &self.keepalive
    }

    /// Grants a new lease (and registers again) after the old one was lost.
    pub async fn renew(&self) -> Result<()> {
        let old = self.clock();
        let holder = LeaseHolder {
            member: self.member.then_some(&self.me),
            config: &self.config,
            stats: &self.keepalive,
            tasks: &self.tasks,
            cancel: &self.cancel,
        };
        let lease = self
            .etcd
            .replace_lease(self.lease_id(), &old, &holder)
            .await?;
        *self.lease.write().unwrap_or_else(|e| e.into_inner()) = lease;
        Ok(())
    }

    /// Registers again if this daemon's member key has gone missing under a live lease (see
    /// `etcd::Registration`). A no-op for batch jobs, which never register.
    pub async fn keep_registered(&self) {
        if let Some(registration) = &self.registration {
            if self.lease_valid() {
                let present = self.view.borrow().members.contains_key(&self.me.id);
                registration.check(present, self.lease_id()).await;
            }
        }
    }

    /// The moves a daemon should make given what it holds (see [`crate::placement::plan`]).
    /// Empty until the lease is valid and this member's registration is visible.
    pub fn plan(&self, holdings: impl IntoIterator<Item = (ShardId, Holding)>) -> Moves {
        let view = self.view.borrow().clone();
        if !self.lease_valid() || !view.members.contains_key(&self.me.id) {
            return Moves::default();
        }
        plan(&view, &self.me.id, holdings)
    }

    /// Claims `shard` if nobody holds it. `None` if it is claimed (or our lease is not valid).
    pub async fn claim(&self, shard: ShardId) -> Result<Option<Claim>> {
        if !self.lease_valid() {
            return Ok(None);
        }
        let epoch = self.etcd.acquire(shard, &self.me, self.lease_id()).await?;
        Ok(epoch.map(|epoch| Claim { shard, epoch }))
    }

    /// True while this process may work on `claim`'s shard: the lease deadline holds and the
    /// view shows the claim (or predates it).
    pub fn holds(&self, claim: &Claim) -> bool {
        if !self.lease_valid() {
            return false;
        }
        let view = self.view.borrow();
        match view.owners.get(&claim.shard.0) {
            Some(o) => o.id == self.me.id && o.epoch == claim.epoch,
            None => view.revision < claim.epoch,
        }
    }

    /// Deletes `claim`'s key if it still has its epoch. Stop working on the shard first.
    pub async fn release(&self, claim: Claim) {
        if let Err(e) = self.etcd.release(claim.shard, claim.epoch).await {
            tracing::warn!(shard = %claim.shard, error = %e, "deleting compaction claim failed; it expires with the lease");
        }
    }

    /// Deregisters, stops the keep-alive and the watch, and revokes the lease (every claim
    /// still held goes with it). Release claims before, after stopping their work.
    pub async fn close(&self) {
        if self.member {
            if let Err(e) = self.etcd.deregister(&self.me.id).await {
                tracing::warn!(error = %e, "deregister failed");
            }
        }
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Err(e) = self.etcd.revoke(self.lease_id()).await {
            tracing::warn!(error = %e, "revoking the lease failed; it will expire");
        }
    }
}
