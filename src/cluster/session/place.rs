//! The placement loop: one pass per view change, lease loss or tick, moving shards to and from
//! the host as rendezvous placement asks (protocol: `mod.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};

use super::{Claim, Session, ShardHost};
use crate::cluster::placement::{Holding, Moves};

/// Claims taken or released concurrently by one placement pass. A move is a few object-store
/// round trips (open, recover, checkpoint; or drain, checkpoint, close), so moves wait on the
/// store, not the CPU: at 8, a 9th gateway taking its 112 of 1024 shards needed 14 rounds of
/// ~0.5 s (docs/bench/scale-test.md).
pub(super) const MOVE_CONCURRENCY: usize = 32;

impl Session {
    /// The placement loop: one pass per view change, lease loss or `tick`, until leaving.
    pub(super) async fn place<H: ShardHost>(self: Arc<Self>, host: Arc<H>, tick: Duration) {
        let mut changes = self.view.subscribe();
        let mut members = BTreeMap::new();
        let mut quiet_until = Instant::now();
        loop {
            let lease = self.lease();
            let wait = quiet_until
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            // The only point where the loop stops for leaving: a pass in progress (an open, a
            // drain) always completes.
            tokio::select! {
                _ = self.leaving.cancelled() => return,
                _ = changes.changed() => {}
                _ = lease.lost() => {}
                _ = tokio::time::sleep(tick.min(wait)) => {}
            }
            if lease.is_lost() {
                let held = claims(host.as_ref());
                if !held.is_empty() {
                    tracing::warn!(shards = held.len(), "lease lost: dropping every shard");
                }
                futures::future::join_all(held.into_iter().map(|c| host.drop_claim(c))).await;
                self.rejoin(&lease).await;
                continue;
            }
            // Quiet period after a member joins (or changes): let a burst (a flapping member,
            // several joins) settle before moving shards. A departure is acted on at once: the
            // departed member's shards have no owner until someone claims them. Claim changes
            // (a release, an expiry) are the critical path of every hand-over, and a steady
            // stream of them would otherwise keep this member from ever placing.
            let now_members = self.view.borrow().members.clone();
            if now_members != members {
                if now_members.iter().any(|(id, m)| members.get(id) != Some(m)) {
                    quiet_until = Instant::now() + self.config.rebalance_delay;
                }
                members = now_members;
            }
            host.tick().await;
            if Instant::now() < quiet_until {
                continue;
            }
            self.keep_registered().await;
            self.pass(&host).await;
        }
    }

    /// One placement pass: drop the claims that are gone, release the shards another live
    /// member should have, claim the unclaimed shards this member should have.
    async fn pass<H: ShardHost>(&self, host: &Arc<H>) {
        let Moves {
            acquire,
            release,
            lost,
        } = self.plan(host.holdings());
        for (shard, epoch) in lost {
            tracing::warn!(%shard, epoch, "claim lost; dropping shard");
            host.drop_claim(Claim { shard, epoch }).await;
        }
        let mut moves: Vec<futures::future::BoxFuture<'_, ()>> = Vec::new();
        for shard in acquire {
            moves.push(
                async move {
                    match self.claim(shard).await {
                        Ok(Some(claim)) => {
                            if let Err(e) = host.open(claim).await {
                                tracing::warn!(%shard, error = %e, "opening a claimed shard failed; releasing it");
                                self.release(claim).await;
                            }
                        }
                        Ok(None) => {} // someone else holds it; the watch will tell us
                        Err(e) => tracing::warn!(%shard, error = %e, "claim failed"),
                    }
                }
                .boxed(),
            );
        }
        for (shard, epoch) in release {
            moves.push(
                self.hand_over(host.as_ref(), Claim { shard, epoch })
                    .boxed(),
            );
        }
        futures::stream::iter(moves)
            .buffer_unordered(MOVE_CONCURRENCY)
            .collect::<Vec<()>>()
            .await;
    }

    /// ORDERING: the host stops working on the shard before its key goes, so the next holder
    /// never overlaps with us.
    pub(super) async fn hand_over<H: ShardHost>(&self, host: &H, claim: Claim) {
        host.close(claim).await;
        self.release(claim).await;
    }
}

/// The claims `host` holds.
pub(super) fn claims<H: ShardHost + ?Sized>(host: &H) -> Vec<Claim> {
    host.holdings()
        .into_iter()
        .filter_map(|(shard, h)| match h {
            Holding::Held(epoch) => Some(Claim { shard, epoch }),
            Holding::Free | Holding::Busy => None,
        })
        .collect()
}
