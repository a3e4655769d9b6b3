//! Scans: one page of keys in order, gathered across shards. Strong: every owner scans its own
//! shards (this gateway included) and the pages are merged. Eventual: followers scan, here or
//! on the shards' follower gateways. A forwarded scan names its shards (internal parameter
//! `shards`) and is served here only.
//!
//! Invariant: the merged page is the first `limit` keys (within `limits.max_scan_bytes`) of
//! all the shards' pages; it says `more` when any shard had more, so a cursor from it loses no
//! key.

use std::collections::BTreeMap;

use axum::body::to_bytes;
use axum::http::HeaderValue;
use axum::response::Response;
use tessera::{Consistency, Error, Located, ScanPage, ScanRequest, ShardId};

use super::{deadline, pause_before_retry, to_owner};
use crate::codec;
use crate::error::{ApiError, ErrorCode};
use crate::forward::{self, Forwardable, Forwarded};
use crate::AppState;

/// One page of `req` with `consistency`: over `shards` only (a forwarded scan), else over
/// every shard. Every key returned counts as served here (monotonic eventual reads).
pub async fn scan(
    state: &AppState,
    fwd: &Forwardable,
    req: ScanRequest,
    consistency: Consistency,
    shards: Option<Vec<ShardId>>,
) -> Result<ScanPage, ApiError> {
    let page = match shards {
        Some(shards) => {
            let floors = fwd.floors()?;
            if !floors.is_empty() && floors.len() != shards.len() {
                let message = "one floor per shard expected";
                return Err(ApiError::bad_request(ErrorCode::InvalidQuery, message));
            }
            let scan = state.node.scan_shards(req, &shards, consistency, &floors);
            deadline(fwd, scan).await?
        }
        None => {
            let limit = state.node.scan_limit(req.limit)?;
            let pages = match consistency {
                Consistency::Strong => scan_strong(state, fwd, req).await?,
                Consistency::Eventual => scan_eventual(state, fwd, req).await?,
            };
            merge_pages(pages, limit, state.config.limits.max_scan_bytes)
        }
    };
    for e in &page.items {
        state
            .node
            .note_served(state.node.shard_of(&e.key), e.version);
    }
    Ok(page)
}

/// Scans every shard: here for the shards served here, through their owners for the rest;
/// returns the pages to merge. While some shard has no owner, or an owner turned out
/// not to be one, looks again (see [`pause_before_retry`]).
async fn scan_strong(
    state: &AppState,
    fwd: &Forwardable,
    req: ScanRequest,
) -> Result<Vec<ScanPage>, ApiError> {
    loop {
        let mut unowned = false;
        let (local, remote) = group_shards(state, |shard| match state.node.locate(shard) {
            Located::Local => None,
            Located::Remote(owner) => Some(owner.url),
            Located::Unowned => {
                unowned = true;
                None
            }
        });
        if !unowned {
            let local_page = async {
                if local.is_empty() {
                    return Ok(None);
                }
                let scan = state
                    .node
                    .scan_shards(req.clone(), &local, Consistency::Strong, &[]);
                deadline(fwd, scan).await.map(Some).map_err(ApiError::from)
            };
            let remote_pages = futures::future::try_join_all(remote.iter().map(|(url, shards)| {
                let path = with_shards(&fwd.path_and_query, shards);
                async move {
                    match to_owner(state, url, &path, fwd).await? {
                        Forwarded::Answer(resp) => decode_page(resp).await.map(Some),
                        Forwarded::Retry => Ok(None),
                    }
                }
            }));
            let (local_page, remote_pages) = futures::try_join!(local_page, remote_pages)?;
            if remote_pages.iter().all(Option::is_some) {
                let pages = local_page
                    .into_iter()
                    .chain(remote_pages.into_iter().flatten());
                return Ok(pages.collect());
            }
        }
        pause_before_retry(fwd, None).await?;
    }
}

/// Scans every shard eventually: here for the shards owned here or whose followers are kept
/// here, through the first of their follower gateways for the others
/// (`reads.follower_gateways`), with this gateway's watermarks as floors. A follower gateway
/// that does not answer within the staleness bound is passed over: its shards are scanned
/// here. Returns the pages to merge.
async fn scan_eventual(
    state: &AppState,
    fwd: &Forwardable,
    req: ScanRequest,
) -> Result<Vec<ScanPage>, ApiError> {
    let (here, away) = group_shards(state, |shard| {
        state.node.follower_gateway(shard).map(|m| m.url)
    });
    let scan_here = |shards: Vec<ShardId>| {
        let req = req.clone();
        async move {
            let scan = state
                .node
                .scan_shards(req, &shards, Consistency::Eventual, &[]);
            deadline(fwd, scan).await
        }
    };
    let remote = away.into_iter().map(|(url, shards)| {
        let path = with_shards(&fwd.path_and_query, &shards);
        let floors: Vec<String> = shards
            .iter()
            .map(|s| state.node.watermark(*s).to_string())
            .collect();
        let local = scan_here(shards);
        async move {
            let floors = HeaderValue::try_from(floors.join(","))
                .map_err(|e| Error::Internal(format!("floors header: {e}")))?;
            let out = fwd.with_header(forward::MIN_VERSION, floors);
            state.metrics.forwarded();
            let sent = forward::send(&state.forwarder, &url, &path, &out);
            let bound = state.node.config().staleness_bound();
            if let Ok(Ok(Forwarded::Answer(resp))) = tokio::time::timeout(bound, sent).await {
                if let Ok(page) = decode_page(resp).await {
                    return Ok(page);
                }
            }
            local.await
        }
    });
    let local = async {
        if here.is_empty() {
            return Ok(None);
        }
        scan_here(here).await.map(Some)
    };
    let (local, remote) = futures::try_join!(local, futures::future::try_join_all(remote))?;
    Ok(local.into_iter().chain(remote).collect())
}

/// Every shard, grouped by where `place` says it is scanned: here (`None`) or by the gateway
/// at a URL.
fn group_shards(
    state: &AppState,
    mut place: impl FnMut(ShardId) -> Option<String>,
) -> (Vec<ShardId>, BTreeMap<String, Vec<ShardId>>) {
    let mut here = Vec::new();
    let mut away: BTreeMap<String, Vec<ShardId>> = BTreeMap::new();
    for shard in (0..state.config.storage.shard_count).map(ShardId) {
        match place(shard) {
            Some(url) => away.entry(url).or_default().push(shard),
            None => here.push(shard),
        }
    }
    (here, away)
}

/// `path_and_query` with the internal parameter `shards` listing `shards`.
fn with_shards(path_and_query: &str, shards: &[ShardId]) -> String {
    let list: Vec<String> = shards.iter().map(|s| s.0.to_string()).collect();
    let sep = if path_and_query.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{path_and_query}{sep}shards={}", list.join(","))
}

/// Reads a scan page answered by another gateway (or passes its error on).
async fn decode_page(resp: Response) -> Result<ScanPage, ApiError> {
    let status = resp.status();
    let body = to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_gateway(e.to_string()))?;
    if !status.is_success() {
        return Err(ApiError::forwarded(status, &value));
    }
    codec::page_from_json(&value)
}

/// Merges sorted pages of disjoint shards into one page of at most `limit` items.
fn merge_pages(pages: Vec<ScanPage>, limit: usize, max_bytes: usize) -> ScanPage {
    let mut more = false;
    let mut all = Vec::new();
    for page in pages {
        more |= page.more;
        all.extend(page.items);
    }
    all.sort_by(|a, b| a.key.cmp(&b.key));
    let mut bytes = 0;
    let mut take = 0;
    while take < all.len() && take < limit && (take == 0 || bytes < max_bytes) {
        bytes += all[take].key.len() + all[take].value.len();
        take += 1;
    }
    more |= take < all.len();
    all.truncate(take);
    ScanPage { items: all, more }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tessera::Entry;

    use super::*;

    fn page(keys: &[&str], more: bool) -> ScanPage {
        let items = keys
            .iter()
            .map(|k| Entry {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::from_static(b"vv"),
                version: 1,
                expires_at_ms: None,
                written_at_ms: 0,
            })
            .collect();
        ScanPage { items, more }
    }

    fn keys(page: &ScanPage) -> Vec<&[u8]> {
        page.items.iter().map(|e| &e.key[..]).collect()
    }

    #[test]
    fn merged_pages_keep_key_order_limit_and_more() {
        let merged = merge_pages(
            vec![page(&["b", "d"], false), page(&["a", "c"], false)],
            3,
            1000,
        );
        assert_eq!(keys(&merged), [b"a", b"b", b"c"]);
        assert!(merged.more, "a key was left out");

        let merged = merge_pages(vec![page(&["a"], true), page(&["b"], false)], 10, 1000);
        assert_eq!(keys(&merged), [b"a", b"b"]);
        assert!(merged.more, "a shard had more");

        // The byte bound stops after the item that reaches it, never before the first.
        let merged = merge_pages(vec![page(&["a", "b", "c"], false)], 10, 4);
        assert_eq!(keys(&merged), [b"a", b"b"]);
        assert!(merged.more);
    }
}
