//! Test fixtures: the real gateway binary and a real S3-compatible server (s3s-fs), started as
//! processes on loopback with free ports and temporary directories, killed on drop.
//!
//! A missing S3 server binary fails the test (`scripts/test.sh` builds it). Nothing is
//! skipped silently.

#![allow(dead_code)] // each test binary uses a different subset of the fixtures

pub mod cluster;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
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
    child: Option<Child>,
}

impl S3Server {
    /// Starts s3s-fs with an empty bucket. Panics if `s3s-fs` is not installed.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("data").join(S3_BUCKET)).expect("bucket dir");
        let mut s = S3Server {
            port: free_port(),
            dir,
            child: None,
        };
        s.resume();
        s
    }

    /// (Re)starts the server process on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = s3_server_binary();
        let log = std::fs::File::create(self.dir.path().join("s3s-fs.log")).expect("log file");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(self.dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for_port(addr, Duration::from_secs(20)),
            "s3s-fs did not start listening"
        );
    }

    /// Kills the server (an outage), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` to the server process (`STOP`: requests hang until `CONT`).
    pub fn signal(&self, sig: &str) {
        signal(self.child.as_ref().expect("s3s-fs is running"), sig);
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

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
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

/// A gateway process. Killed (SIGKILL) on drop.
pub struct Gateway {
    pub url: String,
    pub child: Child,
    pub log: PathBuf,
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

    /// The command line, without starting it.
    pub fn command(&self, log: &Path) -> Command {
        self.command_on(log, "127.0.0.1:0")
    }

    /// The command line of a gateway listening on `listen` (e.g. `127.0.0.1:PORT`).
    pub fn command_on(&self, log: &Path, listen: &str) -> Command {
        let mut cmd = Command::new(gateway_bin());
        cmd.args(["--listen", listen, "--shards", &self.shards.to_string()])
            .args(["--log", "info,slatedb=warn"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
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

    /// Starts the gateway and waits until it prints its URL.
    pub fn start(&self, log: &Path) -> Gateway {
        self.start_on(log, "127.0.0.1:0")
    }

    /// Starts the gateway listening on `listen` and waits until it prints its URL.
    pub fn start_on(&self, log: &Path, listen: &str) -> Gateway {
        let mut child = self.command_on(log, listen).spawn().expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {} // keep the pipe drained
        });
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "gateway did not print its URL; log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            });
        let url = line
            .rsplit(' ')
            .next()
            .expect("URL on the ready line")
            .to_string();
        assert!(url.starts_with("http://"), "unexpected ready line: {line}");
        Gateway {
            url,
            child,
            log: log.to_path_buf(),
        }
    }
}

impl Gateway {
    /// SIGKILL: the process dies at once, nothing flushed.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kv(&self, key: &str) -> String {
        format!("{}/v1/kv/{key}", self.url)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
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
/// directory. Can be stopped and restarted on the same data.
pub struct EtcdServer {
    pub port: u16,
    peer_port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd. Panics if `etcd` is not installed.
    pub fn start() -> Self {
        let mut e = EtcdServer {
            port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        e.resume();
        e
    }

    /// (Re)starts the etcd process on the same ports and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let bin = which("etcd").expect(
            "etcd is not installed: run `apt-get install etcd-server` (scripts/test.sh does this)",
        );
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log");
        let child = Command::new(bin)
            .args(["--name", "test", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        assert!(
            wait_for_port(addr, Duration::from_secs(20)),
            "etcd did not start listening"
        );
    }

    /// Kills etcd (keeps its data).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a signal to a process. `STOP` returns once every thread of it has stopped: the
/// signal is delivered asynchronously, and on a loaded machine a thread can still answer a
/// request for a few milliseconds after `kill` returned.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{sig} failed");
    if sig == "STOP" {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(child.id()) {
            assert!(
                Instant::now() < deadline,
                "process {} did not stop",
                child.id()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/{pid}/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        // "tid (comm) S ...": the state follows the last ')', as comm may hold one.
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                == Some('T')
        })
    })
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
