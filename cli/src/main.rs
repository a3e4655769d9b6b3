//! `tessera`: command-line client of the Tessera HTTP API and its load generator.
//!
//! Exit codes (also in the README): 0 success, 1 any other error, 2 usage error (bad flags or
//! unusable input), 3 key not found, 4 precondition failed, 5 unavailable (every endpoint
//! refused the connection or answered 503, or the request timed out).

mod bench;
mod client;
mod commands;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::client::ClientError;

/// jemalloc, not glibc malloc, as in the gateway: the load generator spent about a sixth of its
/// CPU in glibc's allocator, CPU taken from the servers it measures on a shared machine.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Command-line client of a Tessera cluster.
#[derive(Parser, Debug)]
#[command(version, about, after_help = EXIT_CODES)]
struct Cli {
    /// Gateway URLs, comma-separated; on a connection failure or a 503 the next one is tried.
    #[arg(
        long,
        global = true,
        env = "TESSERA_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7070"
    )]
    endpoints: Vec<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Read consistency for get and scan.
    #[arg(long, global = true, value_enum, default_value_t = Consistency::Strong)]
    consistency: Consistency,
    /// Bearer token sent to the gateways (prefer the environment variable: flags show in `ps`).
    #[arg(long, global = true, env = "TESSERA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA certificate(s) to trust for https:// endpoints, besides the system's roots.
    #[arg(long, global = true, env = "TESSERA_CACERT")]
    cacert: Option<PathBuf>,
    /// Per-request timeout, e.g. 15s or 500ms.
    #[arg(long, global = true, default_value = "15s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 ok, 1 other error, 2 usage error, 3 not found, \
                          4 precondition failed, 5 unavailable (connection refused, 503, timeout)";

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable: raw values for `get`, aligned columns for `scan` and `cluster`.
    Table,
    /// One JSON document on stdout.
    Json,
}

/// Read consistency (`?consistency=` of the API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Consistency {
    /// Linearizable reads.
    Strong,
    /// Possibly stale reads.
    Eventual,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a key's value (`--output json` adds its version).
    Get {
        /// The key (UTF-8; percent-encoded on the wire).
        key: String,
    },
    /// Write a key unconditionally.
    Put {
        /// The key.
        key: String,
        #[command(flatten)]
        value: ValueSource,
        /// Expire the value after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Delete a key (succeeds when it is already absent).
    Delete {
        /// The key.
        key: String,
        /// Delete only if the key's version is this.
        #[arg(long)]
        if_match: Option<u64>,
    },
    /// List keys in order, following pages until done or `--limit`.
    Scan {
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// First key (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// Last key (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// Most items to print in total (default: all).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Items per request (1..=1000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1000))]
        page_size: u64,
    },
    /// Compare-and-set: write only if the key is at `--version` (or absent with `--create`).
    #[command(group(clap::ArgGroup::new("expect").required(true).args(["version", "create"])))]
    Cas {
        /// The key.
        key: String,
        #[command(flatten)]
        value: ValueSource,
        /// The version the key must have (If-Match).
        #[arg(long)]
        version: Option<u64>,
        /// The key must be absent (If-None-Match: *).
        #[arg(long)]
        create: bool,
        /// Expire the value after this many seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Apply a batch atomically from a JSON file in the API's format (`-` reads stdin).
    ///
    /// Format: {"ops":[{"op":"put","key":"<base64>","value":"<base64>"},{"op":"delete","key":"<base64>"}]}
    Batch {
        /// The JSON file.
        file: PathBuf,
    },
    /// Show members and the shard → owner table as one gateway sees them.
    Cluster,
    /// Run a load generator against Tessera or etcd.
    Bench(bench::BenchArgs),
}

/// Where a written value comes from: the argument (`-` = stdin) or `--file`.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct ValueSource {
    /// The value; `-` reads it from stdin.
    value: Option<String>,
    /// Read the value from this file.
    #[arg(long)]
    file: Option<PathBuf>,
}

/// Why a command failed; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server (or the network) said no.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Bad arguments or unusable input.
    #[error("usage: {0}")]
    Usage(String),
    /// A system under test cannot be reached (bench).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else (I/O on output, an etcd error in bench, ...).
    #[error("{0}")]
    Other(String),
}

/// Exit codes.
mod code {
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const PRECONDITION: u8 = 4;
    pub const UNAVAILABLE: u8 = 5;
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Client(ClientError::NotFound(_)) => code::NOT_FOUND,
            Failure::Client(ClientError::PreconditionFailed { .. }) => code::PRECONDITION,
            Failure::Client(
                ClientError::Unavailable { .. }
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. },
            )
            | Failure::Unavailable(_) => code::UNAVAILABLE,
            Failure::Client(_) | Failure::Other(_) => code::OTHER,
            Failure::Usage(_) => code::USAGE,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(code::OTHER);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let eventual = cli.consistency == Consistency::Eventual;
    let credentials = client::Credentials {
        token: cli.token,
        cacert: cli.cacert,
    };
    let api =
        client::Api::new(&cli.endpoints, cli.timeout, 1, &credentials).map_err(Failure::Usage)?;
    let out = commands::Printer::new(cli.output);
    match cli.command {
        Command::Get { key } => commands::get(&api, &out, &key, eventual).await,
        Command::Put { key, value, ttl } => {
            let value = value.read()?;
            commands::put(&api, &out, &key, value, ttl, client::Precondition::None).await
        }
        Command::Delete { key, if_match } => commands::delete(&api, &out, &key, if_match).await,
        Command::Scan {
            prefix,
            start,
            end,
            limit,
            page_size,
        } => {
            let range = client::ScanRange { prefix, start, end };
            commands::scan(&api, &out, &range, limit, page_size as usize, eventual).await
        }
        Command::Cas {
            key,
            value,
            version,
            create: _,
            ttl,
        } => {
            let pre = version.map_or(
                client::Precondition::IfAbsent,
                client::Precondition::IfMatch,
            );
            commands::put(&api, &out, &key, value.read()?, ttl, pre).await
        }
        Command::Batch { file } => commands::batch(&api, &out, &file).await,
        Command::Cluster => commands::cluster(&api, &out).await,
        Command::Bench(args) => bench::run(args, &cli.endpoints, &credentials, cli.output).await,
    }
}

impl ValueSource {
    /// Reads the value from wherever it was given.
    fn read(self) -> Result<bytes::Bytes, Failure> {
        match (self.value, self.file) {
            (Some(v), None) if v == "-" => commands::read_input(std::path::Path::new("-")),
            (Some(v), None) => Ok(v.into_bytes().into()),
            (None, Some(path)) => commands::read_input(&path),
            // clap's group makes exactly one of them present.
            _ => Err(Failure::Usage("give a value or --file".into())),
        }
    }
}
