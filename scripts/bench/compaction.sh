#!/usr/bin/env bash
# Put throughput and gateway CPU with compaction in-process vs offloaded to a compactor (~2 min).
#
#   scripts/bench.sh compaction
#
# Same object store (s3s-fs), same shards and data, one gateway, a write-heavy workload with
# small memtables so L0 SSTs are written and compacted during the run:
#   in-process: the embedded single-gateway mode (SlateDB's compactor and GC inside it);
#   offloaded:  cluster mode (one gateway, a coordination etcd) plus a tessera-compactor daemon.
# Reports put throughput and latency, and the CPU the gateway (and compactor) used; writes OUT.
#
# Settings: SHARDS (4) VALUE_SIZE (4096) KEYS (100000) CONCURRENCY (64) BENCH_SECS (40)
#   PORT_BASE (25000) OUT (docs/bench/compaction.md) BIN_DIR, TESSERA_S3S_FS (scripts/bench.sh)
# Needs: etcd, jq.
# shellcheck disable=SC2153 # the settings are assigned by `setting`
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
setting SHARDS 4
setting VALUE_SIZE 4096
setting KEYS 100000
setting CONCURRENCY 64
setting BENCH_SECS 40
PORT_BASE=${PORT_BASE:-25000}
OUT=${OUT:-docs/bench/compaction.md}
need etcd jq
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

# Small memtables: an L0 SST every 4 MiB per shard, so compaction runs during the run.
CONFIG=$RUN/gateway.toml
printf '[storage]\nl0_sst_size_bytes = 4194304\nmax_unflushed_bytes = 67108864\n' >"$CONFIG"

ROWS=$RUN/rows.md
: >"$ROWS"
measure() { # label, endpoint, compactor pid or "", gateway pid
  local label=$1 endpoint=$2 cpid=$3 gpid=$4
  local g0 c0=0 t0 secs r
  g0=$(cpu_ticks "$gpid"); [ -z "$cpid" ] || c0=$(cpu_ticks "$cpid")
  t0=$(now)
  r=$("$TESSERA" --endpoints "$endpoint" bench --workload put --keys "$KEYS" \
    --value-size "$VALUE_SIZE" --concurrency "$CONCURRENCY" --duration "${BENCH_SECS}s" \
    --warmup 2s --json)
  secs=$(since "$t0")
  local g c="-"
  g=$(cpu_pct "$g0" "$(cpu_ticks "$gpid")" "$secs")%
  [ -z "$cpid" ] || c=$(cpu_pct "$c0" "$(cpu_ticks "$cpid")" "$secs")%
  jq -r --arg l "$label" --arg g "$g" --arg c "$c" \
    '"| \($l) | \(.ops_per_sec | round) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.latency_ms.max) | \($g) | \($c) | \(.errors) |"' <<<"$r" | tee -a "$ROWS"
}

echo "==> in-process: embedded gateway"
start_s3 s3a 31 "$RUN/s3a"
wait_port "$(port 31)"
start gw-embedded "$GATEWAY" --listen "127.0.0.1:$(port 51)" --shards "$SHARDS" --config "$CONFIG" \
  --store s3://tessera/embedded --s3-endpoint "http://127.0.0.1:$(port 31)" --log warn
wait_port "$(port 51)"
measure "in-process (embedded gateway)" "http://127.0.0.1:$(port 51)" "" "$(pid_of gw-embedded)"
kill -TERM "$(pid_of gw-embedded)" "$(pid_of s3a)"

echo "==> offloaded: cluster-mode gateway + compactor"
start_tessera 1 "$SHARDS" --config "$CONFIG"
measure "offloaded (gateway + tessera-compactor)" "$GW_ENDPOINTS" "$(pid_of compactor)" "$(pid_of gw1)"

{
  cat <<EOT
# Compaction in-process vs offloaded

Produced by \`scripts/bench.sh compaction\`. One gateway, $SHARDS shards on s3s-fs, memtables of
4 MiB so L0 SSTs are written and compacted during the run; put of $VALUE_SIZE-byte values over
$KEYS keys at concurrency $CONCURRENCY for $BENCH_SECS s. Client, gateway, compactor and S3
server share one $(nproc)-core machine: CPU percentages are of one core, and the compactor's
CPU competes with the gateway's here, where on separate machines it would not.

| | |
|---|---|
| load average before start | $LOAD_BEFORE |
| commit | \`$(commit_desc)\` |
| date | $(utc_now) |
| command | \`$CMD\` |

| compaction | put ops/s | p50 ms | p99 ms | max ms | gateway CPU | compactor CPU | errors |
|---|---:|---:|---:|---:|---:|---:|---:|
EOT
  cat "$ROWS"
} >"$OUT"
echo "==> wrote $OUT"
