#!/usr/bin/env bash
# make images: OCI image archives of the release binaries, without Docker.
#
#   $CHORUS_CACHE/images/chat-runtime.tar     ghcr.io/chorus-dev/chat-runtime:0.1.0, and the
#                                             same build as :0.2.0 and :0.3.0, so releases
#                                             (canary, blue-green) can be tried on the local node
#   $CHORUS_CACHE/images/chat-runtime-read-only.tar  localhost/chorus/chat-runtime-read-only:0.1.0:
#                                             the same binary with PGOPTIONS making its database
#                                             session read-only (a release whose sends fail)
#   $CHORUS_CACHE/images/chorus-operator.tar  ghcr.io/chorus-dev/chorus-operator:0.1.0
#
# Each image holds the binary, the shared libraries `ldd` names, and
# /etc/passwd with the non-root user 65532; entrypoint, user and ports are the
# Dockerfiles' (tests/e2e checks that both agree). When a local node runs
# (make cluster-up), the images are imported into its containerd at once;
# a node started later imports them itself.
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
"$CHORUS_ROOT/scripts/build-control-plane.sh"
out=$CHORUS_CACHE/images
mkdir -p "$out"

step "building the release binaries (cargo build --release; a cold build takes about 6 minutes)"
cargo build --release --locked -q -p chat-runtime --bin chat-runtime -p chorus-operator --bin chorus-operator
rel=$CARGO_TARGET_DIR/release

# rootfs BINARY DIR: the binary at /usr/local/bin, its shared libraries at
# the paths ldd reports, and a passwd/group naming the non-root user.
rootfs() {
  local bin=$1 dir=$2
  rm -rf "$dir"; mkdir -p "$dir/usr/local/bin" "$dir/etc" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$bin" "$dir/usr/local/bin/"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$dir$(dirname "$lib")"
    cp -L "$lib" "$dir$lib"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$dir/etc/group"
  mkdir -p "$dir/home/nonroot"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs "$rel/chat-runtime" "$work/runtime"
"$CP_BIN/chorus-image" --rootfs "$work/runtime" --out "$out/chat-runtime.tar" \
  --tag ghcr.io/chorus-dev/chat-runtime:0.1.0 --tag ghcr.io/chorus-dev/chat-runtime:0.2.0 \
  --tag ghcr.io/chorus-dev/chat-runtime:0.3.0 \
  --entrypoint /usr/local/bin/chat-runtime --cmd serve --user 65532:65532 --port 8080 --port 9090
# The same binary with a read-only database session baked into the image
# (PGOPTIONS): it starts, serves reads, and PostgreSQL refuses its writes.
# The release analysis e2e uses it as a candidate that really fails sends.
"$CP_BIN/chorus-image" --rootfs "$work/runtime" --out "$out/chat-runtime-read-only.tar" \
  --tag localhost/chorus/chat-runtime-read-only:0.1.0 \
  --env "PGOPTIONS=-c default_transaction_read_only=on" \
  --entrypoint /usr/local/bin/chat-runtime --cmd serve --user 65532:65532 --port 8080 --port 9090
rootfs "$rel/chorus-operator" "$work/operator"
"$CP_BIN/chorus-image" --rootfs "$work/operator" --tag ghcr.io/chorus-dev/chorus-operator:0.1.0 \
  --out "$out/chorus-operator.tar" --entrypoint /usr/local/bin/chorus-operator --user 65532:65532

# Import into every running local node.
for sock in "$CHORUS_CACHE"/run/*/node/containerd/containerd.sock; do
  [ -S "$sock" ] || continue
  for tar in "$out"/*.tar; do
    "$CP_BIN/ctr" --address "$sock" -n k8s.io images import "$tar" 2>&1 >/dev/null | { grep -v DEPRECATION >&2 || true; }
  done
  step "imported the images into the node at ${sock%/node/*}"
done
step "images in $out"
