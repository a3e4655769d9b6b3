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
    members
        .into_iter()
        .max_by_key(|m| (score(&m.id, shard), m.id.clone()))
}

fn score(member: &str, shard: ShardId) -> u64 {
    xxhash_rust::xxh3::xxh3_64(format!("{member}/{}", shard.0).as_bytes())
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
}
