#!/usr/bin/env bash
# Gateway write throughput with compaction in-process vs offloaded to a compactor.
# Writes docs/bench/compaction.md.
#
#   scripts/bench-compaction.sh
#
# Same object store (s3s-fs), same shards and data, one gateway, a write-heavy workload with
# small memtables so L0 SSTs are written and compacted during the run:
#   in-process: the embedded single-gateway mode (SlateDB's compactor and GC inside it);
#   offloaded:  cluster mode (one gateway, a coordination etcd) plus a tessera-compactor daemon.
# Reports put throughput and latency, and the CPU the gateway (and compactor) used.
#
# Settings: SHARDS (4) VALUE_SIZE (4096) KEYS (100000) CONCURRENCY (64) BENCH_SECS (40)
#   PORT_BASE (25000) OUT (docs/bench/compaction.md) BIN_DIR (see scripts/lib/cluster.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
SETTINGS="SHARDS VALUE_SIZE KEYS CONCURRENCY BENCH_SECS"
cmd="scripts/bench-compaction.sh"
for v in $SETTINGS; do [ -z "${!v+x}" ] || cmd="$v=\"${!v}\" $cmd"; done
SHARDS=${SHARDS:-4}
VALUE_SIZE=${VALUE_SIZE:-4096}
KEYS=${KEYS:-100000}
CONCURRENCY=${CONCURRENCY:-64}
BENCH_SECS=${BENCH_SECS:-40}
PORT_BASE=${PORT_BASE:-25000}
OUT=${OUT:-docs/bench/compaction.md}
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck source=lib/cluster.sh
source scripts/lib/cluster.sh
hz=$(getconf CLK_TCK)

# Small memtables: an L0 SST every 4 MiB per shard, so compaction runs during the run.
CONFIG=$RUN/gateway.toml
printf '[storage]\nl0_sst_size_bytes = 4194304\nmax_unflushed_bytes = 67108864\n' >"$CONFIG"

ROWS=$RUN/rows.md
: >"$ROWS"
measure() { # label, endpoint, compactor pid or ""
  local label=$1 endpoint=$2 cpid=$3 gpid=$4
  local g0 c0=0 t0 t1 r
  g0=$(cpu_ticks "$gpid"); [ -z "$cpid" ] || c0=$(cpu_ticks "$cpid")
  t0=$(date +%s.%N)
  r=$("$TESSERA" --endpoints "$endpoint" bench --workload put --keys "$KEYS" \
    --value-size "$VALUE_SIZE" --concurrency "$CONCURRENCY" --duration "${BENCH_SECS}s" \
    --warmup 2s --json)
  t1=$(date +%s.%N)
  local g c="-"
  g=$(awk -v a="$g0" -v b="$(cpu_ticks "$gpid")" -v hz="$hz" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" 'BEGIN { printf "%d%%", (b - a) / hz / t * 100 }')
  if [ -n "$cpid" ]; then
    c=$(awk -v a="$c0" -v b="$(cpu_ticks "$cpid")" -v hz="$hz" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" 'BEGIN { printf "%d%%", (b - a) / hz / t * 100 }')
  fi
  jq -r --arg l "$label" --arg g "$g" --arg c "$c" \
    '"| \($l) | \(.ops_per_sec | round) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.latency_ms.max) | \($g) | \($c) | \(.errors) |"' <<<"$r" | tee -a "$ROWS"
}

export AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1
echo "==> in-process: embedded gateway"
mkdir -p "$RUN/s3a/tessera"
start s3a "$S3S_FS" --host 127.0.0.1 --port "$(port 31)" --access-key devkey --secret-key devsecret "$RUN/s3a"
wait_port "$(port 31)"
start gw-embedded "$GATEWAY" --listen "127.0.0.1:$(port 51)" --shards "$SHARDS" --config "$CONFIG" \
  --store s3://tessera/embedded --s3-endpoint "http://127.0.0.1:$(port 31)" --log warn
wait_port "$(port 51)"
measure "in-process (embedded gateway)" "http://127.0.0.1:$(port 51)" "" "$(pid_of gw-embedded)"
kill -TERM "$(pid_of gw-embedded)" "$(pid_of s3a)"

echo "==> offloaded: cluster-mode gateway + compactor"
start_tessera 1 "$SHARDS" --config "$CONFIG"
measure "offloaded (gateway + tessera-compactor)" "$GW_ENDPOINTS" "$(pid_of compactor)" "$(pid_of gw1)"

commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src gateway compactor cli scripts Cargo.toml Cargo.lock || commit="$commit (with uncommitted changes)"
{
  cat <<EOT
# Compaction in-process vs offloaded

Produced by \`scripts/bench-compaction.sh\`. One gateway, $SHARDS shards on s3s-fs, memtables of
4 MiB so L0 SSTs are written and compacted during the run; put of $VALUE_SIZE-byte values over
$KEYS keys at concurrency $CONCURRENCY for $BENCH_SECS s. Client, gateway, compactor and S3
server share one $(nproc)-core machine: CPU percentages are of one core, and the compactor's
CPU competes with the gateway's here, where on separate machines it would not.

| | |
|---|---|
| load average before start | $load_before |
| commit | \`$commit\` |
| date | $(date -u +"%Y-%m-%d %H:%M UTC") |
| command | \`$cmd\` |

| compaction | put ops/s | p50 ms | p99 ms | max ms | gateway CPU | compactor CPU | errors |
|---|---:|---:|---:|---:|---:|---:|---:|
EOT
  cat "$ROWS"
} >"$OUT"
echo "==> wrote $OUT"
