//! `tessera-compactor`: parse flags → load config → init logging → run the daemon or one
//! batch pass.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use compactor::metrics::Metrics;
use compactor::progress::Progress;
use compactor::{daemon, once, CompactorConfig};

/// jemalloc, not glibc malloc: under write load the gateway spent about a quarter of its CPU
/// in glibc's allocator (docs/bench/commit-log.md, "Allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tessera::cli::CommonArgs;
use tessera::process::shutdown_signal;
use tessera::Member;
use tokio_util::sync::CancellationToken;

/// Tessera compactor: compacts and garbage-collects the shards of a cluster-mode store, as a
/// daemon (default) or as one batch pass (--once).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run one pass over every shard, then one commit-log GC pass, and exit: 0 if every shard
    /// ends below the L0 threshold and the log GC pass ran, 1 otherwise (a summary is printed).
    #[arg(long)]
    once: bool,
    /// TOML config file (see compactor/compactor.example.toml).
    #[arg(long, env = "TESSERA_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
    /// L0 SSTs at which a shard is compacted (compaction.l0_threshold).
    #[arg(long, env = "TESSERA_L0_THRESHOLD")]
    l0_threshold: Option<usize>,
    /// Manifest/job polling per shard (compaction.poll_interval).
    #[arg(long, env = "TESSERA_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    poll_interval: Option<Duration>,
    /// Commit-log GC pass interval of the daemon (compaction.log_gc_interval).
    #[arg(long, env = "TESSERA_LOG_GC_INTERVAL", value_parser = humantime::parse_duration)]
    log_gc_interval: Option<Duration>,
    /// --once gives up after this long (compaction.once_timeout).
    #[arg(long, env = "TESSERA_TIMEOUT", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Prometheus endpoint address (metrics.listen), daemon only.
    #[arg(long, env = "TESSERA_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

impl Args {
    fn into_config(self) -> Result<(CompactorConfig, bool), String> {
        let mut c = match &self.config {
            Some(path) => CompactorConfig::from_file(path)?,
            None => CompactorConfig::default(),
        };
        self.common
            .apply(&mut c.object_store, &mut c.cluster, &mut c.log)?;
        if let Some(v) = self.l0_threshold {
            c.compaction.l0_threshold = v;
        }
        if let Some(v) = self.poll_interval {
            c.compaction.poll_interval = v;
        }
        if let Some(v) = self.log_gc_interval {
            c.compaction.log_gc_interval = v;
        }
        if let Some(v) = self.timeout {
            c.compaction.once_timeout = v;
        }
        if let Some(v) = self.metrics_listen {
            c.metrics.listen = Some(v);
        }
        c.validate()?;
        Ok((c, self.once))
    }
}

/// This compactor as a member: its configured id, or `{hostname}-{pid}`.
fn member(c: &CompactorConfig, metrics_url: Option<String>) -> Member {
    let id = c.cluster.node_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "compactor".into());
        format!("{host}-{}", std::process::id())
    });
    Member {
        id,
        url: metrics_url.unwrap_or_default(),
    }
}

async fn run(config: CompactorConfig, once: bool) -> Result<ExitCode, String> {
    let signal = shutdown_signal().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    if once {
        let (store, shards) = compactor::open_cluster(&config)
            .await
            .map_err(|e| e.to_string())?;
        let progress = Progress::new(std::io::stdout().is_terminal());
        let me = member(&config, None);
        let summary = tokio::select! {
            r = once::run(&config, &store, shards, me, &progress) => r.map_err(|e| e.to_string())?,
            _ = signal => return Err("interrupted".into()),
        };
        progress.finish();
        println!("{summary}");
        return Ok(if summary.succeeded() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let metrics = Arc::new(Metrics::new());
    let cancel = CancellationToken::new();
    let metrics_url = match config.metrics.listen {
        Some(addr) => {
            let bound = compactor::metrics::serve(addr, Arc::clone(&metrics), cancel.clone())
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            println!("Tessera compactor metrics on http://{bound}/metrics");
            Some(format!("http://{bound}"))
        }
        None => None,
    };
    tokio::pin!(signal);
    // The gateways create the cluster; a daemon started first waits for it.
    let (store, shards) = loop {
        match compactor::open_cluster(&config).await {
            Ok(found) => break found,
            Err(e) => tracing::warn!(error = %e, "waiting for the cluster"),
        }
        tokio::select! {
            _ = &mut signal => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    metrics.count_object_store(Arc::clone(&store.requests));
    let me = member(&config, metrics_url);
    let result = daemon::run(config, store, shards, me, metrics, signal).await;
    cancel.cancel();
    result.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let (config, once) = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tessera-compactor: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.log.init() {
        eprintln!("tessera-compactor: {e}");
        return ExitCode::from(2);
    }
    match run(config, once).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "compactor failed");
            eprintln!("tessera-compactor: {e}");
            ExitCode::FAILURE
        }
    }
}
