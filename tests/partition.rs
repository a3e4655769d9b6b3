//! Network partitions with real processes: each gateway's links to etcd, to S3 and from its
//! peers go through a cuttable TCP proxy in the test process (`common::proxy`). A cut stalls a
//! link (packets dropped) rather than refusing it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{samples, shard_of, Cluster, ClusterOpts, SHARDS};
use common::proxy::Proxy;
use common::{assert_serves_nothing_stale, client, metric};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server on a free loopback port.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads exactly `n` bytes within `timeout`; `None` if they did not all come.
async fn read_within(s: &mut TcpStream, n: usize, timeout: Duration) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(timeout, s.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stalls_while_cut_and_resumes_on_heal() {
    let echo = echo_server().await;
    let proxy = Proxy::start(echo).await;
    assert_eq!(proxy.url(), format!("http://127.0.0.1:{}", proxy.port()));
    assert!(!proxy.is_cut());

    // An open link passes bytes both ways.
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    conn.write_all(b"hello").await.unwrap();
    let got = read_within(&mut conn, 5, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&b"hello"[..]));

    // Cut: an existing connection gets nothing back, and is not closed either.
    proxy.cut();
    assert!(proxy.is_cut());
    conn.write_all(b"held1").await.unwrap();
    assert_eq!(
        read_within(&mut conn, 5, Duration::from_millis(500)).await,
        None,
        "bytes passed a cut proxy"
    );
    // A new connection is accepted (no refusal) but nothing passes.
    let mut late = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(proxy.addr()))
        .await
        .expect("a cut proxy still accepts")
        .unwrap();
    late.write_all(b"late!").await.unwrap();
    assert_eq!(
        read_within(&mut late, 5, Duration::from_millis(500)).await,
        None,
        "bytes passed a cut proxy on a new connection"
    );

    // Heal: the held bytes go through, on both connections, and the link works again.
    proxy.heal();
    assert!(!proxy.is_cut());
    let got = read_within(&mut conn, 5, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&b"held1"[..]));
    let got = read_within(&mut late, 5, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&b"late!"[..]));
    conn.write_all(b"again").await.unwrap();
    let got = read_within(&mut conn, 5, Duration::from_secs(5)).await;
    assert_eq!(got.as_deref(), Some(&b"again"[..]));

    // Dropping the proxy closes its connections and stops accepting.
    let addr = proxy.addr();
    drop(proxy);
    let started = Instant::now();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("a dropped proxy closes its connections");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a dropped proxy still accepts"
    );
}

// ---------------------------------------------------------------------------------------------
// Partitions of a cluster: helpers.

/// Lease TTL of the test clusters (the gateway default).
const TTL: Duration = Duration::from_secs(3);

/// `n` keys on each of `shards`, named `{prefix}{i}`.
fn keys_on(shards: &[u32], n: usize, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for &s in shards {
        out.extend(
            (0..)
                .map(|i| format!("{prefix}{i}"))
                .filter(|k| shard_of(k) == s)
                .take(n),
        );
    }
    out
}

/// Log tails of every live gateway.
fn logs(c: &Cluster) -> String {
    c.live()
        .into_iter()
        .map(|i| format!("--- gw{i} log ---\n{}\n", c.gw(i).process.log_tail()))
        .collect()
}

/// `GET {url}/v1/cluster`, if it answers within 3 s.
async fn view(http: &reqwest::Client, url: &str) -> Option<Value> {
    let r = http
        .get(format!("{url}/v1/cluster"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    r.json().await.ok()
}

/// Member ids of a `/v1/cluster` view.
fn members(v: &Value) -> Vec<String> {
    v["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| Some(m["id"].as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Shard → owner id of a `/v1/cluster` view (shards without an owner left out).
fn owners(v: &Value) -> BTreeMap<u32, String> {
    v["shards"]
        .as_array()
        .map(|ss| {
            ss.iter()
                .filter_map(|s| {
                    Some((
                        s["shard"].as_u64()? as u32,
                        s["owner"].as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True if `v` shows exactly the members `ids`, every shard owned by one of them.
fn view_is(v: &Value, ids: &[&str]) -> bool {
    let o = owners(v);
    members(v) == ids && o.len() == SHARDS as usize && o.values().all(|g| ids.contains(&&**g))
}

async fn metrics(http: &reqwest::Client, url: &str) -> String {
    common::get_text(http, format!("{url}/metrics")).await
}

/// Sum of every sample of metric `name`, 0 if there is none.
fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).values().sum()
}

/// One strong read: `Ok(body)` on 200, else the status or error.
async fn read(http: &reqwest::Client, url: &str, key: &str) -> Result<String, String> {
    let r = http
        .get(format!("{url}/v1/kv/{key}"))
        .timeout(Duration::from_secs(12))
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = r.status();
    let body = r.text().await.map_err(|e| format!("{e}"))?;
    if status == StatusCode::OK {
        Ok(body)
    } else {
        Err(format!("{status} {body}"))
    }
}

/// One write: `Ok(())` on 200, else the status or error.
async fn write(http: &reqwest::Client, url: &str, key: &str, value: &str) -> Result<(), String> {
    let r = http
        .put(format!("{url}/v1/kv/{key}"))
        .body(value.to_string())
        .timeout(Duration::from_secs(12))
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = r.status();
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{status} {}", r.text().await.unwrap_or_default()))
    }
}

/// Writes `value` to every key through `url`, retrying each until it is acknowledged or
/// `deadline` passes; records acknowledged values in `acked`.
async fn write_all(
    http: &reqwest::Client,
    url: &str,
    keys: &[String],
    value: impl Fn(&str) -> String,
    acked: &mut BTreeMap<String, String>,
    deadline: Instant,
) -> Result<(), String> {
    let writes = keys.iter().map(|k| {
        let v = value(k);
        async move {
            loop {
                match write(http, url, k, &v).await {
                    Ok(()) => return Ok((k.clone(), v)),
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("write of {k} through {url}: {e}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    });
    for r in futures::future::join_all(writes).await {
        let (k, v) = r?;
        acked.insert(k, v);
    }
    Ok(())
}

/// Polls until every key of `acked` reads back `accept`ed values through every gateway of
/// `gws`, or `deadline` passes (then the reads that failed, as an error).
async fn read_back(
    c: &Cluster,
    gws: &[usize],
    acked: &BTreeMap<String, String>,
    accept: impl Fn(&str, &str) -> bool,
    deadline: Instant,
) -> Result<(), String> {
    let http = client();
    let mut pending: Vec<(usize, String)> = gws
        .iter()
        .flat_map(|&g| acked.keys().map(move |k| (g, k.clone())))
        .collect();
    loop {
        let reads = pending.iter().map(|(g, k)| {
            let (http, url) = (&http, c.gw(*g).url.clone());
            async move { read(http, &url, k).await }
        });
        let results = futures::future::join_all(reads).await;
        let mut failed = Vec::new();
        for ((g, k), r) in pending.into_iter().zip(results) {
            match r {
                Ok(v) if accept(&k, &v) => {}
                Ok(v) => {
                    failed.push(((g, k.clone()), format!("read {v:?}, acked {:?}", acked[&k])))
                }
                Err(e) => failed.push(((g, k), e)),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(failed
                .iter()
                .map(|((g, k), e)| format!("gw{g} {k}: {e}"))
                .collect::<Vec<_>>()
                .join("\n"));
        }
        pending = failed.into_iter().map(|(p, _)| p).collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads must return exactly the last acknowledged value.
fn exact(acked: &BTreeMap<String, String>) -> impl Fn(&str, &str) -> bool + '_ {
    move |k, v| acked[k] == v
}

/// Polls until gateway `i` opened shards again (`owned_here` > 0); the time it took.
async fn await_owns(c: &Cluster, i: usize, since: Instant, bound: Duration) -> Duration {
    let http = client();
    loop {
        if let Some(v) = view(&http, &c.gw(i).url).await {
            if v["owned_here"].as_u64().unwrap_or(0) > 0 {
                return since.elapsed();
            }
        }
        assert!(
            since.elapsed() < bound,
            "gw{i} owns nothing {:?} after the heal; its view: {:#}\n{}",
            since.elapsed(),
            view(&http, &c.gw(i).url).await.unwrap_or_default(),
            logs(c)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cuts gateway `victim` off etcd until every other gateway sees it gone and has taken its
/// shards, and it owns nothing, and at least `min` passed (at most 15 s). Returns when the
/// takeover was complete, after the cut.
async fn cut_from_etcd(c: &Cluster, victim: usize, min: Duration) -> Duration {
    let http = client();
    let others: Vec<usize> = c.live().into_iter().filter(|&i| i != victim).collect();
    let ids: Vec<String> = others.iter().map(|i| format!("gw{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let cut = Instant::now();
    c.link(victim).etcd.cut();
    let mut took_over = None;
    while took_over.is_none() || cut.elapsed() < min {
        if took_over.is_none() {
            let mut done = true;
            for &i in &others {
                done &= view(&http, &c.gw(i).url)
                    .await
                    .is_some_and(|v| view_is(&v, &ids));
            }
            let victim_view = view(&http, &c.gw(victim).url).await;
            done &= victim_view
                .as_ref()
                .is_some_and(|v| v["owned_here"].as_u64() == Some(0));
            if done {
                took_over = Some(cut.elapsed());
                println!(
                    "gw{victim} cut from etcd: others took over and it owns nothing after {:?}",
                    cut.elapsed()
                );
            }
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "gw{victim} cut from etcd for {:?}: no takeover; views: {:#?}\n{}",
            cut.elapsed(),
            futures::future::join_all(c.live().iter().map(|&i| {
                let (http, url) = (&http, c.gw(i).url.clone());
                async move { view(http, &url).await }
            }))
            .await,
            logs(c)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    took_over.unwrap()
}

/// Checks gateway `i`'s lease-loss and rejoin metrics and log.
async fn assert_rejoined(c: &Cluster, i: usize) {
    let text = metrics(&client(), &c.gw(i).url).await;
    let lost = samples(&text, "tessera_lease_lost_total");
    let reasons = ["deadline", "not_found", "ttl_zero"];
    assert!(
        lost.iter()
            .any(|(labels, v)| *v >= 1.0 && reasons.iter().any(|r| labels.contains(r))),
        "gw{i}: no lease loss counted: {lost:?}"
    );
    assert!(
        sum(&text, "tessera_lease_rejoins_total") >= 1.0,
        "gw{i}: no rejoin counted:\n{}",
        text.lines()
            .filter(|l| l.contains("lease"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        c.gw(i).process.log_text().contains("rejoined the cluster"),
        "gw{i} did not log its rejoin:\n{}",
        c.gw(i).process.log_tail()
    );
    println!("gw{i} lease losses {lost:?}");
}

// ---------------------------------------------------------------------------------------------
// Partitions of a cluster.

/// Writes `per_shard` keys (named `{prefix}N`) on each of `shards` through gateway `via`,
/// with values `value(key)`; returns the keys and the acknowledged values.
async fn write_keys(
    c: &Cluster,
    via: usize,
    shards: &[u32],
    per_shard: usize,
    prefix: &str,
    value: impl Fn(&str) -> String,
) -> (Vec<String>, BTreeMap<String, String>) {
    let keys = keys_on(shards, per_shard, prefix);
    let mut acked = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    write_all(
        &client(),
        &c.gw(via).url,
        &keys,
        value,
        &mut acked,
        deadline,
    )
    .await
    .unwrap();
    (keys, acked)
}

/// The shards `owner` holds in `owners` (asserted not empty).
fn owned_by(owners: &BTreeMap<u32, String>, owner: &str) -> Vec<u32> {
    let mine: Vec<u32> = owners
        .iter()
        .filter(|(_, o)| *o == owner)
        .map(|(s, _)| *s)
        .collect();
    assert!(!mine.is_empty(), "{owner} owns nothing: {owners:?}");
    mine
}

/// Three proxied gateways, once stable, with `per_shard` keys on every shard written
/// (`{key}-{tag}`) through gw0. Returns the cluster, its shard → owner map, the keys and the
/// acknowledged values.
async fn written_cluster(
    per_shard: usize,
    tag: &str,
) -> (
    Cluster,
    BTreeMap<u32, String>,
    Vec<String>,
    BTreeMap<String, String>,
) {
    let c = Cluster::start_proxied(3).await;
    let owners = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let all: Vec<u32> = (0..SHARDS).collect();
    let (keys, acked) = write_keys(&c, 0, &all, per_shard, "k", |k| format!("{k}-{tag}")).await;
    (c, owners, keys, acked)
}

/// A gateway cut off etcd for longer than its lease stops serving, its shards move to the
/// others, and once healed it joins again with a new lease and gets its shards back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cut_from_etcd_past_its_lease_rejoins() {
    let (c, before, keys, mut acked) = written_cluster(2, "a").await;
    let http = client();

    // Cut gw0 from etcd for 8 s: gw1 and gw2 take every shard and serve every key.
    let cut = Instant::now();
    let took_over = cut_from_etcd(&c, 0, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    write_all(
        &http,
        &c.gw(1).url,
        &keys,
        |k| format!("{k}-b"),
        &mut acked,
        deadline,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs(&c)));
    let deadline = Instant::now() + Duration::from_secs(5);
    read_back(&c, &[1, 2], &acked, exact(&acked), deadline)
        .await
        .unwrap_or_else(|e| panic!("during the cut: {e}\n{}", logs(&c)));
    // The cut-off gateway's view is stale, but a strong read through it must not return a
    // value older than the last acknowledged one (it may fail).
    let former: Vec<&String> = keys
        .iter()
        .filter(|k| before.get(&shard_of(k)).is_some_and(|o| o == "gw0"))
        .collect();
    let probes = futures::future::join_all(former.iter().map(|k| {
        let (http, url) = (&http, c.gw(0).url.clone());
        async move {
            let started = Instant::now();
            // A 3 s request deadline, so the probes end within the cut.
            let r = http
                .get(format!("{url}/v1/kv/{k}"))
                .header("x-tessera-deadline-ms", "3000")
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body = r.text().await.unwrap();
            let r = if status == StatusCode::OK {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            };
            (r, started.elapsed())
        }
    }))
    .await;
    for (k, (r, took)) in former.iter().zip(&probes) {
        println!("during the cut gw0 answered a read of {k} (its shard before) with {r:?} after {took:?}");
        if let Ok(v) = r {
            assert_eq!(v, &acked[*k], "stale read of {k} through the cut-off gw0");
        }
    }
    let rest = Duration::from_secs(8).saturating_sub(cut.elapsed());
    tokio::time::sleep(rest).await;
    c.link(0).etcd.heal();
    let healed = Instant::now();
    println!(
        "healed after {:?} (takeover after {took_over:?})",
        cut.elapsed()
    );

    // Within TTL + 2 s gw0 owns shards again, then the cluster is stable with all three.
    let back = await_owns(&c, 0, healed, TTL + Duration::from_secs(2)).await;
    println!("gw0 owns shards again {back:?} after the heal");
    c.await_stable(&[0, 1, 2], Duration::from_secs(10)).await;
    println!("stable {:?} after the heal", healed.elapsed());
    let deadline = Instant::now() + Duration::from_secs(10);
    read_back(&c, &[0, 1, 2], &acked, exact(&acked), deadline)
        .await
        .unwrap_or_else(|e| panic!("after the heal: {e}\n{}", logs(&c)));
    assert_rejoined(&c, 0).await;
}

/// Three proxied gateways that heartbeat every 2 s and hold a 6 s lease, so an unsafe early
/// takeover lands while the owner still serves; and a key of a shard gw2 owns, written as
/// `v1` and read through gw2 (so a stale answer could come from its cache too), with gw2
/// still the owner just before the test goes on.
async fn cluster_with_a_key_on_gw2() -> (Cluster, String) {
    let toml = "[cluster]\nlease_ttl = \"6s\"\nheartbeat_timeout = \"2s\"\n\n[server]\nrequest_timeout = \"1s\"\n";
    let opts = ClusterOpts {
        proxied: true,
        config: toml.into(),
        ..ClusterOpts::default()
    };
    let c = Cluster::start_opts(3, opts).await;
    let http = client();
    let key = loop {
        let placed = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
        let key = keys_on(&owned_by(&placed, "gw2")[..1], 1, "x").remove(0);
        write(&http, &c.gw(0).url, &key, "v1").await.unwrap();
        assert_eq!(read(&http, &c.gw(2).url, &key).await.as_deref(), Ok("v1"));
        let v = view(&http, &c.gw(0).url).await.unwrap();
        if owners(&v).get(&shard_of(&key)).map(String::as_str) == Some("gw2") {
            break key;
        }
    };
    (c, key)
}

/// Early takeover under a partition (`src/cluster/lease.rs`): an owner cut from etcd and from
/// its peers, still reaching S3 and the test's clients, is expelled through its heartbeat
/// before its lease could expire, and serves nothing stale meanwhile: cut off, it cannot learn
/// it was expelled, so only its own beat deadline stops it. Timeouts are stretched (heartbeat
/// 2 s, lease 6 s) so that an unsafe expulsion lands while the owner still serves: with the
/// wait before expelling cut to a quarter of the timeout, or a serving deadline that ignores
/// heartbeats, it answers the stale `v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_from_etcd_and_peers_is_expelled_and_serves_nothing_stale() {
    let (c, key) = cluster_with_a_key_on_gw2().await;
    let http = client();

    c.link(2).etcd.cut();
    c.link(2).peer.cut();
    let cut = Instant::now();
    // gw0's forwards to gw2 stall; it watches gw2's heartbeat, which has stopped, and expels it.
    let deadline = cut + Duration::from_secs(30);
    while let Err(e) = write(&http, &c.gw(0).url, &key, "v2").await {
        assert!(Instant::now() < deadline, "no takeover: {e}\n{}", logs(&c));
    }
    let took = cut.elapsed();
    // gw2, asked directly as a forwarded request (so it answers from its own state): no stale
    // v1, no acknowledged write.
    let who = format!("the expelled owner, {took:?} after the cut,");
    assert_serves_nothing_stale(&http, &c.gw(2).kv(&key), "v2", &who).await;
    // Its lease could not have expired yet (serving deadline: last keep-alive + 5 s).
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the lease, not the heartbeat, moved the shard"
    );
    println!(
        "owner cut from etcd and peers expelled: the write went through {took:?} after the cut"
    );

    c.link(2).etcd.heal();
    c.link(2).peer.heal();
    // Healed, gw2's next beat finds it was expelled: it joins again, and revokes the expelled
    // incarnation's lease at once (its keep-alives, answered again, would otherwise have kept
    // it, and any owner key gw0 did not see, for up to a TTL more).
    let deadline = Instant::now() + Duration::from_secs(10);
    while sum(
        &metrics(&http, &c.gw(2).url).await,
        "tessera_lease_rejoins_total",
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "gw2 did not rejoin\n{}",
            logs(&c)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut etcd = c.etcd.client().await;
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let leases = etcd.leases().await.unwrap().leases().len();
        if leases == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{leases} leases for 3 gateways after the rejoin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let text = metrics(&http, &c.gw(2).url).await;
    let expelled = metric(&text, "tessera_lease_lost_total{reason=\"expelled\"}");
    assert!(
        expelled >= 1.0,
        "gw2 does not count itself expelled\n{}",
        logs(&c)
    );
    let mut expellers = 0.0;
    for g in [0, 1] {
        let text = metrics(&http, &c.gw(g).url).await;
        expellers += metric(&text, "tessera_members_expelled_total");
    }
    assert!(expellers >= 1.0, "neither gw0 nor gw1 counts an expulsion");
    for g in [0, 1, 2] {
        assert_eq!(
            read(&http, &c.gw(g).url, &key).await.as_deref(),
            Ok("v2"),
            "via gw{g}"
        );
    }
}

/// A replacement started under the id of an owner cut from etcd and its peers (a node
/// partitioned, its pod replaced), while the old one still reaches S3 and its clients: the
/// replacement retires the old incarnation only once its heartbeat has stood for the wait,
/// so the old one has stopped serving by then; it then serves the shards long before the old
/// lease could expire. Healed, the old incarnation finds its id in use and stays out. With the
/// replacement retiring at once, the cut-off owner answers the stale `v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_under_a_cut_off_owners_id_takes_over_and_the_old_one_serves_nothing_stale() {
    let (c, key) = cluster_with_a_key_on_gw2().await;
    let http = client();

    c.link(2).etcd.cut();
    c.link(2).peer.cut();
    let cut = Instant::now();
    let mut twin = c.spawn_twin(2);
    // It prints its URL once it has joined, so after it retired gw2.
    let twin_url = twin.wait_for_url(Duration::from_secs(30));
    let deadline = cut + Duration::from_secs(30);
    while let Err(e) = write(&http, &c.gw(0).url, &key, "v2").await {
        assert!(Instant::now() < deadline, "no takeover: {e}\n{}", logs(&c));
    }
    let took = cut.elapsed();
    let who = format!("the retired incarnation, {took:?} after the cut,");
    assert_serves_nothing_stale(&http, &c.gw(2).kv(&key), "v2", &who).await;
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: the lease, not the retirement, moved the shard"
    );
    // The replacement retired it, or a survivor that suspected it expelled it first (both
    // wait for the same beat to stand).
    assert!(
        c.retired_or_expelled(&twin, &[0, 1]),
        "gw2 was neither retired nor expelled:\n{}",
        twin.log_tail()
    );
    println!("replacement under gw2's id: the write went through {took:?} after the cut");
    assert_eq!(read(&http, &twin_url, &key).await.as_deref(), Ok("v2"));

    // Healed, the old incarnation is expelled (its beat fails) and cannot join again: the
    // replacement beats under its id. It serves nothing, and the replacement keeps serving.
    c.link(2).etcd.heal();
    c.link(2).peer.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.gw(2).process.log_text().contains("is in use") {
        assert!(
            Instant::now() < deadline,
            "the old incarnation did not find its id in use\n{}",
            c.gw(2).process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    write(&http, &c.gw(0).url, &key, "v3").await.unwrap();
    let who = "the old incarnation, healed,";
    assert_serves_nothing_stale(&http, &c.gw(2).kv(&key), "v3", who).await;
    assert_eq!(read(&http, &twin_url, &key).await.as_deref(), Ok("v3"));
}

/// Each gateway in turn is cut off etcd past its lease and healed; the cluster ends whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_cut_from_etcd_in_turn_then_whole_cluster_serves() {
    let (c, _, keys, mut acked) = written_cluster(1, "0").await;
    let http = client();

    let mut healed = Instant::now();
    for victim in 0..3 {
        let cut = Instant::now();
        let took_over = cut_from_etcd(&c, victim, Duration::from_secs(6)).await;
        // Write through another gateway while the victim is cut off.
        let via = (victim + 1) % 3;
        let deadline = Instant::now() + Duration::from_secs(5);
        write_all(
            &http,
            &c.gw(via).url,
            &keys,
            |k| format!("{k}-{}", victim + 1),
            &mut acked,
            deadline,
        )
        .await
        .unwrap_or_else(|e| panic!("gw{victim} cut: {e}\n{}", logs(&c)));
        let rest = Duration::from_secs(7).saturating_sub(cut.elapsed());
        tokio::time::sleep(rest).await;
        c.link(victim).etcd.heal();
        healed = Instant::now();
        println!(
            "gw{victim} healed after {:?} (takeover after {took_over:?})",
            cut.elapsed()
        );
        let back = await_owns(&c, victim, healed, TTL + Duration::from_secs(2)).await;
        println!("gw{victim} owns shards again {back:?} after the heal");
    }

    // Within TTL + 2 s of the last heal, every shard is served through every gateway.
    read_back(
        &c,
        &[0, 1, 2],
        &acked,
        exact(&acked),
        healed + TTL + Duration::from_secs(2),
    )
    .await
    .unwrap_or_else(|e| panic!("after the last heal: {e}\n{}", logs(&c)));
    println!(
        "every key served everywhere {:?} after the last heal",
        healed.elapsed()
    );
    c.await_stable(&[0, 1, 2], Duration::from_secs(10)).await;
    for i in 0..3 {
        assert_rejoined(&c, i).await;
    }
}

/// The attempt number of a value `{key}#{n}` (values written by `hammer`).
fn attempt(value: &str) -> Option<u64> {
    value.rsplit_once('#')?.1.parse().ok()
}

/// Outcomes of `hammer`'s writes to one key: (attempt, acknowledged, status or error, time).
type Outcomes = Vec<(u64, bool, String, Duration)>;

/// Writes `{key}#{n}` (n = `from`, `from` + 1, …) to each key through `url`, one write at a
/// time per key, until `stop` is set, then until one write after `stop` is acknowledged or
/// `deadline` passes.
async fn hammer(
    url: String,
    keys: Vec<String>,
    from: u64,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> BTreeMap<String, Outcomes> {
    let http = client();
    let per_key = keys.into_iter().map(|k| {
        let (http, url, stop) = (&http, &url, &stop);
        async move {
            let mut out = Vec::new();
            for n in from.. {
                let stopped = stop.load(Ordering::Relaxed);
                let started = Instant::now();
                let r = write(http, url, &k, &format!("{k}#{n}")).await;
                let ok = r.is_ok();
                out.push((n, ok, r.err().unwrap_or_default(), started.elapsed()));
                if stopped && (ok || Instant::now() > deadline) {
                    break;
                }
                if !ok {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (k, out)
        }
    });
    futures::future::join_all(per_key)
        .await
        .into_iter()
        .collect()
}

/// A gateway cut off S3 fails writes to its shards (or stalls them) but loses nothing: once
/// healed it acknowledges writes again, and every acknowledged write reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cut_from_s3_then_healed() {
    // A request deadline shorter than the cut, so writes fail during it (with the default
    // 10 s they only stall, then succeed at the heal) and their outcome is unknown.
    let extra = vec!["--request-timeout".to_string(), "2s".to_string()];
    let opts = ClusterOpts {
        extra,
        proxied: true,
        ..ClusterOpts::default()
    };
    let c = Cluster::start_opts(3, opts).await;
    let owners = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let mine = owned_by(&owners, "gw0");
    let (keys, mut acked) = write_keys(&c, 0, &mine, 1, "s", |k| format!("{k}#0")).await;
    let http = client();

    // Writes to gw0's shards during a 6 s cut of its S3 link, and until one after the heal is
    // acknowledged for each key (within 15 s of the heal).
    let stop = Arc::new(AtomicBool::new(false));
    let cut = Instant::now();
    c.link(0).s3.cut();
    let bound = Duration::from_secs(15);
    let writer = tokio::spawn(hammer(
        c.gw(0).url.clone(),
        keys.clone(),
        1,
        Arc::clone(&stop),
        cut + Duration::from_secs(6) + bound,
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let probe = view(&http, &c.gw(0).url).await;
    println!(
        "gw0 cut from S3 for {:?}; it owns {:?} shards",
        cut.elapsed(),
        probe.map(|v| v["owned_here"].clone())
    );
    c.link(0).s3.heal();
    let healed = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let outcomes = writer.await.unwrap();
    let last_ok = outcomes
        .values()
        .filter_map(|o| o.last().filter(|w| w.1).map(|w| w.3))
        .max();
    println!(
        "writes acknowledged again within {:?} of the heal",
        healed.elapsed()
    );

    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (k, o) in &outcomes {
        for (n, ok, status, _) in o {
            if *ok {
                acked.insert(k.clone(), format!("{k}#{n}"));
            } else {
                let code = status.split(' ').next().unwrap_or_default().to_string();
                *statuses.entry(code).or_default() += 1;
            }
        }
        let last = o.last().unwrap();
        assert!(
            last.1,
            "{k}: no write acknowledged within {bound:?} of the heal: {:?}\n{}",
            &o[o.len().saturating_sub(5)..],
            logs(&c)
        );
    }
    let acks: usize = outcomes
        .values()
        .map(|o| o.iter().filter(|w| w.1).count())
        .sum();
    let slowest = outcomes
        .values()
        .flatten()
        .map(|w| w.3)
        .max()
        .unwrap_or_default();
    println!(
        "{acks} writes acknowledged, failures by status {statuses:?}, slowest answer {slowest:?}, \
         last acknowledged write took {last_ok:?}"
    );
    // Nothing acknowledged is lost: each key holds its last acknowledged value or a later
    // attempt (a failed write's outcome is unknown).
    let deadline = Instant::now() + Duration::from_secs(10);
    let accept =
        |k: &str, v: &str| v.starts_with(&format!("{k}#")) && attempt(v) >= attempt(&acked[k]);
    read_back(&c, &[0, 1, 2], &acked, accept, deadline)
        .await
        .unwrap_or_else(|e| panic!("after the heal: {e}\n{}", logs(&c)));
}

/// A gateway its peers cannot reach: requests forwarded to it fail in bounded time (or
/// succeed), and once healed every key is served through every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cut_from_peers_then_healed() {
    let c = Cluster::start_proxied(3).await;
    let owners = c.await_stable(&[0, 1, 2], Duration::from_secs(30)).await;
    let mine = owned_by(&owners, "gw0");
    let http = client();
    let all: Vec<u32> = (0..SHARDS).collect();
    let (keys, mut acked) = write_keys(&c, 1, &all, 1, "p", |k| format!("{k}#0")).await;

    c.link(0).peer.cut();
    let cut = Instant::now();
    // Reads and writes of gw0's keys through gw1 and gw2, all at once.
    let on_gw0 = keys_on(&mine, 1, "p");
    let mut attempts = Vec::new();
    for g in [1, 2] {
        for (j, k) in on_gw0.iter().enumerate() {
            attempts.push((g, k.clone(), None));
            attempts.push((g, k.clone(), Some(format!("{k}#{}", g * 100 + j + 1))));
        }
    }
    let answers = futures::future::join_all(attempts.iter().map(|(g, k, put)| {
        let (http, url) = (&http, c.gw(*g).url.clone());
        async move {
            let started = Instant::now();
            let r = match put {
                Some(v) => write(http, &url, k, v).await,
                None => read(http, &url, k).await.map(|_| ()),
            };
            (r, started.elapsed())
        }
    }))
    .await;
    // What each key may hold now: a value written during the cut, acknowledged or not (a
    // failed write's outcome is unknown: its request is held by the cut, not dropped), or
    // its value from before if none of those was acknowledged.
    let mut during: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
    let mut failed = 0;
    for ((g, k, put), (r, took)) in attempts.iter().zip(&answers) {
        let op = if put.is_some() { "PUT" } else { "GET" };
        println!("cut: {op} {k} through gw{g}: {r:?} after {took:?}");
        assert!(
            *took < Duration::from_secs(12),
            "{op} {k} through gw{g} answered after {took:?}\n{}",
            logs(&c)
        );
        if let Some(v) = put {
            let entry = during.entry(k.clone()).or_default();
            entry.0.push(v.clone());
            entry.1 |= r.is_ok();
        }
        failed += usize::from(r.is_err());
    }
    println!(
        "{failed} of {} requests failed during the cut",
        attempts.len()
    );
    let accept = |k: &str, v: &str| match during.get(k) {
        Some((written, any_acked)) => {
            written.iter().any(|w| w == v) || (!any_acked && acked[k] == v)
        }
        None => acked[k] == v,
    };
    // Keys of other shards are still served through gw0's peers...
    let others: BTreeMap<String, String> = acked
        .iter()
        .filter(|(k, _)| !mine.contains(&shard_of(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    read_back(&c, &[1, 2], &others, exact(&others), Instant::now())
        .await
        .unwrap_or_else(|e| panic!("during the cut: {e}\n{}", logs(&c)));
    // ...and every key through gw0 itself, which owns its shards and reaches the others.
    read_back(
        &c,
        &[0],
        &acked,
        accept,
        Instant::now() + Duration::from_secs(5),
    )
    .await
    .unwrap_or_else(|e| panic!("through gw0 during the cut: {e}\n{}", logs(&c)));
    c.link(0).peer.heal();
    let healed = Instant::now();
    println!("healed after {:?}", cut.elapsed());

    // Every key is served through every gateway again.
    let deadline = healed + Duration::from_secs(10);
    read_back(&c, &[0, 1, 2], &acked, accept, deadline)
        .await
        .unwrap_or_else(|e| panic!("after the heal: {e}\n{}", logs(&c)));
    println!(
        "every key served everywhere {:?} after the heal",
        healed.elapsed()
    );
    // Writes held by the cut were delivered at the heal: report any that was applied.
    for k in &on_gw0 {
        let v = read(&http, &c.gw(1).url, k).await.unwrap();
        if v != acked[k] {
            println!("{k}: a write sent during the cut was applied: {v}");
        }
    }
    // And writes through every gateway are acknowledged and read back exactly.
    for g in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let value = |k: &str| format!("{k}#{}", 1000 + g);
        write_all(&http, &c.gw(g).url, &keys, value, &mut acked, deadline)
            .await
            .unwrap_or_else(|e| panic!("after the heal: {e}\n{}", logs(&c)));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    read_back(&c, &[0, 1, 2], &acked, exact(&acked), deadline)
        .await
        .unwrap_or_else(|e| panic!("after the heal: {e}\n{}", logs(&c)));
}

/// A compactor daemon cut off etcd past its lease drops its claims, and once healed joins
/// again and claims shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactor_cut_from_etcd_then_healed() {
    let c = Cluster::start(1).await;
    c.await_stable(&[0], Duration::from_secs(30)).await;
    let link = Proxy::start(format!("127.0.0.1:{}", c.etcd.port)).await;
    let config = "[compaction]\nl0_threshold = 4\npoll_interval = \"200ms\"\n\
                  job_timeout = \"3s\"\ngc_interval = \"1s\"\ngc_min_age = \"3s\"\n";
    let comp = c.start_compactor_via("c0", config, &link.url());
    let claimed = |text: &str| metric(text, "tessera_compactor_shards_claimed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while claimed(&comp.metrics().await) < SHARDS as f64 {
        assert!(
            Instant::now() < deadline,
            "the compactor did not claim every shard:\n{}",
            comp.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Cut for 8 s: its lease runs out and it gives every claim up.
    let cut = Instant::now();
    link.cut();
    let mut dropped = None;
    while cut.elapsed() < Duration::from_secs(8) {
        if dropped.is_none() && claimed(&comp.metrics().await) == 0.0 {
            dropped = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped = dropped.unwrap_or_else(|| {
        panic!(
            "the compactor still claims shards 8 s into its cut:\n{}",
            comp.process.log_tail()
        )
    });
    println!("the compactor gave its claims up {dropped:?} into the cut");
    link.heal();
    let healed = Instant::now();

    // Within 10 s it claims shards again.
    loop {
        let text = comp.metrics().await;
        if claimed(&text) > 0.0 {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "the compactor claims nothing {:?} after the heal:\n{}",
            healed.elapsed(),
            comp.process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the compactor claims shards again {:?} after the heal",
        healed.elapsed()
    );
    let text = comp.metrics().await;
    let lost = samples(&text, "tessera_compactor_lease_lost_total");
    assert!(
        sum(&text, "tessera_compactor_lease_lost_total") >= 1.0,
        "{lost:?}"
    );
    assert!(
        sum(&text, "tessera_compactor_lease_rejoins_total") >= 1.0,
        "no rejoin counted"
    );
    let log = comp.process.log_text();
    assert!(
        log.contains("rejoined the cluster"),
        "no rejoin logged:\n{}",
        comp.process.log_tail()
    );
    println!("compactor lease losses {lost:?}");
}

/// A member key deleted under a live lease (an operator, an etcd restore) does not leave its
/// gateway out of placement for good: it registers again, and the cluster settles with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_key_deleted_under_a_live_lease_is_registered_again() {
    let c = Cluster::start(2).await;
    c.await_stable(&[0, 1], Duration::from_secs(30)).await;
    let mut etcd = c.etcd.client().await;
    etcd.delete("/tessera/test/members/gw0", None)
        .await
        .unwrap();
    let deleted = Instant::now();
    while !c.gw(0).process.log_text().contains("registered again") {
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "gw0 did not register again:\n{}",
            c.gw(0).process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "gw0 registered again {:?} after its key was deleted",
        deleted.elapsed()
    );
    c.await_stable(&[0, 1], Duration::from_secs(10)).await;
}
