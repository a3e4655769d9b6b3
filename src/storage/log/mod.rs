//! The commit log: one per gateway process incarnation, shared by every shard it serves
//! (design and safety argument: `docs/architecture.md`, "The commit log").
//!
//! A log is the sequence of objects `{prefix}/logs/{log}/{seq:020}`, seq 1, 2, 3, …, each
//! created with `If-None-Match: *` (`PutMode::Create`). Its writer only ever creates the next
//! consecutive number, so a **fence** created at some number by a new owner ([`seal`]) ends the
//! log: no object after it can ever exist, and the old writer's next flush fails.
//!
//! - [`format`](mod@format): the bytes of one object.
//! - [`checkpoint`]: what a shard's database holds of the logs; replay and GC decisions.
//! - [`writer`]: the flusher that batches appends into objects.
//! - here: paths, [`seal`], and reading objects back ([`get`], [`read_range`]).

pub mod checkpoint;
pub mod format;
pub mod gc;
pub mod writer;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::storage::objstore::ClusterStore;
use format::Segment;

/// The path of object `seq` of `log`.
pub fn object_path(store: &ClusterStore, log: &str, seq: u64) -> Path {
    store.path(&format!("logs/{log}/{seq:020}"))
}

fn log_dir(store: &ClusterStore, log: &str) -> Path {
    store.path(&format!("logs/{log}"))
}

/// A fresh log id for a process that is `member`: the member id made path-safe, and 64 bits
/// that differ between incarnations (time, process id and a counter, hashed).
pub fn new_log_id(member: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let safe: String = member
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{nanos}/{}/{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    format!(
        "{safe}-{:016x}",
        xxhash_rust::xxh3::xxh3_64(seed.as_bytes())
    )
}

/// Creates `bytes` at `path` only if nothing is there. `Ok(false)`: something already is.
pub(crate) async fn create(store: &ClusterStore, path: &Path, bytes: Bytes) -> Result<bool> {
    let opts = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .store
        .put_opts(path, PutPayload::from(bytes), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Object `seq` of `log`, or `None` if it does not exist (yet).
pub async fn get(store: &ClusterStore, log: &str, seq: u64) -> Result<Option<Segment>> {
    let bytes = match store.store.get(&object_path(store, log, seq)).await {
        Ok(got) => got.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let segment = format::decode(bytes)
        .map_err(|e| Error::Internal(format!("log {log} object {seq}: {e}")))?;
    if segment.seq() != seq {
        return Err(Error::Internal(format!(
            "log {log} object {seq} says it is object {}",
            segment.seq()
        )));
    }
    Ok(Some(segment))
}

/// The records objects of `log` numbered `from..=to`, in order, with up to `READ_AHEAD` GETs
/// in flight. Missing numbers are skipped: log GC deletes an object once every shard with
/// records in it has checkpointed past it, so a range a replay needs can have gaps where
/// objects held only other shards' records (see `gc.rs`). Fences are skipped too.
pub async fn read_range(
    store: &ClusterStore,
    log: &str,
    from: u64,
    to: u64,
) -> Result<Vec<Segment>> {
    use futures::StreamExt;
    const READ_AHEAD: usize = 16;
    futures::stream::iter(from.max(1)..=to)
        .map(|seq| get(store, log, seq))
        .buffered(READ_AHEAD)
        .try_filter_map(|found| async move {
            Ok(found.filter(|s| matches!(s, Segment::Records { .. })))
        })
        .try_collect()
        .await
}

/// The highest object number of `log` at or after `from`, if any (one LIST).
async fn last_seq(store: &ClusterStore, log: &str, from: u64) -> Result<Option<u64>> {
    let dir = log_dir(store, log);
    let offset = object_path(store, log, from.saturating_sub(1));
    let listed: Vec<_> = store
        .store
        .list_with_offset(Some(&dir), &offset)
        .try_collect()
        .await?;
    Ok(listed
        .iter()
        .filter_map(|meta| meta.location.filename()?.parse::<u64>().ok())
        .filter(|seq| *seq >= from)
        .max())
}

/// Seals `log`, whose objects before `from` need not be looked at: afterwards no object can
/// be created in it beyond the returned number, where its fence is. An existing fence (a seal
/// by an earlier takeover) is reused. Races with the log's writer: if it creates the number
/// the fence was aimed at first, the fence goes to the next one.
pub async fn seal(store: &ClusterStore, log: &str, from: u64) -> Result<u64> {
    let mut seq = match last_seq(store, log, from.max(1)).await? {
        Some(last) => {
            if let Some(Segment::Fence { .. }) = get(store, log, last).await? {
                return Ok(last);
            }
            last + 1
        }
        None => from.max(1),
    };
    loop {
        let fence = format::encode_fence(log, seq);
        if create(store, &object_path(store, log, seq), fence).await? {
            tracing::info!(log, seq, "sealed a log");
            return Ok(seq);
        }
        match get(store, log, seq).await? {
            Some(Segment::Fence { .. }) => return Ok(seq),
            // The writer won this number: aim past it.
            Some(Segment::Records { .. }) => seq += 1,
            // Created, then gone: only GC deletes objects, and never unsealed ones.
            None => {
                return Err(Error::Internal(format!(
                    "log {log} object {seq} vanished while sealing"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::format::{encode_records, Op, Record};
    use super::writer::{Apply, LogError, LogStats, LogWriter, WriterConfig};
    use super::*;
    use crate::shard::ShardId;
    use crate::storage::testing::memory;
    use crate::tasks::Tasks;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A target that applies nothing, in a lane of its own.
    struct Nop(u64);

    #[async_trait::async_trait]
    impl Apply for Nop {
        async fn apply(&self, _: &[Record]) -> std::result::Result<(), String> {
            Ok(())
        }

        fn lane(&self) -> u64 {
            self.0
        }
    }

    fn nop() -> Arc<dyn Apply> {
        static LANES: AtomicU64 = AtomicU64::new(0);
        Arc::new(Nop(LANES.fetch_add(1, Ordering::Relaxed)))
    }

    /// A writer of log `log` from its first object, with the default settings.
    fn start(store: &ClusterStore, log: &str, tasks: &Tasks) -> Arc<LogWriter> {
        let config = WriterConfig::default();
        LogWriter::start(store.clone(), log.into(), 1, config, Arc::default(), tasks)
    }

    fn group(n: u64) -> Vec<Record> {
        vec![Record {
            shard: ShardId((n % 4) as u32),
            epoch: 1,
            version: n,
            written_at_ms: 0,
            key: Bytes::from(format!("k{n}")),
            op: Op::Put {
                value: Bytes::from(vec![b'v'; 100]),
                expires_at_ms: None,
            },
        }]
    }

    async fn read_all(store: &ClusterStore, log: &str) -> Vec<Segment> {
        let last = last_seq(store, log, 1).await.unwrap().unwrap_or(0);
        read_range(store, log, 1, last).await.unwrap()
    }

    /// The group of every record in `segments`, keyed by version (unique per test append).
    fn versions(segments: &[Segment]) -> Vec<(u64, u64)> {
        segments
            .iter()
            .flat_map(|s| match s {
                Segment::Records { seq, groups, .. } => {
                    groups.iter().flatten().map(|r| (r.version, *seq)).collect()
                }
                Segment::Fence { .. } => vec![],
            })
            .collect()
    }

    #[tokio::test]
    async fn concurrent_appends_share_objects_and_read_back_in_order() {
        let (store, tasks) = (memory(), Tasks::new());
        let writer = start(&store, "a", &tasks);
        let acks =
            futures::future::join_all((0..200).map(|n| writer.submit(group(n), nop()))).await;
        let acked: Vec<(u64, u64)> = acks
            .into_iter()
            .enumerate()
            .map(|(n, seq)| (n as u64, seq.unwrap()))
            .collect();
        let segments = read_all(&store, "a").await;
        assert!(
            segments.len() < 20,
            "{} objects for 200 appends",
            segments.len()
        );
        let mut found = versions(&segments);
        found.sort_unstable();
        assert_eq!(found, acked, "each append is in the object its ack named");
        let seqs: Vec<u64> = segments.iter().map(Segment::seq).collect();
        assert_eq!(seqs, (1..=segments.len() as u64).collect::<Vec<_>>());
        tasks.shutdown().await;
    }

    /// A target that records what it applies, and applies nothing while its gate is shut.
    struct Gated {
        lane: u64,
        open: tokio::sync::watch::Sender<bool>,
        applied: std::sync::Mutex<Vec<u64>>,
    }

    #[async_trait::async_trait]
    impl Apply for Gated {
        async fn apply(&self, group: &[Record]) -> std::result::Result<(), String> {
            let _ = self.open.subscribe().wait_for(|open| *open).await;
            let mut applied = self.applied.lock().unwrap();
            applied.extend(group.iter().map(|r| r.version));
            Ok(())
        }

        fn lane(&self) -> u64 {
            self.lane
        }
    }

    fn gated(lane: u64, open: bool) -> Arc<Gated> {
        Arc::new(Gated {
            lane: 1_000_000 + lane,
            open: tokio::sync::watch::Sender::new(open),
            applied: std::sync::Mutex::default(),
        })
    }

    /// A shard whose database makes its writes wait (a full L0) holds up its own writes
    /// only: other shards' appends are acknowledged, the log goes on, and only what waits on
    /// that shard (its sync, a sync of the whole log) waits with it.
    #[tokio::test]
    async fn a_stuck_target_holds_up_only_its_own_groups() {
        let (store, tasks) = (memory(), Tasks::new());
        let writer = start(&store, "a", &tasks);
        let (stuck, free) = (gated(1, false), gated(2, true));
        let stuck_ack = tokio::spawn(writer.submit(group(1), stuck.clone()));
        let bound = Duration::from_secs(5);
        for n in 2..=20 {
            let ack = tokio::time::timeout(bound, writer.submit(group(n), free.clone())).await;
            assert!(ack.expect("acknowledged").is_ok());
        }
        assert_eq!(*free.applied.lock().unwrap(), (2..=20).collect::<Vec<_>>());
        assert!(!stuck_ack.is_finished());
        // The free target's sync returns; a full sync waits.
        let through = tokio::time::timeout(bound, writer.sync_target(free.as_ref()))
            .await
            .expect("not held up by the stuck target");
        assert!(through >= 2, "{through}");
        let sync = tokio::spawn({
            let writer = Arc::clone(&writer);
            async move { writer.sync().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !sync.is_finished(),
            "a full sync waits for the stuck target"
        );
        stuck.open.send_replace(true);
        assert_eq!(stuck_ack.await.unwrap(), Ok(1));
        assert_eq!(sync.await.unwrap(), through);
        tasks.shutdown().await;
    }

    /// One target's groups are applied in the order they were submitted, also while the log
    /// moves on and its lane is idle and restarted in between.
    #[tokio::test]
    async fn a_target_applies_its_groups_in_submission_order() {
        let (store, tasks) = (memory(), Tasks::new());
        let writer = start(&store, "a", &tasks);
        let target = gated(1, true);
        for round in 0..20u64 {
            let acks = (0..10).map(|n| writer.submit(group(round * 10 + n), target.clone()));
            for ack in futures::future::join_all(acks).await {
                assert!(ack.is_ok());
            }
        }
        assert_eq!(
            *target.applied.lock().unwrap(),
            (0..200).collect::<Vec<_>>()
        );
        tasks.shutdown().await;
    }

    /// Under a long interval, a flush still starts early once `early_groups` wait and at least
    /// as many as the previous flush took; fewer wait for the interval.
    #[tokio::test]
    async fn enough_waiting_groups_flush_before_the_interval() {
        let (store, tasks) = (memory(), Tasks::new());
        let config = WriterConfig {
            min_interval: Duration::from_secs(3600),
            early_groups: 2,
            ..WriterConfig::default()
        };
        let stats = Arc::new(LogStats::default());
        let writer = LogWriter::start(store.clone(), "a".into(), 1, config, stats.clone(), &tasks);
        let bound = Duration::from_secs(5);
        // An idle log flushes at once.
        let first = tokio::time::timeout(bound, writer.submit(group(0), nop())).await;
        assert_eq!(first.expect("flushed at once"), Ok(1));
        // One group waits for the interval (early_groups is 2) ...
        let lone = tokio::spawn(writer.submit(group(1), nop()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!lone.is_finished(), "one group flushed early");
        // ... a second one makes two: both go in one object.
        let second = tokio::time::timeout(bound, writer.submit(group(2), nop())).await;
        assert_eq!(second.expect("flushed early"), Ok(2));
        assert_eq!(lone.await.unwrap(), Ok(2));
        // The previous flush took two, so two more are needed again, not one.
        let acks = (3..5).map(|n| writer.submit(group(n), nop()));
        let both = tokio::time::timeout(bound, futures::future::join_all(acks)).await;
        assert_eq!(both.expect("flushed early"), vec![Ok(3), Ok(3)]);
        // Counted: three objects of five writes, the last two early, each flush timed.
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!((count(&stats.objects), count(&stats.writes)), (3, 5));
        assert_eq!(count(&stats.early_flushes), 2);
        assert!(count(&stats.bytes) > 5 * 100);
        assert_eq!(stats.flush_seconds.drain().len(), 3);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn objects_respect_the_size_cap() {
        let (store, tasks) = (memory(), Tasks::new());
        let config = WriterConfig {
            max_object_bytes: 1000,
            ..WriterConfig::default()
        };
        let writer = LogWriter::start(store.clone(), "a".into(), 1, config, Arc::default(), &tasks);
        futures::future::join_all((0..50).map(|n| writer.submit(group(n), nop()))).await;
        for segment in read_all(&store, "a").await {
            let Segment::Records { groups, .. } = segment else {
                panic!("no fence expected");
            };
            assert!(groups.len() <= 6, "{} groups of ~150 bytes", groups.len());
        }
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn after_a_seal_nothing_more_becomes_durable() {
        let (store, tasks) = (memory(), Tasks::new());
        let writer = start(&store, "a", &tasks);
        let appending = {
            let writer = Arc::clone(&writer);
            tokio::spawn(async move {
                // Appends until the seal stops them.
                let mut outcomes = Vec::new();
                for n in 0.. {
                    let outcome = writer.submit(group(n), nop()).await;
                    let sealed = outcome.is_err();
                    outcomes.push((n, outcome));
                    if sealed {
                        return outcomes;
                    }
                }
                unreachable!()
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let fence = seal(&store, "a", 1).await.unwrap();
        let outcomes = tokio::time::timeout(Duration::from_secs(10), appending)
            .await
            .expect("the seal stops the writer")
            .unwrap();
        assert!(outcomes.len() > 1, "the seal came after some appends");
        let durable = versions(&read_all(&store, "a").await);
        assert!(durable.iter().all(|(_, seq)| *seq < fence));
        for (n, outcome) in outcomes {
            match outcome {
                Ok(seq) => assert!(durable.contains(&(n, seq)), "acked {n} is in the log"),
                Err(e) => {
                    assert_eq!(e, LogError::Sealed);
                    assert!(!durable.iter().any(|(v, _)| *v == n), "refused {n} is not");
                }
            }
        }
        assert_eq!(
            writer.submit(group(999), nop()).await,
            Err(LogError::Sealed)
        );
        assert_eq!(
            seal(&store, "a", 1).await.unwrap(),
            fence,
            "a second seal reuses it"
        );
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn sealing_an_unwritten_log_fences_its_first_object() {
        let (store, tasks) = (memory(), Tasks::new());
        assert_eq!(seal(&store, "fresh", 1).await.unwrap(), 1);
        let writer = start(&store, "fresh", &tasks);
        assert_eq!(writer.submit(group(1), nop()).await, Err(LogError::Sealed));
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn a_retry_that_finds_its_own_object_succeeds_once() {
        let (store, tasks) = (memory(), Tasks::new());
        // As if an earlier attempt's PUT had happened and only its answer was lost.
        let path = object_path(&store, "a", 1);
        assert!(create(&store, &path, encode_records("a", 1, &[group(1)]))
            .await
            .unwrap());
        let writer = start(&store, "a", &tasks);
        assert_eq!(writer.submit(group(1), nop()).await, Ok(1));
        assert_eq!(writer.submit(group(2), nop()).await, Ok(2));
        assert_eq!(versions(&read_all(&store, "a").await), vec![(1, 1), (2, 2)]);
        tasks.shutdown().await;
    }

    #[tokio::test]
    async fn a_range_read_skips_what_gc_deleted_and_the_fence() {
        let store = memory();
        for seq in 1..=5 {
            let path = object_path(&store, "a", seq);
            assert!(
                create(&store, &path, encode_records("a", seq, &[group(seq)]))
                    .await
                    .unwrap()
            );
        }
        // GC took object 2 (only other shards' records); a seal put its fence at 6.
        store
            .store
            .delete(&object_path(&store, "a", 2))
            .await
            .unwrap();
        assert_eq!(seal(&store, "a", 1).await.unwrap(), 6);
        let read = read_range(&store, "a", 1, 6).await.unwrap();
        assert_eq!(
            read.iter().map(Segment::seq).collect::<Vec<_>>(),
            vec![1, 3, 4, 5]
        );
    }

    #[test]
    fn log_ids_are_path_safe_and_differ() {
        let (a, b) = (
            new_log_id("http://10.0.0.1:7070"),
            new_log_id("http://10.0.0.1:7070"),
        );
        assert_ne!(a, b);
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
    }
}
