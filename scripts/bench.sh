#!/usr/bin/env bash
# make bench: the chat-runtime figures in the README. A release build of the
# runtime and the load generator, the dev PostgreSQL on this machine (default
# settings: fsync and synchronous_commit on, so every acked message is
# durable), loopback only. Each scenario starts its own runtime on a fresh
# database and stops it afterwards. The generator runs on the same 2 cores.
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
step "building release binaries"
cargo build -q --release --locked -p chat-runtime -p chorus-load
BIN=$CARGO_TARGET_DIR/release
DB=$("$CHORUS_ROOT/scripts/db.sh" up dev)
# 10,000 connections need 10,000 descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# A scenario that finds a gap, a duplicate or a reader closed early exits
# non-zero after printing its figures; the others still run, and the whole
# command fails at the end naming it.
failed=()
run() {
  step "chat-load $*"
  "$BIN/chat-load" --runtime "$BIN/chat-runtime" --database-url "$DB" "$@" || failed+=("$*")
}
run idle --connections 10000
run fanout --members 1000 --rate 50 --seconds 30
run fanout --members 1000 --rate 100 --seconds 30
run throughput --rooms 100 --senders 200 --window 4 --seconds 20
run throughput --rooms 100 --senders 200 --window 64 --seconds 20
if [ ${#failed[@]} -gt 0 ]; then
  printf 'scenario failed: chat-load %s\n' "${failed[@]}" >&2
  exit 1
fi
