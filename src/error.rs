//! The core error type.
//!
//! Every failure a caller can see is one [`Error`] variant, and every variant is classified by
//! [`Error::kind`] into what the caller must do about it. The gateway maps variants to HTTP
//! once, in its own `error` module, and hides the details of [`ErrorKind::Internal`] ones;
//! nothing in the core knows about HTTP.

use crate::shard::ShardId;

/// What a caller must do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or breaks a documented limit: fix it, do not retry.
    Invalid,
    /// The key does not exist (or has expired).
    NotFound,
    /// A conditional write's precondition did not hold.
    PreconditionFailed,
    /// The service cannot serve this now; the outcome of a write is unknown. Retry later.
    Unavailable,
    /// A bug or corrupted data: a human must look.
    Internal,
}

/// Which documented rule a request breaks ([`Error::InvalidInput`]); each is a stable code
/// of the API, which the gateway maps without a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadInput {
    /// An empty key.
    InvalidKey,
    /// A key longer than `limits.max_key_bytes`.
    KeyTooLong,
    /// A TTL of 0 or above `limits.max_ttl_secs`.
    InvalidTtl,
    /// A batch without operations.
    InvalidBatch,
    /// A batch with more than `limits.max_batch_ops` operations.
    BatchTooLarge,
    /// A batch naming a key twice.
    DuplicateKey,
    /// A scan limit above `limits.max_scan_limit`.
    InvalidLimit,
    /// A query naming something that does not exist (e.g. a shard).
    InvalidQuery,
}

/// Errors returned by the core library.
///
/// Deliberately not `#[non_exhaustive]`: the gateway maps every variant to HTTP with no
/// wildcard arm, so a new variant does not compile until it has a status and a code there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a documented rule.
    #[error("{message}")]
    InvalidInput { code: BadInput, message: String },
    /// A value exceeds the configured maximum size.
    #[error("value is {size} bytes; the limit is {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    /// A batch touches keys of more than one shard.
    #[error(
        "batch keys map to {shards} different shards; a batch must stay within one shard: \
         give related keys the same hash tag, e.g. `user:{{42}}:name` and `user:{{42}}:email` \
         both hash only `42`"
    )]
    CrossShard { shards: usize },
    /// The key is absent or expired.
    #[error("key not found")]
    NotFound,
    /// A precondition (`If-Match` / `If-None-Match`) failed. `current` is the key's current
    /// version, if it exists.
    #[error("precondition failed: current version is {}", match .current { Some(v) => v.to_string(), None => "absent".to_string() })]
    PreconditionFailed { current: Option<u64> },
    /// The shard cannot be served right now (object store unreachable, shard reopening).
    #[error("shard unavailable. shard=`{shard}` reason=`{reason}`")]
    ShardUnavailable { shard: ShardId, reason: String },
    /// Another writer opened the shard's database; this process must not serve it.
    #[error("shard fenced by a newer writer. shard=`{shard}`")]
    Fenced { shard: ShardId },
    /// The request did not complete within its deadline; a write's outcome is unknown.
    #[error("request deadline exceeded")]
    DeadlineExceeded,
    /// This gateway does not own the shard (anymore); the caller should find the owner.
    #[error("shard not owned by this gateway. shard=`{shard}`")]
    NotOwner { shard: ShardId },
    /// etcd could not be reached or answered an error.
    #[error("coordination error: {0}")]
    Coordination(String),
    /// The process is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Configuration is invalid; reported at start-up.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The cluster metadata in the object store disagrees with this process's configuration.
    #[error("cluster metadata mismatch: {0}")]
    ClusterMismatch(String),
    /// The object store failed outside of SlateDB (metadata object, store construction).
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// Unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(code: BadInput, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            code,
            message: message.into(),
        }
    }

    /// Classifies the error by what the caller must do. No wildcard arm: a new variant must be
    /// classified here deliberately.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput { .. } | Error::ValueTooLarge { .. } | Error::CrossShard { .. } => {
                ErrorKind::Invalid
            }
            Error::NotFound => ErrorKind::NotFound,
            Error::PreconditionFailed { .. } => ErrorKind::PreconditionFailed,
            Error::ShardUnavailable { .. }
            | Error::Fenced { .. }
            | Error::DeadlineExceeded
            | Error::ShuttingDown
            | Error::NotOwner { .. }
            | Error::Coordination(_)
            | Error::ObjectStore(_) => ErrorKind::Unavailable,
            Error::Config(_) | Error::ClusterMismatch(_) | Error::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// Core result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
