#!/usr/bin/env bash
# A cached Tessera get against the floor, a bare axum handler, same load generator (~2 min).
#
# The floor is gateway/examples/bare_axum.rs on the same machine. Writes OUT.
#
#   scripts/bench.sh floor
#
# Runs, one after the other and three times each (alternating), `tessera bench --workload get`
# at CONCURRENCY against (a) one embedded gateway whose keys are all in its hot-key cache and
# (b) the bare axum server, and reports the median ops/s of each and their ratio.
# Settings: CONCURRENCY (64) BENCH_SECS (8) KEYS (10000) PORT_BASE (26000) OUT (docs/bench/floor.md)
#   BIN_DIR (scripts/bench.sh); BARE_AXUM (default $BIN_DIR/examples/bare_axum if there, else
#   built with cargo).
# Needs: jq.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
CONCURRENCY=${CONCURRENCY:-64}
BENCH_SECS=${BENCH_SECS:-8}
KEYS=${KEYS:-10000}
PORT_BASE=${PORT_BASE:-26000}
OUT=${OUT:-docs/bench/floor.md}
need jq
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh
BARE=${BARE_AXUM:-$BIN_DIR/examples/bare_axum}
if [ ! -x "$BARE" ]; then
  cargo build --release --quiet -p gateway --example bare_axum
  BARE=target/release/examples/bare_axum
fi

start gateway "$GATEWAY" --listen "127.0.0.1:$(port 1)" --store "$RUN/data" --log warn
start bare "$BARE" "127.0.0.1:$(port 2)"
wait_port "$(port 1)"; wait_port "$(port 2)"
preload "http://127.0.0.1:$(port 1)" --keys "$KEYS"

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

Produced by \`scripts/bench.sh floor\` ($(utc_now), commit
\`$(commit_desc)\`, load average before start $LOAD_BEFORE, $(nproc) cores shared by
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
