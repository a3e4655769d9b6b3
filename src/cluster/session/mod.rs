//! The ownership session: which shards this process may work on, and for how long. Gateways
//! (serving shards) and compactors (compacting them) run the same protocol through it; each
//! plugs in what opening and closing a shard means ([`ShardHost`]).
//!
//! Protocol (keys in `etcd.rs`; the deadline's safety argument in `lease.rs`):
//!
//! - **Join**: grant a lease, register `members/{id}` under it (batch jobs do not register:
//!   nothing is placed onto them; at start-up, retried with backoff for
//!   `cluster.join_timeout` while etcd does not answer), keep it alive, watch the member set and the claims. Every
//!   claim this process creates hangs off the same lease.
//! - **Claim** (the shard has no holder and this member is its rendezvous choice,
//!   [`crate::cluster::placement::plan`]): create the shard's key in a transaction that requires
//!   it to be absent; its create revision is the claim's *epoch*. Only then open the shard
//!   ([`ShardHost::open`]): for a gateway that opens the database, which fences any previous
//!   writer. A previous holder's key is gone only if it released it or its lease expired,
//!   and either way it no longer works on the shard.
//! - **Work** on a shard only while the lease deadline holds (last acknowledged keep-alive
//!   sent + TTL − margin, `lease.rs`) and the claim is in the view ([`Session::holds`]).
//! - **Release** (planned: another live member is the rendezvous choice, or leaving): close
//!   the shard first ([`ShardHost::close`]: drain, flush), then delete the key guarded by its
//!   epoch, so the next holder never overlaps with us and a stale holder can never delete a
//!   newer one's key.
//! - **Lost** (the key is gone or another's): stop at once ([`ShardHost::drop_claim`]).
//! - **Lease lost** (etcd does not know it, says TTL 0, or a whole TTL passed without an
//!   acknowledged keep-alive): every claim went with it; drop them all, then join again with a
//!   new lease as soon as etcd answers, retrying with backoff. A lost lease is never retried.
//! - **Expelled** (gateways): a member that heartbeats may be expelled by another once its
//!   heartbeat stops, before its lease expires (`lease.rs`, [`Session::suspect`]); it then
//!   loses its lease like any other way and joins again.
//! - Member additions are acted on after `rebalance_delay` of quiet, so a flapping member
//!   does not move shards back and forth; departures and claim changes (releases, expiries)
//!   at once.
//!
//! The embedded (single-process) mode is a session without etcd that holds every shard
//! forever: its lease never ends, and it opens every shard at start-up.
//!
//! The session gives availability, not safety: a paused process may outlive its deadline.
//! Safety comes from fencing at the storage (SlateDB's writer and compactor epochs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::etcd::{Etcd, LeaseHolder, Registration};
use crate::cluster::lease::{BeatSeen, BeatWatch, KeepAliveStats, LeaseClock};
use crate::cluster::placement::{plan, Choices, ClusterView, Holding, Member, Moves, Owner};
use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::shard::ShardId;
use crate::tasks::Tasks;
use join::first_lease;
use place::{claims, MOVE_CONCURRENCY};

mod join;
mod place;

/// A claim this process holds on a shard: the right to work on it while the lease holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The claimed shard.
    pub shard: ShardId,
    /// The claim's epoch: the create revision of its etcd key (0 in embedded mode).
    pub epoch: i64,
}

/// Who runs a session: which key space it uses and whether shards are placed onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A gateway: a member of the gateways' set, claiming shards to serve.
    Gateway,
    /// A compactor daemon: a member of the compactors' set (`compactor/` keys).
    Compactor,
    /// A batch compaction job: claims in the compactors' key space without joining their
    /// member set, so daemons never place shards onto it.
    BatchJob,
}

impl Role {
    /// The etcd sub-prefix of its keys, if any.
    fn keys(self) -> Option<&'static str> {
        match self {
            Role::Gateway => None,
            Role::Compactor | Role::BatchJob => Some("compactor"),
        }
    }

    fn registers(self) -> bool {
        self != Role::BatchJob
    }

    /// Gateways heartbeat, and expel members whose heartbeat stopped (`lease.rs`): they serve
    /// strong reads, which only a serving deadline bounds. Compactors are fenced by SlateDB.
    fn heartbeats(self) -> bool {
        self == Role::Gateway
    }
}

/// What a session's holder does with the shards it is given.
#[async_trait::async_trait]
pub trait ShardHost: Send + Sync + 'static {
    /// What this process holds of every shard now (the input to placement).
    fn holdings(&self) -> Vec<(ShardId, Holding)>;

    /// Starts work on a freshly claimed shard. On an error the session deletes the claim.
    async fn open(&self, claim: Claim) -> Result<()>;

    /// Planned hand-over: finish in-flight work and stop. The session deletes the claim
    /// once this returns.
    async fn close(&self, claim: Claim);

    /// The claim is gone (its key was deleted or taken, or the lease was lost): stop at once,
    /// without waiting for in-flight work.
    async fn drop_claim(&self, claim: Claim);

    /// Runs once per placement pass, before placement, also while membership settles.
    async fn tick(&self) {}
}

/// How a session reaches agreement with the other processes. One per process: boxing the
/// large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Coordinator {
    /// One process holds every shard forever.
    Embedded,
    /// Through etcd; daemons also keep their registration.
    Etcd {
        etcd: Etcd,
        registration: Option<Registration>,
    },
}

/// One process's ownership session.
pub struct Session {
    coordinator: Coordinator,
    role: Role,
    me: Member,
    config: ClusterConfig,
    /// The lease id and its serving deadline.
    lease: RwLock<(i64, Arc<LeaseClock>)>,
    /// Members and claims as last seen.
    view: watch::Sender<ClusterView>,
    /// Every shard's rendezvous choice among the members of `view`.
    choices: Mutex<Choices>,
    keepalive: Arc<KeepAliveStats>,
    /// Runs the placement loop, which returns at its next wait once `leaving` is cancelled.
    placing: Tasks,
    /// Cancelled on leaving: no more claims.
    leaving: CancellationToken,
    /// Members being checked for a stopped heartbeat ([`Session::suspect`]).
    /// Value: suspected again since the watch last read the beat.
    suspects: Mutex<HashMap<String, bool>>,
    /// The keep-alive and the watch; shut down last.
    tasks: Tasks,
}

impl Session {
    /// A session without etcd that holds all `shard_count` shards forever, as `me`.
    pub fn embedded(me: Member, shard_count: u32, config: &ClusterConfig) -> Arc<Session> {
        let mut view = ClusterView::default();
        view.members.insert(me.id.clone(), me.clone());
        for shard in 0..shard_count {
            let owner = Owner {
                id: me.id.clone(),
                url: me.url.clone(),
                epoch: 0,
            };
            view.owners.insert(shard, owner);
        }
        let tasks = Tasks::new();
        Arc::new(Session {
            coordinator: Coordinator::Embedded,
            role: Role::Gateway,
            me,
            config: config.clone(),
            lease: RwLock::new((0, Arc::new(LeaseClock::forever()))),
            view: watch::Sender::new(view),
            choices: Mutex::default(),
            keepalive: Arc::default(),
            placing: tasks.child(),
            leaving: CancellationToken::new(),
            suspects: Mutex::default(),
            tasks,
        })
    }

    /// Connects to etcd, grants a lease (registering `me` unless a batch job) and starts
    /// following the view of `role`'s member set.
    pub async fn join(config: &ClusterConfig, me: Member, role: Role) -> Result<Arc<Session>> {
        if !config.is_clustered() {
            return Err(Error::Config(
                "joining a cluster needs etcd: set cluster.etcd_endpoints (--etcd)".into(),
            ));
        }
        config.validate()?;
        let keepalive = Arc::new(KeepAliveStats::default());
        let tasks = Tasks::new();
        let holder = LeaseHolder {
            member: role.registers().then_some(&me),
            config,
            stats: &keepalive,
            tasks: &tasks,
            heartbeats: role.heartbeats(),
        };
        let (etcd, lease) = first_lease(role, &holder).await?;
        let registration = role
            .registers()
            .then(|| Registration::new(etcd.clone(), me.clone()));
        let session = Arc::new(Session {
            coordinator: Coordinator::Etcd {
                etcd: etcd.clone(),
                registration,
            },
            role,
            me,
            config: config.clone(),
            lease: RwLock::new(lease),
            view: watch::Sender::new(ClusterView::default()),
            choices: Mutex::default(),
            keepalive,
            placing: tasks.child(),
            leaving: CancellationToken::new(),
            suspects: Mutex::default(),
            tasks,
        });
        let view = session.view.clone();
        session
            .tasks
            .spawn("cluster watch", async move { etcd.watch_view(view).await });
        tracing::info!(member = %session.me.id, url = %session.me.url, role = ?role, "joined the cluster");
        Ok(session)
    }

    /// Starts giving shards to `host`. An embedded session opens every shard now, at most
    /// `open_concurrency` at once, and fails if any fails; a cluster session starts the
    /// placement loop, which makes a pass on every view change and at least every `tick`.
    pub async fn start<H: ShardHost>(
        self: &Arc<Self>,
        host: Arc<H>,
        open_concurrency: usize,
        tick: Duration,
    ) -> Result<()> {
        match &self.coordinator {
            Coordinator::Embedded => {
                let shards = self
                    .view
                    .borrow()
                    .owners
                    .keys()
                    .copied()
                    .collect::<Vec<_>>();
                futures::stream::iter(shards)
                    .map(|shard| {
                        host.open(Claim {
                            shard: ShardId(shard),
                            epoch: 0,
                        })
                    })
                    .buffer_unordered(open_concurrency.max(1))
                    .collect::<Vec<Result<()>>>()
                    .await
                    .into_iter()
                    .collect()
            }
            Coordinator::Etcd { .. } => {
                let session = Arc::clone(self);
                self.placing
                    .spawn("placement", async move { session.place(host, tick).await });
                Ok(())
            }
        }
    }

    /// This process as a member.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The view as last seen. Do not hold it across an await.
    pub fn view(&self) -> watch::Ref<'_, ClusterView> {
        self.view.borrow()
    }

    /// Changes of the view.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.view.subscribe()
    }

    /// The lease clock in force.
    pub fn lease(&self) -> Arc<LeaseClock> {
        Arc::clone(&self.lease.read().unwrap_or_else(|e| e.into_inner()).1)
    }

    fn lease_id(&self) -> i64 {
        self.lease.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// True while the lease deadline holds.
    pub fn lease_valid(&self) -> bool {
        self.lease().valid()
    }

    /// Keep-alive round trips, lease losses and rejoins.
    pub fn keepalive(&self) -> &Arc<KeepAliveStats> {
        &self.keepalive
    }

    /// True if a shard this session lost (e.g. fenced at the storage) can come back through
    /// placement; false in embedded mode, which holds every shard once and for all.
    pub fn places(&self) -> bool {
        matches!(self.coordinator, Coordinator::Etcd { .. })
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

    /// Claims `shard` if nobody holds it. `None` if it is claimed, or if our lease is not
    /// valid (before or after claiming: then the claim is deleted again).
    pub async fn claim(&self, shard: ShardId) -> Result<Option<Claim>> {
        let Coordinator::Etcd { etcd, .. } = &self.coordinator else {
            return Ok(Some(Claim { shard, epoch: 0 }));
        };
        if !self.lease_valid() {
            return Ok(None);
        }
        let Some(epoch) = etcd.acquire(shard, &self.me, self.lease_id()).await? else {
            return Ok(None);
        };
        let claim = Claim { shard, epoch };
        // Working on the shard (opening fences the previous writer) needs a valid lease:
        // otherwise our key may already be gone and another holder on its way.
        if !self.lease_valid() {
            self.release(claim).await;
            return Ok(None);
        }
        Ok(Some(claim))
    }

    /// Member `id`, a shard's owner, gave no answer (refused the connection, said it does
    /// not serve the shard, or is slow): in the background, watch its heartbeat and expel it if
    /// the heartbeat has stopped, then free the shards it held, so they are claimed without
    /// waiting for its lease to expire (safety argument: `lease.rs`). One watch per member at
    /// a time; a no-op for ourselves, in embedded mode, for compactors, and with
    /// `heartbeat_timeout = 0`.
    pub fn suspect(self: &Arc<Self>, id: &str) {
        let Coordinator::Etcd { etcd, .. } = &self.coordinator else {
            return;
        };
        if !self.role.heartbeats() || self.config.heartbeat_timeout.is_zero() || id == self.me.id {
            return;
        }
        let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(again) = suspects.get_mut(id) {
            *again = true;
            return;
        }
        suspects.insert(id.to_string(), false);
        tracing::debug!(
            member = id,
            "an owner gave no answer: watching its heartbeat"
        );
        let (session, etcd, id) = (Arc::clone(self), etcd.clone(), id.to_string());
        self.tasks.spawn("heartbeat watch", async move {
            session.watch_suspect(&etcd, &id).await;
            let mut suspects = session.suspects.lock().unwrap_or_else(|e| e.into_inner());
            suspects.remove(&id);
        });
    }

    /// Reads `id`'s beat key every heartbeat interval. Expels it once one revision has been
    /// seen for [`expel_wait`](crate::cluster::lease::expel_wait) of the timeout `id` serves
    /// by (its own, read from the key: the members' configurations may differ), timed from
    /// the first answer that showed it (the beat was sent before that answer). Gives up when
    /// the beat moves and nobody suspected `id` again since the last read, when it has no
    /// beat key (its lease decides), or on an etcd error.
    async fn watch_suspect(&self, etcd: &Etcd, id: &str) {
        let mut watch = BeatWatch::default();
        loop {
            let beat = match etcd.beat_of(id).await {
                Ok(Some(beat)) => beat,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(member = id, error = %e, "reading a suspect's heartbeat failed");
                    return;
                }
            };
            match watch.saw(beat.rev, beat.timeout, Instant::now()) {
                BeatSeen::Stood(rev) => break self.expel(etcd, id, rev).await,
                BeatSeen::Moved => {
                    let mut suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
                    let again = suspects.get_mut(id).map(std::mem::take);
                    if again != Some(true) {
                        return; // alive
                    }
                }
                BeatSeen::Wait => {}
            }
            tokio::time::sleep(self.config.heartbeat_interval).await;
        }
    }

    /// Expels `id` if its beat key still has revision `rev`, then frees its shards.
    async fn expel(&self, etcd: &Etcd, id: &str, rev: i64) {
        match etcd.expel(id, rev).await {
            Ok(true) => {}
            Ok(false) => return, // it beat just now: alive
            Err(e) => {
                tracing::debug!(member = id, error = %e, "expelling a silent member failed");
                return;
            }
        }
        let held: Vec<(ShardId, i64)> = self
            .view
            .borrow()
            .owners
            .iter()
            .filter(|(_, o)| o.id == id)
            .map(|(shard, o)| (ShardId(*shard), o.epoch))
            .collect();
        self.keepalive.record_expelled();
        tracing::warn!(
            member = id,
            shards = held.len(),
            "expelled a gateway whose heartbeat stopped; freeing its shards"
        );
        // Shards it claimed that our view does not show yet stay until its lease expires.
        futures::stream::iter(held)
            .for_each_concurrent(MOVE_CONCURRENCY, |(shard, epoch)| async move {
                if let Err(e) = etcd.release_expelled(shard, epoch, id).await {
                    tracing::warn!(%shard, error = %e, "freeing an expelled member's shard failed; it is freed when its lease expires");
                }
            })
            .await;
    }

    /// Deletes `claim`'s key if it still has its epoch. Stop working on the shard first.
    pub async fn release(&self, claim: Claim) {
        if let Coordinator::Etcd { etcd, .. } = &self.coordinator {
            if let Err(e) = etcd.release(claim.shard, claim.epoch).await {
                tracing::warn!(shard = %claim.shard, error = %e, "deleting the claim failed; it expires with the lease");
            }
        }
    }

    /// The moves placement asks for, given what the host holds (see
    /// [`crate::cluster::placement::plan`]). Empty until the lease is valid and this member's
    /// registration is visible (or while leaving).
    pub fn plan(&self, holdings: impl IntoIterator<Item = (ShardId, Holding)>) -> Moves {
        let view = self.view.borrow();
        if !self.lease_valid() || !view.members.contains_key(&self.me.id) {
            return Moves::default();
        }
        let mut choices = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        plan(&view, &mut choices, &self.me.id, holdings)
    }

    /// Planned departure: stop placing, deregister so the others take over, then hand every
    /// held shard over ([`ShardHost::close`], then delete the claim). Returns how many. An
    /// embedded session has nobody to hand over to: it keeps every shard until closed.
    pub async fn leave<H: ShardHost>(&self, host: &H) -> usize {
        self.leaving.cancel();
        self.placing.finished().await;
        let Coordinator::Etcd { etcd, .. } = &self.coordinator else {
            return 0;
        };
        if self.role.registers() {
            if let Err(e) = etcd.deregister(&self.me.id).await {
                tracing::warn!(error = %e, "deregister failed");
            }
        }
        let held = claims(host);
        let count = held.len();
        futures::stream::iter(held.into_iter().map(|claim| self.hand_over(host, claim)))
            .buffer_unordered(MOVE_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
        tracing::info!(shards = count, "left");
        count
    }

    /// Stops the keep-alive and the watch and revokes the lease (every claim still held goes
    /// with it). Hand shards over first ([`Session::leave`]).
    pub async fn close(&self) {
        self.placing.shutdown().await;
        self.tasks.shutdown().await;
        if let Coordinator::Etcd { etcd, .. } = &self.coordinator {
            if let Err(e) = etcd.revoke(self.lease_id()).await {
                tracing::warn!(error = %e, "revoking the lease failed; it will expire");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A host that records what it was asked to do.
    #[derive(Default)]
    struct Recorder {
        held: Mutex<BTreeMap<ShardId, i64>>,
        log: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl ShardHost for Recorder {
        fn holdings(&self) -> Vec<(ShardId, Holding)> {
            let held = self.held.lock().unwrap();
            (0..4)
                .map(ShardId)
                .map(|s| (s, held.get(&s).map_or(Holding::Free, |e| Holding::Held(*e))))
                .collect()
        }
        async fn open(&self, claim: Claim) -> Result<()> {
            self.log
                .lock()
                .unwrap()
                .push(format!("open {}", claim.shard));
            self.held.lock().unwrap().insert(claim.shard, claim.epoch);
            Ok(())
        }
        async fn close(&self, claim: Claim) {
            self.log
                .lock()
                .unwrap()
                .push(format!("close {}", claim.shard));
            self.held.lock().unwrap().remove(&claim.shard);
        }
        async fn drop_claim(&self, claim: Claim) {
            self.log
                .lock()
                .unwrap()
                .push(format!("drop {}", claim.shard));
            self.held.lock().unwrap().remove(&claim.shard);
        }
    }

    fn me() -> Member {
        Member {
            id: "a".into(),
            url: "http://127.0.0.1:1".into(),
        }
    }

    #[tokio::test]
    async fn an_embedded_session_holds_every_shard_forever() {
        let session = Session::embedded(me(), 4, &ClusterConfig::default());
        let host = Arc::new(Recorder::default());
        session
            .start(Arc::clone(&host), 2, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(host.held.lock().unwrap().len(), 4, "every shard opened");
        for shard in 0..4 {
            assert!(session.holds(&Claim {
                shard: ShardId(shard),
                epoch: 0
            }));
        }
        assert!(session.lease_valid() && !session.places());
        assert_eq!(session.plan(host.holdings()), Moves::default());
        assert_eq!(
            session.leave(host.as_ref()).await,
            0,
            "nobody to hand over to"
        );
        assert_eq!(host.held.lock().unwrap().len(), 4);
        session.close().await;
    }
}
