#!/usr/bin/env bash
# Eventual reads on one gateway with cold followers right after heavy writes (~1 min; printed).
#
# How long until the cold followers are fast, and how many reads reach the owner meanwhile
# (hedging). Prints a per-second timeline of the reading gateway (followers open, reads by
# source, hedged reads by whose answer won, object-store GETs and HEADs) and the load
# generator's result.
#
#   scripts/bench.sh eventual-cold-start
#
# Starts (loopback, temp dir; all stopped on exit) a coordination etcd, s3s-fs (objects on
# tmpfs), 3 gateways (64 shards) and a compactor; preloads KEYS keys; writes with ycsb-b at
# concurrency 256 for WRITE_SECS (so followers have WAL to replay), then reads with
# get-eventual at concurrency READ_CONCURRENCY through the first gateway only, for READ_SECS.
#
# Settings: KEYS (10000) WRITE_SECS (12) READ_SECS (12) READ_CONCURRENCY (1) PORT_BASE (28000)
#   HEDGE_AFTER (5ms: the gateways' reads.follower_hedge_after; shorter makes the owner win
#   more hedges against followers that fetch from the object store)
#   BIN_DIR, TESSERA_S3S_FS (scripts/bench.sh)
# Needs: etcd, jq, curl.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
KEYS=${KEYS:-10000}
WRITE_SECS=${WRITE_SECS:-12}
READ_SECS=${READ_SECS:-12}
READ_CONCURRENCY=${READ_CONCURRENCY:-1}
HEDGE_AFTER=${HEDGE_AFTER:-5ms}
PORT_BASE=${PORT_BASE:-28000}
S3_TMPFS=1
need etcd jq curl
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

echo "==> starting Tessera: 3 gateways (64 shards, hedge after $HEDGE_AFTER), a compactor"
printf '[reads]\nfollower_hedge_after = "%s"\n' "$HEDGE_AFTER" >"$RUN/gateway.toml"
start_tessera 3 64 --config "$RUN/gateway.toml"
bench() {
  "$TESSERA" --endpoints "$1" bench --target tessera --keys "$KEYS" --value-size 100 --json "${@:2}"
}
preload "$GW_ENDPOINTS" --keys "$KEYS" --value-size 100 --route owner
echo "==> ycsb-b at concurrency 256 for ${WRITE_SECS}s"
bench "$GW_ENDPOINTS" --route owner --workload ycsb-b --concurrency 256 --duration "${WRITE_SECS}s" \
  --warmup 0s | jq -c '{workload, ops_per_sec}'

reader=${GW_URLS[0]}
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
