//! HTTP handlers. Each one parses the request, calls the core under the request deadline, and
//! renders the answer; errors convert to [`ApiError`] with `?`.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tessera::{
    Consistency, Error, Located, Precondition, Read, ReadSource, ScanRequest, WriteKind, WriteOp,
};
use tokio::sync::Notify;

use crate::codec::{self, Query};
use crate::error::{ApiError, ErrorCode};
use crate::forward::{self, dispatch, Forwardable, Forwarded};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Response header naming what served a read: `strong`, `cache` or `eventual`.
const READ_HEADER: &str = "x-tessera-read";
/// Response header of eventual reads: the staleness bound in milliseconds.
const STALENESS_HEADER: &str = "x-tessera-staleness-bound-ms";

/// Runs `fut` until `req`'s deadline.
async fn deadline<T>(
    req: &Forwardable,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(req.remaining(), fut).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(Error::DeadlineExceeded.into()),
    }
}

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
    let shard = state.node.shard_of(&key);
    if consistency == Consistency::Eventual {
        return get_eventual(&state, shard, &key, uri.path(), &req).await;
    }
    let resp = dispatch(&state, shard, &req, || async {
        render_read(&state, deadline(&req, state.node.get(&key)).await?)
    })
    .await?;
    note_forwarded(&state, shard, &resp);
    Ok(resp)
}

/// An eventual point read. Read by this gateway's follower of the shard, or, when the shard's
/// followers are kept by other gateways (`reads.follower_gateways`), by the first of those;
/// when it does not answer within the staleness bound, by a follower here after all.
///
/// Hedged: when that follower is opening (or behind what the gateway already returned), has
/// not answered within `reads.follower_hedge_after`, or failed, the owner is also asked for a
/// strong read and the first successful answer wins. A strong answer satisfies every eventual
/// guarantee, and an owner that is down, paused or cut off only leaves the follower's answer.
/// The follower's open goes on either way, and so does its read (`Followers::read`).
async fn get_eventual(
    state: &AppState,
    shard: tessera::ShardId,
    key: &[u8],
    path: &str,
    req: &Forwardable,
) -> Result<Response, ApiError> {
    let located = state.node.locate(shard);
    if req.forwarded || matches!(located, Located::Local) {
        // Read here: owned here, or forwarded here (hop limit) by a gateway that keeps no
        // follower of the shard, whose watermark is the floor.
        let floor = floors(req)?.first().copied().unwrap_or(0);
        return render_read(
            state,
            deadline(req, state.node.get_eventual(key, floor)).await?,
        );
    }
    let home = state.node.follower_gateway(shard);
    let eventual = async {
        if let Some(home) = &home {
            if let Some(resp) = ask_follower_gateway(state, shard, &home.url, req).await {
                return Ok(Answer::Forwarded(resp));
            }
        }
        deadline(req, state.node.get_eventual(key, 0))
            .await
            .map(Answer::Read)
    };
    let Located::Remote(owner) = located else {
        return render(state, eventual.await?);
    };
    // The strong read at the owner (`path` without the query): at once while the follower is
    // opening or behind, else once it has been silent for `follower_hedge_after` or failed.
    let asked = AtomicBool::new(false);
    let follower_failed = Notify::new();
    let strong = async {
        if home.is_some() || state.node.follower_ready(shard) {
            let hedge_after = state.node.config().reads.follower_hedge_after;
            tokio::select! {
                _ = tokio::time::sleep(hedge_after) => {}
                _ = follower_failed.notified() => {}
            }
        }
        asked.store(true, Ordering::Relaxed);
        state.metrics.forwarded();
        answer_of(
            state,
            shard,
            forward::send(&state.forwarder, &owner.url, path, req).await,
        )
    };
    tokio::pin!(eventual, strong);
    // The first answer that succeeds wins; a failed one leaves the other.
    let answer = tokio::select! {
        read = &mut eventual => match read {
            Ok(a) => Ok((a, "follower")),
            Err(e) => {
                tracing::debug!(%shard, error = ?e, "follower read failed; asking the owner");
                // Stored for `strong` if it is not waiting yet.
                follower_failed.notify_one();
                strong.await.map(|r| (Answer::Forwarded(r), "owner")).ok_or(e)
            }
        },
        resp = &mut strong => match resp {
            Some(r) => Ok((Answer::Forwarded(r), "owner")),
            None => eventual.await.map(|a| (a, "follower")),
        },
    };
    if asked.load(Ordering::Relaxed) {
        state
            .metrics
            .hedged(answer.as_ref().map_or("none", |(_, by)| by));
    }
    render(state, answer?.0)
}

/// Asks the follower gateway at `url` for an eventual read, with this gateway's watermark for
/// the shard as the floor, so the answer never goes back before what was returned here. Its
/// answer, if it gives one within the staleness bound.
async fn ask_follower_gateway(
    state: &AppState,
    shard: tessera::ShardId,
    url: &str,
    req: &Forwardable,
) -> Option<Response> {
    let floor = HeaderValue::from(state.node.watermark(shard));
    let req = req.with_header(forward::MIN_VERSION, floor);
    state.metrics.forwarded();
    let sent = forward::send(&state.forwarder, url, &req.path_and_query, &req);
    let bound = state.node.config().staleness_bound();
    answer_of(state, shard, tokio::time::timeout(bound, sent).await.ok()?)
}

/// The floors a forwarding gateway sent for the shards of the request (`forward::MIN_VERSION`,
/// one per shard); none for a request that was not forwarded.
fn floors(req: &Forwardable) -> Result<Vec<u64>, ApiError> {
    let Some(v) = req.headers.get(forward::MIN_VERSION) else {
        return Ok(Vec::new());
    };
    v.to_str()
        .ok()
        .and_then(|v| v.split(',').map(|n| n.parse().ok()).collect())
        .ok_or_else(|| {
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("bad {}", forward::MIN_VERSION),
            )
        })
}

/// Another gateway's response if it is an answer (a value or 404), noted as served here.
fn answer_of(
    state: &AppState,
    shard: tessera::ShardId,
    fwd: Result<Forwarded, ApiError>,
) -> Option<Response> {
    match fwd {
        Ok(Forwarded::Answer(resp))
            if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND =>
        {
            note_forwarded(state, shard, &resp);
            Some(resp)
        }
        _ => None,
    }
}

/// An eventual read's answer: read here, or another gateway's response as it sent it.
enum Answer {
    Read(Read),
    Forwarded(Response),
}

fn render(state: &AppState, answer: Answer) -> Result<Response, ApiError> {
    match answer {
        Answer::Read(read) => render_read(state, read),
        Answer::Forwarded(resp) => Ok(resp),
    }
}

/// Answers forwarded from other gateways count as served here too (monotonic eventual reads).
fn note_forwarded(state: &AppState, shard: tessera::ShardId, resp: &Response) {
    if let Some(v) = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| codec::parse_etag(v).ok())
    {
        state.node.note_served(shard, v);
    }
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

/// `PUT /v1/kv/{key}`.
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
    dispatch(&state, state.node.shard_of(&key), &req, || async {
        let put = state
            .node
            .put(key.clone(), value.clone(), ttl, precondition);
        let version = deadline(&req, put).await?;
        Ok(versioned(StatusCode::OK, version))
    })
    .await
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
    dispatch(&state, state.node.shard_of(&key), &req, || async {
        deadline(&req, state.node.delete(key.clone(), precondition)).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
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
    let page = if let Some(list) = q.text("shards", ErrorCode::InvalidQuery)? {
        let shards = list
            .split(',')
            .map(|s| s.parse().map(tessera::ShardId))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ApiError::bad_request(ErrorCode::InvalidQuery, "bad shard list"))?;
        let floors = floors(&fwd)?;
        if !floors.is_empty() && floors.len() != shards.len() {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidQuery,
                "one floor per shard expected",
            ));
        }
        deadline(
            &fwd,
            state.node.scan_shards(req, &shards, consistency, &floors),
        )
        .await?
    } else if consistency == Consistency::Eventual {
        scan_eventual(&state, &fwd, req).await?
    } else {
        scan_cluster(&state, &fwd, req).await?
    };
    // Pages from other gateways count as served here too (monotonic eventual reads).
    for e in &page.items {
        state
            .node
            .note_served(state.node.shard_of(&e.key), e.version);
    }
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

/// Scans every shard: locally for the shards served here, through their owners for the rest,
/// then merges the pages in key order.
async fn scan_cluster(
    state: &AppState,
    fwd: &Forwardable,
    req: ScanRequest,
) -> Result<tessera::ScanPage, ApiError> {
    let limit = state.node.scan_limit(req.limit)?;
    loop {
        let mut local = Vec::new();
        let mut remote: BTreeMap<String, Vec<tessera::ShardId>> = BTreeMap::new();
        let mut unowned = false;
        for n in 0..state.config.storage.shard_count {
            match state.node.locate(tessera::ShardId(n)) {
                Located::Local => local.push(tessera::ShardId(n)),
                Located::Remote(o) => remote.entry(o.url).or_default().push(tessera::ShardId(n)),
                Located::Unowned => unowned = true,
            }
        }
        if !unowned {
            let local_page = async {
                if local.is_empty() {
                    return Ok(None);
                }
                let scan = state
                    .node
                    .scan_shards(req.clone(), &local, Consistency::Strong, &[]);
                deadline(fwd, scan).await.map(Some)
            };
            let remote_pages = futures::future::try_join_all(remote.iter().map(|(url, shards)| {
                let path = with_shards(&fwd.path_and_query, shards);
                async move {
                    match forward::send(&state.forwarder, url, &path, fwd).await? {
                        Forwarded::Answer(resp) => decode_page(resp).await.map(Some),
                        Forwarded::Retry => Ok(None),
                    }
                }
            }));
            let (local_page, remote_pages) = futures::try_join!(local_page, remote_pages)?;
            if remote_pages.iter().all(Option::is_some) {
                let pages = local_page
                    .into_iter()
                    .chain(remote_pages.into_iter().flatten());
                return Ok(merge_pages(
                    pages,
                    limit,
                    state.config.limits.max_scan_bytes,
                ));
            }
        }
        forward::pause_before_retry(fwd, None).await?;
    }
}

/// Scans every shard eventually: here for the shards owned here or whose followers are kept
/// here, through the first of their follower gateways for the others
/// (`reads.follower_gateways`), with this gateway's watermarks as floors. A follower gateway
/// that does not answer within the staleness bound is passed over: its shards are scanned
/// here.
async fn scan_eventual(
    state: &AppState,
    fwd: &Forwardable,
    req: ScanRequest,
) -> Result<tessera::ScanPage, ApiError> {
    let limit = state.node.scan_limit(req.limit)?;
    let mut here = Vec::new();
    let mut away: BTreeMap<String, Vec<tessera::ShardId>> = BTreeMap::new();
    for shard in (0..state.config.storage.shard_count).map(tessera::ShardId) {
        match state.node.follower_gateway(shard) {
            Some(m) => away.entry(m.url).or_default().push(shard),
            None => here.push(shard),
        }
    }
    let scan_here = |shards: Vec<tessera::ShardId>| {
        let req = req.clone();
        async move {
            let scan = state
                .node
                .scan_shards(req, &shards, Consistency::Eventual, &[]);
            deadline(fwd, scan).await
        }
    };
    let remote = away.into_iter().map(|(url, shards)| {
        let path = with_shards(&fwd.path_and_query, &shards);
        let floors: Vec<String> = shards
            .iter()
            .map(|s| state.node.watermark(*s).to_string())
            .collect();
        let local = scan_here(shards);
        async move {
            let floors = HeaderValue::try_from(floors.join(","))
                .map_err(|e| Error::Internal(format!("floors header: {e}")))?;
            let out = fwd.with_header(forward::MIN_VERSION, floors);
            state.metrics.forwarded();
            let sent = forward::send(&state.forwarder, &url, &path, &out);
            let bound = state.node.config().staleness_bound();
            if let Ok(Ok(Forwarded::Answer(resp))) = tokio::time::timeout(bound, sent).await {
                if let Ok(page) = decode_page(resp).await {
                    return Ok(page);
                }
            }
            local.await
        }
    });
    let local = async {
        if here.is_empty() {
            return Ok(None);
        }
        scan_here(here).await.map(Some)
    };
    let (local, remote) = futures::try_join!(local, futures::future::try_join_all(remote))?;
    Ok(merge_pages(
        local.into_iter().chain(remote),
        limit,
        state.config.limits.max_scan_bytes,
    ))
}

/// `path_and_query` with the internal parameter `shards` listing `shards`.
fn with_shards(path_and_query: &str, shards: &[tessera::ShardId]) -> String {
    let list: Vec<String> = shards.iter().map(|s| s.0.to_string()).collect();
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{sep}shards={}", list.join(","))
}

/// Reads a scan page answered by another gateway (or passes its error through).
async fn decode_page(resp: Response) -> Result<tessera::ScanPage, ApiError> {
    let status = resp.status();
    let body = to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_gateway(e.to_string()))?;
    if !status.is_success() {
        return Err(ApiError::forwarded(status, &value));
    }
    let bad = || ApiError::bad_gateway("malformed scan page");
    let mut items = Vec::new();
    for item in value["items"].as_array().ok_or_else(bad)? {
        items.push(tessera::Entry {
            key: codec::unb64("key", item["key"].as_str().ok_or_else(bad)?)?,
            value: codec::unb64("value", item["value"].as_str().ok_or_else(bad)?)?,
            version: item["version"].as_u64().ok_or_else(bad)?,
            expires_at_ms: None,
            written_at_ms: 0,
        });
    }
    Ok(tessera::ScanPage {
        items,
        more: !value["next"].is_null(),
    })
}

/// Merges sorted pages of disjoint shards into one page of at most `limit` items.
fn merge_pages(
    pages: impl Iterator<Item = tessera::ScanPage>,
    limit: usize,
    max_bytes: usize,
) -> tessera::ScanPage {
    let mut more = false;
    let mut all = Vec::new();
    for page in pages {
        more |= page.more;
        all.extend(page.items);
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let mut bytes = 0;
    let mut take = 0;
    while take < all.len() && take < limit && (take == 0 || bytes < max_bytes) {
        bytes += all[take].key.len() + all[take].value.len();
        take += 1;
    }
    more |= take < all.len();
    all.truncate(take);
    tessera::ScanPage { items: all, more }
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
    let apply = || async {
        let version = deadline(&fwd, state.node.apply(ops.clone())).await?;
        Ok(versioned(StatusCode::OK, version))
    };
    // The first key decides where the batch goes; the owner rejects cross-shard batches.
    match ops.first() {
        Some(op) => dispatch(&state, state.node.shard_of(&op.key), &fwd, apply).await,
        None => apply().await,
    }
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
        } else {
            ApiError::bad_request(
                ErrorCode::InvalidBody,
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
