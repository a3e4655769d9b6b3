//! What the in-process gateway tests share: the router over a fresh embedded node.

use std::sync::Arc;

use axum::Router;
use gateway::{AppState, GatewayConfig};
use tessera::{Member, Node};
use tokio_util::sync::CancellationToken;

/// A gateway configured by `config` (its object store must be `memory://` or a temp dir) over
/// a freshly opened embedded node.
pub async fn app(config: GatewayConfig) -> Router {
    let me = Member {
        id: "test".into(),
        url: "http://127.0.0.1:1".into(),
    };
    let node = Node::open(config.node(), me).await.expect("open node");
    let state = AppState::new(node, config, CancellationToken::new()).expect("state");
    gateway::app(Arc::new(state))
}
