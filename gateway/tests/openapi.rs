//! `docs/openapi.json` against the router: every route the router serves is documented, and
//! every documented route exists. Routes served are read from the router's definition
//! (`routes::router` in src/routes.rs, its `.route(path, methods)` calls) and probed: each
//! documented method must not answer `route_not_found`/`method_not_allowed`, and every other
//! method on a documented path must. The document is also checked as OpenAPI 3 by
//! `openapi-spec-validator` (installed by scripts/test.sh).

use std::collections::BTreeSet;
use std::path::Path;

use axum::body::{to_bytes, Body};
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use gateway::GatewayConfig;
use serde_json::Value;
use tower::ServiceExt;

mod common;

/// Methods the probe tries on every documented path.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

fn spec() -> Value {
    serde_json::from_str(gateway::openapi::SPEC).expect("docs/openapi.json is JSON")
}

/// (path, method) pairs the document describes, paths in OpenAPI form (`/v1/kv/{key}`).
fn documented() -> BTreeSet<(String, String)> {
    let spec = spec();
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method).is_some() {
                out.insert((path.clone(), method.to_string()));
            }
        }
    }
    out
}

/// (path, method) pairs of the router's `.route(...)` calls, `{*key}` written `{key}`.
fn served() -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/routes.rs"))
        .expect("read src/routes.rs");
    let app = &src[src.find("pub fn router(").expect("fn router")..];
    let app = &app[..app.find("\n}\n").expect("end of fn router")];
    let mut out = BTreeSet::new();
    for call in app.split(".route(").skip(1) {
        let path = call.split('"').nth(1).expect("a literal path");
        let path = path.replace("{*", "{");
        // The method router: up to the end of this `.route(...)` call.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(call.len(), |(i, _)| i);
        for method in METHODS {
            if calls(&call[..end], method) {
                out.insert((path.clone(), method.to_string()));
            }
        }
    }
    assert!(
        out.len() > 5,
        "could not read the routes of src/routes.rs: {out:?}"
    );
    out
}

/// Whether `text` calls the function `f` (`get(`, `.put(`, `routing::post(`).
fn calls(text: &str, f: &str) -> bool {
    text.match_indices(&format!("{f}("))
        .any(|(i, _)| !text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

async fn app() -> Router {
    let mut config = GatewayConfig::default();
    config.object_store.url = "memory://".into();
    config.storage.shard_count = 2;
    common::app(config).await
}

/// The error code of `method path` (None if the answer is not an error body).
async fn code_of(app: &Router, method: &str, path: &str) -> (StatusCode, Option<String>) {
    let uri = path.replace("{key}", "k");
    let req = Request::builder()
        .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
        .uri(&uri)
        .body(Body::from(if method == "post" { "{}" } else { "" }))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
    (status, code)
}

fn unrouted(code: &Option<String>) -> bool {
    matches!(
        code.as_deref(),
        Some("route_not_found" | "method_not_allowed")
    )
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let (documented, served) = (documented(), served());
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from docs/openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented routes the router lacks: {unserved:?}"
    );
}

#[tokio::test]
async fn documented_methods_answer_and_others_do_not() {
    let app = app().await;
    let documented = documented();
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        for method in METHODS {
            let (status, code) = code_of(&app, method, path).await;
            let listed = documented.contains(&(path.clone(), method.to_string()));
            assert_eq!(
                !unrouted(&code),
                listed,
                "{} {path}: {status} {code:?}, documented: {listed}",
                method.to_uppercase()
            );
        }
    }
}

#[tokio::test]
async fn the_document_is_served_and_is_valid_openapi_3() {
    let app = app().await;
    let req = Request::get("/v1/openapi.json")
        .body(Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    assert_eq!(body, gateway::openapi::SPEC.as_bytes());
    assert!(spec()["openapi"].as_str().unwrap().starts_with("3."));

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("python3 (scripts/test.sh installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
