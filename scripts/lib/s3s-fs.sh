# shellcheck shell=bash
# The S3 server of the tests and benchmark scripts (source it): s3s-fs 0.14.1 with two patches,
# built once into target/s3s-fs-patched. Defines S3S_FS, the path of that binary.
#
# - scripts/s3s-fs-conditional-writes.patch: stock s3s-fs checks If-None-Match / If-Match and
#   then writes, without a lock between the two, so of 30 concurrent create-if-absent PUTs of
#   one key up to 20 succeeded (measured). SlateDB's fencing (WAL objects, manifests, the
#   compactor's epoch) relies on exactly one succeeding, as on S3 and MinIO: with the stock
#   server two writers could both "win", and a test of fencing could pass or fail for the
#   server's reasons. Patched: a per-key lock spans the check and the write.
# - scripts/s3s-fs-list-prefix.patch: stock s3s-fs answers a LIST by walking the whole bucket
#   and filtering by prefix, so each LIST costs O(objects in the bucket) and SlateDB's manifest
#   and WAL listings saturate it as the bucket grows, which a real S3 server (an index per
#   prefix) does not do. Patched: walk only the prefix's directory (answers unchanged).

S3S_FS_VERSION=0.14.1
S3S_FS_DIR=target/s3s-fs-patched
S3S_FS=$S3S_FS_DIR/bin/s3s-fs
S3S_FS_PATCHES="scripts/s3s-fs-conditional-writes.patch scripts/s3s-fs-list-prefix.patch"

s3s_fs_stale() {
  [ -x "$S3S_FS" ] || return 0
  local p
  for p in $S3S_FS_PATCHES; do [ "$p" -nt "$S3S_FS" ] && return 0; done
  return 1
}

if s3s_fs_stale; then
  # shellcheck disable=SC2012 # one directory name, no odd characters: ls is enough
  s3s_src() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/s3s-fs-$S3S_FS_VERSION 2>/dev/null | head -n 1; }
  if [ -z "$(s3s_src)" ]; then
    echo "==> fetching the s3s-fs $S3S_FS_VERSION sources"
    fetch_dir=$(mktemp -d)
    mkdir -p "$fetch_dir/src" && touch "$fetch_dir/src/lib.rs"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\ns3s-fs = { version = "=%s", features = ["binary"] }\n[workspace]\n' \
      "$S3S_FS_VERSION" >"$fetch_dir/Cargo.toml"
    cargo fetch --quiet --manifest-path "$fetch_dir/Cargo.toml"
    rm -rf "$fetch_dir"
  fi
  echo "==> building the patched s3s-fs into $S3S_FS_DIR (once; about 4 CPU-minutes)"
  rm -rf "$S3S_FS_DIR"; mkdir -p "$S3S_FS_DIR"; cp -r "$(s3s_src)" "$S3S_FS_DIR/src"
  chmod -R u+w "$S3S_FS_DIR/src"
  for p in $S3S_FS_PATCHES; do patch -s -d "$S3S_FS_DIR/src" -p1 <"$p"; done
  printf '\n[workspace]\n' >>"$S3S_FS_DIR/src/Cargo.toml"  # not a member of our workspace
  cargo install --quiet --path "$S3S_FS_DIR/src" --features binary --locked --root "$S3S_FS_DIR" \
    --target-dir "$S3S_FS_DIR/build"
  rm -rf "$S3S_FS_DIR/build"
fi
