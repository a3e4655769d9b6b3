//! `GET /ui`: the status page, one self-contained HTML file (`assets/ui.html`, compiled in).
//!
//! The page draws what this gateway sees: members, the shard → owner grid with epochs (unowned
//! shards highlighted), this gateway's request rate and hot-key cache hit ratio. Its script
//! polls `GET /v1/cluster` and `GET /metrics` on the same gateway; it loads nothing else, so it
//! works offline, and its Content-Security-Policy forbids any other origin.

use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY};
use axum::response::{Html, IntoResponse, Response};

/// The page.
const PAGE: &str = include_str!("../assets/ui.html");

/// Same-origin fetches and the page's inline script and style only.
const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                   style-src 'unsafe-inline'; img-src data:";

/// `GET /ui`.
pub async fn page() -> Response {
    (
        [(CONTENT_SECURITY_POLICY, CSP), (CACHE_CONTROL, "no-cache")],
        Html(PAGE),
    )
        .into_response()
}
