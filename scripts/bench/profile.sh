#!/usr/bin/env bash
# Where one workload's time goes: CPU per process, object-store request rates, perf (~1 min).
#
# Runs one workload against a local cluster (3 gateways, a compactor daemon, s3s-fs, a
# coordination etcd; release builds) and prints the client's figures, the CPU each process used
# (% of one core; the load generator's too) and the object-store request rates of the gateways
# and the compactor while it ran, and the gateways' commit-log batching (writes per object,
# early flushes, mean flush time). With PERF set, also samples those processes with
# `perf record` and prints the hottest symbols. Used for the profiles in docs/bench/.
#
#   scripts/bench.sh profile                          # put, c=64, 20 s
#   WORKLOAD=idle SECS=30 scripts/bench.sh profile    # no load: idle request rates only
#   PERF="s3 gw1" scripts/bench.sh profile            # perf profile of the S3 server and gateway 1
#
# Settings (environment): WORKLOAD (put; any `tessera bench` workload, or idle), C (64), SECS (20),
#   SHARDS (64), S3_TMPFS (0: objects in the run directory on disk; 1: on /dev/shm),
#   S3_STOCK (0; 1: a stock s3s-fs from PATH, whose LIST walks the whole bucket and whose
#   conditional writes are not atomic),
#   PERF (process names among s3 gw1 gw2 gw3 compactor), PORT_BASE (27000),
#   BIN_DIR, TESSERA_S3S_FS (scripts/bench.sh).
#   The compactor takes TESSERA_POLL_INTERVAL from the environment, like any TESSERA_* setting.
# Needs: etcd, jq, curl; perf (Debian's linux-perf) for PERF.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
PORT_BASE=${PORT_BASE:-27000}
WORKLOAD=${WORKLOAD:-put}
C=${C:-64}
SECS=${SECS:-20}
SHARDS=${SHARDS:-64}
PERF=${PERF:-}
need etcd jq curl
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh
[ "${S3_STOCK:-0}" = 1 ] && S3S_FS=s3s-fs
start_tessera 3 "$SHARDS"
bench=("$TESSERA" --endpoints "$GW_ENDPOINTS" bench --keys 10000 --value-size 100 --route owner --json)
preload "$GW_ENDPOINTS" --keys 10000 --value-size 100 --route owner

compactor_url=http://127.0.0.1:$(port 35)
names=(s3 gw1 gw2 gw3 compactor coord-etcd)
declare -A ticks
for n in "${names[@]}"; do ticks[$n]=$(cpu_ticks "$(pid_of "$n")"); done
gw0=$(gateways_sum tessera_object_store_requests_total)
# The gateways' commit logs: objects, writes, early flushes, and the flushes' summed seconds.
log_figures() {
  local url
  for url in "${GW_URLS[@]}"; do curl -s "$url/metrics"; done | awk '
    /^tessera_log_objects_total / { o += $2 } /^tessera_log_writes_total / { w += $2 }
    /^tessera_log_early_flushes_total / { e += $2 } /^tessera_log_flush_seconds_sum / { s += $2 }
    END { printf "%d %d %d %.6f", o, w, e, s }'
}
log0=$(log_figures)
comp0=$(metric_sum "$compactor_url" tessera_compactor_object_store_requests_total)
perf_job=""
if [ -n "$PERF" ]; then
  pids=""
  for n in $PERF; do pids+="${pids:+,}$(pid_of "$n")"; done
  # The middle 10 s of the run (or of the idle period).
  (sleep $((SECS / 2 - 5 > 0 ? SECS / 2 - 5 : 0)); perf record -q -F 299 -g -o "$RUN/perf.data" -p "$pids" -- sleep 10 >/dev/null 2>&1) &
  perf_job=$!
fi
started=$(now)
if [ "$WORKLOAD" = idle ]; then
  sleep "$SECS"
else
  /usr/bin/time -o "$RUN/client.time" -f "%U %S" \
    "${bench[@]}" --workload "$WORKLOAD" --concurrency "$C" --duration "${SECS}s" --warmup 2s >"$RUN/result.json"
fi
wall=$(since "$started")
rate() { awk -v n="$1" -v t="$wall" 'BEGIN { printf "%.1f", n / t }'; }
echo "==> $WORKLOAD, c=$C, ${SECS} s, $SHARDS shards, S3 objects $([ "${S3_TMPFS:-0}" = 1 ] && echo "on tmpfs" || echo "on disk")"
[ "$WORKLOAD" = idle ] || jq -r '"client: \(.ops_per_sec | floor) ops/s, p50 \(.latency_ms.p50) ms, p99 \(.latency_ms.p99) ms, errors \(.errors), object-store PUTs per 1k ops \(.object_store.puts_per_1k_ops | floor)"' "$RUN/result.json"
echo "object-store requests/s: gateways $(rate $(($(gateways_sum tessera_object_store_requests_total) - gw0))), compactor $(rate $(($(metric_sum "$compactor_url" tessera_compactor_object_store_requests_total) - comp0)))"
awk -v a="$log0" -v b="$(log_figures)" 'BEGIN { split(a, x, " "); split(b, y, " "); o = y[1] - x[1]
  if (o > 0) printf "commit logs: %.1f writes per object, %d%% of flushes early, mean flush %.2f ms\n",
    (y[2] - x[2]) / o, 100 * (y[3] - x[3]) / o, 1000 * (y[4] - x[4]) / o }'
printf 'CPU, %% of one core:'
for n in "${names[@]}"; do printf ' %s %s' "$n" "$(cpu_pct "${ticks[$n]}" "$(cpu_ticks "$(pid_of "$n")")" "$wall")"; done
# The load generator, over its whole run (warm-up included).
[ "$WORKLOAD" = idle ] || awk -v t="$wall" '{ printf " client %d", ($1 + $2) / (t + 2) * 100 }' "$RUN/client.time"
echo
if [ -n "$perf_job" ]; then
  wait "$perf_job"
  echo "==> perf: share of samples by binary, then the 25 hottest symbols ($PERF)"
  perf report -i "$RUN/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -n 6
  perf report -i "$RUN/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -n 25 | cut -c1-120
fi
