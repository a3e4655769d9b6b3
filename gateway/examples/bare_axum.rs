//! The floor for a cached read: a bare axum server that answers `GET /v1/kv/{key}` with a
//! fixed 100-byte value and an ETag, nothing else (no routing, cache, lease or metrics).
//! `tessera bench --workload get` runs against it unchanged, so a cached Tessera get can be
//! compared with it on the same machine:
//!
//! ```text
//! cargo run --release -p gateway --example bare_axum -- 127.0.0.1:7099
//! tessera --endpoints http://127.0.0.1:7099 bench --workload get --concurrency 64
//! ```

use axum::http::header;
use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7099".into());
    let value = vec![b'v'; 100];
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/kv/{*key}",
            get(move || {
                let value = value.clone();
                async move { ([(header::ETAG, "\"1\"")], value) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("bare axum listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
