//! Checkpoints: what a shard's database already holds of the logs, and the two decisions made
//! from it, which records a new owner replays and which log objects GC may delete.
//!
//! A [`Marker`] says: every record of this shard in `log` up to `through_seq` is in the
//! database. It is written in the last batch of a memtable flush of the shard (so it is
//! durable exactly when the records before it are), then published as `checkpoints/{s}.json`
//! ([`publish`]). When the database already holds everything (nothing written since its last
//! flush), the published copy alone is the checkpoint (`storage/commit.rs`). So the copy may
//! lag the marker in the database (a crash between flush and publish) or lead it (a
//! checkpoint that needed no flush), never claim more than the database holds; a new owner
//! takes the newer of the two ([`Marker::order`]), GC the published copy ([`published`]).

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::format::{Record, Segment};
use crate::error::{Error, Result};
use crate::shard::ShardId;
use crate::storage::objstore::ClusterStore;

/// A shard's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The log the shard's owner wrote when it checkpointed.
    pub log: String,
    /// Every record of the shard in `log` up to this object is in the database.
    pub through_seq: u64,
    /// The owner's claim epoch: only its records in `log` belong to the shard's history.
    pub epoch: i64,
    /// The highest version the shard has handed out: the next owner starts above it.
    pub max_version: u64,
    /// Written by a planned release: nothing to replay, and the log must not be sealed (its
    /// owner still serves other shards).
    pub clean: bool,
}

fn published_path(store: &ClusterStore, shard: ShardId) -> Path {
    store.path(&format!("checkpoints/{shard}.json"))
}

/// Publishes `marker` as `shard`'s checkpoint, unless a newer one is published already.
/// Call only once what the marker claims is durable in the shard's database.
///
/// SAFETY: the published checkpoint only moves forward ([`Marker::order`]). A replaced
/// owner that publishes late therefore never hides its successor's checkpoint, which GC
/// would otherwise take as permission to delete the successor's log objects (the "another
/// log" rule of [`collectable`]), and a new owner would take as where to replay from. Enforced with a conditional write (`If-Match` on the copy it
/// read, `If-None-Match: *` when none); a store without conditional updates (the local
/// filesystem, one process) overwrites.
pub async fn publish(store: &ClusterStore, shard: ShardId, marker: &Marker) -> Result<()> {
    let path = published_path(store, shard);
    let json = marker.encode()?;
    loop {
        let (current, version) = match store.store.get(&path).await {
            Ok(got) => {
                let version = UpdateVersion {
                    e_tag: got.meta.e_tag.clone(),
                    version: got.meta.version.clone(),
                };
                (
                    Some(Marker::decode(shard, &got.bytes().await?)?),
                    Some(version),
                )
            }
            Err(object_store::Error::NotFound { .. }) => (None, None),
            Err(e) => return Err(e.into()),
        };
        if current.is_some_and(|c| c.order() >= marker.order()) {
            return Ok(());
        }
        let mode = match version {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match store
            .store
            .put_opts(&path, PutPayload::from(json.clone()), opts)
            .await
        {
            Ok(_) => return Ok(()),
            // Someone published meanwhile: look again.
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. },
            ) => continue,
            Err(object_store::Error::NotImplemented { .. }) => {
                store.store.put(&path, PutPayload::from(json)).await?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `shard`'s published checkpoint, if any.
pub async fn published(store: &ClusterStore, shard: ShardId) -> Result<Option<Marker>> {
    match store.store.get(&published_path(store, shard)).await {
        Ok(got) => Marker::decode(shard, &got.bytes().await?).map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Marker {
    /// The marker as stored: in the shard's database and as its published copy.
    pub fn encode(&self) -> Result<Bytes> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// A marker of `shard` as [`encode`](Self::encode) stored it.
    pub fn decode(shard: ShardId, bytes: &[u8]) -> Result<Marker> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Internal(format!("checkpoint of shard {shard}: {e}")))
    }
}

impl Marker {
    /// Orders checkpoints of one shard, newest last: by claim epoch (each new owner's claim
    /// is created after the last one's, so its etcd revision is larger), then by version
    /// (each checkpoint takes a new one). A replaced owner's late checkpoint therefore never
    /// sorts after its successor's, whatever versions it handed out meanwhile.
    pub fn order(&self) -> (i64, u64) {
        (self.epoch, self.max_version)
    }
}

/// What a new owner of a shard must do with the previous owner's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// A clean hand-over: replay nothing, seal nothing.
    Clean,
    /// Seal `log` (looking from `from_seq` on), then replay the shard's records from
    /// `from_seq` up to the fence.
    Replay { log: String, from_seq: u64 },
}

impl Marker {
    /// What the next owner must do.
    pub fn takeover(&self) -> Takeover {
        if self.clean {
            Takeover::Clean
        } else {
            Takeover::Replay {
                log: self.log.clone(),
                from_seq: self.through_seq + 1,
            }
        }
    }
}

/// The records of `shard` a new owner applies, in log order, from `segments` (read from the
/// marker's log after its `through_seq`, up to the fence): only those the marker's owner wrote
/// under its epoch. Also returns the highest version among them (or the marker's).
pub fn replay(marker: &Marker, shard: ShardId, segments: &[Segment]) -> (Vec<Vec<Record>>, u64) {
    let mut max_version = marker.max_version;
    let mut groups = Vec::new();
    for segment in segments {
        let Segment::Records {
            log,
            seq,
            groups: g,
            ..
        } = segment
        else {
            continue;
        };
        if *log != marker.log || *seq <= marker.through_seq {
            continue;
        }
        for group in g {
            let mine: Vec<Record> = group
                .iter()
                .filter(|r| r.shard == shard && r.epoch == marker.epoch)
                .cloned()
                .collect();
            if let Some(top) = mine.iter().map(|r| r.version).max() {
                max_version = max_version.max(top);
                groups.push(mine);
            }
        }
    }
    (groups, max_version)
}

/// True if object `seq` of `log`, holding records of `shards`, may be deleted: every one of
/// them has a published checkpoint past it (`checkpoint` gives it; `None`: none published,
/// so keep the object). A checkpoint in another log also passes it: its owner took the shard
/// over, which replayed this log first.
///
/// ORDERING, for the other-log rule: GC lists objects *before* it reads the checkpoints, and
/// an owner publishes its takeover checkpoint *before* it serves. So if this log's owner took
/// the shard back after the checkpoint GC read, every object it wrote for the shard since was
/// created after that checkpoint was published, after GC listed, and is not being judged.
pub fn collectable<'a>(
    log: &str,
    seq: u64,
    shards: &[ShardId],
    checkpoint: impl Fn(ShardId) -> Option<&'a Marker>,
) -> bool {
    shards
        .iter()
        .all(|&s| checkpoint(s).is_some_and(|m| m.log != log || m.through_seq >= seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::log::format::Op;
    use bytes::Bytes;

    fn marker(log: &str, through_seq: u64, epoch: i64, clean: bool) -> Marker {
        Marker {
            log: log.into(),
            through_seq,
            epoch,
            max_version: 100,
            clean,
        }
    }

    fn rec(shard: u32, epoch: i64, version: u64) -> Record {
        Record {
            shard: ShardId(shard),
            epoch,
            version,
            written_at_ms: 0,
            key: Bytes::from(format!("k{version}")),
            op: Op::Delete,
        }
    }

    fn seg(log: &str, seq: u64, groups: Vec<Vec<Record>>) -> Segment {
        let mut shards: Vec<ShardId> = groups.iter().flatten().map(|r| r.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        Segment::Records {
            log: log.into(),
            seq,
            shards,
            groups,
        }
    }

    #[test]
    fn a_clean_release_needs_no_replay_and_no_seal() {
        assert_eq!(marker("a", 5, 1, true).takeover(), Takeover::Clean);
        assert_eq!(
            marker("a", 5, 1, false).takeover(),
            Takeover::Replay {
                log: "a".into(),
                from_seq: 6
            }
        );
    }

    #[test]
    fn replay_takes_only_the_shards_records_after_the_marker_under_its_epoch() {
        let m = marker("a", 5, 7, false);
        let segments = vec![
            seg("a", 5, vec![vec![rec(1, 7, 101)]]), // already checkpointed
            seg("a", 6, vec![vec![rec(1, 7, 102), rec(2, 7, 9)]]), // mixed shards
            seg("a", 7, vec![vec![rec(1, 6, 90)]]),  // an older ownership's epoch
            seg("b", 8, vec![vec![rec(1, 7, 150)]]), // another log
            seg("a", 8, vec![vec![rec(1, 7, 103)], vec![rec(3, 7, 1)]]),
            Segment::Fence {
                log: "a".into(),
                seq: 9,
            },
        ];
        let (groups, max) = replay(&m, ShardId(1), &segments);
        let versions: Vec<Vec<u64>> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.version).collect())
            .collect();
        assert_eq!(versions, vec![vec![102], vec![103]]);
        assert_eq!(max, 103);
        let (none, max) = replay(&m, ShardId(4), &segments);
        assert!(none.is_empty());
        assert_eq!(max, 100, "no records: the marker's own maximum");
    }

    #[test]
    fn gc_keeps_an_object_until_every_shard_in_it_checkpointed_past_it() {
        let markers = [
            (ShardId(1), marker("a", 10, 1, false)),
            (ShardId(2), marker("a", 7, 1, false)),
            (ShardId(3), marker("b", 1, 2, false)),
        ];
        let published = |s: ShardId| markers.iter().find(|(id, _)| *id == s).map(|(_, m)| m);
        assert!(collectable("a", 7, &[ShardId(1), ShardId(2)], published));
        assert!(
            !collectable("a", 8, &[ShardId(1), ShardId(2)], published),
            "shard 2 at 7"
        );
        assert!(
            collectable("a", 50, &[ShardId(3)], published),
            "taken over into log b"
        );
        assert!(
            !collectable("a", 1, &[ShardId(4)], published),
            "no checkpoint published"
        );
        assert!(
            collectable("a", 1, &[], published),
            "an object without records"
        );
    }
}
