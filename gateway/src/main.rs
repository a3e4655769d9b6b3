//! `tessera-gateway`: parse flags → load config → init logging → `gateway::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::GatewayConfig;
use tessera::process::shutdown_signal;

/// Tessera gateway: serves the key-value HTTP API over shards stored in object storage.
///
/// With no flags it starts an embedded single-node store on http://127.0.0.1:7070 with its
/// data in ./data.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// TOML config file (see gateway/gateway.example.toml).
    #[arg(long, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (server.listen); port 0 picks a free port.
    #[arg(long, env = "TESSERA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Object store URL (object_store.url): ./dir, file:///dir, s3://bucket/prefix, memory://.
    #[arg(long, env = "TESSERA_STORE")]
    store: Option<String>,
    /// S3 endpoint for S3-compatible servers (object_store.endpoint).
    #[arg(long, env = "TESSERA_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Number of shards (storage.shard_count); fixed when the cluster is created.
    #[arg(long, env = "TESSERA_SHARDS")]
    shards: Option<u32>,
    /// WAL flush interval (storage.flush_interval), e.g. 10ms.
    #[arg(long, env = "TESSERA_FLUSH_INTERVAL", value_parser = humantime::parse_duration)]
    flush_interval: Option<Duration>,
    /// Request deadline (server.request_timeout), e.g. 10s.
    #[arg(long, env = "TESSERA_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// etcd endpoints, comma-separated (cluster.etcd_endpoints); enables cluster mode.
    #[arg(long, env = "TESSERA_ETCD", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Cluster name (cluster.name): the etcd prefix /tessera/{name}/.
    #[arg(long, env = "TESSERA_CLUSTER")]
    cluster: Option<String>,
    /// Member id (cluster.node_id); default: the advertise URL.
    #[arg(long, env = "TESSERA_NODE_ID")]
    node_id: Option<String>,
    /// URL other gateways reach this one at (cluster.advertise_url).
    #[arg(long, env = "TESSERA_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// etcd lease TTL (cluster.lease_ttl), whole seconds, e.g. 3s.
    #[arg(long, env = "TESSERA_LEASE_TTL", value_parser = humantime::parse_duration)]
    lease_ttl: Option<Duration>,
    /// Log filter (log.level), e.g. info or tessera=debug.
    #[arg(long, env = "TESSERA_LOG")]
    log: Option<String>,
    /// Log format (log.format): text or json.
    #[arg(long, env = "TESSERA_LOG_FORMAT")]
    log_format: Option<String>,
}

impl Args {
    fn into_config(self) -> Result<GatewayConfig, String> {
        let mut c = match &self.config {
            Some(path) => GatewayConfig::from_file(path)?,
            None => GatewayConfig::default(),
        };
        if let Some(v) = self.listen {
            c.server.listen = v;
        }
        if let Some(v) = self.store {
            c.object_store.url = v;
        }
        if let Some(v) = self.s3_endpoint {
            c.object_store.endpoint = Some(v);
        }
        if let Some(v) = self.shards {
            c.storage.shard_count = v;
        }
        if let Some(v) = self.flush_interval {
            c.storage.flush_interval = v;
        }
        if let Some(v) = self.request_timeout {
            c.server.request_timeout = v;
        }
        if let Some(v) = self.etcd {
            c.cluster.etcd_endpoints = v;
        }
        if let Some(v) = self.cluster {
            c.cluster.name = v;
        }
        if let Some(v) = self.node_id {
            c.cluster.node_id = Some(v);
        }
        if let Some(v) = self.advertise_url {
            c.cluster.advertise_url = Some(v);
        }
        if let Some(v) = self.lease_ttl {
            c.cluster.lease_ttl = v;
        }
        if let Some(v) = self.log {
            c.log.level = v;
        }
        if let Some(v) = self.log_format {
            c.log.format = v.parse()?;
        }
        c.validate()?;
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tessera-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.log.init() {
        eprintln!("tessera-gateway: {e}");
        return ExitCode::from(2);
    }
    let signal = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tessera-gateway: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match gateway::run(config, signal).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            eprintln!("tessera-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
