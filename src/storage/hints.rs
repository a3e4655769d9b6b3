//! Compaction hints: how a shard's owner tells the compactors that the shard needs work, so
//! that compactors do not poll every shard's manifest.
//!
//! The owner knows its shard's L0 after each of its flushes and manifest reads. When L0 reaches
//! `storage.compaction_hint_l0` it creates `{prefix}/hints/compact/{shard}`; when L0 is below
//! again it deletes it. A compactor lists `hints/compact/` (one LIST for every shard) and runs
//! compaction only for the shards listed. A hint is advice, not state: a lost or stale hint
//! costs at most a late or an idle compaction pass, never data (the owner's L0 limit still
//! applies backpressure, and the owner refreshes its manifest while near it).

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::error::Result;
use crate::shard::ShardId;
use crate::storage::objstore::ClusterStore;

fn dir(store: &ClusterStore) -> Path {
    store.path("hints/compact")
}

fn path(store: &ClusterStore, shard: ShardId) -> Path {
    store.path(&format!("hints/compact/{shard}"))
}

/// Marks `shard` as needing compaction (its L0 holds `l0` SSTs).
pub async fn set(store: &ClusterStore, shard: ShardId, l0: usize) -> Result<()> {
    let body = format!("{{\"l0\":{l0}}}");
    store
        .store
        .put(&path(store, shard), PutPayload::from(body))
        .await?;
    Ok(())
}

/// Clears `shard`'s hint, if any.
pub async fn clear(store: &ClusterStore, shard: ShardId) -> Result<()> {
    match store.store.delete(&path(store, shard)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The shards with a hint, in one LIST.
pub async fn list(store: &ClusterStore) -> Result<Vec<ShardId>> {
    use futures::TryStreamExt;
    let listed: Vec<_> = store.store.list(Some(&dir(store))).try_collect().await?;
    let mut shards: Vec<ShardId> = listed
        .iter()
        .filter_map(|m| m.location.filename()?.parse::<u32>().ok())
        .map(ShardId)
        .collect();
    shards.sort_unstable();
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn set_list_clear() {
        let store = crate::storage::testing::memory();
        set(&store, ShardId(7), 5).await.unwrap();
        set(&store, ShardId(2), 4).await.unwrap();
        assert_eq!(list(&store).await.unwrap(), vec![ShardId(2), ShardId(7)]);
        clear(&store, ShardId(7)).await.unwrap();
        clear(&store, ShardId(7)).await.unwrap();
        assert_eq!(list(&store).await.unwrap(), vec![ShardId(2)]);
    }
}
