//! Handler tests without processes: the router over an embedded node on an in-memory object
//! store, driven with `tower::ServiceExt::oneshot`. They pin statuses, headers and error bodies
//! of the API byte for byte where the README documents them.

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use gateway::GatewayConfig;
use serde_json::{json, Value};
use tessera::shard_for_key;
use tower::ServiceExt;

mod common;

const SHARDS: u32 = 4;

/// A gateway over a fresh embedded node, with small body limits.
async fn app() -> Router {
    let mut config = GatewayConfig::default();
    config.object_store.url = "memory://".into();
    config.storage.shard_count = SHARDS;
    config.limits.max_value_bytes = 64;
    config.limits.max_batch_ops = 3;
    config.limits.max_batch_body_bytes = 4096;
    common::app(config).await
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    /// Asserts an error answer: status, code, and the documented body shape.
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/json",
            "{body}"
        );
        assert!(self.headers.get(header::RETRY_AFTER).is_none());
    }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = to_bytes(resp.into_body(), usize::MAX).await.expect("body");
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Method::GET, uri, &[], Body::empty()).await
}

async fn put(app: &Router, uri: &str, value: &'static str) -> Reply {
    call(app, Method::PUT, uri, &[], value).await
}

async fn batch(app: &Router, body: Value) -> Reply {
    call(app, Method::POST, "/v1/batch", &[], body.to_string()).await
}

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

#[tokio::test]
async fn put_get_delete_round_trip() {
    let app = app().await;
    let put = put(&app, "/v1/kv/a%2Fb", "hello").await;
    assert_eq!(put.status, StatusCode::OK);
    let version = put.json()["version"].as_u64().expect("version");
    assert_eq!(put.headers[header::ETAG], format!("\"{version}\""));

    let read = get(&app, "/v1/kv/a%2Fb").await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body, "hello");
    assert_eq!(read.headers[header::ETAG], format!("\"{version}\""));
    assert_eq!(
        read.headers[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    // Served by the owner: from its store or its hot-key cache (filled by the write).
    let source = &read.headers["x-tessera-read"];
    assert!(source == "strong" || source == "cache", "{source:?}");

    let eventual = get(&app, "/v1/kv/a%2Fb?consistency=eventual").await;
    assert_eq!(
        (eventual.status, &eventual.body[..]),
        (StatusCode::OK, &b"hello"[..])
    );

    let deleted = call(&app, Method::DELETE, "/v1/kv/a%2Fb", &[], Body::empty()).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert!(deleted.body.is_empty());
}

#[tokio::test]
async fn a_missing_key_is_404_not_found() {
    let app = app().await;
    let reply = get(&app, "/v1/kv/nope").await;
    reply.assert_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        reply.body,
        r#"{"error":{"code":"not_found","message":"key not found"}}"#
    );
}

#[tokio::test]
async fn an_if_match_mismatch_is_412_with_the_current_version() {
    let app = app().await;
    let version = put(&app, "/v1/kv/k", "v1").await.json()["version"].clone();
    let stale = format!("\"{}\"", version.as_u64().unwrap() + 1);
    let headers = [("if-match", stale.as_str())];

    let reply = call(&app, Method::PUT, "/v1/kv/k", &headers, "v2").await;
    reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    let expected = json!({"error": {
        "code": "precondition_failed",
        "message": format!("precondition failed: current version is {version}"),
        "current_version": version,
    }});
    assert_eq!(reply.json(), expected);

    let reply = call(&app, Method::DELETE, "/v1/kv/k", &headers, Body::empty()).await;
    reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    // Absent keys have no current version.
    let reply = call(&app, Method::PUT, "/v1/kv/other", &headers, "v").await;
    reply.assert_error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    assert!(reply.json()["error"].get("current_version").is_none());
}

#[tokio::test]
async fn bad_inputs_are_4xx_json() {
    let app = app().await;
    let long_key = format!("/v1/kv/{}", "k".repeat(1025));
    let cases: Vec<(Reply, StatusCode, &str)> = vec![
        (
            put(&app, "/v1/kv/k?ttl=0", "v").await,
            StatusCode::BAD_REQUEST,
            "invalid_ttl",
        ),
        (
            put(&app, "/v1/kv/k?ttl=soon", "v").await,
            StatusCode::BAD_REQUEST,
            "invalid_ttl",
        ),
        (
            put(&app, "/v1/kv/k?tll=5", "v").await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            put(&app, &long_key, "v").await,
            StatusCode::BAD_REQUEST,
            "key_too_long",
        ),
        (
            get(&app, "/v1/kv/").await,
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            get(&app, "/v1/kv/%zz").await,
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            call(&app, Method::PUT, "/v1/kv/k", &[], "v".repeat(65)).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
        ),
        (
            call(&app, Method::PUT, "/v1/kv/k", &[("if-match", "3")], "v").await,
            StatusCode::BAD_REQUEST,
            "invalid_etag",
        ),
        (
            call(
                &app,
                Method::DELETE,
                "/v1/kv/k",
                &[("if-none-match", "*")],
                Body::empty(),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "invalid_precondition",
        ),
        (
            get(&app, "/v1/kv/k?consistency=weak").await,
            StatusCode::BAD_REQUEST,
            "invalid_consistency",
        ),
        (
            call(&app, Method::POST, "/v1/batch", &[], "{").await,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            batch(&app, json!({"ops": [{"op": "put", "key": b64("k")}]})).await,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            call(&app, Method::POST, "/v1/batch", &[], "x".repeat(5000)).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
        ),
        (
            get(&app, "/v1/kv?limit=0").await,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            get(&app, "/v1/kv?limit=5000").await,
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            get(&app, "/v1/kv?cursor=%21").await,
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            get(&app, "/v1/kv?shards=0").await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            get(&app, "/nowhere").await,
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
        (
            call(&app, Method::POST, "/v1/kv/k", &[], Body::empty()).await,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (reply, status, code) in cases {
        reply.assert_error(status, code);
    }
}

/// Every rule the core enforces on input reaches the client as a 400 with its own code.
#[tokio::test]
async fn the_cores_input_codes_reach_the_client() {
    let app = app().await;
    let put_op = |key: &str| json!({"op": "put", "key": b64(key), "value": b64("v")});
    let (a, b) = keys_on_two_shards();
    let cases = [
        (json!({"ops": []}), "invalid_batch"),
        (json!({"ops": [put_op("k"), put_op("k")]}), "duplicate_key"),
        (
            json!({"ops": [put_op("{t}1"), put_op("{t}2"), put_op("{t}3"), put_op("{t}4")]}),
            "batch_too_large",
        ),
        (json!({"ops": [put_op("")]}), "invalid_key"),
        (
            json!({"ops": [{"op": "put", "key": b64("k"), "value": b64("v"), "ttl": u64::MAX}]}),
            "invalid_ttl",
        ),
        (json!({"ops": [put_op(&a), put_op(&b)]}), "cross_shard"),
    ];
    for (body, code) in cases {
        batch(&app, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, code);
    }
    let forwarded = [("x-tessera-forwarded", "1")];
    let reply = call(
        &app,
        Method::GET,
        "/v1/kv?shards=99",
        &forwarded,
        Body::empty(),
    )
    .await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid_query");
}

/// Two keys of different shards.
fn keys_on_two_shards() -> (String, String) {
    let first = shard_for_key(b"key0", SHARDS);
    let other = (1..)
        .map(|i| format!("key{i}"))
        .find(|k| shard_for_key(k.as_bytes(), SHARDS) != first)
        .expect("some key on another shard");
    ("key0".into(), other)
}

#[tokio::test]
async fn a_batch_then_a_paged_scan() {
    let app = app().await;
    let ops: Vec<Value> = ["{u}a", "{u}b", "{u}c"]
        .iter()
        .map(|k| json!({"op": "put", "key": b64(k), "value": b64(k)}))
        .collect();
    let written = batch(&app, json!({ "ops": ops })).await;
    assert_eq!(written.status, StatusCode::OK, "{:?}", written.body);
    let version = written.json()["version"].clone();

    let page = get(&app, "/v1/kv?prefix=%7Bu%7D&limit=2").await;
    assert_eq!(page.status, StatusCode::OK);
    let page = page.json();
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [b64("{u}a"), b64("{u}b")]);
    assert_eq!(page["items"][0]["version"], version);
    let cursor = page["next"].as_str().expect("a cursor");

    let rest = get(
        &app,
        &format!("/v1/kv?prefix=%7Bu%7D&limit=2&cursor={cursor}"),
    )
    .await;
    let rest = rest.json();
    assert_eq!(rest["items"][0]["key"], b64("{u}c"));
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next"].is_null());
}
