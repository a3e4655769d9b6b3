//! The `tessera` CLI against real gateway processes (and a real etcd for `bench --target
//! etcd`): every command, its output and its exit codes, endpoint failover, stdin input, scan
//! pagination, and short benchmark runs whose JSON report is checked.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use common::{cli_bin, free_port, EtcdServer, Gateway, GatewayOpts, Store};

/// Exit codes documented in the README (and `tessera --help`).
const NOT_FOUND: i32 = 3;
const PRECONDITION: i32 = 4;
const UNAVAILABLE: i32 = 5;
const USAGE: i32 = 2;
const OTHER: i32 = 1;

/// An embedded gateway (8 shards) on a local directory.
fn gateway() -> (Gateway, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let gw =
        GatewayOpts::new(Store::Dir(dir.path().join("data"))).start(&dir.path().join("gw.log"));
    (gw, dir)
}

/// A URL nothing listens on.
fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "stderr: {}", self.stderr);
        self.stdout
    }

    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn fails(&self, code: i32, server_code: &str) {
        assert_eq!(
            self.code, code,
            "stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(server_code),
            "stderr lacks `{server_code}`: {}",
            self.stderr
        );
    }
}

/// Runs `tessera --endpoints EPS ARGS...`, feeding `stdin`.
fn tessera(endpoints: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(cli_bin())
        .args(["--endpoints", endpoints])
        .args(args)
        .env_remove("TESSERA_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Runs `tessera ARGS` with `args` split on whitespace.
fn words(endpoints: &str, args: &str) -> Run {
    tessera(endpoints, &args.split_whitespace().collect::<Vec<_>>(), b"")
}

#[test]
fn key_value_commands_and_exit_codes() {
    let (gw, dir) = gateway();
    let ep = gw.url.as_str();
    let t = |args: &[&str]| tessera(ep, args, b"");

    let out = t(&["put", "a/b c", "hello"]).ok();
    assert_eq!(out, format!("version {}\n", version(ep, "a/b c")));
    assert_eq!(t(&["get", "a/b c"]).ok(), "hello");
    let j = t(&["--output", "json", "get", "a/b c"]).json();
    assert_eq!(j["value"], "hello");
    assert_eq!(j["value_base64"], "aGVsbG8=");
    let v1 = j["version"].as_u64().unwrap();
    // Eventual reads are passed through to the gateway.
    assert_eq!(
        t(&["--consistency", "eventual", "get", "a/b c"]).ok(),
        "hello"
    );

    t(&["get", "missing"]).fails(NOT_FOUND, "not_found");

    // Values from stdin and from a file.
    assert_eq!(tessera(ep, &["put", "in", "-"], b"from\nstdin").code, 0);
    assert_eq!(t(&["get", "in"]).ok(), "from\nstdin");
    let file = dir.path().join("value.bin");
    std::fs::write(&file, [0u8, 159, 146, 150]).unwrap();
    t(&["put", "bin", "--file", file.to_str().unwrap()]).ok();
    let j = t(&["--output", "json", "get", "bin"]).json();
    assert_eq!(j["value"], Value::Null, "not UTF-8");
    assert_eq!(j["value_base64"], "AJ+Slg==");

    // Compare-and-set.
    t(&["cas", "a/b c", "x", "--version", &(v1 + 100).to_string()])
        .fails(PRECONDITION, "precondition_failed");
    t(&["cas", "a/b c", "x", "--create"]).fails(PRECONDITION, "precondition_failed");
    let v2 = t(&[
        "--output",
        "json",
        "cas",
        "a/b c",
        "x",
        "--version",
        &v1.to_string(),
    ])
    .json()["version"]
        .as_u64()
        .unwrap();
    assert!(v2 > v1);
    t(&["cas", "new", "y", "--create"]).ok();
    assert_eq!(t(&["get", "new"]).ok(), "y");

    // Delete, conditional and not.
    t(&["delete", "a/b c", "--if-match", &v1.to_string()])
        .fails(PRECONDITION, "precondition_failed");
    assert_eq!(
        t(&["delete", "a/b c", "--if-match", &v2.to_string()]).ok(),
        "deleted\n"
    );
    t(&["get", "a/b c"]).fails(NOT_FOUND, "not_found");
    t(&["delete", "a/b c"]).ok();

    // Usage errors: clap's and ours.
    assert_eq!(t(&["get"]).code, USAGE);
    assert_eq!(
        t(&["cas", "k", "v"]).code,
        USAGE,
        "needs --version or --create"
    );
    assert_eq!(t(&["put", "k", "v", "--file", "/nonexistent"]).code, USAGE);
    assert_eq!(t(&["put", "k", "--file", "/nonexistent/x"]).code, USAGE);
    assert_eq!(tessera("localhost:1", &["get", "k"], b"").code, USAGE);
    // A request the server rejects: an over-long key.
    t(&["get", &"k".repeat(2000)]).fails(OTHER, "key_too_long");
}

/// Returns the version `get` reports for `key` (helper for exact-output checks).
fn version(ep: &str, key: &str) -> String {
    tessera(ep, &["--output", "json", "get", key], b"").json()["version"].to_string()
}

#[test]
fn batch_from_file() {
    let (gw, dir) = gateway();
    let ep = gw.url.as_str();
    let t = |args: &[&str]| tessera(ep, args, b"");
    let file = dir.path().join("batch.json");
    let write = |body: &str| std::fs::write(&file, body).unwrap();
    let path = file.to_str().unwrap();

    // `user:{1}:name` and `user:{1}:mail` share a shard through their hash tag.
    write(
        r#"{"ops":[{"op":"put","key":"dXNlcjp7MX06bmFtZQ==","value":"YW5u"},
                   {"op":"put","key":"dXNlcjp7MX06bWFpbA==","value":"YUBi"}]}"#,
    );
    let v = t(&["--output", "json", "batch", path]).json()["version"]
        .as_u64()
        .unwrap();
    assert!(v > 0);
    assert_eq!(t(&["get", "user:{1}:name"]).ok(), "ann");
    assert_eq!(t(&["get", "user:{1}:mail"]).ok(), "a@b");

    // A failed precondition applies nothing.
    write(r#"{"ops":[{"op":"delete","key":"dXNlcjp7MX06bmFtZQ==","if_absent":true}]}"#);
    t(&["batch", path]).fails(PRECONDITION, "precondition_failed");

    // Keys in different shards are refused by the server.
    let (a, b) = cross_shard_keys();
    write(&format!(
        r#"{{"ops":[{{"op":"put","key":"{a}","value":"eA=="}},{{"op":"put","key":"{b}","value":"eA=="}}]}}"#
    ));
    t(&["batch", path]).fails(OTHER, "cross_shard");

    // Unusable files are usage errors; stdin works.
    write("not json");
    assert_eq!(t(&["batch", path]).code, USAGE);
    write(r#"{"nops":[]}"#);
    assert_eq!(t(&["batch", path]).code, USAGE);
    let body = br#"{"ops":[{"op":"delete","key":"dXNlcjp7MX06bWFpbA=="}]}"#;
    tessera(ep, &["batch", "-"], body).ok();
    t(&["get", "user:{1}:mail"]).fails(NOT_FOUND, "not_found");
}

/// Two base64 keys that map to different shards of an 8-shard cluster.
fn cross_shard_keys() -> (String, String) {
    use base64::Engine;
    let b64 = |k: &str| base64::engine::general_purpose::STANDARD.encode(k);
    let first = tessera::shard_for_key(b"k0", 8);
    let other = (1..100)
        .map(|i| format!("k{i}"))
        .find(|k| tessera::shard_for_key(k.as_bytes(), 8) != first)
        .unwrap();
    (b64("k0"), b64(&other))
}

#[test]
fn scan_follows_pages() {
    let (gw, _dir) = gateway();
    let ep = gw.url.as_str();
    let t = |args: &[&str]| tessera(ep, args, b"");
    for i in 0..25 {
        t(&["put", &format!("p/{i:02}"), &format!("v{i}")]).ok();
    }
    t(&["put", "q/other", "z"]).ok();

    // 25 keys in pages of 4: seven requests, every key once, in order.
    let j = words(ep, "--output json scan --prefix p/ --page-size 4").json();
    assert_eq!(j["count"], 25);
    let keys: Vec<&str> = j["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..25).map(|i| format!("p/{i:02}")).collect();
    assert_eq!(keys, want);

    // --limit caps the total across pages.
    let j = words(
        ep,
        "--output json scan --prefix p/ --page-size 3 --limit 10",
    )
    .json();
    assert_eq!(j["count"], 10);
    assert_eq!(j["items"][9]["key"], "p/09");

    // A range, as a table.
    let table = t(&["scan", "--start", "p/23", "--end", "q/zzz"]).ok();
    assert!(table.starts_with("KEY      VERSION  VALUE\n"), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(rows, ["p/23", "p/24", "q/other"]);
    assert_eq!(t(&["scan", "--page-size", "0"]).code, USAGE);
}

#[test]
fn failover_and_unavailable() {
    let (gw, _dir) = gateway();
    let dead = dead_endpoint();
    let both = format!("{dead},{}", gw.url);

    // The first endpoint refuses connections: the second one serves every command.
    tessera(&both, &["put", "f", "1"], b"").ok();
    assert_eq!(tessera(&both, &["get", "f"], b"").ok(), "1");
    assert!(tessera(&both, &["cluster"], b"").ok().contains("SHARD"));

    // Only dead endpoints: unavailable.
    let r = tessera(&format!("{dead},{}", dead_endpoint()), &["get", "f"], b"");
    r.fails(UNAVAILABLE, "connect");

    // A stopping gateway answers 503: unavailable too, or refused once it is gone.
    let mut gw = gw;
    let url = gw.url.clone();
    gw.process.terminate(std::time::Duration::from_secs(30));
    tessera(&url, &["put", "f", "2"], b"").fails(UNAVAILABLE, "");
}

#[test]
fn cluster_command() {
    let (gw, _dir) = gateway();
    let table = tessera(&gw.url, &["cluster"], b"").ok();
    assert!(
        table.starts_with("mode embedded, 8 shards, 1 members"),
        "{table}"
    );
    let shard_rows = table
        .lines()
        .skip_while(|l| !l.starts_with("SHARD"))
        .skip(1)
        .filter(|l| l.contains(&gw.url))
        .count();
    assert_eq!(shard_rows, 8, "{table}");
    let j = tessera(&gw.url, &["--output", "json", "cluster"], b"").json();
    assert_eq!(j["shard_count"], 8);
    assert_eq!(j["shards"].as_array().unwrap().len(), 8);
}

/// Checks the fields every bench report has.
fn check_report(r: &Value, target: &str, workload: &str) {
    assert_eq!(r["target"], target);
    assert_eq!(r["workload"], workload);
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert_eq!(r["errors_by_kind"], serde_json::json!({}), "{r}");
    let l = &r["latency_ms"];
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|q| l[q].as_f64().unwrap())
        .collect();
    assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{l}");
}

/// Runs `tessera bench ARGS` (whitespace-separated) against `endpoints`.
fn bench(endpoints: &str, args: &str) -> Run {
    let args: Vec<&str> = std::iter::once("bench")
        .chain(args.split_whitespace())
        .collect();
    tessera(endpoints, &args, b"")
}

#[test]
fn bench_against_tessera() {
    let (gw, _dir) = gateway();
    let r = bench(
        &gw.url,
        "--workload ycsb-a --preload --keys 200 --concurrency 8 --duration 2s --warmup 500ms \
         --distribution zipf --json",
    )
    .json();
    check_report(&r, "tessera", "ycsb-a");
    assert_eq!(r["zipf_theta"], 0.99);
    // Half the operations are durable writes: each costs object-store requests.
    let os = &r["object_store"];
    assert!(os["requests_per_1k_ops"].as_f64().unwrap() > 0.0, "{os}");
    assert!(os["requests"]["put"].as_u64().unwrap() > 0, "{os}");

    let r = bench(
        &gw.url,
        "--workload cas --keys 5 --concurrency 4 --ops 200 --warmup 0s --json",
    )
    .json();
    check_report(&r, "tessera", "cas");
    assert_eq!(r["ops"], 200);
    assert!(r["cas_conflicts"].as_u64().is_some());

    // A read workload without keys reports every read as not_found.
    let r = bench(
        &gw.url,
        "--workload get --key-prefix none/ --ops 20 --warmup 0s --json",
    )
    .json();
    assert_eq!(r["errors_by_kind"]["not_found"], 20, "{r}");
}

#[test]
fn bench_against_etcd() {
    let etcd = EtcdServer::start();
    let no_tessera = "http://127.0.0.1:1";
    for workload in ["get-eventual", "cas"] {
        let args = format!(
            "--target etcd --etcd-endpoints {} --workload {workload} --preload --keys 100 \
             --concurrency 8 --duration 1s --warmup 200ms --json",
            etcd.endpoint()
        );
        let r = bench(no_tessera, &args).json();
        check_report(&r, "etcd", workload);
        assert_eq!(r["object_store"], Value::Null);
    }
    // An unreachable target fails the run at once.
    let args = format!(
        "--target etcd --etcd-endpoints {} --ops 3 --request-timeout 2s",
        dead_endpoint()
    );
    bench(no_tessera, &args).fails(UNAVAILABLE, "etcd does not answer");
    bench(no_tessera, "--ops 3").fails(UNAVAILABLE, "connect");
}
