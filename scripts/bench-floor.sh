#!/usr/bin/env bash
# A cached Tessera get against the floor: a bare axum handler (gateway/examples/bare_axum.rs)
# on the same machine, same load generator. Writes docs/bench/floor.md.
#
#   scripts/bench-floor.sh
#
# Runs, one after the other and three times each (alternating), `tessera bench --workload get`
# at CONCURRENCY against (a) one embedded gateway whose keys are all in its hot-key cache and
# (b) the bare axum server, and reports the median ops/s of each and their ratio.
# Settings: CONCURRENCY (64) BENCH_SECS (8) KEYS (10000) PORT_BASE (26000) OUT (docs/bench/floor.md)
set -euo pipefail
cd "$(dirname "$0")/.."
CONCURRENCY=${CONCURRENCY:-64}
BENCH_SECS=${BENCH_SECS:-8}
KEYS=${KEYS:-10000}
PORT_BASE=${PORT_BASE:-26000}
OUT=${OUT:-docs/bench/floor.md}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck source=lib/cluster.sh
source scripts/lib/cluster.sh
cargo build --release --quiet -p gateway --example bare_axum
BARE=target/release/examples/bare_axum

start gateway "$GATEWAY" --listen "127.0.0.1:$(port 1)" --store "$RUN/data" --log warn
start bare "$BARE" "127.0.0.1:$(port 2)"
wait_port "$(port 1)"; wait_port "$(port 2)"
"$TESSERA" --endpoints "http://127.0.0.1:$(port 1)" bench --workload put --preload --keys "$KEYS" --ops 1 --warmup 0s >/dev/null

run() { # port
  "$TESSERA" --endpoints "http://127.0.0.1:$1" bench --workload get --keys "$KEYS" \
    --concurrency "$CONCURRENCY" --duration "${BENCH_SECS}s" --warmup 2s --json | jq '.ops_per_sec | round'
}
T=() B=()
for _ in 1 2 3; do T+=("$(run "$(port 1)")"); B+=("$(run "$(port 2)")"); done
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
t=$(median "${T[@]}") b=$(median "${B[@]}")
ratio=$(awk -v t="$t" -v b="$b" 'BEGIN { printf "%.0f%%", 100 * t / b }')
echo "cached get: $t ops/s (${T[*]}); bare axum: $b ops/s (${B[*]}); ratio $ratio"
cat >"$OUT" <<EOT
# Cached get vs a bare axum handler

Produced by \`scripts/bench-floor.sh\` ($(date -u +"%Y-%m-%d %H:%M UTC"), commit
\`$(git rev-parse --short HEAD)\`, load average before start $load_before, $(nproc) cores shared by
client and server). \`tessera bench --workload get\` at concurrency $CONCURRENCY over pooled
keep-alive connections, $BENCH_SECS s after 2 s warm-up, three runs each, alternating; medians.

| server | ops/s (median) | runs |
|---|---:|---|
| Tessera embedded gateway, every key in its hot-key cache ($KEYS keys) | $t | ${T[*]} |
| bare axum handler returning a fixed value (\`gateway/examples/bare_axum.rs\`) | $b | ${B[*]} |

Cached Tessera get = **$ratio** of the bare handler. The gap is what a read pays beyond HTTP:
key decoding and validation, shard routing, the lease check, the cache lookup (moka), metrics
and the response headers. Caveat: the load generator shares the two cores, and at these
rates it is likely the limit for both servers, so a ratio near 100% means the gateway's
extra work is not what bounds throughput here, not that it is free.
EOT
echo "==> wrote $OUT"
