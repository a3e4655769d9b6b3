//! `tessera-gateway`: parse flags → load config → init logging → `gateway::run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::GatewayConfig;
use tessera::cli::CommonArgs;
use tessera::process::shutdown_signal;

/// jemalloc, not glibc malloc: under write load the gateway spent about a quarter of its CPU
/// in glibc's allocator (docs/bench/commit-log.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// TOML file of bearer tokens (auth.tokens_file); reloaded on SIGHUP.
    #[arg(long, env = "TESSERA_AUTH_TOKENS")]
    auth_tokens: Option<PathBuf>,
    /// File holding the secret gateways prove themselves to each other with
    /// (auth.cluster_secret_file).
    #[arg(long, env = "TESSERA_CLUSTER_SECRET")]
    cluster_secret: Option<PathBuf>,
    /// Allow a non-loopback --listen address without tokens (auth.insecure_no_auth).
    #[arg(long, env = "TESSERA_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// PEM certificate chain: serve HTTPS only (tls.cert).
    #[arg(long, env = "TESSERA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (tls.key).
    #[arg(long, env = "TESSERA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA trusted when forwarding to https:// peers (tls.ca).
    #[arg(long, env = "TESSERA_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Time a request body may take to arrive (server.body_timeout), e.g. 10s.
    #[arg(long, env = "TESSERA_BODY_TIMEOUT", value_parser = humantime::parse_duration)]
    body_timeout: Option<Duration>,
    /// Time a request head may take to arrive (server.header_timeout), e.g. 10s.
    #[arg(long, env = "TESSERA_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    header_timeout: Option<Duration>,
    /// Requests served at once before answering 503 overloaded (server.max_in_flight).
    #[arg(long, env = "TESSERA_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
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
        let paths = [
            (self.auth_tokens, &mut c.auth.tokens_file),
            (self.cluster_secret, &mut c.auth.cluster_secret_file),
            (self.tls_cert, &mut c.tls.cert),
            (self.tls_key, &mut c.tls.key),
            (self.tls_ca, &mut c.tls.ca),
        ];
        for (flag, key) in paths {
            if flag.is_some() {
                *key = flag;
            }
        }
        c.auth.insecure_no_auth |= self.insecure_no_auth;
        if let Some(v) = self.body_timeout {
            c.server.body_timeout = v;
        }
        if let Some(v) = self.header_timeout {
            c.server.header_timeout = v;
        }
        if let Some(v) = self.max_in_flight {
            c.server.max_in_flight = v;
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
