//! The HTTP API contract, against the real gateway binary, on a local directory store and on a
//! real S3-compatible server (s3s-fs). Every test runs on both backends.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{client, enc, Gateway, GatewayOpts, S3Server, Store};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

/// One gateway on one backend, with everything it needs kept alive.
struct Env {
    gw: Gateway,
    http: reqwest::Client,
    _s3: Option<S3Server>,
    _dir: TempDir,
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    File,
    S3,
}

async fn env(backend: Backend) -> Env {
    env_with(backend, |o| o).await
}

async fn env_with(backend: Backend, f: impl FnOnce(GatewayOpts) -> GatewayOpts) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (s3, store) = match backend {
        Backend::File => (None, Store::Dir(dir.path().join("data"))),
        Backend::S3 => {
            let s3 = S3Server::start();
            let store = Store::s3(&s3, "api");
            (Some(s3), store)
        }
    };
    let opts = f(GatewayOpts::new(store));
    let log = dir.path().join("gateway.log");
    let gw = tokio::task::spawn_blocking(move || opts.start(&log))
        .await
        .unwrap();
    Env {
        gw,
        http: client(),
        _s3: s3,
        _dir: dir,
    }
}

impl Env {
    async fn put(&self, key: &str, value: &[u8], headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.http.put(self.gw.kv(key)).body(value.to_vec());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, key: &str) -> reqwest::Response {
        self.http.get(self.gw.kv(key)).send().await.unwrap()
    }

    async fn batch(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/batch", self.gw.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

/// Asserts the status and the stable error code of an error answer.
async fn assert_error(resp: reqwest::Response, status: StatusCode, code: &str) {
    assert_error_of("the request", resp, status, code).await;
}

/// `assert_error`, its failure messages naming `request`.
async fn assert_error_of(request: &str, resp: reqwest::Response, status: StatusCode, code: &str) {
    assert_eq!(resp.status(), status, "{request}: expected {status} {code}");
    let body: Value = resp.json().await.expect("error bodies are JSON");
    assert_eq!(body["error"]["code"], code, "{request}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{request}: no error message in {body}"
    );
}

/// A request of a table-driven test and the answer it must get: by default, 200 OK.
struct Case {
    method: Method,
    /// The path and query string, after the gateway's URL.
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<Vec<u8>>,
    status: StatusCode,
    /// The stable error code of an error answer; `None` for a success (its status is checked).
    code: Option<&'static str>,
}

fn case(method: Method, path: impl Into<String>) -> Case {
    Case {
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        status: StatusCode::OK,
        code: None,
    }
}

impl Case {
    fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The answer must be an error with this status and code.
    fn fails(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    /// Sends the request to `e`'s gateway and asserts the answer.
    async fn check(self, e: &Env) {
        let name = self.to_string();
        let mut req = e
            .http
            .request(self.method, format!("{}{}", e.gw.url, self.path));
        for (k, v) in self.headers {
            req = req.header(k, v);
        }
        if let Some(body) = self.body {
            req = req.body(body);
        }
        let resp = req.send().await.unwrap();
        match self.code {
            Some(code) => assert_error_of(&name, resp, self.status, code).await,
            None => assert_eq!(resp.status(), self.status, "{name}"),
        }
    }
}

/// Names a case in failure messages. Paths are cut at 80 bytes; their length tells apart those
/// with long keys.
impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.path.len();
        write!(f, "{} {:.80} ({len}-byte path", self.method, self.path)?;
        for (k, v) in &self.headers {
            write!(f, ", {k}: {v}")?;
        }
        if let Some(body) = &self.body {
            write!(f, ", {}-byte body", body.len())?;
        }
        write!(f, ")")
    }
}

fn version_of(resp: &reqwest::Response) -> u64 {
    let etag = resp.headers()["etag"].to_str().unwrap();
    etag.trim_matches('"').parse().unwrap()
}

fn b64(s: &[u8]) -> String {
    STANDARD.encode(s)
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod file { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::File).await } )* }
        mod s3 { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Backend::S3).await } )* }
    };
}

on_both_backends!(
    crud,
    binary_keys,
    cas_race,
    create_if_absent_race,
    ttl_expiry,
    scan_pagination,
    batch_atomicity,
    malformed_input,
);

async fn crud(b: Backend) {
    let e = env(b).await;
    assert_error(e.get("missing").await, StatusCode::NOT_FOUND, "not_found").await;

    let r = e.put("greeting", b"hello", &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v1 = version_of(&r);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["version"], v1);

    // The first read fills the owner's hot-key cache (writes alone do not), the next is
    // served from it.
    let r = e.get("greeting").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(version_of(&r), v1);
    assert_eq!(r.headers()["x-tessera-read"], "strong");
    let r = e.get("greeting").await;
    assert_eq!(version_of(&r), v1);
    assert_eq!(r.headers()["x-tessera-read"], "cache");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hello");

    let r = e
        .http
        .get(format!("{}?consistency=eventual", e.gw.kv("greeting")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let v2 = version_of(&e.put("greeting", b"hi again", &[]).await);
    assert!(v2 > v1, "versions increase: {v1} then {v2}");
    // The write updated the cached entry.
    let r = e.get("greeting").await;
    assert_eq!(version_of(&r), v2);
    assert_eq!(r.headers()["x-tessera-read"], "cache");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"hi again");

    let r = e.http.delete(e.gw.kv("greeting")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_error(e.get("greeting").await, StatusCode::NOT_FOUND, "not_found").await;
    // Deleting an absent key is still 204.
    let r = e.http.delete(e.gw.kv("greeting")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Re-creating after a delete never reuses a version.
    let v3 = version_of(&e.put("greeting", b"back", &[]).await);
    assert!(v3 > v2, "{v3} > {v2}");

    // Empty values are values.
    assert_eq!(e.put("empty", b"", &[]).await.status(), StatusCode::OK);
    let r = e.get("empty").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.unwrap().is_empty());

    // Health, readiness and metrics.
    let r = e
        .http
        .get(format!("{}/healthz", e.gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = e
        .http
        .get(format!("{}/readyz", e.gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = common::get_text(&e.http, format!("{}/metrics", e.gw.url)).await;
    assert!(
        text.contains(
            "tessera_http_requests_total{method=\"PUT\",route=\"/v1/kv/{*key}\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("tessera_http_request_duration_seconds_bucket"));
    assert!(text.contains("tessera_shards 8"));
    assert!(text.contains("tessera_shards_open 8"));
    assert!(text.contains("tessera_storage_errors_total 0"));
    assert!(text.contains("tessera_http_request_bytes_total"));
    // The writes above went through the commit log, in at least one object each flush.
    let objects = common::metric(&text, "tessera_log_objects_total");
    assert!(objects >= 1.0, "{text}");
    assert!(common::metric(&text, "tessera_log_writes_total") >= objects);
    assert!(common::metric(&text, "tessera_log_bytes_total") > 0.0);
    assert!(common::metric(&text, "tessera_log_flush_seconds_count") >= 1.0);
    // The S3 backend really stored the cluster in the S3 server.
    if let Some(s3) = &e._s3 {
        assert!(s3.bucket_dir().join("api/cluster.json").is_file());
        assert!(s3.bucket_dir().join("api/shards/00000").is_dir());
    }
}

async fn binary_keys(b: Backend) {
    let e = env(b).await;
    let key: Vec<u8> = vec![0, 1, 0xff, b'/', b' ', b'%', b'?', b'#', 0x80];
    let value: Vec<u8> = (0..=255u8).collect();
    let url = format!("{}/v1/kv/{}", e.gw.url, enc(&key));
    let r = e.http.put(&url).body(value.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = e.http.get(&url).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), value.as_slice());
    // A key with slashes is one key, not a path.
    assert_eq!(e.put("a/b/c", b"x", &[]).await.status(), StatusCode::OK);
    assert_eq!(e.get("a/b/c").await.bytes().await.unwrap().as_ref(), b"x");
    // The scan returns the binary key intact.
    let page: Value = common::get_json(
        &e.http,
        format!("{}/v1/kv?prefix={}", e.gw.url, enc(&key[..3])),
    )
    .await;
    assert_eq!(page["items"][0]["key"], b64(&key));
    assert_eq!(page["items"][0]["value"], b64(&value));
}

async fn cas_race(b: Backend) {
    let e = Arc::new(env(b).await);
    let v0 = version_of(&e.put("counter", b"0", &[]).await);
    // Rounds of 8 concurrent If-Match writers on the same version: exactly one wins each round.
    let mut version = v0;
    for round in 0..5 {
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let e = Arc::clone(&e);
                let etag = format!("\"{version}\"");
                tokio::spawn(async move {
                    let value = format!("round{round}-writer{w}");
                    let r = e
                        .put("counter", value.as_bytes(), &[("if-match", &etag)])
                        .await;
                    let status = r.status();
                    let v = (status == StatusCode::OK).then(|| version_of(&r));
                    (status, v, value)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            let (status, v, value) = t.await.unwrap();
            match status {
                StatusCode::OK => winners.push((v.unwrap(), value)),
                StatusCode::PRECONDITION_FAILED => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner, got {winners:?}"
        );
        let (won_version, value) = winners.pop().unwrap();
        assert!(won_version > version);
        let r = e.get("counter").await;
        assert_eq!(version_of(&r), won_version);
        assert_eq!(r.bytes().await.unwrap().as_ref(), value.as_bytes());
        version = won_version;
    }
    // A stale ETag loses and reports the current version.
    let r = e
        .put("counter", b"late", &[("if-match", &format!("\"{v0}\""))])
        .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "precondition_failed");
    assert_eq!(body["error"]["current_version"], version);
    // If-Match: * requires existence.
    let r = e.put("nobody", b"x", &[("if-match", "*")]).await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // DELETE with a stale If-Match fails and leaves the key.
    let r = e
        .http
        .delete(e.gw.kv("counter"))
        .header("if-match", format!("\"{v0}\""))
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    let r = e
        .http
        .delete(e.gw.kv("counter"))
        .header("if-match", format!("\"{version}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn create_if_absent_race(b: Backend) {
    let e = Arc::new(env(b).await);
    let tasks: Vec<_> = (0..10)
        .map(|w| {
            let e = Arc::clone(&e);
            tokio::spawn(async move {
                e.put(
                    "lock",
                    format!("owner{w}").as_bytes(),
                    &[("if-none-match", "*")],
                )
                .await
                .status()
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PRECONDITION_FAILED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1, "exactly one creator wins");
    // After a delete the key can be created again.
    e.http.delete(e.gw.kv("lock")).send().await.unwrap();
    let r = e.put("lock", b"again", &[("if-none-match", "*")]).await;
    assert_eq!(r.status(), StatusCode::OK);
}

async fn ttl_expiry(b: Backend) {
    let e = env(b).await;
    let r = e
        .http
        .put(format!("{}?ttl=1", e.gw.kv("ttl:short")))
        .body("soon gone")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    e.put("ttl:long", b"stays", &[]).await;
    assert_eq!(e.get("ttl:short").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_error(e.get("ttl:short").await, StatusCode::NOT_FOUND, "not_found").await;
    let page: Value = common::get_json(&e.http, format!("{}/v1/kv?prefix=ttl%3A", e.gw.url)).await;
    let keys: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].clone())
        .collect();
    assert_eq!(
        keys,
        vec![json!(b64(b"ttl:long"))],
        "expired keys never appear in scans"
    );
    // An expired key counts as absent for If-None-Match.
    let r = e.put("ttl:short", b"new", &[("if-none-match", "*")]).await;
    assert_eq!(r.status(), StatusCode::OK);
    // A later plain put clears the TTL.
    let r = e
        .http
        .put(format!("{}?ttl=1", e.gw.kv("ttl:reset")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    e.put("ttl:reset", b"forever", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(e.get("ttl:reset").await.status(), StatusCode::OK);
}

async fn scan_pagination(b: Backend) {
    let e = Arc::new(env(b).await);
    let mut expected = BTreeMap::new();
    let puts: Vec<_> = (0..230)
        .map(|i| {
            let e = Arc::clone(&e);
            let key = format!("scan:{i:04}");
            tokio::spawn(async move {
                let r = e.put(&key, format!("v{i}").as_bytes(), &[]).await;
                assert_eq!(r.status(), StatusCode::OK);
                (key, version_of(&r))
            })
        })
        .collect();
    for p in puts {
        let (key, v) = p.await.unwrap();
        expected.insert(key, v);
    }
    e.put("scao", b"outside", &[]).await;
    e.put("scan;", b"outside", &[]).await;
    // Page through with limit 37: every key exactly once, in order, with its version.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/v1/kv?prefix=scan%3A&limit=37", e.gw.url);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = common::get_json(&e.http, url).await;
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            let key =
                String::from_utf8(STANDARD.decode(item["key"].as_str().unwrap()).unwrap()).unwrap();
            assert_eq!(item["version"], expected[&key]);
            seen.push(key);
        }
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let want: Vec<_> = expected.keys().cloned().collect();
    assert_eq!(seen, want);
    assert_eq!(pages, 7);
    // Keys spread over every shard, so the merge really crossed shards.
    // start/end bounds: [scan:0100, scan:0110).
    let page: Value = common::get_json(
        &e.http,
        format!("{}/v1/kv?start=scan%3A0100&end=scan%3A0110", e.gw.url),
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 10);
    assert!(page["next"].is_null());
    // The default page size is 100.
    let page: Value = common::get_json(&e.http, format!("{}/v1/kv?prefix=scan%3A", e.gw.url)).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 100);
    assert!(page["next"].is_string());
}

async fn batch_atomicity(b: Backend) {
    let e = env(b).await;
    // Keys sharing the hash tag {u1} share a shard.
    let r = e
        .batch(json!({"ops": [
            {"op": "put", "key": b64(b"user:{u1}:name"), "value": b64(b"Ada")},
            {"op": "put", "key": b64(b"user:{u1}:email"), "value": b64(b"ada@example.com"), "ttl": 3600},
            {"op": "put", "key": b64(b"user:{u1}:plan"), "value": b64(b"free"), "if_absent": true},
        ]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = version_of(&r);
    for k in ["user:{u1}:name", "user:{u1}:email", "user:{u1}:plan"] {
        assert_eq!(
            version_of(&e.get(&enc(k.as_bytes())).await),
            v,
            "one version per batch"
        );
    }
    // One failing precondition: nothing in the batch is applied.
    let r = e
        .batch(json!({"ops": [
            {"op": "put", "key": b64(b"user:{u1}:name"), "value": b64(b"Grace")},
            {"op": "delete", "key": b64(b"user:{u1}:email")},
            {"op": "put", "key": b64(b"user:{u1}:plan"), "value": b64(b"pro"), "if_match": v + 1000},
        ]}))
        .await;
    assert_error(r, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;
    let r = e.get(&enc(b"user:{u1}:name")).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"Ada");
    assert_eq!(
        e.get(&enc(b"user:{u1}:email")).await.status(),
        StatusCode::OK
    );
    // With the right version, all of it applies.
    let r = e
        .batch(json!({"ops": [
            {"op": "put", "key": b64(b"user:{u1}:name"), "value": b64(b"Grace")},
            {"op": "delete", "key": b64(b"user:{u1}:email")},
            {"op": "put", "key": b64(b"user:{u1}:plan"), "value": b64(b"pro"), "if_match": v},
        ]}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        e.get(&enc(b"user:{u1}:name"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b"Grace"
    );
    assert_eq!(
        e.get(&enc(b"user:{u1}:email")).await.status(),
        StatusCode::NOT_FOUND
    );
    // Keys of different shards: 400 cross_shard, naming hash tags.
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let ops: Vec<Value> = keys
        .iter()
        .map(|k| json!({"op": "put", "key": b64(k.as_bytes()), "value": b64(b"x")}))
        .collect();
    let r = e.batch(json!({ "ops": ops })).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "cross_shard");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("hash tag"));
    for k in &keys {
        assert_eq!(
            e.get(k).await.status(),
            StatusCode::NOT_FOUND,
            "nothing applied"
        );
    }
    // Malformed batches.
    for (body, code) in [
        (json!({"ops": []}), "invalid_batch"),
        (
            json!({"ops": [{"op": "put", "key": "!!", "value": "YQ=="}]}),
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "put", "key": "YQ=="}]}),
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "zap", "key": "YQ=="}]}),
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "put", "key": "YQ==", "value": "YQ==", "if_match": 1, "if_absent": true}]}),
            "invalid_json",
        ),
        (
            json!({"ops": [{"op": "put", "key": "YQ==", "value": "YQ=="}, {"op": "delete", "key": "YQ=="}]}),
            "duplicate_key",
        ),
        (
            json!({"ops": [{"op": "put", "key": "", "value": "YQ=="}]}),
            "invalid_key",
        ),
        (json!({"nope": 1}), "invalid_json"),
    ] {
        assert_error(e.batch(body).await, StatusCode::BAD_REQUEST, code).await;
    }
    let r = e
        .http
        .post(format!("{}/v1/batch", e.gw.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "invalid_json").await;
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"op": "delete", "key": b64(format!("{{t}}{i}").as_bytes())}))
        .collect();
    assert_error(
        e.batch(json!({ "ops": too_many })).await,
        StatusCode::BAD_REQUEST,
        "batch_too_large",
    )
    .await;
}

async fn malformed_input(b: Backend) {
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const MAX_VALUE: usize = 1024 * 1024;
    let e = env(b).await;
    let mut cases = vec![
        // Keys.
        case(Method::GET, "/v1/kv/%zz").fails(BAD, "invalid_key"),
        case(Method::GET, "/v1/kv/ab%4").fails(BAD, "invalid_key"),
        case(Method::PUT, "/v1/kv/")
            .body("x")
            .fails(BAD, "invalid_key"),
        case(Method::PUT, format!("/v1/kv/{}", "k".repeat(1025)))
            .body("x")
            .fails(BAD, "key_too_long"),
        case(Method::PUT, format!("/v1/kv/{}", "k".repeat(1024))).body("x"),
        // Values.
        case(Method::PUT, "/v1/kv/big")
            .body(vec![7u8; MAX_VALUE + 1])
            .fails(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
        case(Method::PUT, "/v1/kv/big").body(vec![7u8; MAX_VALUE]),
        case(Method::GET, "/v1/kv/nope-big").fails(StatusCode::NOT_FOUND, "not_found"),
    ];
    // Preconditions.
    cases.extend(["42", "W/\"42\"", "\"x\"", "\"-1\""].map(|etag| {
        case(Method::PUT, "/v1/kv/k")
            .body("x")
            .header("if-match", etag)
            .fails(BAD, "invalid_etag")
    }));
    cases.extend([
        case(Method::PUT, "/v1/kv/k")
            .body("x")
            .header("if-none-match", "\"3\"")
            .fails(BAD, "invalid_precondition"),
        case(Method::PUT, "/v1/kv/k")
            .body("x")
            .header("if-none-match", "*")
            .header("if-match", "\"1\"")
            .fails(BAD, "invalid_precondition"),
    ]);
    // TTL.
    let ttls = ["0", "-1", "abc", "1.5", "", "99999999999999999999"];
    cases.extend(ttls.map(|ttl| {
        case(Method::PUT, format!("/v1/kv/k?ttl={ttl}"))
            .body("x")
            .fails(BAD, "invalid_ttl")
    }));
    cases.extend([
        case(Method::PUT, "/v1/kv/k?ttl=999999999")
            .body("x")
            .fails(BAD, "invalid_ttl"),
        // Query strings.
        case(Method::GET, "/v1/kv/k?bogus=1").fails(BAD, "invalid_query"),
        case(Method::GET, "/v1/kv/k?consistency=maybe").fails(BAD, "invalid_consistency"),
        case(Method::GET, "/v1/kv?limit=0").fails(BAD, "invalid_limit"),
        case(Method::GET, "/v1/kv?limit=1001").fails(BAD, "invalid_limit"),
        case(Method::GET, "/v1/kv?cursor=***").fails(BAD, "invalid_cursor"),
        case(Method::GET, "/v1/kv?prefix=a&prefix=b").fails(BAD, "invalid_query"),
        // Routes and methods.
        case(Method::GET, "/v2/kv/k").fails(StatusCode::NOT_FOUND, "route_not_found"),
        case(Method::POST, "/v1/kv/k").fails(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        case(Method::GET, "/v1/batch").fails(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ]);
    for c in cases {
        c.check(&e).await;
    }
    // Nothing above wrote the keys it was refused.
    assert_eq!(e.get("k").await.status(), StatusCode::NOT_FOUND);
}

/// Limits are configurable: a gateway started with smaller limits enforces them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_apply() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "[limits]\nmax_key_bytes = 8\nmax_value_bytes = 16\n",
    )
    .unwrap();
    let e = env_with(Backend::File, |o| {
        o.arg("--config").arg(config.to_str().unwrap())
    })
    .await;
    for c in [
        case(Method::PUT, "/v1/kv/123456789")
            .body("x")
            .fails(StatusCode::BAD_REQUEST, "key_too_long"),
        case(Method::PUT, "/v1/kv/k")
            .body([0u8; 17])
            .fails(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large"),
        case(Method::PUT, "/v1/kv/12345678").body([0u8; 16]),
    ] {
        c.check(&e).await;
    }
}

/// Bad configuration stops the gateway with a clear message and a non-zero exit code, and a
/// cluster created with one shard count refuses a gateway configured with another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_shard_count_mismatch_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::gateway_bin())
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (status, err) = run(&["--store", data, "--shards", "0"]);
    assert!(!status.success());
    assert!(err.contains("shard_count"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten_addr = 1\n").unwrap();
    let (status, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(!status.success());
    assert!(err.contains("unknown field"), "{err}");
    let (status, err) = run(&["--store", "gs://bucket"]);
    assert!(!status.success());
    assert!(err.contains("unsupported scheme"), "{err}");

    // Create a 4-shard cluster, stop it, then try to open it with 8 shards.
    let opts = GatewayOpts {
        shards: 4,
        ..GatewayOpts::new(Store::Dir(dir.path().join("data")))
    };
    let log = dir.path().join("gw.log");
    let mut gw = tokio::task::spawn_blocking(move || opts.start(&log))
        .await
        .unwrap();
    assert!(gw.process.terminate(Duration::from_secs(30)).success());
    let (status, err) = run(&["--store", data, "--shards", "8"]);
    assert!(!status.success());
    assert!(err.contains("created with 4 shards"), "{err}");
}
