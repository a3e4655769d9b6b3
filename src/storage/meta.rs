//! The cluster metadata object: `{prefix}/cluster.json`.
//!
//! Written once, by whichever process creates the cluster, with a create-if-absent PUT; every
//! later process reads it and refuses to start if its configuration disagrees. It pins what
//! must never change for the life of the data: the shard count (which decides every key's
//! shard) and the on-storage format version.

use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::objstore::ClusterStore;

/// The format version this build writes and understands.
pub const FORMAT_VERSION: u32 = 2;

/// Contents of `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// On-storage format version.
    pub format_version: u32,
    /// Number of shards, fixed at creation.
    pub shard_count: u32,
}

/// Creates the metadata object if the cluster is new, or checks it against `shard_count`.
/// Returns the stored metadata.
pub async fn create_or_check(store: &ClusterStore, shard_count: u32) -> Result<ClusterMeta> {
    let path = store.path("cluster.json");
    let wanted = ClusterMeta {
        format_version: FORMAT_VERSION,
        shard_count,
    };
    let body = serde_json::to_vec_pretty(&wanted).map_err(|e| Error::Internal(e.to_string()))?;
    let create = PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .store
        .put_opts(&path, PutPayload::from(body), create)
        .await
    {
        Ok(_) => return Ok(wanted),
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(found) = load(store).await? else {
        return Err(Error::ClusterMismatch(format!(
            "`{path}` vanished right after it was found to exist"
        )));
    };
    if found.shard_count != shard_count {
        return Err(Error::ClusterMismatch(format!(
            "the cluster at `{path}` was created with {} shards but this process is configured \
             with {shard_count}; the shard count cannot change after creation \
             (set storage.shard_count = {} or use a new object-store prefix)",
            found.shard_count, found.shard_count
        )));
    }
    Ok(found)
}

/// Reads the metadata object; `None` if the cluster was never created.
pub async fn load(store: &ClusterStore) -> Result<Option<ClusterMeta>> {
    let path = store.path("cluster.json");
    let bytes = match store.store.get(&path).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let found: ClusterMeta = serde_json::from_slice(&bytes).map_err(|e| {
        Error::ClusterMismatch(format!("`{path}` is not valid cluster metadata: {e}"))
    })?;
    if found.format_version != FORMAT_VERSION {
        return Err(Error::ClusterMismatch(format!(
            "`{path}` has format version {}, this build understands {FORMAT_VERSION}",
            found.format_version
        )));
    }
    Ok(Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_writer_wins_and_mismatch_is_refused() {
        let store = crate::storage::testing::memory();
        assert_eq!(load(&store).await.unwrap(), None);
        assert_eq!(create_or_check(&store, 8).await.unwrap().shard_count, 8);
        assert_eq!(create_or_check(&store, 8).await.unwrap().shard_count, 8);
        assert_eq!(load(&store).await.unwrap().unwrap().shard_count, 8);
        let err = create_or_check(&store, 16).await.unwrap_err();
        assert!(err.to_string().contains("created with 8 shards"), "{err}");
    }
}
