//! `ApiError`: every failure of the HTTP API, mapped once to a status and a stable code.
//!
//! Body: `{"error":{"code":"<code>","message":"..."}}`. The codes are part of the API and are
//! listed in the README; tests assert on them. 5xx answers are logged here, once.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tessera::Error;

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: String,
    current_version: Option<u64>,
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Any status with `code`.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            current_version: None,
        }
    }

    /// The stable code.
    pub fn code(&self) -> &str {
        &self.code
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let message = e.to_string();
        let (status, code) = match &e {
            Error::InvalidInput { code, .. } => (S::BAD_REQUEST, *code),
            Error::ValueTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "value_too_large"),
            Error::CrossShard { .. } => (S::BAD_REQUEST, "cross_shard"),
            Error::NotFound => (S::NOT_FOUND, "not_found"),
            Error::PreconditionFailed { current } => {
                let mut err = ApiError::new(S::PRECONDITION_FAILED, "precondition_failed", message);
                err.current_version = *current;
                return err;
            }
            Error::ShardUnavailable { .. } | Error::ObjectStore(_) | Error::Coordination(_) => {
                (S::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::NotOwner { .. } => (S::MISDIRECTED_REQUEST, "not_owner"),
            Error::Fenced { .. } => (S::SERVICE_UNAVAILABLE, "shard_fenced"),
            Error::DeadlineExceeded => (S::SERVICE_UNAVAILABLE, "deadline_exceeded"),
            Error::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            Error::Config(_) | Error::ClusterMismatch(_) | Error::Internal(_) => {
                tracing::error!(error = %e, "internal error");
                return ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", "internal error");
            }
            // `tessera::Error` is non-exhaustive for other crates; a new variant is a 500 until
            // it is mapped above.
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(code = %self.code, message = %self.message, "request failed");
        }
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(v) = self.current_version {
            error["current_version"] = json!(v);
        }
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
