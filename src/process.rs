//! What every Tessera binary shares: logging configuration and set-up, and the shutdown
//! signal.

use std::future::Future;

use serde::{Deserialize, Serialize};

/// Logging (`[log]` in the config files).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `tessera=debug,info`. Default: `info,slatedb=warn`.
    pub level: String,
    /// `text` or `json`. Default: `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info,slatedb=warn".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format must be text or json, got `{other}`")),
        }
    }
}

impl LogConfig {
    /// Installs the global subscriber: log lines go to stderr (stdout is for the ready line).
    pub fn init(&self) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| format!("invalid log.level `{}`: {e}", self.level))?;
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
        Ok(())
    }
}

/// Returns a future that resolves on SIGINT or SIGTERM. The handlers are installed before this
/// returns, so a signal that arrives while the process is still starting is not lost (nor does
/// it kill the process with the default action).
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutdown signal received");
    })
}
