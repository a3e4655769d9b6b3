//! # Tessera core
//!
//! Tessera is a key-value store whose data lives in object storage. The key space is split into
//! a fixed number of shards; each shard is one SlateDB database under
//! `{prefix}/shards/{shard:05}`. This crate holds everything but the network front end:
//!
//! ```text
//!  gateway (HTTP, axum)            gateway/ crate: parse → call core → map errors
//!    │
//!    ▼
//!  Node ── key → shard (shard.rs) ──▶ shard slot (node/: Open | Draining | Reopening | …)
//!    │                                   │  read: hot-key cache (reads/) or database
//!    │                                   │  write: stripe lock, precondition, then SlateDB
//!    │                                   ▼
//!    │                               ShardStore (storage/store.rs, the only SlateDB writer)
//!    │                                   │  WAL + SSTs
//!    │                                   ▼
//!    │                               object store (storage/objstore.rs: file, memory, s3)
//!    ▼
//!  Session (cluster/): which shards this process holds, for how long (etcd lease, placement)
//! ```
//!
//! ## Module map
//! - [`cluster`]: the ownership session shared by gateways and compactors, the lease
//!   deadline, rendezvous placement, and the etcd driver.
//! - [`node`]: the shards a gateway serves (slot lifecycle, a pure state machine) and the
//!   read, write and scan services over them.
//! - [`reads`]: the hot-key cache and followers for eventual reads.
//! - [`storage`]: object storage, the cluster metadata object, and shard databases.
//! - [`config`]: configuration structs with documented defaults and `validate()`.
//! - [`error`]: the core [`Error`] and what a caller must do about each kind.
//! - [`shard`]: the stable key → shard function (XXH3, Redis-style hash tags).
//! - [`tasks`]: background tasks, each named and cancelled on shutdown.
//! - [`process`]: logging set-up and the shutdown signal, shared by the binaries.
//! - `metrics` (feature `metrics`): the `process_*` and build metrics every binary exports.
//!
//! ## Guarantees
//! - A write is acknowledged only after it is durable in the object store; a crash loses only
//!   unacknowledged writes.
//! - Reads return only durable, unexpired values; versions strictly increase per key and are
//!   never reused.
//! - A batch is atomic within one shard. There is no cross-shard atomicity.
//! - Expired values are never returned, though they occupy storage until compaction.

#[cfg(feature = "cli")]
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod node;
pub mod process;
pub mod reads;
pub mod shard;
pub mod stats;
pub mod storage;
pub mod tasks;

// Paths the binaries and tests use.
pub use cluster::placement;
pub use cluster::placement::{ClusterView, Member, Owner};
pub use config::{
    ClusterConfig, LimitsConfig, NodeConfig, ObjectStoreConfig, ReadsConfig, StorageConfig,
};
pub use error::{BadInput, Error, ErrorKind, Result};
pub use node::{
    Consistency, Located, Node, NodeStats, Precondition, Read, ReadSource, ScanPage, ScanRequest,
    WriteKind, WriteOp,
};
pub use shard::{shard_for_key, ShardId};
pub use storage::objstore;
pub use storage::store::Entry;
