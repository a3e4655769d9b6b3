//! What the handlers call: the key-value operations of the API over the [`tessera::Node`],
//! served here when this gateway owns the shard, else by its owner (cluster mode).
//!
//! - `reads`: point reads; strong at the owner, eventual through followers, hedged.
//! - `scan`: one page of a scan, gathered across shards, owners and followers.
//! - here: writes, and `dispatch`, which finds a shard's owner and retries until the
//!   request's deadline.
//!
//! Results are [`Served`]: computed here, for the handler to render, or another gateway's
//! response, passed on as it sent it. Every call runs under the request's deadline
//! ([`Forwardable::remaining`]); past it the answer is `503 deadline_exceeded`.
//!
//! Retries: while a shard has no owner (failover in progress), its owner answers `421` (it
//! handed the shard over) or refuses the connection, the owner is looked up again every
//! `RETRY_PAUSE` (25 ms) until the deadline, then the answer is `503 no_owner` (whether a failed
//! forward may be retried at all is `forward::send`'s call). A leaving gateway keeps serving
//! briefly after handing its shards over, so forwarders with a stale view get `421`, not a
//! broken connection. An owner that gives no answer is also made a suspect (`to_owner`): if
//! its heartbeat has stopped it is expelled, and its shards are taken before its lease expires.

mod reads;
mod scan;

use std::future::Future;
use std::time::Duration;

use axum::http::header;
use axum::response::Response;
use tessera::{Error, Located, ShardId, WriteOp};

use crate::codec;
use crate::error::ApiError;
use crate::forward::{self, Forwardable, Forwarded};
use crate::AppState;

pub use reads::get;
pub use scan::scan;

/// How long to wait before looking up a shard's owner again.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// A shard owner that has not answered a forwarded request after this is suspected of being
/// dead or paused (see `to_owner`): two of its heartbeats (`cluster.heartbeat_interval`).
const SUSPECT_AFTER: Duration = Duration::from_millis(500);

/// What served a request.
pub enum Served<T> {
    /// This gateway, with this result.
    Here(T),
    /// Another gateway, with this response (status, passed headers and body as it sent them).
    Forwarded(Response),
}

impl<T> Served<T> {
    /// The response: a result served here rendered by `render`, or the forwarded one.
    pub fn respond(
        self,
        render: impl FnOnce(T) -> Result<Response, ApiError>,
    ) -> Result<Response, ApiError> {
        match self {
            Served::Here(result) => render(result),
            Served::Forwarded(resp) => Ok(resp),
        }
    }
}

/// Applies `ops` atomically (a single put or delete is one op) and returns the version all
/// written keys now have. The first key decides where the batch goes; the owner rejects
/// cross-shard batches, and the core rejects an empty one.
pub async fn write(
    state: &AppState,
    ops: Vec<WriteOp>,
    req: &Forwardable,
) -> Result<Served<u64>, ApiError> {
    let apply = || deadline(req, state.node.apply(ops.clone()));
    match ops.first() {
        Some(op) => {
            let shard = state.node.shard_of(&op.key);
            dispatch(state, shard, req, &req.path_and_query, apply).await
        }
        None => Ok(Served::Here(apply().await?)),
    }
}

/// Runs `fut` until `req`'s deadline.
async fn deadline<T>(
    req: &Forwardable,
    fut: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(req.remaining(), fut)
        .await
        .unwrap_or(Err(Error::DeadlineExceeded))
}

/// Serves `req` for `shard`: here through `local` when this gateway owns the shard, else by
/// forwarding it to the owner as `path_and_query` (the request's own, or for a hedged
/// eventual read, its strong form). Looks the owner up again until the request's deadline.
async fn dispatch<T, F, Fut>(
    state: &AppState,
    shard: ShardId,
    req: &Forwardable,
    path_and_query: &str,
    local: F,
) -> Result<Served<T>, ApiError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    loop {
        match state.node.locate(shard) {
            Located::Local => match local().await {
                // The shard moved away between the lookup and the call: nothing was applied.
                Err(Error::NotOwner { .. }) if !req.forwarded => {}
                other => return Ok(Served::Here(other?)),
            },
            Located::Remote(_) | Located::Unowned if req.forwarded => {
                return Err(Error::NotOwner { shard }.into());
            }
            Located::Remote(owner) => {
                state.metrics.forwarded();
                match to_owner(state, &owner.url, path_and_query, req).await? {
                    Forwarded::Answer(resp) => return Ok(Served::Forwarded(resp)),
                    Forwarded::Retry => {}
                }
            }
            Located::Unowned => {}
        }
        pause_before_retry(req, Some(shard)).await?;
    }
}

/// Forwards `req` to the shard owner at `url`, watching it: an owner that gives no answer
/// (refused, `421`, a broken connection) or has not answered after [`SUSPECT_AFTER`] may be
/// dead or paused, so its heartbeat is checked, and if it has stopped, the owner is expelled
/// and its shards taken without waiting for its lease to expire (`Node::suspect`). A check
/// of a live owner costs a few etcd reads and changes nothing.
async fn to_owner(
    state: &AppState,
    url: &str,
    path_and_query: &str,
    req: &Forwardable,
) -> Result<Forwarded, ApiError> {
    let send = forward::send(&state.forwarder, url, path_and_query, req);
    tokio::pin!(send);
    let sent = tokio::select! {
        sent = &mut send => sent,
        () = tokio::time::sleep(SUSPECT_AFTER) => {
            state.node.suspect(url);
            send.await
        }
    };
    if !matches!(sent, Ok(Forwarded::Answer(_))) {
        state.node.suspect(url);
    }
    sent
}

/// Waits [`RETRY_PAUSE`] before the owner of `shard` (`None`: of some of several shards) is
/// looked up again, or fails with `503 no_owner` if the deadline would pass first.
async fn pause_before_retry(req: &Forwardable, shard: Option<ShardId>) -> Result<(), ApiError> {
    if req.remaining() <= RETRY_PAUSE {
        return Err(ApiError::no_owner(shard));
    }
    tokio::time::sleep(RETRY_PAUSE).await;
    Ok(())
}

/// Answers forwarded from other gateways count as served here too (monotonic eventual reads).
fn note_forwarded(state: &AppState, shard: ShardId, resp: &Response) {
    if let Some(v) = resp
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| codec::parse_etag(v).ok())
    {
        state.node.note_served(shard, v);
    }
}
