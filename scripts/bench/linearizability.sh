#!/usr/bin/env bash
# Long linearizability runs outside CI: 3 x 45 s of the CAS-heavy test, no faults (~3 min).
#
# The CAS-heavy, fault-free workload of tests/linearizability.rs with the hot-key cache on and
# *no* fault injection (the settings a user runs), RUNS times for SECS seconds each. Prints one
# line per run and a summary; exits 1 if any run found a non-linearizable key.
#
#   scripts/bench.sh linearizability                 # 3 runs of 45 s
#   RUNS=5 SECS=60 TEST=strong_operations_are_linearizable_under_partitions scripts/bench.sh linearizability
#
# Settings: RUNS (3) SECS (45) RECORD_DELAY_MS (0: no fault injection)
#           TEST (cas_heavy_with_the_cache_is_linearizable_without_faults)
# Needs what scripts/test.sh installs (etcd, the patched s3s-fs); set TESSERA_NO_INSTALL=1 there.
# shellcheck source=scripts/lib/bench.sh
source "$(dirname "$0")/../lib/bench.sh"
set +e # a failed run is a result: counted, not the end of the script
RUNS=${RUNS:-3}
SECS=${SECS:-45}
TEST=${TEST:-cas_heavy_with_the_cache_is_linearizable_without_faults}
export TESSERA_LINEARIZABILITY_SECS=$SECS
export TESSERA_LINEARIZABILITY_RECORD_DELAY_MS=${RECORD_DELAY_MS:-0}
cargo test --quiet --test linearizability --no-run >/dev/null 2>&1 || {
  echo "build failed" >&2
  exit 2
}
failed=0
for run in $(seq 1 "$RUNS"); do
  log=$(mktemp)
  if cargo test --quiet --test linearizability "$TEST" -- --exact --nocapture >"$log" 2>&1; then
    ops=$(grep -oE '^[a-z-]+: [0-9]+ ops' "$log" | awk '{s += $2} END {print s + 0}')
    echo "run $run/$RUNS: linearizable ($ops operations, ${SECS}s, git $(git rev-parse --short HEAD))"
  else
    failed=$((failed + 1))
    keys=$(grep -oE '[0-9]+ of [0-9]+ keys not linearizable' "$log" || echo "failed (see $log)")
    echo "run $run/$RUNS: NOT linearizable: $keys (${SECS}s, git $(git rev-parse --short HEAD))"
  fi
done
echo "$((RUNS - failed)) of $RUNS runs linearizable"
[ "$failed" -eq 0 ]
