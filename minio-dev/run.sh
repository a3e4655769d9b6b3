#!/usr/bin/env bash
# The local cluster without Docker: Debian's etcd, s3s-fs as the S3 server (patched so that
# conditional writes are atomic, built once by scripts/lib/s3s-fs.sh), three gateway
# processes and one compactor daemon on 127.0.0.1. Same topology as compose.yaml. Gateways
# require the token of minio-dev/dev-tokens.toml (dev-admin-token) and prove themselves to
# each other with minio-dev/dev-cluster-secret.
#
#   minio-dev/run.sh up       build, start everything, print the URLs
#   minio-dev/run.sh status   show what runs
#   minio-dev/run.sh down     stop everything (data stays in minio-dev/.run/)
#   minio-dev/run.sh clean    stop and delete the data
#
# Needs: etcd (apt-get install etcd-server). Ports: etcd 2379, S3 9000, gateways 7071-7073, compactor metrics 9091.
#
# Overrides (tests/minio_dev.rs uses them to run this script on free ports): DEV_DIR (state,
# default minio-dev/.run), GATEWAYS (3), ETCD_PORT (2379), ETCD_PEER_PORT (2380), S3_PORT (9000),
# GW_PORT_BASE (7070: gateway i listens on base+i), COMPACTOR_METRICS_PORT (9091), GATEWAY_BIN
# and COMPACTOR_BIN (skip the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${DEV_DIR:-minio-dev/.run}
GATEWAYS=${GATEWAYS:-3}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-2380}
S3_PORT=${S3_PORT:-9000}
GW_PORT_BASE=${GW_PORT_BASE:-7070}
COMPACTOR_METRICS_PORT=${COMPACTOR_METRICS_PORT:-9091}
export PATH="$HOME/.cargo/bin:$PATH"

start() { # name, command...
  local name=$1; shift
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    echo "$name already running"; return
  fi
  nohup "$@" >"$RUN/$name.out" 2>"$RUN/$name.log" &
  echo $! >"$RUN/$name.pid"
}

wait_port() { # port
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2; return 1
}

up() {
  command -v etcd >/dev/null || { echo "etcd missing: apt-get install etcd-server" >&2; exit 1; }
  source scripts/lib/s3s-fs.sh
  mkdir -p "$RUN/etcd" "$RUN/s3/tessera"
  local bin=${GATEWAY_BIN:-} cbin=${COMPACTOR_BIN:-}
  if [ -z "$bin" ] || [ -z "$cbin" ]; then
    cargo build --release -p gateway -p compactor
    bin=${bin:-target/release/tessera-gateway}
    cbin=${cbin:-target/release/tessera-compactor}
  fi
  local etcd_url=http://127.0.0.1:$ETCD_PORT peer_url=http://127.0.0.1:$ETCD_PEER_PORT
  start etcd etcd --name dev --data-dir "$RUN/etcd" \
    --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
    --listen-peer-urls "$peer_url" --initial-advertise-peer-urls "$peer_url" \
    --initial-cluster "dev=$peer_url"
  start s3 "$S3S_FS" --host 127.0.0.1 --port "$S3_PORT" --access-key devkey --secret-key devsecret "$RUN/s3"
  wait_port "$ETCD_PORT"; wait_port "$S3_PORT"
  for i in $(seq 1 "$GATEWAYS"); do
    AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1 \
      start "gw$i" "$bin" --listen "127.0.0.1:$((GW_PORT_BASE + i))" \
      --store s3://tessera/dev --s3-endpoint "http://127.0.0.1:$S3_PORT" \
      --etcd "$etcd_url" --cluster dev --node-id "gw$i" \
      --auth-tokens minio-dev/dev-tokens.toml --cluster-secret minio-dev/dev-cluster-secret
  done
  for i in $(seq 1 "$GATEWAYS"); do
    wait_port "$((GW_PORT_BASE + i))"
    echo "gateway gw$i: http://127.0.0.1:$((GW_PORT_BASE + i))"
  done
  # Gateways in cluster mode do not compact: the compactor daemon does (and runs GC).
  AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1 \
    start compactor "$cbin" --store s3://tessera/dev --s3-endpoint "http://127.0.0.1:$S3_PORT" \
    --etcd "$etcd_url" --cluster dev --node-id compactor1 \
    --metrics-listen "127.0.0.1:$COMPACTOR_METRICS_PORT"
  wait_port "$COMPACTOR_METRICS_PORT"
  echo "compactor compactor1: http://127.0.0.1:$COMPACTOR_METRICS_PORT/metrics"
  echo "token: export TESSERA_TOKEN=dev-admin-token (minio-dev/dev-tokens.toml)"
  echo "cluster map: curl -H 'Authorization: Bearer dev-admin-token' http://127.0.0.1:$((GW_PORT_BASE + 1))/v1/cluster"
}

down() {
  for f in "$RUN"/compactor.pid "$RUN"/gw*.pid "$RUN"/s3.pid "$RUN"/etcd.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f"); kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
  done
}

status() {
  for f in "$RUN"/*.pid; do
    [ -f "$f" ] || continue
    n=$(basename "$f" .pid)
    if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$n: running (pid $(cat "$f"))"; else echo "$n: dead"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  clean) down; rm -rf "$RUN" ;;
  *) echo "usage: $0 up|down|status|clean" >&2; exit 2 ;;
esac
