//! The etcd driver: membership, the shard-owner keys, the lease keep-alive and the watch. The
//! only module that imports `etcd_client`.
//!
//! Keys, under `/tessera/{cluster}/`:
//!
//! | Key | Value | Attached to |
//! |---|---|---|
//! | `members/{id}` | [`Member`] JSON | the gateway's lease |
//! | `owners/{shard:05}` | [`Owner`] JSON | the owner's lease |
//! | `beats/{id}` | `{lease id} {heartbeat_timeout in ms}` | the gateway's lease |
//!
//! - **Acquire** a shard: `txn(create_revision(owner key) == 0 → put(owner key, me, lease))`.
//!   The key's create revision is the owner's *epoch*, the fencing token of that ownership.
//! - **Release** a shard: `txn(create_revision(owner key) == epoch → delete)`, so a stale owner
//!   can never delete a newer owner's key.
//! - All of a gateway's keys share its one lease: when it dies or is cut off, etcd deletes its
//!   member key and every owner key at once, after the TTL.
//! - etcd-client does not renew leases: [`Etcd::start_lease`] runs a keep-alive task that
//!   sends a keep-alive every interval and records each acknowledged one in the [`LeaseClock`].
//!   It ends the lease for good on any sign that etcd may have dropped it ([`LeaseLoss`]: not
//!   found, TTL 0, or a whole TTL without an acknowledgement, e.g. cut off from etcd); the
//!   holder then joins again with a new lease ([`Etcd::replace_lease`]), never retrying a lease
//!   etcd has already answered for.
//! - **Heartbeat** (gateways): `txn(mod_revision(beat key) == my last beat → put)` every
//!   `heartbeat_interval`; **expel** a silent owner: read its beat key, wait, then
//!   `txn(mod_revision(beat key) == as read → delete it and the member key)`, and its owner keys
//!   with `txn(create_revision(owner key) == epoch ∧ beat key absent → delete)`. The safety
//!   argument is in `lease.rs`. A new incarnation first **retires** an earlier one's beat key
//!   the same way, revoking its lease (a restart after a crash), or refuses to beat over a
//!   live one's ([`Etcd::start_lease`]).
//! - Compactors use the same keys and protocol one level down, under
//!   `/tessera/{cluster}/compactor/` ([`Etcd::scoped`]): `compactor/members/{id}` and
//!   `compactor/owners/{shard:05}` (a shard's compaction claim). Gateways and compactors are
//!   separate member sets: neither places shards onto the other.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;

use crate::cluster::lease::{
    expel_wait, BeatSeen, BeatWatch, KeepAliveStats, LeaseClock, LeaseLoss, SystemClock,
};
use crate::cluster::placement::{ClusterView, Member, Owner};
use crate::config::ClusterConfig;
use crate::error::{Error, Result};
use crate::shard::ShardId;
use crate::tasks::Tasks;

/// A connection to the cluster's etcd, scoped to one cluster's key prefix.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
}

/// Who holds a lease and where its keep-alive runs ([`Etcd::start_lease`]).
pub struct LeaseHolder<'a> {
    /// Registered under the lease; `None` for a batch job, which claims without joining.
    pub member: Option<&'a Member>,
    /// TTL, keep-alive interval and margin.
    pub config: &'a ClusterConfig,
    /// Where keep-alives, losses and rejoins are counted.
    pub stats: &'a Arc<KeepAliveStats>,
    /// Runs the keep-alive task (which stops when they shut down).
    pub tasks: &'a Tasks,
    /// True for a gateway: it heartbeats (if `heartbeat_timeout` is not 0) and may be expelled.
    pub heartbeats: bool,
}

impl LeaseHolder<'_> {
    /// The member that heartbeats, if this holder does.
    fn beating(&self) -> Option<&Member> {
        let on = self.heartbeats && !self.config.heartbeat_timeout.is_zero();
        self.member.filter(|_| on)
    }
}

/// A member's last heartbeat as its beat key shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The key's revision: it moves with every beat.
    pub rev: i64,
    /// The lease of the incarnation that wrote it.
    pub lease: i64,
    /// The `heartbeat_timeout` that incarnation serves by.
    pub timeout: Duration,
}

/// The outcome of one heartbeat.
enum Beat {
    /// Acknowledged: the beat key's new revision.
    Acked(i64),
    /// The compare failed but the key is still ours (an earlier beat whose answer was lost
    /// landed after all): its revision, to compare against next time. Not an acknowledgement.
    Behind(i64),
    /// The key is gone or another incarnation's: we were expelled.
    Expelled,
}

/// The TLS options of `config` (`None` without `etcd_ca` or a client certificate).
fn etcd_tls(config: &ClusterConfig) -> Result<Option<TlsOptions>> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Error::Config(format!("cannot read etcd {what} `{}`: {e}", path.display()))
        })
    };
    if config.etcd_ca.is_none() && config.etcd_cert.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.etcd_ca {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA", ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.etcd_cert, &config.etcd_key) {
        tls = tls.identity(Identity::from_pem(
            read("certificate", cert)?,
            read("key", key)?,
        ));
    }
    Ok(Some(tls))
}

fn etcd_err(context: &str, e: etcd_client::Error) -> Error {
    Error::Coordination(format!("{context}: {e}"))
}

impl Etcd {
    /// Connects to `config.etcd_endpoints` (TLS and user as configured); every call is
    /// bounded by `config.etcd_timeout`. With a user, etcd-client authenticates at connect and
    /// fetches a new auth token whenever etcd reports the old one expired.
    pub async fn connect(config: &ClusterConfig) -> Result<Self> {
        let timeout = config.etcd_timeout;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(1), timeout);
        if let Some(tls) = etcd_tls(config)? {
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(password)) = (&config.etcd_user, config.etcd_password()?) {
            options = options.with_user(user.clone(), password);
        }
        let client = Client::connect(&config.etcd_endpoints, Some(options))
            .await
            .map_err(|e| etcd_err("connect to etcd", e))?;
        Ok(Etcd {
            client,
            prefix: format!("/tessera/{}/", config.name),
        })
    }

    /// The same connection with its keys one level down, under `{prefix}{sub}/`.
    pub fn scoped(&self, sub: &str) -> Etcd {
        Etcd {
            client: self.client.clone(),
            prefix: format!("{}{sub}/", self.prefix),
        }
    }

    fn member_key(&self, id: &str) -> String {
        format!("{}members/{id}", self.prefix)
    }

    fn owner_key(&self, shard: ShardId) -> String {
        format!("{}owners/{shard}", self.prefix)
    }

    fn beat_key(&self, id: &str) -> String {
        format!("{}beats/{id}", self.prefix)
    }

    /// Grants a lease of `ttl`; returns its id and the granted TTL, and records the grant in
    /// `clock` (measured from before the request was sent).
    async fn grant(
        &self,
        ttl: Duration,
        clock: &LeaseClock,
        margin: Duration,
    ) -> Result<(i64, Duration)> {
        let sent = clock.now();
        let resp = self
            .client
            .clone()
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(|e| etcd_err("grant lease", e))?;
        let granted = Duration::from_secs(resp.ttl().max(0) as u64);
        clock.acked(sent, granted, margin);
        Ok((resp.id(), granted))
    }

    /// Grants a lease, registers the holder's member key under it (if it has one) and keeps
    /// the lease alive on the holder's tasks until they shut down or the lease is lost (see
    /// [`Etcd::keep_alive`]). Returns the lease id and its clock. A holder that heartbeats
    /// first retires an earlier incarnation of its member, or fails if a live one beats
    /// (`retire_previous`).
    pub async fn start_lease(&self, holder: &LeaseHolder<'_>) -> Result<(i64, Arc<LeaseClock>)> {
        let c = holder.config;
        if let Some(member) = holder.beating() {
            self.retire_previous(&member.id, c.heartbeat_interval)
                .await?;
        }
        let clock = Arc::new(match holder.beating() {
            Some(_) => LeaseClock::with_heartbeats(Arc::new(SystemClock)),
            None => LeaseClock::default(),
        });
        let (id, ttl) = self.grant(c.lease_ttl, &clock, c.lease_margin).await?;
        if let Some(member) = holder.member {
            self.register(member, id).await?;
        }
        if let Some(member) = holder.beating() {
            // The first beat creates the key, unconditionally: any earlier incarnation's was
            // retired above.
            let sent = clock.now();
            let timeout = c.heartbeat_timeout;
            let Beat::Acked(rev) = self.beat(&member.id, id, timeout, None).await? else {
                return Err(Error::Coordination(
                    "the first heartbeat was not acknowledged".into(),
                ));
            };
            clock.beat_acked(sent, timeout);
            let (etcd, beating, stats) =
                (self.clone(), Arc::clone(&clock), Arc::clone(holder.stats));
            let member = member.id.clone();
            let interval = c.heartbeat_interval;
            holder.tasks.spawn("heartbeat", async move {
                etcd.heartbeat(&member, id, rev, &beating, &stats, interval, timeout)
                    .await
            });
        }
        let (etcd, keep) = (self.clone(), Arc::clone(&clock));
        let stats = Arc::clone(holder.stats);
        let (interval, margin) = (c.keepalive_interval, c.lease_margin);
        holder.tasks.spawn("lease keep-alive", async move {
            etcd.keep_alive(id, keep, stats, ttl, interval, margin)
                .await
        });
        Ok((id, clock))
    }

    /// Before a new incarnation of member `id` beats: a gateway restarted under its id soon
    /// after a crash finds the previous incarnation's beat key (etcd has not expired its lease
    /// yet), and that incarnation's shards would wait for the lease. It is retired the way any
    /// gateway expels a silent one (`lease.rs`): once one revision of the beat has stood for
    /// the wait, the beat and member keys are deleted if the key still has that revision, then
    /// the old lease is revoked, which frees every shard it held at once (safe: that
    /// incarnation stopped serving before the delete). If another gateway expelled it
    /// meanwhile, its lease is revoked all the same: that gateway frees only the shards its
    /// own view shows, and only while our new beat key does not exist yet (`release_expelled`).
    /// A beat that moves means a live gateway has this id (or, on a rejoin, a replacement took
    /// it over): beating would expel it, so this is refused, and the caller retries.
    async fn retire_previous(&self, id: &str, interval: Duration) -> Result<()> {
        let mut watch = BeatWatch::default();
        let mut seen: Option<Heartbeat> = None;
        let started = Instant::now();
        let how = loop {
            let Some(beat) = self.beat_of(id).await? else {
                break "its heartbeat went away";
            };
            let first = seen.is_none();
            let beat = seen.insert(beat);
            match watch.saw(beat.rev, beat.timeout, Instant::now()) {
                BeatSeen::Wait if first => tracing::info!(
                    member = id,
                    lease = beat.lease,
                    wait_ms = expel_wait(beat.timeout).as_millis() as u64,
                    "found a heartbeat of an earlier incarnation of this member; retiring it once it has stood for the wait"
                ),
                BeatSeen::Wait => {}
                BeatSeen::Moved => {
                    return Err(Error::Coordination(format!(
                        "member id {id} is in use: another live gateway with this id is beating; give each gateway its own --node-id"
                    )));
                }
                BeatSeen::Stood(rev) if self.expel(id, rev).await? => {
                    break "its heartbeat had stopped";
                }
                // The revision moved just before the expulsion: the next read says so.
                BeatSeen::Stood(_) => {}
            }
            tokio::time::sleep(interval).await;
        };
        let Some(earlier) = seen else {
            return Ok(()); // no earlier incarnation
        };
        // A beat key goes away only by an expulsion (ours above, or another gateway's whose
        // owner keys may not all be released yet) or with its lease: either way that
        // incarnation serves nothing, and all its keys may go.
        if let Err(e) = self.revoke(earlier.lease).await {
            tracing::debug!(error = %e, "revoking the earlier incarnation's lease failed; it ended already");
        }
        tracing::info!(
            member = id,
            lease = earlier.lease,
            after_ms = started.elapsed().as_millis() as u64,
            how,
            "retired an earlier incarnation of this member"
        );
        Ok(())
    }

    /// After `old` (lease `old_id`) was lost: starts a new lease as [`Etcd::start_lease`] does,
    /// then revokes the old one if etcd may still hold it (given up on the deadline alone, or
    /// expelled while its keep-alives were answered), so its keys (owner keys the expelling
    /// gateway did not see) do not block others until it expires. Logs and counts the rejoin.
    pub async fn replace_lease(
        &self,
        old_id: i64,
        old: &LeaseClock,
        holder: &LeaseHolder<'_>,
    ) -> Result<(i64, Arc<LeaseClock>)> {
        let new = self.start_lease(holder).await?;
        let (why, lost_at) = old.loss().unwrap_or((LeaseLoss::Deadline, old.now()));
        if matches!(why, LeaseLoss::Deadline | LeaseLoss::Expelled) {
            if let Err(e) = self.revoke(old_id).await {
                tracing::debug!(error = %e, "revoking the lost lease failed; it expires by itself");
            }
        }
        let after = old.now().saturating_duration_since(lost_at);
        holder.stats.record_rejoin(after);
        tracing::info!(
            lease = new.0,
            lost_lease = old_id,
            reason = why.as_str(),
            after_ms = after.as_millis() as u64,
            "rejoined the cluster with a new lease"
        );
        Ok(new)
    }

    /// Registers `member` under `lease` (idempotent).
    pub async fn register(&self, member: &Member, lease: i64) -> Result<()> {
        let value = serde_json::to_vec(member).map_err(|e| Error::Internal(e.to_string()))?;
        self.client
            .clone()
            .put(
                self.member_key(&member.id),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| etcd_err("register member", e))?;
        Ok(())
    }

    /// Removes `member`'s registration (planned departure).
    pub async fn deregister(&self, id: &str) -> Result<()> {
        self.client
            .clone()
            .delete(self.member_key(id), None)
            .await
            .map_err(|e| etcd_err("deregister member", e))?;
        Ok(())
    }

    /// Revokes `lease`, deleting every key attached to it.
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(|e| etcd_err("revoke lease", e))?;
        Ok(())
    }

    /// One heartbeat of member `id` under `lease`: a put of its beat key, conditional on the
    /// key still having revision `last` (none: the first beat of an incarnation). The value
    /// names the incarnation (its lease) and the `timeout` it serves by, which is what those
    /// who would expel it must wait for ([`Etcd::beat_of`]).
    async fn beat(
        &self,
        id: &str,
        lease: i64,
        timeout: Duration,
        last: Option<i64>,
    ) -> Result<Beat> {
        let key = self.beat_key(id);
        let mine = format!("{lease} {}", timeout.as_millis());
        let put = TxnOp::put(
            key.clone(),
            mine.clone(),
            Some(PutOptions::new().with_lease(lease)),
        );
        let txn = match last {
            None => Txn::new().and_then([put]),
            Some(rev) => Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([put])
                .or_else([TxnOp::get(key, None)]),
        };
        let resp = self.txn(txn, "heartbeat").await?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            return Ok(Beat::Acked(rev));
        }
        let current = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        Ok(match current {
            Some(kv) if kv.value() == mine.as_bytes() => Beat::Behind(kv.mod_revision()),
            _ => Beat::Expelled,
        })
    }

    /// Renews member `id`'s heartbeat every `interval` (the last one had revision `rev`) until
    /// the lease is lost, or we find we were expelled: then the lease is lost for good. A
    /// failed or slow beat is not retried early: the beat deadline lapses by itself.
    #[allow(clippy::too_many_arguments)]
    async fn heartbeat(
        &self,
        id: &str,
        lease: i64,
        mut rev: i64,
        clock: &LeaseClock,
        stats: &KeepAliveStats,
        interval: Duration,
        timeout: Duration,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = clock.lost() => return,
                _ = ticks.tick() => {}
            }
            let sent = clock.now();
            match tokio::time::timeout(timeout, self.beat(id, lease, timeout, Some(rev))).await {
                Ok(Ok(Beat::Acked(r))) => {
                    rev = r;
                    clock.beat_acked(sent, timeout);
                }
                Ok(Ok(Beat::Behind(r))) => rev = r,
                Ok(Ok(Beat::Expelled)) => {
                    tracing::warn!(
                        lease,
                        reason = LeaseLoss::Expelled.as_str(),
                        "lease lost: another gateway found our heartbeat stale and took our shards; joining again"
                    );
                    stats.record_loss(LeaseLoss::Expelled);
                    clock.lose(LeaseLoss::Expelled);
                    return;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat failed"),
                Err(_) => tracing::debug!("heartbeat timed out"),
            }
        }
    }

    /// Member `id`'s last heartbeat (`None`: no beat key, or one this version cannot read).
    pub async fn beat_of(&self, id: &str) -> Result<Option<Heartbeat>> {
        let resp = self
            .client
            .clone()
            .get(self.beat_key(id), None)
            .await
            .map_err(|e| etcd_err("read heartbeat", e))?;
        Ok(resp.kvs().first().and_then(|kv| {
            let (lease, ms) = std::str::from_utf8(kv.value()).ok()?.split_once(' ')?;
            Some(Heartbeat {
                rev: kv.mod_revision(),
                lease: lease.parse().ok()?,
                timeout: Duration::from_millis(ms.parse().ok()?),
            })
        }))
    }

    /// Expels member `id` if its beat key still has revision `rev`: deletes the beat and
    /// member keys. True if it was expelled (when this is safe: `lease.rs`).
    pub async fn expel(&self, id: &str, rev: i64) -> Result<bool> {
        let key = self.beat_key(id);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([
                TxnOp::delete(key, None),
                TxnOp::delete(self.member_key(id), None),
            ]);
        Ok(self.txn(txn, "expel member").await?.succeeded())
    }

    /// Deletes the owner key of `shard` if it still has `epoch` and its owner `id` was
    /// expelled (its beat key is gone).
    pub async fn release_expelled(&self, shard: ShardId, epoch: i64, id: &str) -> Result<bool> {
        let key = self.owner_key(shard);
        let txn = Txn::new()
            .when([
                Compare::create_revision(key.clone(), CompareOp::Equal, epoch),
                Compare::create_revision(self.beat_key(id), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self
            .txn(txn, "release an expelled owner's shard")
            .await?
            .succeeded())
    }

    /// Creates the owner key of `shard` if it has none. Returns the epoch, or `None` if the
    /// shard is owned.
    pub async fn acquire(&self, shard: ShardId, me: &Member, lease: i64) -> Result<Option<i64>> {
        let key = self.owner_key(shard);
        let owner = Owner {
            id: me.id.clone(),
            url: me.url.clone(),
            epoch: 0,
        };
        let value = serde_json::to_vec(&owner).map_err(|e| Error::Internal(e.to_string()))?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            )]);
        let resp = self.txn(txn, "acquire shard").await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        // The put created the key in this transaction, so its create revision is the
        // transaction's revision.
        Ok(resp.header().map(|h| h.revision()))
    }

    /// Deletes the owner key of `shard` if it still belongs to `epoch`.
    pub async fn release(&self, shard: ShardId, epoch: i64) -> Result<bool> {
        let key = self.owner_key(shard);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                epoch,
            )])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn, "release shard").await?.succeeded())
    }

    async fn txn(&self, txn: Txn, context: &str) -> Result<etcd_client::TxnResponse> {
        self.client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| etcd_err(context, e))
    }

    /// Keeps `lease` alive until it must be given up: then logs why, counts it and marks
    /// `clock` lost (the holder joins again with a new lease). Transient errors
    /// are retried, but only until a whole TTL has passed without an acknowledged keep-alive:
    /// from then on etcd may have expired the lease, reachable or not (`lease.rs`). Stops
    /// as well once `clock` is lost another way (expelled).
    async fn keep_alive(
        &self,
        lease: i64,
        clock: Arc<LeaseClock>,
        stats: Arc<KeepAliveStats>,
        ttl: Duration,
        interval: Duration,
        margin: Duration,
    ) {
        let why = tokio::select! {
            // Lost another way (expelled: the heartbeat logged and counted it): stop renewing.
            _ = clock.lost() => return,
            () = clock.expired() => LeaseLoss::Deadline,
            why = self.renew(lease, &clock, &stats, ttl, interval, margin) => why,
        };
        tracing::warn!(
            lease,
            reason = why.as_str(),
            "lease lost: dropping what it covered; joining again with a new lease"
        );
        stats.record_loss(why);
        clock.lose(why);
    }

    /// Renews `lease` every `interval`, reconnecting on transient errors, until etcd answers
    /// that the lease is gone. Keep-alives are pipelined: one is sent every interval whatever
    /// the answers do, and each answer acknowledges the oldest unanswered one (the stream is
    /// ordered), so one slow answer does not delay the next renewal.
    async fn renew(
        &self,
        lease: i64,
        clock: &LeaseClock,
        stats: &KeepAliveStats,
        ttl: Duration,
        interval: Duration,
        margin: Duration,
    ) -> LeaseLoss {
        loop {
            let sent = clock.now();
            let (mut keeper, mut stream) = match self.client.clone().lease_keep_alive(lease).await {
                Ok(pair) => pair,
                // etcd-client opens the stream with one keep-alive and reports a TTL-0 answer
                // to it as this error (its only other cause, a full local channel, cannot
                // happen on a new stream): etcd no longer has the lease.
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => return LeaseLoss::NotFound,
                Err(e) => {
                    tracing::warn!(error = %e, "lease keep-alive stream failed; retrying");
                    tokio::time::sleep(interval).await;
                    continue;
                }
            };
            // The opening keep-alive was answered with TTL > 0: etcd renewed the lease to its
            // granted TTL.
            clock.acked(sent, ttl, margin);
            stats.record(sent.elapsed());
            let mut unanswered: VecDeque<Instant> = VecDeque::new();
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        // A stream that answers nothing for two intervals is stuck: reopen it.
                        if unanswered.front().is_some_and(|s| s.elapsed() > interval * 2) {
                            tracing::warn!("lease keep-alive answers missing; reconnecting");
                            break;
                        }
                        let now = clock.now();
                        if let Err(e) = keeper.keep_alive().await {
                            tracing::warn!(error = %e, "lease keep-alive send failed");
                            break;
                        }
                        unanswered.push_back(now);
                    }
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) if resp.ttl() > 0 => {
                            if let Some(sent) = unanswered.pop_front() {
                                clock.acked(sent, Duration::from_secs(resp.ttl() as u64), margin);
                                stats.record(sent.elapsed());
                            }
                        }
                        Ok(Some(_)) => return LeaseLoss::TtlZero,
                        Ok(None) | Err(_) => {
                            tracing::warn!("lease keep-alive stream ended; reconnecting");
                            break;
                        }
                    },
                }
            }
            tokio::time::sleep(interval / 4).await;
        }
    }

    /// Maintains `view` from etcd, for as long as the task runs: a snapshot, then a watch from
    /// the snapshot's revision; on any error, a new snapshot.
    pub async fn watch_view(&self, view: watch::Sender<ClusterView>) {
        loop {
            if let Err(e) = self.watch_once(&view).await {
                tracing::warn!(error = %e, "cluster watch failed; resyncing");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn watch_once(&self, view: &watch::Sender<ClusterView>) -> Result<()> {
        let mut client = self.client.clone();
        // Only `members/` and `owners/` (in this order, and nothing between): the heartbeats
        // (`beats/`, 4 writes/s per gateway) and the compactors' keys are not the view's, and
        // watching them would deliver every gateway's heartbeat to every gateway.
        let (from, to) = (self.member_key(""), format!("{}owners0", self.prefix));
        let snapshot = client
            .get(from.clone(), Some(GetOptions::new().with_range(to.clone())))
            .await
            .map_err(|e| etcd_err("read cluster state", e))?;
        let revision = snapshot.header().map_or(0, |h| h.revision());
        let mut fresh = ClusterView {
            revision,
            ..ClusterView::default()
        };
        for kv in snapshot.kvs() {
            self.apply(
                &mut fresh,
                kv.key(),
                Some((kv.value(), kv.create_revision())),
            );
        }
        view.send_replace(fresh);
        let mut stream = client
            .watch(
                from,
                Some(
                    WatchOptions::new()
                        .with_range(to)
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .map_err(|e| etcd_err("watch cluster state", e))?;
        loop {
            let msg = stream
                .message()
                .await
                .map_err(|e| etcd_err("watch cluster state", e))?;
            let Some(resp) = msg else {
                return Err(Error::Coordination("watch stream ended".into()));
            };
            if resp.canceled() {
                return Err(Error::Coordination("watch canceled".into()));
            }
            view.send_modify(|v| {
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let put = (event.event_type() == EventType::Put)
                        .then(|| (kv.value(), kv.create_revision()));
                    self.apply(v, kv.key(), put);
                    v.revision = v.revision.max(kv.mod_revision());
                }
            });
        }
    }

    /// Applies one key's new state (`None` = deleted) to `view`.
    fn apply(&self, view: &mut ClusterView, key: &[u8], put: Option<(&[u8], i64)>) {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(&self.prefix))
        else {
            return;
        };
        if let Some(id) = rest.strip_prefix("members/") {
            match put.and_then(|(v, _)| serde_json::from_slice::<Member>(v).ok()) {
                Some(m) => {
                    view.members.insert(id.to_string(), m);
                }
                None => {
                    view.members.remove(id);
                }
            }
        } else if let Some(shard) = rest.strip_prefix("owners/").and_then(|s| s.parse().ok()) {
            match put.and_then(|(v, rev)| {
                serde_json::from_slice::<Owner>(v)
                    .ok()
                    .map(|o| Owner { epoch: rev, ..o })
            }) {
                Some(o) => {
                    view.owners.insert(shard, o);
                }
                None => {
                    view.owners.remove(&shard);
                }
            }
        }
    }
}

/// How long a member may be missing from its own view before it registers again.
const MISSING_GRACE: Duration = Duration::from_secs(2);

/// Keeps a member registered while its lease lives. A member key deleted under a live lease
/// (by an operator, by an etcd restore) would otherwise leave the member out of placement
/// for good: it never re-registers, and rebalancing skips a member it cannot see.
pub struct Registration {
    etcd: Etcd,
    me: Member,
    missing_since: std::sync::Mutex<Option<Instant>>,
}

impl Registration {
    /// For `me`, through `etcd`.
    pub fn new(etcd: Etcd, me: Member) -> Self {
        Registration {
            etcd,
            me,
            missing_since: std::sync::Mutex::new(None),
        }
    }

    /// Registers again under `lease` once the member has been missing from its view
    /// (`present` false) for [`MISSING_GRACE`]; a fresh registration the watch has not shown
    /// yet is not missing. Registering is idempotent.
    pub async fn check(&self, present: bool, lease: i64) {
        let overdue = {
            let mut since = self.missing_since.lock().unwrap_or_else(|e| e.into_inner());
            if present {
                *since = None;
            }
            let first = *since.get_or_insert_with(Instant::now);
            !present && first.elapsed() >= MISSING_GRACE
        };
        if !overdue {
            return;
        }
        match self.etcd.register(&self.me, lease).await {
            Ok(()) => {
                tracing::warn!(member = %self.me.id, "registration missing under a live lease; registered again");
                *self.missing_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
            Err(e) => tracing::warn!(error = %e, "registering again failed; retrying"),
        }
    }
}
