//! `tessera-gateway`: parse flags → load config → init logging → `gateway::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::config::LogFormat;
use gateway::GatewayConfig;

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
        if let Some(v) = self.log {
            c.log.level = v;
        }
        if let Some(v) = self.log_format {
            c.log.format = match v.as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => return Err(format!("--log-format must be text or json, got `{other}`")),
            };
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(c: &GatewayConfig) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log.level)
        .map_err(|e| format!("invalid log.level `{}`: {e}", c.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match c.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; draining");
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
    if let Err(e) = init_logging(&config) {
        eprintln!("tessera-gateway: {e}");
        return ExitCode::from(2);
    }
    match gateway::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            eprintln!("tessera-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
