//! `tessera bench`: a closed-loop load generator for Tessera and etcd.
//!
//! `--concurrency` tasks each run one operation at a time, back to back, over pooled keep-alive
//! connections. Operations started during `--warmup` are not measured; after it the run lasts
//! `--duration` (or `--ops` measured operations). Latency is recorded per operation in an HDR
//! histogram (microsecond resolution, 3 significant digits); a CAS counts as one operation
//! (its read plus its conditional write). Successful operations are also recorded apart
//! (`ok_latency_ms`), so a run with refusals (an overloaded gateway's fast `503`s) still shows
//! what the admitted requests waited.
//!
//! For Tessera, every gateway's `/metrics` is scraped before the warm-up and after the run, and
//! the object-store requests made in between (`tessera_object_store_requests_total`) are
//! reported per 1,000 operations (warm-up included, since those requests are in the window too).

mod target;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Distribution as _;
use serde::Serialize;

use crate::client::{Api, Credentials};
use crate::{Failure, Output};
use target::{CasOutcome, ShardMap, Target};

/// `tessera bench` options.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to run.
    #[arg(long, value_enum, default_value_t = Workload::Put)]
    workload: Workload,
    /// The system under test; Tessera uses --endpoints, etcd uses --etcd-endpoints.
    #[arg(long, value_enum, default_value_t = TargetKind::Tessera)]
    target: TargetKind,
    /// etcd client URLs, comma-separated (for --target etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = KeyDistribution::Uniform)]
    distribution: KeyDistribution,
    /// Zipf exponent for --distribution zipf (YCSB uses 0.99).
    #[arg(long, default_value_t = 0.99)]
    zipf_theta: f64,
    /// Concurrent tasks, each with one operation in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Measured run time, e.g. 10s (ignored with --ops).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many measured operations instead of after --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ops: Option<u64>,
    /// Unmeasured run time before measuring, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Write every key once before the run (read workloads need the keys to exist).
    #[arg(long)]
    preload: bool,
    /// Prefix of every benchmark key.
    #[arg(long, default_value = "bench/")]
    key_prefix: String,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Tessera: send each request to any gateway (`any`: worker i uses endpoint i mod n, which
    /// forwards to the owner) or, like a smart client, straight to its shard's owner from
    /// the `/v1/cluster` map (`owner`; eventual reads still go to any gateway).
    #[arg(long, value_enum, default_value_t = Route::Any)]
    route: Route,
    /// Print one JSON object instead of the text report (same as --output json).
    #[arg(long)]
    json: bool,
}

/// The workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Durable puts.
    Put,
    /// Strong (linearizable) gets.
    Get,
    /// Eventual gets (Tessera `consistency=eventual`, etcd serializable).
    GetEventual,
    /// YCSB A: 50% strong reads, 50% updates.
    YcsbA,
    /// YCSB B: 95% strong reads, 5% updates.
    YcsbB,
    /// Read a version, then write only if it is unchanged; conflicts are counted apart.
    Cas,
}

/// The systems a benchmark can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Tessera gateways over HTTP.
    Tessera,
    /// etcd through its gRPC client.
    Etcd,
}

/// How Tessera requests pick a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Spread over the endpoints; gateways forward to the owner.
    Any,
    /// Straight to the shard's owner.
    Owner,
}

/// Key choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// Every key equally likely.
    Uniform,
    /// Key `i` (1-based rank) with probability ∝ 1/i^θ.
    Zipf,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

/// Object-store requests made by the gateways during the run.
#[derive(Debug, Serialize)]
struct ObjectStoreReport {
    /// Requests by kind (get, head, put, delete, list, copy) between the two scrapes.
    requests: BTreeMap<String, u64>,
    /// All requests per 1,000 operations (warm-up included).
    requests_per_1k_ops: f64,
    /// PUTs per 1,000 operations.
    puts_per_1k_ops: f64,
    /// All requests per second of the window.
    requests_per_sec: f64,
}

/// The result of one run (`--json` prints exactly this).
#[derive(Debug, Serialize)]
struct Report {
    target: TargetKind,
    workload: Workload,
    concurrency: u64,
    keys: u64,
    value_size: usize,
    distribution: KeyDistribution,
    zipf_theta: Option<f64>,
    route: Option<Route>,
    warmup_secs: f64,
    elapsed_secs: f64,
    ops: u64,
    ops_per_sec: f64,
    latency_ms: Latency,
    /// The same, of the operations that succeeded.
    ok_latency_ms: Latency,
    errors: u64,
    errors_by_kind: BTreeMap<String, u64>,
    cas_conflicts: u64,
    object_store: Option<ObjectStoreReport>,
}

/// What one worker measured.
struct Tally {
    hist: Histogram<u64>,
    /// Successful operations only.
    ok_hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    conflicts: u64,
    /// Operations finished, warm-up included.
    all_ops: u64,
    /// When its last measured operation finished.
    last_end: Option<Instant>,
}

/// Runs the benchmark and prints its report.
pub async fn run(
    args: BenchArgs,
    endpoints: &[String],
    credentials: &Credentials,
    output: Output,
) -> Result<(), Failure> {
    if args.zipf_theta <= 0.0 || !args.zipf_theta.is_finite() {
        return Err(Failure::Usage(
            "--zipf-theta must be a positive number".into(),
        ));
    }
    let concurrency = args.concurrency as usize;
    let target = match args.target {
        TargetKind::Tessera => {
            let api = Api::new(endpoints, args.request_timeout, concurrency, credentials)
                .map_err(Failure::Usage)?;
            let map = match args.route {
                Route::Any => None,
                Route::Owner => Some(ShardMap::fetch(&api).await.map_err(Failure::Unavailable)?),
            };
            Target::Tessera(api, map)
        }
        TargetKind::Etcd => {
            // One HTTP/2 channel per 16 tasks (at most 16), each balanced over the endpoints.
            let connections = concurrency.div_ceil(16).min(16);
            Target::etcd(&args.etcd_endpoints, connections, args.request_timeout)
                .await
                .map_err(Failure::Other)?
        }
    };
    target.check().await.map_err(Failure::Unavailable)?;
    let target = Arc::new(target);
    let value = Bytes::from(vec![b'v'; args.value_size]);
    if args.preload {
        preload(&target, &args, value.clone()).await?;
    }
    let before = scrape(&target).await;
    let window = Instant::now();
    let (tallies, measure_from) = drive(&target, &args, value).await?;
    let window = window.elapsed();
    let after = scrape(&target).await;

    let mut hist = new_histogram().map_err(histogram_error)?;
    let mut ok_hist = new_histogram().map_err(histogram_error)?;
    let mut errors_by_kind = BTreeMap::new();
    let (mut conflicts, mut all_ops, mut last_end) = (0, 0, measure_from);
    for t in tallies {
        hist.add(&t.hist).map_err(histogram_error)?;
        ok_hist.add(&t.ok_hist).map_err(histogram_error)?;
        for (k, n) in t.errors {
            *errors_by_kind.entry(k).or_insert(0) += n;
        }
        conflicts += t.conflicts;
        all_ops += t.all_ops;
        last_end = last_end.max(t.last_end.unwrap_or(measure_from));
    }
    let errors: u64 = errors_by_kind.values().sum();
    let elapsed = last_end.duration_since(measure_from).as_secs_f64();
    let ops = hist.len();
    let report = Report {
        target: args.target,
        workload: args.workload,
        concurrency: args.concurrency,
        keys: args.keys,
        value_size: args.value_size,
        distribution: args.distribution,
        zipf_theta: (args.distribution == KeyDistribution::Zipf).then_some(args.zipf_theta),
        route: (args.target == TargetKind::Tessera).then_some(args.route),
        warmup_secs: args.warmup.as_secs_f64(),
        elapsed_secs: elapsed,
        ops,
        ops_per_sec: if elapsed > 0.0 {
            ops as f64 / elapsed
        } else {
            0.0
        },
        latency_ms: latency(&hist),
        ok_latency_ms: latency(&ok_hist),
        errors,
        errors_by_kind,
        cas_conflicts: conflicts,
        object_store: object_store_report(before, after, all_ops, window),
    };
    print(&report, args.json || output == Output::Json)
}

/// Writes every key once, with up to 64 requests in flight: on Tessera in batches of up to
/// 500 keys of one shard (grouped with the `/v1/cluster` shard map), on etcd one put each.
async fn preload(target: &Arc<Target>, args: &BenchArgs, value: Bytes) -> Result<(), Failure> {
    let workers = (args.concurrency as usize).clamp(16, 64);
    let bar = progress(Some(args.keys), "preload");
    let keys = (0..args.keys).map(|i| key(&args.key_prefix, i));
    let jobs: Vec<Vec<Vec<u8>>> = match &**target {
        Target::Tessera(api, _) => {
            let map = ShardMap::fetch(api).await.map_err(Failure::Unavailable)?;
            let mut by_shard: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
            for k in keys {
                by_shard.entry(map.shard_of(&k)).or_default().push(k);
            }
            by_shard
                .into_values()
                .flat_map(|ks| ks.chunks(500).map(<[_]>::to_vec).collect::<Vec<_>>())
                .collect()
        }
        Target::Etcd(_) => keys.map(|k| vec![k]).collect(),
    };
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (target, next, value, bar, jobs) = (
                target.clone(),
                next.clone(),
                value.clone(),
                bar.clone(),
                jobs.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(job) = jobs.get(i) else {
                        return Ok(());
                    };
                    let done = match &*target {
                        Target::Tessera(..) => target.put_batch(w, job, &value).await,
                        Target::Etcd(_) => target.put(w, &job[0], value.clone()).await,
                    };
                    done.map_err(|kind| format!("preload failed: {kind}"))?;
                    bar.inc(job.len() as u64);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await
            .map_err(|e| Failure::Other(format!("preload task: {e}")))?
            .map_err(Failure::Other)?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Runs the workers; returns their tallies and when measuring started.
async fn drive(
    target: &Arc<Target>,
    args: &BenchArgs,
    value: Bytes,
) -> Result<(Vec<Tally>, Instant), Failure> {
    let start = Instant::now();
    let measure_from = start + args.warmup;
    // With --ops the run ends when the budget is spent; otherwise at the deadline.
    let deadline = args.ops.is_none().then(|| measure_from + args.duration);
    let budget = Arc::new(AtomicU64::new(args.ops.unwrap_or(u64::MAX)));
    let measured = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let zipf = match args.distribution {
        KeyDistribution::Uniform => None,
        KeyDistribution::Zipf => Some(
            rand_distr::Zipf::new(args.keys as f64, args.zipf_theta)
                .map_err(|e| Failure::Usage(format!("bad Zipf parameters: {e}")))?,
        ),
    };
    let bar = progress(
        Some(
            args.ops
                .unwrap_or((args.warmup + args.duration).as_secs().max(1)),
        ),
        &format!("{} on {}", name(args.workload), target.name()),
    );
    let ticker = {
        let (bar, measured, stop) = (bar.clone(), measured.clone(), stop.clone());
        let by_ops = args.ops.is_some();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let n = measured.load(Ordering::Relaxed);
                let secs = Instant::now()
                    .saturating_duration_since(measure_from)
                    .as_secs_f64();
                if by_ops {
                    bar.set_position(n);
                } else {
                    bar.set_position(start.elapsed().as_secs());
                }
                if secs > 0.0 {
                    bar.set_message(format!("{n} ops, {:.0} ops/s", n as f64 / secs));
                } else {
                    bar.set_message("warming up");
                }
            }
        })
    };
    let tasks: Vec<_> = (0..args.concurrency as usize)
        .map(|w| {
            let target = target.clone();
            let (budget, measured, value) = (budget.clone(), measured.clone(), value.clone());
            let (workload, keys, prefix) = (args.workload, args.keys, args.key_prefix.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::from_os_rng();
                let mut tally = Tally {
                    hist: new_histogram().map_err(|e| e.to_string())?,
                    ok_hist: new_histogram().map_err(|e| e.to_string())?,
                    errors: BTreeMap::new(),
                    conflicts: 0,
                    all_ops: 0,
                    last_end: None,
                };
                loop {
                    let began = Instant::now();
                    if deadline.is_some_and(|d| began >= d) {
                        break;
                    }
                    let measuring = began >= measure_from;
                    if measuring
                        && budget
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                b.checked_sub(1)
                            })
                            .is_err()
                    {
                        break;
                    }
                    let i = match &zipf {
                        Some(z) => (z.sample(&mut rng) as u64).clamp(1, keys) - 1,
                        None => rng.random_range(0..keys),
                    };
                    let k = key(&prefix, i);
                    let result = match workload {
                        Workload::Put => target.put(w, &k, value.clone()).await,
                        Workload::Get => read(&target, w, &k, false).await,
                        Workload::GetEventual => read(&target, w, &k, true).await,
                        Workload::YcsbA | Workload::YcsbB => {
                            let reads = if workload == Workload::YcsbA {
                                0.5
                            } else {
                                0.95
                            };
                            if rng.random_bool(reads) {
                                read(&target, w, &k, false).await
                            } else {
                                target.put(w, &k, value.clone()).await
                            }
                        }
                        Workload::Cas => match target.cas(w, &k, value.clone()).await {
                            Ok(CasOutcome::Applied) => Ok(()),
                            Ok(CasOutcome::Conflict) => {
                                if measuring {
                                    tally.conflicts += 1;
                                }
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                    };
                    let ended = Instant::now();
                    tally.all_ops += 1;
                    if measuring {
                        let us = ended.duration_since(began).as_micros().max(1) as u64;
                        tally.hist.saturating_record(us);
                        tally.last_end = Some(ended);
                        measured.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(()) => tally.ok_hist.saturating_record(us),
                            Err(kind) => *tally.errors.entry(kind).or_insert(0) += 1,
                        }
                    }
                }
                Ok::<_, String>(tally)
            })
        })
        .collect();
    let mut tallies = Vec::with_capacity(tasks.len());
    for t in tasks {
        tallies.push(
            t.await
                .map_err(|e| Failure::Other(format!("worker: {e}")))?
                .map_err(Failure::Other)?,
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();
    Ok((tallies, measure_from))
}

/// A get that counts an absent key as an error (read workloads expect preloaded keys).
async fn read(target: &Target, w: usize, k: &[u8], eventual: bool) -> Result<(), String> {
    match target.get(w, k, eventual).await? {
        Some(_) => Ok(()),
        None => Err("not_found".into()),
    }
}

/// The command-line spelling of a value, e.g. `ycsb-a`.
fn name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map_or_else(String::new, |p| p.get_name().to_string())
}

/// Key number `i`: `{prefix}{i:010}`.
fn key(prefix: &str, i: u64) -> Vec<u8> {
    format!("{prefix}{i:010}").into_bytes()
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar
}

/// Sums `tessera_object_store_requests_total{op=...}` over every gateway; `None` for etcd or
/// when a gateway does not answer or does not export the metric.
async fn scrape(target: &Target) -> Option<BTreeMap<String, u64>> {
    let Target::Tessera(api, _) = target else {
        return None;
    };
    let mut sum = BTreeMap::new();
    for at in 0..api.endpoints().len() {
        let text = api.metrics_at(at).await.ok()?;
        let mut found = false;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("tessera_object_store_requests_total{op=\"") else {
                continue;
            };
            let (op, value) = rest.split_once("\"}")?;
            let n: f64 = value.trim().parse().ok()?;
            *sum.entry(op.to_string()).or_insert(0) += n as u64;
            found = true;
        }
        if !found {
            return None;
        }
    }
    Some(sum)
}

fn object_store_report(
    before: Option<BTreeMap<String, u64>>,
    after: Option<BTreeMap<String, u64>>,
    ops: u64,
    window: Duration,
) -> Option<ObjectStoreReport> {
    let (before, after) = (before?, after?);
    let requests: BTreeMap<String, u64> = after
        .iter()
        .map(|(op, n)| (op.clone(), n.saturating_sub(*before.get(op).unwrap_or(&0))))
        .collect();
    let total: u64 = requests.values().sum();
    let per_1k = |n: u64| {
        if ops == 0 {
            0.0
        } else {
            n as f64 * 1000.0 / ops as f64
        }
    };
    Some(ObjectStoreReport {
        requests_per_1k_ops: per_1k(total),
        puts_per_1k_ops: per_1k(*requests.get("put").unwrap_or(&0)),
        requests_per_sec: total as f64 / window.as_secs_f64().max(1e-9),
        requests,
    })
}

/// An empty latency histogram: 1 µs to 120 s, 3 significant digits.
fn new_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, 120_000_000, 3)
}

fn histogram_error(e: impl std::fmt::Display) -> Failure {
    Failure::Other(format!("histogram: {e}"))
}

/// The percentiles of `hist`, in milliseconds.
fn latency(hist: &Histogram<u64>) -> Latency {
    let ms = |us: u64| us as f64 / 1000.0;
    Latency {
        p50: ms(hist.value_at_quantile(0.50)),
        p90: ms(hist.value_at_quantile(0.90)),
        p99: ms(hist.value_at_quantile(0.99)),
        p999: ms(hist.value_at_quantile(0.999)),
        max: ms(hist.max()),
        mean: hist.mean() / 1000.0,
    }
}

fn print(r: &Report, json: bool) -> Result<(), Failure> {
    let text = if json {
        serde_json::to_string(r).map_err(|e| Failure::Other(format!("cannot encode JSON: {e}")))?
    } else {
        let l = &r.latency_ms;
        let mut t = format!(
            "{} on {}: {} tasks, {} keys ({}), {} B values, {:.1} s measured after {:.1} s warm-up\n\
             throughput  {:.1} ops/s ({} ops)\n\
             latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}\n\
             errors      {}{}\n",
            name(r.workload), name(r.target), r.concurrency, r.keys, name(r.distribution), r.value_size,
            r.elapsed_secs, r.warmup_secs, r.ops_per_sec, r.ops,
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean,
            r.errors,
            if r.errors_by_kind.is_empty() { String::new() } else { format!(" {:?}", r.errors_by_kind) },
        );
        if r.errors > 0 {
            let ok = &r.ok_latency_ms;
            t.push_str(&format!(
                "successes   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}\n",
                ok.p50, ok.p90, ok.p99, ok.p999, ok.max, ok.mean
            ));
        }
        if r.workload == Workload::Cas {
            t.push_str(&format!("cas conflicts {}\n", r.cas_conflicts));
        }
        if let Some(o) = &r.object_store {
            t.push_str(&format!(
                "object store {:.1} requests per 1k ops ({:.1} PUTs), {:.1} requests/s {:?}\n",
                o.requests_per_1k_ops, o.puts_per_1k_ops, o.requests_per_sec, o.requests
            ));
        }
        t.trim_end().to_string()
    };
    println!("{text}");
    Ok(())
}
