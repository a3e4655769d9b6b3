//! Consistency levels and the hot-key cache, against real processes: a real etcd, a real S3
//! server (s3s-fs) and gateway processes on loopback; faults are SIGSTOP and SIGTERM.
//!
//! - eventual reads keep working on other gateways while a shard's owner is paused, and strong
//!   reads of its keys never return a stale value;
//! - eventual reads never return a value nobody wrote, never go back in time on one gateway,
//!   and catch up within the documented staleness bound (lag p50/p99 printed);
//! - followers read the owner's commit log past the shard's last checkpoint: writes are seen
//!   within the bound without a checkpoint, merged over the SSTs by point reads and scans,
//!   and after the owner is killed the followers move to the new owner's log;
//! - the owner's hot-key cache never serves a stale strong read, also after the shard moved
//!   away and came back, and stays within its byte bound.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{shard_of, Cluster};
use common::{client, metric, percentiles, poll_until, put_ok, Gateway};
use reqwest::StatusCode;
use serde_json::Value;

/// The staleness bound the gateways advertise with the default configuration: follower poll
/// of the owner's log 1 s + one GET 250 ms + follower cache 100 ms.
const BOUND: Duration = Duration::from_millis(1350);

/// An eventual read of `key` through `gw`.
async fn get_eventual(http: &reqwest::Client, gw: &Gateway, key: &str) -> reqwest::Response {
    http.get(format!("{}?consistency=eventual", gw.kv(key)))
        .send()
        .await
        .unwrap()
}

/// Reads `key` eventually through `gw` until a follower answers (until then the owner may,
/// with `strong` or `cache`), for at most `within`; asserts the follower returns `expected`.
async fn read_from_follower(
    http: &reqwest::Client,
    gw: &Gateway,
    key: &str,
    expected: &str,
    within: Duration,
) {
    let r = poll_until(within, Duration::from_millis(50), async || {
        let r = get_eventual(http, gw, key).await;
        if r.status() == StatusCode::OK && read_by(&r) == "eventual" {
            return Ok(r);
        }
        Err(format!("{key} on {}: {}", gw.url, r.status()))
    })
    .await;
    assert_eq!(r.headers()["x-tessera-staleness-bound-ms"], "1350");
    assert_eq!(r.text().await.unwrap(), expected);
}

/// An eventual scan of the keys starting with `prefix` through `gw`: key → (value, ETag
/// version).
async fn scan_eventual(
    http: &reqwest::Client,
    gw: &Gateway,
    prefix: &str,
) -> BTreeMap<String, (String, u64)> {
    use base64::Engine;
    let decode = |v: &Value| {
        let b = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap());
        String::from_utf8(b.unwrap()).unwrap()
    };
    let url = format!(
        "{}/v1/kv?prefix={prefix}&consistency=eventual&limit=1000",
        gw.url
    );
    let r = http.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let page: Value = r.json().await.unwrap();
    assert!(page["next"].is_null(), "one page expected: {page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let version = i["version"].as_u64().unwrap();
            (decode(&i["key"]), (decode(&i["value"]), version))
        })
        .collect()
}

/// What served a read (`X-Tessera-Read`), or "" for an error.
fn read_by(r: &reqwest::Response) -> &str {
    r.headers()
        .get("x-tessera-read")
        .map_or("", |v| v.to_str().unwrap())
}

/// A key of `shard`, distinct for each `tag`.
fn key_in(shard: u32, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}{i}"))
        .find(|k| shard_of(k) == shard)
        .unwrap()
}

/// A shard owned by `owner` in `owners`.
fn shard_owned_by(owners: &BTreeMap<u32, String>, owner: &str) -> u32 {
    *owners.iter().find(|(_, o)| *o == owner).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_survive_a_paused_owner_and_strong_reads_stay_fresh() {
    let c = Cluster::start(3).await;
    let owners = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let http = client();
    let shard = shard_owned_by(&owners, "gw2");
    let keys: Vec<String> = (0..5).map(|i| key_in(shard, &format!("p{i}-"))).collect();
    for k in &keys {
        put_ok(&http, c.gw(0).kv(k), &format!("{k}=1")).await;
    }
    // Followers on gw0 and gw1 open and catch up before the owner stops.
    for g in [0, 1] {
        for k in &keys {
            read_from_follower(&http, c.gw(g), k, &format!("{k}=1"), BOUND * 3).await;
        }
    }

    // A second shard of gw2 that no follower has read yet.
    let cold_shard = owners
        .iter()
        .find(|(s, o)| *o == "gw2" && **s != shard)
        .map(|(s, _)| *s)
        .expect("gw2 owns two shards");
    let cold = key_in(cold_shard, "cold");
    put_ok(&http, c.gw(0).kv(&cold), "cold=1").await;

    c.gw(2).process.pause();
    let paused = Instant::now();
    // Its first eventual read on gw1 asks the paused owner and opens a follower at once; the
    // follower answers (the owner does not), well before the owner's lease runs out.
    let r = get_eventual(&http, c.gw(1), &cold).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-tessera-read"], "eventual");
    assert_eq!(r.text().await.unwrap(), "cold=1");
    let first_cold = paused.elapsed();
    eprintln!("owner paused: the first eventual read of a cold shard took {first_cold:?}");
    assert!(first_cold < BOUND * 2, "the cold read took {first_cold:?}");
    let window = Duration::from_secs(6);
    // While the owner is paused (and through the failover that follows), eventual reads on
    // the other gateways keep answering at once, without waiting for the owner.
    let readers: Vec<_> = [0, 1]
        .into_iter()
        .map(|g| {
            let (http, url, keys) = (http.clone(), c.gw(g).url.clone(), keys.clone());
            tokio::spawn(async move {
                let (mut ok, mut slowest) = (0u32, Duration::ZERO);
                while paused.elapsed() < window {
                    for k in &keys {
                        let t = Instant::now();
                        let r = http
                            .get(format!("{url}/v1/kv/{k}?consistency=eventual"))
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), StatusCode::OK, "gw{g}: {k}");
                        assert_eq!(r.text().await.unwrap(), format!("{k}=1"));
                        slowest = slowest.max(t.elapsed());
                        ok += 1;
                    }
                }
                (ok, slowest)
            })
        })
        .collect();
    // Strong reads: 503 while nobody may serve the shard, or the latest value; never stale.
    let mut strong = BTreeMap::<u16, usize>::new();
    while paused.elapsed() < window {
        let r = http
            .get(c.gw(0).kv(&keys[0]))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .unwrap();
        let status = r.status();
        *strong.entry(status.as_u16()).or_default() += 1;
        match status {
            StatusCode::OK => assert_eq!(r.text().await.unwrap(), format!("{}=1", keys[0])),
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("strong read got {other}"),
        }
    }
    for (g, reader) in readers.into_iter().enumerate() {
        let (ok, slowest) = reader.await.unwrap();
        eprintln!("owner paused: gw{g} served {ok} eventual reads, slowest {slowest:?}");
        assert!(ok > 20, "gw{g} served only {ok} eventual reads");
        assert!(
            slowest < Duration::from_secs(1),
            "an eventual read waited {slowest:?}"
        );
    }
    eprintln!("owner paused: strong reads by status {strong:?}");
    // After the failover a write lands on the new owner; a strong read sees it at once, and
    // an eventual read on the third gateway catches up within the bound.
    let v2 = put_ok(&http, c.gw(0).kv(&keys[0]), "after-failover").await;
    let r = http.get(c.gw(1).kv(&keys[0])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "after-failover");
    let written = Instant::now();
    poll_until(BOUND * 2, Duration::from_millis(20), async || {
        let r = get_eventual(&http, c.gw(0), &keys[0]).await;
        assert_eq!(r.status(), StatusCode::OK);
        let etag = r.headers()["etag"].to_str().unwrap().to_string();
        if etag == format!("\"{v2}\"") {
            return Ok(());
        }
        Err(format!(
            "eventual read still at {etag} after {:?}",
            written.elapsed()
        ))
    })
    .await;
    c.gw(2).process.resume();
}

/// One acknowledged write: value, version, when the ack arrived.
struct Written {
    version: u64,
    acked: Instant,
}

/// A shard's first owner claims it in etcd before it creates its database, so at a cluster's
/// first start another gateway's follower can find no database. Here that owner is a ghost
/// (its claim written into etcd by the test, its URL refusing connections), which holds the
/// shard in that window: eventual reads of it must answer 503 (retry), never 500, and a read
/// waiting when a real owner creates the database must get its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_of_a_shard_not_created_yet_are_unavailable_not_errors() {
    let mut c = Cluster::start(0).await;
    let mut etcd = c.etcd.client().await;
    let lease = etcd.lease_grant(60, None).await.unwrap().id();
    let ghost = serde_json::json!({
        "id": "ghost",
        "url": format!("http://127.0.0.1:{}", common::free_port()),
    })
    .to_string();
    let shard = 3;
    let with_lease = || Some(etcd_client::PutOptions::new().with_lease(lease));
    etcd.put("/tessera/test/members/ghost", ghost.clone(), with_lease())
        .await
        .unwrap();
    etcd.put(
        format!("/tessera/test/owners/{shard:05}"),
        ghost,
        with_lease(),
    )
    .await
    .unwrap();
    c.add().await;

    let key = key_in(shard, "uncreated");
    let http = client();
    let r = http
        .get(format!("{}?consistency=eventual", c.gw(0).kv(&key)))
        .header("x-tessera-deadline-ms", "2000")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");

    // A read that is waiting when the ghost goes: gw0 takes the shard and creates its
    // database, and the read, which looks for the owner until its deadline, gets the answer.
    let waiting = tokio::spawn({
        let (http, url) = (http.clone(), c.gw(0).kv(&key));
        async move {
            let r = http.get(format!("{url}?consistency=eventual")).send();
            r.await.unwrap().status()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let revoked = Instant::now();
    etcd.lease_revoke(lease).await.unwrap();
    assert_eq!(waiting.await.unwrap(), StatusCode::NOT_FOUND);
    println!("answered {:?} after the ghost left", revoked.elapsed());
    put_ok(&http, c.gw(0).kv(&key), "created").await;
    let r = get_eventual(&http, c.gw(0), &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_are_real_monotonic_and_catch_up_within_the_bound() {
    let c = Cluster::start(3).await;
    c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let http = client();
    let keys: Vec<String> = (0..6).map(|i| format!("lag{i}")).collect();
    let secs: u64 = std::env::var("TESSERA_LAG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);

    // Writer: through gw0, each key in turn, a value naming its sequence number.
    let written: Arc<std::sync::Mutex<HashMap<String, Written>>> = Arc::default();
    let writer = {
        let (http, url, keys, written) = (
            http.clone(),
            c.gw(0).url.clone(),
            keys.clone(),
            Arc::clone(&written),
        );
        tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < Duration::from_secs(secs) {
                let k = &keys[n as usize % keys.len()];
                let value = format!("{k}#{n}");
                let version = put_ok(&http, format!("{url}/v1/kv/{k}"), &value).await;
                written.lock().unwrap().insert(
                    value,
                    Written {
                        version,
                        acked: Instant::now(),
                    },
                );
                n += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            n
        })
    };
    // Readers: eventual reads on gw1 and gw2. Every value must have been written (phantoms
    // fail), versions never go back per key and gateway, and each write's first sighting
    // gives one lag sample.
    let mut first_seen: HashMap<(usize, String), Instant> = HashMap::new();
    let mut last_version: HashMap<(usize, String), u64> = HashMap::new();
    let mut reads = 0u64;
    let deadline = Instant::now() + Duration::from_secs(secs) + BOUND * 2;
    while Instant::now() < deadline {
        for g in [1, 2] {
            for k in &keys {
                let r = get_eventual(&http, c.gw(g), k).await;
                if r.status() == StatusCode::NOT_FOUND {
                    assert!(
                        !last_version.contains_key(&(g, k.clone())),
                        "{k} vanished on gw{g}"
                    );
                    continue;
                }
                assert_eq!(r.status(), StatusCode::OK, "{}", c.gw(g).process.log_tail());
                let version: u64 = r.headers()["etag"]
                    .to_str()
                    .unwrap()
                    .trim_matches('"')
                    .parse()
                    .unwrap();
                let from_follower = r.headers()["x-tessera-read"] == "eventual";
                let value = r.text().await.unwrap();
                let seen = Instant::now();
                reads += 1;
                // The writer records a value just after its ack; give it a moment.
                let known = {
                    let mut found = None;
                    for _ in 0..100 {
                        if let Some(w) = written.lock().unwrap().get(&value) {
                            found = Some(w.version);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    found
                };
                assert_eq!(
                    known,
                    Some(version),
                    "gw{g} returned {value}@{version}: never written"
                );
                let last = last_version.entry((g, k.clone())).or_insert(0);
                assert!(
                    version >= *last,
                    "gw{g} went back on {k}: {last} then {version}"
                );
                *last = version;
                // Lag samples only from followers (a gateway owning the key reads it fresh).
                if from_follower {
                    first_seen.entry((g, value)).or_insert(seen);
                }
            }
        }
    }
    let writes = writer.await.unwrap();
    // Lag: from each write's ack to its first sighting on a reader (writes overwritten before
    // any reader saw them give no sample). Every write's key reached its final value.
    let mut lags: Vec<Duration> = {
        let written = written.lock().unwrap();
        first_seen
            .iter()
            .map(|((_, value), seen)| seen.saturating_duration_since(written[value].acked))
            .collect()
    };
    assert!(lags.len() > 20, "too few samples: {}", lags.len());
    let (p50, p99, max) = percentiles(&mut lags);
    eprintln!(
        "eventual lag over {} samples ({writes} writes, {reads} eventual reads): p50 {p50:?} p99 {p99:?} max {max:?}; bound {BOUND:?}",
        lags.len()
    );
    // The bound holds for a gateway that gets its CPU; this test shares two cores with the
    // rest of the suite, so it asserts the median against the bound and that every write
    // is caught up with well within a few bounds (p99 and max are printed, not asserted).
    assert!(
        p50 <= BOUND,
        "median lag {p50:?} exceeds the bound {BOUND:?}"
    );
    assert!(max <= BOUND * 3, "a write took {max:?} to reach a follower");
    for g in [1, 2] {
        let metrics = common::get_text(&http, format!("{}/metrics", c.gw(g).url)).await;
        assert!(metric(&metrics, "tessera_followers_open") >= 1.0);
        assert!(metric(&metrics, "tessera_reads_total{source=\"eventual\"}") >= 1.0);
        assert!(metrics.contains("tessera_eventual_lag_seconds_bucket"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_never_serves_stale_strong_reads_across_handoffs() {
    let mut c = Cluster::start(2).await;
    let owners = c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let http = client();
    // Keys on every shard; each overwritten through alternating gateways and read back at
    // once through the other: the owner's cache must follow every acknowledged write.
    let keys: Vec<String> = owners.keys().map(|s| key_in(*s, "c")).collect();
    for round in 0..4 {
        for (i, k) in keys.iter().enumerate() {
            let (w, r) = ((i + round) % 2, (i + round + 1) % 2);
            let value = format!("{k}-r{round}");
            put_ok(&http, c.gw(w).kv(k), &value).await;
            let resp = http.get(c.gw(r).kv(k)).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.text().await.unwrap(), value);
        }
    }
    // Deletes are cached as absent, not as the old value.
    let r = http.delete(c.gw(0).kv(&keys[0])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http.get(c.gw(1).kv(&keys[0])).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A third gateway takes some shards; writes go to it; when it leaves, the shards come back
    // to their old owners, whose caches still hold the old values under the old opening:
    // strong reads must see the new ones.
    c.add().await;
    let moved = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let to_new: Vec<&String> = keys
        .iter()
        .filter(|k| moved[&shard_of(k)] == "gw2")
        .collect();
    assert!(!to_new.is_empty(), "gw2 took no shard");
    for k in &to_new {
        put_ok(&http, c.gw(0).kv(k), &format!("{k}-moved")).await;
    }
    c.stop(2);
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    for k in &to_new {
        for g in [0, 1] {
            let r = http.get(c.gw(g).kv(k)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(
                r.text().await.unwrap(),
                format!("{k}-moved"),
                "{k} via gw{g}"
            );
        }
    }
    let mut hits = 0.0;
    for g in [0, 1] {
        let m = common::get_text(&http, format!("{}/metrics", c.gw(g).url)).await;
        hits += metric(&m, "tessera_cache_hits_total");
    }
    assert!(hits > 0.0, "the owners' caches served reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_stays_within_its_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[reads]\nhot_key_cache_bytes = 4194304\n").unwrap();
    let gw = common::GatewayOpts::new(common::Store::Dir(dir.path().join("data")))
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start(&dir.path().join("gw.log"));
    let http = client();
    // 48 MiB of 256 KiB values, each written and read twice: twelve times the bound.
    let value = "v".repeat(256 * 1024);
    for i in 0..192 {
        put_ok(&http, gw.kv(&format!("big{i}")), &value).await;
        for _ in 0..2 {
            let r = http.get(gw.kv(&format!("big{i}"))).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.bytes().await.unwrap().len(), value.len());
        }
    }
    let m = common::get_text(&http, format!("{}/metrics", gw.url)).await;
    let bytes = metric(&m, "tessera_cache_bytes");
    assert!(bytes <= 4194304.0, "cache holds {bytes} bytes");
    assert!(bytes > 0.0);
    assert!(metric(&m, "tessera_cache_evictions_total") > 0.0);
    assert!(metric(&m, "tessera_cache_hits_total") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_scans_read_followers() {
    let c = Cluster::start(2).await;
    let owners = c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let http = client();
    for s in owners.keys() {
        put_ok(&http, c.gw(0).kv(&key_in(*s, "scan")), "x").await;
    }
    c.gw(1).process.pause();
    // gw1's shards come from gw0's followers (possibly after gw0 took them over).
    poll_until(BOUND * 3, Duration::from_millis(100), async || {
        let page: Value = common::get_json(
            &http,
            format!(
                "{}/v1/kv?prefix=scan&consistency=eventual&limit=1000",
                c.gw(0).url
            ),
        )
        .await;
        let n = page["items"].as_array().map_or(0, |a| a.len());
        if n == owners.len() {
            return Ok(());
        }
        Err(format!("eventual scan saw {n} keys: {page}"))
    })
    .await;
    c.gw(1).process.resume();
}

/// Two settled gateways that write memtables out 1 s after their first write, with `reads`
/// as the `[reads]` section of their config.
async fn two_gateways_flushing_memtables_every_second(
    reads: &str,
) -> (Cluster, BTreeMap<u32, String>) {
    let toml = format!("[storage]\nmemtable_flush_interval = \"1s\"\n[reads]\n{reads}\n");
    let c = Cluster::start_config(2, &toml).await;
    let owners = c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    (c, owners)
}

/// [`two_gateways_flushing_memtables_every_second`], and two keys of a shard owned by gw0,
/// each holding itself as its value: `old` written out to an L0 SST by a checkpoint, `new`
/// only in the owner's commit log; both read once on gw0, so its hot-key cache holds them.
async fn old_key_in_an_sst_new_key_in_the_log(reads: &str) -> (Cluster, String, String) {
    let (c, owners) = two_gateways_flushing_memtables_every_second(reads).await;
    let http = client();
    let shard = shard_owned_by(&owners, "gw0");
    let (old, new) = (key_in(shard, "old"), key_in(shard, "new"));
    put_ok(&http, c.gw(0).kv(&old), &old).await;
    // Past the checkpoint (1 s after the first write).
    tokio::time::sleep(Duration::from_secs(3)).await;
    put_ok(&http, c.gw(0).kv(&new), &new).await;
    for key in [&old, &new] {
        assert_eq!(common::get_text(&http, c.gw(0).kv(key)).await, *key);
    }
    (c, old, new)
}

/// A follower opened long after many small writes reads only the owner's log objects past
/// the shard's last checkpoint, which `storage.memtable_flush_interval` bounds: opening it
/// costs a few GETs, not one per log object written since the owner took the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_open_reads_only_the_log_after_the_checkpoint() {
    let (c, owners) = two_gateways_flushing_memtables_every_second("").await;
    let shard = shard_owned_by(&owners, "gw0");
    let http = client();
    // One write at a time: one log object each.
    let keys: Vec<String> = (0..)
        .map(|i| format!("replay{i}"))
        .filter(|k| shard_of(k) == shard)
        .take(400)
        .collect();
    for k in &keys {
        put_ok(&http, c.gw(0).kv(k), k).await;
    }
    // Past the checkpoint interval.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let gets = |text: &str| metric(text, "tessera_object_store_requests_total{op=\"get\"}");
    let metrics = format!("{}/metrics", c.gw(1).url);
    let before = gets(&common::get_text(&http, metrics.as_str()).await);
    // The first eventual read starts the open (the owner may answer it meanwhile); the open
    // is done once the follower serves a read.
    let last = keys.last().unwrap();
    read_from_follower(&http, c.gw(1), last, last, BOUND * 3).await;
    let cost = gets(&common::get_text(&http, metrics.as_str()).await) - before;
    println!(
        "opening a follower after {} writes cost {cost} GETs",
        keys.len()
    );
    // Its own shards' manifest polls add ~16 GETs/s; reading the log from its start would
    // add 400.
    assert!(cost < 100.0, "opening the follower cost {cost} GETs");
}

/// An eventual read of `key` (whose value is the key) on gw1 with the object store paused:
/// only the owner's hot-key cache can answer it.
async fn read_paused(c: &Cluster, http: &reqwest::Client, key: &str) {
    let url = format!("{}?consistency=eventual", c.gw(1).kv(key));
    c.s3.process().pause();
    let t = Instant::now();
    let r = http.get(url).timeout(Duration::from_secs(3)).send().await;
    let took = t.elapsed();
    c.s3.process().resume();
    let r = r.unwrap_or_else(|e| panic!("{key}: the read waited for the object store: {e}"));
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(read_by(&r), "cache", "{key}");
    assert_eq!(r.text().await.unwrap(), key);
    eprintln!("eventual read of {key} with the object store paused: {took:?}");
}

/// Eventual reads are hedged: the owner answers (here from its hot-key cache, with the object
/// store paused) while a follower is opening, and when an open follower would have to fetch
/// a block from the object store. The open started by a read goes on after that read was
/// answered, and so does the follower's read of the block, which then serves the key with the
/// object store and the owner both paused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_do_not_wait_for_a_cold_follower() {
    let (c, old, new) = old_key_in_an_sst_new_key_in_the_log("").await;
    let http = client();
    let gw1_metric = |name: &'static str| async {
        let text = common::get_text(&http, format!("{}/metrics", c.gw(1).url)).await;
        metric(&text, name)
    };
    let followers_open = || gw1_metric("tessera_followers_open");
    assert_eq!(followers_open().await, 0.0);
    // Opening: the first read starts the open and is answered by the owner.
    read_paused(&c, &http, &new).await;
    // No further reads: the open completes on its own, and the follower serves `new` from
    // the owner's log it read.
    let (tenth, ten) = (Duration::from_millis(100), Duration::from_secs(10));
    poll_until(ten, tenth, async || match followers_open().await {
        open if open >= 1.0 => Ok(()),
        _ => Err("the follower never opened".into()),
    })
    .await;
    // Open, it may still be reading the owner's log up to what gw1 already returned; until
    // then the owner answers (hedging). Once caught up, the follower serves.
    poll_until(ten, tenth, async || {
        let r = get_eventual(&http, c.gw(1), &new).await;
        assert_eq!(r.status(), StatusCode::OK);
        let source = read_by(&r).to_string();
        assert_eq!(r.text().await.unwrap(), new);
        match source == "eventual" {
            true => Ok(()),
            false => Err("the open follower never served `new`".into()),
        }
    })
    .await;

    // Open but cold: `old` is in an SST block this follower has not fetched yet.
    read_paused(&c, &http, &old).await;
    let by_owner = gw1_metric("tessera_eventual_hedged_total{answered_by=\"owner\"}").await;
    assert!(
        by_owner >= 2.0,
        "hedged reads answered by the owner: {by_owner}"
    );

    // The follower's read of `old` went on after the owner answered, and cached the block.
    poll_until(ten, tenth, async || {
        match gw1_metric("tessera_follower_reads_finished_late_total").await {
            late if late >= 1.0 => Ok(()),
            _ => Err("the follower's read never finished".into()),
        }
    })
    .await;
    // So with the object store and the owner both paused, the follower answers from it.
    // The owner checkpoints every second here: a checkpoint the follower installs between
    // the late read and the pause adds an L0 SST whose blocks `old`'s read must consult and
    // nobody has fetched, which nothing can fetch while paused (1 run in 5). Such an attempt
    // warms the new SST with an unpaused read and tries again; a follower that does not keep
    // what its reads fetch fails every attempt. Paused 2 s at most: the owner's lease is 3 s.
    let url = format!("{}?consistency=eventual", c.gw(1).kv(&old));
    let mut failed = Vec::new();
    for _ in 0..3 {
        c.s3.process().pause();
        c.gw(0).process.pause();
        let r = http.get(&url).timeout(Duration::from_secs(2)).send().await;
        c.gw(0).process.resume();
        c.s3.process().resume();
        match r {
            Ok(r) => {
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(read_by(&r), "eventual");
                assert_eq!(r.text().await.unwrap(), old);
                if !failed.is_empty() {
                    eprintln!("answered after a warm-up; attempts before: {failed:?}");
                }
                return;
            }
            Err(e) => failed.push(e.to_string()),
        }
        read_from_follower(&http, c.gw(1), &old, &old, BOUND * 3).await;
    }
    panic!("the follower fetched `old` again in every attempt: {failed:?}");
}

/// A follower read that fails (here: the SST holding the key was deleted under it) is not
/// waited out: the owner is asked at once, not after `reads.follower_hedge_after` (2 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_follower_read_asks_the_owner_at_once() {
    let (c, old, new) = old_key_in_an_sst_new_key_in_the_log("follower_hedge_after = \"2s\"").await;
    let http = client();
    let shard = shard_of(&old);
    read_from_follower(&http, c.gw(1), &new, &new, BOUND * 3).await;
    let ssts = c.s3.bucket_dir().join(format!(
        "cluster/shards/{}/compacted",
        tessera::ShardId(shard)
    ));
    std::fs::remove_dir_all(&ssts).unwrap_or_else(|e| panic!("{}: {e}", ssts.display()));

    let t = Instant::now();
    let r = get_eventual(&http, c.gw(1), &old).await;
    let took = t.elapsed();
    assert_eq!(r.status(), StatusCode::OK);
    // The owner answers from its hot-key cache.
    assert_eq!(read_by(&r), "cache");
    assert_eq!(r.text().await.unwrap(), old);
    assert!(took < Duration::from_secs(1), "the read took {took:?}");
    let text = common::get_text(&http, format!("{}/metrics", c.gw(1).url)).await;
    assert!(metric(&text, "tessera_storage_errors_total") >= 1.0);
}

/// Three gateways with `reads.follower_gateways = 1` and hedging off (the owner never answers
/// an eventual point read), plus the `[reads]` settings in `reads`. Returns the cluster and
/// its shard → owner map.
async fn one_follower_gateway_cluster(reads: &str) -> (Cluster, BTreeMap<u32, String>) {
    let toml = format!("[reads]\nfollower_gateways = 1\nfollower_hedge_after = \"1h\"\n{reads}");
    let c = Cluster::start_config(3, &toml).await;
    let owners = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    (c, owners)
}

/// A shard's gateways in such a cluster: (owner, follower gateway, the one forwarding to it),
/// the follower gateway being the first non-owner by rendezvous hashing.
fn roles(shard: u32, owner: &str) -> (usize, usize, usize) {
    let others: Vec<tessera::Member> = (0..3)
        .map(|i| format!("gw{i}"))
        .filter(|id| id != owner)
        .map(|id| tessera::Member {
            id,
            url: String::new(),
        })
        .collect();
    let home = &tessera::placement::ranked(tessera::ShardId(shard), others.iter())[0].id;
    let index = |id: &str| id[2..].parse::<usize>().unwrap();
    let (o, h) = (index(owner), index(home));
    (o, h, 3 - o - h)
}

/// With `reads.follower_gateways = 1` each shard has one follower, on the first non-owner by
/// rendezvous hashing; the third gateway forwards its eventual reads (point reads and its
/// part of scans) there, with its watermark as a floor, so they never go back before what it
/// returned. With that gateway and the owner both paused, it reads through a follower of its
/// own after the staleness bound. Hedging is off, so the owner never answers an eventual
/// point read here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_share_one_follower_per_shard() {
    let (c, owners) = one_follower_gateway_cluster("").await;
    let http = client();
    // Per shard: its key, owner, follower gateway and the gateway that forwards to it.
    let mut shards = Vec::new();
    for (&shard, owner) in &owners {
        let (o, h, g) = roles(shard, owner);
        let key = key_in(shard, "share");
        put_ok(&http, c.gw(0).kv(&key), &format!("{key}=1")).await;
        shards.push((key, o, h, g));
    }
    // Every gateway's eventual reads see every key; the forwarded ones come from a follower.
    for (key, _, h, g) in &shards {
        for gw in [*h, *g] {
            let expected = format!("{key}=1");
            read_from_follower(&http, c.gw(gw), key, &expected, Duration::from_secs(20)).await;
        }
    }
    // So do eventual scans, each shard's part from its follower gateway (or its owner).
    for gw in 0..3 {
        let all = scan_eventual(&http, c.gw(gw), "share").await;
        assert_eq!(all.len(), shards.len(), "gw{gw}: {all:?}");
        for (key, _, _, _) in &shards {
            assert_eq!(all[key].0, format!("{key}=1"));
        }
    }
    for gw in 0..3 {
        let text = common::get_text(&http, format!("{}/metrics", c.gw(gw).url)).await;
        let homes = shards.iter().filter(|s| s.2 == gw).count();
        assert_eq!(
            metric(&text, "tessera_followers_open"),
            homes as f64,
            "gw{gw} keeps followers of the {homes} shards it is the follower gateway of"
        );
    }

    // A strong read on the forwarding gateway raises its watermark; its next eventual read
    // waits at the follower gateway until the follower has caught up with it.
    let (key, o, h, g) = shards[0].clone();
    let v2 = put_ok(&http, c.gw(o).kv(&key), "v2").await;
    let r = http.get(c.gw(g).kv(&key)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v2");
    let r = get_eventual(&http, c.gw(g), &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], format!("\"{v2}\"").as_str());
    assert_eq!(read_by(&r), "eventual");
    // The same for a scan, after a third write noted on the forwarding gateway.
    let v3 = put_ok(&http, c.gw(o).kv(&key), "v3").await;
    let r = http.get(c.gw(g).kv(&key)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v3");
    let all = scan_eventual(&http, c.gw(g), "share").await;
    assert_eq!(all[&key], ("v3".to_string(), v3));

    // The follower gateway and the owner paused: the third gateway still answers.
    c.gw(h).process.pause();
    c.gw(o).process.pause();
    let t = Instant::now();
    let r = get_eventual(&http, c.gw(g), &key).await;
    let took = t.elapsed();
    let t = Instant::now();
    let all = scan_eventual(&http, c.gw(g), "share").await;
    let scan_took = t.elapsed();
    c.gw(h).process.resume();
    c.gw(o).process.resume();
    eprintln!(
        "follower gateway and owner paused: the eventual read took {took:?}, the scan {scan_took:?}"
    );
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], format!("\"{v3}\"").as_str());
    assert_eq!(r.text().await.unwrap(), "v3");
    assert!(took < Duration::from_secs(10), "the read took {took:?}");
    assert_eq!(all.len(), shards.len(), "{all:?}");
    assert_eq!(all[&key], ("v3".to_string(), v3));
    assert!(
        scan_took < Duration::from_secs(10),
        "the scan took {scan_took:?}"
    );
}

/// A follower's cached answer never goes back before the floor a read carries: an entry read
/// before the follower reached the floor may be older than a version the forwarding gateway
/// already returned. (Found by `eventual_reads_share_one_follower_per_shard` failing once in a
/// CI run, when the follower caught up less than `follower_cache_ttl` after caching the old
/// value; here the cache keeps entries for 10 s, so the stale entry is always young.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_follower_answer_never_goes_back_before_the_floor() {
    let (c, owners) = one_follower_gateway_cluster("follower_cache_ttl = \"10s\"\n").await;
    let http = client();
    let (&shard, owner) = owners.iter().next().unwrap();
    let (o, _, g) = roles(shard, owner);
    let key = key_in(shard, "floor");
    put_ok(&http, c.gw(o).kv(&key), "v1").await;
    // g's eventual reads go to h, whose follower caches v1.
    let r = poll_until(
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || {
            let r = get_eventual(&http, c.gw(g), &key).await;
            match r.status() == StatusCode::OK && read_by(&r) == "eventual" {
                true => Ok(r),
                false => Err("no follower answered".into()),
            }
        },
    )
    .await;
    assert_eq!(r.text().await.unwrap(), "v1");
    let v2 = put_ok(&http, c.gw(o).kv(&key), "v2").await;
    // A strong read through g raises g's floor for the shard to v2's version.
    let r = http.get(c.gw(g).kv(&key)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "v2");
    let r = get_eventual(&http, c.gw(g), &key).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(read_by(&r), "eventual");
    assert_eq!(
        r.headers()["etag"],
        format!("\"{v2}\"").as_str(),
        "the follower gateway answered from a cache entry older than the floor"
    );
}

/// Three gateways whose owners never checkpoint a shard while serving it (the memtable
/// flush interval is an hour: only a planned release or a takeover checkpoints) and whose
/// eventual point reads are never hedged (the owner never answers them once a follower is
/// open). Returns the cluster, its shard → owner map and the config's directory.
async fn three_gateways_without_periodic_checkpoints() -> (Cluster, BTreeMap<u32, String>) {
    let toml =
        "[storage]\nmemtable_flush_interval = \"1h\"\n[reads]\nfollower_hedge_after = \"1h\"\n";
    let c = Cluster::start_config(3, toml).await;
    let owners = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    (c, owners)
}

/// The published checkpoint of `shard` (`checkpoints/{s}.json`), as stored.
fn published_checkpoint(c: &Cluster, shard: u32) -> Value {
    let path = c.s3.bucket_dir().join(format!(
        "cluster/checkpoints/{}.json",
        tessera::ShardId(shard)
    ));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// An eventual read of `key` on `gw`: (ETag version, value), or `None` for 404; asserts a
/// follower answered a value.
async fn follower_read(http: &reqwest::Client, gw: &Gateway, key: &str) -> Option<(u64, String)> {
    let r = get_eventual(http, gw, key).await;
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(r.status(), StatusCode::OK, "{key} on {}", gw.url);
    assert_eq!(read_by(&r), "eventual", "{key}");
    let version = r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap();
    Some((version, r.text().await.unwrap()))
}

/// A follower sees the owner's writes within the staleness bound while the owner takes no
/// checkpoint: it reads them from the owner's commit log and merges them with the shard's
/// last checkpoint (SSTs). An overwrite of a checkpointed key, a delete of one and a new key
/// are each seen by point reads and by an eventual scan, which also returns the checkpointed
/// key nobody touched. The shard's published checkpoint is the same before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventual_reads_follow_the_owners_log_between_checkpoints() {
    let (mut c, owners) = three_gateways_without_periodic_checkpoints().await;
    let http = client();
    let shard = shard_owned_by(&owners, "gw2");
    let [over, kept, gone, fresh] =
        ["merge-over", "merge-kept", "merge-gone", "merge-new"].map(|tag| key_in(shard, tag));
    for k in [&over, &kept, &gone] {
        put_ok(&http, c.gw(0).kv(k), "sst").await;
    }
    // gw2 leaves: its clean release checkpoints the shard (its SSTs hold the three keys), and
    // the shard moves to gw0 or gw1, which checkpoints it again before serving, without a
    // flush, and then never again in this test.
    c.stop(2);
    let owners = c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let owner: usize = owners[&shard][2..].parse().unwrap();
    let follower = 1 - owner;
    read_from_follower(&http, c.gw(follower), &kept, "sst", BOUND * 5).await;
    let checkpoint = published_checkpoint(&c, shard);

    // The bound holds for a gateway that gets its CPU; this test shares two cores with the
    // rest of the suite, so (as the lag test does) it asserts the median round against the
    // bound and every round well within a few bounds.
    let mut lags = Vec::new();
    for round in 0..5 {
        let value = format!("log{round}");
        put_ok(&http, c.gw(owner).kv(&over), &value).await;
        put_ok(&http, c.gw(owner).kv(&fresh), &value).await;
        if round == 0 {
            let r = http.delete(c.gw(owner).kv(&gone)).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
        }
        let acked = Instant::now();
        poll_until(BOUND * 3, Duration::from_millis(20), async || {
            let seen = (
                follower_read(&http, c.gw(follower), &over).await,
                follower_read(&http, c.gw(follower), &fresh).await,
                follower_read(&http, c.gw(follower), &gone).await,
            );
            match &seen {
                (Some((_, a)), Some((_, b)), None) if *a == value && *b == value => Ok(()),
                _ => Err(format!(
                    "round {round}: the follower still shows {seen:?} after {:?}",
                    acked.elapsed()
                )),
            }
        })
        .await;
        let lag = acked.elapsed();
        eprintln!("round {round}: the follower showed the log's writes after {lag:?}");
        lags.push(lag);
        let all = scan_eventual(&http, c.gw(follower), "merge-").await;
        let got: BTreeMap<&str, &str> = all
            .iter()
            .map(|(k, (v, _))| (k.as_str(), v.as_str()))
            .collect();
        let want = BTreeMap::from([
            (over.as_str(), value.as_str()),
            (kept.as_str(), "sst"),
            (fresh.as_str(), value.as_str()),
        ]);
        assert_eq!(got, want, "round {round}: the eventual scan");
    }
    lags.sort();
    assert!(
        lags[2] <= BOUND,
        "median lag {:?} exceeds the bound",
        lags[2]
    );
    assert_eq!(
        published_checkpoint(&c, shard),
        checkpoint,
        "no checkpoint was taken: the follower read the writes from the log"
    );
}

/// A shard's owner is killed (-9) while a follower on another gateway serves eventual reads
/// of it: the follower keeps answering from what it has, finds the old owner's log sealed by
/// the new owner, moves to the new owner's log and serves its writes (never checkpointed)
/// within the bound; its answers never go back, and never before the floor a strong read
/// on its gateway set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_moves_to_the_new_owners_log_after_a_kill() {
    let (mut c, owners) = three_gateways_without_periodic_checkpoints().await;
    let http = client();
    let shard = shard_owned_by(&owners, "gw2");
    let key = key_in(shard, "failover");
    // The survivor that will take the shard over, and the one reading through a follower.
    let survivors: Vec<tessera::Member> = ["gw0", "gw1"]
        .map(|id| tessera::Member {
            id: id.into(),
            url: String::new(),
        })
        .into();
    let heir = tessera::placement::hrw(tessera::ShardId(shard), &survivors).unwrap();
    let heir: usize = heir.id[2..].parse().unwrap();
    let reader = 1 - heir;

    let mut written = BTreeMap::new();
    let v = put_ok(&http, c.gw(heir).kv(&key), "before-0").await;
    written.insert(v, "before-0".to_string());
    read_from_follower(&http, c.gw(reader), &key, "before-0", BOUND * 5).await;

    // Eventual reads on the reader's gateway all along: never back, never a phantom.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = {
        let (http, url, key, stop) = (
            http.clone(),
            c.gw(reader).url.clone(),
            key.clone(),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut seen: Vec<(u64, String, String)> = Vec::new();
            let mut unavailable = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = http
                    .get(format!("{url}/v1/kv/{key}?consistency=eventual"))
                    .send()
                    .await
                    .unwrap();
                match r.status() {
                    StatusCode::OK => {
                        // The owner answers too while the follower is behind the gateway's
                        // floor (after the strong read below): every answer counts.
                        let by = read_by(&r).to_string();
                        let version: u64 = r.headers()["etag"]
                            .to_str()
                            .unwrap()
                            .trim_matches('"')
                            .parse()
                            .unwrap();
                        let value = r.text().await.unwrap();
                        if let Some((last, _, _)) = seen.last() {
                            assert!(version >= *last, "went back from {last} to {version}");
                        }
                        seen.push((version, value, by));
                    }
                    StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
                    other => panic!("eventual read: {other}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (seen, unavailable)
        })
    };
    for i in 1..=3 {
        let value = format!("before-{i}");
        let v = put_ok(&http, c.gw(heir).kv(&key), &value).await;
        written.insert(v, value);
    }
    tokio::time::sleep(BOUND).await;

    c.kill(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let v_after = loop {
        let r = http
            .put(c.gw(heir).kv(&key))
            .body("after-0")
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break r.json::<Value>().await.unwrap()["version"]
                .as_u64()
                .unwrap();
        }
        assert!(Instant::now() < deadline, "no failover: {}", r.status());
    };
    written.insert(v_after, "after-0".to_string());
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;

    // A strong read through the reader's gateway raises its floor to the new owner's write,
    // which exists only in the new owner's log (its takeover checkpoint came before it):
    // the follower serves again once it has read that far in the new log (until then the
    // gateway asks the owner).
    let r = http.get(c.gw(reader).kv(&key)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "after-0");
    let floor_set = Instant::now();
    poll_until(BOUND * 3, Duration::from_millis(20), async || {
        let r = get_eventual(&http, c.gw(reader), &key).await;
        assert_eq!(r.status(), StatusCode::OK);
        let by = read_by(&r).to_string();
        let version: u64 = r.headers()["etag"]
            .to_str()
            .unwrap()
            .trim_matches('"')
            .parse()
            .unwrap();
        assert!(
            version >= v_after,
            "{by} answered {version}, below the floor {v_after}"
        );
        match by == "eventual" {
            true => Ok(()),
            false => Err("the follower did not reach the floor in the new owner's log".into()),
        }
    })
    .await;
    eprintln!(
        "after the failover the follower reached the floor in {:?}",
        floor_set.elapsed()
    );

    // Later writes of the new owner arrive about one poll interval after their ack.
    for i in 1..=3 {
        let value = format!("after-{i}");
        let v = put_ok(&http, c.gw(heir).kv(&key), &value).await;
        written.insert(v, value.clone());
        let acked = Instant::now();
        poll_until(
            BOUND * 3,
            Duration::from_millis(20),
            async || match follower_read(&http, c.gw(reader), &key).await {
                Some(seen) if seen == (v, value.clone()) => Ok(()),
                _ => Err(format!("{value} not seen after {:?}", acked.elapsed())),
            },
        )
        .await;
        eprintln!(
            "after the failover: {value} seen after {:?}",
            acked.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (seen, unavailable) = seen.await.unwrap();
    eprintln!(
        "{} eventual reads during the failover ({unavailable} answered 503)",
        seen.len()
    );
    for (version, value, _) in &seen {
        assert_eq!(
            written.get(version),
            Some(value),
            "{value}@{version}: never written"
        );
    }
    let by_follower = seen.iter().filter(|(_, _, by)| by == "eventual").count();
    eprintln!("{by_follower} of them answered by the follower");
    assert!(
        by_follower > 20,
        "only {by_follower} reads answered by the follower"
    );
}
