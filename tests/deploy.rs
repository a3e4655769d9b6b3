//! The deployment artifacts, checked by schema validators and against the real binaries:
//!
//! - `deploy/k8s` and its overlays render (`kubectl kustomize`) and pass the Kubernetes schema
//!   (`kubernetes-validate --strict`); the flags, environment variables, ports and probe paths
//!   they use are ones the binaries accept, and the binaries start on the ConfigMap's TOML and
//!   answer the probes;
//! - `minio-dev/compose.yaml` passes the Compose Specification schema (`check-jsonschema`) and
//!   starts each service only once what it needs is healthy; the Dockerfile is multi-stage,
//!   non-root and ships the CLI;
//! - `deploy/prometheus/alerts.yaml` passes `promtool check rules` and its unit tests, and it
//!   and the Grafana dashboard name only metrics that exist;
//! - a gateway started before etcd waits for it with backoff instead of exiting.
//!
//! Every tool is installed by `scripts/test.sh`; a missing one fails the test.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::ServiceProcess;
use common::{
    client, compactor_bin, gateway_bin, tool, EtcdServer, GatewayOpts, S3Server, Store,
    S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY,
};
use serde_json::Value;

/// The kustomizations CI renders and validates.
const KUSTOMIZATIONS: [&str; 3] = [
    "deploy/k8s",
    "deploy/k8s/overlays/dev",
    "deploy/k8s/overlays/custom-metrics",
];

/// What a gateway needs at most to hand its shards over on SIGTERM before draining (closing
/// 64 shards 8 at a time takes ~1 s; the 500 ms linger; margin).
const HANDOVER_SECS: u64 = 10;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn run_ok(mut cmd: Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `python3 -m module args...` (the validators are Python packages: scripts/test.sh installs
/// them with pip).
fn python_module(module: &str) -> Command {
    let mut cmd = Command::new(tool("python3", "apt-get install python3"));
    cmd.args(["-m", module]).current_dir(root());
    cmd
}

/// Runs a Python snippet reading `input` on stdin; returns its stdout.
fn python(script: &str, input: &str) -> String {
    let mut child = Command::new(tool("python3", "apt-get install python3"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Every document of a YAML stream, as JSON (PyYAML: a dependency of kubernetes-validate).
fn yaml_docs(text: &str) -> Vec<Value> {
    let json = python(
        "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)",
        text,
    );
    serde_json::from_str(&json).expect("JSON")
}

/// A TOML document as JSON (Python's tomllib).
fn toml_doc(text: &str) -> Value {
    let json = python(
        "import json, sys, tomllib; json.dump(tomllib.loads(sys.stdin.read()), sys.stdout)",
        text,
    );
    serde_json::from_str(&json).expect("JSON")
}

/// `kubectl kustomize dir`.
fn kustomize(dir: &str) -> String {
    let mut cmd = Command::new(tool(
        "kubectl",
        "apt-get install kubectl (or kubernetes-client)",
    ));
    cmd.args(["kustomize", dir]).current_dir(root());
    String::from_utf8(run_ok(cmd, &format!("kubectl kustomize {dir}")).stdout).expect("utf-8")
}

/// Whole seconds of a humantime duration as the configs write them (`25s`, `10m`).
fn secs(d: &str) -> u64 {
    let (n, unit) = d.split_at(d.find(|c: char| !c.is_ascii_digit()).unwrap_or(d.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("duration {d}"));
    match unit {
        "s" => n,
        "m" => n * 60,
        _ => panic!("unexpected duration unit in {d}"),
    }
}

/// The port of a `host:port` listen address.
fn port_of(listen: &Value) -> u64 {
    let s = listen.as_str().expect("listen address");
    s.rsplit(':').next().unwrap().parse().expect("port")
}

/// The flags and `TESSERA_*` variables a binary accepts, from its `--help`.
struct Accepted {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

impl Accepted {
    fn of(bin: &Path) -> Accepted {
        let mut cmd = Command::new(bin);
        cmd.arg("--help");
        let help = String::from_utf8(run_ok(cmd, "--help").stdout).expect("utf-8");
        let words = |prefix: &str| -> BTreeSet<String> {
            help.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '=')
                .filter(|w| w.starts_with(prefix))
                .map(|w| w.trim_end_matches([',', '.']).to_string())
                .collect()
        };
        let accepted = Accepted {
            flags: words("--"),
            env: words("TESSERA_"),
        };
        assert!(accepted.flags.contains("--config"), "{help}");
        accepted
    }

    /// Panics unless every `--flag` of `args` and every `TESSERA_*` name in `env` is accepted.
    fn check(&self, what: &str, args: &[String], env: &[String]) {
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                self.flags.contains(flag),
                "{what}: flag {flag} is not one the binary accepts ({:?})",
                self.flags
            );
        }
        for name in env.iter().filter(|n| n.starts_with("TESSERA_")) {
            assert!(
                self.env.contains(name),
                "{what}: environment variable {name} is not one the binary reads ({:?})",
                self.env
            );
        }
    }
}

/// The rendered objects of one kustomization.
struct Manifests(Vec<Value>);

impl Manifests {
    fn render(dir: &str) -> Manifests {
        Manifests(yaml_docs(&kustomize(dir)))
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the manifests"))
    }

    /// A generated ConfigMap (its name carries a hash suffix).
    fn config_map(&self, prefix: &str) -> &Value {
        self.0
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no ConfigMap {prefix}*"))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The container's explicit environment variable names.
fn env_names(container: &Value) -> Vec<String> {
    container["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The container port named `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("container has no port named {name}: {container}"))
}

/// (path, port name) of every HTTP probe of the container.
fn probes(container: &Value) -> Vec<(String, String)> {
    ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .filter_map(|p| container[p]["httpGet"].as_object())
        .map(|g| {
            (
                g["path"].as_str().unwrap().to_string(),
                g["port"]
                    .as_str()
                    .expect("probes use named ports")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn k8s_manifests_pass_the_kubernetes_schema() {
    let dir = tempfile::tempdir().unwrap();
    for k in KUSTOMIZATIONS {
        let file = dir.path().join(format!("{}.yaml", k.replace('/', "_")));
        std::fs::write(&file, kustomize(k)).unwrap();
        let mut cmd = python_module("kubernetes_validate");
        cmd.args(["--strict", "--quiet"]).arg(&file);
        run_ok(cmd, &format!("kubernetes-validate --strict ({k})"));
    }
}

/// Starts every binary the manifests run, as they run it: the ConfigMap's TOML, the flags of
/// the manifest, the environment variables of `tessera-env` (pointed at the test's etcd and
/// S3); then asks each probe path on the port the manifest names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_manifests_use_flags_ports_and_probes_the_binaries_accept() {
    let m = Manifests::render("deploy/k8s");
    let config = &m.config_map("tessera-config")["data"];
    let env_keys: Vec<String> = m.config_map("tessera-env")["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let gateway_toml = config["gateway.toml"].as_str().unwrap();
    let compactor_toml = config["compactor.toml"].as_str().unwrap();
    let (gw_cfg, c_cfg) = (toml_doc(gateway_toml), toml_doc(compactor_toml));

    // Gateway: flags, variables, ports, probes, shutdown budget.
    let gw = m.get("Deployment", "tessera-gateway");
    let pod = &gw["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(strings(&container["command"]), ["tessera-gateway"]);
    let gw_args = strings(&container["args"]);
    let accepted = Accepted::of(gateway_bin());
    accepted.check("gateway", &gw_args, &env_names(container));
    accepted.check("gateway (tessera-env)", &[], &env_keys);
    let http = container_port(container, "http");
    assert_eq!(
        port_of(&gw_cfg["server"]["listen"]),
        http,
        "server.listen and containerPort differ"
    );
    let gw_probes = probes(container);
    assert_eq!(gw_probes.len(), 3, "startup, readiness and liveness probes");
    assert!(gw_probes.iter().all(|(_, port)| port == "http"));
    assert!(gw_probes.contains(&("/readyz".into(), "http".into())));
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let pre_stop = strings(&container["lifecycle"]["preStop"]["exec"]["command"]);
    let pre_stop_secs: u64 = pre_stop.last().map_or(0, |s| s.parse().unwrap());
    let drain = secs(gw_cfg["server"]["shutdown_timeout"].as_str().unwrap());
    assert!(
        grace > pre_stop_secs + HANDOVER_SECS + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop_secs} s + \
         hand-over {HANDOVER_SECS} s + server.shutdown_timeout {drain} s"
    );
    let labels = &pod_labels(gw);
    for (kind, selector) in [
        (
            "Service",
            &m.get("Service", "tessera-gateway")["spec"]["selector"],
        ),
        (
            "PodDisruptionBudget",
            &m.get("PodDisruptionBudget", "tessera-gateway")["spec"]["selector"]["matchLabels"],
        ),
    ] {
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&labels[k], v, "{kind} selector {k} does not match the pods");
        }
    }
    let svc_port = &m.get("Service", "tessera-gateway")["spec"]["ports"][0]["targetPort"];
    assert_eq!(svc_port, "http");
    let hpa = m.get("HorizontalPodAutoscaler", "tessera-gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "tessera-gateway");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");

    // Compactor daemon and CronJob.
    let daemon =
        &m.get("Deployment", "tessera-compactor")["spec"]["template"]["spec"]["containers"][0];
    let job_spec = &m.get("CronJob", "tessera-compactor-once")["spec"];
    let job = &job_spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    let accepted = Accepted::of(compactor_bin());
    accepted.check("compactor (tessera-env)", &[], &env_keys);
    for (what, c) in [("compactor daemon", daemon), ("compactor CronJob", job)] {
        assert_eq!(strings(&c["command"]), ["tessera-compactor"], "{what}");
        accepted.check(what, &strings(&c["args"]), &env_names(c));
    }
    let metrics = container_port(daemon, "metrics");
    assert_eq!(port_of(&c_cfg["metrics"]["listen"]), metrics);
    let daemon_probes = probes(daemon);
    assert!(!daemon_probes.is_empty());
    assert!(daemon_probes.iter().all(|(_, port)| port == "metrics"));
    assert!(strings(&job["args"]).contains(&"--once".to_string()));
    assert_eq!(job_spec["concurrencyPolicy"], "Forbid");
    let deadline = job_spec["jobTemplate"]["spec"]["activeDeadlineSeconds"]
        .as_u64()
        .unwrap();
    let once_timeout = secs(c_cfg["compaction"]["once_timeout"].as_str().unwrap());
    assert!(
        deadline > once_timeout,
        "the Job would be killed before --once times out"
    );

    // Now for real: the binaries on this TOML, these flags and these variables.
    let etcd = EtcdServer::start();
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let env = |node: &str| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = env_keys
            .iter()
            .map(|k| {
                let v = match k.as_str() {
                    "TESSERA_ETCD" => etcd.endpoint(),
                    "TESSERA_STORE" => format!("s3://{S3_BUCKET}/k8s"),
                    "TESSERA_CLUSTER" => "k8s".into(),
                    "AWS_REGION" => "us-east-1".into(),
                    other => panic!("tessera-env key {other}: give it a test value"),
                };
                (k.clone(), v)
            })
            .collect();
        env.extend([
            ("TESSERA_S3_ENDPOINT".into(), s3.endpoint()),
            ("TESSERA_NODE_ID".into(), node.into()),
            ("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
        ]);
        env
    };
    let spawn = |bin: &Path, toml: &str, args: &[String], extra: &[&str], node: &str| {
        let path = dir.path().join(format!("{node}.toml"));
        std::fs::write(&path, toml).unwrap();
        let mut cmd = Command::new(bin);
        // The manifest's args with the config path moved to the temporary file, then an
        // override of the listen address (the manifests' fixed ports may be taken here).
        for a in args {
            cmd.arg(if a.starts_with("/etc/tessera/") {
                path.to_str().unwrap()
            } else {
                a
            });
        }
        cmd.args(extra).envs(env(node));
        let mut p = ServiceProcess::spawn(node, cmd, &dir.path().join(format!("{node}.log")));
        let url = p.wait_for_url(Duration::from_secs(120));
        (p, url)
    };
    let (_gateway, gw_url) = spawn(
        gateway_bin(),
        gateway_toml,
        &gw_args,
        &["--listen", "127.0.0.1:0"],
        "gateway-pod",
    );
    let http = client();
    for (path, _) in &gw_probes {
        await_ok(&http, &format!("{gw_url}{path}")).await;
    }
    let text = await_metric(&http, &gw_url, "tessera_lease_keepalive_seconds_bucket").await;
    for name in ["process_cpu_seconds_total", "tessera_build_info{version="] {
        assert!(text.contains(name), "gateway metrics lack {name}");
    }
    let (_compactor, c_url) = spawn(
        compactor_bin(),
        compactor_toml,
        &strings(&daemon["args"]),
        &["--metrics-listen", "127.0.0.1:0"],
        "compactor-pod",
    );
    let c_base = c_url.trim_end_matches("/metrics");
    for (path, _) in &daemon_probes {
        await_ok(&http, &format!("{c_base}{path}")).await;
    }
}

/// The pod template labels of a workload.
fn pod_labels(workload: &Value) -> serde_json::Map<String, Value> {
    workload["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap()
        .clone()
}

/// Polls `url` until it answers 200 (within 30 s).
async fn await_ok(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = http.get(url).send().await.map(|r| r.status());
        if matches!(status, Ok(s) if s.is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "{url} answered {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the gateway's metrics until `name` has a sample; returns the text.
async fn await_metric(http: &reqwest::Client, url: &str, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = common::get_text(http, format!("{url}/metrics")).await;
        if text.lines().any(|l| l.starts_with(name)) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {name} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn compose_file_passes_the_compose_schema_and_waits_on_health() {
    let path = "minio-dev/compose.yaml";
    let mut cmd = python_module("check_jsonschema");
    cmd.args(["--builtin-schema", "vendor.compose-spec", path]);
    run_ok(cmd, "check-jsonschema (compose-spec)");

    let compose = &yaml_docs(&std::fs::read_to_string(root().join(path)).unwrap())[0];
    let services = compose["services"].as_object().unwrap();
    let gateway = Accepted::of(gateway_bin());
    let compactor = Accepted::of(compactor_bin());
    for (name, s) in services {
        let restart = s["restart"].as_str().unwrap_or("no");
        assert_ne!(restart, "no", "service {name} has no restart policy");
        for (dep, how) in s["depends_on"].as_object().into_iter().flatten() {
            let condition = how["condition"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} depends on {dep} without a condition"));
            assert_ne!(
                condition, "service_started",
                "{name} → {dep}: wait for health"
            );
            if condition == "service_healthy" {
                assert!(
                    services[dep]["healthcheck"].is_object(),
                    "{name} waits for {dep} to be healthy, which has no healthcheck"
                );
            }
        }
        let env: Vec<String> = s["environment"]
            .as_object()
            .map(|e| e.keys().cloned().collect())
            .unwrap_or_default();
        let entrypoint = strings(&s["entrypoint"]);
        if name.starts_with("gateway") {
            gateway.check(name, &[], &env);
            assert!(s["healthcheck"].is_object(), "{name} has no healthcheck");
        } else if entrypoint.first().is_some_and(|e| e == "tessera-compactor") {
            compactor.check(name, &entrypoint, &env);
        }
    }
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_ships_the_cli() {
    let text = std::fs::read_to_string(root().join("minio-dev/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let runtime = stages.last().unwrap();
    let user = runtime
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap()),
        "runs as {user}"
    );
    for bin in ["tessera-gateway", "tessera-compactor", "release/tessera "] {
        assert!(runtime.contains(bin), "the image lacks {bin}");
    }
    let ignore = std::fs::read_to_string(root().join("minio-dev/Dockerfile.dockerignore")).unwrap();
    for dir in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l == dir),
            "{dir} is sent as build context"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = tool("promtool", "apt-get install prometheus");
    let dir = root().join("deploy/prometheus");
    let mut check = Command::new(&promtool);
    check
        .args(["check", "rules", "alerts.yaml"])
        .current_dir(&dir);
    run_ok(check, "promtool check rules");
    let mut test = Command::new(&promtool);
    test.args(["test", "rules", "alerts.test.yaml"])
        .current_dir(&dir);
    run_ok(test, "promtool test rules");
}

/// The metric names documented in docs/metrics.md, plus what every Prometheus server adds.
fn documented_metrics() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let mut names = metric_names(&doc);
    names.insert("kube_job_status_failed".into()); // kube-state-metrics
    names
}

/// Every `tessera_*`, `process_*` or `kube_*` name in `text`, without histogram suffixes.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| {
            ["tessera_", "process_", "kube_"]
                .iter()
                .any(|p| w.starts_with(p))
        })
        .map(|w| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

#[test]
fn alerts_and_dashboard_use_documented_metrics() {
    let documented = documented_metrics();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/tessera.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push_str(target["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yaml")).unwrap();
    let alert_exprs: String = yaml_docs(&alerts)[0]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string() + "\n")
        .collect();
    for (what, text) in [("dashboard", &exprs), ("alerts", &alert_exprs)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{what} queries no metric");
        let unknown: Vec<_> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses undocumented metrics {unknown:?}"
        );
    }
}

/// Started before etcd, a gateway retries with backoff (a log line per attempt) and joins
/// once etcd is up; with a short `cluster.join_timeout` it gives up and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_waits_for_etcd_with_backoff() {
    let mut etcd = EtcdServer::unstarted();
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let opts = GatewayOpts::new(Store::s3(&s3, "wait"))
        .arg("--etcd")
        .arg(etcd.endpoint());

    let mut gw = opts.spawn(&dir.path().join("wait.log"), "127.0.0.1:0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.log_text().matches("etcd not reachable yet").count() < 3 {
        assert!(gw.exit_status().is_none(), "exited:\n{}", gw.log_tail());
        assert!(
            Instant::now() < deadline,
            "no retries logged:\n{}",
            gw.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    etcd.restart();
    let url = gw.wait_for_url(Duration::from_secs(60));
    await_ok(&client(), &format!("{url}/readyz")).await;

    // Bounded: with nobody at the endpoint, a 1 s join_timeout ends the process.
    let cfg = dir.path().join("short.toml");
    std::fs::write(&cfg, "[cluster]\njoin_timeout = \"1s\"\n").unwrap();
    let opts = GatewayOpts::new(Store::s3(&s3, "give-up"))
        .arg("--config")
        .arg(cfg.to_str().unwrap())
        .arg("--etcd")
        .arg(format!("http://127.0.0.1:{}", common::free_port()));
    let mut gw = opts.spawn(&dir.path().join("give-up.log"), "127.0.0.1:0");
    let status = gw
        .wait_for_exit(Duration::from_secs(30), "it never gave up")
        .await;
    assert!(!status.success(), "{status}");
    assert!(gw.log_text().contains("etcd not reachable yet"));
}
