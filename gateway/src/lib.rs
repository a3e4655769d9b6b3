//! # Tessera gateway
//!
//! The HTTP front end of Tessera: an axum server over a [`tessera::Node`].
//!
//! - [`routes`]: the handlers; each parses the request, calls the service and renders.
//! - [`service`]: the operations of the API: served here or by the shard's owner, hedged
//!   eventual reads, scans gathered across shards.
//! - [`forward`]: one attempt to replay a request on another gateway.
//! - [`error`]: stable error codes and the one mapping of core errors to HTTP.
//! - [`codec`]: what arrives in URLs, headers and scan pages; [`config`], [`metrics`].
//! - [`ui`]: the status page (`/ui`); [`openapi`]: the API's description (`/v1/openapi.json`).
//! - Security, as layers in front of the handlers: [`auth`] (tokens, roles, the internal hop),
//!   [`limits`] (in-flight bound, body timeout), [`listener`] (TLS from [`tls`], header
//!   limits); [`reload`] re-reads their files on SIGHUP.
//!
//! All storage logic lives in the core.
//!
//! Lifecycle ([`run`]): bind the listener → open the node (every shard) → print the URL →
//! serve until the shutdown future resolves → stop accepting and drain in-flight requests
//! (bounded by `server.shutdown_timeout`) → close every shard (flush memtables) → return.

pub mod auth;
pub mod codec;
pub mod config;
pub mod error;
pub mod forward;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod openapi;
pub mod reload;
pub mod routes;
pub mod service;
pub mod tls;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tessera::{Member, Node};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
use metrics::Metrics;

/// State shared by every handler.
pub struct AppState {
    /// The shards this gateway serves.
    pub node: Arc<Node>,
    /// The configuration the gateway started with.
    pub config: GatewayConfig,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins (`/readyz` turns 503).
    pub shutdown: CancellationToken,
    /// Pooled keep-alive HTTP client for forwarding to shard owners.
    pub forwarder: reqwest::Client,
    /// Tokens and the cluster secret.
    pub auth: Arc<auth::Auth>,
}

impl AppState {
    /// State over `node`, with fresh metrics and forwarding client; `shutdown` is cancelled
    /// when shutdown begins.
    pub fn new(
        node: Arc<Node>,
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Result<Self, GatewayError> {
        let auth = Arc::new(auth::Auth::load(&config.auth).map_err(GatewayError::Config)?);
        let forwarder = forward::client(&config, auth.secret()).map_err(GatewayError::Config)?;
        let metrics = Arc::new(Metrics::new());
        metrics.follow_keepalives(&node);
        Ok(AppState {
            node,
            config,
            metrics,
            shutdown,
            forwarder,
            auth,
        })
    }
}

/// Builds the router. Layers, outermost first: metrics, admission ([`limits::admit`]),
/// authorization ([`auth::authorize`]), then the handler.
pub fn app(state: Arc<AppState>) -> Router {
    let metrics = Arc::clone(&state.metrics);
    let server = &state.config.server;
    let admission = Arc::new(limits::Admission::new(
        server.max_in_flight,
        server.body_timeout,
    ));
    let auth = Arc::clone(&state.auth);
    routes::router()
        .layer(axum::middleware::from_fn_with_state(auth, auth::authorize))
        .layer(axum::middleware::from_fn_with_state(
            admission,
            limits::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .with_state(state)
}

/// Errors that stop the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The node failed to open or close.
    #[error(transparent)]
    Node(#[from] tessera::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(std::io::Error),
}

/// Runs a gateway until `shutdown` resolves, then drains and closes every shard.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config.validate().map_err(GatewayError::Config)?;
    let tls = tls::ServerTls::load(&config.tls).map_err(GatewayError::Config)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(GatewayError::Serve)?;
    let url = config
        .cluster
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let me = Member {
        id: config
            .cluster
            .node_id
            .clone()
            .unwrap_or_else(|| url.clone()),
        url,
    };
    let node = Node::open(config.node(), me).await?;
    let token = CancellationToken::new();
    let state = Arc::new(AppState::new(
        Arc::clone(&node),
        config.clone(),
        token.clone(),
    )?);
    let mut reloads: Vec<Arc<dyn reload::Reload>> = Vec::new();
    if let Some(tokens) = state.auth.tokens() {
        reloads.push(tokens);
    }
    if let Some(tls) = &tls {
        reloads.push(Arc::clone(&tls.cert) as Arc<dyn reload::Reload>);
    }
    reload::watch(reloads, token.clone()).map_err(GatewayError::Serve)?;
    // The only stdout line: scripts and tests read the URL from it.
    println!("Tessera gateway listening on {scheme}://{addr}");
    tracing::info!(%addr, shards = config.storage.shard_count, store = %config.object_store.url, "gateway ready");

    let signal = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal.cancel();
    });
    // ORDERING: on shutdown, first hand every shard over (cluster mode) while still serving and
    // forwarding requests, then stop accepting and drain HTTP, then close what is left.
    let drain = token.clone();
    let leaving = Arc::clone(&node);
    let acceptor = tls.map(|t| t.acceptor);
    let server_config = config.server.clone();
    let server = listener::serve(listener, acceptor, app(state), &server_config, async move {
        drain.cancelled().await;
        leaving.leave().await;
    });
    let served: Result<(), GatewayError> = tokio::select! {
        () = server => Ok(()),
        // Past the drain budget, stop waiting for stragglers; their writes are unacknowledged.
        _ = async {
            token.cancelled().await;
            tokio::time::sleep(config.server.shutdown_timeout).await;
        } => {
            tracing::warn!("in-flight requests did not finish within shutdown_timeout");
            Ok(())
        }
    };
    tracing::info!("http server stopped; closing shards");
    let closed = node.close().await;
    tracing::info!("all shards closed");
    served?;
    closed.map_err(GatewayError::from)
}
