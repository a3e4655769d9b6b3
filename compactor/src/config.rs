//! Compactor configuration: the core's object-store and cluster sections (the same keys as the
//! gateway's) plus what compaction, garbage collection, metrics and logging need.
//!
//! Loading order (later wins): defaults → the TOML file given by `--config` → `TESSERA_*`
//! environment variables → flags. `compactor.example.toml` lists every key with its default; a
//! test parses it, so it cannot drift.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera::process::LogConfig;
use tessera::storage::log::gc::DEFAULT_FENCE_MIN_AGE;
use tessera::{ClusterConfig, ObjectStoreConfig};

/// Everything a compactor process needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompactorConfig {
    /// Where the cluster's data lives (the gateways' `object_store` section).
    pub object_store: ObjectStoreConfig,
    /// etcd and leases (the gateways' `cluster` section). `etcd_endpoints` is required;
    /// `node_id` is this compactor's member id (default: `{hostname}-{pid}`); `advertise_url`
    /// is unused.
    pub cluster: ClusterConfig,
    /// Compaction and garbage collection.
    pub compaction: CompactionConfig,
    /// Prometheus metrics endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Compaction and garbage collection of each claimed shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// L0 SSTs at which a shard is compacted: SlateDB's size-tiered scheduler merges L0 once it
    /// has this many (`min_compaction_sources`), and `--once` succeeds when every shard has
    /// fewer. Must be in 2..=8 and at most the gateways' `storage.l0_max_ssts` (L0 stops
    /// growing there, so a higher threshold would never be reached). Default: 4.
    pub l0_threshold: usize,
    /// How often the daemon lists the compaction hints (one LIST for all shards) and a running
    /// compactor polls its shard's manifest and job state (a few GETs per poll). Only hinted
    /// shards run a compactor, so an idle shard costs nothing here. Default: 5s (SlateDB's).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Compactions running at once per shard. Default: 1.
    pub max_concurrent_compactions: usize,
    /// A compaction job whose worker stopped heartbeating (its compactor was killed) is
    /// retried after this long; workers heartbeat every third of it. A stopping daemon also
    /// waits at most this long for its shards to stop. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub job_timeout: Duration,
    /// How often each claimed shard gets a garbage-collection pass (a manifest read, and a
    /// LIST and manifest reads per SlateDB directory: ~20 requests, so 0.006 requests/s per
    /// shard at 1 h). A shard whose compactor stopped gets its next pass at most `gc_min_age`
    /// later, so what a compaction replaced does not wait for the interval. Default: 1h.
    #[serde(with = "humantime_serde")]
    pub gc_interval: Duration,
    /// Obsolete objects younger than this are kept (a reader or a paused writer may still use
    /// them); SSTs replaced by a compaction are also protected this long by the compactor's
    /// checkpoint, for reads that began before. Default: 5m (SlateDB's GC default).
    #[serde(with = "humantime_serde")]
    pub gc_min_age: Duration,
    /// `--once`: give up on shards not below `l0_threshold` after this long. Default: 10m.
    #[serde(with = "humantime_serde")]
    pub once_timeout: Duration,
    /// `--once`: shards compacted at the same time. Default: 4.
    pub once_concurrency: usize,
    /// How often the daemon that holds shard 0's claim runs a commit-log GC pass (`--once`
    /// runs one at its end). A pass costs one LIST of `logs/`, a ranged GET per log object and
    /// a GET per shard with records there. Default: 1m.
    #[serde(with = "humantime_serde")]
    pub log_gc_interval: Duration,
    /// A sealed log's fence is kept at least this long after the seal, even once the rest of
    /// the log is gone: it fails the writes of a gateway that lost a shard and has not noticed
    /// yet, so it must exceed the time a gateway takes to notice (etcd watch, lease deadline)
    /// plus the longest a log flush can be in flight. Default: 1h.
    #[serde(with = "humantime_serde")]
    pub log_fence_min_age: Duration,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            l0_threshold: 4,
            poll_interval: Duration::from_secs(5),
            max_concurrent_compactions: 1,
            job_timeout: Duration::from_secs(30),
            gc_interval: Duration::from_secs(3600),
            gc_min_age: Duration::from_secs(300),
            once_timeout: Duration::from_secs(600),
            once_concurrency: 4,
            log_gc_interval: Duration::from_secs(60),
            log_fence_min_age: DEFAULT_FENCE_MIN_AGE,
        }
    }
}

/// Prometheus metrics endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the `GET /metrics` HTTP endpoint; port 0 picks a free port. Default: unset
    /// (no endpoint).
    pub listen: Option<SocketAddr>,
}

impl CompactorConfig {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file `{}`: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config file `{}`: {e}", path.display()))
    }

    /// Checks the whole configuration.
    pub fn validate(&self) -> Result<(), String> {
        if !self.cluster.is_clustered() {
            return Err(
                "the compactor needs etcd (--etcd / cluster.etcd_endpoints): it claims \
                        shards there, and embedded single-gateway mode compacts in the gateway"
                    .into(),
            );
        }
        self.cluster.validate().map_err(|e| e.to_string())?;
        if self.object_store.url.trim().is_empty() {
            return Err("object_store.url must not be empty".into());
        }
        let c = &self.compaction;
        if !(2..=8).contains(&c.l0_threshold) {
            return Err(format!(
                "compaction.l0_threshold must be in 2..=8, got {}",
                c.l0_threshold
            ));
        }
        if c.poll_interval.is_zero()
            || c.gc_interval.is_zero()
            || c.once_timeout.is_zero()
            || c.log_gc_interval.is_zero()
        {
            return Err("compaction.poll_interval, gc_interval, once_timeout and \
                        log_gc_interval must be positive"
                .into());
        }
        if c.job_timeout < Duration::from_secs(3) {
            return Err("compaction.job_timeout must be at least 3s".into());
        }
        if c.max_concurrent_compactions == 0 || c.once_concurrency == 0 {
            return Err(
                "compaction.max_concurrent_compactions and once_concurrency must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("compactor.example.toml");
        let parsed = CompactorConfig::from_file(&path).unwrap();
        assert_eq!(parsed, CompactorConfig::default());
    }

    #[test]
    fn needs_etcd_and_a_sane_threshold() {
        let mut c = CompactorConfig::default();
        assert!(c.validate().unwrap_err().contains("etcd"));
        c.cluster.etcd_endpoints = vec!["http://127.0.0.1:2379".into()];
        c.validate().unwrap();
        c.compaction.l0_threshold = 1;
        assert!(c.validate().unwrap_err().contains("l0_threshold"));
    }
}
