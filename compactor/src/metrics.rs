//! Prometheus metrics of a compactor, served as text at `GET /metrics` when
//! `metrics.listen` is set. Per shard (label `shard`, five digits): the manifest's L0 SST count
//! and sorted runs while this compactor holds the shard (read every `poll_interval` while the
//! shard compacts, else with each GC pass); bytes and SSTs written by compactions,
//! compactions done (new sorted runs committed), failed compactor runs, and objects deleted by
//! the garbage collector. Process-wide: shards claimed and shards compacting; object-store
//! requests by kind, as the gateways report theirs, so the idle cost of compaction can be
//! measured; the commit-log GC passes this
//! compactor ran (only the one holding shard 0's claim runs them); and, unprefixed, the
//! standard `process_*` metrics and `tessera_build_info`, as every Tessera binary exports them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::routing::get;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tessera::cluster::lease::KeepAliveStats;
use tessera::objstore::RequestCounts;
use tessera::storage::log::gc::GcReport;
use tessera::ShardId;
use tokio_util::sync::CancellationToken;

use crate::engine::{Counters, ShardStats};

/// The compactor's metrics.
pub struct Metrics {
    registry: Registry,
    claimed: IntGauge,
    compacting: IntGauge,
    leases_lost: IntCounterVec,
    lease_rejoins: IntCounterVec,
    l0: IntGaugeVec,
    sorted_runs: IntGaugeVec,
    bytes_written: IntCounterVec,
    ssts_written: IntCounterVec,
    compactions: IntCounterVec,
    failures: IntCounterVec,
    gc_deleted: IntCounterVec,
    object_store_requests: IntCounterVec,
    log_gc_passes: IntCounterVec,
    log_objects_deleted: IntCounter,
    log_bytes_deleted: IntCounter,
    log_gc_errors: IntCounter,
    log_objects: IntGauge,
    /// The counts behind `object_store_requests`, once the object store is open.
    requests: OnceLock<Arc<RequestCounts>>,
    /// Unprefixed metrics: `process_*` and `tessera_build_info`.
    process: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("tessera_compactor".into()), None).expect("valid prefix");
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &["shard"]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &["shard"]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let claimed = IntGauge::new("shards_claimed", "Shards this compactor holds a claim on")
            .expect("valid metric");
        let compacting = IntGauge::new(
            "shards_compacting",
            "Held shards with a running compactor (hinted by their owner, or lingering after)",
        )
        .expect("valid metric");
        for g in [&claimed, &compacting] {
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
        }
        let object_store_requests = IntCounterVec::new(
            Opts::new(
                "object_store_requests_total",
                "Object-store requests made by this compactor, by kind \
                 (get, head, put, delete, list, copy)",
            ),
            &["op"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(object_store_requests.clone()))
            .expect("unique metric");
        let leases_lost = IntCounterVec::new(
            Opts::new(
                "lease_lost_total",
                "Leases given up (every claim went with them), by reason: not_found, ttl_zero, \
                 deadline (a whole TTL without an acknowledged keep-alive)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let lease_rejoins = IntCounterVec::new(
            Opts::new(
                "lease_rejoins_total",
                "New leases granted after a lease was lost",
            ),
            &[],
        )
        .expect("valid metric");
        for c in [&leases_lost, &lease_rejoins] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        let log_gc_passes = IntCounterVec::new(
            Opts::new(
                "log_gc_passes_total",
                "Commit-log GC passes run by this compactor, by result: ok, failed (the LIST of \
                 logs/ failed)",
            ),
            &["result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(log_gc_passes.clone()))
            .expect("unique metric");
        let plain = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let log_objects_deleted = plain(
            "log_objects_deleted_total",
            "Commit-log objects (records and fences) deleted by log GC",
        );
        let log_bytes_deleted = plain(
            "log_bytes_deleted_total",
            "Bytes of the commit-log objects deleted by log GC",
        );
        let log_gc_errors = plain(
            "log_gc_errors_total",
            "Log objects or checkpoints log GC could not read, parse or delete (kept; see the \
             WARN log)",
        );
        let log_objects = IntGauge::new(
            "log_objects",
            "Objects under logs/ left after this compactor's last log GC pass",
        )
        .expect("valid metric");
        registry
            .register(Box::new(log_objects.clone()))
            .expect("unique metric");
        Metrics {
            log_gc_passes,
            log_objects_deleted,
            log_bytes_deleted,
            log_gc_errors,
            log_objects,
            claimed,
            compacting,
            leases_lost,
            lease_rejoins,
            object_store_requests,
            requests: OnceLock::new(),
            process: tessera::metrics::process_registry(env!("CARGO_PKG_VERSION")),
            l0: gauge("l0_ssts", "L0 SSTs in the shard's manifest"),
            sorted_runs: gauge("sorted_runs", "Sorted runs in the shard's manifest"),
            bytes_written: counter("bytes_written_total", "Bytes written by compactions"),
            ssts_written: counter("ssts_written_total", "SSTs written by compactions"),
            compactions: counter(
                "compactions_total",
                "Compactions committed (new sorted runs)",
            ),
            failures: counter(
                "failures_total",
                "Compactor or GC runs that stopped with an error (fenced, object store)",
            ),
            gc_deleted: counter("gc_deleted_objects_total", "Objects deleted by GC"),
            registry,
        }
    }

    /// Reports the requests counted in `requests` (the opened object store's) from now on.
    pub fn count_object_store(&self, requests: Arc<RequestCounts>) {
        let _ = self.requests.set(requests);
    }

    /// Records the number of shards held.
    pub fn set_claimed(&self, n: usize) {
        self.claimed.set(n as i64);
    }

    /// Records the number of held shards with a running compactor.
    pub fn set_compacting(&self, n: usize) {
        self.compacting.set(n as i64);
    }

    /// Brings the lease counters up to `stats`.
    pub fn lease(&self, stats: &KeepAliveStats) {
        let catch_up = |c: IntCounter, n: u64| c.inc_by(n.saturating_sub(c.get()));
        for (why, n) in stats.losses() {
            catch_up(self.leases_lost.with_label_values(&[why.as_str()]), n);
        }
        catch_up(
            self.lease_rejoins.with_label_values(&[] as &[&str]),
            stats.rejoins().0,
        );
    }

    /// Records a manifest reading of a held shard.
    pub fn observe(&self, shard: ShardId, stats: &ShardStats) {
        let s = shard.to_string();
        self.l0.with_label_values(&[&s]).set(stats.l0 as i64);
        self.sorted_runs
            .with_label_values(&[&s])
            .set(stats.sorted_runs as i64);
    }

    /// Forgets the gauges of a shard this compactor no longer holds (its new holder reports it).
    pub fn forget(&self, shard: ShardId) {
        let s = shard.to_string();
        let _ = self.l0.remove_label_values(&[&s]);
        let _ = self.sorted_runs.remove_label_values(&[&s]);
    }

    /// Adds work done on `shard`.
    pub fn add(&self, shard: ShardId, delta: Counters, compactions: u64) {
        let s = [shard.to_string()];
        let s = [s[0].as_str()];
        self.bytes_written
            .with_label_values(&s)
            .inc_by(delta.bytes_written);
        self.ssts_written
            .with_label_values(&s)
            .inc_by(delta.ssts_written);
        self.gc_deleted
            .with_label_values(&s)
            .inc_by(delta.gc_deleted);
        self.compactions.with_label_values(&s).inc_by(compactions);
    }

    /// Records a finished commit-log GC pass.
    pub fn log_gc_done(&self, report: &GcReport) {
        self.log_gc_passes.with_label_values(&["ok"]).inc();
        self.log_objects_deleted.inc_by(report.deleted);
        self.log_bytes_deleted.inc_by(report.deleted_bytes);
        self.log_gc_errors.inc_by(report.errors);
        self.log_objects.set(report.kept as i64);
    }

    /// Counts a commit-log GC pass that failed (its LIST).
    pub fn log_gc_failed(&self) {
        self.log_gc_passes.with_label_values(&["failed"]).inc();
    }

    /// Counts a failed compactor run on `shard`.
    pub fn failed(&self, shard: ShardId) {
        self.failures.with_label_values(&[&shard.to_string()]).inc();
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(requests) = self.requests.get() {
            for (op, n) in requests.snapshot() {
                // Only this sync moves the counter, and the source only grows.
                let c = self.object_store_requests.with_label_values(&[op]);
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Serves `GET /metrics` on `addr` until `cancel`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Arc<Metrics>>| async move { m.render() }),
        )
        .with_state(metrics);
    tokio::spawn(async move {
        let shutdown = async move { cancel.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}
