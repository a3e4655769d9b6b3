//! Key → shard routing.
//!
//! The key space is split into a fixed number of shards, chosen when a cluster is created and
//! recorded in its metadata object. A key maps to `xxh3_64(routing_bytes(key)) % shard_count`,
//! where XXH3 is the 64-bit XXH3 hash with seed 0 (a published, stable function: the mapping
//! never changes between releases) and `routing_bytes` is:
//!
//! - the bytes between the first `{` and the first `}` after it, when that span is non-empty
//!   (Redis Cluster's hash tags: `user:{42}:name` and `user:{42}:email` share a shard);
//! - otherwise the whole key.
//!
//! Invariant: [`shard_for_key`] is a pure function of the key bytes and the shard count.

use std::fmt;

/// A shard number in `0..shard_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:05}", self.0)
    }
}

/// Returns the bytes of `key` that decide its shard (the hash tag, if the key has one).
pub fn routing_bytes(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// Returns the shard that owns `key` in a cluster of `shard_count` shards.
///
/// # Panics
/// If `shard_count` is zero (configuration validation rejects that before any routing).
pub fn shard_for_key(key: &[u8], shard_count: u32) -> ShardId {
    assert!(shard_count > 0, "shard_count must be positive");
    let hash = xxhash_rust::xxh3::xxh3_64(routing_bytes(key));
    ShardId((hash % u64::from(shard_count)) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_route_only_the_tag() {
        assert_eq!(routing_bytes(b"user:{42}:name"), b"42");
        assert_eq!(routing_bytes(b"{a}{b}"), b"a");
        // An empty tag or an unclosed brace hashes the whole key, as in Redis Cluster.
        assert_eq!(routing_bytes(b"x{}y"), b"x{}y");
        assert_eq!(routing_bytes(b"x{y"), b"x{y");
        assert_eq!(routing_bytes(b"plain"), b"plain");
        assert_eq!(
            shard_for_key(b"user:{42}:name", 64),
            shard_for_key(b"user:{42}:email", 64)
        );
    }

    #[test]
    fn mapping_is_stable_and_spreads() {
        // Pinned values: changing the hash would silently move every key of every cluster.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"hello"), 0x9555e8555c62dcfd);
        let mut counts = [0u32; 64];
        for i in 0..64_000u32 {
            counts[shard_for_key(format!("key{i}").as_bytes(), 64).0 as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
