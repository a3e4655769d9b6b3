//! A test cluster: one etcd, one s3s-fs and several gateway processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::Value;
use tempfile::TempDir;

use super::proxy::Proxy;
use super::{client, EtcdServer, Gateway, GatewayOpts, S3Server, ServiceProcess, Store};

pub const SHARDS: u32 = 16;

/// etcd, S3 and the gateways of one test cluster.
pub struct Cluster {
    pub etcd: EtcdServer,
    pub s3: S3Server,
    pub dir: TempDir,
    pub gateways: Vec<Option<Gateway>>,
    name: String,
    /// The cluster's shard count.
    pub shards: u32,
    /// Extra arguments of every gateway.
    extra: Vec<String>,
    /// Extra environment variables of every gateway.
    env: Vec<(String, String)>,
    /// The proxied links of gateway `i` (`Cluster::start_proxied`), kept across restarts;
    /// empty (or `None`) for a gateway started with direct links.
    pub links: Vec<Option<Links>>,
}

/// The links of one gateway, each through its own cuttable proxy (`Cluster::start_proxied`).
pub struct Links {
    /// Gateway → etcd (its `--etcd` endpoint).
    pub etcd: Proxy,
    /// Gateway → S3 (its `--s3-endpoint`).
    pub s3: Proxy,
    /// Peers → gateway: its advertised URL, which other gateways forward requests to. The
    /// test's own clients use the gateway's real URL (`Gateway::url`) and bypass it.
    pub peer: Proxy,
    /// The fixed port the gateway listens on (the peer proxy's target), the same on restart.
    pub listen_port: u16,
}

impl Links {
    async fn start(etcd: &EtcdServer, s3: &S3Server) -> Links {
        let listen_port = super::free_port();
        Links {
            etcd: Proxy::start(format!("127.0.0.1:{}", etcd.port)).await,
            s3: Proxy::start(format!("127.0.0.1:{}", s3.port)).await,
            peer: Proxy::start(format!("127.0.0.1:{listen_port}")).await,
            listen_port,
        }
    }

    /// Cuts every link (the gateway is isolated from everything but the test's clients).
    pub fn cut_all(&self) {
        self.etcd.cut();
        self.s3.cut();
        self.peer.cut();
    }

    pub fn heal_all(&self) {
        self.etcd.heal();
        self.s3.heal();
        self.peer.heal();
    }
}

/// How a test cluster's gateways start.
#[derive(Clone, Default)]
pub struct ClusterOpts {
    /// Extra arguments of every gateway.
    pub extra: Vec<String>,
    /// Extra environment variables of every gateway (fault-injection hooks).
    pub env: Vec<(String, String)>,
    /// Each gateway's links through cuttable proxies (`Cluster::start_proxied`).
    pub proxied: bool,
    /// The shard count; 0 means `SHARDS`.
    pub shards: u32,
    /// Extra flags of the cluster's etcd.
    pub etcd_extra: Vec<String>,
    /// The gateways' configuration file (TOML), if not empty: written into the cluster's
    /// directory and passed as `--config`.
    pub config: String,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Self::start_opts(n, ClusterOpts::default()).await
    }

    /// Starts `n` gateways, each with the extra arguments `extra`.
    pub async fn start_with(n: usize, extra: Vec<String>) -> Cluster {
        let opts = ClusterOpts {
            extra,
            ..ClusterOpts::default()
        };
        Self::start_opts(n, opts).await
    }

    /// Starts `n` gateways with the configuration file `toml`.
    pub async fn start_config(n: usize, toml: &str) -> Cluster {
        let opts = ClusterOpts {
            config: toml.into(),
            ..ClusterOpts::default()
        };
        Self::start_opts(n, opts).await
    }

    /// Starts `n` gateways whose links to etcd, to S3 and from their peers each go through a
    /// cuttable proxy of their own (`Cluster::links`).
    pub async fn start_proxied(n: usize) -> Cluster {
        let opts = ClusterOpts {
            proxied: true,
            ..ClusterOpts::default()
        };
        Self::start_opts(n, opts).await
    }

    /// Starts `n` gateways as `opts` says.
    pub async fn start_opts(n: usize, opts: ClusterOpts) -> Cluster {
        let mut c = Cluster {
            etcd: EtcdServer::start_with("http", opts.etcd_extra.clone()),
            s3: S3Server::start(),
            // TESSERA_KEEP_TEST_DIRS=1 keeps the directory (gateway logs) for a post-mortem.
            dir: tempfile::Builder::new()
                .disable_cleanup(std::env::var_os("TESSERA_KEEP_TEST_DIRS").is_some())
                .tempdir()
                .unwrap(),
            gateways: Vec::new(),
            name: "test".into(),
            shards: if opts.shards == 0 {
                SHARDS
            } else {
                opts.shards
            },
            extra: opts.extra,
            env: opts.env,
            links: Vec::new(),
        };
        if !opts.config.is_empty() {
            let path = c.dir.path().join("gateway.toml");
            std::fs::write(&path, &opts.config).unwrap();
            c.extra
                .extend(["--config".into(), path.display().to_string()]);
        }
        for _ in 0..n {
            if opts.proxied {
                c.add_proxied().await;
            } else {
                c.add().await;
            }
        }
        c
    }

    /// Starts gateway number `len` with proxied links (see `start_proxied`); returns its index.
    pub async fn add_proxied(&mut self) -> usize {
        let i = self.gateways.len();
        let links = Links::start(&self.etcd, &self.s3).await;
        self.links.resize_with(i + 1, || None);
        self.links[i] = Some(links);
        self.add().await
    }

    /// Sets an environment variable of the gateways started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    /// The proxied links of gateway `i`.
    pub fn link(&self, i: usize) -> &Links {
        self.links
            .get(i)
            .and_then(Option::as_ref)
            .expect("gateway started with proxied links")
    }

    fn opts(&self, i: usize) -> GatewayOpts {
        // A proxied gateway reaches etcd and S3 through its proxies and is reached through its
        // peer proxy.
        self.opts_via(i, self.links.get(i).and_then(Option::as_ref))
    }

    fn opts_via(&self, i: usize, links: Option<&Links>) -> GatewayOpts {
        let (etcd, s3, advertise) = match links {
            Some(l) => (l.etcd.url(), l.s3.url(), Some(l.peer.url())),
            None => (self.etcd.endpoint(), self.s3.endpoint(), None),
        };
        let store = Store::S3 {
            endpoint: s3,
            prefix: "cluster".into(),
        };
        let mut o = GatewayOpts::new(store)
            .arg("--etcd")
            .arg(etcd)
            .arg("--cluster")
            .arg(self.name.clone())
            .arg("--node-id")
            .arg(format!("gw{i}"));
        if let Some(url) = advertise {
            o = o.arg("--advertise-url").arg(url);
        }
        o.extra.extend(self.extra.iter().cloned());
        o.env.extend(self.env.iter().cloned());
        o.shards = self.shards;
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
        let listen = self.links.get(i).and_then(Option::as_ref).map_or_else(
            || "127.0.0.1:0".to_string(),
            |l| format!("127.0.0.1:{}", l.listen_port),
        );
        let gw = tokio::task::spawn_blocking(move || opts.start_on(&log, &listen))
            .await
            .unwrap();
        self.gateways[i] = Some(gw);
    }

    /// Spawns another process with gateway `i`'s id and settings, on a port of its own and
    /// reaching etcd and S3 directly: a replacement started while `i` may still run. It is
    /// not one of `gateways`; `Gateway::process` says whether it joined.
    pub fn spawn_twin(&self, i: usize) -> ServiceProcess {
        let log = self.dir.path().join(format!("gw{i}-twin-{}.log", now_ms()));
        self.opts_via(i, None).spawn(&log, "127.0.0.1:0")
    }

    /// SIGKILLs gateway `i` (nothing flushed) and forgets it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut gw) = self.gateways[i].take() {
            gw.process.kill();
        }
    }

    /// SIGTERMs gateway `i`, asserts that it exited cleanly within 60 s, and forgets it.
    pub fn stop(&mut self, i: usize) {
        let mut gw = self.gateways[i].take().expect("gateway running");
        let status = tokio::task::block_in_place(|| gw.process.terminate(Duration::from_secs(60)));
        let log = gw.process.log_tail();
        assert!(status.success(), "gw{i} exited with {status}\n{log}");
    }

    /// Whether `restarted`, a new incarnation of a gateway's id, retired the earlier one, or
    /// one of the gateways `survivors` expelled it first (whichever saw its beat stand first).
    pub fn retired_or_expelled(&self, restarted: &ServiceProcess, survivors: &[usize]) -> bool {
        let retired = restarted
            .log_text()
            .contains("retired an earlier incarnation");
        retired
            || survivors.iter().any(|g| {
                let log = self.gw(*g).process.log_text();
                log.contains("expelled a gateway whose heartbeat stopped")
            })
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
                let complete = owners.len() == self.shards as usize
                    && owners.values().all(|o| want.contains(o))
                    && members_seen == want
                    && views.len() == self.live().len()
                    && views.iter().all(|v| v["shards"] == first["shards"])
                    && self.hrw_placed(&owners, &want);
                if complete {
                    return owners;
                }
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .gateways
                    .iter()
                    .flatten()
                    .map(|g| g.process.log_tail())
                    .collect();
                panic!(
                    "cluster did not stabilise: {}\ngateway logs:\n{}",
                    serde_json::to_string(&views).unwrap(),
                    logs.join("\n---\n")
                );
            }
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

/// A compactor daemon of a test cluster, with its metrics endpoint. Killed (SIGKILL) on drop.
pub struct CompactorProc {
    pub process: ServiceProcess,
    pub metrics_url: String,
}

impl CompactorProc {
    /// The metrics text.
    pub async fn metrics(&self) -> String {
        super::get_text(&client(), &self.metrics_url).await
    }
}

impl Cluster {
    /// `tessera-compactor` against this cluster through the etcd endpoint `etcd` (e.g. a
    /// proxy's URL), configured by the TOML text `config`.
    fn compactor_command(&self, id: &str, config: &str, etcd: &str) -> Command {
        let cfg = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new(super::compactor_bin());
        cmd.arg("--config")
            .arg(cfg)
            .args(["--store", &format!("s3://{}/cluster", super::S3_BUCKET)])
            .args(["--s3-endpoint", &self.s3.endpoint()])
            .args(["--etcd", etcd])
            .args(["--cluster", &self.name, "--node-id", id])
            .args(["--log", "info,slatedb=warn"])
            .env("AWS_ACCESS_KEY_ID", super::S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", super::S3_SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env_remove("TESSERA_CONFIG");
        cmd
    }

    /// Runs one `--once` compactor pass, its stderr in `log`.
    pub fn compact_once(&self, id: &str, config: &str, log: &Path) -> Output {
        self.compactor_command(id, config, &self.etcd.endpoint())
            .arg("--once")
            .stderr(std::fs::File::create(log).unwrap())
            .output()
            .unwrap()
    }

    /// Starts a compactor daemon and waits for its metrics endpoint.
    pub fn start_compactor(&self, id: &str, config: &str) -> CompactorProc {
        self.start_compactor_via(id, config, &self.etcd.endpoint())
    }

    /// `start_compactor` with the etcd endpoint `etcd` (e.g. a proxy's URL).
    pub fn start_compactor_via(&self, id: &str, config: &str, etcd: &str) -> CompactorProc {
        let log = self.dir.path().join(format!("{id}-{}.log", now_ms()));
        let mut cmd = self.compactor_command(id, config, etcd);
        cmd.args(["--metrics-listen", "127.0.0.1:0"]);
        let mut process = ServiceProcess::spawn(format!("compactor {id}"), cmd, &log);
        let metrics_url = process.wait_for_url(Duration::from_secs(120));
        CompactorProc {
            process,
            metrics_url,
        }
    }

    /// The id of the one log gateway `id` wrote: its directory under `logs/`.
    pub async fn log_of(&self, id: &str) -> String {
        let store = self.store();
        let listed = store
            .store
            .list_with_delimiter(Some(&store.path("logs")))
            .await
            .unwrap();
        let mut logs: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(String::from))
            .filter(|name| name.starts_with(&format!("{id}-")))
            .collect();
        assert_eq!(logs.len(), 1, "one log of {id}: {logs:?}");
        logs.pop().unwrap()
    }

    /// The numbers of the objects of `log` that exist, in order.
    pub async fn log_objects(&self, log: &str) -> Vec<u64> {
        let store = self.store();
        let listed: Vec<_> = store
            .store
            .list(Some(&store.path(&format!("logs/{log}"))))
            .try_collect()
            .await
            .unwrap();
        let mut seqs: Vec<u64> = listed
            .iter()
            .filter_map(|m| m.location.filename()?.parse().ok())
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// The cluster's object store, read directly (test-side checks of manifests).
    pub fn store(&self) -> tessera::objstore::ClusterStore {
        self.s3.store("cluster")
    }

    /// L0 SST count of every shard, from its latest manifest.
    pub async fn l0_counts(&self) -> Vec<usize> {
        let store = self.store();
        let mut out = Vec::new();
        for shard in 0..self.shards {
            let admin = slatedb::admin::AdminBuilder::new(
                store.shard_path(tessera::ShardId(shard)),
                store.store.clone(),
            )
            .build();
            let manifest = admin.read_manifest(None).await.unwrap();
            out.push(manifest.map_or(0, |m| m.l0().len()));
        }
        out
    }

    /// Objects stored under the shards' prefix (WAL SSTs, SSTs, manifests, job files).
    pub fn object_count(&self) -> usize {
        fn count(dir: &Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let p = e.path();
                        if p.is_dir() {
                            count(&p)
                        } else {
                            1
                        }
                    })
                    .sum()
            })
        }
        count(&self.s3.bucket_dir().join("cluster").join("shards"))
    }
}

/// Every sample of metric `name` (labels text → value).
pub fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}
