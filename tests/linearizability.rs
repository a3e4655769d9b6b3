//! Linearizability of strong operations under faults, checked by a Wing–Gong style checker.
//!
//! Clients run reads, writes and compare-and-sets on a few keys through every gateway while a
//! gateway is killed with -9 and another is paused past its lease (SIGSTOP/SIGCONT). Each
//! operation is recorded with its invocation and response times; the history of every key is
//! then searched for a legal sequential order (a register: reads see the latest write, a CAS
//! succeeds exactly when the register holds its expected value).
//!
//! Outcomes: a 2xx or 404/412 is a definite result. A request refused before reaching any
//! gateway (connection refused) never happened. Anything else (503, timeout, cut connection)
//! has an unknown outcome: a write or CAS may or may not have taken effect, at any point after
//! its invocation; such reads are dropped.
//!
//! Eventual reads (`?consistency=eventual`) run alongside; they are not linearizable by design,
//! but every value they return must be one some client wrote (no phantoms).
//!
//! Duration: `TESSERA_LINEARIZABILITY_SECS` (default 8) of load per run.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use reqwest::StatusCode;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// A read that returned this value (`None`: absent).
    Read(Option<String>),
    /// A write of a unique value.
    Write(String),
    /// A compare-and-set from `from` to `to` that succeeded (`ok`) or failed.
    Cas { from: String, to: String, ok: bool },
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
        Kind::Write(v) => Some(Some(v.clone())),
        Kind::Cas { from, to, ok: true } => {
            (state.as_deref() == Some(from.as_str())).then(|| Some(to.clone()))
        }
        Kind::Cas {
            from, ok: false, ..
        } => (state.as_deref() != Some(from.as_str())).then(|| state.clone()),
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
    let w = |v: &str| Kind::Write(v.into());
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
        from: from.into(),
        to: to.into(),
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
}

type Histories = Arc<Mutex<HashMap<String, Vec<Op>>>>;

fn ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strong_operations_are_linearizable_under_kill_and_pause() {
    let secs: u64 = std::env::var("TESSERA_LINEARIZABILITY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut c = Cluster::start(3).await;
    c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let urls: Vec<String> = (0..3).map(|i| c.gw(i).url.clone()).collect();
    let keys = ["lin-a", "lin-b", "lin-c"];
    let origin = Instant::now();
    let histories: Histories = Arc::default();
    let eventual: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|cl| {
            let (urls, histories, eventual, stop) = (
                urls.clone(),
                histories.clone(),
                eventual.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let url = &urls[((cl as u64 + n) % 3) as usize];
                    let key = keys[(n as usize / 4 + cl) % keys.len()];
                    let target = format!("{url}/v1/kv/{key}");
                    let value = format!("c{cl}-{n}");
                    let mut call = ns(origin);
                    if n % 4 == 3 {
                        let url = format!("{target}?consistency=eventual");
                        if let Ok(r) = http.get(url).send().await {
                            if r.status() == StatusCode::OK {
                                let value = r.text().await.unwrap_or_default();
                                eventual.lock().unwrap().push((key.into(), value));
                            }
                        }
                        continue;
                    }
                    let op = match n % 4 {
                        0 => match http.get(&target).send().await {
                            Ok(r) if r.status() == StatusCode::OK => {
                                let value = r.text().await.unwrap_or_default();
                                Some((Kind::Read(Some(value)), false))
                            }
                            Ok(r) if r.status() == StatusCode::NOT_FOUND => {
                                Some((Kind::Read(None), false))
                            }
                            _ => None,
                        },
                        1 => match http.put(&target).body(value.clone()).send().await {
                            Ok(r) if r.status() == StatusCode::OK => {
                                Some((Kind::Write(value), false))
                            }
                            Err(e) if e.is_connect() => None,
                            _ => Some((Kind::Write(value), true)),
                        },
                        _ => {
                            // CAS: read the current value and version, then If-Match.
                            let Ok(r) = http.get(&target).send().await else {
                                continue;
                            };
                            if r.status() != StatusCode::OK {
                                continue;
                            }
                            let etag = r.headers()["etag"].to_str().unwrap().to_string();
                            let from = r.text().await.unwrap_or_default();
                            call = ns(origin);
                            let res = http
                                .put(&target)
                                .header("if-match", etag)
                                .body(value.clone())
                                .send()
                                .await;
                            // (applied, outcome unknown)
                            let (ok, unknown) = match res {
                                Ok(r) if r.status() == StatusCode::OK => (true, false),
                                Ok(r) if r.status() == StatusCode::PRECONDITION_FAILED => {
                                    (false, false)
                                }
                                Err(e) if e.is_connect() => continue,
                                _ => (true, true),
                            };
                            let kind = Kind::Cas {
                                from,
                                to: value,
                                ok,
                            };
                            Some((kind, unknown))
                        }
                    };
                    if let Some((kind, unknown)) = op {
                        let ret = if unknown { u64::MAX } else { ns(origin) };
                        histories
                            .lock()
                            .unwrap()
                            .entry(key.into())
                            .or_default()
                            .push(Op { call, ret, kind });
                    }
                }
            })
        })
        .collect();
    // Faults: kill -9 gw1 after a quarter of the run; pause gw2 past its lease at half time.
    tokio::time::sleep(Duration::from_millis(secs * 250)).await;
    c.gateways[1].as_mut().unwrap().kill9();
    tokio::time::sleep(Duration::from_millis(secs * 250)).await;
    common::signal(&c.gw(2).child, "STOP");
    tokio::time::sleep(Duration::from_millis(4500)).await;
    common::signal(&c.gw(2).child, "CONT");
    tokio::time::sleep(Duration::from_millis(secs * 500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for cl in clients {
        cl.await.unwrap();
    }
    let histories = histories.lock().unwrap();
    let mut total = 0;
    for (key, ops) in histories.iter() {
        let definite = ops.iter().filter(|o| !o.unknown()).count();
        total += ops.len();
        eprintln!(
            "{key}: {} ops ({} with unknown outcome)",
            ops.len(),
            ops.len() - definite
        );
        if !linearizable(ops) {
            // Narrow the report to the shortest failing prefix (by invocation time).
            let mut sorted = ops.clone();
            sorted.sort_by_key(|o| o.call);
            let (mut lo, mut hi) = (1, sorted.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if linearizable(&sorted[..mid]) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let tail: Vec<&Op> = sorted[..lo].iter().rev().take(14).collect();
            panic!("history of {key} is not linearizable; the shortest failing prefix ends with (newest first): {tail:#?}");
        }
    }
    assert!(total > 100, "enough operations were recorded: {total}");
    // No phantoms: every eventual read returned a value that some client tried to write.
    let eventual = eventual.lock().unwrap();
    for (key, value) in eventual.iter() {
        let written = histories[key].iter().any(|o| match &o.kind {
            Kind::Write(v) | Kind::Cas { to: v, .. } => v == value,
            Kind::Read(_) => false,
        });
        assert!(
            written,
            "eventual read of {key} returned {value}, which nobody wrote"
        );
    }
    eprintln!("{} eventual reads, all of written values", eventual.len());
    assert!(
        eventual.len() > 20,
        "enough eventual reads: {}",
        eventual.len()
    );
}
