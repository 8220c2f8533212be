#!/usr/bin/env bash
# make bench: the chat-runtime figures in the README. A release build of the
# runtime and the load generator, the dev PostgreSQL on this machine (default
# settings: fsync on), loopback only. Each scenario starts its own runtime on
# a fresh database and stops it afterwards.
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
step "building release binaries"
cargo build -q --release --locked -p chat-runtime -p chorus-load
BIN=$CARGO_TARGET_DIR/release
DB=$("$CHORUS_ROOT/scripts/db.sh" up dev)
# 10,000 connections need 10,000 descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
run() { step "chat-load $*"; "$BIN/chat-load" --runtime "$BIN/chat-runtime" --database-url "$DB" "$@"; }
run idle --connections "${BENCH_IDLE:-10000}"
run fanout --members "${BENCH_MEMBERS:-1000}" --rate "${BENCH_RATE:-100}" --seconds "${BENCH_SECONDS:-30}"
run throughput --rooms 100 --senders "${BENCH_SENDERS:-200}" --seconds "${BENCH_SECONDS:-20}"
