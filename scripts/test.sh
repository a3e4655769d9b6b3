#!/usr/bin/env bash
# Runs every test of the workspace against real services, installing what they need first.
# This is the README's test command and what CI runs (.ci/run).
#
#   s3s-fs 0.14.1  the S3-compatible server the integration tests start, patched so that
#                  conditional writes are atomic (built once; scripts/lib/s3s-fs.sh says why)
#   etcd           Debian's etcd-server: the coordination service of cluster-mode tests (apt)
#   patch          applies the s3s-fs patches (apt)
#
# Set TESSERA_NO_INSTALL=1 to skip the install step (etcd must then be on PATH and the patched
# s3s-fs built, or TESSERA_S3S_FS set to an S3 server binary).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_deps() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v etcd >/dev/null 2>&1 || ! command -v patch >/dev/null 2>&1; then
    echo "==> installing etcd-server and patch (Debian packages)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server patch
    # The package starts a system etcd on 2379; the tests run their own on free ports.
    need_root systemctl stop etcd >/dev/null 2>&1 || need_root service etcd stop >/dev/null 2>&1 || true
  fi
  source scripts/lib/s3s-fs.sh
}

[ "${TESSERA_NO_INSTALL:-0}" = 1 ] || install_deps
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
