//! HTTP handlers. Each one parses the request, calls the core under the request deadline, and
//! renders the answer; errors convert to [`ApiError`] with `?`.

use std::future::Future;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tessera::{Error, Precondition, ScanRequest, WriteKind, WriteOp};

use crate::codec::{self, Query};
use crate::error::ApiError;
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Response header naming what served a read.
const READ_HEADER: &str = "x-tessera-read";

impl AppState {
    /// Runs `fut` under the request deadline.
    async fn deadline<T>(
        &self,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, ApiError> {
        match tokio::time::timeout(self.config.server.request_timeout, fut).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(Error::DeadlineExceeded.into()),
        }
    }
}

/// `GET /v1/kv/{key}`.
pub async fn get_key(State(state): Shared, uri: Uri) -> Result<Response, ApiError> {
    let key = codec::key_from_path(uri.path())?;
    Query::parse(uri.query(), &["consistency"])?.check_consistency()?;
    let entry = state.deadline(state.node.get(&key)).await?;
    let mut resp = entry.value.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::ETAG, header_value(&codec::etag(entry.version)));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(READ_HEADER, HeaderValue::from_static("strong"));
    Ok(resp)
}

/// `PUT /v1/kv/{key}`.
pub async fn put_key(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = codec::key_from_path(uri.path())?;
    let ttl = Query::parse(uri.query(), &["ttl"])?.positive("ttl", "invalid_ttl")?;
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
    let version = state
        .deadline(state.node.put(key, value, ttl, precondition))
        .await?;
    Ok(versioned(StatusCode::OK, version))
}

/// `DELETE /v1/kv/{key}`.
pub async fn delete_key(
    State(state): Shared,
    uri: Uri,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let key = codec::key_from_path(uri.path())?;
    Query::parse(uri.query(), &[])?;
    let precondition = codec::precondition(&headers)?;
    if precondition == Precondition::IfAbsent {
        return Err(ApiError::bad_request(
            "invalid_precondition",
            "If-None-Match is not meaningful for DELETE",
        ));
    }
    state.deadline(state.node.delete(key, precondition)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT`/`GET`/`DELETE /v1/kv/` with no key.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request("invalid_key", "the key must not be empty: /v1/kv/{key}")
}

/// `GET /v1/kv?prefix=&start=&end=&limit=&cursor=&consistency=`.
pub async fn scan(State(state): Shared, uri: Uri) -> Result<Json<serde_json::Value>, ApiError> {
    let q = Query::parse(
        uri.query(),
        &["prefix", "start", "end", "limit", "cursor", "consistency"],
    )?;
    q.check_consistency()?;
    let bytes = |name: &str| q.bytes(name).map(Bytes::copy_from_slice);
    let req = ScanRequest {
        prefix: bytes("prefix"),
        start: bytes("start"),
        end: bytes("end"),
        after: q.bytes("cursor").map(codec::uncursor).transpose()?,
        limit: q.positive("limit", "invalid_limit")?.unwrap_or(0) as usize,
    };
    let page = state.deadline(state.node.scan(req)).await?;
    let next = page
        .more
        .then(|| page.items.last().map(|e| codec::cursor(&e.key)))
        .flatten();
    let items: Vec<_> = page
        .items
        .iter()
        .map(|e| {
            json!({
                "key": codec::b64(&e.key),
                "value": codec::b64(&e.value),
                "version": e.version,
            })
        })
        .collect();
    Ok(Json(json!({ "items": items, "next": next })))
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
pub async fn batch(State(state): Shared, uri: Uri, body: Body) -> Result<Response, ApiError> {
    Query::parse(uri.query(), &[])?;
    let limit = state.config.limits.max_batch_body_bytes;
    let body = read_body(body, limit, || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("the batch body exceeds {limit} bytes"),
        )
    })
    .await?;
    let req: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid batch body: {e}")))?;
    let ops = req
        .ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| batch_op(i, op))
        .collect::<Result<Vec<_>, _>>()?;
    let version = state.deadline(state.node.apply(ops)).await?;
    Ok(versioned(StatusCode::OK, version))
}

fn batch_op(i: usize, op: BatchOp) -> Result<WriteOp, ApiError> {
    let bad = |msg: &str| ApiError::bad_request("invalid_json", format!("ops[{i}]: {msg}"));
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

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: every shard is open and the gateway is not shutting down.
pub async fn readyz(State(state): Shared) -> Response {
    let open = state.node.open_shards();
    let total = state.config.storage.shard_count as usize;
    let ready = open == total && !state.shutdown.is_cancelled();
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
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!("no route for `{}`", uri.path()),
    )
}

/// Fallback for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
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
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("cannot read the request body: {inner}"),
            )
        }
    })
}

/// A `{"version": N}` answer with `ETag: "N"`.
fn versioned(status: StatusCode, version: u64) -> Response {
    let mut resp = (status, Json(json!({ "version": version }))).into_response();
    resp.headers_mut()
        .insert(header::ETAG, header_value(&codec::etag(version)));
    resp
}

fn header_value(s: &str) -> HeaderValue {
    // ETags are `"` + digits + `"`: always a valid header value.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}
