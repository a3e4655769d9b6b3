//! Forwarding in cluster mode: a request captured so it can be replayed ([`Forwardable`]) and
//! one attempt to send it to another gateway over a pooled keep-alive connection ([`send`]).
//! When to forward and how often to retry is the service's (`crate::service`).
//!
//! Rules:
//! - **Hop limit 1**: a forwarded request carries `x-tessera-forwarded`; a gateway that gets
//!   one for a shard it does not serve answers `421 not_owner` instead of forwarding again.
//! - **Deadline propagation**: the forwarded request carries the time left
//!   (`x-tessera-deadline-ms`); the owner never works past the original deadline.
//! - **What a failed attempt means**: a `421` or a refused connection reached no owner
//!   ([`Forwarded::Retry`]); so did a read whose connection broke, as a read changes nothing.
//!   A write whose connection broke after sending may have been applied: it is never retried,
//!   and the client gets `503 unavailable` (outcome unknown).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use crate::auth::{ClusterSecret, PEER_HEADER};
use crate::config::GatewayConfig;
use crate::error::{ApiError, ErrorCode};
use crate::AppState;

/// Marks a request that was already forwarded once.
pub const FORWARDED: &str = "x-tessera-forwarded";
/// Milliseconds left before the original request's deadline.
pub const DEADLINE_MS: &str = "x-tessera-deadline-ms";
/// On an eventual read forwarded to a follower gateway: the version its follower must have
/// reached (the forwarding gateway's watermark for the shard).
pub const MIN_VERSION: &str = "x-tessera-min-version";

/// Headers copied from the client's request to the owner, and from the owner's answer back.
const PASSED_REQUEST_HEADERS: &[&str] = &["if-match", "if-none-match", "content-type", MIN_VERSION];
const PASSED_RESPONSE_HEADERS: &[&str] = &[
    "etag",
    "content-type",
    "retry-after",
    "x-tessera-read",
    "x-tessera-staleness-bound-ms",
];

/// Everything needed to replay a request against another gateway.
pub struct Forwardable {
    pub method: Method,
    /// Path and query, exactly as received.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether this request was itself forwarded (hop limit reached).
    pub forwarded: bool,
    /// When the request must be answered.
    pub deadline: Instant,
}

impl Forwardable {
    /// Captures a request; the deadline is the gateway's, or the forwarder's if earlier.
    pub fn new(
        state: &AppState,
        method: Method,
        uri: &axum::http::Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        let forwarded = headers.contains_key(FORWARDED);
        let mut headers = headers;
        if !forwarded {
            // Set by gateways only: a client's would reach the next gateway as theirs.
            headers.remove(MIN_VERSION);
        }
        let mut timeout = state.config.server.request_timeout;
        if let Some(ms) = headers
            .get(DEADLINE_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        Forwardable {
            method,
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
            headers,
            body,
            forwarded,
            deadline: Instant::now() + timeout,
        }
    }

    /// This request with header `name` set to `value` (replacing the client's, if any).
    pub fn with_header(&self, name: &'static str, value: HeaderValue) -> Forwardable {
        let mut headers = self.headers.clone();
        headers.insert(name, value);
        Forwardable {
            method: self.method.clone(),
            path_and_query: self.path_and_query.clone(),
            headers,
            body: self.body.clone(),
            forwarded: self.forwarded,
            deadline: self.deadline,
        }
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(path, _)| path)
    }

    /// The floors a forwarding gateway sent for the shards of the request ([`MIN_VERSION`],
    /// one per shard); none for a request that was not forwarded.
    pub fn floors(&self) -> Result<Vec<u64>, ApiError> {
        let Some(v) = self.headers.get(MIN_VERSION) else {
            return Ok(Vec::new());
        };
        v.to_str()
            .ok()
            .and_then(|v| v.split(',').map(|n| n.parse().ok()).collect())
            .ok_or_else(|| {
                ApiError::bad_request(ErrorCode::InvalidQuery, format!("bad {MIN_VERSION}"))
            })
    }
}

/// The pooled keep-alive client gateways forward with. It sends `secret` (the peer proof) on
/// every request and trusts `tls.ca` for `https://` peers.
pub fn client(
    config: &GatewayConfig,
    secret: Option<&ClusterSecret>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        // Under the peers' `server.header_timeout`, after which they close an idle connection:
        // a pooled connection is dropped here before its peer drops it, never reused as it
        // closes (a write sent on it would have an unknown outcome).
        .pool_idle_timeout(config.server.header_timeout / 2)
        .tcp_nodelay(true);
    if let Some(secret) = secret {
        let mut value = HeaderValue::from_str(secret.outgoing())
            .map_err(|_| "the cluster secret must be printable ASCII".to_string())?;
        value.set_sensitive(true);
        builder = builder.default_headers(HeaderMap::from_iter([(
            HeaderName::from_static(PEER_HEADER),
            value,
        )]));
    }
    if let Some(ca) = &config.tls.ca {
        for cert in crate::tls::ca_certificates(ca)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| format!("http client: {e}"))
}

/// The outcome of one forwarding attempt.
pub enum Forwarded {
    /// The owner answered (any status but 421).
    Answer(Response),
    /// The owner was not reachable or not the owner: safe to look up the owner again.
    Retry,
}

/// Sends `req` to the gateway at `url` (path and query appended).
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    path_and_query: &str,
    req: &Forwardable,
) -> Result<Forwarded, ApiError> {
    let remaining = req.remaining();
    if remaining.is_zero() {
        return Err(tessera::Error::DeadlineExceeded.into());
    }
    let mut out = client
        .request(req.method.clone(), format!("{url}{path_and_query}"))
        .timeout(remaining)
        .header(FORWARDED, "1")
        .header(DEADLINE_MS, remaining.as_millis().to_string())
        .body(req.body.clone());
    for name in PASSED_REQUEST_HEADERS {
        if let Some(v) = req.headers.get(*name) {
            out = out.header(*name, v.clone());
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        // Nothing reached the owner: it is down or restarting; look again.
        Err(e) if e.is_connect() => return Ok(Forwarded::Retry),
        Err(e) if e.is_timeout() => return Err(tessera::Error::DeadlineExceeded.into()),
        // A read changes nothing, so whether it reached the owner does not matter: look again.
        Err(_) if req.method.is_safe() => return Ok(Forwarded::Retry),
        Err(e) => {
            return Err(ApiError::owner_unavailable(format!(
                "the shard owner did not answer; the outcome is unknown: {e}"
            )))
        }
    };
    if resp.status() == StatusCode::MISDIRECTED_REQUEST {
        return Ok(Forwarded::Retry);
    }
    let status = resp.status();
    let mut headers = HeaderMap::new();
    for name in PASSED_RESPONSE_HEADERS {
        if let Some(v) = resp.headers().get(*name) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        }
    }
    let body = resp.bytes().await.map_err(|e| {
        ApiError::owner_unavailable(format!(
            "the shard owner's answer was cut off; the outcome is unknown: {e}"
        ))
    })?;
    Ok(Forwarded::Answer((status, headers, body).into_response()))
}
