#!/usr/bin/env bash
# Scale test: 1024 shards over 8 gateways, then a 9th gateway joins (3-5 min).
#
# Starts, on loopback ports and in a temporary directory: one etcd (Debian's etcd-server), one
# s3s-fs S3 server, GATEWAYS gateways in cluster mode with SHARDS shards, and one
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
# Everything it started is stopped on exit, and the temporary directory removed (KEEP_RUN=1
# keeps it). The orchestration is scripts/bench/scale-test.py; this file gives it its settings
# and binaries.
#
#   scripts/bench.sh scale-test
#
# Settings (environment): GATEWAYS (8, at most 98), SHARDS (1024, at most 10000), IDLE_SECS (30),
#   BENCH_SECS (10; 0 skips the bench), MANIFEST_POLL (60s, the default: the gateways'
#   storage.manifest_poll_interval), COMPACTOR_POLL (5s, the default: the compactor's
#   --poll-interval, how often it lists the owners' compaction hints),
#   PORT_BASE (23000), OUT (docs/bench/scale-test.md), TIMEOUT (300: seconds allowed per
#   waiting step), BIN_DIR, TESSERA_S3S_FS (scripts/bench.sh). Takes 3-5 minutes when the
#   machine keeps up.
# (Before the commit log's slower polls and compaction hints, the 1 s polls of 1024 idle shards
# made ~4,000 object-store requests a second and saturated a 2-core machine.)
#
# Needs: etcd (apt-get install etcd-server), python3, curl.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
BENCH_START=$(date +%s)
setting GATEWAYS 8
setting SHARDS 1024
setting IDLE_SECS 30
setting BENCH_SECS 10
setting MANIFEST_POLL 60s
setting COMPACTOR_POLL 5s
setting OUT docs/bench/scale-test.md
PORT_BASE=${PORT_BASE:-23000}
TIMEOUT=${TIMEOUT:-300}
need etcd python3 curl
# shellcheck source=scripts/lib/binaries.sh
source scripts/lib/binaries.sh
s3_server
# shellcheck disable=SC2090 # CMD is the command as text, for the record; never run
export GATEWAYS SHARDS IDLE_SECS BENCH_SECS MANIFEST_POLL COMPACTOR_POLL OUT PORT_BASE TIMEOUT \
  CMD LOAD_BEFORE BENCH_START
exec python3 scripts/bench/scale-test.py "$@"
