//! Gateway configuration: the core's [`NodeConfig`] sections plus the HTTP server and logging.
//!
//! Loading order (later wins): built-in defaults → the TOML file given by `--config` →
//! `TESSERA_*` environment variables → command-line flags. The result is validated once; a bad
//! config stops the process with a message and a non-zero exit code.
//!
//! `gateway.example.toml` in this crate lists every key with its default; a test parses it, so
//! it cannot drift from this file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera::process::LogConfig;
use tessera::{
    ClusterConfig, LimitsConfig, NodeConfig, ObjectStoreConfig, ReadsConfig, StorageConfig,
};

/// Everything a gateway process needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// The HTTP server.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// Where data lives (see [`ObjectStoreConfig`]).
    pub object_store: ObjectStoreConfig,
    /// Shard layout and SlateDB tuning (see [`StorageConfig`]).
    pub storage: StorageConfig,
    /// Request limits (see [`LimitsConfig`]).
    pub limits: LimitsConfig,
    /// Hot-key cache and eventual reads (see [`ReadsConfig`]).
    pub reads: ReadsConfig,
    /// Cluster mode through etcd (see [`ClusterConfig`]); off by default.
    pub cluster: ClusterConfig,
}

/// The HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free port (the URL is printed). Default:
    /// `127.0.0.1:7070`.
    pub listen: SocketAddr,
    /// Deadline of one request: past it the client gets 503 with `Retry-After` (for a write the
    /// outcome is then unknown). Default: 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish before the shards are
    /// closed anyway. Default: 30s.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            request_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl GatewayConfig {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file `{}`: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config file `{}`: {e}", path.display()))
    }

    /// The core's part of the configuration.
    pub fn node(&self) -> NodeConfig {
        NodeConfig {
            object_store: self.object_store.clone(),
            storage: self.storage.clone(),
            limits: self.limits.clone(),
            reads: self.reads.clone(),
            cluster: self.cluster.clone(),
        }
    }

    /// Checks the whole configuration.
    pub fn validate(&self) -> Result<(), String> {
        self.node().validate().map_err(|e| e.to_string())?;
        if self.server.request_timeout.is_zero() {
            return Err("server.request_timeout must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml");
        let parsed = GatewayConfig::from_file(&path).unwrap();
        assert_eq!(parsed, GatewayConfig::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<GatewayConfig>("[server]\nlisten_addr = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
