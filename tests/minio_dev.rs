//! `minio-dev/run.sh`, the no-Docker local cluster, started for real on free ports: three
//! gateways on etcd and s3s-fs serve each other's keys, a compactor daemon claims every shard,
//! and `clean` stops everything.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{client, compactor_bin, free_port, gateway_bin, get_json, get_text};
use reqwest::StatusCode;

/// Runs `minio-dev/run.sh <action>` with the given overrides.
fn run_sh(action: &str, env: &[(&str, String)]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    Command::new("bash")
        .arg(root.join("minio-dev/run.sh"))
        .arg(action)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run minio-dev/run.sh")
}

/// A base port `b` with `b+1..=b+3` free.
fn free_base() -> u16 {
    loop {
        let base = free_port();
        let free = (1..=3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if base < 65000 && free {
            return base;
        }
    }
}

/// Runs `clean` when dropped, so a failing test leaves no processes behind.
struct Cleanup(Vec<(&'static str, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        run_sh("clean", &self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sh_starts_a_working_three_gateway_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("run");
    let base = free_base();
    let metrics_port = free_port();
    let env = vec![
        ("DEV_DIR", state.display().to_string()),
        ("ETCD_PORT", free_port().to_string()),
        ("ETCD_PEER_PORT", free_port().to_string()),
        ("S3_PORT", free_port().to_string()),
        ("GW_PORT_BASE", base.to_string()),
        ("GATEWAY_BIN", gateway_bin().display().to_string()),
        ("COMPACTOR_METRICS_PORT", metrics_port.to_string()),
        ("COMPACTOR_BIN", compactor_bin().display().to_string()),
    ];
    let cleanup = Cleanup(env.clone());
    let up = tokio::task::block_in_place(|| run_sh("up", &env));
    let out = String::from_utf8_lossy(&up.stdout).to_string();
    assert!(
        up.status.success(),
        "run.sh up failed:\n{out}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        out.contains(&format!("gateway gw3: http://127.0.0.1:{}", base + 3)),
        "{out}"
    );

    let http = client();
    let gw = |i: u16| format!("http://127.0.0.1:{}", base + i);
    // Tokens are on by default: without one, 401.
    let r = http
        .get(format!("{}/v1/kv/greeting", gw(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let http = reqwest::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            "Bearer dev-admin-token".parse().unwrap(),
        )]))
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let r = http
        .put(format!("{}/v1/kv/greeting", gw(1)))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = http
        .get(format!("{}/v1/kv/greeting", gw(3)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "hello");
    let view = get_json(&http, format!("{}/v1/cluster", gw(2))).await;
    assert_eq!(view["members"].as_array().unwrap().len(), 3, "{view}");

    // The compactor daemon claims every shard (64 by default).
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = get_text(&http, &metrics_url).await;
        if text.contains("tessera_compactor_shards_claimed 64") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let status = run_sh("status", &env);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert_eq!(status.matches(": running").count(), 6, "{status}");

    drop(cleanup);
    assert!(!state.exists(), "clean removes the state directory");
    assert!(
        http.get(format!("{}/healthz", gw(1))).send().await.is_err(),
        "gateways stopped"
    );
}
