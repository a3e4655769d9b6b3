//! The status page (`GET /ui`) in a real headless browser (Debian's `chromium`) against a
//! running three-gateway cluster: the rendered DOM shows every member and every shard with its
//! owner; while a member that does not take its shards is registered, those shards are
//! highlighted as unowned, until it leaves. Screenshots are kept in `target/test-artifacts/` (`ui.png`,
//! `ui-unowned.png`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, SHARDS};
use common::tool;

/// The gateways' quiet period after a member joins, before shards move to it.
const REBALANCE_DELAY: &str = "1s";

/// Runs headless chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`); returns
/// stdout. The virtual-time budget lets the page's fetches and first refreshes finish first.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(tool("chromium", "apt-get install chromium"))
        .args([
            "--headless",
            "--no-sandbox", // tests run as root on CI
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--window-size=1280,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn artifacts_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("test-artifacts")
}

/// Saves a screenshot of `url` as `target/test-artifacts/{name}` and checks it is not empty.
fn screenshot(url: &str, name: &str) {
    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join(name);
    let _ = std::fs::remove_file(&shot);
    chromium(url, &[&format!("--screenshot={}", shot.display())]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} has {size} bytes",
        shot.display()
    );
}

/// The shards without an owner in the `/v1/cluster` view of the gateway at `url`.
async fn unowned_shards(url: &str) -> Vec<u32> {
    let view = common::get_json(&common::client(), format!("{url}/v1/cluster")).await;
    view["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["owner"].is_null())
        .map(|s| s["shard"].as_u64().unwrap() as u32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_every_member_and_shard_in_a_browser() {
    let toml = format!("[cluster]\nrebalance_delay = \"{REBALANCE_DELAY}\"\n");
    let cluster = Cluster::start_config(3, &toml).await;
    let owners = cluster
        .await_stable(&[0, 1, 2], Duration::from_secs(90))
        .await;
    let base = cluster.gw(1).url.clone();
    let url = format!("{base}/ui");

    let dom = chromium(&url, &["--dump-dom"]);
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "the page did not load its data:\n{dom}"
    );
    for i in 0..3 {
        assert!(
            dom.contains(&format!(r#"data-member="gw{i}""#)),
            "member gw{i} missing:\n{dom}"
        );
    }
    for shard in 0..SHARDS {
        let owner = &owners[&shard];
        let cell = format!(r#"data-shard="{shard}" data-owner="{owner}""#);
        assert!(
            dom.contains(&cell),
            "shard {shard} (owner {owner}) missing:\n{dom}"
        );
    }
    assert!(
        !dom.contains(r#"class="shard unowned""#),
        "a shard shows as unowned:\n{dom}"
    );
    assert!(dom.contains(r#"<b id="unowned-count">0</b>"#), "{dom}");
    screenshot(&url, "ui.png");

    // A member that never takes its shards (a gateway stuck starting; here a key the test
    // writes, its URL refusing connections): once the quiet period has passed, the owners hand
    // its rendezvous shards over and nobody serves them until it leaves.
    let mut etcd = cluster.etcd.client().await;
    let lease = etcd.lease_grant(60, None).await.unwrap().id();
    let ghost = serde_json::json!({
        "id": "ghost",
        "url": format!("http://127.0.0.1:{}", common::free_port()),
    });
    let with_lease = Some(etcd_client::PutOptions::new().with_lease(lease));
    etcd.put("/tessera/test/members/ghost", ghost.to_string(), with_lease)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Vec::new();
    let orphans = loop {
        // Two reads a second apart agree: the hand-over is over.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let unowned = unowned_shards(&base).await;
        if !unowned.is_empty() && unowned == last {
            break unowned;
        }
        assert!(
            Instant::now() < deadline,
            "gw1 does not see the ghost's shards unowned: {unowned:?}"
        );
        last = unowned;
    };

    let dom = chromium(&url, &["--dump-dom"]);
    screenshot(&url, "ui-unowned.png");
    assert_eq!(
        unowned_shards(&base).await,
        orphans,
        "the unowned shards changed"
    );
    assert!(
        dom.contains(r#"data-member="ghost""#),
        "the ghost member is not listed:\n{dom}"
    );
    for shard in 0..SHARDS {
        let cell = if orphans.contains(&shard) {
            format!(r#"class="shard unowned" data-shard="{shard}" data-owner="""#)
        } else {
            format!(
                r#"class="shard" data-shard="{shard}" data-owner="{}""#,
                owners[&shard]
            )
        };
        assert!(
            dom.contains(&cell),
            "shard {shard} (owner before the ghost: {}) is not drawn as `{cell}`:\n{dom}",
            owners[&shard]
        );
    }
    assert!(
        dom.contains(&format!(r#"<b id="unowned-count">{}</b>"#, orphans.len())),
        "{dom}"
    );
    // The ghost leaves: its shards are claimed at once.
    etcd.lease_revoke(lease).await.unwrap();
    cluster
        .await_stable(&[0, 1, 2], Duration::from_secs(30))
        .await;
}
