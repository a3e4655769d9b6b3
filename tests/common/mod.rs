//! Test fixtures: the real gateway binary and a real S3-compatible server (s3s-fs), started as
//! processes on loopback with free ports and temporary directories, killed on drop.
//!
//! A missing S3 server binary fails the test (`scripts/test.sh` builds it). Nothing is
//! skipped silently.

#![allow(dead_code)] // each test binary uses a different subset of the fixtures

pub mod cluster;
pub mod process;
pub mod proxy;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use process::ServiceProcess;
use tempfile::TempDir;

pub const S3_ACCESS_KEY: &str = "devkey";
pub const S3_SECRET_KEY: &str = "devsecret";
pub const S3_BUCKET: &str = "tessera";

/// Path of the `tessera-gateway` binary.
pub fn gateway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tessera-gateway"))
}

/// Path of the `tessera-compactor` binary.
pub fn compactor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tessera-compactor"))
}

/// Path of the `tessera` CLI binary.
pub fn cli_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("tessera"))
}

/// Builds every binary of the workspace (debug, once per test process) and returns the path
/// of `bin`. One `--workspace` build rather than `-p <package>` per binary: features are then
/// unified as in `cargo test --workspace`, so the dependencies already compiled for the tests
/// are reused instead of being compiled a second time (disk space on CI machines is limited).
fn workspace_bin(bin: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let path = target.join("debug").join(bin);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Path of the external program `name` (etcd, promtool, chromium, kubectl, python3, ...).
/// Panics, saying how to install it, when it is missing: no test passes by skipping its tool.
pub fn tool(name: &str, install: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!("{name} is not installed: run `{install}` (scripts/test.sh does this)")
    })
}

/// Spawns server `name`, its log `{name}.log` in `dir`, and waits until it listens on `port`.
fn start_server(name: &str, cmd: Command, dir: &Path, port: u16) -> ServiceProcess {
    let mut process = ServiceProcess::spawn(name, cmd, &dir.join(format!("{name}.log")));
    process.wait_for_port(port, Duration::from_secs(20));
    process
}

/// The S3 server: `$TESSERA_S3S_FS`, else the patched s3s-fs that `scripts/test.sh` builds. Not
/// a stock s3s-fs from `PATH`: its conditional writes are not atomic (two concurrent
/// create-if-absent PUTs of one key can both succeed), and SlateDB's fencing, which the fault
/// tests exercise, relies on them being atomic as on S3 (`scripts/lib/s3s-fs.sh`).
fn s3_server_binary() -> PathBuf {
    let bin = std::env::var_os("TESSERA_S3S_FS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3s-fs-patched/bin/s3s-fs"),
        PathBuf::from,
    );
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/test.sh, which builds the patched s3s-fs",
        bin.display()
    );
    bin
}

/// A real S3-compatible server (s3s-fs) on a loopback port, data in a temporary directory.
/// It can be stopped and started again on the same port and data (outage tests).
pub struct S3Server {
    pub port: u16,
    dir: TempDir,
    process: Option<ServiceProcess>,
}

impl S3Server {
    /// Starts s3s-fs with an empty bucket. Panics if the patched s3s-fs is not built.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data").join(S3_BUCKET)).expect("bucket dir");
        let mut s = S3Server {
            port: free_port(),
            dir,
            process: None,
        };
        s.restart();
        s
    }

    /// Starts the stopped server again on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "already running");
        let mut cmd = Command::new(s3_server_binary());
        cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.dir.path().join("data"));
        self.process = Some(start_server("s3s-fs", cmd, self.dir.path(), self.port));
    }

    /// Kills the server (an outage), keeping its data.
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// The running server process (to pause it: requests hang until it resumes).
    pub fn process(&self) -> &ServiceProcess {
        self.process.as_ref().expect("s3s-fs is running")
    }

    /// The directory holding the test bucket's objects.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(S3_BUCKET)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The test bucket under `prefix`, read and written directly by the test.
    pub fn store(&self, prefix: &str) -> tessera::objstore::ClusterStore {
        // Test processes share these constant credentials; setting them is idempotent.
        std::env::set_var("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
        tessera::objstore::open(&tessera::ObjectStoreConfig {
            url: format!("s3://{S3_BUCKET}/{prefix}"),
            endpoint: Some(self.endpoint()),
            ..Default::default()
        })
        .unwrap()
    }
}

/// Where a gateway keeps its data.
#[derive(Clone)]
pub enum Store {
    /// A local directory.
    Dir(PathBuf),
    /// The S3 server at this endpoint, under this prefix of the test bucket.
    S3 { endpoint: String, prefix: String },
}

impl Store {
    pub fn s3(server: &S3Server, prefix: &str) -> Self {
        Store::S3 {
            endpoint: server.endpoint(),
            prefix: prefix.into(),
        }
    }
}

/// A gateway process, killed (SIGKILL) on drop.
pub struct Gateway {
    pub url: String,
    pub process: ServiceProcess,
}

/// Options for starting a gateway.
#[derive(Clone)]
pub struct GatewayOpts {
    pub store: Store,
    pub shards: u32,
    pub extra: Vec<String>,
    /// Extra environment variables (e.g. fault-injection hooks).
    pub env: Vec<(String, String)>,
}

impl GatewayOpts {
    pub fn new(store: Store) -> Self {
        GatewayOpts {
            store,
            shards: 8,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.extra.push(a.into());
        self
    }

    /// The command line of a gateway listening on `listen` (e.g. `127.0.0.1:PORT`).
    fn command(&self, listen: &str) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(["--listen", listen, "--shards", &self.shards.to_string()])
            .args(["--log", "info,slatedb=warn"])
            .args(&self.extra)
            .env_remove("TESSERA_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        match &self.store {
            Store::Dir(dir) => {
                cmd.args(["--store", dir.to_str().expect("utf-8 path")]);
            }
            Store::S3 { endpoint, prefix } => {
                cmd.args(["--store", &format!("s3://{S3_BUCKET}/{prefix}")])
                    .args(["--s3-endpoint", endpoint])
                    .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
                    .env("AWS_REGION", "us-east-1");
            }
        }
        cmd
    }

    /// Starts the gateway, its stderr in `log`, and waits until it prints its URL.
    pub fn start(&self, log: &Path) -> Gateway {
        self.start_on(log, "127.0.0.1:0")
    }

    /// Spawns the gateway listening on `listen`, without waiting for it.
    pub fn spawn(&self, log: &Path, listen: &str) -> ServiceProcess {
        ServiceProcess::spawn("gateway", self.command(listen), log)
    }

    /// Starts the gateway listening on `listen` and waits until it prints its URL.
    pub fn start_on(&self, log: &Path, listen: &str) -> Gateway {
        let mut process = self.spawn(log, listen);
        let url = process.wait_for_url(Duration::from_secs(90));
        Gateway { url, process }
    }
}

impl Gateway {
    pub fn kv(&self, key: &str) -> String {
        format!("{}/v1/kv/{key}", self.url)
    }
}

/// An HTTP client with a bounded request timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// GETs `url` and returns its JSON body, whatever the status.
pub async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON body")
}

/// GETs `url` and returns its body as text, whatever the status.
pub async fn get_text(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    http.get(url)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text body")
}

/// PUTs `value` to `url`, asserts 200 OK and returns the new version.
pub async fn put_ok(http: &reqwest::Client, url: impl reqwest::IntoUrl, value: &str) -> u64 {
    let r = http.put(url).body(value.to_string()).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    r.json::<serde_json::Value>().await.unwrap()["version"]
        .as_u64()
        .unwrap()
}

/// PUTs `value` to `url` again and again until it succeeds. Panics with `what` and the last
/// status if it has not by `deadline`.
pub async fn put_until_ok(
    http: &reqwest::Client,
    url: &str,
    value: &str,
    deadline: Instant,
    what: &str,
) {
    loop {
        let r = http.put(url).body(value.to_string()).send().await.unwrap();
        if r.status() == reqwest::StatusCode::OK {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {}", r.status());
    }
}

/// Calls `check` every `every` until it returns `Ok`, and returns that; once `within` has
/// passed, panics with the last `Err` (what it saw).
pub async fn poll_until<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) => assert!(Instant::now() < deadline, "{seen}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Asks a gateway directly for the key at `kv_url`, as a forwarded request so that it answers
/// from its own state: a read must answer nothing but `fresh` (or fail), and a write must not
/// be acknowledged. `who` names the gateway and the moment, for the failure message.
pub async fn assert_serves_nothing_stale(
    http: &reqwest::Client,
    kv_url: &str,
    fresh: &str,
    who: &str,
) {
    let direct = |req: reqwest::RequestBuilder| req.header("x-tessera-forwarded", "1").send();
    let r = direct(http.get(kv_url)).await.unwrap();
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert!(
        status != reqwest::StatusCode::OK || body == fresh,
        "{who} served {status} {body:?}, not {fresh:?}"
    );
    let r = direct(http.put(kv_url).body("stale-writer")).await.unwrap();
    assert_ne!(
        r.status(),
        reqwest::StatusCode::OK,
        "{who} acknowledged a write"
    );
}

/// Percent-encodes every byte except unreserved ASCII.
pub fn enc(key: &[u8]) -> String {
    key.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A real single-member etcd (Debian's `etcd-server`) on loopback ports, data in a temporary
/// directory. Can be stopped and started again on the same data.
pub struct EtcdServer {
    pub port: u16,
    peer_port: u16,
    dir: TempDir,
    process: Option<ServiceProcess>,
    /// `https` when started with TLS.
    scheme: &'static str,
    /// Extra flags (TLS files).
    extra: Vec<String>,
}

impl EtcdServer {
    /// Starts etcd. Panics if `etcd` is not installed.
    pub fn start() -> Self {
        Self::start_with("http", Vec::new())
    }

    /// Ports and a data directory for an etcd started later (`restart`), e.g. after the
    /// processes that use it.
    pub fn unstarted() -> Self {
        Self::unstarted_with("http", Vec::new())
    }

    /// Starts etcd serving clients over `scheme` (`http` or `https`), with `extra` flags
    /// (e.g. `--cert-file`).
    pub fn start_with(scheme: &'static str, extra: Vec<String>) -> Self {
        let mut e = Self::unstarted_with(scheme, extra);
        e.restart();
        e
    }

    fn unstarted_with(scheme: &'static str, extra: Vec<String>) -> Self {
        EtcdServer {
            port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            process: None,
            scheme,
            extra,
        }
    }

    /// Starts the stopped etcd again on the same ports and data.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "already running");
        let bin = tool("etcd", "apt-get install etcd-server");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(bin);
        cmd.args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(&self.extra);
        self.process = Some(start_server("etcd", cmd, self.dir.path(), self.port));
    }

    /// Kills etcd (keeps its data).
    pub fn stop(&mut self) {
        self.process = None;
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// A client of this etcd (no TLS, no auth), for tests that read or write its keys.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.endpoint()], None)
            .await
            .expect("connect to the test etcd")
    }
}

/// The value of the metric line that starts with `name` (labels included) followed by a space.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
}

/// (p50, p99, max) of `samples`, sorted in place.
pub fn percentiles(samples: &mut [Duration]) -> (Duration, Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}
