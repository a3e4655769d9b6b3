#!/usr/bin/env bash
# Tessera and a 3-member etcd side by side, every workload at every concurrency (~12 min).
#
# Starts, on loopback ports and in a temporary directory:
#   - a 3-member etcd cluster (Debian's etcd-server): the system under comparison;
#   - a Tessera cluster: 3 gateways and a compactor daemon (release builds), s3s-fs as the S3
#     server, and a separate single-member etcd used only for Tessera's coordination;
# then runs every workload at every concurrency against both (Tessera then etcd, per row), with
# the same load generator (`tessera bench`), and writes OUT. Everything it starts is stopped on
# exit.
#
#   scripts/bench.sh vs-etcd
#   WORKLOADS="put get" CONCURRENCY=64 scripts/bench.sh vs-etcd
#
# Settings (environment):
#   BENCH_SECS (10)  measured seconds per run     WARMUP_SECS (2)  unmeasured seconds before it
#   CONCURRENCY ("1 16 64 256")                   WORKLOADS ("put ycsb-a cas get ycsb-b get-eventual")
#          (write-heavy first: followers opened by get-eventual stay open for
#          reads.follower_idle_timeout and fetch every new WAL object, which would slow the
#          writes of the runs after it; docs/bench/vs-etcd.md measures that effect apart)
#   KEYS (10000)     VALUE_SIZE (100)             DISTRIBUTION (uniform)   SHARDS (64)
#   ROUTE (owner: the client sends each request to its shard's owner from the /v1/cluster map,
#          as a smart client does; any: spread over the gateways, which forward)
#   PORT_BASE (22000)   OUT (docs/bench/vs-etcd.md)   BIN_DIR, TESSERA_S3S_FS (scripts/bench.sh)
#   S3_TMPFS (1: the S3 server keeps its objects on tmpfs, /dev/shm; 0: in the run directory on
#          disk). s3s-fs creates a file per object, and on ext4 the kernel's inode allocation
#          for the WAL PUTs took most of a core, CPU a real object store spends on its own
#          machines; etcd's members stay on disk either way.
# With the defaults a run takes about 12 minutes (48 runs of 12 s, plus startup and preload).
#
# Needs: etcd (apt-get install etcd-server), jq, curl.
# shellcheck disable=SC2153 # the settings are assigned by `setting`
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
setting BENCH_SECS 10
setting WARMUP_SECS 2
setting CONCURRENCY "1 16 64 256"
setting WORKLOADS "put ycsb-a cas get ycsb-b get-eventual"
setting KEYS 10000
setting VALUE_SIZE 100
setting DISTRIBUTION uniform
setting SHARDS 64
setting ROUTE owner
setting S3_TMPFS 1
PORT_BASE=${PORT_BASE:-22000}
OUT=${OUT:-docs/bench/vs-etcd.md}
need etcd jq curl
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

# Ports: etcd under test 1..3 (peers 11..13), coordination etcd 20 (peer 21), S3 30,
# gateways 41..43.
echo "==> starting a 3-member etcd (the system under comparison)"
ETCD_CLUSTER="" ETCD_ENDPOINTS=""
for i in 1 2 3; do
  ETCD_CLUSTER+="${ETCD_CLUSTER:+,}e$i=http://127.0.0.1:$(port $((10 + i)))"
  ETCD_ENDPOINTS+="${ETCD_ENDPOINTS:+,}http://127.0.0.1:$(port "$i")"
done
for i in 1 2 3; do
  start_etcd "etcd$i" "e$i" "$i" $((10 + i)) "$ETCD_CLUSTER" \
    --initial-cluster-state new --initial-cluster-token tessera-bench
done
for i in 1 2 3; do wait_port "$(port "$i")"; done
echo "==> starting Tessera: coordination etcd, s3s-fs, 3 gateways ($SHARDS shards), a compactor"
start_tessera 3 "$SHARDS"

bench() { # target, extra args...
  local target=$1; shift
  "$TESSERA" --endpoints "$GW_ENDPOINTS" bench --target "$target" --etcd-endpoints "$ETCD_ENDPOINTS" \
    --keys "$KEYS" --value-size "$VALUE_SIZE" --distribution "$DISTRIBUTION" --route "$ROUTE" --json "$@"
}

echo "==> preloading $KEYS keys into each system"
for target in tessera etcd; do
  bench "$target" --workload put --preload --concurrency 64 --ops 1 --warmup 0s >/dev/null
done

RESULTS=$RUN/results.jsonl
started=$(date +%s)
for w in $WORKLOADS; do
  for c in $CONCURRENCY; do
    for target in tessera etcd; do
      bench "$target" --workload "$w" --concurrency "$c" \
        --duration "${BENCH_SECS}s" --warmup "${WARMUP_SECS}s" >>"$RESULTS"
      jq -r '"\(.workload) c=\(.concurrency) \(.target): \(.ops_per_sec | floor) ops/s, p99 \(.latency_ms.p99) ms, errors \(.errors)"' \
        <<<"$(tail -n 1 "$RESULTS")"
    done
  done
done
elapsed=$(( $(date +%s) - started ))
load_after=$(loadavg)

echo "==> writing $OUT"
{
  cat <<EOF
# Benchmarks: Tessera and etcd on one machine

Produced by \`scripts/bench.sh vs-etcd\`; the figures below are from one run of it and can be
reproduced with the command shown. Numbers from single runs are noisy (a few percent, more at
concurrency 1 and 256).

**Client and servers share the same machine**: the load generator, the three etcd members, the
three Tessera gateways, Tessera's coordination etcd and the S3 server all run on the
$(nproc) cores listed here, so every figure includes the load generator's own CPU use and the
systems compete with each other's idle work. Absolute numbers say little about a real
deployment; the ratios are the point.

| | |
|---|---|
| machine | $(machine) |
| OS | $(uname -sr) |
| load average (1/5/15 min) | $LOAD_BEFORE when the script started, before it started anything (above ~0.5 means other work was running); $load_after after the runs (includes the benchmark itself) |
| commit | \`$(commit_desc)\` |
| date | $(utc_now) |
| command | \`$CMD\` (took $((elapsed / 60)) min $((elapsed % 60)) s for the runs) |
| runs | ${BENCH_SECS} s measured after ${WARMUP_SECS} s warm-up, per workload, concurrency and system; Tessera first, then etcd |
| keys | $KEYS keys (preloaded), $VALUE_SIZE-byte values, $DISTRIBUTION key choice |
| etcd | $(etcd --version | head -n 1 | sed 's/etcd Version: //') (Debian), 3 members on loopback, default settings (fsync on every commit) |
| Tessera | 3 gateways and 1 compactor daemon (release builds), $SHARDS shards, default settings; S3 server s3s-fs 0.14.1 (patched: atomic conditional writes, LIST walks only the prefix; \`scripts/lib/s3s-fs.sh\`) on loopback, objects $( [ "$S3_TMPFS" = 1 ] && echo "on tmpfs" || echo "on disk (ext4)"); coordination through a separate single-member etcd |
| client | \`tessera bench\`: closed loop, each task one operation at a time; Tessera over pooled HTTP/1.1 keep-alive connections, \`--route $ROUTE\` ($( [ "$ROUTE" = owner ] && echo "each strong read and write sent straight to its shard's owner from the \`/v1/cluster\` map, as a smart client does; eventual reads to gateway i mod 3" || echo "task i using gateway i mod 3, which forwards to the owner")); etcd through etcd-client (gRPC), one channel per 16 tasks balanced over the 3 members (etcd followers forward writes and linearizable reads to the leader) |

What the workloads do (\`tessera bench --help\`):

- **put**: durable put (Tessera answers once the write is in the object store; etcd once a
  quorum has it in its fsynced WAL).
- **get**: strong get (Tessera linearizable read; etcd linearizable Range).
- **get-eventual**: Tessera \`consistency=eventual\`; etcd serializable Range (served by one member).
- **ycsb-a** / **ycsb-b**: 50/50 and 95/5 mixes of strong gets and puts.
- **cas**: read the version, then write only if unchanged (Tessera \`If-Match\`; etcd Txn on
  \`mod_revision\`); one operation = read + conditional write. Conflicts (another task won)
  are not errors; they are listed.

Caveat on durability: s3s-fs writes objects to files without fsync$( [ "$S3_TMPFS" = 1 ] && echo ", here on tmpfs (memory)"), while etcd
fsyncs its WAL to disk, so Tessera's "durable" here means "in the S3 server's files", not "on
disk". Against a real object store each write also pays the store's latency (typically
10–30 ms per PUT on S3 Standard) and the store's CPU is not on this machine.

Columns: ops/s (throughput), p50/p99 latency in ms, **ratio** = Tessera ops/s ÷ etcd ops/s,
**obj req/1k** = object-store requests made by all gateways per 1,000 operations (warm-up
included; PUTs in brackets), errors = failed operations (Tessera / etcd).
EOF
  for w in $WORKLOADS; do
    printf '\n## %s\n\n' "$w"
    if [ "$w" = cas ]; then
      echo "| concurrency | Tessera ops/s | p50 | p99 | etcd ops/s | p50 | p99 | ratio | obj req/1k (PUTs) | errors | conflicts (T / E) |"
      echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    else
      echo "| concurrency | Tessera ops/s | p50 | p99 | etcd ops/s | p50 | p99 | ratio | obj req/1k (PUTs) | errors |"
      echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    fi
    jq -rs --arg w "$w" '
      def f(x): (x * 10 | round) / 10;
      def ms(x): if x < 10 then (x * 100 | round) / 100 else f(x) end;
      map(select(.workload == $w)) | group_by(.concurrency)[] |
      (map(select(.target == "tessera"))[0]) as $t | (map(select(.target == "etcd"))[0]) as $e |
      [ $t.concurrency, ($t.ops_per_sec | round), ms($t.latency_ms.p50), ms($t.latency_ms.p99),
        ($e.ops_per_sec | round), ms($e.latency_ms.p50), ms($e.latency_ms.p99),
        (if $e.ops_per_sec > 0 then "\(($t.ops_per_sec / $e.ops_per_sec * 100 | round) / 100)×" else "-" end),
        (if $t.object_store then "\(f($t.object_store.requests_per_1k_ops)) (\(f($t.object_store.puts_per_1k_ops)))" else "-" end),
        "\($t.errors) / \($e.errors)" ]
      + (if $w == "cas" then ["\($t.cas_conflicts) / \($e.cas_conflicts)"] else [] end)
      | "| " + (map(tostring) | join(" | ")) + " |"' "$RESULTS"
  done
  errs=$(jq -s '[.[] | select(.errors > 0) | "\(.workload) c=\(.concurrency) \(.target): \(.errors_by_kind)"] | join("; ")' -r "$RESULTS")
  if [ -n "$errs" ]; then
    printf '\nErrors by kind: %s\n' "$errs"
  fi
} >"$OUT"
echo "==> done in $(( $(date +%s) - started )) s; wrote $OUT"
