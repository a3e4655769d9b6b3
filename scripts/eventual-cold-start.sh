#!/usr/bin/env bash
# Eventual reads on a gateway whose followers are cold: how long until they are fast, and how
# many reads reach the owner meanwhile (hedging). Prints a per-second timeline of the reading
# gateway (followers open, reads by source, hedged reads by whose answer won, object-store GETs
# and HEADs)
# and the load generator's result.
#
#   scripts/eventual-cold-start.sh
#
# Starts (loopback, temp dir; all stopped on exit) a coordination etcd, s3s-fs (objects on
# tmpfs), 3 gateways (64 shards) and a compactor; preloads KEYS keys; writes with ycsb-b at
# concurrency 256 for WRITE_SECS (so followers have WAL to replay), then reads with
# get-eventual at concurrency READ_CONCURRENCY through the first gateway only, for READ_SECS.
#
# Settings: KEYS (10000) WRITE_SECS (12) READ_SECS (12) READ_CONCURRENCY (1) PORT_BASE (28000)
#   HEDGE_AFTER (5ms: the gateways' reads.follower_hedge_after; shorter makes the owner win
#   more hedges against followers that fetch from the object store)
#   BIN_DIR (see scripts/lib/cluster.sh)
# Needs: etcd, jq, curl; builds the patched s3s-fs once (scripts/lib/s3s-fs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
KEYS=${KEYS:-10000}
WRITE_SECS=${WRITE_SECS:-12}
READ_SECS=${READ_SECS:-12}
READ_CONCURRENCY=${READ_CONCURRENCY:-1}
HEDGE_AFTER=${HEDGE_AFTER:-5ms}
PORT_BASE=${PORT_BASE:-28000}
S3_TMPFS=1
for tool in etcd jq curl; do command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }; done
# shellcheck source=lib/cluster.sh
source scripts/lib/cluster.sh

echo "==> starting Tessera: 3 gateways (64 shards, hedge after $HEDGE_AFTER), a compactor"
printf '[reads]\nfollower_hedge_after = "%s"\n' "$HEDGE_AFTER" >"$RUN/gateway.toml"
start_tessera 3 64 --config "$RUN/gateway.toml"
bench() {
  "$TESSERA" --endpoints "$1" bench --target tessera --keys "$KEYS" --value-size 100 --json "${@:2}"
}
bench "$GW_ENDPOINTS" --route owner --workload put --preload --concurrency 64 --ops 1 --warmup 0s >/dev/null
echo "==> ycsb-b at concurrency 256 for ${WRITE_SECS}s"
bench "$GW_ENDPOINTS" --route owner --workload ycsb-b --concurrency 256 --duration "${WRITE_SECS}s" \
  --warmup 0s | jq -c '{workload, ops_per_sec}'

reader=http://127.0.0.1:$(port 41)
sample() { # t: one line of the reading gateway's counters
  curl -s "$reader/metrics" | awk -v t="$1" '
    /^tessera_followers_open / { f = $2 }
    /^tessera_reads_total\{source="eventual"\}/ { e = $2 }
    /^tessera_reads_total\{source="(strong|cache)"\}/ { o += $2 }
    /^tessera_eventual_hedged_total\{answered_by="owner"\}/ { ho = $2 }
    /^tessera_eventual_hedged_total\{answered_by="follower"\}/ { hf = $2 }
    /^tessera_object_store_requests_total\{op="get"\}/ { g = $2 }
    /^tessera_object_store_requests_total\{op="head"\}/ { h = $2 }
    END { printf "%4s %9s %10s %10s %9s %9s %8s %8s\n", t, f, e, o, ho + 0, hf + 0, g, h }'
}
echo "==> get-eventual at concurrency $READ_CONCURRENCY on gw1 for ${READ_SECS}s; gw1's counters (cumulative):"
printf "%4s %9s %10s %10s %9s %9s %8s %8s\n" "s" "followers" "eventual" "own-shard" \
  "hedged:o" "hedged:f" "GETs" "HEADs"
sample 0
( for t in $(seq 1 $((READ_SECS + 2))); do sleep 1; sample "$t"; done ) &
timeline=$!
bench "$reader" --route any --workload get-eventual --concurrency "$READ_CONCURRENCY" \
  --duration "${READ_SECS}s" --warmup 0s >"$RUN/result.json"
wait "$timeline"
jq -c '{workload, concurrency, ops_per_sec, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, errors}' "$RUN/result.json"
