//! A client of the Tessera HTTP API (see docs/api.md, with its error table).
//!
//! [`Api`] holds a pooled keep-alive HTTP client and a list of gateway endpoints. The `*_at`
//! methods talk to one endpoint; [`Api::with_failover`] runs a request against each endpoint in
//! turn, moving on only when the request certainly did not reach a gateway (connection refused)
//! or the gateway answered `503`. Keys are percent-encoded into the path; scan and batch bodies
//! carry keys and values as standard base64, as the API defines.

use std::future::Future;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{header, Method, StatusCode};
use serde_json::Value;

/// Everything but RFC 3986 unreserved characters is escaped, so `/`, `?`, `%` and `+` in a key
/// stay part of the key.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `404 not_found`: the key is absent or expired.
    #[error("not_found: {0}")]
    NotFound(String),
    /// `412 precondition_failed`.
    #[error("precondition_failed: {message}")]
    PreconditionFailed {
        /// The key's current version, when it exists.
        current_version: Option<u64>,
        /// The server's message.
        message: String,
    },
    /// `503`: the gateway could not serve the request now (the code says why).
    #[error("{code}: {message} (HTTP 503 from {endpoint})")]
    Unavailable {
        /// The endpoint that answered.
        endpoint: String,
        /// The server's error code, e.g. `no_owner`.
        code: String,
        /// The server's message.
        message: String,
    },
    /// No connection could be made to the endpoint.
    #[error("connect: cannot reach {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        source: reqwest::Error,
    },
    /// The request timed out; a write's outcome is unknown.
    #[error("timeout: no answer from {endpoint} within the timeout (a write may or may not have been applied)")]
    Timeout {
        /// The endpoint.
        endpoint: String,
    },
    /// Any other error answer (4xx, 500).
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The request failed in another way, or the answer was not what the API documents.
    #[error("transport: {0}")]
    Transport(String),
}

impl ClientError {
    /// True if the request certainly did not reach a gateway, or the gateway answered 503:
    /// another endpoint may serve it.
    pub fn try_next(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Unavailable { .. }
        )
    }

    /// A short stable name for counting errors by kind: the server's code, `connect`,
    /// `timeout` or `transport`.
    pub fn kind(&self) -> String {
        match self {
            ClientError::NotFound(_) => "not_found".into(),
            ClientError::PreconditionFailed { .. } => "precondition_failed".into(),
            ClientError::Unavailable { code, .. } | ClientError::Api { code, .. } => code.clone(),
            ClientError::Connect { .. } => "connect".into(),
            ClientError::Timeout { .. } => "timeout".into(),
            ClientError::Transport(_) => "transport".into(),
        }
    }
}

/// A stored value and its version.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The value's bytes.
    pub value: Bytes,
    /// The key's version.
    pub version: u64,
}

/// A write's precondition (`If-Match` / `If-None-Match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Unconditional.
    None,
    /// The key's current version must be this.
    IfMatch(u64),
    /// The key must be absent.
    IfAbsent,
}

/// One scan item.
#[derive(Debug, Clone)]
pub struct Item {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The version.
    pub version: u64,
}

/// Bounds of a scan; each is a byte string, percent-encoded into the query.
#[derive(Debug, Clone, Default)]
pub struct ScanRange {
    /// Keys starting with this.
    pub prefix: Option<String>,
    /// First key (inclusive).
    pub start: Option<String>,
    /// Last key (exclusive).
    pub end: Option<String>,
}

/// The Tessera HTTP API over a set of gateway endpoints.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// `endpoints`, parsed once: a request's URL is a copy with its path and query set
    /// (parsing the whole URL per request was a visible share of the load generator's CPU).
    bases: Vec<reqwest::Url>,
}

/// How the client proves who it is and whom it trusts.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Bearer token sent on every request.
    pub token: Option<String>,
    /// PEM CA certificates trusted for `https://` endpoints, besides the system's roots.
    pub cacert: Option<std::path::PathBuf>,
}

impl Api {
    /// A client of `endpoints` (`http://` or `https://host:port`, trailing `/` ignored) with a
    /// per-request `timeout`, up to `pool` idle keep-alive connections per endpoint, and
    /// `credentials`.
    pub fn new(
        endpoints: &[String],
        timeout: Duration,
        pool: usize,
        credentials: &Credentials,
    ) -> Result<Api, String> {
        if endpoints.is_empty() {
            return Err("give at least one endpoint".into());
        }
        let endpoints = endpoints
            .iter()
            .map(|e| {
                let e = e.trim().trim_end_matches('/');
                let rest = e
                    .strip_prefix("http://")
                    .or_else(|| e.strip_prefix("https://"));
                let bad = || format!("endpoint `{e}` must be an http:// or https:// URL");
                match rest {
                    Some(rest) if !rest.is_empty() => {
                        let base = reqwest::Url::parse(e).map_err(|_| bad())?;
                        Ok((e.to_string(), base))
                    }
                    _ => Err(bad()),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (endpoints, bases) = endpoints.into_iter().unzip();
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true);
        if let Some(token) = &credentials.token {
            let mut value = header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token must be printable ASCII".to_string())?;
            value.set_sensitive(true);
            builder = builder.default_headers(header::HeaderMap::from_iter([(
                header::AUTHORIZATION,
                value,
            )]));
        }
        if let Some(path) = &credentials.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read --cacert `{}`: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("invalid --cacert `{}`: {e}", path.display()))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Api {
            http,
            endpoints,
            bases,
        })
    }

    /// The endpoints, in order.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `op` against each endpoint in order until one answers with something other than
    /// a connection failure or a 503; returns the last error if none does.
    pub async fn with_failover<T, F, Fut>(&self, op: F) -> Result<T, ClientError>
    where
        F: Fn(usize) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for i in 0..self.endpoints.len() {
            match op(i).await {
                Err(e) if e.try_next() => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Transport("no endpoint".into())))
    }

    /// `GET /v1/kv/{key}` on endpoint `at`.
    pub async fn get_at(
        &self,
        at: usize,
        key: &[u8],
        eventual: bool,
    ) -> Result<Versioned, ClientError> {
        let query = if eventual {
            "?consistency=eventual"
        } else {
            ""
        };
        let path = format!("/v1/kv/{}{query}", encode_key(key));
        let resp = self.send(at, Method::GET, &path, &[], None).await?;
        let version = etag_version(&resp)?;
        let value = resp.bytes().await.map_err(|e| self.error(at, e))?;
        Ok(Versioned { value, version })
    }

    /// `PUT /v1/kv/{key}` on endpoint `at`; returns the new version.
    pub async fn put_at(
        &self,
        at: usize,
        key: &[u8],
        value: Bytes,
        ttl: Option<u64>,
        pre: Precondition,
    ) -> Result<u64, ClientError> {
        let query = ttl.map(|t| format!("?ttl={t}")).unwrap_or_default();
        let path = format!("/v1/kv/{}{query}", encode_key(key));
        let headers = precondition_headers(pre);
        let resp = self
            .send(at, Method::PUT, &path, &headers, Some(value))
            .await?;
        let version = etag_version(&resp)?;
        // Read to the end, so the connection goes back to the pool.
        resp.bytes().await.map_err(|e| self.error(at, e))?;
        Ok(version)
    }

    /// `DELETE /v1/kv/{key}` on endpoint `at`.
    pub async fn delete_at(
        &self,
        at: usize,
        key: &[u8],
        if_match: Option<u64>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/kv/{}", encode_key(key));
        let headers =
            precondition_headers(if_match.map_or(Precondition::None, Precondition::IfMatch));
        self.send(at, Method::DELETE, &path, &headers, None)
            .await
            .map(drop)
    }

    /// One scan page on endpoint `at`: items and the `next` cursor.
    pub async fn scan_page_at(
        &self,
        at: usize,
        range: &ScanRange,
        limit: usize,
        cursor: Option<&str>,
        eventual: bool,
    ) -> Result<(Vec<Item>, Option<String>), ClientError> {
        let mut query = vec![format!("limit={limit}")];
        for (name, v) in [
            ("prefix", &range.prefix),
            ("start", &range.start),
            ("end", &range.end),
        ] {
            if let Some(v) = v {
                query.push(format!("{name}={}", encode_key(v.as_bytes())));
            }
        }
        if let Some(c) = cursor {
            query.push(format!("cursor={}", encode_key(c.as_bytes())));
        }
        if eventual {
            query.push("consistency=eventual".into());
        }
        let path = format!("/v1/kv?{}", query.join("&"));
        let resp = self.send(at, Method::GET, &path, &[], None).await?;
        let body = self.json(at, resp).await?;
        let bad = || ClientError::Transport("malformed scan page".into());
        let mut items = Vec::new();
        for item in body["items"].as_array().ok_or_else(bad)? {
            let field = |name: &str| {
                item[name]
                    .as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .ok_or_else(bad)
            };
            items.push(Item {
                key: field("key")?,
                value: field("value")?,
                version: item["version"].as_u64().ok_or_else(bad)?,
            });
        }
        let next = body["next"].as_str().map(str::to_string);
        Ok((items, next))
    }

    /// `POST /v1/batch` with a body in the API's batch format; returns the batch's version.
    pub async fn batch_at(&self, at: usize, body: Bytes) -> Result<u64, ClientError> {
        let headers = [(header::CONTENT_TYPE, "application/json".to_string())];
        let resp = self
            .send(at, Method::POST, "/v1/batch", &headers, Some(body))
            .await?;
        version_body(self.json(at, resp).await?)
    }

    /// `GET /v1/cluster` on endpoint `at`.
    pub async fn cluster_at(&self, at: usize) -> Result<Value, ClientError> {
        let resp = self.send(at, Method::GET, "/v1/cluster", &[], None).await?;
        self.json(at, resp).await
    }

    /// `GET /healthz` on endpoint `at`.
    pub async fn health_at(&self, at: usize) -> Result<(), ClientError> {
        self.send(at, Method::GET, "/healthz", &[], None)
            .await
            .map(drop)
    }

    /// `GET /metrics` on endpoint `at`, as text.
    pub async fn metrics_at(&self, at: usize) -> Result<String, ClientError> {
        let resp = self.send(at, Method::GET, "/metrics", &[], None).await?;
        resp.text().await.map_err(|e| self.error(at, e))
    }

    /// Sends one request; maps every non-2xx answer to its [`ClientError`].
    async fn send(
        &self,
        at: usize,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, String)],
        body: Option<Bytes>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self.http.request(method, self.url(at, path));
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req.send().await.map_err(|e| self.error(at, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        // Error bodies are `{"error":{"code","message"[,"current_version"]}}`.
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let err = &body["error"];
        let code = err["code"].as_str().unwrap_or("unknown").to_string();
        let message = err["message"].as_str().unwrap_or("").to_string();
        Err(match status {
            StatusCode::NOT_FOUND if code == "not_found" => ClientError::NotFound(message),
            StatusCode::PRECONDITION_FAILED => ClientError::PreconditionFailed {
                current_version: err["current_version"].as_u64(),
                message,
            },
            StatusCode::SERVICE_UNAVAILABLE => ClientError::Unavailable {
                endpoint: self.endpoints[at].clone(),
                code,
                message,
            },
            _ => ClientError::Api {
                status: status.as_u16(),
                code,
                message,
            },
        })
    }

    /// Endpoint `at`'s URL for `path` (already percent-encoded, with its query if any).
    fn url(&self, at: usize, path: &str) -> reqwest::Url {
        let base = &self.bases[at];
        let mut url = base.clone();
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        match base.path() {
            "/" => url.set_path(path),
            // An endpoint behind a path prefix (`https://proxy/tessera`).
            prefix => url.set_path(&format!("{prefix}{path}")),
        }
        url.set_query(query);
        url
    }

    async fn json(&self, at: usize, resp: reqwest::Response) -> Result<Value, ClientError> {
        resp.json().await.map_err(|e| self.error(at, e))
    }

    fn error(&self, at: usize, e: reqwest::Error) -> ClientError {
        let endpoint = self.endpoints[at].clone();
        if e.is_connect() {
            ClientError::Connect {
                endpoint,
                source: e,
            }
        } else if e.is_timeout() {
            ClientError::Timeout { endpoint }
        } else {
            ClientError::Transport(format!("{endpoint}: {e}"))
        }
    }
}

/// Percent-encodes a key (or a query value) byte for byte.
pub fn encode_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => utf8_percent_encode(s, KEY_ESCAPE).to_string(),
        Err(_) => key.iter().map(|b| format!("%{b:02X}")).collect(),
    }
}

fn precondition_headers(pre: Precondition) -> Vec<(header::HeaderName, String)> {
    match pre {
        Precondition::None => vec![],
        Precondition::IfMatch(v) => vec![(header::IF_MATCH, format!("\"{v}\""))],
        Precondition::IfAbsent => vec![(header::IF_NONE_MATCH, "*".into())],
    }
}

fn etag_version(resp: &reqwest::Response) -> Result<u64, ClientError> {
    resp.headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse().ok())
        .ok_or_else(|| ClientError::Transport("answer without a valid ETag".into()))
}

fn version_body(body: Value) -> Result<u64, ClientError> {
    body["version"]
        .as_u64()
        .ok_or_else(|| ClientError::Transport("answer without a version".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_escaped_byte_for_byte() {
        assert_eq!(encode_key(b"a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode_key(b"user:{42}"), "user%3A%7B42%7D");
        assert_eq!(encode_key(b"ok-_.~9"), "ok-_.~9");
        assert_eq!(encode_key(&[0xff, b'a']), "%FF%61");
    }

    #[test]
    fn request_urls_keep_the_endpoints_prefix_and_the_keys_escapes() {
        let endpoints = [
            "http://127.0.0.1:7070/".into(),
            "https://proxy/tessera".into(),
        ];
        let api = Api::new(
            &endpoints,
            Duration::from_secs(1),
            1,
            &Credentials::default(),
        )
        .unwrap();
        let path = format!("/v1/kv/{}?ttl=5", encode_key(b"a/b?c"));
        assert_eq!(
            api.url(0, &path).as_str(),
            "http://127.0.0.1:7070/v1/kv/a%2Fb%3Fc?ttl=5"
        );
        assert_eq!(
            api.url(1, "/v1/kv/k").as_str(),
            "https://proxy/tessera/v1/kv/k"
        );
    }
}
