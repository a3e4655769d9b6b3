#!/usr/bin/env bash
# Embedded mode on a directory store: durable put, one build or an A/B of two (~15 s a run).
#
#   scripts/bench.sh embedded                                  # BIN_DIR (or a fresh build)
#   BIN_DIRS="saved-before saved-after" scripts/bench.sh embedded   # A/B, alternated per round
#
# Each run starts one `tessera-gateway --listen 127.0.0.1:PORT --store DIR` (embedded: every
# shard, a directory store with fsync on, a fresh directory each run), runs `tessera bench
# --workload put` against it for BENCH_SECS after 2 s of warm-up, and stops it. Prints a line
# per run and writes OUT: ops/s, p50/p99 latency, object-store PUTs per 1,000 writes.
# Settings: BIN_DIRS (BIN_DIR) ROUNDS (2) CONCURRENCY (64) BENCH_SECS (10) KEYS (10000)
#   PORT_BASE (27000) OUT (docs/bench/embedded.md)
# Needs: jq.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
setting BIN_DIRS ""
setting ROUNDS 2
setting CONCURRENCY 64
setting BENCH_SECS 10
setting KEYS 10000
PORT_BASE=${PORT_BASE:-27000}
OUT=${OUT:-docs/bench/embedded.md}
need jq
# With BIN_DIRS, no build: binaries.sh takes BIN_DIR as given.
[ -z "$BIN_DIRS" ] || BIN_DIR=${BIN_DIRS%% *}
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh
[ -n "$BIN_DIRS" ] || BIN_DIRS=$BIN_DIR

rows=()
run=0
for round in $(seq 1 "$ROUNDS"); do
  for dir in $BIN_DIRS; do
    run=$((run + 1))
    start "gateway$run" "$dir/tessera-gateway" --listen "127.0.0.1:$(port "$run")" \
      --store "$RUN/data$run" --log warn
    wait_port "$(port "$run")"
    json=$("$dir/tessera" --endpoints "http://127.0.0.1:$(port "$run")" bench --workload put \
      --concurrency "$CONCURRENCY" --keys "$KEYS" --duration "${BENCH_SECS}s" --warmup 2s --json)
    kill -TERM "$(pid_of "gateway$run")"
    row=$(jq -r --arg dir "$dir" --arg round "$round" \
      '"| \($dir) | \($round) | \(.ops_per_sec | round) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.object_store.puts_per_1k_ops * 10 | round / 10) | \(.errors) |"' \
      <<<"$json")
    echo "$row"
    rows+=("$row")
  done
done

{
  cat <<EOT
# Embedded mode on a directory store

Produced by \`$CMD\` ($(utc_now), commit \`$(commit_desc)\`, load average before start
$LOAD_BEFORE, $(nproc) cores shared by client and server). Each run: one embedded
\`tessera-gateway\` on a fresh directory store (fsync on), \`tessera bench --workload put\` at
concurrency $CONCURRENCY over $KEYS keys, $BENCH_SECS s after 2 s of warm-up; builds alternated
per round.

| build | round | ops/s | p50 ms | p99 ms | object-store PUTs per 1k writes | errors |
|---|---:|---:|---:|---:|---:|---:|
EOT
  printf '%s\n' "${rows[@]}"
} >"$OUT"
echo "wrote $OUT"
