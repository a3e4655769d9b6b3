#!/usr/bin/env bash
# The local cluster without Docker: Debian's etcd, s3s-fs as the S3 server and three gateway
# processes on 127.0.0.1. Same topology as compose.yaml.
#
#   minio-dev/run.sh up       build, start everything, print the URLs
#   minio-dev/run.sh status   show what runs
#   minio-dev/run.sh down     stop everything (data stays in minio-dev/.run/)
#   minio-dev/run.sh clean    stop and delete the data
#
# Needs: etcd (apt-get install etcd-server), s3s-fs (cargo install s3s-fs@0.14.1 --features
# binary --locked). Ports: etcd 2379, S3 9000, gateways 7071-7073.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=minio-dev/.run
GATEWAYS=${GATEWAYS:-3}
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
  command -v s3s-fs >/dev/null || { echo "s3s-fs missing: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }
  mkdir -p "$RUN/etcd" "$RUN/s3/tessera"
  cargo build --release -p gateway
  start etcd etcd --name dev --data-dir "$RUN/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster dev=http://127.0.0.1:2380
  start s3 s3s-fs --host 127.0.0.1 --port 9000 --access-key devkey --secret-key devsecret "$RUN/s3"
  wait_port 2379; wait_port 9000
  for i in $(seq 1 "$GATEWAYS"); do
    AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1 \
      start "gw$i" target/release/tessera-gateway --listen "127.0.0.1:707$i" \
      --store s3://tessera/dev --s3-endpoint http://127.0.0.1:9000 \
      --etcd http://127.0.0.1:2379 --cluster dev --node-id "gw$i"
  done
  for i in $(seq 1 "$GATEWAYS"); do wait_port "707$i"; echo "gateway gw$i: http://127.0.0.1:707$i"; done
  echo "cluster map: curl http://127.0.0.1:7071/v1/cluster"
}

down() {
  for f in "$RUN"/gw*.pid "$RUN"/s3.pid "$RUN"/etcd.pid; do
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
