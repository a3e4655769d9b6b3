#!/usr/bin/env bash
# Runs every test of the workspace against real services, installing what they need first.
# This is the README's test command and what CI runs (.ci/run).
#
#   s3s-fs 0.14.1  the S3-compatible server the integration tests start, patched so that
#                  conditional writes are atomic (built once; scripts/lib/s3s-fs.sh says why)
#   etcd           Debian's etcd-server: the coordination service of cluster-mode tests (apt)
#   patch          applies the s3s-fs patches (apt)
#   promtool       Debian's prometheus: checks and unit-tests deploy/prometheus/alerts.yaml (apt)
#   chromium       Debian's chromium: the headless browser of the status-page test (apt)
#   kubernetes-validate, check-jsonschema, openapi-spec-validator
#                  schema validators of the Kubernetes manifests, compose.yaml and
#                  docs/openapi.json, schemas bundled: they work offline (pip)
#   kubectl        renders deploy/k8s (`kubectl kustomize`): must be on the machine already
#                  (Debian's kubernetes-client is too old for kustomize v5); the test fails
#                  if it is missing
#
# Set TESSERA_NO_INSTALL=1 to skip the install step (etcd must then be on PATH and the patched
# s3s-fs built, or TESSERA_S3S_FS set to an S3 server binary).
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_deps() {
  export PATH="$HOME/.cargo/bin:$PATH"
  local apt=()
  command -v etcd >/dev/null 2>&1 || apt+=(etcd-server)
  command -v patch >/dev/null 2>&1 || apt+=(patch)
  command -v promtool >/dev/null 2>&1 || apt+=(prometheus)
  command -v chromium >/dev/null 2>&1 || apt+=(chromium)
  if [ ${#apt[@]} -gt 0 ]; then
    echo "==> installing ${apt[*]} (Debian packages)"
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}"
    # The packages start a system etcd on 2379 and a Prometheus on 9090; the tests need neither.
    for svc in etcd prometheus; do
      need_root systemctl stop "$svc" >/dev/null 2>&1 || need_root service "$svc" stop >/dev/null 2>&1 || true
    done
  fi
  if ! python3 -c 'import kubernetes_validate, check_jsonschema, openapi_spec_validator' 2>/dev/null; then
    echo "==> installing schema validators (pip)"
    python3 -m pip install -q --disable-pip-version-check \
      kubernetes-validate==1.37.0 check-jsonschema==0.39.0 openapi-spec-validator
  fi
  source scripts/lib/s3s-fs.sh
}

[ "${TESSERA_NO_INSTALL:-0}" = 1 ] || install_deps
export PATH="$HOME/.cargo/bin:$PATH"

echo "==> cargo test --workspace"
cargo test --workspace --no-fail-fast "$@"
