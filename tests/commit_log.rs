//! The commit log under the faults it is designed for (docs/architecture.md, "The commit
//! log"): chained failovers that replay a replayed log, a log sealed under a live owner, and a
//! crash in the middle of a checkpoint. Real gateways, etcd and S3 server, as everywhere.
//!
//! Each test writes through one gateway, records what was acknowledged with its version
//! (the ETag), breaks something, and then checks through the survivors that every
//! acknowledged write is there with the very same version, and that the old ETags still
//! work for `If-Match` (and a stale one still fails).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::client;
use common::cluster::{shard_of, Cluster, ClusterOpts};
use reqwest::StatusCode;
use serde_json::Value;

/// Gateway configuration that turns periodic checkpoints off: only takeovers and releases
/// checkpoint, so a replay has all of an owner's writes to do.
const NO_PERIODIC_CHECKPOINTS: &str = "[storage]\nmemtable_flush_interval = \"1h\"\n";

/// The current owner of `shard`, as gateway `via` sees it.
async fn owner(c: &Cluster, via: usize, shard: u32) -> Option<String> {
    let v: Value = common::get_json(&client(), format!("{}/v1/cluster", c.gw(via).url)).await;
    v["shards"][shard as usize]["owner"]
        .as_str()
        .map(String::from)
}

/// Waits until `shard` has an owner other than `not`, as gateway `via` sees it.
async fn await_new_owner(c: &Cluster, via: usize, shard: u32, not: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(o) = owner(c, via, shard).await.filter(|o| o != not) {
            return o;
        }
        assert!(Instant::now() < deadline, "shard {shard} never left {not}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `count` keys of `shard`.
fn keys_of(shard: u32, prefix: &str, count: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| shard_of(k) == shard)
        .take(count)
        .collect()
}

/// PUTs `value` (with `If-Match: "version"` if given); returns the status and new version.
async fn put(url: &str, value: &str, if_match: Option<u64>) -> (StatusCode, Option<u64>) {
    let mut req = client().put(url).body(value.to_string());
    if let Some(v) = if_match {
        req = req.header("if-match", format!("\"{v}\""));
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["version"].as_u64())
}

/// PUTs until acknowledged (a write may meet a failover and retry); returns the version.
async fn put_acked(url: &str, value: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match put(url, value, None).await {
            (StatusCode::OK, Some(v)) => return v,
            (status, _) => assert!(Instant::now() < deadline, "{url}: still {status}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks through `via` that every acknowledged `(value, version)` is what a read returns.
async fn assert_acked(c: &Cluster, via: usize, acked: &BTreeMap<String, (String, u64)>) {
    for (k, (value, version)) in acked {
        let r = client().get(c.gw(via).kv(k)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{k} via gw{via}");
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        assert_eq!(r.text().await.unwrap(), *value, "{k} via gw{via}");
        assert_eq!(etag, format!("\"{version}\""), "{k}: the version changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_and_writes_survive_two_failovers_before_any_periodic_checkpoint() {
    let mut c = Cluster::start_config(4, NO_PERIODIC_CHECKPOINTS).await;
    let owners = c.await_stable(&[0, 1, 2, 3], Duration::from_secs(30)).await;
    // A shard of gw3's; writes enter through gw0, which is never killed.
    let shard = *owners.iter().find(|(_, o)| *o == "gw3").unwrap().0;
    let keys = keys_of(shard, "chain", 12);
    let mut acked = BTreeMap::new();
    for k in &keys {
        let v = put_acked(&c.gw(0).kv(k), "a").await;
        acked.insert(k.clone(), ("a".to_string(), v));
    }
    // Failover 1: the first owner dies; the next replays its log.
    c.kill(3);
    let second = await_new_owner(&c, 0, shard, "gw3").await;
    assert_acked(&c, 0, &acked).await;
    // Old ETags still work, and a stale one still fails.
    let (k0, (_, v0)) = acked
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let (status, v1) = put(&c.gw(0).kv(&k0), "b", Some(v0)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "If-Match with the ETag from before the failover"
    );
    let v1 = v1.unwrap();
    assert!(v1 > v0, "versions go on increasing: {v0} then {v1}");
    let (status, _) = put(&c.gw(0).kv(&k0), "stale", Some(v0)).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "a stale ETag");
    acked.insert(k0, ("b".to_string(), v1));
    // The second owner's writes exist only in its log: it never checkpoints periodically.
    for k in keys.iter().skip(1).step_by(2) {
        let v = put_acked(&c.gw(0).kv(k), "c").await;
        acked.insert(k.clone(), ("c".to_string(), v));
    }
    // Failover 2: the second owner dies too; the third replays the second's log.
    let i = second.trim_start_matches("gw").parse::<usize>().unwrap();
    c.kill(i);
    let entry = *c.live().first().unwrap();
    await_new_owner(&c, entry, shard, &second).await;
    assert_acked(&c, entry, &acked).await;
    for (k, (_, v)) in &acked {
        let (status, _) = put(&c.gw(entry).kv(k), "d", Some(*v)).await;
        assert_eq!(status, StatusCode::OK, "{k}: If-Match after two failovers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_sealed_under_its_live_owner_costs_a_reopen_and_nothing_else() {
    let c = Cluster::start(2).await;
    let owners = c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let shard = *owners.iter().find(|(_, o)| *o == "gw0").unwrap().0;
    let keys = keys_of(shard, "sealed", 8);
    let mut acked = BTreeMap::new();
    for k in &keys {
        let v = put_acked(&c.gw(1).kv(k), "before").await;
        acked.insert(k.clone(), ("before".to_string(), v));
    }
    // What a takeover does to a log, done to gw0's while gw0 owns every one of its shards
    // (an operator deleting an owner key by hand ends like this).
    let log = c.log_of("gw0").await;
    let fence = tessera::storage::log::seal(&c.store(), &log, 1)
        .await
        .unwrap();
    // gw0 stops writing that log, opens a new one and recovers its shards into it; writes
    // meanwhile fail 503 (not durable), never 200 for something lost.
    // Half the keys are written again; the other half must keep what was acknowledged
    // before the seal (the new log's recovery replayed it from the sealed one).
    let started = Instant::now();
    for (i, k) in keys.iter().enumerate().step_by(2) {
        let v = put_acked(&c.gw(1).kv(k), "after").await;
        acked.insert(k.clone(), ("after".to_string(), v));
        if i == 0 {
            eprintln!(
                "writes acknowledged again {:?} after the seal",
                started.elapsed()
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "recovery took {:?}",
        started.elapsed()
    );
    assert_eq!(
        owner(&c, 1, shard).await.as_deref(),
        Some("gw0"),
        "no ownership change"
    );
    assert_acked(&c, 1, &acked).await;
    assert_acked(&c, 0, &acked).await;
    // Nothing was created in the sealed log after its fence, and gw0 writes a new one.
    assert_eq!(
        c.log_objects(&log).await.last(),
        Some(&fence),
        "the fence is the sealed log's last object"
    );
    let text = c.gw(0).process.log_text();
    assert!(text.contains("writing a new one"), "gw0 renewed its log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_checkpoint_loses_nothing() {
    for fault in ["marker", "flushed"] {
        let mut c = Cluster::start_opts(
            1,
            ClusterOpts {
                config: "[storage]\nmemtable_flush_interval = \"2s\"\n".into(),
                env: vec![("TESSERA_FAULT_CRASH_IN_CHECKPOINT".into(), fault.into())],
                ..ClusterOpts::default()
            },
        )
        .await;
        c.await_stable(&[0], Duration::from_secs(30)).await;
        // Writes until the first checkpoint that flushes (≤ 2 s after the first write) aborts
        // the process; what was acknowledged by then must survive.
        let mut acked = BTreeMap::new();
        for i in 0..200 {
            let k = format!("ckpt-{fault}-{i}");
            let Ok(r) = client().put(c.gw(0).kv(&k)).body("v").send().await else {
                break;
            };
            if r.status() == StatusCode::OK {
                let v: Value = r.json().await.unwrap();
                acked.insert(k, ("v".to_string(), v["version"].as_u64().unwrap()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            acked.len() >= 10,
            "{fault}: only {} writes before the crash",
            acked.len()
        );
        let gw = c.gateways[0].as_mut().unwrap();
        let why = format!("{fault}: the fault never fired");
        gw.process
            .wait_for_exit(Duration::from_secs(20), &why)
            .await;
        assert!(gw.process.log_text().contains("aborting mid-checkpoint"));
        c.gateways[0] = None;
        // A gateway without the fault takes every shard over from the crashed one.
        c.set_env("TESSERA_FAULT_CRASH_IN_CHECKPOINT", "");
        c.add().await;
        c.await_stable(&[1], Duration::from_secs(30)).await;
        assert_acked(&c, 1, &acked).await;
    }
}
