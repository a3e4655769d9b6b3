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

use crate::auth::AuthConfig;
use crate::tls::TlsConfig;
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
    /// Bearer tokens and the cluster secret (see [`AuthConfig`]); off by default.
    pub auth: AuthConfig,
    /// HTTPS on the listener and trust for `https://` peers (see [`TlsConfig`]); off by default.
    pub tls: TlsConfig,
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
    /// A request body must arrive within this of its head, or the client gets `408`.
    /// Default: 10s.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A request head (and the TLS handshake) must arrive within this; a keep-alive connection
    /// idle this long is closed. Default: 10s.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Requests served at once; past it, `503 overloaded` at once. Default: 1024.
    pub max_in_flight: usize,
    /// Largest request head, in bytes (431 past it; at least 8192 is used). Default: 65536.
    pub max_header_bytes: usize,
    /// Most headers in a request (431 past it). Default: 100.
    pub max_headers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            request_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_in_flight: 1024,
            max_header_bytes: 65536,
            max_headers: 100,
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
        let s = &self.server;
        if [s.request_timeout, s.body_timeout, s.header_timeout]
            .iter()
            .any(Duration::is_zero)
        {
            return Err(
                "server.request_timeout, body_timeout and header_timeout must be positive".into(),
            );
        }
        if s.max_in_flight == 0 || s.max_headers == 0 {
            return Err("server.max_in_flight and server.max_headers must be positive".into());
        }
        self.tls.validate()?;
        self.validate_auth()
    }

    /// The rules that keep a gateway from running open by mistake.
    fn validate_auth(&self) -> Result<(), String> {
        let a = &self.auth;
        if a.tokens_file.is_none() && !a.insecure_no_auth && !self.server.listen.ip().is_loopback()
        {
            return Err(format!(
                "refusing to listen on {} without tokens: anyone who can reach it could read and write everything. Give --auth-tokens FILE, or --insecure-no-auth to run open anyway",
                self.server.listen
            ));
        }
        if a.tokens_file.is_some() && a.cluster_secret_file.is_none() && self.cluster.is_clustered()
        {
            return Err("cluster mode with --auth-tokens needs --cluster-secret FILE: without it a client could pass for a gateway".into());
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
