//! The status page (`GET /ui`) in a real headless browser (Debian's `chromium`) against a
//! running three-gateway cluster: the rendered DOM shows every member and every shard with its
//! owner, and a screenshot is kept in `target/test-artifacts/ui.png`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cluster::{Cluster, SHARDS};
use common::tool;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_every_member_and_shard_in_a_browser() {
    let cluster = Cluster::start(3).await;
    let owners = cluster
        .await_stable(&[0, 1, 2], Duration::from_secs(60))
        .await;
    let url = format!("{}/ui", cluster.gw(1).url);

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

    let dir = artifacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("ui.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&url, &[&format!("--screenshot={}", shot.display())]);
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} has {size} bytes",
        shot.display()
    );
}
