//! Scans: one page of a key range, merged in key order across the shards asked for.
//!
//! Each shard's iterator comes from its owner's database (strong) or, for an eventual scan of
//! a shard served elsewhere, from a follower that has reached the caller's floor: its
//! checkpoint reader's scan merged with the owner's log records past the checkpoint
//! (`reads/overlay.rs`). A strong page is confirmed against every shard's lease after it was
//! read, as a strong point read is.

use std::collections::BinaryHeap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{BadInput, Error, Result};
use crate::node::slot::{Entered, ShardSlot};
use crate::node::{Consistency, Located, Node, ScanPage, ScanRequest};
use crate::reads::follower::{Follower, FollowerScan};
use crate::shard::ShardId;
use crate::storage::store::{Entry, ShardScan};

/// Keeps what a shard scan reads from open until the scan ends.
enum ScanGuard {
    Owner(#[allow(dead_code)] Entered),
    Follower(#[allow(dead_code)] Arc<Follower>),
}

/// One shard's part of a scan: its owner's database, or a follower (its checkpoints merged
/// with the owner's log past them).
enum Source {
    Owner(ShardScan),
    Follower(FollowerScan),
}

impl Source {
    async fn next(&mut self) -> Result<Option<Entry>> {
        match self {
            Source::Owner(scan) => scan.next().await,
            Source::Follower(scan) => scan.next().await,
        }
    }
}

impl Node {
    /// The page size of a scan asked for `requested` items (0: the configured default).
    pub fn scan_limit(&self, requested: usize) -> Result<usize> {
        let limits = &self.config.limits;
        match requested {
            0 => Ok(limits.default_scan_limit),
            n if n > limits.max_scan_limit => Err(Error::invalid(
                BadInput::InvalidLimit,
                format!("limit must be 1..={}, got {n}", limits.max_scan_limit),
            )),
            n => Ok(n),
        }
    }

    /// Returns one page of the durable live entries of `shards` matching `req`, merged in key
    /// order. Strong: each shard must be served here (the gateway merges such pages across
    /// owners). Eventual: shards served here are read here, the others from followers, each
    /// once it has reached the version at the same index of `floors` (if any; see
    /// [`Node::get_eventual`]).
    pub async fn scan_shards(
        &self,
        req: ScanRequest,
        shards: &[ShardId],
        consistency: Consistency,
        floors: &[u64],
    ) -> Result<ScanPage> {
        let limits = &self.config.limits;
        let limit = self.scan_limit(req.limit)?;
        let Some(range) = scan_range(&req) else {
            return Ok(ScanPage {
                items: Vec::new(),
                more: false,
            });
        };
        // Open one iterator per shard, then merge them with a min-heap keyed by each shard's
        // next key. Every shard must be available: a page with a shard missing would be wrong.
        let slots: Vec<&ShardSlot> = shards
            .iter()
            .map(|s| {
                self.shards
                    .get(*s)
                    .map(|slot| slot.as_ref())
                    .ok_or_else(|| Error::invalid(BadInput::InvalidQuery, format!("no shard {s}")))
            })
            .collect::<Result<_>>()?;
        let opened = futures::future::try_join_all(slots.iter().enumerate().map(|(i, slot)| {
            let floor = floors.get(i).copied().unwrap_or(0);
            self.open_scan(slot, range.clone(), consistency, floor)
        }))
        .await?;
        let (mut scans, _guards): (Vec<Source>, Vec<ScanGuard>) = opened.into_iter().unzip();
        let mut heap = BinaryHeap::new();
        for (i, scan) in scans.iter_mut().enumerate() {
            if let Some(entry) = self.scan_next(i, scan).await? {
                heap.push(Head(entry, i));
            }
        }
        let mut items = Vec::new();
        let mut bytes = 0usize;
        while items.len() < limit && (items.is_empty() || bytes < limits.max_scan_bytes) {
            let Some(Head(entry, i)) = heap.pop() else {
                break;
            };
            if let Some(next) = self.scan_next(i, &mut scans[i]).await? {
                heap.push(Head(next, i));
            }
            bytes += entry.key.len() + entry.value.len();
            items.push(entry);
        }
        if consistency == Consistency::Strong {
            for slot in &slots {
                self.confirm_read(slot)?;
            }
        }
        for e in &items {
            self.note_served(self.shard_of(&e.key), e.version);
        }
        Ok(ScanPage {
            items,
            more: !heap.is_empty(),
        })
    }

    async fn open_scan(
        &self,
        slot: &ShardSlot,
        range: (Bound<Bytes>, Bound<Bytes>),
        consistency: Consistency,
        floor: u64,
    ) -> Result<(Source, ScanGuard)> {
        let entered = match consistency {
            Consistency::Strong => Some(self.enter(slot).await?),
            Consistency::Eventual if self.locate(slot.id) == Located::Local => {
                self.enter(slot).await.ok()
            }
            Consistency::Eventual => None,
        };
        match entered {
            Some(entered) => {
                let scan = self.observe(entered.store.scan(range).await)?;
                Ok((Source::Owner(scan), ScanGuard::Owner(entered)))
            }
            None => {
                let follower = self.followers.get(slot.id, floor).await?;
                let scan = self.observe(follower.scan(range).await)?;
                Ok((Source::Follower(scan), ScanGuard::Follower(follower)))
            }
        }
    }

    async fn scan_next(&self, i: usize, scan: &mut Source) -> Result<Option<Entry>> {
        let next = scan.next().await;
        if let Err(e) = &next {
            self.stats.storage_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard = i, error = %e, "scan failed");
        }
        next
    }
}

/// A shard iterator's next entry, ordered so that `BinaryHeap` (a max-heap) pops the smallest
/// key first.
struct Head(Entry, usize);

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.0.key.cmp(&self.0.key)
    }
}

/// The key range of a scan request, or `None` if it is empty.
fn scan_range(req: &ScanRequest) -> Option<(Bound<Bytes>, Bound<Bytes>)> {
    let mut lower: Bound<Bytes> = Bound::Unbounded;
    let mut upper: Bound<Bytes> = Bound::Unbounded;
    let mut raise = |b: Bound<Bytes>| {
        if lower_after(&b, &lower) {
            lower = b;
        }
    };
    if let Some(s) = &req.start {
        raise(Bound::Included(s.clone()));
    }
    if let Some(p) = &req.prefix {
        raise(Bound::Included(p.clone()));
    }
    if let Some(a) = &req.after {
        raise(Bound::Excluded(a.clone()));
    }
    let mut lower_upper = |b: Bound<Bytes>| {
        let tighter = match (&b, &upper) {
            (_, Bound::Unbounded) => true,
            (Bound::Excluded(x), Bound::Excluded(y)) => x < y,
            _ => false,
        };
        if tighter {
            upper = b;
        }
    };
    if let Some(e) = &req.end {
        lower_upper(Bound::Excluded(e.clone()));
    }
    if let Some(p) = &req.prefix {
        if let Some(succ) = prefix_successor(p) {
            lower_upper(Bound::Excluded(succ));
        }
    }
    let empty = match (&lower, &upper) {
        (Bound::Included(l), Bound::Excluded(u)) => l >= u,
        (Bound::Excluded(l), Bound::Excluded(u)) => l >= u,
        _ => false,
    };
    (!empty).then_some((lower, upper))
}

/// True if lower bound `a` starts after lower bound `b`.
fn lower_after(a: &Bound<Bytes>, b: &Bound<Bytes>) -> bool {
    match (a, b) {
        (Bound::Unbounded, _) => false,
        (_, Bound::Unbounded) => true,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y))
            if x != y =>
        {
            x > y
        }
        (Bound::Excluded(_), Bound::Included(_)) => true,
        _ => false,
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` if there is none.
fn prefix_successor(prefix: &[u8]) -> Option<Bytes> {
    let mut succ = prefix.to_vec();
    while let Some(last) = succ.pop() {
        if last < 0xff {
            succ.push(last + 1);
            return Some(Bytes::from(succ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn scan_ranges_intersect() {
        let req = ScanRequest {
            prefix: Some(b("ab")),
            start: Some(b("aa")),
            end: Some(b("abz")),
            after: Some(b("abc")),
            limit: 0,
        };
        assert_eq!(
            scan_range(&req),
            Some((Bound::Excluded(b("abc")), Bound::Excluded(b("abz"))))
        );
        let req = ScanRequest {
            prefix: Some(b("b")),
            end: Some(b("a")),
            ..Default::default()
        };
        assert_eq!(scan_range(&req), None);
        assert_eq!(
            prefix_successor(&[0x61, 0xff]),
            Some(Bytes::from_static(&[0x62]))
        );
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
    }
}
