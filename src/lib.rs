//! # Tessera core
//!
//! Tessera is a key-value store whose data lives in object storage. The key space is split into
//! a fixed number of shards; each shard is one SlateDB database under
//! `{prefix}/shards/{shard:05}`. This crate holds everything but the network front end:
//!
//! ```text
//!  gateway (HTTP, axum)                 gateway/ crate: parse → call core → map errors
//!    │
//!    ▼
//!  Node ── key → shard (shard.rs) ──▶ ShardSlot (node.rs: Open | Reopening | Fenced | Closed)
//!                                         │  stripe lock, precondition check
//!                                         ▼
//!                                     ShardStore (store.rs, the only SlateDB user)
//!                                         │  WAL + SSTs
//!                                         ▼
//!                                     object store (objstore.rs: file, memory, s3)
//! ```
//!
//! ## Module map
//! - [`config`]: configuration structs with documented defaults and `validate()`.
//! - [`error`]: the core [`Error`] and what a caller must do about each kind.
//! - [`shard`]: the stable key → shard function (XXH3, Redis-style hash tags).
//! - [`objstore`]: object store from a URL.
//! - [`meta`]: the cluster metadata object that pins the shard count.
//! - [`placement`]: members, owners, and rendezvous hashing of shards onto members.
//! - [`lease`]: the local lease deadline and its safety argument.
//! - `etcd`: the etcd driver (membership, owner keys, keep-alive, watch).
//! - `ownership`: cluster mode: join, acquire, release, rebalance.
//! - [`claims`]: compaction claims of `tessera-compactor` processes (same protocol, own
//!   member set).
//! - [`store`]: one shard's SlateDB database (and read-only followers); durability, versions
//!   and TTL decisions.
//! - [`cache`]: the hot-key cache and why a strong read from it is never stale.
//! - [`follower`]: followers of other gateways' shards, for eventual reads.
//! - [`process`]: logging set-up and the shutdown signal, shared by the binaries.
//! - [`node`]: the shards a process serves and the key-value operations over them.
//!
//! ## Guarantees
//! - A write is acknowledged only after it is durable in the object store; a crash loses only
//!   unacknowledged writes.
//! - Reads return only durable, unexpired values; versions strictly increase per key and are
//!   never reused.
//! - A batch is atomic within one shard. There is no cross-shard atomicity.
//! - Expired values are never returned, though they occupy storage until compaction.

pub mod cache;
pub mod claims;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod error;
mod etcd;
pub mod follower;
pub mod lease;
pub mod meta;
pub mod node;
pub mod objstore;
mod ownership;
pub mod placement;
pub mod process;
pub mod shard;
pub mod store;

pub use config::{
    ClusterConfig, LimitsConfig, NodeConfig, ObjectStoreConfig, ReadsConfig, StorageConfig,
};
pub use error::{Error, ErrorKind, Result};
pub use node::{
    Consistency, Located, Node, NodeStats, Precondition, Read, ReadSource, ScanPage, ScanRequest,
    WriteKind, WriteOp,
};
pub use placement::{ClusterView, Member, Owner};
pub use shard::{shard_for_key, ShardId};
pub use store::Entry;
