//! Where the data lives: object storage, the cluster metadata object, and each shard's
//! SlateDB database.
//!
//! - [`log`]: the per-gateway commit log (objects, sealing, the batching writer).
//! - [`commit`]: the commit path over it: writes, a shard's recovery and its checkpoints.
//! - [`hints`]: owners tell compactors which shards need compaction.
//! - [`objstore`]: the object store from a URL, with request counting.
//! - [`meta`]: the cluster metadata object that pins the shard count.
//! - [`store`]: one shard's SlateDB database (and read-only followers); durability, versions
//!   and TTL decisions. The only user of SlateDB.

pub mod commit;
pub mod hints;
pub mod log;
pub mod meta;
pub mod objstore;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
