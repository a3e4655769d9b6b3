//! The hot-key cache never serves a strong read older than a write that any response could
//! already have revealed (`src/cache.rs`, rule 4).
//!
//! A write becomes durable, and so visible to the database and to followers, a moment before
//! its writer records it in the cache. Each test here widens that moment on purpose with the
//! fault-injection hook `TESSERA_FAULT_RECORD_DELAY_MS` (the writer waits that long between
//! durability and recording), reveals the write through one path while its writer waits, and
//! then asserts that a strong read (which the cache would otherwise answer with the older value)
//! returns the new one:
//!
//! - a scan (reads the database);
//! - an eventual read served by a follower on another gateway;
//! - TTL expiry (no write needed: the cache must not outlive the database's expiry).
//!
//! Every test checks that the write was still unrecorded when the strong read ran, so none
//! passes vacuously.
//!
//! A `412` (conditional `PUT`, `DELETE If-Match`, a batch's `if_match`) used to be such a path
//! too. Since the commit log, a write holds its keys' stripe locks until its writer has
//! recorded it, and a precondition is checked under them: the `412` waits for the pending
//! write instead. Those tests now check that it does wait.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::cluster::{shard_of, Cluster, ClusterOpts};
use common::{client, Gateway, GatewayOpts, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;

const DELAY_VAR: &str = "TESSERA_FAULT_RECORD_DELAY_MS";

/// An embedded gateway whose writers wait `delay_ms` between durability and the cache update.
fn embedded(dir: &TempDir, delay_ms: u64) -> Gateway {
    GatewayOpts::new(Store::Dir(dir.path().join("data")))
        .env(DELAY_VAR, delay_ms.to_string())
        .start(&dir.path().join("gw.log"))
}

fn version(r: &reqwest::Response) -> u64 {
    r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

fn read_by(r: &reqwest::Response) -> String {
    r.headers()["x-tessera-read"].to_str().unwrap().to_string()
}

/// Writes `key = v1` and reads it until the cache serves it; returns v1's version.
async fn cached(http: &reqwest::Client, url: &str) -> u64 {
    let r = http.put(url).body("v1").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        if read_by(&r) == "cache" {
            let v = version(&r);
            assert_eq!(r.text().await.unwrap(), "v1");
            return v;
        }
        assert!(Instant::now() < deadline, "v1 never served from the cache");
    }
}

/// The values of a strong scan of the keys starting with `prefix` (read from the database).
async fn scan(http: &reqwest::Client, gw: &Gateway, prefix: &str) -> Vec<String> {
    let page: Value = http
        .get(format!("{}/v1/kv?prefix={prefix}", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            String::from_utf8(b64.decode(item["value"].as_str().unwrap()).unwrap()).unwrap()
        })
        .collect()
}

/// Starts `PUT url = v2` in the background (its writer then waits before recording it).
fn write_v2(http: &reqwest::Client, url: &str) -> tokio::task::JoinHandle<StatusCode> {
    let (http, url) = (http.clone(), url.to_string());
    tokio::spawn(async move { http.put(url).body("v2").send().await.unwrap().status() })
}

/// The strong read after the reveal: must be v2, while the writer still waits.
async fn assert_strong_read_sees_v2(
    http: &reqwest::Client,
    url: &str,
    writer: tokio::task::JoinHandle<StatusCode>,
    path: &str,
) {
    let r = http.get(url).send().await.unwrap();
    assert!(
        !writer.is_finished(),
        "{path}: the write was acknowledged before the strong read; the test proves nothing"
    );
    let source = read_by(&r);
    let body = r.text().await.unwrap();
    assert_eq!(
        body, "v2",
        "{path} revealed v2, then a strong read (served by `{source}`) returned {body}"
    );
    assert_eq!(writer.await.unwrap(), StatusCode::OK);
    // Once recorded, the cache serves the new value.
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v2");
}

/// A conditional operation that carries v1's version, so it fails once v2 exists.
enum Conditional {
    Put,
    Delete,
    Batch,
}

/// A conditional `op` carrying v1's version, sent while v2's writer waits to record it:
/// answered `412` only once v2's writer is done (it waits for the key's stripe), so the `412`
/// reveals nothing early; then a strong read sees v2.
async fn a_412_waits_for_the_pending_write(op: Conditional, path: &str) {
    let dir = tempfile::tempdir().unwrap();
    let gw = embedded(&dir, 1500);
    let http = client();
    let url = gw.kv("k");
    let v1 = cached(&http, &url).await;
    let writer = write_v2(&http, &url);
    // Let the background write reach the gateway (it then waits 1.5 s before its answer).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let if_match = format!("\"{v1}\"");
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = match op {
        Conditional::Put => http.put(&url).header("if-match", if_match).body("v3"),
        Conditional::Delete => http.delete(&url).header("if-match", if_match),
        Conditional::Batch => http.post(format!("{}/v1/batch", gw.url)).json(&json!({
            "ops": [{"op": "put", "key": b64.encode("k"), "value": b64.encode("v3"), "if_match": v1}]
        })),
    };
    let sent = Instant::now();
    let status = request.send().await.unwrap().status();
    let waited = sent.elapsed();
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{path}");
    assert!(
        waited >= Duration::from_millis(1000),
        "{path}: answered after {waited:?}, before v2's writer (1.5 s) had recorded it"
    );
    assert_eq!(writer.await.unwrap(), StatusCode::OK);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v2", "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_then_a_cached_read() {
    let dir = tempfile::tempdir().unwrap();
    let gw = embedded(&dir, 1500);
    let http = client();
    let url = gw.kv("k");
    cached(&http, &url).await;
    let writer = write_v2(&http, &url);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if scan(&http, &gw, "k").await == ["v2"] {
            break;
        }
        assert!(Instant::now() < deadline, "the scan never showed v2");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_strong_read_sees_v2(&http, &url, writer, "a scan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_put_waits_for_the_pending_write() {
    a_412_waits_for_the_pending_write(Conditional::Put, "PUT If-Match").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_if_match_waits_for_the_pending_write() {
    a_412_waits_for_the_pending_write(Conditional::Delete, "DELETE If-Match").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_precondition_waits_for_the_pending_write() {
    a_412_waits_for_the_pending_write(Conditional::Batch, "a batch with if_match").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_then_a_cached_read() {
    let dir = tempfile::tempdir().unwrap();
    let gw = embedded(&dir, 0);
    let http = client();
    let url = gw.kv("t");
    let r = http
        .put(format!("{url}?ttl=1"))
        .body("short")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Poll the database (scans) until the value expires there; a strong read must agree at
    // once, whatever the cache holds.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if scan(&http, &gw, "t").await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a scan showed the key expired, then a strong read ({}) returned it",
        read_by(&r)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventual_read_by_a_follower_then_a_cached_read() {
    // Followers poll every second: the writer must wait longer than that.
    let opts = ClusterOpts {
        env: vec![(DELAY_VAR.into(), "4000".into())],
        ..ClusterOpts::default()
    };
    let c = Cluster::start_opts(2, opts).await;
    let owners = c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let key = (0..)
        .map(|i| format!("ev{i}"))
        .find(|k| owners[&shard_of(k)] == "gw0")
        .unwrap();
    let http = client();
    let (owner, other) = (c.gw(0), c.gw(1));
    let url = owner.kv(&key);
    cached(&http, &url).await;
    // gw1's follower opens on its first eventual read; let it see v1 first.
    let eventual = format!("{}?consistency=eventual", other.kv(&key));
    let writer = write_v2(&http, &url);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = http.get(&eventual).send().await.unwrap();
        if r.status() == StatusCode::OK
            && read_by(&r) == "eventual"
            && r.text().await.unwrap() == "v2"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no follower read showed v2 in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Strong, through the other gateway (forwarded to the owner) and on the owner itself.
    let r = http.get(other.kv(&key)).send().await.unwrap();
    let source = read_by(&r);
    assert_eq!(
        r.text().await.unwrap(),
        "v2",
        "a follower revealed v2, then a strong read via gw1 ({source}) did not return it"
    );
    assert_strong_read_sees_v2(&http, &url, writer, "an eventual read by a follower").await;
}
