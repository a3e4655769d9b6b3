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

/// Every shard's rendezvous choice for one member set. Scoring a shard hashes it with every
/// member, and each member's placement loop plans every shard every second: recomputed for
/// each pass, that was `shards × members` hashes per member per second (0.2 of a core per
/// gateway at 1024 shards and 9 gateways, docs/bench/scale-test.md). So the choices are
/// computed once per member set, each shard's when it is first asked for.
#[derive(Debug, Default)]
pub struct Choices {
    /// The ids of the member set the choices were made for, in order.
    members: Vec<String>,
    /// Per shard, the index in `members` of its choice (`UNKNOWN`: not computed yet).
    choice: Vec<u32>,
}

impl Choices {
    const UNKNOWN: u32 = u32::MAX;

    /// Makes the choices those of `members`: forgets them if the member set changed.
    pub fn sync(&mut self, members: &BTreeMap<String, Member>) {
        if !self.members.iter().eq(members.keys()) {
            self.members = members.keys().cloned().collect();
            self.choice.clear();
        }
    }

    /// The id of the member that should own `shard` ([`hrw`] over the synced member set), if
    /// there is any member.
    pub fn of(&mut self, shard: ShardId) -> Option<&str> {
        let n = shard.0 as usize;
        if n >= self.choice.len() {
            self.choice.resize(n + 1, Self::UNKNOWN);
        }
        if self.choice[n] == Self::UNKNOWN {
            let best = self
                .members
                .iter()
                .enumerate()
                .max_by_key(|(_, id)| weight(id, shard))?;
            self.choice[n] = best.0 as u32;
        }
        Some(&self.members[self.choice[n] as usize])
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
/// `choices` carries the rendezvous choices from one call to the next.
pub fn plan(
    view: &ClusterView,
    choices: &mut Choices,
    me: &str,
    holdings: impl IntoIterator<Item = (ShardId, Holding)>,
) -> Moves {
    let mut moves = Moves::default();
    choices.sync(&view.members);
    for (shard, holding) in holdings {
        let desired = choices.of(shard);
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
    members.into_iter().max_by_key(|m| weight(&m.id, shard))
}

/// Every member by decreasing weight for `shard`: [`hrw`]'s choice first, then the one it
/// would choose without the first, and so on. Removing a member leaves the others' order as
/// it was.
pub fn ranked<'a>(
    shard: ShardId,
    members: impl IntoIterator<Item = &'a Member>,
) -> Vec<&'a Member> {
    let mut weighted: Vec<_> = members
        .into_iter()
        .map(|m| (weight(&m.id, shard), m))
        .collect();
    weighted.sort_unstable_by(|a, b| b.0.cmp(&a.0));
    weighted.into_iter().map(|(_, m)| m).collect()
}

/// A member's weight for a shard; ties are broken by member id. Every gateway version must
/// score alike, or a rolling upgrade would move shards back and forth.
fn weight(id: &str, shard: ShardId) -> (u64, &str) {
    let score = xxhash_rust::xxh3::xxh3_64(format!("{id}/{}", shard.0).as_bytes());
    (score, id)
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
        let desired = |s: ShardId| hrw(s, &m).unwrap().id.clone();
        let mine = (0..64).map(ShardId).find(|s| desired(*s) == "gw0");
        let theirs = (0..64).map(ShardId).find(|s| desired(*s) == "gw1");
        let (mine, theirs) = (mine.unwrap(), theirs.unwrap());
        let owner = |epoch| Owner {
            id: "gw0".into(),
            url: String::new(),
            epoch,
        };
        view.owners.insert(theirs.0, owner(5));
        let choices = &mut Choices::default();
        let moves = plan(
            &view,
            choices,
            "gw0",
            [(mine, Holding::Free), (theirs, Holding::Held(5))],
        );
        assert_eq!(moves.acquire, vec![mine]);
        assert_eq!(moves.release, vec![(theirs, 5)]);
        // An owner key with another epoch means the holding is lost; a view older than the
        // epoch proves nothing yet.
        let moves = plan(&view, choices, "gw0", [(theirs, Holding::Held(7))]);
        assert_eq!(moves.lost, vec![(theirs, 7)]);
        let moves = plan(&view, choices, "gw0", [(mine, Holding::Held(11))]);
        assert_eq!(moves, Moves::default());
        let moves = plan(&view, choices, "gw0", [(mine, Holding::Busy)]);
        assert_eq!(moves, Moves::default());
    }

    #[test]
    fn choices_follow_the_member_set() {
        let mut choices = Choices::default();
        let by_id = |m: &[Member]| m.iter().map(|m| (m.id.clone(), m.clone())).collect();
        let mut m = members(4);
        for round in 0..4 {
            choices.sync(&by_id(&m));
            // Asked out of order and twice: the memo answers as hrw does.
            for s in (0..256).rev().chain(0..256) {
                let want = hrw(ShardId(s), &m).map(|m| m.id.as_str());
                assert_eq!(choices.of(ShardId(s)), want, "round {round}, shard {s}");
            }
            // A member leaves, or (round 2) one joins; the last round has none.
            match round {
                2 => m.push(Member {
                    id: "gw9".into(),
                    url: String::new(),
                }),
                _ => m.truncate(if round == 3 { 0 } else { m.len() - 1 }),
            }
        }
        choices.sync(&BTreeMap::new());
        assert_eq!(choices.of(ShardId(3)), None);
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
