#!/usr/bin/env bash
# What followers cost a fleet: eventual reads spread over every gateway of a cluster larger
# than `reads.follower_gateways`, then an idle period with the followers still open. Prints
# the load generator's result, the followers open on all gateways, and the gateways'
# object-store requests per second while idle (what the open followers cost).
#
#   FOLLOWER_GATEWAYS=0 scripts/bench-followers.sh   # every gateway keeps its own followers
#   FOLLOWER_GATEWAYS=2 scripts/bench-followers.sh   # at most 2 per shard; others forward
#
# Starts (loopback, temp dir; all stopped on exit) a coordination etcd, s3s-fs (objects on
# tmpfs), GATEWAYS gateways (64 shards) and a compactor; preloads KEYS keys; runs get-eventual
# at concurrency C for READ_SECS, each task's reads going to gateway (task mod GATEWAYS);
# then measures IDLE_SECS without load.
#
# Settings: GATEWAYS (6) FOLLOWER_GATEWAYS (3, the default of reads.follower_gateways)
#   KEYS (10000) C (32) READ_SECS (15) IDLE_SECS (10) PORT_BASE (29000)
#   BIN_DIR (see scripts/lib/cluster.sh)
# Needs: etcd, jq, curl; builds the patched s3s-fs once (scripts/lib/s3s-fs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
GATEWAYS=${GATEWAYS:-6}
FOLLOWER_GATEWAYS=${FOLLOWER_GATEWAYS:-3}
KEYS=${KEYS:-10000}
C=${C:-32}
READ_SECS=${READ_SECS:-15}
IDLE_SECS=${IDLE_SECS:-10}
PORT_BASE=${PORT_BASE:-29000}
S3_TMPFS=1
for tool in etcd jq curl; do command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }; done
# shellcheck source=lib/cluster.sh
source scripts/lib/cluster.sh

printf '[reads]\nfollower_gateways = %s\n' "$FOLLOWER_GATEWAYS" >"$RUN/gateway.toml"
echo "==> starting Tessera: $GATEWAYS gateways (64 shards, reads.follower_gateways = $FOLLOWER_GATEWAYS), a compactor"
start_tessera "$GATEWAYS" 64 --config "$RUN/gateway.toml"
"$TESSERA" --endpoints "$GW_ENDPOINTS" bench --keys "$KEYS" --value-size 100 --route owner \
  --workload put --preload --concurrency 64 --ops 1 --warmup 0s >/dev/null

# Sum over the gateways of every sample of metric $1.
gateways_total() {
  local s=0
  for i in $(seq 1 "$GATEWAYS"); do
    s=$(curl -s "http://127.0.0.1:$(port $((40 + i)))/metrics" |
      awk -v m="$1" -v s="$s" '$1 ~ "^"m {s += $2} END {print s}')
  done
  echo "$s"
}
echo "==> get-eventual at concurrency $C over all gateways for ${READ_SECS}s"
"$TESSERA" --endpoints "$GW_ENDPOINTS" bench --keys "$KEYS" --value-size 100 --route owner --json \
  --workload get-eventual --concurrency "$C" --duration "${READ_SECS}s" --warmup 2s >"$RUN/result.json"
jq -c '{workload, concurrency, ops_per_sec, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, errors}' "$RUN/result.json"
echo "followers open (all gateways): $(gateways_total tessera_followers_open)"
echo "==> idle for ${IDLE_SECS}s"
before=$(gateways_total tessera_object_store_requests_total)
sleep "$IDLE_SECS"
after=$(gateways_total tessera_object_store_requests_total)
echo "gateways' object-store requests/s while idle: $(( (after - before) / IDLE_SECS ))"
