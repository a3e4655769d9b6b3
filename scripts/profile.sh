#!/usr/bin/env bash
# Where one workload's time goes: runs it against a local cluster (3 gateways, a compactor
# daemon, s3s-fs, a coordination etcd; release builds) and reports the client's figures, the CPU
# each process used (% of one core) and the object-store request rates of the gateways and the
# compactor while it ran. With PERF set, also samples those processes with `perf record` and
# prints the hottest symbols. Used for the profiles in docs/bench/vs-etcd.md.
#
#   scripts/profile.sh                          # put, c=64, 20 s
#   WORKLOAD=idle SECS=30 scripts/profile.sh    # no load: idle request rates only
#   PERF="s3 gw1" scripts/profile.sh            # perf profile of the S3 server and gateway 1
#
# Settings (environment): WORKLOAD (put; any `tessera bench` workload, or idle), C (64), SECS (20),
#   SHARDS (64), S3_TMPFS (0: objects in the run directory on disk; 1: on /dev/shm),
#   S3_STOCK (0; 1: a stock s3s-fs from PATH, whose LIST walks the whole bucket and whose
#   conditional writes are not atomic),
#   PERF (process names among s3 gw1 gw2 gw3 compactor), PORT_BASE (27000), BIN_DIR.
#   The compactor takes TESSERA_POLL_INTERVAL from the environment, like any TESSERA_* setting.
# Needs: etcd, jq, curl, bc; perf (Debian's linux-perf) for PERF.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
PORT_BASE=${PORT_BASE:-27000}
WORKLOAD=${WORKLOAD:-put}
C=${C:-64}
SECS=${SECS:-20}
SHARDS=${SHARDS:-64}
PERF=${PERF:-}

# shellcheck source=lib/cluster.sh
source scripts/lib/cluster.sh
[ "${S3_STOCK:-0}" = 1 ] && S3S_FS=s3s-fs
start_tessera 3 "$SHARDS"
bench=("$TESSERA" --endpoints "$GW_ENDPOINTS" bench --keys 10000 --value-size 100 --route owner --json)
"${bench[@]}" --workload put --preload --concurrency 64 --ops 1 --warmup 0s >/dev/null

# Sum of every sample of metric $2 at URL $1.
total() { curl -s "$1/metrics" | awk -v m="$2" '$1 ~ "^"m {s += $2} END {print s + 0}'; }
gateway_requests() {
  local s=0
  for i in 1 2 3; do
    s=$((s + $(total "http://127.0.0.1:$(port $((40 + i)))" tessera_object_store_requests_total)))
  done
  echo "$s"
}
compactor_url=http://127.0.0.1:$(port 35)
names=(s3 gw1 gw2 gw3 compactor coord-etcd)
declare -A ticks
for n in "${names[@]}"; do ticks[$n]=$(cpu_ticks "$(pid_of "$n")"); done
gw0=$(gateway_requests)
comp0=$(total "$compactor_url" tessera_compactor_object_store_requests_total)
perf_job=""
if [ -n "$PERF" ]; then
  pids=""
  for n in $PERF; do pids+="${pids:+,}$(pid_of "$n")"; done
  # The middle 10 s of the run (or of the idle period).
  (sleep $((SECS / 2 - 5 > 0 ? SECS / 2 - 5 : 0)); perf record -q -F 299 -g -o "$RUN/perf.data" -p "$pids" -- sleep 10 >/dev/null 2>&1) &
  perf_job=$!
fi
started=$(date +%s.%N)
if [ "$WORKLOAD" = idle ]; then
  sleep "$SECS"
else
  "${bench[@]}" --workload "$WORKLOAD" --concurrency "$C" --duration "${SECS}s" --warmup 2s >"$RUN/result.json"
fi
wall=$(echo "$(date +%s.%N) - $started" | bc -l)
rate() { echo "scale=1; ($1) / $wall" | bc -l; }
echo "==> $WORKLOAD, c=$C, ${SECS} s, $SHARDS shards, S3 objects $([ "${S3_TMPFS:-0}" = 1 ] && echo "on tmpfs" || echo "on disk")"
[ "$WORKLOAD" = idle ] || jq -r '"client: \(.ops_per_sec | floor) ops/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, errors \(.errors), object-store PUTs per 1k ops \(.object_store.puts_per_1k_ops | floor)"' "$RUN/result.json"
echo "object-store requests/s: gateways $(rate "$(gateway_requests) - $gw0"), compactor $(rate "$(total "$compactor_url" tessera_compactor_object_store_requests_total) - $comp0")"
printf 'CPU, %% of one core:'
for n in "${names[@]}"; do printf ' %s %s' "$n" "$(echo "scale=0; 100 * ($(cpu_ticks "$(pid_of "$n")") - ${ticks[$n]}) / $(getconf CLK_TCK) / $wall" | bc -l)"; done
echo
if [ -n "$perf_job" ]; then
  wait "$perf_job"
  echo "==> perf: share of samples by binary, then the 25 hottest symbols ($PERF)"
  perf report -i "$RUN/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -n 6
  perf report -i "$RUN/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -n 25 | cut -c1-120
fi
