//! Log GC: deletes the commit-log objects that no replay and no seal can need any more. The
//! compactor runs [`collect`]; nothing else deletes log objects.
//!
//! # Rules
//!
//! One pass judges the objects one LIST of `{prefix}/logs/` returned, log by log:
//!
//! - **R1, records.** A records object is deleted when [`checkpoint::collectable`] says so:
//!   every shard in its header has a published checkpoint past it (same log,
//!   `through_seq >= seq`) or in another log (a newer owner replayed this one).
//! - **R2, the tail.** The highest-numbered object of a log that does not end in a fence is
//!   kept, whatever R1 says. [`super::seal`] finds where to put a fence with a LIST: the
//!   highest object plus one. If that object were gone, the fence could land at a number
//!   the writer already used, below the writer's next object, and fence nothing: the writer
//!   would go on acknowledging writes the new owner never replays. R2 keeps, at every moment,
//!   the highest object ever created in the log: a pass deletes an object only if its LIST
//!   also returned a higher one, so no pass (however many run at once) deletes the highest.
//! - **R3, fences.** A log's fence (its highest object, once sealed) is deleted only when, in
//!   the same pass, every other object of the log was a records object that R1 deleted, no
//!   shard has a published, non-clean checkpoint in the log, and the fence is older than
//!   [`GcOptions::fence_min_age`]. A fence is what stops the old writer, and its number is
//!   where a later seal of the same log must land, so it stays while anyone may still write
//!   or seal there: a shard whose checkpoint is in the log may be taken over (sealing it
//!   again: with the fence gone, that seal could land below the writer's next number), and a
//!   gateway that lost a shard keeps writing for it until it notices (its next flush hits
//!   the fence). The age bounds the second case; it must exceed the time a gateway takes to
//!   notice it lost a shard (etcd watch, lease deadline) plus the longest a flush can be in
//!   flight.
//! - Anything else under `logs/` (not `{log}/{seq:020}`, or a header that does not parse
//!   against the object's name and size) is kept and counted as an error.
//!
//! # Ordering
//!
//! ORDERING: the LIST comes before any checkpoint is read. R1's other-log case relies on it
//! (see [`checkpoint::collectable`]): an owner that takes a shard back into a log it wrote
//! before publishes the takeover checkpoint (in that log) before it writes the shard's new
//! records there. So if the checkpoint this pass read still names the other log, every
//! object holding the shard's new records was created after that read, after the LIST, and
//! is not being judged. Read before the LIST, the stale checkpoint would judge objects
//! created after it and pass records nobody has checkpointed. Object headers are immutable,
//! so when they are read does not matter. R3's checkpoints are read after the LIST too.
//!
//! # What the writers must do (assumed here)
//!
//! - A shard's checkpoint is published before the shard's owner writes its records into a
//!   log the published checkpoint does not name: on a first claim, on a takeover (including
//!   taking a shard back into an older log), and after a seal made it move to a new log. The
//!   published copy may lag the marker within one log, never across logs.
//! - Replay reads the shard's records from the marker's `through_seq + 1` up to the fence
//!   and skips missing numbers: R1 deletes objects in the middle of a log (those whose shards
//!   all checkpointed past them), never one holding a record the marker does not cover.
//!
//! # Invariants
//!
//! - For every shard with a non-clean marker `(log, t)`: every object of `log` after `t`
//!   that holds the shard's records exists (`tests::gc_never_deletes_what_a_replay_needs`).
//! - A seal of any log puts its fence above every object ever created there.
//! - Passes are idempotent and may overlap: each decision rests on the pass's own LIST and
//!   reads, objects never change, and deleting a deleted object is not an error.
//!
//! # Cost
//!
//! One LIST, then one ranged GET (the header, 1 KiB) per log object and one GET per shard
//! named in a header; a LIST of `checkpoints/` and the other checkpoints only when a fence may
//! go. Objects stay until their shards checkpoint, so an idle cluster has about one object per
//! gateway (R2).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Buf;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectMeta};

use super::checkpoint::{self, Marker};
use crate::error::Result;
use crate::shard::ShardId;
use crate::storage::objstore::ClusterStore;

/// Default of [`GcOptions::fence_min_age`].
pub const DEFAULT_FENCE_MIN_AGE: Duration = Duration::from_secs(3600);

/// Requests a pass keeps in flight (header and checkpoint reads).
const CONCURRENCY: usize = 16;

/// Bytes of an object read first for its header: enough for a log id of 100 bytes and over
/// 200 shards; a longer header is read again in full.
const HEADER_READ: u64 = 1024;

/// Settings of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// A fence younger than this is kept even when its log is otherwise collected (R3).
    /// Default: 1 h ([`DEFAULT_FENCE_MIN_AGE`]).
    pub fence_min_age: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            fence_min_age: DEFAULT_FENCE_MIN_AGE,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Objects under `logs/` the LIST returned.
    pub listed: u64,
    /// Distinct logs among them.
    pub logs: u64,
    /// Objects deleted (records and fences).
    pub deleted: u64,
    /// Fences among `deleted`.
    pub fences_deleted: u64,
    /// Bytes of the deleted objects.
    pub deleted_bytes: u64,
    /// Listed and not deleted: what is left.
    pub kept: u64,
    /// Published checkpoints read.
    pub checkpoints_read: u64,
    /// Objects or checkpoints that could not be read, parsed or deleted (their objects were
    /// kept; details in the log at WARN).
    pub errors: u64,
}

impl std::fmt::Display for GcReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} objects in {} logs listed, {} deleted ({} fences, {} bytes), {} kept, {} errors",
            self.listed,
            self.logs,
            self.deleted,
            self.fences_deleted,
            self.deleted_bytes,
            self.kept,
            self.errors
        )
    }
}

/// What GC needs of an object: its kind and, for records, whose records it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Header {
    Records(Vec<ShardId>),
    Fence,
}

/// One listed object of a log.
#[derive(Debug)]
struct Object {
    path: Path,
    size: u64,
    modified: SystemTime,
    /// `None`: unreadable; kept.
    header: Option<Header>,
}

/// Runs one pass: LIST, read headers and checkpoints, delete what the rules allow.
/// Fails only if the LIST fails; an object or checkpoint that cannot be read is kept and
/// counted in [`GcReport::errors`].
pub async fn collect(store: &ClusterStore, options: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport::default();
    // ORDERING: this LIST happens before any checkpoint is read (module docs, "Ordering").
    let dir = store.path("logs");
    let listing: Vec<ObjectMeta> = store.store.list(Some(&dir)).try_collect().await?;
    report.listed = listing.len() as u64;

    let mut logs: BTreeMap<String, BTreeMap<u64, Object>> = BTreeMap::new();
    let mut named = Vec::new();
    for meta in listing {
        match log_and_seq(&dir, &meta.location) {
            Some((log, seq)) => named.push((log, seq, meta)),
            None => {
                tracing::warn!(path = %meta.location, "not a log object; kept");
                report.errors += 1;
            }
        }
    }
    let read = futures::stream::iter(named)
        .map(|(log, seq, meta)| async move {
            let header = match read_header(store, &meta, &log, seq).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(log, seq, error = %e, "cannot read a log object's header; kept");
                    None
                }
            };
            (log, seq, meta, header)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    for (log, seq, meta, header) in read {
        report.errors += u64::from(header.is_none());
        let modified = UNIX_EPOCH
            + Duration::from_millis(
                u64::try_from(meta.last_modified.timestamp_millis()).unwrap_or(0),
            );
        logs.entry(log).or_default().insert(
            seq,
            Object {
                path: meta.location,
                size: meta.size,
                modified,
                header,
            },
        );
    }
    report.logs = logs.len() as u64;

    // R1 and R2.
    let mut checkpoints = Checkpoints::default();
    let involved: BTreeSet<ShardId> = logs
        .values()
        .flat_map(BTreeMap::values)
        .filter_map(|o| match &o.header {
            Some(Header::Records(shards)) => Some(shards.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    checkpoints.read(store, involved, &mut report).await;
    let mut doomed: Vec<(String, u64)> = Vec::new();
    for (log, objects) in &logs {
        let Some((&highest, last)) = objects.last_key_value() else {
            continue;
        };
        let sealed = last.header == Some(Header::Fence);
        for (&seq, object) in objects {
            match &object.header {
                // R1, except for the tail of a live log (R2).
                Some(Header::Records(shards))
                    if (sealed || seq != highest)
                        && checkpoint::collectable(log, seq, shards, |s| checkpoints.get(s)) =>
                {
                    doomed.push((log.clone(), seq));
                }
                Some(Header::Fence) if seq != highest => {
                    tracing::warn!(log, seq, "a fence below a log's highest object; kept");
                }
                _ => {}
            }
        }
    }
    let deleted = delete(store, &logs, &doomed, &mut report).await;

    // R3: fences of logs with nothing else left, old enough, and no checkpoint naming the log.
    let now = SystemTime::now();
    let candidates: Vec<(String, u64)> = logs
        .iter()
        .filter_map(|(log, objects)| {
            let (&highest, fence) = objects.last_key_value()?;
            let alone = objects
                .keys()
                .all(|&seq| seq == highest || deleted.contains(&(log.clone(), seq)));
            let old = now
                .duration_since(fence.modified)
                .is_ok_and(|age| age >= options.fence_min_age);
            (fence.header == Some(Header::Fence) && alone && old).then(|| (log.clone(), highest))
        })
        .collect();
    if !candidates.is_empty() {
        // ORDERING: these reads come after the LIST, as R1's do.
        let complete = checkpoints.read_all(store, &mut report).await;
        let named: BTreeSet<&str> = checkpoints
            .markers()
            .filter(|m| !m.clean)
            .map(|m| m.log.as_str())
            .collect();
        let fences: Vec<(String, u64)> = candidates
            .into_iter()
            .filter(|(log, _)| complete && !named.contains(log.as_str()))
            .collect();
        let gone = delete(store, &logs, &fences, &mut report).await;
        report.fences_deleted = gone.len() as u64;
    }
    report.kept = report.listed - report.deleted;
    if report.deleted > 0 || report.errors > 0 {
        tracing::info!(%report, "log GC pass");
    } else {
        tracing::debug!(%report, "log GC pass");
    }
    Ok(report)
}

/// `(log, seq)` of `path` if it is `{dir}/{log}/{seq:020}`.
fn log_and_seq(dir: &Path, path: &Path) -> Option<(String, u64)> {
    let mut parts = path.prefix_match(dir)?;
    let log = parts.next()?;
    let seq = parts.next()?;
    if parts.next().is_some() || seq.as_ref().len() != 20 {
        return None;
    }
    let seq = seq.as_ref().parse().ok()?;
    Some((log.as_ref().to_string(), seq))
}

/// Deletes `which` (all in `logs`), records the outcome in `report`, returns what is gone.
async fn delete(
    store: &ClusterStore,
    logs: &BTreeMap<String, BTreeMap<u64, Object>>,
    which: &[(String, u64)],
    report: &mut GcReport,
) -> BTreeSet<(String, u64)> {
    let mut gone = BTreeSet::new();
    if which.is_empty() {
        return gone;
    }
    let by_path: BTreeMap<&Path, &(String, u64)> = which
        .iter()
        .map(|object| (&logs[&object.0][&object.1].path, object))
        .collect();
    let paths: Vec<object_store::Result<Path>> = by_path.keys().map(|p| Ok((*p).clone())).collect();
    let results: Vec<object_store::Result<Path>> = store
        .store
        .delete_stream(futures::stream::iter(paths).boxed())
        .collect()
        .await;
    // A bulk delete may fail as a whole with one error for many paths, so only an `Ok` says
    // which object is gone. Deleting an object already gone succeeds on S3; elsewhere it
    // fails as `NotFound`, which is no error here but leaves its object unaccounted: a fence
    // waits for the next pass.
    for result in results {
        match result {
            Ok(path) => {
                if let Some(&(log, seq)) = by_path.get(&path) {
                    report.deleted += 1;
                    report.deleted_bytes += logs[log][seq].size;
                    gone.insert((log.clone(), *seq));
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot delete log objects");
                report.errors += 1;
            }
        }
    }
    gone
}

/// The published checkpoints read in one pass: each shard's at most once.
#[derive(Default)]
struct Checkpoints {
    /// `None`: none published.
    read: BTreeMap<ShardId, Option<Marker>>,
    /// Shards whose checkpoint could not be read (treated as unpublished: their objects stay).
    failed: BTreeSet<ShardId>,
}

impl Checkpoints {
    fn get(&self, shard: ShardId) -> Option<&Marker> {
        self.read.get(&shard)?.as_ref()
    }

    fn markers(&self) -> impl Iterator<Item = &Marker> {
        self.read.values().flatten()
    }

    /// Reads the checkpoints of `shards` not read yet.
    async fn read(
        &mut self,
        store: &ClusterStore,
        shards: impl IntoIterator<Item = ShardId>,
        report: &mut GcReport,
    ) {
        let todo: Vec<ShardId> = shards
            .into_iter()
            .filter(|s| !self.read.contains_key(s) && !self.failed.contains(s))
            .collect();
        let results: Vec<(ShardId, Result<Option<Marker>>)> = futures::stream::iter(todo)
            .map(|s| async move { (s, checkpoint::published(store, s).await) })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (shard, result) in results {
            match result {
                Ok(marker) => {
                    report.checkpoints_read += 1;
                    self.read.insert(shard, marker);
                }
                Err(e) => {
                    tracing::warn!(%shard, error = %e, "cannot read a published checkpoint; its objects stay");
                    report.errors += 1;
                    self.failed.insert(shard);
                }
            }
        }
    }

    /// Reads every published checkpoint (LIST `checkpoints/`). False if any could not be
    /// read: then nobody can say that no checkpoint names a log.
    async fn read_all(&mut self, store: &ClusterStore, report: &mut GcReport) -> bool {
        let dir = store.path("checkpoints");
        let listing: Vec<ObjectMeta> = match store.store.list(Some(&dir)).try_collect().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the published checkpoints; fences stay");
                report.errors += 1;
                return false;
            }
        };
        let shards: Vec<ShardId> = listing
            .iter()
            .filter_map(|m| {
                let name = m.location.filename()?.strip_suffix(".json")?;
                Some(ShardId(name.parse().ok()?))
            })
            .collect();
        self.read(store, shards, report).await;
        self.failed.is_empty()
    }
}

/// Reads and checks the header of the object `meta` (object `seq` of `log`).
async fn read_header(
    store: &ClusterStore,
    meta: &ObjectMeta,
    log: &str,
    seq: u64,
) -> std::result::Result<Header, String> {
    let mut want = HEADER_READ.min(meta.size);
    loop {
        let options = GetOptions {
            range: Some((0..want).into()),
            ..GetOptions::default()
        };
        let bytes = store
            .store
            .get_opts(&meta.location, options)
            .await
            .map_err(|e| e.to_string())?
            .bytes()
            .await
            .map_err(|e| e.to_string())?;
        match parse_header(&bytes, meta.size, log, seq)? {
            Parsed::Header(h) => return Ok(h),
            Parsed::Need(n) if n > want && n <= meta.size => want = n,
            Parsed::Need(_) => return Err("truncated header".into()),
        }
    }
}

/// The outcome of parsing the start of an object.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Header(Header),
    /// The header is this many bytes: read that much.
    Need(u64),
}

// The layout of `format.rs` (which keeps its constants private), read up to the body. The
// tests check this parser against `format::encode_records` and `format::encode_fence`.
const MAGIC: &[u8; 4] = b"TSLG";
const FORMAT: u8 = 1;
const KIND_RECORDS: u8 = 1;
const KIND_FENCE: u8 = 2;
/// magic, format, kind, seq, log id length.
const FIXED: usize = 4 + 1 + 1 + 8 + 2;

/// Parses the header at the start of `b` (the first bytes of an object of `size` bytes named
/// as object `seq` of `log`). Without the body, the CRC cannot be checked; instead the header
/// must agree with the object's name and exact size, so a foreign, torn or misnamed object
/// is refused, never misread.
fn parse_header(b: &[u8], size: u64, log: &str, seq: u64) -> std::result::Result<Parsed, String> {
    let need = |n: usize| Ok(Parsed::Need(n as u64));
    if b.len() < FIXED {
        return need(FIXED);
    }
    let mut c = b;
    if &c[..4] != MAGIC {
        return Err("bad magic".into());
    }
    c.advance(4);
    if c.get_u8() != FORMAT {
        return Err("unknown format".into());
    }
    let kind = c.get_u8();
    let own_seq = c.get_u64_le();
    let log_len = c.get_u16_le() as usize;
    let shards_at = FIXED + log_len + 4;
    if b.len() < shards_at {
        return need(shards_at);
    }
    if &c[..log_len] != log.as_bytes() || own_seq != seq {
        return Err(format!("the header names another object (seq {own_seq})"));
    }
    c.advance(log_len);
    let count = c.get_u32_le() as usize;
    let header_len = shards_at + count.saturating_mul(4) + 4;
    if header_len as u64 + 4 > size {
        return Err("shard count beyond the object".into());
    }
    if b.len() < header_len {
        return need(header_len);
    }
    let shards: Vec<ShardId> = (0..count).map(|_| ShardId(c.get_u32_le())).collect();
    let body_len = u64::from(c.get_u32_le());
    if header_len as u64 + body_len + 4 != size {
        return Err("body length does not match the object's size".into());
    }
    if !shards.windows(2).all(|w| w[0] < w[1]) {
        return Err("shard list not sorted".into());
    }
    match kind {
        KIND_RECORDS => Ok(Parsed::Header(Header::Records(shards))),
        KIND_FENCE if shards.is_empty() && body_len == 0 => Ok(Parsed::Header(Header::Fence)),
        _ => Err(format!("kind {kind}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::FutureExt;
    use object_store::ObjectStoreExt;

    use super::*;
    use crate::storage::log::format::{self, encode_fence, encode_records, Op, Record, Segment};
    use crate::storage::log::{create, object_path, seal};
    use crate::storage::testing::{hooked, memory, Hook};

    fn now_opts() -> GcOptions {
        GcOptions {
            fence_min_age: Duration::ZERO,
        }
    }

    fn record(shard: u32, version: u64) -> Record {
        Record {
            shard: ShardId(shard),
            epoch: 1,
            version,
            written_at_ms: 0,
            key: Bytes::from(format!("k{version}")),
            op: Op::Put {
                value: Bytes::from_static(b"v"),
                expires_at_ms: None,
            },
        }
    }

    /// Creates object `seq` of `log` with one record of each of `shards`.
    async fn put_records(store: &ClusterStore, log: &str, seq: u64, shards: &[u32]) {
        let groups = vec![shards.iter().map(|&s| record(s, seq)).collect()];
        let path = object_path(store, log, seq);
        assert!(create(store, &path, encode_records(log, seq, &groups))
            .await
            .unwrap());
    }

    async fn put_fence(store: &ClusterStore, log: &str, seq: u64) {
        let path = object_path(store, log, seq);
        assert!(create(store, &path, encode_fence(log, seq)).await.unwrap());
    }

    /// Versions for test markers: every checkpoint takes a new one, as in the gateway, so
    /// each publish moves the published checkpoint forward.
    static VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

    fn next_version() -> u64 {
        VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    async fn publish(store: &ClusterStore, shard: u32, log: &str, through_seq: u64, clean: bool) {
        let marker = Marker {
            log: log.into(),
            through_seq,
            epoch: 1,
            max_version: next_version(),
            clean,
        };
        checkpoint::publish(store, ShardId(shard), &marker)
            .await
            .unwrap();
    }

    /// The `(log, seq)` of every object under `logs/`.
    async fn remaining(store: &ClusterStore) -> BTreeSet<(String, u64)> {
        let dir = store.path("logs");
        let listed: Vec<ObjectMeta> = store.store.list(Some(&dir)).try_collect().await.unwrap();
        listed
            .iter()
            .filter_map(|m| log_and_seq(&dir, &m.location))
            .collect()
    }

    fn set(objects: &[(&str, u64)]) -> BTreeSet<(String, u64)> {
        objects.iter().map(|(l, s)| (l.to_string(), *s)).collect()
    }

    #[tokio::test]
    async fn collects_exactly_what_the_rules_allow() {
        let store = memory();
        // a: a live log. Shard 1 checkpointed through 5, shard 2 through 1, shard 3 never.
        for (seq, shards) in [(1, &[1, 2][..]), (2, &[2]), (3, &[1]), (4, &[3]), (5, &[1])] {
            put_records(&store, "a", seq, shards).await;
        }
        publish(&store, 1, "a", 5, false).await;
        publish(&store, 2, "a", 1, false).await;
        // b: sealed; shard 4 moved on to log c (a new owner replayed b): all of b goes.
        put_records(&store, "b", 1, &[4]).await;
        put_records(&store, "b", 2, &[4]).await;
        put_fence(&store, "b", 3).await;
        put_records(&store, "c", 1, &[4]).await;
        publish(&store, 4, "c", 0, false).await;
        // d: sealed, but shard 3 (no checkpoint) still has records there: the fence stays.
        put_records(&store, "d", 1, &[3]).await;
        put_fence(&store, "d", 2).await;
        // e: sealed, records covered, but shard 5's checkpoint is in e: it may still seal e.
        put_records(&store, "e", 1, &[5]).await;
        put_fence(&store, "e", 2).await;
        publish(&store, 5, "e", 1, false).await;
        // f: sealed; shard 6 left it by a clean release, which never seals: all of f goes.
        put_records(&store, "f", 1, &[6]).await;
        put_fence(&store, "f", 2).await;
        publish(&store, 6, "f", 1, true).await;
        // Not log objects: kept.
        for junk in ["logs/README", "logs/a/7", "logs/a/x/00000000000000000001"] {
            store
                .store
                .put(&store.path(junk), "?".into())
                .await
                .unwrap();
        }

        let report = collect(&store, &now_opts()).await.unwrap();
        let kept = set(&[
            ("a", 2), // shard 2 checkpointed only through 1
            ("a", 4), // shard 3 has no checkpoint
            ("a", 5), // the live log's last object, though shard 1 passed it
            ("c", 1),
            ("d", 1),
            ("d", 2),
            ("e", 2),
        ]);
        assert_eq!(remaining(&store).await, kept);
        assert_eq!(report.listed, 18);
        assert_eq!(report.logs, 6);
        assert_eq!(report.deleted, 8, "{report}");
        assert_eq!(report.fences_deleted, 2, "b and f");
        assert_eq!(report.kept, 10, "7 log objects and 3 others");
        assert_eq!(report.errors, 3, "the three foreign objects");
        assert!(report.deleted_bytes > 0);
        for junk in ["logs/README", "logs/a/7"] {
            assert!(store.store.head(&store.path(junk)).await.is_ok(), "{junk}");
        }

        // A second pass has nothing left to do; shard 2's checkpoint moving on frees a/2.
        assert_eq!(collect(&store, &now_opts()).await.unwrap().deleted, 0);
        publish(&store, 2, "a", 5, false).await;
        assert_eq!(collect(&store, &now_opts()).await.unwrap().deleted, 1);
        assert!(!remaining(&store).await.contains(&("a".to_string(), 2)));
    }

    #[tokio::test]
    async fn a_young_fence_stays() {
        let store = memory();
        put_records(&store, "a", 1, &[1]).await;
        put_fence(&store, "a", 2).await;
        publish(&store, 1, "b", 0, false).await;
        let report = collect(&store, &GcOptions::default()).await.unwrap();
        assert_eq!((report.deleted, report.fences_deleted), (1, 0));
        assert_eq!(remaining(&store).await, set(&[("a", 2)]));
        let report = collect(&store, &now_opts()).await.unwrap();
        assert_eq!(report.fences_deleted, 1);
        assert!(remaining(&store).await.is_empty());
    }

    /// With the fence of a collected log gone, a later seal of it could land below its
    /// writer's next number; so a fence stays while a checkpoint names its log, even when
    /// that shard has no records left there (an idle shard of a gateway that has not yet
    /// noticed the seal).
    #[tokio::test]
    async fn the_fence_of_a_log_an_idle_shard_still_checkpoints_in_stays() {
        let store = memory();
        put_records(&store, "a", 1, &[1]).await;
        put_records(&store, "a", 2, &[1]).await;
        put_records(&store, "a", 3, &[1]).await;
        publish(&store, 2, "a", 1, false).await; // idle since object 1
        seal(&store, "a", 4).await.unwrap(); // shard 1 taken over, into log b
        publish(&store, 1, "b", 0, false).await;
        collect(&store, &now_opts()).await.unwrap();
        assert_eq!(remaining(&store).await, set(&[("a", 4)]));
        // Shard 2 is taken over from a too: its seal finds the fence, above every object
        // the writer of a ever created.
        assert_eq!(seal(&store, "a", 2).await.unwrap(), 4);
        publish(&store, 2, "c", 0, false).await;
        collect(&store, &now_opts()).await.unwrap();
        assert!(remaining(&store).await.is_empty());
    }

    #[tokio::test]
    async fn header_reads_agree_with_the_format() {
        let store = memory();
        let cases: [(&str, u64, Vec<u32>); 5] = [
            ("a", 1, vec![]),
            ("gw-10-0-0-1-7070-00ff00ff00ff00ff", 2, vec![0]),
            ("b", u64::MAX, vec![3, 9, 12]),
            ("c", 7, (0..300).collect()), // a header longer than the first read
            ("d", 8, (0..2000).step_by(3).collect()),
        ];
        for (log, seq, shards) in cases {
            let groups: Vec<Vec<Record>> = shards.iter().map(|&s| vec![record(s, 1)]).collect();
            let bytes = encode_records(log, seq, &groups);
            let path = object_path(&store, log, seq);
            store.store.put(&path, bytes.clone().into()).await.unwrap();
            let meta = store.store.head(&path).await.unwrap();
            let Segment::Records { shards: want, .. } = format::decode(bytes).unwrap() else {
                panic!("records expected");
            };
            assert_eq!(
                read_header(&store, &meta, log, seq).await.unwrap(),
                Header::Records(want)
            );
            assert!(read_header(&store, &meta, log, seq.wrapping_add(1))
                .await
                .is_err());
            assert!(read_header(&store, &meta, "other", seq).await.is_err());
        }
        let fence = encode_fence("a", 9);
        assert_eq!(
            parse_header(&fence, fence.len() as u64, "a", 9),
            Ok(Parsed::Header(Header::Fence))
        );
        // A torn object (its size does not match its header) is refused at any cut.
        let whole = encode_records("a", 1, &[vec![record(1, 1), record(2, 1)]]);
        for cut in FIXED..whole.len() {
            let torn = &whole[..cut];
            assert!(
                !matches!(
                    parse_header(torn, cut as u64, "a", 1),
                    Ok(Parsed::Header(_))
                ),
                "cut at {cut}"
            );
        }
    }

    // ----- "GC never deletes an object a replay still needs" -----

    /// Gateways writing logs, owners checkpointing (publishing later) and taking shards over,
    /// driven by a seeded generator. GC passes run against a store that runs more of these
    /// steps before each of GC's requests, so they land between its LIST, its reads and its
    /// deletes. After every step: each shard's records after its marker still exist, and each
    /// seal lands above every object its log ever had.
    struct Sim {
        store: ClusterStore,
        rng: u64,
        gateways: Vec<Gateway>,
        shards: Vec<Marker>,
        owners: Vec<usize>,
        /// Every records object ever created, with its shards.
        created: BTreeMap<(String, u64), Vec<ShardId>>,
        version: u64,
        /// Steps left to run inside the current GC pass.
        budget: u64,
        stats: SimStats,
    }

    #[derive(Debug, Default)]
    struct SimStats {
        writes: u64,
        takeovers: u64,
        takebacks: u64,
        seals_found: u64,
        passes: u64,
        deleted: u64,
        fences_deleted: u64,
    }

    struct Gateway {
        log: String,
        next: u64,
        incarnation: u32,
        id: usize,
    }

    impl Gateway {
        fn new(id: usize, incarnation: u32) -> Self {
            Gateway {
                log: format!("g{id}-{incarnation}"),
                next: 1,
                incarnation,
                id,
            }
        }
    }

    const GATEWAYS: usize = 3;
    const SHARDS: usize = 6;

    impl Sim {
        async fn new(store: ClusterStore, seed: u64) -> Sim {
            let mut sim = Sim {
                store,
                rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5DEE_CE66,
                gateways: (0..GATEWAYS).map(|g| Gateway::new(g, 0)).collect(),
                shards: Vec::new(),
                owners: Vec::new(),
                created: BTreeMap::new(),
                version: 0,
                budget: 0,
                stats: SimStats::default(),
            };
            for s in 0..SHARDS {
                let g = s % GATEWAYS;
                sim.owners.push(g);
                sim.shards.push(Marker {
                    log: sim.gateways[g].log.clone(),
                    through_seq: 0,
                    epoch: 1,
                    max_version: next_version(),
                    clean: false,
                });
                // A first owner publishes before it serves.
                sim.publish(s).await;
            }
            sim
        }

        /// splitmix64.
        fn below(&mut self, n: u64) -> u64 {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % n
        }

        /// Picks the next step: `None` means a GC pass (only when `gc`).
        fn choose(&mut self, gc: bool) -> Option<u64> {
            let roll = self.below(if gc { 100 } else { 88 });
            (roll < 88).then_some(roll)
        }

        async fn step(&mut self, roll: u64) {
            let g = self.below(GATEWAYS as u64) as usize;
            let s = self.below(SHARDS as u64) as usize;
            match roll {
                0..35 => self.write(g).await,
                35..50 => self.checkpoint(s),
                50..65 => self.publish(s).await,
                65..75 => {
                    self.checkpoint(s);
                    self.publish(s).await;
                }
                75..83 => self.take_over(s, g).await,
                83..86 => self.hand_over(s, g).await,
                _ => self.crash(g).await,
            }
        }

        async fn write(&mut self, g: usize) {
            let owned: Vec<usize> = (0..SHARDS).filter(|&s| self.owners[s] == g).collect();
            if owned.is_empty() {
                return;
            }
            let mut shards: Vec<usize> = owned
                .iter()
                .copied()
                .filter(|_| self.below(2) == 0)
                .collect();
            if shards.is_empty() {
                shards.push(owned[0]);
            }
            self.version += 1;
            let groups: Vec<Vec<Record>> = shards
                .iter()
                .map(|&s| vec![record(s as u32, self.version)])
                .collect();
            let (log, seq) = (self.gateways[g].log.clone(), self.gateways[g].next);
            let path = object_path(&self.store, &log, seq);
            if create(&self.store, &path, encode_records(&log, seq, &groups))
                .await
                .unwrap()
            {
                let ids = shards.iter().map(|&s| ShardId(s as u32)).collect();
                self.created.insert((log, seq), ids);
                self.gateways[g].next += 1;
                self.stats.writes += 1;
                return;
            }
            match crate::storage::log::get(&self.store, &log, seq)
                .await
                .unwrap()
            {
                Some(Segment::Fence { .. }) => {
                    // Sealed: the write fails; the gateway moves its shards to a new log.
                    self.stats.seals_found += 1;
                    let incarnation = self.gateways[g].incarnation + 1;
                    self.gateways[g] = Gateway::new(g, incarnation);
                    for s in owned {
                        self.shards[s] = self.marker_at(g, self.shards[s].epoch);
                        self.publish(s).await;
                    }
                }
                other => panic!("{log}/{seq} is not the writer's to create: {other:?}"),
            }
        }

        /// A checkpoint of `s` at its owner's position, not yet published.
        fn checkpoint(&mut self, s: usize) {
            let epoch = self.shards[s].epoch;
            self.shards[s] = self.marker_at(self.owners[s], epoch);
        }

        fn marker_at(&self, g: usize, epoch: i64) -> Marker {
            Marker {
                log: self.gateways[g].log.clone(),
                through_seq: self.gateways[g].next - 1,
                epoch,
                max_version: next_version(),
                clean: false,
            }
        }

        async fn publish(&mut self, s: usize) {
            checkpoint::publish(&self.store, ShardId(s as u32), &self.shards[s])
                .await
                .unwrap();
        }

        /// `g` takes `s` over after its owner failed: seal, replay, checkpoint and publish,
        /// then serve.
        async fn take_over(&mut self, s: usize, g: usize) {
            let old = self.shards[s].clone();
            if !old.clean {
                let fence = seal(&self.store, &old.log, old.through_seq + 1)
                    .await
                    .unwrap();
                let top = self
                    .created
                    .range((old.log.clone(), 0)..)
                    .take_while(|((log, _), _)| *log == old.log)
                    .map(|((_, seq), _)| *seq)
                    .max()
                    .unwrap_or(0);
                assert!(
                    fence > top,
                    "log {} sealed at {fence}, below its object {top}",
                    old.log
                );
            }
            self.stats.takeovers += 1;
            if self
                .created
                .keys()
                .any(|(log, _)| *log == self.gateways[g].log)
                && old.log != self.gateways[g].log
            {
                self.stats.takebacks += 1;
            }
            self.owners[s] = g;
            self.shards[s] = self.marker_at(g, old.epoch + 1);
            self.publish(s).await;
        }

        /// A planned hand-over: the owner checkpoints clean, `g` takes over without a seal.
        async fn hand_over(&mut self, s: usize, g: usize) {
            let epoch = self.shards[s].epoch;
            self.shards[s] = Marker {
                clean: true,
                ..self.marker_at(self.owners[s], epoch)
            };
            self.publish(s).await;
            self.owners[s] = g;
            self.shards[s] = self.marker_at(g, epoch + 1);
            self.publish(s).await;
        }

        /// `g` dies and restarts with a new log; each of its shards is taken over.
        async fn crash(&mut self, g: usize) {
            let incarnation = self.gateways[g].incarnation + 1;
            self.gateways[g] = Gateway::new(self.gateways[g].id, incarnation);
            for s in 0..SHARDS {
                if self.owners[s] == g {
                    let to = self.below(GATEWAYS as u64) as usize;
                    self.take_over(s, to).await;
                }
            }
        }

        /// Every shard's records after its marker exist.
        async fn check(&self, context: &str) {
            let existing = remaining(&self.store).await;
            for (s, marker) in self.shards.iter().enumerate() {
                if marker.clean {
                    continue;
                }
                let needed = self
                    .created
                    .range((marker.log.clone(), marker.through_seq + 1)..)
                    .take_while(|((log, _), _)| *log == marker.log)
                    .filter(|(_, shards)| shards.contains(&ShardId(s as u32)));
                for (object, _) in needed {
                    assert!(
                        existing.contains(object),
                        "{context}: shard {s} (marker {marker:?}) needs {object:?}, which GC deleted"
                    );
                }
            }
        }
    }

    async fn simulate(seed: u64, steps: usize) -> SimStats {
        let store = memory();
        let sim = Arc::new(tokio::sync::Mutex::new(Sim::new(store.clone(), seed).await));
        let hook: Hook = {
            let sim = Arc::clone(&sim);
            Arc::new(move |_, _| {
                let sim = Arc::clone(&sim);
                async move {
                    let mut sim = sim.lock().await;
                    // Mostly nothing or a step; sometimes a burst; at most the pass's budget.
                    let steps = [0, 0, 0, 1, 1, 2, 5][sim.below(7) as usize].min(sim.budget);
                    sim.budget -= steps;
                    for _ in 0..steps {
                        if let Some(roll) = sim.choose(false) {
                            sim.step(roll).await;
                        }
                    }
                    sim.check(&format!("seed {seed}, during a GC pass")).await;
                }
                .boxed()
            })
        };
        let gc_store = hooked(&store, hook);
        for step in 0..steps {
            let roll = sim.lock().await.choose(true);
            match roll {
                Some(roll) => sim.lock().await.step(roll).await,
                None => {
                    {
                        let mut sim = sim.lock().await;
                        sim.budget = sim.below(16);
                    }
                    let report = collect(&gc_store, &now_opts()).await.unwrap();
                    assert_eq!(report.errors, 0, "{report}");
                    let mut sim = sim.lock().await;
                    sim.stats.passes += 1;
                    sim.stats.deleted += report.deleted;
                    sim.stats.fences_deleted += report.fences_deleted;
                }
            }
            sim.lock()
                .await
                .check(&format!("seed {seed}, step {step}"))
                .await;
        }
        let stats = std::mem::take(&mut sim.lock().await.stats);
        stats
    }

    #[tokio::test]
    async fn gc_never_deletes_what_a_replay_needs() {
        let mut total = SimStats::default();
        for seed in 0..24 {
            let s = simulate(seed, 800).await;
            total.writes += s.writes;
            total.takeovers += s.takeovers;
            total.takebacks += s.takebacks;
            total.seals_found += s.seals_found;
            total.passes += s.passes;
            total.deleted += s.deleted;
            total.fences_deleted += s.fences_deleted;
        }
        println!("{total:?}");
        // The runs exercised what they claim to.
        assert!(total.deleted > total.writes / 2, "{total:?}");
        assert!(total.fences_deleted > 10, "{total:?}");
        assert!(total.takebacks > 10 && total.seals_found > 10, "{total:?}");
    }
}
