//! `tessera-gateway`: parse flags → load config → init logging → `gateway::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::GatewayConfig;
use tessera::cli::CommonArgs;
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
    #[command(flatten)]
    common: CommonArgs,
    /// Number of shards (storage.shard_count); fixed when the cluster is created.
    #[arg(long, env = "TESSERA_SHARDS")]
    shards: Option<u32>,
    /// WAL flush interval (storage.flush_interval), e.g. 10ms.
    #[arg(long, env = "TESSERA_FLUSH_INTERVAL", value_parser = humantime::parse_duration)]
    flush_interval: Option<Duration>,
    /// Request deadline (server.request_timeout), e.g. 10s.
    #[arg(long, env = "TESSERA_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// URL other gateways reach this one at (cluster.advertise_url).
    #[arg(long, env = "TESSERA_ADVERTISE_URL")]
    advertise_url: Option<String>,
}

impl Args {
    fn into_config(self) -> Result<GatewayConfig, String> {
        let mut c = match &self.config {
            Some(path) => GatewayConfig::from_file(path)?,
            None => GatewayConfig::default(),
        };
        self.common
            .apply(&mut c.object_store, &mut c.cluster, &mut c.log)?;
        if let Some(v) = self.listen {
            c.server.listen = v;
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
        if let Some(v) = self.advertise_url {
            c.cluster.advertise_url = Some(v);
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
