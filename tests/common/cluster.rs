//! A test cluster: one etcd, one s3s-fs and several gateway processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::{client, EtcdServer, Gateway, GatewayOpts, S3Server, Store};

pub const SHARDS: u32 = 16;

/// etcd, S3 and the gateways of one test cluster.
pub struct Cluster {
    pub etcd: EtcdServer,
    pub s3: S3Server,
    pub dir: TempDir,
    pub gateways: Vec<Option<Gateway>>,
    name: String,
    /// Extra gateway arguments.
    extra: Vec<String>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    /// Starts `n` gateways that get `extra` arguments on top of the usual ones.
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster {
            etcd: EtcdServer::start(),
            s3: S3Server::start(),
            dir: tempfile::tempdir().unwrap(),
            gateways: Vec::new(),
            name: "test".into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..n {
            c.add().await;
        }
        c
    }

    fn opts(&self, i: usize) -> GatewayOpts {
        let mut o = GatewayOpts::new(Store::s3(&self.s3, "cluster"))
            .arg("--etcd")
            .arg(self.etcd.endpoint())
            .arg("--cluster")
            .arg(self.name.clone())
            .arg("--node-id")
            .arg(format!("gw{i}"));
        o.shards = SHARDS;
        o.extra.extend(self.extra.iter().cloned());
        o
    }

    /// Starts gateway number `len` (or restarts a slot) and returns its index.
    pub async fn add(&mut self) -> usize {
        let i = self.gateways.len();
        self.gateways.push(None);
        self.restart(i).await;
        i
    }

    pub async fn restart(&mut self, i: usize) {
        let opts = self.opts(i);
        let log = self.dir.path().join(format!("gw{i}-{}.log", now_ms()));
        let gw = tokio::task::spawn_blocking(move || opts.start(&log))
            .await
            .unwrap();
        self.gateways[i] = Some(gw);
    }

    pub fn gw(&self, i: usize) -> &Gateway {
        self.gateways[i].as_ref().expect("gateway running")
    }

    pub fn live(&self) -> Vec<usize> {
        (0..self.gateways.len())
            .filter(|i| self.gateways[*i].is_some())
            .collect()
    }

    /// Waits until, as seen by every live gateway, every shard is owned by a live member
    /// whose id is in `members`, and all views agree. Returns the shard → owner map.
    pub async fn await_stable(
        &self,
        members: &[usize],
        timeout: Duration,
    ) -> BTreeMap<u32, String> {
        let want: Vec<String> = members.iter().map(|i| format!("gw{i}")).collect();
        let deadline = Instant::now() + timeout;
        let http = client();
        loop {
            let mut views = Vec::new();
            for i in self.live() {
                if let Ok(r) = http
                    .get(format!("{}/v1/cluster", self.gw(i).url))
                    .send()
                    .await
                {
                    if let Ok(v) = r.json::<Value>().await {
                        views.push(v);
                    }
                }
            }
            if let Some(first) = views.first() {
                let owners: BTreeMap<u32, String> = first["shards"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|s| {
                        Some((
                            s["shard"].as_u64()? as u32,
                            s["owner"].as_str()?.to_string(),
                        ))
                    })
                    .collect();
                let members_seen: Vec<String> = first["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["id"].as_str().unwrap().to_string())
                    .collect();
                let complete = owners.len() == SHARDS as usize
                    && owners.values().all(|o| want.contains(o))
                    && members_seen == want
                    && views.len() == self.live().len()
                    && views.iter().all(|v| v["shards"] == first["shards"])
                    && self.hrw_placed(&owners, &want);
                if complete {
                    return owners;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not stabilise: {views:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True if every shard is owned by its rendezvous-hash choice among `members`.
    fn hrw_placed(&self, owners: &BTreeMap<u32, String>, members: &[String]) -> bool {
        let ms: Vec<tessera::Member> = members
            .iter()
            .map(|id| tessera::Member {
                id: id.clone(),
                url: String::new(),
            })
            .collect();
        owners.iter().all(|(s, o)| {
            tessera::placement::hrw(tessera::ShardId(*s), &ms).is_some_and(|m| &m.id == o)
        })
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The shard of `key` (same function as the gateways).
pub fn shard_of(key: &str) -> u32 {
    tessera::shard_for_key(key.as_bytes(), SHARDS).0
}

pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}
