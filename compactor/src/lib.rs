//! # Tessera compactor
//!
//! Offloads SlateDB's compaction and garbage collection from the gateways. In cluster mode
//! gateways open their shards without SlateDB's embedded compactor and GC
//! (`tessera::NodeConfig::embedded_compaction`), so their CPU goes to requests; compactor
//! processes, stateless like gateways, do that work from the object store:
//!
//! ```text
//!  cluster.json ──▶ shard count          etcd /tessera/{cluster}/compactor/
//!                       │                   members/{id}     (daemons, own lease)
//!                       ▼                   owners/{shard}   (compaction claims)
//!  daemon.rs / once.rs ── claims (tessera::claims: HRW placement, claim txn, lease deadline)
//!                       │
//!                       ▼
//!  engine.rs ── SlateDB CompactorBuilder + GarbageCollectorBuilder on shards/{shard:05}
//! ```
//!
//! - [`daemon`]: runs until SIGTERM/SIGINT; claims its rendezvous-hash share of the shards and
//!   rebalances as compactors come and go; compacts the held shards their owners hinted
//!   (`tessera::storage::hints`, one LIST per poll for all shards) and garbage-collects every
//!   held shard now and then, so an idle shard costs almost nothing; releases its claims on
//!   shutdown.
//! - [`once`]: one maintenance pass over every shard (compact what needs it, GC), then exit;
//!   claims through etcd too, so it never works on a shard next to a daemon.
//! - [`log_gc`]: deletes the commit-log objects no replay can need; run by the daemon that
//!   holds shard 0's claim, and at the end of `--once`.
//!
//! **GC ownership.** Exactly one process kind runs SlateDB's garbage collector on a shard: the
//! compactor in cluster mode, the gateway in embedded mode. The compactor owns the SST
//! lifecycle there (it writes the SSTs that make the old ones obsolete), and keeping GC's
//! listing and deletes out of gateways keeps their CPU and object-store budget for requests.
//!
//! **Safety.** Claims give each shard one compactor at a time while leases hold; SlateDB's
//! compactor epoch is the backstop (a newer compactor fences an older one in the manifest).

pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod log_gc;
pub mod metrics;
pub mod once;
pub mod progress;

pub use config::CompactorConfig;
pub use error::{CompactorError, Result};

use tessera::objstore::{self, ClusterStore};
use tessera::storage::meta;
use tessera::Error;

/// Opens the cluster's object store and reads its shard count from `cluster.json`.
pub async fn open_cluster(cfg: &CompactorConfig) -> Result<(ClusterStore, u32)> {
    let store = objstore::open(&cfg.object_store)?;
    match meta::load(&store).await? {
        Some(m) => Ok((store, m.shard_count)),
        None => Err(Error::ClusterMismatch(format!(
            "no cluster at `{}`: `cluster.json` is missing (start a gateway first, or check \
             object_store.url)",
            cfg.object_store.url
        ))
        .into()),
    }
}
