//! `GET /v1/openapi.json`: the OpenAPI 3 description of the HTTP API. The document lives in
//! the repository (`docs/openapi.json`) and is compiled in; `tests/openapi.rs` checks that it
//! documents exactly the routes [`crate::app`] serves.

use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

/// The document, as checked in.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

/// `GET /v1/openapi.json`.
pub async fn spec() -> Response {
    ([(CONTENT_TYPE, "application/json")], SPEC).into_response()
}
