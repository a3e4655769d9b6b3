# shellcheck shell=bash
# Local services for the benchmarks (source it after bench.sh): process handling (procs.sh),
# the binaries (binaries.sh), etcd, s3s-fs and a Tessera cluster on loopback ports.
#
# Set PORT_BASE before calling anything (every port is PORT_BASE + a small offset; procs.sh
# says why each benchmark's default lies in 22000-29000).
# S3_TMPFS=1: start_tessera keeps the S3 server's objects on /dev/shm instead of in RUN.
# GATEWAY_LOG: the gateways' log filter (default warn), e.g. "warn,gateway=debug".
# Defines what procs.sh and binaries.sh do, and start_etcd, start_s3, start_tessera (which sets
# GW_URLS and GW_ENDPOINTS), metric_sum, gateways_sum, preload.

# shellcheck source=scripts/lib/procs.sh
source scripts/lib/procs.sh
# shellcheck source=scripts/lib/binaries.sh
source scripts/lib/binaries.sh
export AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1

# start_etcd PROC MEMBER CLIENT PEER [CLUSTER [etcd args...]]: an etcd member on ports CLIENT
# and PEER (offsets), data in $RUN/PROC; CLUSTER is its --initial-cluster (default: itself).
start_etcd() {
  local proc=$1 member=$2 client peer cluster
  client=http://127.0.0.1:$(port "$3") peer=http://127.0.0.1:$(port "$4")
  shift 4
  cluster=${1:-$member=$peer}
  [ $# = 0 ] || shift
  start "$proc" etcd --name "$member" --data-dir "$RUN/$proc" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "$cluster" "$@"
}

start_s3() { # PROC PORT DIR: s3s-fs serving DIR (bucket "tessera") on PORT (an offset)
  s3_server
  mkdir -p "$3/tessera"
  start "$1" "$S3S_FS" --host 127.0.0.1 --port "$(port "$2")" --access-key devkey --secret-key devsecret "$3"
}

# start_tessera N SHARDS [gateway args...]: a coordination etcd (port 20, peer 21), s3s-fs
# (port 30), N gateways (ports 41..) in cluster mode and one compactor daemon (metrics on port
# 35); returns once every gateway sees every shard owned by one of the N members.
start_tessera() {
  local n=$1 shards=$2 coord i
  shift 2
  coord=http://127.0.0.1:$(port 20)
  start_etcd coord-etcd coord 20 21
  local s3_data=$RUN/s3
  if [ "${S3_TMPFS:-0}" = 1 ]; then
    S3_TMPFS_DIR=$(mktemp -d -p /dev/shm tessera-s3.XXXXXX) # removed by cleanup
    s3_data=$S3_TMPFS_DIR
  fi
  start_s3 s3 30 "$s3_data"
  wait_port "$(port 20)"; wait_port "$(port 30)"
  local s3=(--store s3://tessera/bench --s3-endpoint "http://127.0.0.1:$(port 30)" --etcd "$coord" --cluster bench)
  GW_URLS=()
  for i in $(seq 1 "$n"); do
    GW_URLS+=("http://127.0.0.1:$(port $((40 + i)))")
    start "gw$i" "$GATEWAY" --listen "127.0.0.1:$(port $((40 + i)))" --shards "$shards" \
      "${s3[@]}" --node-id "gw$i" --log "${GATEWAY_LOG:-warn}" "$@"
  done
  # shellcheck disable=SC2034 # read by the benchmarks that source this
  GW_ENDPOINTS=$(IFS=,; echo "${GW_URLS[*]}")
  for i in $(seq 1 "$n"); do wait_port "$(port $((40 + i)))"; done
  # In cluster mode gateways do not compact; a compactor daemon does (as in production).
  start compactor "$COMPACTOR" "${s3[@]}" --node-id c1 --log warn \
    --metrics-listen "127.0.0.1:$(port 35)"
  echo "==> waiting until every shard has an owner and the members agree"
  local owned=0 url view s m
  for _ in $(seq 1 300); do
    owned=0
    for url in "${GW_URLS[@]}"; do
      view=$("$TESSERA" --endpoints "$url" --output json cluster 2>/dev/null) || view='{}'
      s=$(jq '[(.shards // [])[] | select(.owner != null)] | length' <<<"$view")
      m=$(jq '(.members // []) | length' <<<"$view")
      [ "$s" = "$shards" ] && [ "$m" = "$n" ] && owned=$((owned + 1))
    done
    [ "$owned" = "$n" ] && break
    sleep 0.2
  done
  if [ "$owned" != "$n" ]; then
    echo "the Tessera cluster did not settle ($owned of $n gateways agree; last view: $s of $shards shards owned, $m members); gateway views and logs:" >&2
    for url in "${GW_URLS[@]}"; do "$TESSERA" --endpoints "$url" cluster 2>&1 | head -n 5 >&2 || true; done
    tail -n 20 "$RUN"/gw*.log >&2
    exit 1
  fi
}

# Sum of every sample (all label sets) of metric NAME at URL/metrics, as an integer.
metric_sum() { # URL NAME
  curl -s "$1/metrics" | awk -v m="$2" 'index($0, m" ") == 1 || index($0, m"{") == 1 { s += $NF } END { printf "%d", s }'
}

gateways_sum() { # NAME: metric_sum over the gateways of start_tessera
  local s=0 url
  for url in "${GW_URLS[@]}"; do s=$((s + $(metric_sum "$url" "$1"))); done
  echo "$s"
}

# preload ENDPOINTS [tessera bench args...]: writes every key (--keys) once, in batches.
preload() {
  local endpoints=$1
  shift
  "$TESSERA" --endpoints "$endpoints" bench --workload put --preload --concurrency 64 --ops 1 \
    --warmup 0s "$@" >/dev/null
}
