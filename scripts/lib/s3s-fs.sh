# Shared by the benchmark scripts (source it): the S3 server they run.
#
# s3s-fs 0.14.1 answers a LIST by walking the whole bucket and filtering by prefix, so each LIST
# costs O(objects in the bucket), and SlateDB's manifest and WAL listings (compactors list every
# claimed shard's manifest each poll) saturate it as the bucket grows: an artefact of the test
# server, which a real S3 server (an index per prefix) does not have. A copy patched to walk only
# the prefix's directory (scripts/s3s-fs-list-prefix.patch; answers unchanged) is built once into
# target/s3s-fs-patched. Defines S3S_FS, the path of that binary.

S3S_FS_DIR=target/s3s-fs-patched
S3S_FS=$S3S_FS_DIR/bin/s3s-fs
if [ ! -x "$S3S_FS" ] || [ scripts/s3s-fs-list-prefix.patch -nt "$S3S_FS" ]; then
  s3s_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/s3s-fs-0.14.1 2>/dev/null | head -n 1)
  if [ -z "$s3s_src" ]; then
    echo "s3s-fs 0.14.1 sources missing: cargo install s3s-fs@0.14.1 --features binary --locked" >&2
    exit 1
  fi
  echo "==> building a patched s3s-fs into $S3S_FS_DIR (once; about 4 CPU-minutes)"
  rm -rf "$S3S_FS_DIR/src"; mkdir -p "$S3S_FS_DIR"; cp -r "$s3s_src" "$S3S_FS_DIR/src"
  patch -s -d "$S3S_FS_DIR/src" -p1 <scripts/s3s-fs-list-prefix.patch
  printf '\n[workspace]\n' >>"$S3S_FS_DIR/src/Cargo.toml"  # not a member of our workspace
  cargo install --quiet --path "$S3S_FS_DIR/src" --features binary --locked --root "$S3S_FS_DIR" \
    --target-dir "$S3S_FS_DIR/build"
  rm -rf "$S3S_FS_DIR/build"
fi
