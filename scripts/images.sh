#!/usr/bin/env bash
# make images: OCI image archives of the release binaries, without Docker.
#
#   scripts/images.sh [runtime] [operator] [backup] [nats]   (no argument: all four)
#
#   $CHORUS_CACHE/images/chat-runtime.tar     ghcr.io/chorus-dev/chat-runtime:0.1.0, and the
#                                             same build as :0.2.0 and :0.3.0, so releases
#                                             (canary, blue-green) can be tried on the local node
#   $CHORUS_CACHE/images/chat-runtime-read-only.tar  localhost/chorus/chat-runtime-read-only:0.1.0:
#                                             the same binary with PGOPTIONS making its database
#                                             session read-only (a release whose sends fail)
#   $CHORUS_CACHE/images/chorus-operator.tar  ghcr.io/chorus-dev/chorus-operator:0.1.0
#   $CHORUS_CACHE/images/chorus-backup.tar    ghcr.io/chorus-dev/chorus-backup:0.1.0: Debian's
#                                             PostgreSQL 15 client binaries (pg_dump, pg_restore,
#                                             psql), busybox (busybox-static) and backup/chorus-backup
#   $CHORUS_CACHE/images/nats-server.tar      localhost/chorus/nats-server:<version>: nats-server
#                                             as scripts/build-tools.sh builds it from its Go
#                                             module, for the in-cluster NATS broker test
#
# Each image holds the binary, the shared libraries `ldd` names, and
# /etc/passwd with the non-root user 65532; entrypoint, user and ports are the
# Dockerfiles' (tests/e2e checks that both agree). When a local node runs
# (make cluster-up), the images built by this run are imported into its
# containerd at once; a node started later imports them itself.
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(runtime operator backup nats)
for w in "${want[@]}"; do
  case "$w" in runtime|operator|backup|nats) ;; *) die "unknown image '$w': choose from runtime, operator, backup, nats" ;; esac
done
wants() { [[ " ${want[*]} " == *" $1 "* ]]; }

"$CHORUS_ROOT/scripts/build-control-plane.sh"
out=$CHORUS_CACHE/images
mkdir -p "$out"
built=()

if wants runtime || wants operator; then
  step "building the release binaries (cargo build --release; a cold build takes about 6 minutes)"
  cargo build --release --locked -q -p chat-runtime --bin chat-runtime -p chorus-operator --bin chorus-operator
fi
rel=$CARGO_TARGET_DIR/release

# libs BINARY DIR: the shared libraries ldd names, at the same paths.
libs() {
  local lib
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$2$(dirname "$lib")"
    cp -L "$lib" "$2$lib"
  done
}

# rootfs BINARY DIR: the binary at /usr/local/bin, its shared libraries at
# the paths ldd reports, and a passwd/group naming the non-root user.
rootfs() {
  local bin=$1 dir=$2
  rm -rf "$dir"; mkdir -p "$dir/usr/local/bin" "$dir/etc" "$dir/tmp"
  chmod 1777 "$dir/tmp"
  cp "$bin" "$dir/usr/local/bin/"
  libs "$bin" "$dir"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$dir/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$dir/etc/group"
  mkdir -p "$dir/home/nonroot"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if wants runtime; then
  rootfs "$rel/chat-runtime" "$work/runtime"
  "$CP_BIN/chorus-image" --rootfs "$work/runtime" --out "$out/chat-runtime.tar" \
    --tag ghcr.io/chorus-dev/chat-runtime:0.1.0 --tag ghcr.io/chorus-dev/chat-runtime:0.2.0 \
    --tag ghcr.io/chorus-dev/chat-runtime:0.3.0 \
    --entrypoint /usr/local/bin/chat-runtime --cmd serve --user 65532:65532 --port 8080 --port 9090
  built+=("$out/chat-runtime.tar")
  # The same binary with a read-only database session baked into the image
  # (PGOPTIONS): it starts, serves reads, and PostgreSQL refuses its writes.
  # The release analysis e2e uses it as a candidate that really fails sends.
  "$CP_BIN/chorus-image" --rootfs "$work/runtime" --out "$out/chat-runtime-read-only.tar" \
    --tag localhost/chorus/chat-runtime-read-only:0.1.0 \
    --env "PGOPTIONS=-c default_transaction_read_only=on" \
    --entrypoint /usr/local/bin/chat-runtime --cmd serve --user 65532:65532 --port 8080 --port 9090
  built+=("$out/chat-runtime-read-only.tar")
fi
if wants operator; then
  rootfs "$rel/chorus-operator" "$work/operator"
  # glibc's malloc makes up to 8 arenas per core, and memory freed after a
  # burst of reconciles stays resident in them: with 2, 1,000 tenants held
  # 48.2 MiB RSS after an idle resync instead of 64.8 (mimalloc: 71.8);
  # docs/operations.md, "Scale".
  "$CP_BIN/chorus-image" --rootfs "$work/operator" --tag ghcr.io/chorus-dev/chorus-operator:0.1.0 \
    --out "$out/chorus-operator.tar" --entrypoint /usr/local/bin/chorus-operator --user 65532:65532 \
    --env MALLOC_ARENA_MAX=2
  built+=("$out/chorus-operator.tar")
fi
if wants backup; then
  # Debian's packages on this (Debian 12) machine: the client binaries of the
  # PostgreSQL major the server runs (pg_dump must not be older), and a
  # static busybox for the script's shell and tools.
  pgbin=/usr/lib/postgresql/15/bin
  if [ ! -x "$pgbin/pg_dump" ] || [ ! -x /bin/busybox ]; then
    if [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client-15 busybox-static >/dev/null || {
        apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client-15 busybox-static >/dev/null; }
    fi
    [ -x "$pgbin/pg_dump" ] && [ -x /bin/busybox ] ||
      die "the backup image needs Debian's postgresql-client-15 and busybox-static: sudo apt-get install postgresql-client-15 busybox-static"
  fi
  rootfs "$pgbin/pg_dump" "$work/backup"
  for b in pg_restore psql; do
    cp "$pgbin/$b" "$work/backup/usr/local/bin/"
    libs "$pgbin/$b" "$work/backup"
  done
  install -m 0755 backup/chorus-backup "$work/backup/usr/local/bin/chorus-backup"
  mkdir -p "$work/backup/bin"
  cp /bin/busybox "$work/backup/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ -e "$work/backup/bin/$applet" ] || ln -s busybox "$work/backup/bin/$applet"
  done
  "$CP_BIN/chorus-image" --rootfs "$work/backup" --tag ghcr.io/chorus-dev/chorus-backup:0.1.0 \
    --out "$out/chorus-backup.tar" --entrypoint /usr/local/bin/chorus-backup --user 65532:65532 \
    --env HOME=/home/nonroot
  built+=("$out/chorus-backup.tar")
fi
if wants nats; then
  "$CHORUS_ROOT/scripts/build-tools.sh"
  nats_version=$(sed 's/.*@v//' "$TOOLS_BIN/nats-server.stamp")
  rootfs "$TOOLS_BIN/nats-server" "$work/nats"
  "$CP_BIN/chorus-image" --rootfs "$work/nats" --tag "localhost/chorus/nats-server:$nats_version" \
    --out "$out/nats-server.tar" --entrypoint /usr/local/bin/nats-server --user 65532:65532 --port 4222
  built+=("$out/nats-server.tar")
fi

# Import into every running local node.
for sock in "$CHORUS_CACHE"/run/*/node/containerd/containerd.sock; do
  [ -S "$sock" ] || continue
  for tar in "${built[@]}"; do
    "$CP_BIN/ctr" --address "$sock" -n k8s.io images import "$tar" 2>&1 >/dev/null | { grep -v DEPRECATION >&2 || true; }
  done
  step "imported the images into the node at ${sock%/node/*}"
done
step "built ${built[*]}"
