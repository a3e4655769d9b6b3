//! What reads are served from besides the owner's database.
//!
//! - [`cache`]: the hot-key cache and why a strong read from it is never stale.
//! - [`follower`]: read-only followers of other gateways' shards, for eventual reads.

pub mod cache;
pub mod follower;
