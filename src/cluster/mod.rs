//! Who serves what: the lease, membership, placement and the etcd driver behind them.
//!
//! - [`session`]: the one ownership session used by gateways (shards) and compactors
//!   (compaction claims): lease, keep-alive, membership view, placement, claim and release.
//! - [`lease`]: the local lease deadline and its safety argument.
//! - [`placement`]: members, owners, and rendezvous hashing of shards onto members.
//! - `etcd`: the etcd driver (the only user of `etcd_client`).

mod etcd;
pub mod lease;
pub mod placement;
pub mod session;
