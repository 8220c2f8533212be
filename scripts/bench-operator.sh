#!/usr/bin/env bash
# make bench-operator [ARGS]: the operator's scale figures in the README. It
# starts a control plane of its own (`chorus-cluster --kwok-only`: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok with
# untainted fake nodes, no real node), so the bench never disturbs the local
# cluster of `make cluster-up`; a fresh PostgreSQL (`test-bench-operator`);
# a release build of the operator, run as a host process; and the
# `operator-bench` driver (tests/load). Both servers stop at the end.
#
#   make bench-operator                                   # 1,000 tenants, restart measured
#   make bench-operator ARGS="--tenants 10000 --namespaces 100 --isolation schema --hold --resync-seconds 300"
#
# CHORUS_CP_LAUNCHER names a launcher binary built elsewhere (the control
# plane's other binaries still come from $CP_BIN, which is then not rebuilt).
#
# CHORUS_BENCH_HEAPTRACK=<file> runs the operator under heaptrack (Debian's
# `heaptrack` package), writing <file>.zst, and skips the restart; read it
# with `heaptrack_print -f <file>.zst` (docs/operations.md, "Scale").
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
# One run at a time per cache: two share the state directory and PostgreSQL
# 'test-bench-operator', and each one's start or teardown stops the other's
# servers. The servers below are started with the lock's descriptor closed,
# so one left running never holds it.
mkdir -p "$CHORUS_CACHE/run"
exec 9>"$CHORUS_CACHE/run/bench-operator.lock"
flock -n 9 || die "another make bench-operator is running with CHORUS_CACHE=$CHORUS_CACHE (it stops this run's servers, and this run its); wait until its make has exited"
if [ -z "${CHORUS_CP_LAUNCHER:-}" ]; then
  "$CHORUS_ROOT/scripts/build-control-plane.sh"
fi
launcher=${CHORUS_CP_LAUNCHER:-$CP_BIN/chorus-cluster}
step "building release binaries"
cargo build -q --release --locked -p chorus-operator -p chorus-load --bin chorus-operator --bin operator-bench
BIN=$CARGO_TARGET_DIR/release
state=${CHORUS_BENCH_STATE:-$CHORUS_CACHE/run/bench-operator}
mkdir -p "$state"
rm -f "$state/ready"
step "starting a kwok-only control plane (state: $state)"
profiling=
[ -n "${CHORUS_BENCH_PPROF:-}" ] && profiling=--profiling
setsid nohup "$launcher" --bin-dir "$CP_BIN" --state-dir "$state" --kwok-only --fake-nodes 4 $profiling \
  --exit-with-pid $$ >"$state/launcher.log" 2>&1 < /dev/null 9>&- &
cp_pid=$!
db=test-bench-operator
# The bench's PostgreSQL holds about 8 MB per tenant: deleted at the end.
stop() {
  if [ -n "${CHORUS_BENCH_HEAPTRACK:-}" ]; then
    # heaptrack's wrapper was stopped, not the operator under it.
    pkill -TERM -f "^$BIN/chorus-operator" 2>/dev/null || true
    for _ in $(seq 1 120); do pgrep -f heaptrack_interpret >/dev/null || break; sleep 0.5; done
  fi
  kill -TERM "$cp_pid" 2>/dev/null || true
  "$CHORUS_ROOT/scripts/db.sh" purge "$db" >/dev/null 2>&1 || true
}
trap stop EXIT
for _ in $(seq 1 1440); do
  [ -f "$state/ready" ] && break
  pid_alive "$cp_pid" || { tail -n 20 "$state/launcher.log" >&2; die "the control plane failed to start"; }
  sleep 0.25
done
[ -f "$state/ready" ] || die "the control plane was not ready after 360s; logs in $state"
DB=$("$CHORUS_ROOT/scripts/db.sh" up "$db" 9>&-)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# The CPU time of each component is reported per phase: the launcher's
# children (etcd, kube-apiserver, ...) and PostgreSQL's postmaster (whose
# children's time includes every backend that exited).
cpu=()
for pid in $(pgrep -P "$cp_pid" || true); do
  cpu+=(--cpu "$(cat "/proc/$pid/comm")=$pid")
done
pg_pid=$("$CHORUS_ROOT/scripts/db.sh" pid "$db" || true)
[ -n "$pg_pid" ] && cpu+=(--cpu "postgres=$pg_pid")
operator=$BIN/chorus-operator
restart=--restart
if [ -n "${CHORUS_BENCH_HEAPTRACK:-}" ]; then
  command -v heaptrack >/dev/null || die "heaptrack is not installed (apt-get install heaptrack)"
  operator=$state/operator-under-heaptrack
  printf '#!/usr/bin/env bash\nexec heaptrack -o %q %q "$@"\n' \
    "$CHORUS_BENCH_HEAPTRACK" "$BIN/chorus-operator" >"$operator"
  chmod +x "$operator"
  restart=
fi
if [ -n "${CHORUS_BENCH_PPROF:-}" ]; then
  (
    sleep "${CHORUS_BENCH_PPROF_AFTER:-30}"
    kubectl --kubeconfig "$state/kubeconfig" --request-timeout=0 get --raw \
      "/debug/pprof/profile?seconds=${CHORUS_BENCH_PPROF_SECONDS:-60}" >"$CHORUS_BENCH_PPROF" &&
      echo "==> kube-apiserver CPU profile saved: go tool pprof -top $CHORUS_BENCH_PPROF" >&2
  ) &
fi
step "operator-bench ${ARGS:-} (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
# shellcheck disable=SC2086 # ARGS is a list of flags; restart is empty or one
"$BIN/operator-bench" --kubeconfig "$state/kubeconfig" --database-url "$DB" \
  --operator "$operator" "${cpu[@]}" $restart ${ARGS:-}
if [ -n "${CHORUS_BENCH_HEAPTRACK:-}" ]; then
  step "under heaptrack the RSS lines above are its wrapper's; the heap: heaptrack_print -f $CHORUS_BENCH_HEAPTRACK.zst"
fi
step "done (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
