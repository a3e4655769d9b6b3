#!/usr/bin/env bash
# Scale test on one machine: 1024 shards over 8 gateways, then a 9th gateway joins.
#
# Starts, on loopback ports and in a temporary directory: one etcd (Debian's etcd-server), one
# s3s-fs S3 server, GATEWAYS release gateways in cluster mode with SHARDS shards, and one
# tessera-compactor daemon. Measures and writes to OUT (markdown; also printed):
#   1. time from launching the gateways until every shard is owned by a live member and every
#      gateway's view agrees, and until the owners are the rendezvous placement (settled);
#   2. RSS (VmRSS) per gateway at idle, and per open shard: (RSS - RSS of a throwaway
#      cluster-mode gateway owning 1 shard) / shards owned;
#   3. object-store requests at idle (no client load) over IDLE_SECS: per gateway from
#      tessera_object_store_requests_total, and at the S3 server (every request it parsed,
#      from its debug log), whose excess over the gateways' sum is the compactor's; CPU time
#      used by each process in the same window;
#   4. a short `tessera bench` put and get run through all gateways (BENCH_SECS; 0 skips it);
#   5. one more gateway joins: time until every view agrees on the new rendezvous placement,
#      and how many shards moved.
# Everything it started is stopped on exit (trap), and the temporary directory removed.
#
#   scripts/scale-test.sh
#
# Settings (environment): GATEWAYS (8, at most 98), SHARDS (1024, at most 10000), IDLE_SECS (30),
#   BENCH_SECS (10; 0 skips the bench), MANIFEST_POLL (1s: the gateways'
#   storage.manifest_poll_interval), COMPACTOR_POLL (1s: the compactor's --poll-interval),
#   PORT_BASE (23000: every port is PORT_BASE + a small offset), OUT (docs/bench/scale-test.md),
#   TIMEOUT (300: seconds allowed per waiting step). Takes 3-5 minutes when the machine keeps up.
# On 2 cores use MANIFEST_POLL=10s COMPACTOR_POLL=10s (as docs/bench/scale-test.md does): with the 1 s
# defaults, 1024 idle shards poll the object store ~4,000 times a second, which saturates such a
# machine (see docs/capacity.md).
#
# Needs: etcd (apt-get install etcd-server), python3, jq, curl, patch; builds the patched
# s3s-fs once (scripts/lib/s3s-fs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SETTINGS="GATEWAYS SHARDS IDLE_SECS BENCH_SECS MANIFEST_POLL COMPACTOR_POLL"
cmd="scripts/scale-test.sh"
for v in $SETTINGS OUT; do [ -z "${!v+x}" ] || cmd="$v=\"${!v}\" $cmd"; done

GATEWAYS=${GATEWAYS:-8}
MANIFEST_POLL=${MANIFEST_POLL:-1s}
COMPACTOR_POLL=${COMPACTOR_POLL:-1s}
SHARDS=${SHARDS:-1024}
IDLE_SECS=${IDLE_SECS:-30}
BENCH_SECS=${BENCH_SECS:-10}
PORT_BASE=${PORT_BASE:-23000}
OUT=${OUT:-docs/bench/scale-test.md}
TIMEOUT=${TIMEOUT:-300}

for tool in etcd python3 jq curl patch; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (see the header of $0)" >&2; exit 1; }
done

script_start=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
RUN_NAME=tessera-scale
# shellcheck source=lib/procs.sh
source scripts/lib/procs.sh
now() { date +%s.%N; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
helper() { python3 scripts/scale-test.py "$@"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# Ports: etcd 0 (peer 1), S3 2, compactor metrics 3, baseline gateway 9, gateways 10 + i.
for p in 0 1 2 3 9 $(seq 11 $((10 + GATEWAYS + 1))); do
  if (exec 3<>/dev/tcp/127.0.0.1/"$(port "$p")") 2>/dev/null; then
    echo "port $(port "$p") is in use; set PORT_BASE" >&2; exit 1
  fi
done

echo "==> building (release)"
cargo build --release --quiet -p gateway -p compactor -p tessera-cli
source scripts/lib/s3s-fs.sh
GATEWAY=target/release/tessera-gateway
COMPACTOR=target/release/tessera-compactor
TESSERA=target/release/tessera

echo "==> starting etcd and s3s-fs (load average before: $load_before)"
etcd_url=http://127.0.0.1:$(port 0) etcd_peer=http://127.0.0.1:$(port 1)
start etcd etcd --name scale --data-dir "$RUN/etcd" \
  --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
  --initial-cluster "scale=$etcd_peer"
ETCD_PID=${PIDS[-1]}
# s3s-fs logs one "resolved route, op: ..." event per request it parsed at debug level; an awk
# reader appends the running counts to $RUN/s3-requests every 100 requests, as a JSON object
# {"total": n, "<operation>": n, ...}.
mkdir -p "$RUN/s3/tessera"
mkfifo "$RUN/s3.fifo"
start s3-count awk -v f="$RUN/s3-requests" '/resolved route/ {
    match($0, /op: [A-Za-z0-9]+/); n[substr($0, RSTART + 4, RLENGTH - 4)]++
    if (++t % 100 == 0) {
      line = "{\"total\": " t; for (o in n) line = line ", \"" o "\": " n[o]; print line "}" > f; fflush(f)
    } }' "$RUN/s3.fifo"
RUST_LOG=s3s::ops=debug start s3 sh -c 'exec "$@" >"$0"' "$RUN/s3.fifo" \
  "$S3S_FS" --host 127.0.0.1 --port "$(port 2)" --access-key devkey --secret-key devsecret "$RUN/s3"
S3_PID=${PIDS[-1]}
wait_port "$(port 0)"; wait_port "$(port 2)"
# The last complete line (the very last one may be half-written).
s3_requests() { tail -n 2 "$RUN/s3-requests" 2>/dev/null | head -n 1 | grep . || echo '{"total": 0}'; }

export AWS_ACCESS_KEY_ID=devkey AWS_SECRET_ACCESS_KEY=devsecret AWS_REGION=us-east-1
S3=http://127.0.0.1:$(port 2)

echo "==> baseline: one cluster-mode gateway owning 1 shard (its own cluster and prefix)"
printf '[storage]\nmanifest_poll_interval = "%s"\n' "$MANIFEST_POLL" >"$RUN/gateway.toml"
start baseline "$GATEWAY" --config "$RUN/gateway.toml" --listen "127.0.0.1:$(port 9)" --shards 1 \
  --store s3://tessera/baseline --s3-endpoint "$S3" --etcd "$etcd_url" --cluster baseline \
  --node-id base
BASE_PID=${PIDS[-1]}
wait_port "$(port 9)"
helper settle "http://127.0.0.1:$(port 9)" base "$(now)" "$TIMEOUT" >"$RUN/baseline.json"
sleep 5
base_rss=$(rss_kib "$BASE_PID")
kill -TERM "$BASE_PID"; wait "$BASE_PID" || true
echo "baseline RSS: $(mib "$base_rss") MiB"

MEMBERS="" URLS=""
for i in $(seq 1 "$GATEWAYS"); do
  MEMBERS+="${MEMBERS:+,}g$i"; URLS+="${URLS:+,}http://127.0.0.1:$(port $((10 + i)))"
done
start_gateway() { # i
  start "gw$1" "$GATEWAY" --config "$RUN/gateway.toml" --listen "127.0.0.1:$(port $((10 + $1)))" --shards "$SHARDS" \
    --store s3://tessera/scale --s3-endpoint "$S3" --etcd "$etcd_url" --cluster scale \
    --node-id "g$1"
  GW_PIDS[$1]=${PIDS[-1]}
}

# Waits 5 s, then measures IDLE_SECS without client load: CPU share and RSS of each process in
# PROCS ("name:pid ..."), every gateway's object-store requests/s by operation, and the S3
# server's requests/s. Writes $RUN/idle-NAME.json.
idle_window() { # name
  local name=$1 p tc0 tc1 ts0 ts1 s0 s1
  sleep 5
  declare -A c0
  tc0=$(now)
  for p in $PROCS; do c0[${p%%:*}]=$(cpu_ticks "${p#*:}"); done
  helper scrape "$URLS" tessera_object_store_requests_total >"$RUN/scrape0.json"
  s0=$(s3_requests); ts0=$(now)
  sleep "$IDLE_SECS"
  s1=$(s3_requests); ts1=$(now)
  helper scrape "$URLS" tessera_object_store_requests_total >"$RUN/scrape1.json"
  for p in $PROCS; do
    jq -n --arg n "${p%%:*}" --argjson a "${c0[${p%%:*}]}" --argjson b "$(cpu_ticks "${p#*:}")" \
      --argjson rss "$(rss_kib "${p#*:}")" --argjson tck "$(getconf CLK_TCK)" \
      --argjson w "$(awk -v a="$tc0" -v b="$(now)" 'BEGIN {print b - a}')" \
      '{($n): {cpu: ((($b - $a) / $tck / $w) * 1000 | round / 1000), rss_kib: $rss}}'
  done | jq -s add >"$RUN/procs.json"
  # Each gateway's rate over the interval between its own two scrapes.
  jq -n --slurpfile a "$RUN/scrape0.json" --slurpfile b "$RUN/scrape1.json" \
    --slurpfile procs "$RUN/procs.json" --argjson s0 "$s0" --argjson s1 "$s1" \
    --argjson w "$(awk -v a="$ts0" -v b="$ts1" 'BEGIN {print b - a}')" \
    --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" '
    ($b[0] | with_entries(.key as $u | ($a[0][$u]) as $x | .value |= (
      (._t - $x._t) as $dt | del(._t) | with_entries(.value = ((.value - ($x[.key] // 0)) / $dt)))))
      as $gw |
    {window_s: $w, load: $load, procs: $procs[0], gateways: $gw,
     gateway_total: ([$gw[][]] | add), s3_total: (($s1.total - $s0.total) / $w),
     s3_ops: ($s1 | del(.total) | with_entries(.value = ((.value - ($s0[.key] // 0)) / $w)))}' \
    >"$RUN/idle-$name.json"
  jq -r '"idle (\(.window_s | floor) s): gateways \(.gateway_total | floor) req/s, S3 server \(.s3_total | floor) req/s; CPU (cores): \(.procs | to_entries | map("\(.key) \(.value.cpu)") | join(", "))"' \
    "$RUN/idle-$name.json"
}

echo "==> starting $GATEWAYS gateways with $SHARDS shards"
declare -A GW_PIDS
t0=$(now)
for i in $(seq 1 "$GATEWAYS"); do start_gateway "$i"; done
if ! helper settle "$URLS" "$MEMBERS" "$t0" "$TIMEOUT" >"$RUN/own.json"; then
  cat "$RUN/own.json" >&2; tail -n 5 "$RUN"/gw*.log >&2; exit 1
fi
jq -c '{members_s, owned_s, placed_s, shards_per_member}' "$RUN/own.json"
PROCS="etcd:$ETCD_PID s3s-fs:$S3_PID"
for i in $(seq 1 "$GATEWAYS"); do PROCS+=" g$i:${GW_PIDS[$i]}"; done

echo "==> idle, gateways only (no compactor yet)"
idle_window gateways

echo "==> starting the compactor daemon"
metrics=http://127.0.0.1:$(port 3)
tc=$(now)
start compactor "$COMPACTOR" --store s3://tessera/scale --s3-endpoint "$S3" --etcd "$etcd_url" \
  --cluster scale --node-id c1 --metrics-listen "127.0.0.1:$(port 3)" --poll-interval "$COMPACTOR_POLL"
COMPACTOR_PID=${PIDS[-1]}
PROCS+=" compactor:$COMPACTOR_PID"
claimed=0
for _ in $(seq 1 $((TIMEOUT * 5))); do
  kill -0 "$COMPACTOR_PID" 2>/dev/null || break
  claimed=$(curl -sf "$metrics/metrics" | awk '/^tessera_compactor_shards_claimed / {print $2}') || true
  [ "${claimed:-0}" = "$SHARDS" ] && break
  sleep 0.2
done
compactor_s=$(awk -v a="$tc" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}')
if [ "${claimed:-0}" != "$SHARDS" ]; then
  echo "the compactor claimed ${claimed:-0} of $SHARDS shards; its log:" >&2
  tail -n 20 "$RUN/compactor.log" >&2; exit 1
fi
echo "the compactor holds all $SHARDS shards after $compactor_s s"

echo "==> idle, with the compactor"
idle_window all

BENCH_ROWS=""
if [ "$BENCH_SECS" -gt 0 ]; then
  echo "==> bench through the $GATEWAYS gateways: put, then get (10000 keys preloaded)"
  bench() { # out, args...
    local out=$1; shift
    "$TESSERA" --endpoints "$URLS" bench --keys 10000 --value-size 100 --concurrency 64 --json \
      "$@" >"$out" 2>&1 || echo "bench $* failed: $(tail -c 300 "$out")" >&2
  }
  bench "$RUN/put.json" --workload put --duration "${BENCH_SECS}s" --warmup 2s
  bench "$RUN/preload.json" --workload put --preload --ops 1 --warmup 0s
  bench "$RUN/get.json" --workload get --duration "${BENCH_SECS}s" --warmup 2s
  for w in put get; do
    row=$(jq -r '"| \(.workload) | 64 | \(.ops_per_sec | round) | \(.latency_ms.p50) | \(.latency_ms.p99) | \(.errors)\(if .errors > 0 then " \(.errors_by_kind)" else "" end) | \(.object_store.requests_per_1k_ops * 10 | round / 10) (\(.object_store.puts_per_1k_ops * 10 | round / 10)) |"' \
      "$RUN/$w.json" 2>/dev/null) || row="| $w | 64 | failed: $(tail -c 200 "$RUN/$w.json" | tr '\n|' '  ') | | | | |"
    BENCH_ROWS+="$row"$'\n'; echo "$row"
  done
  loaded_rss=$(for i in $(seq 1 "$GATEWAYS"); do mib "$(rss_kib "${GW_PIDS[$i]}")"; echo; done | paste -sd, | sed 's/,/, /g')
  sleep 3
fi

n=$((GATEWAYS + 1))
echo "==> adding gateway g$n"
t9=$(now)
start_gateway "$n"
# A rebalance that does not complete is a result too: it is reported, not fatal.
helper settle "$URLS,http://127.0.0.1:$(port $((10 + n)))" "$MEMBERS,g$n" "$t9" "$TIMEOUT" \
  "$RUN/own.json" >"$RUN/rebalance.json" || cat "$RUN/rebalance.json" >&2
jq -c '{members_s, owned_s, placed_s, moved, expected_moved, shards_per_member}' "$RUN/rebalance.json"
# Open times of the shards the new gateway took over (ownership.rs logs open_ms per shard).
opens=$(sed 's/\x1b\[[0-9;]*m//g' "$RUN/gw$n.log" | grep -o 'open_ms=[0-9]*' | cut -d= -f2 | sort -n)
open_p50=$(awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}' <<<"$opens")
open_max=$(tail -n 1 <<<"$opens")
sleep 2
rss_new=$(rss_kib "${GW_PIDS[$n]}")
runtime=$(( $(date +%s) - script_start ))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo "==> writing $OUT"
commit=$(git rev-parse --short HEAD)
git diff --quiet HEAD -- src gateway compactor cli scripts Cargo.toml Cargo.lock || commit="$commit (with uncommitted changes)"
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
ram=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')
own() { jq -r ".$1" "$RUN/own.json"; }
reb() { jq -r --arg t "not within $TIMEOUT s" ".$1 // \$t" "$RUN/rebalance.json"; }
idle() { jq -r ".$2" "$RUN/idle-$1.json"; }
# Table rows of an idle window: per gateway, all gateways, the compactor (if running), the S3
# server and etcd. Per-shard RSS is above the 1-shard baseline.
idle_rows() { # name
  jq -r --slurpfile own "$RUN/own.json" --argjson base "$base_rss" --argjson S "$SHARDS" \
    --argjson port0 "$PORT_BASE" '
    def r(x; d): (x * d | round) / d;
    def mib(k): r(k / 1024; 10);
    $own[0].shards_per_member as $per | .gateways as $gw | .procs as $p |
    [ $p | to_entries[] | select(.key | test("^g[0-9]+$")) | .key as $id |
      ($gw["http://127.0.0.1:\($port0 + 10 + ($id[1:] | tonumber))"] | [.[]] | add) as $req |
      {id: $id, s: $per[$id], rss: .value.rss_kib, cpu: .value.cpu, req: $req} ] as $g |
    ([$g[].rss] | add) as $rss |
    ($g[] | "| \(.id) | \(.s) | \(mib(.rss)) | \(r((.rss - $base) / (.s - 1); 1)) | \(.cpu) | \(r(.req; 10)) | \(r(.req / .s; 100)) |"),
    "| **all gateways** | \($S) | \(mib($rss)) (mean \(mib($rss / ($g | length)))) | **\(r(($rss - ($g | length) * $base) / ($S - ($g | length)); 1))** | \(r([$g[].cpu] | add; 1000)) | \(r(.gateway_total; 10)) | **\(r(.gateway_total / $S; 100))** |",
    (if $p.compactor then "| compactor | \($S) | \(mib($p.compactor.rss_kib)) | \(r($p.compactor.rss_kib / $S; 1)) (RSS ÷ shards) | \($p.compactor.cpu) | \(r(.s3_total - .gateway_total; 10)) (S3 server − gateways) | \(r((.s3_total - .gateway_total) / $S; 100)) |" else empty end),
    "| s3s-fs (S3 server) | | \(mib($p["s3s-fs"].rss_kib)) | | \($p["s3s-fs"].cpu) | \(r(.s3_total; 10)) served | \(r(.s3_total / $S; 100)) |",
    "| etcd | | \(mib($p.etcd.rss_kib)) | | \($p.etcd.cpu) | | |"' "$RUN/idle-$1.json"
}
by_op() { # name
  jq -r '[.gateways[] | to_entries[]] | group_by(.key) | map(select(any(.value > 0))) |
    map("\(.[0].key) \((map(.value) | add) * 10 | round / 10)") | join(", ")' "$RUN/idle-$1.json"
}
s3_by_op() { # name
  jq -r '.s3_ops | to_entries | map(select(.value > 0)) | sort_by(-.value) |
    map("\(.key) \(.value * 10 | round / 10)") | join(", ")' "$RUN/idle-$1.json"
}
{
  cat <<EOF
# Scale test: $SHARDS shards over $GATEWAYS gateways on one machine

Produced by \`scripts/scale-test.sh\` (one run; reproduce with the command below). Every
process runs on the one machine listed, on loopback: the gateways, the compactor, etcd, the
S3 server and the load generator share its cores, so times and CPU figures include that
contention. The S3 server is s3s-fs (files on local disk) with its conditional writes made
atomic and its LIST patched to walk only the listed prefix (\`scripts/lib/s3s-fs.sh\`;
unpatched, every LIST walks the whole bucket and 1024 shards' polling overwhelms it): request
*counts* carry over to S3, latencies do not.

| | |
|---|---|
| machine | $(nproc) cores, $cpu, $ram RAM, $(uname -sr) |
| load average (1/5/15 min) | $load_before before the script started anything (above ~0.5 means other work was running); $(idle gateways load) at the end of the first idle window; $load_after at the end |
| commit | \`$commit\` |
| date | $(date -u +"%Y-%m-%d %H:%M UTC") |
| command | \`$cmd\` (took $((runtime / 60)) min $((runtime % 60)) s in all) |
| cluster | $GATEWAYS gateways (release build; manifest poll $MANIFEST_POLL, other settings default: flush interval 10 ms, lease TTL 3 s, open concurrency 8), $SHARDS shards, 1 \`tessera-compactor\` daemon (poll $COMPACTOR_POLL, other settings default: GC every 1 min), 1 etcd $(etcd --version | head -n 1 | sed 's/etcd Version: //') member, s3s-fs 0.14.1 (patched: prefix LIST, atomic conditional writes) |

## Ownership at start-up

All $GATEWAYS gateway processes were launched at t = 0 on an empty bucket (each shard's
database is created by its first owner); every gateway's \`GET /v1/cluster\` was polled every
0.2 s.

| milestone | seconds after launch |
|---|---:|
| every view lists all $GATEWAYS members | $(own members_s) |
| every shard owned by a live member, all views agree (owner and epoch) | **$(own owned_s)** |
| every owner is the rendezvous choice (settled) | $(own placed_s) |

Shards per gateway: $(jq -r '.shards_per_member | to_entries | map("\(.key) \(.value)") | join(", ")' "$RUN/own.json").
The compactor daemon, started after the first idle window below, held claims on all $SHARDS
shards $compactor_s s after it was launched.

## Idle: memory, CPU and object-store requests

Two windows of ${IDLE_SECS} s without client load, each after 5 s of quiet: first the gateways
alone, then with the compactor running. RSS is VmRSS (\`/proc/PID/status\`) at the end of the
window. Baseline: a separate cluster-mode gateway (same binary and settings, its own cluster
and prefix) owning 1 shard had **$(mib "$base_rss") MiB** after 5 s idle; per shard = (RSS −
baseline) ÷ (shards owned − 1). CPU = CPU time used in the window ÷ its length (1.0 = one
core busy). Gateways' requests are their \`tessera_object_store_requests_total\`; the S3
server's are every request it parsed (counted from its debug log). The compactor exports no
request counter: its figure is the S3 server's count minus the gateways'.

### Gateways alone

| process | shards | RSS MiB | per shard KiB | CPU (cores) | object-store req/s | req/s per shard |
|---|---:|---:|---:|---:|---:|---:|
$(idle_rows gateways)

By operation (all gateways, req/s; \`get\` includes ranged GETs): $(by_op gateways). The S3 server
counted $(jq -r '.s3_total * 10 | round / 10' "$RUN/idle-gateways.json") req/s in this window (a cross-check of the two counts): $(s3_by_op gateways).

### With the compactor

| process | shards | RSS MiB | per shard KiB | CPU (cores) | object-store req/s | req/s per shard |
|---|---:|---:|---:|---:|---:|---:|
$(idle_rows all)

By operation (all gateways, req/s): $(by_op all). At the S3 server (gateways and compactor, req/s):
$(s3_by_op all).
EOF
  if [ -n "$BENCH_ROWS" ]; then
    cat <<EOF

## Serving at $SHARDS shards

\`tessera bench --endpoints <all $GATEWAYS gateways> --workload put|get --concurrency 64
--duration ${BENCH_SECS}s --warmup 2s --keys 10000 --value-size 100\` (get after preloading the
10000 keys), with the compactor running. Client on the same machine. obj req/1k =
object-store requests of all gateways per 1,000 operations (PUTs in brackets).

| workload | concurrency | ops/s | p50 ms | p99 ms | errors | obj req/1k (PUTs) |
|---|---:|---:|---:|---:|---:|---:|
${BENCH_ROWS%$'\n'}

Gateways' RSS after the runs (MiB): $loaded_rss.
EOF
  fi
  cat <<EOF

## Adding a gateway

Gateway g$n was launched at t = 0 into the settled cluster$( [ -n "$BENCH_ROWS" ] && echo " (idle again after the runs above)").

| milestone | seconds after launch |
|---|---:|
| every view lists all $n members | $(reb members_s) |
| every shard owned and all views agree | $(reb owned_s) |
| every owner is the rendezvous choice over $n members (rebalance complete) | **$(reb placed_s)** |

EOF
  if [ "$(jq -r '.placed_s' "$RUN/rebalance.json")" != null ]; then
    cat <<EOF
Shards moved: **$(reb moved)** of $SHARDS ($(awk -v m="$(reb moved)" -v s="$SHARDS" 'BEGIN {printf "%.1f", 100 * m / s}')%); rendezvous hashing predicts $(reb expected_moved), the
shards g$n now wins ($SHARDS/$n = $((SHARDS / n))). Each was drained and closed by its old owner, then
opened by g$n: open time p50 $open_p50 ms, max $open_max ms (g$n's log). g$n's RSS with
$(jq -r ".shards_per_member.g$n" "$RUN/rebalance.json") shards: $(mib "$rss_new") MiB.
EOF
  else
    cat <<EOF
**The rebalance did not complete within $TIMEOUT s** ($(jq -r '.last_error // "views never matched the placement"' "$RUN/rebalance.json")).
g$n opened $(wc -l <<<"$opens" | tr -d ' ') shards meanwhile (open time p50 $open_p50 ms, max $open_max ms).
EOF
  fi
  cat <<EOF

Events logged by all gateways over the whole run: $(cat "$RUN"/gw*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -c 'shard fenced by a newer owner') shards fenced while owned,
$(cat "$RUN"/gw*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -c 'shard reopened') shard reopens after a storage error, $(cat "$RUN"/gw*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -c 'opening acquired shard failed') failed opens, $(cat "$RUN"/gw*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -c 'lease lost') lease losses.
EOF
} >"$OUT"
cat "$OUT"
echo "==> done in $runtime s; wrote $OUT"
