//! Which gateway should own which shard, and the cluster view that decision is made from.
//!
//! Placement is rendezvous (highest-random-weight) hashing: every member scores every shard with
//! `xxh3_64("{member_id}/{shard}")`; the highest score wins (ties broken by member id). A member
//! joining or leaving moves only the shards it wins or won, about 1/N of them, and every
//! gateway computes the same answer from the same member set without talking to the others.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::shard::ShardId;

/// A live gateway, as registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Stable identity of the gateway.
    pub id: String,
    /// Base URL other gateways forward requests to, e.g. `http://127.0.0.1:7070`.
    pub url: String,
}

/// The current owner of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Member id of the owner.
    pub id: String,
    /// Its base URL.
    pub url: String,
    /// Fencing token: the create revision of the shard's owner key in etcd.
    #[serde(default)]
    pub epoch: i64,
}

/// What a gateway knows of the cluster: live members and shard owners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// Live members by id.
    pub members: BTreeMap<String, Member>,
    /// Owners by shard; an absent shard has no owner (failover in progress).
    pub owners: BTreeMap<u32, Owner>,
    /// The etcd revision this view reflects.
    pub revision: i64,
}

impl ClusterView {
    /// The member that should own `shard`, if any member is live.
    pub fn desired_owner(&self, shard: ShardId) -> Option<&Member> {
        hrw(shard, self.members.values())
    }
}

/// What a member holds of one shard, as input to [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Nothing, and free to acquire it.
    Free,
    /// Moving (opening, draining, stopping): leave it alone this pass.
    Busy,
    /// Held under this epoch.
    Held(i64),
}

/// The moves one rebalance pass should make.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moves {
    /// Unowned shards whose rendezvous choice is this member.
    pub acquire: Vec<ShardId>,
    /// Held shards another live member should have: release them (planned move).
    pub release: Vec<(ShardId, i64)>,
    /// Held shards whose owner key is gone or belongs to someone else: stop at once.
    pub lost: Vec<(ShardId, i64)>,
}

/// Decides, from `view`, what member `me` should do with each shard it reports a holding for.
/// Gateways (shard ownership) and compactors (compaction claims) share this rule.
pub fn plan(
    view: &ClusterView,
    me: &str,
    holdings: impl IntoIterator<Item = (ShardId, Holding)>,
) -> Moves {
    let mut moves = Moves::default();
    for (shard, holding) in holdings {
        let desired = view.desired_owner(shard).map(|m| m.id.as_str());
        let owner = view.owners.get(&shard.0);
        match (holding, owner) {
            (Holding::Free, None) if desired == Some(me) => moves.acquire.push(shard),
            (Holding::Held(epoch), Some(o))
                if o.id == me && o.epoch == epoch && desired.is_some_and(|d| d != me) =>
            {
                moves.release.push((shard, epoch));
            }
            (Holding::Held(epoch), Some(o)) if o.id == me && o.epoch == epoch => {}
            // The view predates our acquisition: nothing to conclude yet.
            (Holding::Held(epoch), _) if view.revision < epoch => {}
            (Holding::Held(epoch), _) => moves.lost.push((shard, epoch)),
            _ => {}
        }
    }
    moves
}

/// Accumulates, per shard, the time it had no owner in one gateway's view of the cluster
/// (failover and handoff gaps, for metrics).
#[derive(Debug, Default)]
pub struct UnownedTime {
    /// Per shard: time accumulated so far, and since when it is unowned (if it is).
    shards: Mutex<Vec<(Duration, Option<Instant>)>>,
}

impl UnownedTime {
    /// Updates the accounting with `view`, as seen at `now`.
    pub fn observe(&self, view: &ClusterView, shard_count: u32, now: Instant) {
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.resize(shard_count as usize, (Duration::ZERO, None));
        for (n, (total, since)) in shards.iter_mut().enumerate() {
            let owned = view.owners.contains_key(&(n as u32));
            match (owned, *since) {
                (false, None) => *since = Some(now),
                (true, Some(t)) => {
                    *total += now.saturating_duration_since(t);
                    *since = None;
                }
                _ => {}
            }
        }
    }

    /// Per shard, the total time without an owner up to `now`.
    pub fn totals(&self, now: Instant) -> Vec<Duration> {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards
            .iter()
            .map(|(total, since)| {
                *total + since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
            })
            .collect()
    }
}

/// Returns the highest-random-weight member for `shard`.
pub fn hrw<'a>(
    shard: ShardId,
    members: impl IntoIterator<Item = &'a Member>,
) -> Option<&'a Member> {
    members.into_iter().max_by_key(|m| weight(m, shard))
}

/// Every member by decreasing weight for `shard`: [`hrw`]'s choice first, then the one it
/// would choose without the first, and so on. Removing a member leaves the others' order as
/// it was.
pub fn ranked<'a>(
    shard: ShardId,
    members: impl IntoIterator<Item = &'a Member>,
) -> Vec<&'a Member> {
    let mut weighted: Vec<_> = members.into_iter().map(|m| (weight(m, shard), m)).collect();
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    weighted.into_iter().map(|(_, m)| m).collect()
}

/// A member's weight for a shard; ties are broken by member id.
fn weight(m: &Member, shard: ShardId) -> (u64, &str) {
    let score = xxhash_rust::xxh3::xxh3_64(format!("{}/{}", m.id, shard.0).as_bytes());
    (score, &m.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                id: format!("gw{i}"),
                url: format!("http://127.0.0.1:{}", 7000 + i),
            })
            .collect()
    }

    #[test]
    fn join_moves_about_one_nth() {
        let three = members(3);
        let four = members(4);
        let shards = 1024;
        let mut moved = 0;
        let mut per_member = [0usize; 4];
        for s in 0..shards {
            let before = hrw(ShardId(s), &three).unwrap();
            let after = hrw(ShardId(s), &four).unwrap();
            if before.id != after.id {
                moved += 1;
                assert_eq!(
                    after.id, "gw3",
                    "a join only moves shards to the new member"
                );
            }
            per_member[after.id[2..].parse::<usize>().unwrap()] += 1;
        }
        assert!((180..330).contains(&moved), "moved {moved} of {shards}");
        assert!(
            per_member.iter().all(|&c| (200..312).contains(&c)),
            "{per_member:?}"
        );
    }

    #[test]
    fn unowned_time_accumulates_gaps() {
        let t = UnownedTime::default();
        let t0 = Instant::now();
        let mut view = ClusterView::default();
        let owner = Owner {
            id: "a".into(),
            url: String::new(),
            epoch: 1,
        };
        view.owners.insert(0, owner.clone());
        t.observe(&view, 2, t0); // shard 1 unowned from t0
        view.owners.insert(1, owner.clone());
        t.observe(&view, 2, t0 + Duration::from_millis(300));
        view.owners.remove(&0); // shard 0 loses its owner
        t.observe(&view, 2, t0 + Duration::from_millis(400));
        let totals = t.totals(t0 + Duration::from_millis(1000));
        assert_eq!(
            totals,
            vec![Duration::from_millis(600), Duration::from_millis(300)]
        );
    }

    #[test]
    fn plan_acquires_releases_and_drops() {
        let m = members(2);
        let mut view = ClusterView {
            members: m.iter().map(|m| (m.id.clone(), m.clone())).collect(),
            revision: 10,
            ..ClusterView::default()
        };
        let mine = (0..64)
            .map(ShardId)
            .find(|s| view.desired_owner(*s).unwrap().id == "gw0");
        let theirs = (0..64)
            .map(ShardId)
            .find(|s| view.desired_owner(*s).unwrap().id == "gw1");
        let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
        let owner = |epoch| Owner {
            id: "gw0".into(),
            url: String::new(),
            epoch,
        };
        view.owners.insert(theirs.0, owner(5));
        let moves = plan(
            &view,
            "gw0",
            [(mine, Holding::Free), (theirs, Holding::Held(5))],
        );
        assert_eq!(moves.acquire, vec![mine]);
        assert_eq!(moves.release, vec![(theirs, 5)]);
        // An owner key with another epoch means the holding is lost; a view older than the
        // epoch proves nothing yet.
        let moves = plan(&view, "gw0", [(theirs, Holding::Held(7))]);
        assert_eq!(moves.lost, vec![(theirs, 7)]);
        let moves = plan(&view, "gw0", [(mine, Holding::Held(11))]);
        assert_eq!(moves, Moves::default());
        let moves = plan(&view, "gw0", [(mine, Holding::Busy)]);
        assert_eq!(moves, Moves::default());
    }

    #[test]
    fn same_answer_regardless_of_order() {
        let mut m = members(5);
        let a: Vec<_> = (0..64)
            .map(|s| hrw(ShardId(s), &m).unwrap().id.clone())
            .collect();
        m.reverse();
        let b: Vec<_> = (0..64)
            .map(|s| hrw(ShardId(s), &m).unwrap().id.clone())
            .collect();
        assert_eq!(a, b);
        assert!(hrw(ShardId(0), &[]).is_none());
    }

    #[test]
    fn ranked_starts_with_hrw_and_survives_removals() {
        let m = members(5);
        for s in 0..64 {
            let shard = ShardId(s);
            let all = ranked(shard, &m);
            assert_eq!(all.len(), 5);
            assert_eq!(all[0], hrw(shard, &m).unwrap());
            // Without the second member, the others keep their order.
            let rest: Vec<Member> = m.iter().filter(|x| x.id != all[1].id).cloned().collect();
            let expected: Vec<&str> = all
                .iter()
                .filter(|x| x.id != all[1].id)
                .map(|x| x.id.as_str())
                .collect();
            let got: Vec<&str> = ranked(shard, &rest).iter().map(|x| x.id.as_str()).collect();
            assert_eq!(got, expected);
        }
    }
}
