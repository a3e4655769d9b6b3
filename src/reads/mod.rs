//! What reads are served from besides the owner's database.
//!
//! - [`cache`]: the hot-key cache and why a strong read from it is never stale.
//! - [`follower`]: read-only followers of other gateways' shards, for eventual reads: a
//!   checkpoint reader plus the owner's log records past the checkpoint (`overlay`),
//!   read by one tail per owner log (`tail`).

pub mod cache;
pub mod follower;
pub(crate) mod overlay;
pub(crate) mod tail;
