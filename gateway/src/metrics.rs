//! Prometheus metrics: HTTP requests by route and status, latency, bytes, shard and storage
//! state, lease keep-alives, the build, and the standard `process_*` metrics. Served as text
//! at `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tessera::Node;

use crate::error::ErrorCode;

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    bytes_in: IntCounterVec,
    bytes_out: IntCounterVec,
    shards: IntGauge,
    shards_open: IntGauge,
    storage_errors: IntCounter,
    shard_reopens: IntCounter,
    write_admission_waits: IntCounter,
    ownership_changes: IntCounter,
    forwarded: IntCounter,
    hedged: IntCounterVec,
    keepalive: Histogram,
    keepalive_last: Gauge,
    leases_lost: IntCounterVec,
    lease_rejoins: IntCounter,
    lease_rejoin_last: Gauge,
    members_expelled: IntCounter,
    shards_unowned: IntGauge,
    unowned_seconds: CounterVec,
    reads: IntCounterVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    cache_evictions: IntCounter,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
    followers_open: IntGauge,
    follower_reads_late: IntCounter,
    eventual_lag: Histogram,
    object_store_requests: IntCounterVec,
    log_objects: IntCounter,
    log_writes: IntCounter,
    log_bytes: IntCounter,
    log_early_flushes: IntCounter,
    log_flush: Histogram,
    /// Unprefixed metrics: `process_*` (CPU, memory, file descriptors, start time) and
    /// `tessera_build_info`, as every Tessera binary exports them.
    process: Registry,
    rejected: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are static and unique, so registration cannot fail.
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("tessera".into()), None).expect("valid prefix");
        let labels = &["route", "method", "status"];
        Metrics {
            requests: register(
                &r,
                IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests"), labels)
                    .expect("valid metric"),
            ),
            latency: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                        .buckets(vec![
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                            2.5, 5.0, 10.0,
                        ]),
                    labels,
                )
                .expect("valid metric"),
            ),
            bytes_in: register(
                &r,
                IntCounterVec::new(
                    Opts::new("http_request_bytes_total", "Request body bytes received"),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            bytes_out: register(
                &r,
                IntCounterVec::new(
                    Opts::new("http_response_bytes_total", "Response body bytes sent"),
                    &["route"],
                )
                .expect("valid metric"),
            ),
            shards: register(
                &r,
                IntGauge::new("shards", "Shards in the cluster").expect("valid metric"),
            ),
            shards_open: register(
                &r,
                IntGauge::new("shards_open", "Shards open and served by this gateway")
                    .expect("valid metric"),
            ),
            storage_errors: register(
                &r,
                IntCounter::new(
                    "storage_errors_total",
                    "Object-store and shard-database errors seen by requests",
                )
                .expect("valid metric"),
            ),
            shard_reopens: register(
                &r,
                IntCounter::new(
                    "shard_reopens_total",
                    "Shard databases reopened after a fatal error",
                )
                .expect("valid metric"),
            ),
            write_admission_waits: register(
                &r,
                IntCounter::new(
                    "write_admission_waits_total",
                    "Writes that waited for room in their shard (L0 full, no compactor) before \
                     entering the commit log",
                )
                .expect("valid metric"),
            ),
            ownership_changes: register(
                &r,
                IntCounter::new(
                    "ownership_changes_total",
                    "Shards acquired, released or dropped by this gateway",
                )
                .expect("valid metric"),
            ),
            forwarded: register(
                &r,
                IntCounter::new(
                    "forwarded_requests_total",
                    "Requests forwarded to another gateway: the shard's owner, or for eventual reads one of its follower gateways",
                )
                .expect("valid metric"),
            ),
            hedged: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "eventual_hedged_total",
                        "Eventual reads also sent to the owner (follower opening, behind, or \
                         slower than reads.follower_hedge_after), by whose answer the client got",
                    ),
                    &["answered_by"],
                )
                .expect("valid metric"),
            ),
            keepalive: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "lease_keepalive_seconds",
                        "Round-trip time of acknowledged lease keep-alives",
                    )
                    // Up to the default lease TTL (3s) and past it: alerts compare to the TTL.
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0,
                        3.0, 5.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            keepalive_last: register(
                &r,
                Gauge::new(
                    "lease_keepalive_last_seconds",
                    "Round-trip time of the last acknowledged lease keep-alive",
                )
                .expect("valid metric"),
            ),
            leases_lost: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "lease_lost_total",
                        "Leases given up, by reason: not_found (etcd does not know it), \
                         ttl_zero (a keep-alive answered TTL 0), deadline (a whole TTL without \
                         an acknowledged keep-alive, e.g. cut off from etcd), expelled \
                         (another gateway found our heartbeat stale and took our shards)",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            lease_rejoins: register(
                &r,
                IntCounter::new(
                    "lease_rejoins_total",
                    "New leases granted after a lease was lost (the gateway joined again)",
                )
                .expect("valid metric"),
            ),
            lease_rejoin_last: register(
                &r,
                Gauge::new(
                    "lease_rejoin_last_seconds",
                    "Time from the last lease loss to its new lease",
                )
                .expect("valid metric"),
            ),
            members_expelled: register(
                &r,
                IntCounter::new(
                    "members_expelled_total",
                    "Gateways this one expelled because their heartbeat had stopped (their \
                     shards were then taken before their lease expired)",
                )
                .expect("valid metric"),
            ),
            shards_unowned: register(
                &r,
                IntGauge::new(
                    "shards_unowned",
                    "Shards without an owner in this gateway's view",
                )
                .expect("valid metric"),
            ),
            unowned_seconds: register(
                &r,
                CounterVec::new(
                    Opts::new(
                        "shard_unowned_seconds_total",
                        "Time each shard had no owner in this gateway's view (cluster mode)",
                    ),
                    &["shard"],
                )
                .expect("valid metric"),
            ),
            reads: register(
                &r,
                IntCounterVec::new(
                    Opts::new("reads_total", "Point reads by what served them"),
                    &["source"],
                )
                .expect("valid metric"),
            ),
            cache_hits: register(
                &r,
                IntCounter::new("cache_hits_total", "Hot-key cache lookups answered")
                    .expect("valid metric"),
            ),
            cache_misses: register(
                &r,
                IntCounter::new("cache_misses_total", "Hot-key cache lookups missed")
                    .expect("valid metric"),
            ),
            cache_evictions: register(
                &r,
                IntCounter::new(
                    "cache_evictions_total",
                    "Hot-key cache entries evicted by the byte bound",
                )
                .expect("valid metric"),
            ),
            cache_bytes: register(
                &r,
                IntGauge::new("cache_bytes", "Bytes held by the hot-key cache")
                    .expect("valid metric"),
            ),
            cache_entries: register(
                &r,
                IntGauge::new("cache_entries", "Entries held by the hot-key cache")
                    .expect("valid metric"),
            ),
            followers_open: register(
                &r,
                IntGauge::new(
                    "followers_open",
                    "Read-only followers open for eventual reads",
                )
                .expect("valid metric"),
            ),
            follower_reads_late: register(
                &r,
                IntCounter::new(
                    "follower_reads_finished_late_total",
                    "Follower reads that finished after the owner had answered their hedged \
                     request (they still fill the follower's block cache)",
                )
                .expect("valid metric"),
            ),
            log_objects: register(
                &r,
                IntCounter::new("log_objects_total", "Commit-log objects created")
                    .expect("valid metric"),
            ),
            log_writes: register(
                &r,
                IntCounter::new(
                    "log_writes_total",
                    "Writes carried by those objects (divided by log_objects_total: the batching)",
                )
                .expect("valid metric"),
            ),
            log_bytes: register(
                &r,
                IntCounter::new("log_bytes_total", "Bytes of those objects").expect("valid metric"),
            ),
            log_early_flushes: register(
                &r,
                IntCounter::new(
                    "log_early_flushes_total",
                    "Log flushes started before storage.flush_interval because enough writes waited",
                )
                .expect("valid metric"),
            ),
            log_flush: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "log_flush_seconds",
                        "From the start of a log flush until its object existed (retries included)",
                    )
                    // Local stores answer in about a millisecond, S3 Standard in 10-100 ms; the
                    // writer gives up on an unavailable store after 5 s but keeps retrying.
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            eventual_lag: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "eventual_lag_seconds",
                        "Time from a write's acceptance by its owner to a follower here serving it",
                    )
                    .buckets(vec![
                        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
                    ]),
                )
                .expect("valid metric"),
            ),
            object_store_requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "object_store_requests_total",
                        "Object-store requests made by this gateway, by kind \
                         (get, head, put, delete, list, copy)",
                    ),
                    &["op"],
                )
                .expect("valid metric"),
            ),
            process: tessera::metrics::process_registry(env!("CARGO_PKG_VERSION")),
            rejected: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "http_rejected_total",
                        "Requests refused for who sent them or how, by reason: unauthorized, \
                         forbidden, reserved_header, request_timeout, overloaded (never by token)",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            registry: r,
        }
    }

    /// Feeds every acknowledged lease keep-alive of `node` into the keep-alive histogram and
    /// the last-round-trip gauge (cluster mode; an embedded node sends none).
    pub fn follow_keepalives(&self, node: &Node) {
        let (histogram, last) = (self.keepalive.clone(), self.keepalive_last.clone());
        node.stats().keepalive.observe_rtt(move |rtt| {
            histogram.observe(rtt.as_secs_f64());
            last.set(rtt.as_secs_f64());
        });
    }

    /// Counts one forwarded request.
    pub fn forwarded(&self) {
        self.forwarded.inc();
    }

    /// Counts one hedged eventual read, answered by `by`: `owner`, `follower` or `none` (both
    /// failed).
    pub fn hedged(&self, by: &str) {
        self.hedged.with_label_values(&[by]).inc();
    }

    /// Renders every metric in the Prometheus text format, refreshing the node's gauges first.
    pub fn render(&self, node: &Node) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards
            .set(i64::from(node.config().storage.shard_count));
        self.shards_open.set(node.owned_shards().len() as i64);
        let stats = node.stats();
        catch_up(&self.storage_errors, stats.storage_errors.load(Relaxed));
        catch_up(&self.shard_reopens, stats.shard_reopens.load(Relaxed));
        catch_up(
            &self.write_admission_waits,
            stats.write_admission_waits.load(Relaxed),
        );
        catch_up(
            &self.ownership_changes,
            stats.ownership_changes.load(Relaxed),
        );
        for (why, n) in stats.keepalive.losses() {
            catch_up(&self.leases_lost.with_label_values(&[why.as_str()]), n);
        }
        let (rejoins, after) = stats.keepalive.rejoins();
        catch_up(&self.lease_rejoins, rejoins);
        catch_up(&self.members_expelled, stats.keepalive.expelled());
        self.lease_rejoin_last.set(after.as_secs_f64());
        for (i, source) in ["strong", "cache", "eventual"].iter().enumerate() {
            catch_up(
                &self.reads.with_label_values(&[source]),
                stats.reads[i].load(Relaxed),
            );
        }
        let cache = node.hot_cache();
        catch_up(&self.cache_hits, cache.stats().hits.load(Relaxed));
        catch_up(&self.cache_misses, cache.stats().misses.load(Relaxed));
        catch_up(&self.cache_evictions, cache.stats().evictions.load(Relaxed));
        self.cache_bytes.set(cache.weighted_bytes() as i64);
        self.cache_entries.set(cache.entries() as i64);
        self.followers_open.set(node.followers_open() as i64);
        catch_up(
            &self.follower_reads_late,
            node.follower_reads_finished_late(),
        );
        for lag in stats.eventual_lag.drain() {
            self.eventual_lag.observe(lag);
        }
        let log = node.log_stats();
        catch_up(&self.log_objects, log.objects.load(Relaxed));
        catch_up(&self.log_writes, log.writes.load(Relaxed));
        catch_up(&self.log_bytes, log.bytes.load(Relaxed));
        catch_up(&self.log_early_flushes, log.early_flushes.load(Relaxed));
        for seconds in log.flush_seconds.drain() {
            self.log_flush.observe(seconds);
        }
        for (op, n) in node.object_store_requests().snapshot() {
            catch_up(&self.object_store_requests.with_label_values(&[op]), n);
        }
        if node.config().cluster.is_clustered() {
            let view = node.view();
            let total = node.config().storage.shard_count as usize;
            self.shards_unowned
                .set(total.saturating_sub(view.owners.len()) as i64);
            let now = Instant::now();
            for (shard, t) in stats.unowned.totals(now).iter().enumerate() {
                let label = tessera::ShardId(shard as u32).to_string();
                catch_up_f64(
                    &self.unowned_seconds.with_label_values(&[&label]),
                    t.as_secs_f64(),
                );
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Advances a counter mirrored from an atomic to the atomic's value.
fn catch_up(counter: &IntCounter, value: u64) {
    let seen = counter.get();
    if value > seen {
        counter.inc_by(value - seen);
    }
}

/// Middleware recording every request.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = req.method().as_str().to_string();
    let bytes_in = content_length(req.headers());
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    if let Some(code) = resp
        .extensions()
        .get::<ErrorCode>()
        .filter(|c| c.is_rejection())
    {
        metrics.rejected.with_label_values(&[code.as_str()]).inc();
    }
    let labels = [route.as_str(), method.as_str(), status.as_str()];
    metrics.requests.with_label_values(&labels).inc();
    metrics
        .latency
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .bytes_in
        .with_label_values(&[&route])
        .inc_by(bytes_in);
    metrics
        .bytes_out
        .with_label_values(&[&route])
        .inc_by(resp.body().size_hint().exact().unwrap_or(0));
    resp
}

/// Advances a float counter mirrored from a running total to that total.
fn catch_up_f64(counter: &Counter, value: f64) {
    let seen = counter.get();
    if value > seen {
        counter.inc_by(value - seen);
    }
}

fn content_length(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
