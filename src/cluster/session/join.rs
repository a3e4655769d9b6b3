//! Joining: reaching etcd at start-up (with backoff: etcd may start after us), joining again
//! after a lost lease, and keeping the member key registered under a live lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Coordinator, Role, Session};
use crate::cluster::etcd::{Etcd, LeaseHolder};
use crate::cluster::lease::LeaseClock;
use crate::error::Result;

/// Longest pause between attempts to join again after the lease was lost.
const MAX_REJOIN_BACKOFF: Duration = Duration::from_secs(1);

/// Longest pause between attempts to reach etcd at start-up ([`first_lease`]).
const MAX_JOIN_BACKOFF: Duration = Duration::from_secs(5);

/// Pauses between retries: 100 ms, doubling up to a maximum.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn up_to(max: Duration) -> Self {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    /// The pause before the next attempt.
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Connects to etcd and starts `holder`'s lease, retrying with backoff (one log line per
/// failed attempt) until `cluster.join_timeout` has passed: at start-up etcd may come up after
/// us (compose, Kubernetes), and exiting would only make the supervisor restart us later.
pub(super) async fn first_lease(
    role: Role,
    holder: &LeaseHolder<'_>,
) -> Result<(Etcd, (i64, Arc<LeaseClock>))> {
    let c = holder.config;
    let give_up = Instant::now() + c.join_timeout;
    let mut backoff = Backoff::up_to(MAX_JOIN_BACKOFF);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let joined = async {
            let mut etcd = Etcd::connect(c).await?;
            if let Some(keys) = role.keys() {
                etcd = etcd.scoped(keys);
            }
            let lease = etcd.start_lease(holder).await?;
            Ok((etcd, lease))
        }
        .await;
        let e = match joined {
            Ok(joined) => return Ok(joined),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay > give_up {
            return Err(e);
        }
        tracing::warn!(attempt, error = %e, retry_in_ms = delay.as_millis() as u64, "etcd not reachable yet; retrying");
        tokio::time::sleep(delay).await;
    }
}

impl Session {
    /// Registers again if this member's key has gone missing under a live lease (see
    /// `etcd::Registration`). A no-op for batch jobs, which never register.
    pub(super) async fn keep_registered(&self) {
        let Coordinator::Etcd {
            registration: Some(registration),
            ..
        } = &self.coordinator
        else {
            return;
        };
        if self.lease_valid() {
            let present = self.view.borrow().members.contains_key(&self.me.id);
            registration.check(present, self.lease_id()).await;
        }
    }

    /// After `old` was lost: joins again with a new lease, retrying with backoff until etcd
    /// answers or the session is leaving.
    pub(super) async fn rejoin(&self, old: &LeaseClock) {
        let Coordinator::Etcd { etcd, .. } = &self.coordinator else {
            return;
        };
        let holder = LeaseHolder {
            member: self.role.registers().then_some(&self.me),
            config: &self.config,
            stats: &self.keepalive,
            tasks: &self.tasks,
            heartbeats: self.role.heartbeats(),
        };
        let mut backoff = Backoff::up_to(MAX_REJOIN_BACKOFF);
        loop {
            match etcd.replace_lease(self.lease_id(), old, &holder).await {
                Ok(lease) => {
                    *self.lease.write().unwrap_or_else(|e| e.into_inner()) = lease;
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "rejoin failed; retrying"),
            }
            tokio::select! {
                _ = self.leaving.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
}
