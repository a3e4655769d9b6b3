//! The compactor's error type.

use tessera::ShardId;

/// What can stop a compactor or fail one shard's compaction.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompactorError {
    /// A core operation failed (etcd, cluster metadata, object store, configuration).
    #[error(transparent)]
    Core(#[from] tessera::Error),
    /// SlateDB's compactor or garbage collector failed on a shard. A `Closed(Fenced)` kind
    /// means another compactor claimed the shard's compactor epoch.
    #[error("compaction of shard {shard} failed: {source}")]
    Shard {
        shard: ShardId,
        #[source]
        source: slatedb::Error,
    },
    /// The metrics endpoint could not be started.
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] std::io::Error),
}

/// Result alias.
pub type Result<T, E = CompactorError> = std::result::Result<T, E>;
