//! Configuration of the core: where data lives, how shards store it, and request limits.
//!
//! Every struct is plain data with `Default` (the documented defaults), `serde` support with
//! `deny_unknown_fields` (a typo in a config file is an error, not a silently ignored key) and
//! human-readable durations (`"10ms"`, `"5s"`). [`NodeConfig::validate`] checks cross-field
//! rules once at start-up. Nothing here reads the environment; the gateway layers files,
//! environment variables and flags on top and then calls `validate`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MIB: usize = 1024 * 1024;

/// Everything a [`crate::Node`] needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the cluster's data lives.
    pub object_store: ObjectStoreConfig,
    /// How each shard's SlateDB database is tuned.
    pub storage: StorageConfig,
    /// Request size limits.
    pub limits: LimitsConfig,
    /// The hot-key cache and eventual reads.
    pub reads: ReadsConfig,
    /// Cluster membership through etcd (absent endpoints: the embedded single-node mode).
    pub cluster: ClusterConfig,
}

/// Cluster mode: gateways own shards through etcd leases.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints, e.g. `["http://127.0.0.1:2379"]`. Empty (the default) means the embedded
    /// mode: this process owns every shard and needs no etcd.
    pub etcd_endpoints: Vec<String>,
    /// Cluster name: the etcd key prefix is `/tessera/{name}/`. Default: `default`.
    pub name: String,
    /// This gateway's member id. Default: unset, which means its advertise URL.
    pub node_id: Option<String>,
    /// URL other gateways use to reach this one. Default: unset, which means
    /// `http://{listen address}` (set it when listening on 0.0.0.0).
    pub advertise_url: Option<String>,
    /// etcd lease TTL: how long a dead or cut-off gateway keeps its shards. Default: 3s.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the lease is renewed. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Safety margin: a gateway stops serving at `last acknowledged keep-alive sent + TTL -
    /// margin`; it must exceed the clock-rate drift against etcd over one TTL. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub lease_margin: Duration,
    /// How often a gateway renews its heartbeat (`beats/{id}` in etcd, a conditional put).
    /// Default: 250ms.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Early takeover. A gateway serves only until its last acknowledged heartbeat was sent +
    /// this; a gateway that cannot get an answer from a shard's owner may take the owner's
    /// shards once the owner's heartbeat has not moved for the owner's timeout + 1/8 (each
    /// beat carries it), without waiting for etcd to expire its lease
    /// (`src/cluster/lease.rs`). `0s` turns it off: shards then move only when the lease
    /// expires. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Membership additions are acted on after this quiet period, so flapping does not move
    /// shards back and forth (a departure at once: its shards have no owner). Default: 300ms.
    #[serde(with = "humantime_serde")]
    pub rebalance_delay: Duration,
    /// Timeout of one etcd request. Default: 2s.
    #[serde(with = "humantime_serde")]
    pub etcd_timeout: Duration,
    /// At start-up, how long to keep trying to reach etcd (connect, grant the first lease),
    /// with backoff and one log line per failed attempt, before giving up: etcd may start
    /// after us (compose, Kubernetes). `0s`: one attempt. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// PEM CA that signed etcd's server certificate; needs `https://` endpoints. Default:
    /// unset (the system roots are not used: etcd certificates are usually private).
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with `etcd_key`), when etcd checks client
    /// certificates. Default: unset.
    pub etcd_cert: Option<PathBuf>,
    /// PEM private key of `etcd_cert`. Default: unset.
    pub etcd_key: Option<PathBuf>,
    /// etcd user name (etcd auth enabled). The password is read from `etcd_password_file`, or
    /// else from the `TESSERA_ETCD_PASSWORD` environment variable; it is never a config value
    /// or a flag, so it does not show in `ps` or in a printed config. Default: unset.
    pub etcd_user: Option<String>,
    /// File holding the etcd password (trailing newline ignored). Default: unset.
    pub etcd_password_file: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            name: "default".into(),
            node_id: None,
            advertise_url: None,
            lease_ttl: Duration::from_secs(3),
            keepalive_interval: Duration::from_secs(1),
            lease_margin: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(1),
            rebalance_delay: Duration::from_millis(300),
            etcd_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(60),
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password_file: None,
        }
    }
}

impl ClusterConfig {
    /// True when gateways coordinate through etcd.
    pub fn is_clustered(&self) -> bool {
        !self.etcd_endpoints.is_empty()
    }

    /// Checks the lease and naming rules (shared by gateways and compactors).
    pub fn validate(&self) -> Result<()> {
        let c = self;
        if c.lease_ttl.subsec_nanos() != 0 || c.lease_ttl < Duration::from_secs(1) {
            return Err(Error::Config(
                "cluster.lease_ttl must be a whole number of seconds, at least 1s".into(),
            ));
        }
        if c.keepalive_interval.is_zero() || c.keepalive_interval * 2 + c.lease_margin > c.lease_ttl
        {
            return Err(Error::Config(format!(
                "cluster.keepalive_interval ({:?}) * 2 + cluster.lease_margin ({:?}) must not exceed cluster.lease_ttl ({:?}): a lease must survive one lost keep-alive",
                c.keepalive_interval, c.lease_margin, c.lease_ttl
            )));
        }
        if !c.heartbeat_timeout.is_zero()
            && (c.heartbeat_interval.is_zero() || c.heartbeat_interval * 2 > c.heartbeat_timeout)
        {
            return Err(Error::Config(format!(
                "cluster.heartbeat_interval ({:?}) * 2 must not exceed cluster.heartbeat_timeout ({:?}) (0s turns early takeover off): a gateway must survive one lost heartbeat",
                c.heartbeat_interval, c.heartbeat_timeout
            )));
        }
        if c.name.is_empty() || c.name.contains('/') {
            return Err(Error::Config(
                "cluster.name must be non-empty and contain no `/`".into(),
            ));
        }
        if c.etcd_cert.is_some() != c.etcd_key.is_some() {
            return Err(Error::Config(
                "cluster.etcd_cert and cluster.etcd_key (--etcd-cert, --etcd-key) go together"
                    .into(),
            ));
        }
        if c.etcd_password_file.is_some() && c.etcd_user.is_none() {
            return Err(Error::Config(
                "cluster.etcd_password_file needs cluster.etcd_user (--etcd-user)".into(),
            ));
        }
        Ok(())
    }

    /// The etcd password of `etcd_user`: the file's first line, or `TESSERA_ETCD_PASSWORD`.
    /// `None` without a user. Errors name the file, never the password.
    pub fn etcd_password(&self) -> Result<Option<String>> {
        if self.etcd_user.is_none() {
            return Ok(None);
        }
        let password = match &self.etcd_password_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::Config(format!(
                        "cannot read etcd password file `{}`: {e}",
                        path.display()
                    ))
                })?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => std::env::var("TESSERA_ETCD_PASSWORD").map_err(|_| {
                Error::Config(
                    "cluster.etcd_user needs a password: TESSERA_ETCD_PASSWORD or cluster.etcd_password_file (--etcd-password-file)".into(),
                )
            })?,
        };
        Ok(Some(password))
    }
}

/// Object store selection and client behaviour.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// Store URL: `file:///abs/path` or a plain (relative or absolute) path for the local
    /// filesystem, `memory://` for an in-process store (tests only: nothing survives a restart),
    /// or `s3://bucket/optional/prefix` for S3 and S3-compatible servers. Default: `./data`.
    pub url: String,
    /// S3 endpoint URL for S3-compatible servers (MinIO, s3s-fs), e.g. `http://127.0.0.1:9000`.
    /// Default: unset, which means `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint: Option<String>,
    /// S3 region. Default: unset, which means `AWS_REGION`/`AWS_DEFAULT_REGION` or `us-east-1`.
    pub region: Option<String>,
    /// Use virtual-hosted-style S3 URLs (`bucket.host`). Default: false (path style, which
    /// MinIO-like servers need).
    pub virtual_hosted_style: bool,
    /// Allow plain `http://` endpoints. Default: true (local S3-compatible servers).
    pub allow_http: bool,
    /// Timeout of one object-store HTTP request. Default: 5s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Retries of a failed object-store operation before the error reaches the request (both the
    /// S3 client's and SlateDB's retry layers are bounded by it). Default: 3.
    pub max_retries: u32,
    /// fsync every file written to a local filesystem store, so acknowledged writes survive a
    /// machine crash, not only a process crash. Default: true.
    pub fsync: bool,
}

impl ObjectStoreConfig {
    /// True for a local-filesystem store, which has no `If-Match` (so SlateDB's GC boundary
    /// files must be off there).
    pub fn is_local(&self) -> bool {
        let url = self.url.trim();
        url.starts_with("file://") || !url.contains("://")
    }
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        Self {
            url: "./data".to_string(),
            endpoint: None,
            region: None,
            virtual_hosted_style: false,
            allow_http: true,
            request_timeout: Duration::from_secs(5),
            max_retries: 3,
            fsync: true,
        }
    }
}

/// Shard layout and the SlateDB settings of every shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Number of shards. Fixed when the cluster is first created (recorded in the cluster
    /// metadata object); a process configured differently refuses to start. Default: 64.
    pub shard_count: u32,
    /// Shortest time between the starts of two flushes of the gateway's commit log (group
    /// commit over every shard it owns): the latency/cost knob. A write to an idle gateway is
    /// flushed at once (latency: one object-store PUT); under load writes wait up to this long
    /// and share one PUT, so a gateway issues at most `1 / flush_interval` log PUTs per second
    /// whatever its shard count. Default: 10ms.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Flush early: under load, a flush starts before `flush_interval` has passed once this
    /// many writes wait and at least as many as the previous flush carried. Clients that wait
    /// on each flush then wait about one PUT, not one interval, and every early PUT still
    /// carries this many writes, so log PUTs per second stay at most `max(1 /
    /// flush_interval, writes per second / flush_early_writes)`. 0: never early. Default: 8.
    pub flush_early_writes: usize,
    /// A shard written since its last checkpoint checkpoints again this long after it (its
    /// memtable is written out as an L0 SST with a marker saying how far into the log it
    /// reaches), even when far below `l0_sst_size_bytes`. A new owner after a crash replays
    /// the previous owner's log from the last checkpoint, so this bounds that replay to about
    /// one interval of writes. Costs one SST and one manifest PUT per written shard per
    /// interval. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub memtable_flush_interval: Duration,
    /// How often each owned shard re-reads its manifest (new compaction results). Fencing no
    /// longer depends on it (a new owner seals the log), and a shard near its L0 limit reads
    /// it every second anyway, so it can be slow: it is most of an idle shard's object-store
    /// requests. Must stay well below the compactor's `gc_min_age` (300 s), which keeps SSTs
    /// a writer may still read from a manifest this old. Costs one GET per shard per
    /// interval. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub manifest_poll_interval: Duration,
    /// Memtable size at which it is frozen and written as an L0 SST. Default: 16 MiB.
    pub l0_sst_size_bytes: usize,
    /// Unflushed bytes per shard at which writes wait (backpressure). Default: 64 MiB.
    pub max_unflushed_bytes: usize,
    /// Bytes of the block cache shared by all shards of the process. Default: 256 MiB.
    pub block_cache_bytes: u64,
    /// L0 SSTs at which a shard stops flushing memtables until compaction catches up; writes
    /// then wait once `max_unflushed_bytes` is reached (backpressure). SlateDB's
    /// `l0_max_ssts` and `l0_max_ssts_per_key`. Default: 8.
    pub l0_max_ssts: usize,
    /// L0 SSTs at which an owner asks the compactors to compact its shard (a hint object,
    /// `storage/hints.rs`); compactors compact only hinted shards. Default: 4.
    pub compaction_hint_l0: usize,
    /// Shards opened concurrently at start-up. Default: 8.
    pub open_concurrency: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            shard_count: 64,
            flush_interval: Duration::from_millis(10),
            flush_early_writes: 8,
            memtable_flush_interval: Duration::from_secs(30),
            manifest_poll_interval: Duration::from_secs(60),
            l0_sst_size_bytes: 16 * MIB,
            max_unflushed_bytes: 64 * MIB,
            block_cache_bytes: 256 * MIB as u64,
            l0_max_ssts: 8,
            compaction_hint_l0: 4,
            open_concurrency: 8,
        }
    }
}

/// The hot-key cache and the followers that serve eventual reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReadsConfig {
    /// Bytes of keys and values the hot-key cache holds (owner and follower entries together);
    /// 0 disables it. Default: 128 MiB.
    pub hot_key_cache_bytes: u64,
    /// How often a gateway polls the commit log of each owner whose shards it follows (one
    /// GET of the log's next object, shared by all those shards) and each follower re-reads
    /// its shard's manifest (for new checkpoints): the main term of the eventual-read
    /// staleness bound. Default: 1s.
    #[serde(with = "humantime_serde")]
    pub follower_poll_interval: Duration,
    /// A follower unused for this long is closed. Default: 60s.
    #[serde(with = "humantime_serde")]
    pub follower_idle_timeout: Duration,
    /// How long an eventual read may be answered from this gateway's cache of a follower's
    /// answers (added to the staleness bound). Default: 100ms.
    #[serde(with = "humantime_serde")]
    pub follower_cache_ttl: Duration,
    /// An eventual read that the follower has not answered within this long is also sent to
    /// the shard's owner as a strong read, and the first answer wins (a hedged request): a
    /// follower whose blocks are not cached yet costs object-store GETs per read, the owner's
    /// hot-key cache usually does not. While a follower opens, the owner is asked at once.
    /// Only slow reads reach the owner; a very long value (`"1h"`) turns hedging off.
    /// Default: 5ms.
    #[serde(with = "humantime_serde")]
    pub follower_hedge_after: Duration,
    /// How many gateways keep a follower of each shard: the first this many live members by
    /// rendezvous hashing of the shard, leaving out its owner (every gateway computes the same
    /// set). Another gateway forwards a shard's eventual reads to the first of them, and
    /// reads through its own follower only when that gateway does not answer within the
    /// staleness bound. Bounds the object-store cost of followers (their gateways' polls of
    /// the owners' logs and their manifest reads) to this many gateways per shard however
    /// many there are, for one more hop on the other gateways' eventual reads. 0: no limit,
    /// every gateway reads through its own followers. Default: 3.
    pub follower_gateways: usize,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        Self {
            hot_key_cache_bytes: 128 * MIB as u64,
            follower_poll_interval: Duration::from_secs(1),
            follower_idle_timeout: Duration::from_secs(60),
            follower_cache_ttl: Duration::from_millis(100),
            follower_hedge_after: Duration::from_millis(5),
            follower_gateways: 3,
        }
    }
}

/// Limits on what a request may carry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest key in bytes (keys are 1..=this). Default: 1024.
    pub max_key_bytes: usize,
    /// Largest value in bytes. Default: 1 MiB.
    pub max_value_bytes: usize,
    /// Most operations in one batch. Default: 1000.
    pub max_batch_ops: usize,
    /// Most items in one scan page (`limit` above it is an error). Default: 1000.
    pub max_scan_limit: usize,
    /// Scan page size when the request gives no `limit`. Default: 100.
    pub default_scan_limit: usize,
    /// A scan page stops early once its values add up to this many bytes (at least one item is
    /// always returned). Default: 4 MiB.
    pub max_scan_bytes: usize,
    /// Longest TTL in seconds. Default: 10 years.
    pub max_ttl_secs: u64,
    /// Largest batch request body in bytes (JSON, values base64-encoded). Default: 16 MiB.
    pub max_batch_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: MIB,
            max_batch_ops: 1000,
            max_scan_limit: 1000,
            default_scan_limit: 100,
            max_scan_bytes: 4 * MIB,
            max_ttl_secs: 10 * 365 * 24 * 3600,
            max_batch_body_bytes: 16 * MIB,
        }
    }
}

impl NodeConfig {
    /// The staleness bound of eventual reads: a write durable (its log object created) this
    /// long before an eventual read began is visible to it. One follower poll of the owner's
    /// log plus the GET it takes (allowed 250 ms), and the follower cache's age.
    pub fn staleness_bound(&self) -> Duration {
        self.reads.follower_poll_interval
            + Duration::from_millis(250)
            + self.reads.follower_cache_ttl
    }

    /// True when shards run SlateDB's compactor and garbage collector in this process: the
    /// embedded single-gateway mode, so a first run needs nothing else. In cluster mode the
    /// `tessera-compactor` processes own compaction and GC instead. A gateway must never run
    /// them there: a standalone compactor claiming a shard would fence the gateway's whole
    /// database (SlateDB's compactor epoch), and exactly one process kind must own the SST
    /// lifecycle.
    pub fn embedded_compaction(&self) -> bool {
        !self.cluster.is_clustered()
    }

    /// Checks every rule that a single field's type cannot express.
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(Error::Config(msg));
        let s = &self.storage;
        let l = &self.limits;
        let o = &self.object_store;
        if s.shard_count == 0 || s.shard_count > 65_536 {
            return fail(format!(
                "storage.shard_count must be in 1..=65536, got {}",
                s.shard_count
            ));
        }
        if s.flush_interval.is_zero() {
            return fail("storage.flush_interval must be positive".into());
        }
        if s.memtable_flush_interval.is_zero() {
            return fail("storage.memtable_flush_interval must be positive".into());
        }
        if s.manifest_poll_interval.is_zero() {
            return fail("storage.manifest_poll_interval must be positive".into());
        }
        if s.max_unflushed_bytes <= s.l0_sst_size_bytes {
            return fail(format!(
                "storage.max_unflushed_bytes ({}) must be greater than storage.l0_sst_size_bytes ({})",
                s.max_unflushed_bytes, s.l0_sst_size_bytes
            ));
        }
        if s.open_concurrency == 0 {
            return fail("storage.open_concurrency must be positive".into());
        }
        if l.max_key_bytes == 0 || l.max_value_bytes == 0 || l.max_batch_ops == 0 {
            return fail(
                "limits.max_key_bytes, max_value_bytes and max_batch_ops must be positive".into(),
            );
        }
        if l.default_scan_limit == 0 || l.default_scan_limit > l.max_scan_limit {
            return fail(format!(
                "limits.default_scan_limit ({}) must be in 1..=limits.max_scan_limit ({})",
                l.default_scan_limit, l.max_scan_limit
            ));
        }
        if o.url.trim().is_empty() {
            return fail("object_store.url must not be empty".into());
        }
        if o.request_timeout.is_zero() {
            return fail("object_store.request_timeout must be positive".into());
        }
        let r = &self.reads;
        if r.follower_poll_interval.is_zero() || r.follower_idle_timeout.is_zero() {
            return fail(
                "reads.follower_poll_interval and reads.follower_idle_timeout must be positive"
                    .into(),
            );
        }
        if s.l0_max_ssts == 0 {
            return fail("storage.l0_max_ssts must be positive".into());
        }
        if s.compaction_hint_l0 == 0 || s.compaction_hint_l0 > s.l0_max_ssts {
            return fail(format!(
                "storage.compaction_hint_l0 ({}) must be in 1..=storage.l0_max_ssts ({})",
                s.compaction_hint_l0, s.l0_max_ssts
            ));
        }
        self.cluster.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn cross_field_rules_are_enforced() {
        let mut c = NodeConfig::default();
        c.storage.shard_count = 0;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::default();
        c.storage.max_unflushed_bytes = c.storage.l0_sst_size_bytes;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::default();
        c.limits.default_scan_limit = c.limits.max_scan_limit + 1;
        assert!(c.validate().is_err());
    }
}
