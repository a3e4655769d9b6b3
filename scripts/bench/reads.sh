#!/usr/bin/env bash
# Reads on 1M keys: strong (hot-key cache) vs eventual (followers), uniform vs Zipf, lag (~2 min).
#
# Strong reads (owner's hot-key cache), eventual reads (followers), hit ratio, per-gateway CPU,
# and eventual-read lag; writes OUT.
#
#   scripts/bench.sh reads
#
# Starts (loopback, temp dir; all stopped on exit) a coordination etcd, s3s-fs, 3 gateways and
# a compactor; preloads KEYS keys (batched per shard); then, at CONCURRENCY:
#   get uniform | get zipf | get-eventual uniform | get-eventual zipf
# (strong reads go straight to the owner, `--route owner`; eventual reads to any gateway),
# then eventual reads of keys being rewritten, for the lag histogram.
#
# Settings: KEYS (1000000) VALUE_SIZE (100) ZIPF_THETA (0.99) CONCURRENCY (64) BENCH_SECS (10)
#   SHARDS (64) PORT_BASE (24000) OUT (docs/bench/reads.md) BIN_DIR, TESSERA_S3S_FS
#   (scripts/bench.sh)
# Needs: etcd, jq, curl.
# shellcheck disable=SC2153 # the settings are assigned by `setting`
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
setting KEYS 1000000
setting VALUE_SIZE 100
setting ZIPF_THETA 0.99
setting CONCURRENCY 64
setting BENCH_SECS 10
setting SHARDS 64
PORT_BASE=${PORT_BASE:-24000}
OUT=${OUT:-docs/bench/reads.md}
need etcd jq curl
# shellcheck source=scripts/lib/cluster.sh
source scripts/lib/cluster.sh

echo "==> starting Tessera: 3 gateways ($SHARDS shards), a compactor"
start_tessera 3 "$SHARDS"
GWS=(gw1 gw2 gw3)

bench() {
  "$TESSERA" --endpoints "$GW_ENDPOINTS" bench --keys "$KEYS" --value-size "$VALUE_SIZE" \
    --zipf-theta "$ZIPF_THETA" --json "$@"
}

echo "==> preloading $KEYS keys"
started=$(date +%s)
preload "$GW_ENDPOINTS" --keys "$KEYS" --value-size "$VALUE_SIZE"
preload_secs=$(( $(date +%s) - started ))

ROWS=$RUN/rows.md
: >"$ROWS"
run() { # label, bench args...
  local label=$1; shift
  local h0 m0 c0=() t0
  h0=$(gateways_sum tessera_cache_hits_total); m0=$(gateways_sum tessera_cache_misses_total)
  for g in "${GWS[@]}"; do c0+=("$(cpu_ticks "$(pid_of "$g")")"); done
  t0=$(now)
  local r
  r=$(bench --concurrency "$CONCURRENCY" --duration "${BENCH_SECS}s" --warmup 2s "$@")
  local secs h1 m1 cpu="" i=0
  secs=$(since "$t0")
  h1=$(gateways_sum tessera_cache_hits_total); m1=$(gateways_sum tessera_cache_misses_total)
  for g in "${GWS[@]}"; do
    cpu+="${cpu:+ / }$(cpu_pct "${c0[$i]}" "$(cpu_ticks "$(pid_of "$g")")" "$secs")%"
    i=$((i + 1))
  done
  local hit
  hit=$(awk -v h=$((h1 - h0)) -v m=$((m1 - m0)) 'BEGIN { if (h + m > 0) printf "%.1f%%", 100 * h / (h + m); else print "-" }')
  jq -r --arg l "$label" --arg hit "$hit" --arg cpu "$cpu" \
    '"| \($l) | \(.ops_per_sec | round) | \(.latency_ms.p50) | \(.latency_ms.p99) | \($hit) | \($cpu) | \(.errors) |"' <<<"$r" | tee -a "$ROWS"
}

echo "==> reads at concurrency $CONCURRENCY"
run "strong get, uniform" --workload get --route owner
run "strong get, zipf $ZIPF_THETA" --workload get --route owner --distribution zipf
run "eventual get, uniform" --workload get-eventual --route any
run "eventual get, zipf $ZIPF_THETA" --workload get-eventual --route any --distribution zipf

echo "==> eventual-read lag: eventual reads of 1000 keys while they are rewritten"
lag_buckets() { for url in "${GW_URLS[@]}"; do curl -s "$url/metrics" | grep '^tessera_eventual_lag_seconds_bucket'; done; }
lag0=$(lag_buckets)
"$TESSERA" --endpoints "$GW_ENDPOINTS" bench --workload put --keys 1000 --key-prefix lag/ \
  --concurrency 4 --duration "$((BENCH_SECS + 2))s" --warmup 0s --route owner --json >/dev/null &
writer=$!
"$TESSERA" --endpoints "$GW_ENDPOINTS" bench --workload get-eventual --keys 1000 --key-prefix lag/ \
  --concurrency 8 --duration "${BENCH_SECS}s" --warmup 2s --json >/dev/null || true
wait "$writer"
lag1=$(lag_buckets)
# Quantiles from the bucket counts gained during the run (upper bucket bound: an upper estimate).
# Buckets are cumulative: the q-quantile is at most the first bound whose count gained
# during the run reaches q of all samples.
lag=$(awk '
  function le(line) { match(line, /le="[^"]*"/); return substr(line, RSTART + 4, RLENGTH - 5) }
  NR == FNR { before[le($1)] += $2; next }
  { after[le($1)] += $2 }
  END { for (b in after) print b, after[b] - before[b] }' <(echo "$lag0") <(echo "$lag1") |
  sort -g | awk '
  { bound[NR] = $1; count[NR] = $2; if ($1 == "+Inf") total = $2 }
  END {
    if (total == 0) { print "no samples"; exit }
    out = ""
    for (i = 1; i <= NR; i++) if (!p50 && count[i] >= 0.5 * total) { p50 = 1; out = out "p50 ≤ " bound[i] " s, " }
    for (i = 1; i <= NR; i++) if (!p99 && count[i] >= 0.99 * total) { p99 = 1; out = out "p99 ≤ " bound[i] " s, " }
    printf "%s%d samples", out, total
  }')
echo "lag: $lag"

{
  cat <<EOT
# Reads: hot-key cache, eventual reads, lag

Produced by \`scripts/bench.sh reads\`. Client and servers (3 gateways, a compactor, etcd,
s3s-fs and the load generator) share one $(nproc)-core machine, so per-gateway CPU is a share
of the same two cores the client also uses.

| | |
|---|---|
| machine | $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), load average before start $LOAD_BEFORE |
| commit | \`$(commit_desc)\` |
| date | $(utc_now) |
| command | \`$CMD\` |
| data | $KEYS keys of $VALUE_SIZE bytes (preloaded in $preload_secs s, batched per shard), $SHARDS shards |
| runs | $BENCH_SECS s after 2 s warm-up, concurrency $CONCURRENCY, closed loop; strong reads straight to the owner, eventual reads spread over the 3 gateways |

| workload | ops/s | p50 ms | p99 ms | cache hit ratio | gateway CPU (gw1 / gw2 / gw3) | errors |
|---|---:|---:|---:|---:|---|---:|
EOT
  cat "$ROWS"
  cat <<EOT

Hit ratio: hot-key cache hits ÷ lookups on all gateways during the run (the owners' entries
for strong reads; for eventual reads, entries of the followers' answers, which live at most
\`reads.follower_cache_ttl\`). The preload writes every key through the owners, and each
write is recorded in the owner's cache, so strong reads start warm as far as the 128 MiB bound
allows.

Eventual-read lag (from a write's acceptance by its owner to a follower on another gateway
first serving it; \`tessera_eventual_lag_seconds\`, 1,000 keys rewritten by 4 writers while 8
readers read them eventually): $lag.
EOT
} >"$OUT"
echo "==> wrote $OUT"
