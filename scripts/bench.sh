#!/usr/bin/env bash
# make bench: the chat-runtime figures in the README, side by side with
# Centrifugo. A release build of the runtime and the load generator
# (`chat-load`, tests/load), the dev PostgreSQL on this machine (default
# settings: fsync and synchronous_commit on, so every acked message is
# durable), loopback only. Each scenario starts its own server (Chorus on a
# fresh database) and stops it afterwards, then runs again against
# Centrifugo (built from its Go module, cached under $CHORUS_CACHE/bench;
# memory engine, history on) with the same generator and the same
# scenario. The generator runs on the same 2 cores.
#
# Environment: CHORUS_BENCH_DATABASE_URL (admin URL of another PostgreSQL
# instead of the dev one), FANOUT_RUNS (runs of the 100 msg/s fan-out, 3),
# CENTRIFUGO=0 (Chorus only).
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
CENTRIFUGO_MODULE=github.com/centrifugal/centrifugo/v6
CENTRIFUGO_VERSION=v6.9.1
FANOUT_RUNS=${FANOUT_RUNS:-3}
step "building release binaries"
cargo build -q --release --locked -p chat-runtime -p chorus-load
BIN=$CARGO_TARGET_DIR/release
CF_DIR=$CHORUS_CACHE/bench/centrifugo-$CENTRIFUGO_VERSION
CF=$CF_DIR/centrifugo
if [ "${CENTRIFUGO:-1}" = 1 ] && [ ! -x "$CF" ]; then
  step "building Centrifugo $CENTRIFUGO_VERSION from its Go module (cold: about 10 minutes)"
  export PATH=$PATH:/usr/local/go/bin
  mkdir -p "$CF_DIR"
  GOBIN=$CF_DIR go install -ldflags "-s -w" "$CENTRIFUGO_MODULE@$CENTRIFUGO_VERSION"
fi
DB=${CHORUS_BENCH_DATABASE_URL:-$("$CHORUS_ROOT/scripts/db.sh" up dev)}
# 10,000 connections need 10,000 descriptors in each process.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# A scenario that finds a gap, a duplicate or a reader closed early exits
# non-zero after printing its figures; the others still run, and the whole
# command fails at the end naming it.
failed=()
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# run SERVER LABEL ARGS...: one scenario against one server; keeps its
# `result:` line, tagged with the server and the label.
run() {
  local server=$1 label=$2 out rc=0
  shift 2
  local target=(--runtime "$BIN/chat-runtime" --database-url "$DB")
  [ "$server" = centrifugo ] && target=(--centrifugo "$CF")
  step "$server: chat-load $*"
  out=$("$BIN/chat-load" "${target[@]}" "$@" 2> >(grep -v '^{' >&2)) || rc=$?
  printf '%s\n' "$out"
  [ $rc -eq 0 ] || failed+=("$server $*")
  printf '%s\n' "$out" | sed -n "s/^result: /$server $label /p" >>"$results"
}
both() {
  run chorus "$@"
  [ "${CENTRIFUGO:-1}" = 1 ] && run centrifugo "$@"
  return 0
}
both idle idle --connections 10000
both fanout50 fanout --members 1000 --rate 50 --seconds 30
# Each 100 msg/s run three ways, next to each other: Chorus durable,
# Centrifugo, and Chorus with commits that do not wait for the disk (what
# the fan-out itself costs, apart from the WAL flush of each message). A
# `-relaxed` row is compared with Centrifugo's row of the same name without
# `-relaxed`.
for i in $(seq 1 "$FANOUT_RUNS"); do
  both "fanout100-run$i" fanout --members 1000 --rate 100 --seconds 30
  CHAT_DATABASE_SYNCHRONOUS_COMMIT=off run chorus "fanout100-relaxed-run$i" \
    fanout --members 1000 --rate 100 --seconds 30
done
run chorus throughput4 throughput --rooms 100 --senders 200 --window 4 --seconds 20
both throughput64 throughput --rooms 100 --senders 200 --window 64 --seconds 20
CHAT_DATABASE_SYNCHRONOUS_COMMIT=off run chorus throughput64-relaxed \
  throughput --rooms 100 --senders 200 --window 64 --seconds 20

# The table: one row per scenario and figure, Chorus, Centrifugo, ratio.
echo
echo "| scenario | figure | Chorus | Centrifugo | Chorus / Centrifugo |"
echo "|---|---|---|---|---|"
awk '
  { server = $1; label = $2
    for (i = 4; i <= NF; i++) { split($i, kv, "="); v[server, label, kv[1]] = kv[2]; keys[label, kv[1]] = 1 }
    if (!(label in seen)) { seen[label] = 1; order[++n] = label } }
  END {
    split("open_s kib_per_conn p50_ms p99_ms deliveries_per_s acked_per_s clean", figs, " ")
    for (i = 1; i <= n; i++) for (j = 1; j <= 7; j++) {
      l = order[i]; f = figs[j]
      if (!((l, f) in keys)) continue
      a = v["chorus", l, f]; peer = l; sub(/-relaxed/, "", peer); b = v["centrifugo", peer, f]
      r = (a != "" && b != "" && b + 0 != 0 && f != "clean") ? sprintf("%.2f", a / b) : ""
      printf "| %s | %s | %s | %s | %s |\n", l, f, a, (b == "" ? "-" : b), r
      # Issue 13: fan-out p99 at 100 msg/s no higher than Centrifugo'"'"'s.
      if (f == "p99_ms" && l ~ /^fanout100-/ && b != "") {
        kind = (l ~ /-relaxed/) ? "relaxed" : "durable"
        runs[kind]++; if (a + 0 <= b + 0) held[kind]++
      }
    }
    for (k in runs)
      printf "fan-out 100 msg/s p99 <= Centrifugo'"'"'s (%s): %d of %d runs\n", k, held[k], runs[k]
  }' "$results"
if [ ${#failed[@]} -gt 0 ]; then
  printf 'scenario failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
