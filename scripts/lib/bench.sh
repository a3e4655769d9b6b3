# shellcheck shell=bash
# The common start of every benchmark (scripts/bench/NAME.sh sources it first): strict mode, the
# repository root as working directory, cargo's bin on PATH, the settings recorded with the
# results, and what every record says about the machine and the commit.
#
# Defines BENCH (the benchmark's name), CMD (the command as given, with the settings set in the
# environment), LOAD_BEFORE (the load average before the run started anything: other work on
# the machine skews every figure), and setting, need, loadavg, commit_desc, machine, utc_now,
# now, since, cpu_pct.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
BENCH=$(basename "$0" .sh)
CMD="scripts/bench.sh $BENCH"
# shellcheck disable=SC2034 # read by the benchmarks that source this
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# setting NAME DEFAULT: NAME keeps a value given in the environment, which CMD then records;
# else it is DEFAULT.
setting() {
  if [ -n "${!1+x}" ]; then CMD="$1=\"${!1}\" $CMD"; else printf -v "$1" '%s' "$2"; fi
}

need() { # tools...
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$t is missing (scripts/bench.sh $BENCH --help)" >&2; exit 1; }
  done
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# The commit measured, flagged when the code or scripts differ from it.
commit_desc() {
  local c
  c=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- src gateway compactor cli scripts Cargo.toml Cargo.lock ||
    c="$c (with uncommitted changes)"
  echo "$c"
}

# "N cores, CPU model, R GiB RAM".
machine() {
  echo "$(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM"
}

utc_now() { date -u +"%Y-%m-%d %H:%M UTC"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; } # seconds since a now()

# CPU a process used between two cpu_ticks readings SECONDS apart, in % of one core.
cpu_pct() { # ticks before, ticks after, seconds
  awk -v a="$1" -v b="$2" -v t="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%d", (b - a) / hz / t * 100 }'
}
