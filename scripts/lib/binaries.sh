# shellcheck shell=bash
# The binaries a benchmark runs (source it): GATEWAY, COMPACTOR, TESSERA, and s3_server.
#
# BIN_DIR unset: builds the release binaries with cargo and uses target/release; set: uses the
# binaries there without building (e.g. A/B runs of saved builds).

if [ -z "${BIN_DIR:-}" ]; then
  echo "==> building (release)"
  cargo build --release --quiet -p gateway -p compactor -p tessera-cli
fi
BIN_DIR=${BIN_DIR:-target/release}
GATEWAY=$BIN_DIR/tessera-gateway
COMPACTOR=$BIN_DIR/tessera-compactor
TESSERA=$BIN_DIR/tessera
export BIN_DIR GATEWAY COMPACTOR TESSERA

# s3_server: sets S3S_FS, the S3 server's binary, unless already set: TESSERA_S3S_FS if set (as
# for the tests), else the patched s3s-fs, built once (scripts/lib/s3s-fs.sh). Called when a
# benchmark first starts an S3 server, so the others never build it.
s3_server() {
  [ -z "${S3S_FS:-}" ] || return 0
  if [ -n "${TESSERA_S3S_FS:-}" ]; then
    S3S_FS=$TESSERA_S3S_FS
  else
    # shellcheck source=scripts/lib/s3s-fs.sh
    source scripts/lib/s3s-fs.sh
  fi
  export S3S_FS
}
