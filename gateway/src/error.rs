//! The HTTP edge of every failure: the stable error codes ([`ErrorCode`]), the error answer
//! ([`ApiError`]) and the one mapping of a core [`tessera::Error`] to a status and a code.
//!
//! Body: `{"error":{"code":"<code>","message":"..."}}`, plus `current_version` on a `412` when
//! the key exists; every `503` carries `Retry-After: 1`. The codes are part of the API and are
//! listed in docs/api.md; tests assert on them. Errors the core classifies
//! [`ErrorKind::Internal`] are logged here, once, and answered without details; other 5xx
//! answers are logged as warnings when rendered.
//!
//! Invariants: the mapping has no wildcard arm (the core's `Error` is not `#[non_exhaustive]`,
//! so a new variant does not compile until it is mapped), and only this module picks an error
//! answer's status or spells its code.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tessera::{BadInput, Error, ErrorKind, ShardId};

/// Declares [`ErrorCode`] from one table, so the variants, their strings and
/// [`ErrorCode::ALL`] cannot drift apart.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident => $code:literal,)*) => {
        /// A stable machine-readable error code: the `code` of an error answer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears in answers.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    /// Empty key, or bad percent-encoding in the path.
    InvalidKey => "invalid_key",
    /// Key longer than `limits.max_key_bytes`.
    KeyTooLong => "key_too_long",
    /// `If-Match` not `*` or a quoted version.
    InvalidEtag => "invalid_etag",
    /// Conflicting or unsupported `If-Match` / `If-None-Match`.
    InvalidPrecondition => "invalid_precondition",
    /// A TTL that is not a positive number of seconds within the limit.
    InvalidTtl => "invalid_ttl",
    /// An unknown, repeated or badly encoded query parameter (or internal header).
    InvalidQuery => "invalid_query",
    /// `consistency` not `strong` or `eventual`.
    InvalidConsistency => "invalid_consistency",
    /// A scan `limit` out of range.
    InvalidLimit => "invalid_limit",
    /// A scan cursor this API did not issue.
    InvalidCursor => "invalid_cursor",
    /// A malformed batch body or operation.
    InvalidJson => "invalid_json",
    /// An empty batch.
    InvalidBatch => "invalid_batch",
    /// A batch names a key twice.
    DuplicateKey => "duplicate_key",
    /// Too many batch operations (400) or too large a batch body (413).
    BatchTooLarge => "batch_too_large",
    /// Batch keys map to several shards.
    CrossShard => "cross_shard",
    /// The request body could not be read.
    InvalidBody => "invalid_body",
    /// The key is absent or expired.
    NotFound => "not_found",
    /// No route for the path.
    RouteNotFound => "route_not_found",
    /// A known path with the wrong method.
    MethodNotAllowed => "method_not_allowed",
    /// A precondition did not hold.
    PreconditionFailed => "precondition_failed",
    /// A value over `limits.max_value_bytes`.
    ValueTooLarge => "value_too_large",
    /// (Forwarded requests only) this gateway does not own the shard.
    NotOwner => "not_owner",
    /// The object store, etcd or the shard owner is unreachable, or the shard is reopening.
    Unavailable => "unavailable",
    /// No owner answered within the deadline (failover in progress).
    NoOwner => "no_owner",
    /// The request outlived its deadline.
    DeadlineExceeded => "deadline_exceeded",
    /// Another process opened the shard's database.
    ShardFenced => "shard_fenced",
    /// The gateway is stopping.
    ShuttingDown => "shutting_down",
    /// A bug; the log has the details.
    Internal => "internal",
    /// No bearer token, or one this gateway does not know (`401`, `WWW-Authenticate: Bearer`).
    Unauthorized => "unauthorized",
    /// The token's role does not allow the request.
    Forbidden => "forbidden",
    /// An internal `x-tessera-*` header or parameter without valid peer proof.
    ReservedHeader => "reserved_header",
    /// The request body did not arrive within `server.body_timeout`.
    RequestTimeout => "request_timeout",
    /// More than `server.max_in_flight` requests in flight: retry after `Retry-After`.
    Overloaded => "overloaded",
}

impl ErrorCode {
    /// The code spelled `code`, if there is one.
    pub fn parse(code: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == code)
    }

    /// Whether this code refuses a request for who sent it or how (authentication,
    /// authorization, internal headers, a slow body, overload) rather than for what it asks:
    /// these answers are counted by reason in `tessera_http_rejected_total`.
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            ErrorCode::Unauthorized
                | ErrorCode::Forbidden
                | ErrorCode::ReservedHeader
                | ErrorCode::RequestTimeout
                | ErrorCode::Overloaded
        )
    }
}

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    current_version: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            current_version: None,
        }
    }

    /// A `400` with `code`: the request is malformed.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// `404 route_not_found` for `path`.
    pub fn route_not_found(path: &str) -> Self {
        let message = format!("no route for `{path}`");
        Self::new(StatusCode::NOT_FOUND, ErrorCode::RouteNotFound, message)
    }

    /// `405 method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        let message = "this route does not accept that method";
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            message,
        )
    }

    /// `413 batch_too_large`: the batch body is over `limit` bytes.
    pub fn batch_body_too_large(limit: usize) -> Self {
        let message = format!("the batch body exceeds {limit} bytes");
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::BatchTooLarge,
            message,
        )
    }

    /// `401 unauthorized`: no valid bearer token. Never says which token was tried.
    pub fn unauthorized() -> Self {
        let message = "a valid bearer token is required (Authorization: Bearer <token>)";
        Self::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message)
    }

    /// `403 forbidden`: the token's role (`role`) does not allow the request, which needs
    /// `needed`.
    pub fn forbidden(role: &str, needed: &str) -> Self {
        let message =
            format!("this token's role `{role}` does not allow this request (needs `{needed}`)");
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }

    /// `400 reserved_header`: the request carries `what`, which only gateways may send.
    pub fn reserved_header(what: &str) -> Self {
        let message =
            format!("`{what}` is reserved for requests between gateways and needs peer proof");
        Self::bad_request(ErrorCode::ReservedHeader, message)
    }

    /// `408 request_timeout`: the body did not arrive within `timeout`.
    pub fn request_timeout(timeout: std::time::Duration) -> Self {
        let message = format!("the request body did not arrive within {timeout:?}");
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            message,
        )
    }

    /// `503 overloaded`: `limit` requests are already in flight.
    pub fn overloaded(limit: usize) -> Self {
        let message = format!("{limit} requests are in flight on this gateway; retry later");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Overloaded,
            message,
        )
    }

    /// `503 unavailable`: the shard owner did not answer (for a write, the outcome is unknown).
    pub fn owner_unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            message,
        )
    }

    /// `503 no_owner`: `shard` (or, for `None`, some of several shards) had no owner that
    /// answered before the deadline.
    pub fn no_owner(shard: Option<ShardId>) -> Self {
        let message = match shard {
            Some(shard) => {
                format!("shard {shard} has no reachable owner yet (failover in progress)")
            }
            None => "some shards have no reachable owner yet (failover in progress)".to_string(),
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoOwner, message)
    }

    /// `502 unavailable`: another gateway's answer could not be read.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message)
    }

    /// Another gateway's error answer (`status`, JSON `body`), passed on with its status, code
    /// and message; a body without a code this gateway knows counts as `unavailable`.
    pub fn forwarded(status: StatusCode, body: &serde_json::Value) -> Self {
        let error = &body["error"];
        let code = error["code"].as_str().and_then(ErrorCode::parse);
        let message = error["message"].as_str().unwrap_or("");
        Self::new(status, code.unwrap_or(ErrorCode::Unavailable), message)
    }
}

/// The status and code of a core error. The one place that maps `tessera::Error` variants; no
/// wildcard arm.
fn classify(e: &Error) -> (StatusCode, ErrorCode) {
    use StatusCode as S;
    match e {
        Error::InvalidInput { code, .. } => {
            let code = match code {
                BadInput::InvalidKey => ErrorCode::InvalidKey,
                BadInput::KeyTooLong => ErrorCode::KeyTooLong,
                BadInput::InvalidTtl => ErrorCode::InvalidTtl,
                BadInput::InvalidBatch => ErrorCode::InvalidBatch,
                BadInput::BatchTooLarge => ErrorCode::BatchTooLarge,
                BadInput::DuplicateKey => ErrorCode::DuplicateKey,
                BadInput::InvalidLimit => ErrorCode::InvalidLimit,
                BadInput::InvalidQuery => ErrorCode::InvalidQuery,
            };
            (S::BAD_REQUEST, code)
        }
        Error::ValueTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, ErrorCode::ValueTooLarge),
        Error::CrossShard { .. } => (S::BAD_REQUEST, ErrorCode::CrossShard),
        Error::NotFound => (S::NOT_FOUND, ErrorCode::NotFound),
        Error::PreconditionFailed { .. } => (S::PRECONDITION_FAILED, ErrorCode::PreconditionFailed),
        Error::ShardUnavailable { .. } | Error::ObjectStore(_) | Error::Coordination(_) => {
            (S::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
        }
        Error::NotOwner { .. } => (S::MISDIRECTED_REQUEST, ErrorCode::NotOwner),
        Error::Fenced { .. } => (S::SERVICE_UNAVAILABLE, ErrorCode::ShardFenced),
        Error::DeadlineExceeded => (S::SERVICE_UNAVAILABLE, ErrorCode::DeadlineExceeded),
        Error::ShuttingDown => (S::SERVICE_UNAVAILABLE, ErrorCode::ShuttingDown),
        Error::Config(_) | Error::ClusterMismatch(_) | Error::Internal(_) => {
            (S::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = classify(&e);
        if e.kind() == ErrorKind::Internal {
            // A human must look: the details go to the log, not to the client.
            tracing::error!(error = %e, "internal error");
            return ApiError::new(status, code, "internal error");
        }
        let mut err = ApiError::new(status, code, e.to_string());
        if let Error::PreconditionFailed { current } = e {
            err.current_version = current;
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code.as_str();
        // Not `overloaded`: a flood would turn into as many log lines.
        if self.status.is_server_error()
            && self.status != StatusCode::INTERNAL_SERVER_ERROR
            && self.code != ErrorCode::Overloaded
        {
            tracing::warn!(code, message = %self.message, "request failed");
        }
        let mut error = json!({ "code": code, "message": self.message });
        if let Some(v) = self.current_version {
            error["current_version"] = json!(v);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        let headers = resp.headers_mut();
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::UNAUTHORIZED => {
                // Basic is for browsers (the status page): they prompt for it.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer, Basic realm=\"tessera\""),
                );
            }
            // The rest of the body was not read: the connection cannot carry another request.
            StatusCode::REQUEST_TIMEOUT => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        // For the metrics layer, which counts rejections by code.
        resp.extensions_mut().insert(self.code);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(*code));
            assert!(!ErrorCode::ALL[..i]
                .iter()
                .any(|c| c.as_str() == code.as_str()));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    /// Every core variant, with the status and code it answers with.
    #[test]
    fn every_core_error_maps_to_its_status_and_code() {
        use StatusCode as S;
        let shard = ShardId(3);
        let store_error = object_store::Error::NotImplemented {
            operation: "get".into(),
            implementer: "test".into(),
        };
        let cases = [
            (
                Error::invalid(BadInput::KeyTooLong, "long"),
                S::BAD_REQUEST,
                "key_too_long",
            ),
            (
                Error::ValueTooLarge { size: 2, limit: 1 },
                S::PAYLOAD_TOO_LARGE,
                "value_too_large",
            ),
            (
                Error::CrossShard { shards: 2 },
                S::BAD_REQUEST,
                "cross_shard",
            ),
            (Error::NotFound, S::NOT_FOUND, "not_found"),
            (
                Error::PreconditionFailed { current: Some(7) },
                S::PRECONDITION_FAILED,
                "precondition_failed",
            ),
            (
                Error::ShardUnavailable {
                    shard,
                    reason: "reopening".into(),
                },
                S::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                Error::Fenced { shard },
                S::SERVICE_UNAVAILABLE,
                "shard_fenced",
            ),
            (
                Error::DeadlineExceeded,
                S::SERVICE_UNAVAILABLE,
                "deadline_exceeded",
            ),
            (
                Error::NotOwner { shard },
                S::MISDIRECTED_REQUEST,
                "not_owner",
            ),
            (
                Error::Coordination("etcd".into()),
                S::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (Error::ShuttingDown, S::SERVICE_UNAVAILABLE, "shutting_down"),
            (
                Error::Config("x".into()),
                S::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                Error::ClusterMismatch("x".into()),
                S::INTERNAL_SERVER_ERROR,
                "internal",
            ),
            (
                Error::ObjectStore(store_error),
                S::SERVICE_UNAVAILABLE,
                "unavailable",
            ),
            (
                Error::Internal("x".into()),
                S::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            let shown = format!("{error:?}");
            let api = ApiError::from(error);
            assert_eq!((api.status, api.code.as_str()), (status, code), "{shown}");
        }
    }

    async fn body(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn answers_keep_their_shape() {
        let resp = ApiError::from(Error::PreconditionFailed { current: Some(7) }).into_response();
        assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
        let expected = json!({"error": {
            "code": "precondition_failed",
            "message": "precondition failed: current version is 7",
            "current_version": 7,
        }});
        assert_eq!(body(resp).await, expected);

        let resp = ApiError::no_owner(Some(ShardId(2))).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let expected = json!({"error": {
            "code": "no_owner",
            "message": "shard 00002 has no reachable owner yet (failover in progress)",
        }});
        assert_eq!(body(resp).await, expected);

        // Internal details stay in the log.
        let resp = ApiError::from(Error::Internal("secret".into())).into_response();
        let expected = json!({"error": {"code": "internal", "message": "internal error"}});
        assert_eq!(body(resp).await, expected);
    }

    #[test]
    fn forwarded_errors_keep_status_code_and_message() {
        let body = json!({"error": {"code": "invalid_limit", "message": "m"}});
        let err = ApiError::forwarded(StatusCode::BAD_REQUEST, &body);
        assert_eq!(
            (err.status, err.code),
            (StatusCode::BAD_REQUEST, ErrorCode::InvalidLimit)
        );
        assert_eq!(err.message, "m");
        let err = ApiError::forwarded(StatusCode::SERVICE_UNAVAILABLE, &json!({}));
        assert_eq!(err.code, ErrorCode::Unavailable);
    }
}
