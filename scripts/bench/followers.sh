#!/usr/bin/env bash
# What followers cost a fleet: eventual reads over 6 gateways, then idle (~1 min; printed).
#
# Eventual reads spread over every gateway of a cluster larger than `reads.follower_gateways`,
# then an idle period with the followers still open. Prints the load generator's result, the
# followers open on all gateways, and the gateways' object-store requests per second while idle
# (what the open followers cost).
#
#   FOLLOWER_GATEWAYS=0 scripts/bench.sh followers   # every gateway keeps its own followers
#   FOLLOWER_GATEWAYS=2 scripts/bench.sh followers   # at most 2 per shard; others forward
#
# Starts (loopback, temp dir; all stopped on exit) a coordination etcd, s3s-fs (objects on
# tmpfs), GATEWAYS gateways (64 shards) and a compactor; preloads KEYS keys; runs get-eventual
# at concurrency C for READ_SECS, each task's reads going to gateway (task mod GATEWAYS);
# then measures IDLE_SECS without load.
#
# Settings: GATEWAYS (6) FOLLOWER_GATEWAYS (3, the default of reads.follower_gateways)
#   KEYS (10000) C (32) READ_SECS (15) IDLE_SECS (10) PORT_BASE (29000)
#   BIN_DIR, TESSERA_S3S_FS (scripts/bench.sh)
# Needs: etcd, jq, curl.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
GATEWAYS=${GATEWAYS:-6}
FOLLOWER_GATEWAYS=${FOLLOWER_GATEWAYS:-3}
KEYS=${KEYS:-10000}
C=${C:-32}
READ_SECS=${READ_SECS:-15}
IDLE_SECS=${IDLE_SECS:-10}
PORT_BASE=${PORT_BASE:-29000}
S3_TMPFS=1
need etcd jq curl
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

printf '[reads]\nfollower_gateways = %s\n' "$FOLLOWER_GATEWAYS" >"$RUN/gateway.toml"
echo "==> starting Tessera: $GATEWAYS gateways (64 shards, reads.follower_gateways = $FOLLOWER_GATEWAYS), a compactor"
start_tessera "$GATEWAYS" 64 --config "$RUN/gateway.toml"
preload "$GW_ENDPOINTS" --keys "$KEYS" --value-size 100 --route owner

echo "==> get-eventual at concurrency $C over all gateways for ${READ_SECS}s"
"$TESSERA" --endpoints "$GW_ENDPOINTS" bench --keys "$KEYS" --value-size 100 --route owner --json \
  --workload get-eventual --concurrency "$C" --duration "${READ_SECS}s" --warmup 2s >"$RUN/result.json"
jq -c '{workload, concurrency, ops_per_sec, p50_ms: .latency_ms.p50, p99_ms: .latency_ms.p99, errors}' "$RUN/result.json"
echo "followers open (all gateways): $(gateways_sum tessera_followers_open)"
echo "==> idle for ${IDLE_SECS}s"
before=$(gateways_sum tessera_object_store_requests_total)
sleep "$IDLE_SECS"
after=$(gateways_sum tessera_object_store_requests_total)
echo "gateways' object-store requests/s while idle: $(( (after - before) / IDLE_SECS ))"
