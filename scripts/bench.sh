#!/usr/bin/env bash
# The benchmarks' one entry point: scripts/bench.sh NAME [args]; alone, it lists them.
#
#   scripts/bench.sh                                    # the benchmarks, one line each
#   scripts/bench.sh NAME --help                        # what NAME does, and its settings
#   WORKLOADS="put get" CONCURRENCY=64 scripts/bench.sh vs-etcd
#
# Benchmark NAME is scripts/bench/NAME.sh: its settings are environment variables, listed in
# its header; those that write a record write docs/bench/NAME.md (OUT=FILE elsewhere), with the
# machine, commit and command. The setup they share is in scripts/lib/. Every benchmark that
# starts services takes:
#   BIN_DIR         unset: build the release binaries with cargo and use target/release;
#                   set: use the binaries there, without building (A/B runs of saved builds)
#   TESSERA_S3S_FS  an S3 server binary to use instead of the patched s3s-fs, which is
#                   otherwise built once into target/s3s-fs-patched (scripts/lib/s3s-fs.sh)
#   PORT_BASE       every port is PORT_BASE + a small offset (each benchmark has its own)
#   KEEP_RUN=1      keep the run directory (every process's log) on exit
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# = 0 ]; then
  echo "usage: scripts/bench.sh NAME [args]   (settings: environment variables, NAME --help)"
  for f in scripts/bench/*.sh; do
    printf '  %-20s %s\n' "$(basename "$f" .sh)" "$(sed -n '2s/^# //p' "$f")"
  done
  exit 0
fi
f=scripts/bench/$1.sh
shift
[ -f "$f" ] || { echo "no benchmark $f; scripts/bench.sh lists them" >&2; exit 2; }
case "${1:-}" in
  -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$f" | sed '/^shellcheck /,$d'; exit 0 ;;
esac
exec "$f" "$@"
