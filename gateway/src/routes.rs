//! The route table and the HTTP handlers: parse the request, call the service
//! (`crate::service`), render the answer. Errors convert to [`ApiError`] with `?`. Adding an
//! endpoint means a line in [`router`], a handler here, a service function, docs/api.md (and
//! docs/openapi.json, which a test checks against [`router`]) and a test.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tessera::{Error, Precondition, Read, ReadSource, ScanRequest, ShardId, WriteKind, WriteOp};

use crate::codec::{self, Query};
use crate::error::{ApiError, ErrorCode};
use crate::forward::Forwardable;
use crate::limits;
use crate::service;
use crate::{openapi, ui, AppState};

type Shared = State<Arc<AppState>>;

/// Every route of the API, each to its handler (the layers in front of them are added by
/// [`crate::app`]).
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/kv", get(scan))
        .route("/v1/kv/", get(empty_key).put(empty_key).delete(empty_key))
        .route(
            "/v1/kv/{*key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/batch", post(batch))
        .route("/v1/cluster", get(cluster))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ui", get(ui::page))
        .route("/v1/openapi.json", get(openapi::spec))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Response header naming what served a read: `strong`, `cache` or `eventual`.
const READ_HEADER: &str = "x-tessera-read";
/// Response header of eventual reads: the staleness bound in milliseconds.
const STALENESS_HEADER: &str = "x-tessera-staleness-bound-ms";

/// `GET /v1/kv/{key}?consistency=strong|eventual`.
pub async fn get_key(
    State(state): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = codec::key_from_path(uri.path())?;
    let consistency = Query::parse(uri.query(), &["consistency"])?.consistency()?;
    let req = Forwardable::new(&state, method, &uri, headers, Bytes::new());
    service::get(&state, &key, consistency, &req)
        .await?
        .respond(|read| render_read(&state, read))
}

/// A point read's answer: the value with its ETag and what served it, or `404`.
fn render_read(state: &AppState, read: Read) -> Result<Response, ApiError> {
    let entry = read.entry.ok_or(Error::NotFound)?;
    let mut resp = entry.value.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::ETAG, header_value(&codec::etag(entry.version)));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(READ_HEADER, HeaderValue::from_static(read.source.as_str()));
    if read.source == ReadSource::Eventual {
        let bound = state.node.config().staleness_bound().as_millis();
        headers.insert(STALENESS_HEADER, HeaderValue::from(bound as u64));
    }
    Ok(resp)
}

/// `PUT /v1/kv/{key}?ttl=N`.
pub async fn put_key(
    State(state): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = codec::key_from_path(uri.path())?;
    let ttl = Query::parse(uri.query(), &["ttl"])?.positive("ttl", ErrorCode::InvalidTtl)?;
    let precondition = codec::precondition(&headers)?;
    let limit = state.config.limits.max_value_bytes;
    let value = read_body(body, limit, || {
        Error::ValueTooLarge {
            size: limit + 1,
            limit,
        }
        .into()
    })
    .await?;
    let req = Forwardable::new(&state, method, &uri, headers, value.clone());
    let op = WriteOp {
        key,
        kind: WriteKind::Put {
            value,
            ttl_secs: ttl,
        },
        precondition,
    };
    service::write(&state, vec![op], &req)
        .await?
        .respond(|version| Ok(versioned(version)))
}

/// `DELETE /v1/kv/{key}`.
pub async fn delete_key(
    State(state): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = codec::key_from_path(uri.path())?;
    Query::parse(uri.query(), &[])?;
    let precondition = codec::precondition(&headers)?;
    if precondition == Precondition::IfAbsent {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidPrecondition,
            "If-None-Match is not meaningful for DELETE",
        ));
    }
    let req = Forwardable::new(&state, method, &uri, headers, Bytes::new());
    let op = WriteOp {
        key,
        kind: WriteKind::Delete,
        precondition,
    };
    service::write(&state, vec![op], &req)
        .await?
        .respond(|_| Ok(StatusCode::NO_CONTENT.into_response()))
}

/// `PUT`/`GET`/`DELETE /v1/kv/` with no key.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request(
        ErrorCode::InvalidKey,
        "the key must not be empty: /v1/kv/{key}",
    )
}

/// `GET /v1/kv?prefix=&start=&end=&limit=&cursor=&consistency=`.
///
/// In cluster mode the gateway asks every owner for a page of its own shards (internal
/// parameter `shards`, forwarded requests only) and merges the pages.
pub async fn scan(
    State(state): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let fwd = Forwardable::new(&state, method, &uri, headers, Bytes::new());
    let mut allowed = vec!["prefix", "start", "end", "limit", "cursor", "consistency"];
    if fwd.forwarded {
        allowed.push("shards");
    }
    let q = Query::parse(uri.query(), &allowed)?;
    let consistency = q.consistency()?;
    let bytes = |name: &str| q.bytes(name).map(Bytes::copy_from_slice);
    let req = ScanRequest {
        prefix: bytes("prefix"),
        start: bytes("start"),
        end: bytes("end"),
        after: q.bytes("cursor").map(codec::uncursor).transpose()?,
        limit: q.positive("limit", ErrorCode::InvalidLimit)?.unwrap_or(0) as usize,
    };
    let shards = q
        .text("shards", ErrorCode::InvalidQuery)?
        .map(|list| {
            list.split(',')
                .map(|s| s.parse().map(ShardId))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ApiError::bad_request(ErrorCode::InvalidQuery, "bad shard list"))
        })
        .transpose()?;
    let page = service::scan(&state, &fwd, req, consistency, shards).await?;
    Ok(Json(codec::page_json(&page)))
}

/// One operation of `POST /v1/batch`. Keys and values are standard base64.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOp {
    op: BatchOpKind,
    key: String,
    value: Option<String>,
    ttl: Option<u64>,
    if_match: Option<u64>,
    #[serde(default)]
    if_absent: bool,
}

#[derive(Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum BatchOpKind {
    Put,
    Delete,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    ops: Vec<BatchOp>,
}

/// `POST /v1/batch`: `{"ops":[{"op":"put","key":"..","value":"..","ttl":60,"if_match":3},
/// {"op":"delete","key":"..","if_absent":false}]}` applied atomically.
pub async fn batch(
    State(state): Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let limit = state.config.limits.max_batch_body_bytes;
    let body = read_body(body, limit, || ApiError::batch_body_too_large(limit)).await?;
    let req: BatchRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(ErrorCode::InvalidJson, format!("invalid batch body: {e}"))
    })?;
    let ops = req
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| batch_op(i, op))
        .collect::<Result<Vec<_>, _>>()?;
    let fwd = Forwardable::new(&state, method, &uri, headers, body);
    service::write(&state, ops, &fwd)
        .await?
        .respond(|version| Ok(versioned(version)))
}

fn batch_op(i: usize, op: BatchOp) -> Result<WriteOp, ApiError> {
    let bad = |msg: &str| ApiError::bad_request(ErrorCode::InvalidJson, format!("ops[{i}]: {msg}"));
    let precondition = match (op.if_match, op.if_absent) {
        (Some(_), true) => return Err(bad("give if_match or if_absent, not both")),
        (Some(v), false) => Precondition::IfMatch(v),
        (None, true) => Precondition::IfAbsent,
        (None, false) => Precondition::None,
    };
    let kind = match (op.op, op.value) {
        (BatchOpKind::Put, Some(v)) => WriteKind::Put {
            value: codec::unb64(&format!("ops[{i}].value"), &v)?,
            ttl_secs: match op.ttl {
                Some(0) => return Err(bad("ttl must be a positive number of seconds")),
                ttl => ttl,
            },
        },
        (BatchOpKind::Put, None) => return Err(bad("a put needs a value")),
        (BatchOpKind::Delete, Some(_)) => return Err(bad("a delete takes no value")),
        (BatchOpKind::Delete, None) if op.ttl.is_some() => {
            return Err(bad("a delete takes no ttl"))
        }
        (BatchOpKind::Delete, None) => WriteKind::Delete,
    };
    Ok(WriteOp {
        key: codec::unb64(&format!("ops[{i}].key"), &op.key)?,
        kind,
        precondition,
    })
}

/// `GET /v1/cluster`: members, shard owners and this gateway's identity, as this gateway sees
/// them. Smart clients can route directly with it.
pub async fn cluster(State(state): Shared) -> Json<serde_json::Value> {
    let view = state.node.view();
    let shards: Vec<_> = (0..state.config.storage.shard_count)
        .map(|n| match view.owners.get(&n) {
            Some(o) => json!({"shard": n, "owner": o.id, "url": o.url, "epoch": o.epoch}),
            None => json!({"shard": n, "owner": null, "url": null, "epoch": null}),
        })
        .collect();
    Json(json!({
        "me": state.node.me(),
        "mode": if state.config.cluster.is_clustered() { "cluster" } else { "embedded" },
        "shard_count": state.config.storage.shard_count,
        "revision": view.revision,
        "members": view.members.values().collect::<Vec<_>>(),
        "shards": shards,
        "owned_here": state.node.owned_shards().len(),
    }))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: every shard is open and the gateway is not shutting down.
pub async fn readyz(State(state): Shared) -> Response {
    let open = state.node.owned_shards().len();
    let total = state.config.storage.shard_count as usize;
    // Embedded: every shard must be open. Cluster: this gateway is a member (it serves or
    // forwards every request).
    let ready = !state.shutdown.is_cancelled()
        && if state.config.cluster.is_clustered() {
            state.node.view().members.contains_key(&state.node.me().id)
        } else {
            open == total
        };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": ready, "shards_open": open, "shards": total })),
    )
        .into_response()
}

/// `GET /metrics`.
pub async fn metrics(State(state): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(&state.node),
    )
        .into_response()
}

/// Fallback for unknown paths.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::route_not_found(uri.path())
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Reads a body of at most `limit` bytes; `too_large` builds the error past it.
async fn read_body(
    body: Body,
    limit: usize,
    too_large: impl FnOnce() -> ApiError,
) -> Result<Bytes, ApiError> {
    to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        if inner.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else if let Some(timeout) = limits::body_timeout(&*inner) {
            ApiError::request_timeout(timeout)
        } else {
            ApiError::bad_request(
                ErrorCode::InvalidBody,
                format!("cannot read the request body: {inner}"),
            )
        }
    })
}

/// A `200 {"version": N}` answer with `ETag: "N"`.
fn versioned(version: u64) -> Response {
    let mut resp = Json(json!({ "version": version })).into_response();
    resp.headers_mut()
        .insert(header::ETAG, header_value(&codec::etag(version)));
    resp
}

fn header_value(s: &str) -> HeaderValue {
    // ETags are `"` + digits + `"`: always a valid header value.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}
