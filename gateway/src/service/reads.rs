//! Point reads. Strong: by the shard's owner, through [`dispatch`]. Eventual: by a follower,
//! here or on the shard's follower gateway, hedged with a strong read at the owner.
//!
//! Invariant (monotonic eventual reads): an eventual answer never goes back before what this
//! gateway already returned for the shard. Forwarded answers count as returned here
//! ([`note_forwarded`]), and a follower gateway is asked with this gateway's watermark as the
//! floor.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use tessera::{Consistency, Located, Read, ShardId};
use tokio::sync::Notify;

use super::{deadline, dispatch, note_forwarded, Served};
use crate::error::ApiError;
use crate::forward::{self, Forwardable, Forwarded};
use crate::AppState;

/// Reads `key` with `consistency`.
pub async fn get(
    state: &AppState,
    key: &[u8],
    consistency: Consistency,
    req: &Forwardable,
) -> Result<Served<Read>, ApiError> {
    let shard = state.node.shard_of(key);
    if consistency == Consistency::Eventual {
        return get_eventual(state, shard, key, req).await;
    }
    let local = || deadline(req, state.node.get(key));
    let served = dispatch(state, shard, req, &req.path_and_query, local).await?;
    if let Served::Forwarded(resp) = &served {
        note_forwarded(state, shard, resp);
    }
    Ok(served)
}

/// An eventual point read. Read by this gateway's follower of the shard, or, when the shard's
/// followers are kept by other gateways (`reads.follower_gateways`), by the first of those;
/// when it does not answer within the staleness bound, by a follower here after all.
///
/// Hedged: when that follower is opening (or behind what the gateway already returned), has
/// not answered within `reads.follower_hedge_after`, or failed, the owner is also asked for a
/// strong read and the first successful answer wins. A strong answer satisfies every eventual
/// guarantee, and an owner that is down, paused or cut off only leaves the follower's answer.
/// The follower's open goes on either way, and so does its read (`Followers::read`).
async fn get_eventual(
    state: &AppState,
    shard: ShardId,
    key: &[u8],
    req: &Forwardable,
) -> Result<Served<Read>, ApiError> {
    let located = state.node.locate(shard);
    if req.forwarded || matches!(located, Located::Local) {
        // Read here: owned here, or forwarded here (hop limit) by a gateway that keeps no
        // follower of the shard, whose watermark is the floor.
        let floor = req.floors()?.first().copied().unwrap_or(0);
        let read = deadline(req, state.node.get_eventual(key, floor)).await?;
        return Ok(Served::Here(read));
    }
    let home = state.node.follower_gateway(shard);
    let eventual = async {
        if let Some(home) = &home {
            if let Some(resp) = ask_follower_gateway(state, shard, &home.url, req).await {
                return Ok(Served::Forwarded(resp));
            }
        }
        deadline(req, state.node.get_eventual(key, 0))
            .await
            .map(Served::Here)
    };
    if !matches!(located, Located::Remote(_)) {
        return Ok(eventual.await?);
    }
    // The strong read at the owner (the path without the query): at once while the follower
    // is opening or behind, else once it has been silent for `follower_hedge_after` or failed.
    // Like any strong read it looks the owner up again until the deadline, so a follower that
    // cannot answer costs a strong read, not an error.
    let asked = AtomicBool::new(false);
    let follower_failed = Notify::new();
    let strong = async {
        if home.is_some() || state.node.follower_ready(shard) {
            let hedge_after = state.node.config().reads.follower_hedge_after;
            tokio::select! {
                _ = tokio::time::sleep(hedge_after) => {}
                _ = follower_failed.notified() => {}
            }
        }
        asked.store(true, Ordering::Relaxed);
        let strong_read = || deadline(req, state.node.get(key));
        match dispatch(state, shard, req, req.path(), strong_read).await {
            Ok(Served::Forwarded(resp)) => answer_of(state, shard, resp).map(Served::Forwarded),
            Ok(here) => Some(here),
            Err(_) => None,
        }
    };
    tokio::pin!(eventual, strong);
    // The first answer that succeeds wins; a failed one leaves the other.
    let answer = tokio::select! {
        read = &mut eventual => match read {
            Ok(a) => Ok((a, "follower")),
            Err(e) => {
                tracing::debug!(%shard, error = ?e, "follower read failed; asking the owner");
                // Stored for `strong` if it is not waiting yet.
                follower_failed.notify_one();
                strong.await.map(|r| (r, "owner")).ok_or(e)
            }
        },
        resp = &mut strong => match resp {
            Some(r) => Ok((r, "owner")),
            None => eventual.await.map(|a| (a, "follower")),
        },
    };
    if asked.load(Ordering::Relaxed) {
        state
            .metrics
            .hedged(answer.as_ref().map_or("none", |(_, by)| by));
    }
    Ok(answer?.0)
}

/// Asks the follower gateway at `url` for an eventual read, with this gateway's watermark for
/// the shard as the floor, so the answer never goes back before what was returned here. Its
/// answer, if it gives one within the staleness bound.
async fn ask_follower_gateway(
    state: &AppState,
    shard: ShardId,
    url: &str,
    req: &Forwardable,
) -> Option<Response> {
    let floor = HeaderValue::from(state.node.watermark(shard));
    let req = req.with_header(forward::MIN_VERSION, floor);
    state.metrics.forwarded();
    let sent = forward::send(&state.forwarder, url, &req.path_and_query, &req);
    let bound = state.node.config().staleness_bound();
    match tokio::time::timeout(bound, sent).await.ok()? {
        Ok(Forwarded::Answer(resp)) => answer_of(state, shard, resp),
        _ => None,
    }
}

/// Another gateway's response if it is an answer (a value or 404), noted as served here.
fn answer_of(state: &AppState, shard: ShardId, resp: Response) -> Option<Response> {
    if !(resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND) {
        return None;
    }
    note_forwarded(state, shard, &resp);
    Some(resp)
}
