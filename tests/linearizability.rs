//! Linearizability of strong operations, checked by a Wing–Gong style checker.
//!
//! Clients run a CAS-heavy mix on a few keys through every gateway, with the hot-key cache on
//! (the default): 40% strong reads, 20% writes, 30% compare-and-sets (a strong read, then
//! `PUT If-Match: "<version>"`, or `If-None-Match: *` after a 404, or now and then
//! `DELETE If-Match`) and 10% deletes. Each operation is recorded with its invocation and
//! response times; the history of every key is then searched for a legal sequential order (a
//! register: reads see the latest write, a CAS succeeds exactly when the register holds its
//! expected value, and fails exactly when it does not). Runs: fault-free; a gateway killed
//! with -9 and another paused past its lease; gateways cut from etcd past their lease, from
//! S3 and from their peers (cuttable proxies), each heal followed by a check that every key is
//! served again in time.
//!
//! Outcomes: a 2xx or 404/412 is a definite result; a `412` is an observation (at some instant
//! inside the request the precondition was false). A request refused before reaching any
//! gateway (connection refused) never happened. Anything else (503, timeout, cut connection)
//! has an unknown outcome: a write or CAS may or may not have taken effect, at any point after
//! its invocation; such reads are dropped.
//!
//! Eventual reads (`?consistency=eventual`) run alongside; they are not linearizable by design,
//! but every value they return must be one some client wrote (no phantoms).
//!
//! Settings: `TESSERA_LINEARIZABILITY_SECS` (default 8) of load per run;
//! `TESSERA_LINEARIZABILITY_RECORD_DELAY_MS` (default 20), passed to the gateways as the
//! fault-injection hook `TESSERA_FAULT_RECORD_DELAY_MS`: it widens the moment between a
//! write's durability and its cache update, so a cache that serves stale strong reads is
//! caught in seconds rather than minutes (`scripts/bench.sh linearizability` runs long, with 0).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterOpts};
use reqwest::StatusCode;

/// What an operation did. `None` is an absent key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// A read that returned this value.
    Read(Option<String>),
    /// A write of a unique value, or a delete.
    Write(Option<String>),
    /// A compare-and-set from `from` to `to` that succeeded (`ok`) or failed.
    Cas {
        from: Option<String>,
        to: Option<String>,
        ok: bool,
    },
}

#[derive(Debug, Clone)]
struct Op {
    call: u64,
    /// `u64::MAX` when the outcome is unknown.
    ret: u64,
    kind: Kind,
}

impl Op {
    fn unknown(&self) -> bool {
        self.ret == u64::MAX
    }
}

/// Applies `op` to register state `state`; `None` if it is not legal there.
fn step(state: &Option<String>, op: &Op) -> Option<Option<String>> {
    match &op.kind {
        Kind::Read(v) => (v == state).then(|| state.clone()),
        Kind::Write(v) => Some(v.clone()),
        Kind::Cas { from, to, ok: true } => (state == from).then(|| to.clone()),
        Kind::Cas {
            from, ok: false, ..
        } => (state != from).then(|| state.clone()),
    }
}

/// Wing–Gong search with memoisation: true if `history` (one key, initially absent) has a
/// linearization. Unknown-outcome operations may be left out entirely.
fn linearizable(history: &[Op]) -> bool {
    let n = history.len();
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut done = vec![0u64; n.div_ceil(64)];
    fn is_done(done: &[u64], i: usize) -> bool {
        done[i / 64] & (1 << (i % 64)) != 0
    }
    fn flip(done: &mut [u64], i: usize) {
        done[i / 64] ^= 1 << (i % 64);
    }
    fn search(
        h: &[Op],
        done: &mut Vec<u64>,
        state: Option<String>,
        seen: &mut HashSet<(Vec<u64>, Option<String>)>,
    ) -> bool {
        // Finished when every definite operation is linearized (unknown ones may be omitted).
        if (0..h.len()).all(|i| is_done(done, i) || h[i].unknown()) {
            return true;
        }
        if !seen.insert((done.clone(), state.clone())) {
            return false;
        }
        // Candidates: pending ops invoked before the earliest pending response.
        let min_ret = (0..h.len())
            .filter(|&i| !is_done(done, i))
            .map(|i| h[i].ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in 0..h.len() {
            if is_done(done, i) || h[i].call > min_ret {
                continue;
            }
            if let Some(next) = step(&state, &h[i]) {
                flip(done, i);
                if search(h, done, next, seen) {
                    return true;
                }
                flip(done, i);
            }
            if h[i].unknown() {
                // Leave it out: it never took effect.
                flip(done, i);
                if search(h, done, state.clone(), seen) {
                    return true;
                }
                flip(done, i);
            }
        }
        false
    }
    search(history, &mut done, None, &mut seen)
}

#[test]
fn checker_accepts_and_rejects_known_histories() {
    let op = |call, ret, kind| Op { call, ret, kind };
    let w = |v: &str| Kind::Write(Some(v.into()));
    let r = |v: Option<&str>| Kind::Read(v.map(Into::into));
    // Sequential and legal.
    assert!(linearizable(&[op(0, 1, w("a")), op(2, 3, r(Some("a")))]));
    // A stale read after a completed write is not linearizable.
    assert!(!linearizable(&[
        op(0, 1, w("a")),
        op(2, 3, w("b")),
        op(4, 5, r(Some("a")))
    ]));
    // Concurrent write and read: either order is fine.
    assert!(linearizable(&[op(0, 5, w("a")), op(1, 2, r(None))]));
    assert!(linearizable(&[op(0, 5, w("a")), op(1, 2, r(Some("a")))]));
    // Two successful CAS from the same value cannot both win.
    let cas = |from: &str, to: &str, ok| Kind::Cas {
        from: Some(from.into()),
        to: Some(to.into()),
        ok,
    };
    assert!(!linearizable(&[
        op(0, 1, w("a")),
        op(2, 5, cas("a", "b", true)),
        op(2, 5, cas("a", "c", true))
    ]));
    // A failed CAS needs the value to differ.
    assert!(!linearizable(&[
        op(0, 1, w("a")),
        op(2, 3, cas("a", "b", false))
    ]));
    // An unknown write may explain a later read, or be left out.
    assert!(linearizable(&[
        op(0, u64::MAX, w("a")),
        op(5, 6, r(Some("a")))
    ]));
    assert!(linearizable(&[op(0, u64::MAX, w("a")), op(5, 6, r(None))]));
    // But a value nobody wrote is never legal.
    assert!(!linearizable(&[op(0, 1, w("a")), op(5, 6, r(Some("zz")))]));
    // The witness of the cache bug: a 412 on "a" (so the key was not "a" at some instant in
    // it), then a read of "a" invoked after that answer, with no write of "a" in between.
    let delete = || Kind::Write(None);
    assert!(!linearizable(&[
        op(0, 1, w("a")),
        op(2, 9, delete()),
        op(3, 4, cas("a", "b", false)),
        op(5, 6, r(Some("a")))
    ]));
    // Create-if-absent and delete-if-match.
    let create = |to: &str, ok| Kind::Cas {
        from: None,
        to: Some(to.into()),
        ok,
    };
    assert!(linearizable(&[
        op(0, 1, create("a", true)),
        op(2, 3, create("b", false))
    ]));
    assert!(!linearizable(&[
        op(0, 1, create("a", true)),
        op(2, 3, create("b", true))
    ]));
    let delete_if = |from: &str, ok| Kind::Cas {
        from: Some(from.into()),
        to: None,
        ok,
    };
    assert!(linearizable(&[
        op(0, 1, w("a")),
        op(2, 3, delete_if("a", true)),
        op(4, 5, r(None))
    ]));
}

type Histories = Arc<Mutex<HashMap<String, Vec<Op>>>>;

fn ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Seconds of load per run.
fn secs() -> u64 {
    env_u64("TESSERA_LINEARIZABILITY_SECS", 8)
}

/// The gateways' environment: the record delay that widens the cache's window (module doc).
fn gateway_env() -> Vec<(String, String)> {
    let delay = env_u64("TESSERA_LINEARIZABILITY_RECORD_DELAY_MS", 20);
    vec![("TESSERA_FAULT_RECORD_DELAY_MS".into(), delay.to_string())]
}

/// What the clients recorded.
#[derive(Clone)]
struct Recorded {
    /// Times are nanoseconds since then.
    origin: Instant,
    histories: Histories,
    /// (key, value) of every eventual read that returned a value.
    eventual: Arc<Mutex<Vec<(String, String)>>>,
}

impl Default for Recorded {
    fn default() -> Self {
        // Operation times are nanoseconds from here; the wall clock lines them up with logs.
        eprintln!("history origin: {:?}", std::time::SystemTime::now());
        Recorded {
            origin: Instant::now(),
            histories: Arc::default(),
            eventual: Arc::default(),
        }
    }
}

/// A small deterministic generator, one per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The outcome of a write-like request: `Some(false)` definite, `Some(true)` unknown, `None`
/// never happened (refused before reaching a gateway).
fn write_outcome(res: &reqwest::Result<reqwest::Response>, ok: StatusCode) -> Option<bool> {
    match res {
        Ok(r) if r.status() == ok => Some(false),
        Err(e) if e.is_connect() => None,
        _ => Some(true),
    }
}

/// A 3-gateway cluster (links through cuttable proxies if `proxied`) running with the
/// record-delay hook, once every shard has its owner.
async fn cluster(proxied: bool) -> Cluster {
    let opts = ClusterOpts {
        env: gateway_env(),
        proxied,
        ..ClusterOpts::default()
    };
    let c = Cluster::start_opts(3, opts).await;
    c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    c
}

/// Clients running against a cluster until [`Load::finish`].
struct Load {
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    rec: Recorded,
}

impl Load {
    /// Starts `clients` clients over `keys` through every gateway of `c`. With `eventual`,
    /// one operation in ten is an eventual read (checked for phantoms only).
    fn start(c: &Cluster, keys: &'static [&'static str], clients: usize, eventual: bool) -> Load {
        let urls: Vec<String> = c.live().iter().map(|&i| c.gw(i).url.clone()).collect();
        let (stop, rec) = (Arc::new(AtomicBool::new(false)), Recorded::default());
        let clients = start_clients(&urls, keys, clients, eventual, stop.clone(), &rec);
        Load {
            urls,
            stop,
            clients,
            rec,
        }
    }

    /// Stops the clients and checks what they recorded. Returns (operations, eventual reads).
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for cl in self.clients {
            cl.await.unwrap();
        }
        let total = check(&self.rec);
        let eventual = self.rec.eventual.lock().unwrap().len();
        (total, eventual)
    }
}

fn start_clients(
    urls: &[String],
    keys: &'static [&'static str],
    clients: usize,
    eventual: bool,
    stop: Arc<AtomicBool>,
    rec: &Recorded,
) -> Vec<tokio::task::JoinHandle<()>> {
    let origin = rec.origin;
    (0..clients)
        .map(|cl| {
            let (urls, stop, rec) = (urls.to_vec(), stop.clone(), rec.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (cl as u64 + 1));
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let url = &urls[rng.below(urls.len() as u64) as usize];
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    let target = format!("{url}/v1/kv/{key}");
                    let value = format!("c{cl}-{n}");
                    if eventual && rng.below(10) == 0 {
                        let url = format!("{target}?consistency=eventual");
                        if let Ok(r) = http.get(url).send().await {
                            if r.status() == StatusCode::OK {
                                let value = r.text().await.unwrap_or_default();
                                rec.eventual.lock().unwrap().push((key.into(), value));
                            }
                        }
                        continue;
                    }
                    let mut call = ns(origin);
                    let roll = rng.below(100);
                    // (what the operation did, outcome unknown)
                    let op = if roll < 40 {
                        read(&http, &target)
                            .await
                            .map(|(value, _)| (Kind::Read(value), false))
                    } else if roll < 60 {
                        let res = http.put(&target).body(value.clone()).send().await;
                        write_outcome(&res, StatusCode::OK)
                            .map(|unknown| (Kind::Write(Some(value)), unknown))
                    } else if roll < 90 {
                        // CAS: a strong read, then a write conditional on what it saw.
                        let Some((from, etag)) = read(&http, &target).await else {
                            continue;
                        };
                        let delete = from.is_some() && rng.below(6) == 0;
                        let to = (!delete).then_some(value);
                        call = ns(origin);
                        let req = match (&etag, &to) {
                            (Some(etag), Some(to)) => {
                                http.put(&target).header("if-match", etag).body(to.clone())
                            }
                            (Some(etag), None) => http.delete(&target).header("if-match", etag),
                            (None, _) => http
                                .put(&target)
                                .header("if-none-match", "*")
                                .body(to.clone().unwrap_or_default()),
                        };
                        let res = req.send().await;
                        let applied = if to.is_some() {
                            StatusCode::OK
                        } else {
                            StatusCode::NO_CONTENT
                        };
                        let failed =
                            matches!(&res, Ok(r) if r.status() == StatusCode::PRECONDITION_FAILED);
                        if failed {
                            Some((
                                Kind::Cas {
                                    from,
                                    to,
                                    ok: false,
                                },
                                false,
                            ))
                        } else {
                            write_outcome(&res, applied)
                                .map(|unknown| (Kind::Cas { from, to, ok: true }, unknown))
                        }
                    } else {
                        let res = http.delete(&target).send().await;
                        write_outcome(&res, StatusCode::NO_CONTENT)
                            .map(|unknown| (Kind::Write(None), unknown))
                    };
                    if let Some((kind, unknown)) = op {
                        let ret = if unknown { u64::MAX } else { ns(origin) };
                        rec.histories
                            .lock()
                            .unwrap()
                            .entry(key.into())
                            .or_default()
                            .push(Op { call, ret, kind });
                    }
                }
            })
        })
        .collect()
}

/// A strong read: `Some((value, etag))` on 200 or 404, `None` on anything else.
async fn read(http: &reqwest::Client, url: &str) -> Option<(Option<String>, Option<String>)> {
    let r = http.get(url).send().await.ok()?;
    match r.status() {
        StatusCode::OK => {
            let etag = r.headers()["etag"].to_str().unwrap().to_string();
            Some((Some(r.text().await.ok()?), Some(etag)))
        }
        StatusCode::NOT_FOUND => Some((None, None)),
        _ => None,
    }
}

/// [`linearizable`] on a thread with a stack deep enough for long histories (the search
/// recurses once per operation: a 45 s run records thousands per key).
fn linearizable_deep(history: &[Op]) -> bool {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn_scoped(s, || linearizable(history))
            .expect("checker thread")
            .join()
            .expect("checker")
    })
}

/// Checks every key's history; returns how many operations were recorded.
fn check(rec: &Recorded) -> usize {
    let histories = rec.histories.lock().unwrap();
    let mut total = 0;
    let mut failures = Vec::new();
    for (key, ops) in histories.iter() {
        let definite = ops.iter().filter(|o| !o.unknown()).count();
        let precondition_failed = ops
            .iter()
            .filter(|o| matches!(o.kind, Kind::Cas { ok: false, .. }))
            .count();
        total += ops.len();
        eprintln!(
            "{key}: {} ops ({} with unknown outcome, {precondition_failed} answered 412)",
            ops.len(),
            ops.len() - definite
        );
        if !linearizable_deep(ops) {
            // Narrow the report to the shortest failing prefix (by invocation time).
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| o.call);
            let (mut lo, mut hi) = (1, sorted.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if linearizable_deep(&sorted[..mid]) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let tail: Vec<&Op> = sorted[..lo].iter().rev().take(14).collect();
            failures.push(format!("history of {key} is not linearizable; the shortest failing prefix ends with (newest first): {tail:#?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} keys not linearizable:\n{}",
        failures.len(),
        histories.len(),
        failures.join("\n")
    );
    // No phantoms: every eventual read returned a value that some client tried to write.
    let eventual = rec.eventual.lock().unwrap();
    for (key, value) in eventual.iter() {
        let written = histories[key].iter().any(|o| match &o.kind {
            Kind::Write(Some(v)) | Kind::Cas { to: Some(v), .. } => v == value,
            _ => false,
        });
        assert!(
            written,
            "eventual read of {key} returned {value}, which nobody wrote"
        );
    }
    eprintln!("{} eventual reads, all of written values", eventual.len());
    total
}

/// Waits until a strong read of every key succeeds (200 or 404) through every gateway in
/// `urls`; panics after `within`. Returns how long it took.
async fn await_serving(urls: &[String], keys: &[&str], within: Duration, after: &str) -> Duration {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut pending: Vec<String> = urls
        .iter()
        .flat_map(|u| keys.iter().map(move |k| format!("{u}/v1/kv/{k}")))
        .collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for url in pending {
            if read(&http, &url).await.is_none() {
                still.push(url);
            }
        }
        pending = still;
        assert!(
            pending.is_empty() || started.elapsed() < within,
            "{after}: not served again within {within:?}: {pending:?}"
        );
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let took = started.elapsed();
    eprintln!("{after}: every key served again after {took:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_heavy_with_the_cache_is_linearizable_without_faults() {
    const KEYS: &[&str] = &["cas-a", "cas-b", "cas-c", "cas-d", "cas-e", "cas-f"];
    let c = cluster(false).await;
    let load = Load::start(&c, KEYS, 12, false);
    tokio::time::sleep(Duration::from_secs(secs())).await;
    let (total, _) = load.finish().await;
    assert!(total > 200, "enough operations were recorded: {total}");
    let metrics = common::get_text(&common::client(), format!("{}/metrics", c.gw(0).url)).await;
    let hits = common::metric(&metrics, "tessera_cache_hits_total");
    eprintln!("gw0 cache hits: {hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_operations_are_linearizable_under_kill_and_pause() {
    const KEYS: &[&str] = &["lin-a", "lin-b", "lin-c"];
    let secs = secs();
    let mut c = cluster(false).await;
    let load = Load::start(&c, KEYS, 6, true);
    // Faults: kill -9 gw1 after a quarter of the run; pause gw2 past its lease at half time.
    tokio::time::sleep(Duration::from_millis(secs * 250)).await;
    c.gateways[1].as_mut().unwrap().process.kill();
    tokio::time::sleep(Duration::from_millis(secs * 250)).await;
    c.gw(2).process.pause();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    c.gw(2).process.resume();
    tokio::time::sleep(Duration::from_millis(secs * 500)).await;
    let (total, eventual) = load.finish().await;
    assert!(total > 100, "enough operations were recorded: {total}");
    assert!(eventual > 20, "enough eventual reads: {eventual}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_operations_are_linearizable_under_partitions() {
    const KEYS: &[&str] = &["part-a", "part-b", "part-c", "part-d"];
    // A heal must bring every shard back within TTL + 2 s (leases: TTL 3 s).
    const REJOIN: Duration = Duration::from_secs(5);
    let c = cluster(true).await;
    let load = Load::start(&c, KEYS, 8, true);
    let urls = load.urls.clone();
    let quiet = Duration::from_millis(secs() * 125);
    tokio::time::sleep(quiet).await;
    // gw0 cut from etcd past its lease: it must rejoin after the heal.
    c.link(0).etcd.cut();
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.link(0).etcd.heal();
    await_serving(&urls, KEYS, REJOIN, "gw0 healed from an etcd cut").await;
    tokio::time::sleep(quiet).await;
    // gw1 cut from the object store: its writes fail (unknown outcome), then recover.
    c.link(1).s3.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.link(1).s3.heal();
    let bound = Duration::from_secs(20);
    await_serving(&urls, KEYS, bound, "gw1 healed from an S3 cut").await;
    tokio::time::sleep(quiet).await;
    // gw2 cut from its peers: requests forwarded to it stall, then recover.
    c.link(2).peer.cut();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.link(2).peer.heal();
    await_serving(&urls, KEYS, REJOIN, "gw2 healed from a peer cut").await;
    // gw1 cut from everything past its lease, then healed.
    c.link(1).cut_all();
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.link(1).heal_all();
    await_serving(&urls, KEYS, REJOIN, "gw1 healed from a full cut").await;
    tokio::time::sleep(quiet).await;
    let (total, _) = load.finish().await;
    c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    assert!(total > 100, "enough operations were recorded: {total}");
}
