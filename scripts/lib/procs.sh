# shellcheck shell=bash
# Process handling for the benchmarks that start local services (source it): a run directory
# and every started process, both removed on exit.
#
# port needs PORT_BASE, below 32768: Linux hands out local ports for outgoing
# connections from 32768 up (ip_local_port_range), so a service port in that range can be
# taken by a client socket a moment before the service binds it ("Address already in use";
# seen with the old defaults 42000-46000). Each benchmark has its own default, 22000-29000.
# RUN_NAME (default tessera-bench) names the run directory; KEEP_RUN=1 keeps it (the
# processes' logs) on exit. Defines: RUN, start, pid_of, cpu_ticks, wait_port, port. A script
# may set S3_TMPFS_DIR to another directory for cleanup to remove.

RUN=$(mktemp -d -t "${RUN_NAME:-tessera-bench}.XXXXXX")
PIDS=()
declare -A PID_OF=()
cleanup() { # in reverse start order, so gateways stop while etcd and the S3 server still run
  local i pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  if [ "${KEEP_RUN:-0}" = 1 ]; then echo "run directory kept: $RUN" >&2; else rm -rf "$RUN"; fi
  rm -rf ${S3_TMPFS_DIR:+"$S3_TMPFS_DIR"}
}
trap cleanup EXIT INT TERM

start() { # name, command... (output in $RUN/name.out and .log)
  local name=$1; shift
  "$@" >"$RUN/$name.out" 2>"$RUN/$name.log" &
  PIDS+=($!)
  PID_OF[$name]=$!
}

pid_of() { echo "${PID_OF[$1]}"; }

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wait_port() { # port; on failure, shows the log tails of the started processes that exited
  for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2
  local name
  for name in "${!PID_OF[@]}"; do
    kill -0 "${PID_OF[$name]}" 2>/dev/null && continue
    echo "--- $name exited; end of $RUN/$name.log:" >&2
    tail -n 5 "$RUN/$name.log" >&2
  done
  return 1
}

port() { echo $((PORT_BASE + $1)); }
