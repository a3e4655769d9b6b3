//! Offloaded compaction with real processes: etcd, s3s-fs, cluster-mode gateways (which do not
//! compact) and `tessera-compactor` daemons and batch runs. Small SSTs make L0 fill in seconds.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{samples, shard_of, Cluster, ClusterOpts, CompactorProc, SHARDS};
use common::process::log_tail;
use common::{client, put_until_ok};
use futures::StreamExt;
use reqwest::StatusCode;

/// Gateway storage settings: 32 KiB memtables, so a few hundred KiB of writes make several L0
/// SSTs per shard; `l0_max_ssts` is where memtable flushes stop (backpressure). Owners hint
/// their shards for compaction at 4 L0 SSTs (the compactors' threshold here), or at
/// `l0_max_ssts` if lower, and re-read their manifests every second (below the compactors'
/// 3 s `gc_min_age`, so no gateway reads an SST that GC deleted).
fn gateway_config(l0_max_ssts: usize, extra: &str) -> String {
    let hint = l0_max_ssts.min(4);
    format!(
        "[storage]\nl0_sst_size_bytes = 32768\nmax_unflushed_bytes = 262144\n\
         l0_max_ssts = {l0_max_ssts}\ncompaction_hint_l0 = {hint}\n\
         manifest_poll_interval = \"1s\"\n{extra}"
    )
}

/// Compactor settings for tests: fast polling, a killed worker's job retried after 3 s, a GC
/// pass per shard every second, of objects older than 3 s (above the gateways' 1 s manifest
/// poll, `gateway_config`, so no gateway still reads an SST the GC deletes).
fn compactor_config(l0_threshold: usize) -> String {
    format!(
        "[compaction]\nl0_threshold = {l0_threshold}\npoll_interval = \"200ms\"\n\
         job_timeout = \"3s\"\ngc_interval = \"1s\"\ngc_min_age = \"3s\"\nonce_timeout = \"120s\"\n"
    )
}

/// A 2 KiB value derived from the key.
fn value(key: &str) -> String {
    key.repeat(2048 / key.len() + 1)[..2048].to_string()
}

/// Writes `n` keys `{prefix}{i}` through `urls` (round robin), 16 at a time; returns them.
async fn write_keys(urls: &[String], prefix: &str, n: usize) -> BTreeMap<String, String> {
    let http = client();
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let results =
        futures::future::join_all(keys.chunks(n.div_ceil(16)).enumerate().map(|(t, chunk)| {
            let (http, url) = (http.clone(), urls[t % urls.len()].clone());
            let chunk = chunk.to_vec();
            async move {
                for k in &chunk {
                    let r = http
                        .put(format!("{url}/v1/kv/{k}"))
                        .body(value(k))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
                }
                chunk
            }
        }))
        .await;
    results
        .into_iter()
        .flatten()
        .map(|k| (k.clone(), value(&k)))
        .collect()
}

/// Writes keys `{prefix}{i}` through `url` from 8 tasks until `stop`; returns the acknowledged
/// ones (a 503 or a timeout means the outcome is unknown, so those are not expected back).
fn background_writer(
    url: String,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<String, String>> {
    tokio::spawn(async move {
        let http = client();
        let tasks = (0..8).map(|t| {
            let (http, url, stop) = (http.clone(), url.clone(), Arc::clone(&stop));
            async move {
                let mut acked = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("{prefix}{t}-{i}");
                    i += 1;
                    if let Ok(r) = http
                        .put(format!("{url}/v1/kv/{k}"))
                        .body(value(&k))
                        .send()
                        .await
                    {
                        if r.status() == StatusCode::OK {
                            acked.push(k);
                        }
                    }
                }
                acked
            }
        });
        futures::future::join_all(tasks)
            .await
            .into_iter()
            .flatten()
            .map(|k| (k.clone(), value(&k)))
            .collect()
    })
}

/// Reads every key of `want` through `url`, 16 at a time (after a compaction most are cold:
/// a block read each), and checks its value.
async fn read_back(url: &str, want: &BTreeMap<String, String>) {
    let http = &client();
    futures::stream::iter(want)
        .for_each_concurrent(16, |(k, v)| async move {
            let r = http.get(format!("{url}/v1/kv/{k}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "key {k} lost");
            assert!(r.text().await.unwrap() == *v, "key {k} has a wrong value");
        })
        .await;
}

/// Polls until every shard's L0 is below `threshold`; returns the counts. On timeout the
/// panic shows the logs of the compactors `comps` expected to do it.
async fn await_l0_below(
    c: &Cluster,
    comps: &[&CompactorProc],
    threshold: usize,
    timeout: Duration,
) -> Vec<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let l0 = c.l0_counts().await;
        if l0.iter().all(|&n| n < threshold) {
            return l0;
        }
        assert!(
            Instant::now() < deadline,
            "L0 not below {threshold}: {l0:?}\n{}",
            {
                let logs = comps.iter().map(|p| p.process.log_tail());
                logs.collect::<Vec<_>>().join("\n---\n")
            }
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Shards whose L0 gauge `p` reports (the shards it holds and has read).
async fn reported_shards(p: &CompactorProc) -> BTreeSet<String> {
    samples(&p.metrics().await, "tessera_compactor_l0_ssts")
        .into_keys()
        .collect()
}

/// Waits until compactor `p` reports `n` shards (it claimed them and read their manifests);
/// panics with `what` and its log's tail after `within`.
async fn await_reported(p: &CompactorProc, n: usize, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while reported_shards(p).await.len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}:\n{}",
            p.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_compacts_every_shard_and_gc_shrinks_storage() {
    let dir = tempfile::tempdir().unwrap();
    // No time-triggered memtable flush: the last partial memtables stay in memory instead of
    // landing as new L0 SSTs 30 s after the writes, possibly after `--once` finished.
    let toml = gateway_config(64, "memtable_flush_interval = \"1h\"\n");
    let c = Cluster::start_config(2, &toml).await;
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let urls = vec![c.gw(0).url.clone(), c.gw(1).url.clone()];
    let data = write_keys(&urls, "k", 2400).await;

    // Gateways in cluster mode do not compact: L0 accumulates. Wait until every shard has its
    // L0 SSTs and no flush is still adding to them (on a loaded machine the gateways' memtable
    // uploads can trail the writes by seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Vec::new();
    let before = loop {
        let l0 = c.l0_counts().await;
        if l0.iter().all(|&n| n >= 4) && l0 == last {
            break l0;
        }
        assert!(Instant::now() < deadline, "L0 did not settle: {l0:?}");
        last = l0;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::time::sleep(Duration::from_secs(4)).await; // WAL objects older than gc_min_age
    let objects_before = c.object_count();

    let log = dir.path().join("once.log");
    let started = Instant::now();
    let out = c.compact_once("batch", &compactor_config(4), &log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--once failed:\n{stdout}\n{}",
        log_tail(&log)
    );
    println!("--once took {:?}:\n{stdout}", started.elapsed());
    assert!(
        stdout.contains(&format!("{SHARDS} shards: {SHARDS} compacted")),
        "{stdout}"
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    let after = c.l0_counts().await;
    assert!(
        after.iter().all(|&n| n < 4),
        "before {before:?} after {after:?}"
    );
    read_back(&urls[1], &data).await;

    // A second pass finds nothing to compact; its GC also removes the SSTs the first pass
    // replaced, now older than gc_min_age.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = c.compact_once("batch", &compactor_config(4), &log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("{SHARDS} already below threshold")),
        "{stdout}"
    );
    let objects_after = c.object_count();
    println!("objects: {objects_before} before, {objects_after} after GC");
    assert!(
        objects_after < objects_before,
        "GC removed nothing: {objects_before} -> {objects_after}"
    );
    read_back(&urls[0], &data).await;
    for i in 0..2 {
        assert!(
            !c.gw(i).process.log_text().contains("Fenced"),
            "a gateway was fenced"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_split_shards_and_survive_kill9() {
    let c = Cluster::start_config(2, &gateway_config(64, "")).await;
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let mut c0 = c.start_compactor("c0", &compactor_config(4));
    let c1 = c.start_compactor("c1", &compactor_config(4));

    // Claims are disjoint and cover every shard.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (a, b) = (reported_shards(&c0).await, reported_shards(&c1).await);
        // c0 may claim everything before c1 joins; wait for the rebalance to split them.
        if a.len() + b.len() == SHARDS as usize && !a.is_empty() && !b.is_empty() {
            break;
        }
        assert!(a.is_disjoint(&b), "overlapping claims: {a:?} {b:?}");
        assert!(Instant::now() < deadline, "claims incomplete: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writer = background_writer(c.gw(0).url.clone(), "w", Arc::clone(&stop));
    // Kill c0 while it is compacting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sum(&c0.metrics().await, "tessera_compactor_bytes_written_total") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "c0 never compacted:\n{}",
            c0.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = Instant::now();
    c0.process.kill();
    await_reported(
        &c1,
        SHARDS as usize,
        Duration::from_secs(30),
        "c1 did not take over c0's shards",
    )
    .await;
    println!("c1 holds every shard {:?} after the kill", killed.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );

    // c1 compacts c0's former shards too (the killed job is retried after job_timeout).
    let l0 = await_l0_below(&c, &[&c1], 4, Duration::from_secs(90)).await;
    println!("L0 after takeover: {l0:?}; {} writes", acked.len());
    let failures = sum(&c1.metrics().await, "tessera_compactor_failures_total");
    assert!(
        failures == 0.0,
        "{failures} failures:\n{}",
        c1.process.log_tail()
    );
    read_back(&c.gw(1).url, &acked).await;
}

/// SIGTERM stops a daemon promptly even with the object store down: its shards are stopped
/// and released together, and what has not finished within `compaction.job_timeout` (3 s
/// here) is left to expire with its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_stops_promptly_with_the_object_store_down() {
    let mut c = Cluster::start_config(1, &gateway_config(64, "")).await;
    c.await_stable(&[0], Duration::from_secs(30)).await;
    let mut c0 = c.start_compactor("c0", &compactor_config(4));
    await_reported(
        &c0,
        SHARDS as usize,
        Duration::from_secs(30),
        "c0 never claimed every shard",
    )
    .await;
    c.s3.stop();
    let t = Instant::now();
    let status = tokio::task::block_in_place(|| c0.process.terminate(Duration::from_secs(60)));
    let took = t.elapsed();
    println!("c0 stopped {took:?} after SIGTERM with the object store down");
    assert!(status.success(), "{status}:\n{}", c0.process.log_tail());
    assert!(took < Duration::from_secs(8), "c0 took {took:?} to stop");
}

/// A daemon exports, besides its own `tessera_compactor_*` metrics, the standard `process_*`
/// metrics and `tessera_build_info` with the version `--version` prints, as gateways do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_exports_process_and_build_metrics() {
    let c = Cluster::start_config(1, &gateway_config(64, "")).await;
    let p = c.start_compactor("c0", &compactor_config(4));
    let text = p.metrics().await;
    // A fresh daemon may not have used a whole 10 ms CPU tick yet: the counter may read 0.
    assert!(
        samples(&text, "process_cpu_seconds_total").contains_key(""),
        "{text}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            samples(&text, name).get("").is_some_and(|v| *v > 0.0),
            "{name} missing or 0:\n{text}"
        );
    }
    let out = std::process::Command::new(common::compactor_bin())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(out.stdout).unwrap();
    let version = version.trim().rsplit(' ').next().unwrap().to_string();
    let info = samples(&text, "tessera_build_info");
    assert_eq!(
        info,
        BTreeMap::from([(format!("{{version=\"{version}\"}}"), 1.0)]),
        "{text}"
    );
}

/// A compactor that starts before any shard database exists (the gateway waits 6 s before its
/// first rebalance) fails on every shard until the gateway creates them, and retries each with
/// a doubling backoff, not on every pass: a tight claim-fail-release loop once flooded etcd with
/// claim writes, which kept the gateways from ever settling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactor_backs_off_shards_not_created_yet() {
    let toml = gateway_config(64, "[cluster]\nrebalance_delay = \"6s\"\n");
    let c = Cluster::start_config(1, &toml).await;
    let p = c.start_compactor("c0", &compactor_config(4));
    c.await_stable(&[0], Duration::from_secs(60)).await;
    let (every, within) = (SHARDS as usize, Duration::from_secs(60));
    await_reported(&p, every, within, "compactor never compacted every shard").await;
    // Backoff from 200 ms: attempts at ~0, 0.2, 0.6, 1.4, 3.0, 6.2 s. Without it, every 250 ms
    // pass retried every shard (~24 failures per shard in 6 s).
    let failures = sum(&p.metrics().await, "tessera_compactor_failures_total");
    println!("{failures} failed compactor starts over {SHARDS} shards");
    assert!(
        failures <= 8.0 * SHARDS as f64,
        "{failures} failures: no backoff\n{}",
        p.process.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_failover_during_compaction_loses_nothing() {
    let mut c = Cluster::start_config(3, &gateway_config(64, "")).await;
    c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let comp = c.start_compactor("c0", &compactor_config(4));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = background_writer(c.gw(0).url.clone(), "f", Arc::clone(&stop));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sum(
        &comp.metrics().await,
        "tessera_compactor_bytes_written_total",
    ) == 0.0
    {
        assert!(Instant::now() < deadline, "no compaction started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.kill(2);
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    await_l0_below(&c, &[&comp], 4, Duration::from_secs(90)).await;
    read_back(&c.gw(1).url, &acked).await;
    println!(
        "{} acknowledged writes read back after the failover",
        acked.len()
    );
}

/// One gateway, no compactor, whose shards run out of room after a few hundred KiB of writes:
/// L0 stops at 2 SSTs per shard (small memtables, `gateway_config`); requests give up after 3 s.
async fn gateway_soon_out_of_room() -> Cluster {
    let toml = gateway_config(2, "[server]\nrequest_timeout = \"3s\"\n");
    let c = Cluster::start_config(1, &toml).await;
    c.await_stable(&[0], Duration::from_secs(30)).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_compactor_writes_wait_then_503_and_none_is_lost() {
    let c = gateway_soon_out_of_room().await;
    let url = c.gw(0).url.clone();
    let http = client();
    let mut acked = BTreeMap::new();
    let mut codes = BTreeMap::<String, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Write until several writes were refused.
    let mut i = 0;
    while codes.values().sum::<usize>() < 8 {
        assert!(Instant::now() < deadline, "writes never stalled");
        let batch: Vec<String> = (i..i + 16).map(|j| format!("b{j}")).collect();
        i += 16;
        let results = futures::future::join_all(batch.iter().map(|k| {
            let http = http.clone();
            let url = format!("{url}/v1/kv/{k}");
            async move {
                let r = http.put(url).body(value(k)).send().await.unwrap();
                let status = r.status();
                (status, r.json::<serde_json::Value>().await.ok())
            }
        }))
        .await;
        for (k, (status, body)) in batch.iter().zip(results) {
            if status == StatusCode::OK {
                acked.insert(k.clone(), value(k));
            } else {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
                let code = body.unwrap()["error"]["code"].as_str().unwrap().to_string();
                *codes.entry(code).or_default() += 1;
            }
        }
    }
    println!("stalled after {} acked writes: {codes:?}", acked.len());
    assert_eq!(
        codes.keys().collect::<Vec<_>>(),
        ["deadline_exceeded"],
        "{codes:?}"
    );
    assert!(c.l0_counts().await.iter().any(|&n| n >= 2));

    // A compactor drains L0 and writes flow again.
    let _comp = c.start_compactor("c0", &compactor_config(2));
    let resumed = Instant::now();
    for j in 0..64 {
        let k = format!("after{j}");
        // Same value on every try, so a retry after an unknown outcome is harmless.
        let deadline = resumed + Duration::from_secs(90);
        let k_url = format!("{url}/v1/kv/{k}");
        put_until_ok(&http, &k_url, &value(&k), deadline, "writes did not resume").await;
        acked.insert(k.clone(), value(&k));
    }
    println!(
        "writes resumed; 64 more took {:?} after the compactor started",
        resumed.elapsed()
    );
    read_back(&url, &acked).await;
}

/// A shard out of room (L0 full, no compactor) makes its own writes wait, not the other
/// shards': the gateway's log applies every shard's writes in order, so one write held up in a
/// full shard's database would stall them all (`ShardStore::admit` keeps it out of the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_out_of_room_stalls_only_its_own_writes() {
    let c = gateway_soon_out_of_room().await;
    let url = c.gw(0).url.clone();
    let http = client();
    let hot = shard_of("hot");
    let keys_of = |prefix: &'static str, hot_shard: bool| {
        (0..)
            .map(move |i| format!("{prefix}{i}"))
            .filter(move |k| (shard_of(k) == hot) == hot_shard)
    };
    let put = |k: String| {
        let (http, url) = (http.clone(), format!("{url}/v1/kv/{k}"));
        async move {
            let started = Instant::now();
            let r = http.put(url).body(value(&k)).send().await.unwrap();
            (k, r.status(), started.elapsed())
        }
    };
    // Fill the hot shard until its writes are refused.
    let mut acked = BTreeMap::new();
    let mut hot_keys = keys_of("h", true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut refused = 0;
    while refused < 4 {
        assert!(
            Instant::now() < deadline,
            "the hot shard never ran out of room"
        );
        let batch: Vec<String> = hot_keys.by_ref().take(16).collect();
        for (k, status, _) in futures::future::join_all(batch.into_iter().map(put)).await {
            match status {
                StatusCode::OK => {
                    acked.insert(k.clone(), value(&k));
                }
                StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                other => panic!("{k}: {other}"),
            }
        }
    }
    println!(
        "the hot shard {hot} is out of room after {} writes",
        acked.len()
    );
    // While the hot shard's writes wait, every other shard's are acknowledged at once.
    let waiting = futures::future::join_all(hot_keys.by_ref().take(8).map(put));
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        futures::future::join_all(keys_of("cold", false).take(16).map(put)).await
    };
    let (waiting, others) = tokio::join!(waiting, others);
    assert!(
        waiting
            .iter()
            .any(|(_, s, _)| *s == StatusCode::SERVICE_UNAVAILABLE),
        "the hot shard had room again: {waiting:?}"
    );
    let slowest = others.iter().map(|(_, _, took)| *took).max().unwrap();
    for (k, status, took) in &others {
        assert_eq!(
            *status,
            StatusCode::OK,
            "{k} (shard {}) after {took:?}",
            shard_of(k)
        );
        acked.insert(k.clone(), value(k));
    }
    println!("16 writes to other shards while the hot one was full: slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "slowest {slowest:?}");
    let metrics = common::get_text(&http, format!("{url}/metrics")).await;
    let waits = sum(&metrics, "tessera_write_admission_waits_total");
    assert!(waits >= 1.0, "admission waits counted: {waits}");
    read_back(&url, &acked).await;
}

/// Commit-log GC with real processes: log objects and published checkpoints put straight into
/// the cluster's bucket, then `--once`, then a daemon. The gateways write no logs of their own
/// yet; these use shards 900 and up and logs named `gc-test-*`, so they stay apart from the
/// gateways' once they do.
/// A gateway that exits cleanly leaves nothing behind in its log: it seals the log after its
/// shards checkpointed clean, so GC may take the log's last object too (rule R2 keeps the last
/// object of an unsealed log forever), and one pass deletes the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_exit_leaves_a_log_that_gc_deletes_whole() {
    let mut c = Cluster::start(2).await;
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let http = client();
    // Through both gateways: each owns about half the shards, so gw1's log gets records.
    for i in 0..32 {
        common::put_ok(&http, c.gw(i % 2).kv(&format!("exit{i}")), "v").await;
    }
    let log = c.log_of("gw1").await;
    assert!(!c.log_objects(&log).await.is_empty(), "gw1 wrote its log");
    // SIGTERM: gw1 hands its shards over (clean checkpoints), then seals its log.
    let gw1 = c.gateways[1].as_mut().unwrap();
    assert!(gw1.process.terminate(Duration::from_secs(60)).success());
    let objects = c.log_objects(&log).await;
    let last = *objects.last().unwrap();
    let segment = tessera::storage::log::get(&c.store(), &log, last).await;
    assert!(
        matches!(
            segment,
            Ok(Some(tessera::storage::log::format::Segment::Fence { .. }))
        ),
        "the exited gateway's log ends in a fence: objects {objects:?}"
    );
    let config = format!(
        "{}log_gc_interval = \"200ms\"\nlog_fence_min_age = \"0s\"\n",
        compactor_config(4)
    );
    let dir = tempfile::tempdir().unwrap();
    let out = c.compact_once("batch", &config, &dir.path().join("once.log"));
    assert!(out.status.success(), "--once failed");
    assert_eq!(
        c.log_objects(&log).await,
        Vec::<u64>::new(),
        "GC left objects of a log whose gateway exited cleanly"
    );
    // Every acknowledged write is still there, served by gw0.
    for i in 0..32 {
        let got = common::get_text(&http, c.gw(0).kv(&format!("exit{i}"))).await;
        assert_eq!(got, "v");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_gc_deletes_what_checkpoints_cover() {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    use tessera::storage::log::checkpoint::{publish, Marker};
    use tessera::storage::log::format::{encode_fence, encode_records, Op, Record};
    use tessera::storage::log::object_path;
    use tessera::ShardId;

    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start_config(1, &gateway_config(64, "")).await;
    c.await_stable(&[0], Duration::from_secs(30)).await;
    let store = c.store();
    let put = |log: &'static str, seq: u64, shards: &'static [u32]| {
        let store = store.clone();
        async move {
            let group: Vec<Record> = shards
                .iter()
                .map(|&s| Record {
                    shard: ShardId(s),
                    epoch: 1,
                    version: seq,
                    written_at_ms: 0,
                    key: format!("k{s}").into(),
                    op: Op::Put {
                        value: vec![b'v'; 1000].into(),
                        expires_at_ms: None,
                    },
                })
                .collect();
            let bytes = if shards.is_empty() {
                encode_fence(log, seq)
            } else {
                encode_records(log, seq, &[group])
            };
            store
                .store
                .put(&object_path(&store, log, seq), bytes.into())
                .await
                .unwrap();
        }
    };
    let checkpoint = |shard: u32, log: &str, through_seq: u64| {
        let (store, log) = (store.clone(), log.to_string());
        async move {
            // Each checkpoint takes a new version, as a gateway's do (the published
            // checkpoint only moves forward); through_seq grows per shard here.
            let marker = Marker {
                log,
                through_seq,
                epoch: 1,
                max_version: through_seq,
                clean: false,
            };
            publish(&store, ShardId(shard), &marker).await.unwrap();
        }
    };
    let remaining = || async {
        let listed: Vec<_> = store
            .store
            .list(Some(&store.path("logs")))
            .try_collect()
            .await
            .unwrap();
        let mut names: Vec<String> = listed
            .iter()
            .map(|m| {
                m.location
                    .as_ref()
                    .trim_start_matches("cluster/logs/")
                    .to_string()
            })
            .filter(|name| name.starts_with("gc-test-"))
            .map(|name| name.replace("/0000000000000000000", "/"))
            .collect();
        names.sort();
        names
    };
    // a: live; shard 900 checkpointed through 2, shard 901 through 1.
    put("gc-test-a", 1, &[900]).await;
    put("gc-test-a", 2, &[900, 901]).await;
    put("gc-test-a", 3, &[901]).await;
    checkpoint(900, "gc-test-a", 2).await;
    checkpoint(901, "gc-test-a", 1).await;
    // b: sealed; its shard 902 moved on to log c, which replayed b.
    put("gc-test-b", 1, &[902]).await;
    put("gc-test-b", 2, &[]).await; // the fence
                                    // c: live; shard 903 never checkpointed.
    put("gc-test-c", 1, &[902]).await;
    put("gc-test-c", 2, &[903]).await;
    checkpoint(902, "gc-test-c", 1).await;

    let config = format!(
        "{}log_gc_interval = \"200ms\"\nlog_fence_min_age = \"0s\"\n",
        compactor_config(4)
    );
    let log = dir.path().join("once.log");
    let out = c.compact_once("batch", &config, &log);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "--once failed:\n{stdout}\n{}",
        log_tail(&log)
    );
    println!("{stdout}");
    assert!(stdout.contains("\nlog GC: "), "{stdout}");
    assert_eq!(
        remaining().await,
        [
            "gc-test-a/2", // shard 901 only checkpointed through 1
            "gc-test-a/3", // the live log's last object
            "gc-test-c/2", // shard 903 has no checkpoint
        ]
    );

    // The daemon (holding shard 0) collects what later checkpoints cover: a/2 now; a/3 too
    // once a/4 follows it.
    checkpoint(901, "gc-test-a", 3).await;
    put("gc-test-a", 4, &[900]).await;
    let daemon = c.start_compactor("c0", &config);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let deleted = sum(
            &daemon.metrics().await,
            "tessera_compactor_log_objects_deleted_total",
        );
        if remaining().await == ["gc-test-a/4", "gc-test-c/2"] && deleted >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not collect a/2 and a/3 ({deleted} deletions counted): {:?}\n{}",
            remaining().await,
            daemon.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = daemon.metrics().await;
    assert!(sum(&metrics, "tessera_compactor_log_gc_passes_total") >= 1.0);
}

/// Issue 17: an idle shard costs at most 0.05 object-store requests/s in all. The daemon holds
/// every shard's claim but runs a compactor only for shards their owner hinted, so idle it
/// costs one hint LIST per `poll_interval` for all shards, plus GC passes spread over
/// `gc_interval` (production defaults here). Then one shard is filled past the hint threshold,
/// and the daemon compacts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_shards_cost_few_requests_and_hinted_shards_compact() {
    const N: u32 = 64;
    // One whole gateway manifest poll (60 s) and compactor log GC interval (1 min).
    const IDLE: Duration = Duration::from_secs(65);
    // Small memtables, hints at 4 L0 SSTs; otherwise production defaults (60 s manifest
    // poll).
    let opts = ClusterOpts {
        config: "[storage]\nl0_sst_size_bytes = 32768\nmax_unflushed_bytes = 262144\n".into(),
        shards: N,
        ..ClusterOpts::default()
    };
    let c = Cluster::start_opts(2, opts).await;
    c.await_stable(&[0, 1], Duration::from_secs(60)).await;
    let comp = c.start_compactor(
        "c0",
        "[compaction]\nl0_threshold = 4\njob_timeout = \"3s\"\n",
    );
    // Start-up settles: every shard claimed and its manifest read once.
    await_reported(
        &comp,
        N as usize,
        Duration::from_secs(60),
        "c0 never read every shard",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let requests = || async {
        let comp = sum(
            &comp.metrics().await,
            "tessera_compactor_object_store_requests_total",
        );
        let mut gws = 0.0;
        for i in 0..2 {
            let text = common::get_text(&client(), format!("{}/metrics", c.gw(i).url)).await;
            gws += sum(&text, "tessera_object_store_requests_total");
        }
        (comp, gws)
    };
    let (comp0, gw0) = requests().await;
    let ops0 = samples(
        &comp.metrics().await,
        "tessera_compactor_object_store_requests_total",
    );
    let t0 = Instant::now();
    tokio::time::sleep(IDLE).await;
    let (comp1, gw1) = requests().await;
    let ops1 = samples(
        &comp.metrics().await,
        "tessera_compactor_object_store_requests_total",
    );
    let by_op: Vec<String> = ops1
        .iter()
        .map(|(op, n)| format!("{op} {}", n - ops0.get(op).unwrap_or(&0.0)))
        .collect();
    let log_gc = |t: &str| sum(t, "tessera_compactor_log_gc_passes_total");
    println!(
        "compactor requests while idle: {by_op:?}; {} log GC passes",
        log_gc(&comp.metrics().await)
    );
    let per_shard = |n: f64| n / f64::from(N) / t0.elapsed().as_secs_f64();
    let (comp_rate, gw_rate) = (per_shard(comp1 - comp0), per_shard(gw1 - gw0));
    println!(
        "idle: compactor {comp_rate:.4} req/s per shard ({} requests), gateways {gw_rate:.4} \
         ({} requests), over {N} shards and {:?}",
        comp1 - comp0,
        gw1 - gw0,
        t0.elapsed()
    );
    assert!(
        comp_rate <= 0.05,
        "idle compactor costs {comp_rate:.3} requests/s per shard"
    );
    assert!(
        comp_rate + gw_rate <= 0.05,
        "an idle shard costs {:.3} requests/s (compactor {comp_rate:.3}, gateways {gw_rate:.3})",
        comp_rate + gw_rate
    );
    let metrics = comp.metrics().await;
    assert_eq!(sum(&metrics, "tessera_compactor_shards_compacting"), 0.0);

    // Fill one shard past the hint threshold: its owner hints it, and the daemon compacts it.
    let shard = 5;
    let keys: Vec<String> = (0..)
        .map(|i| format!("h{i}"))
        .filter(|k| tessera::shard_for_key(k.as_bytes(), N).0 == shard)
        .take(160)
        .collect();
    let http = client();
    let url = c.gw(0).url.clone();
    futures::future::join_all(keys.chunks(20).map(|chunk| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            for k in chunk {
                let deadline = Instant::now() + Duration::from_secs(60);
                let k_url = format!("{url}/v1/kv/{k}");
                put_until_ok(&http, &k_url, &value(k), deadline, "write failed").await;
            }
        }
    }))
    .await;
    let label = format!("{{shard=\"{shard:05}\"}}");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let metrics = comp.metrics().await;
        let compactions = samples(&metrics, "tessera_compactor_compactions_total")
            .get(&label)
            .copied()
            .unwrap_or(0.0);
        let l0 = c.l0_counts().await[shard as usize];
        if compactions >= 1.0 && l0 < 4 {
            println!("shard {shard} compacted ({compactions} compactions), L0 now {l0}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shard {shard} not compacted (L0 {l0}, {compactions} compactions):\n{}",
            comp.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let want: BTreeMap<String, String> = keys.iter().map(|k| (k.clone(), value(k))).collect();
    read_back(&c.gw(1).url, &want).await;
}
