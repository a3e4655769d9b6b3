# Shared by the benchmark scripts (source it): process handling (procs.sh), release binaries,
# and a local Tessera cluster on loopback ports.
#
# Needs PORT_BASE set before sourcing. Defines what procs.sh does, and GATEWAY, S3S_FS,
# COMPACTOR, TESSERA, start_tessera.
# BIN_DIR: unset = build and use target/release; set = use the binaries there (A/B runs).
# S3_TMPFS=1: start_tessera keeps the S3 server's objects on /dev/shm instead of in RUN.
# GATEWAY_LOG: the gateways' log filter (default warn), e.g. "warn,gateway=debug".

# shellcheck source=procs.sh
source scripts/lib/procs.sh

if [ -z "${BIN_DIR:-}" ]; then
  echo "==> building (release)"
  cargo build --release --quiet -p gateway -p compactor -p tessera-cli
fi
BIN_DIR=${BIN_DIR:-target/release}
# shellcheck source=s3s-fs.sh
source scripts/lib/s3s-fs.sh
GATEWAY=$BIN_DIR/tessera-gateway
COMPACTOR=$BIN_DIR/tessera-compactor
TESSERA=$BIN_DIR/tessera

# start_tessera N SHARDS [gateway args...]: a coordination etcd (port 20, peer 21), s3s-fs
# (port 30), N gateways (ports 41..) in cluster mode and one compactor daemon (metrics on port
# 35); returns once every gateway sees every shard owned by one of the N members. Sets
# GW_ENDPOINTS.
start_tessera() {
  local n=$1 shards=$2; shift 2
  local coord=http://127.0.0.1:$(port 20) coord_peer=http://127.0.0.1:$(port 21)
  start coord-etcd etcd --name coord --data-dir "$RUN/coord-etcd" \
    --listen-client-urls "$coord" --advertise-client-urls "$coord" \
    --listen-peer-urls "$coord_peer" --initial-advertise-peer-urls "$coord_peer" \
    --initial-cluster "coord=$coord_peer"
  local s3_data=$RUN/s3
  if [ "${S3_TMPFS:-0}" = 1 ]; then
    S3_TMPFS_DIR=$(mktemp -d -p /dev/shm tessera-s3.XXXXXX)  # removed by cleanup
    s3_data=$S3_TMPFS_DIR
  fi
  mkdir -p "$s3_data/tessera"
  start s3 "$S3S_FS" --host 127.0.0.1 --port "$(port 30)" --access-key devkey --secret-key devsecret "$s3_data"
  wait_port "$(port 20)"; wait_port "$(port 30)"
  export AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1
  local s3=(--store s3://tessera/bench --s3-endpoint "http://127.0.0.1:$(port 30)" --etcd "$coord" --cluster bench)
  GW_ENDPOINTS=""
  for i in $(seq 1 "$n"); do
    GW_ENDPOINTS+="${GW_ENDPOINTS:+,}http://127.0.0.1:$(port $((40 + i)))"
    start "gw$i" "$GATEWAY" --listen "127.0.0.1:$(port $((40 + i)))" --shards "$shards" \
      "${s3[@]}" --node-id "gw$i" --log "${GATEWAY_LOG:-warn}" "$@"
  done
  for i in $(seq 1 "$n"); do wait_port "$(port $((40 + i)))"; done
  # In cluster mode gateways do not compact; a compactor daemon does (as in production).
  start compactor "$COMPACTOR" "${s3[@]}" --node-id c1 --log warn \
    --metrics-listen "127.0.0.1:$(port 35)"
  echo "==> waiting until every shard has an owner and the members agree"
  local owned=0
  for _ in $(seq 1 300); do
    owned=0
    for i in $(seq 1 "$n"); do
      view=$("$TESSERA" --endpoints "http://127.0.0.1:$(port $((40 + i)))" --output json cluster 2>/dev/null) || view='{}'
      s=$(jq '[(.shards // [])[] | select(.owner != null)] | length' <<<"$view")
      m=$(jq '(.members // []) | length' <<<"$view")
      [ "$s" = "$shards" ] && [ "$m" = "$n" ] && owned=$((owned + 1))
    done
    [ "$owned" = "$n" ] && break
    sleep 0.2
  done
  if [ "$owned" != "$n" ]; then
    echo "the Tessera cluster did not settle ($owned of $n gateways agree; last view: $s of $shards shards owned, $m members); gateway views and logs:" >&2
    for i in $(seq 1 "$n"); do "$TESSERA" --endpoints "http://127.0.0.1:$(port $((40 + i)))" cluster 2>&1 | head -n 5 >&2 || true; done
    tail -n 20 "$RUN"/gw*.log >&2
    exit 1
  fi
}
