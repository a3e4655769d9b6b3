#!/usr/bin/env bash
# Runs every test of the workspace against real services, installing what they need first.
# This is the README's test command and what CI runs (.ci/run).
#
#   s3s-fs 0.14.1  the S3-compatible server the integration tests start, patched so that
#                  conditional writes are atomic (built once; scripts/lib/s3s-fs.sh says why)
#   etcd           Debian's etcd-server: the coordination service of cluster-mode tests (apt)
#
# Set TESSERA_NO_INSTALL=1 to skip the install step (everything must then be on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_deps() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v etcd >/dev/null 2>&1; then
    echo "==> installing etcd-server (Debian package)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server
    # The package starts a system etcd on 2379; the tests run their own on free ports.
    need_root systemctl stop etcd >/dev/null 2>&1 || need_root service etcd stop >/dev/null 2>&1 || true
  fi
  source scripts/lib/s3s-fs.sh
}

[ "${TESSERA_NO_INSTALL:-0}" = 1 ] || install_deps
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
