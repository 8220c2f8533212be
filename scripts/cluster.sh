#!/usr/bin/env bash
# cluster.sh up|down|status [STATE_DIR]
#
# up:     builds the control plane if needed, starts etcd + kube-apiserver in the
#         background unless already running, waits for /readyz and prints
#         `export KUBECONFIG=/absolute/path`.
# down:   stops it; no etcd or kube-apiserver is left behind.
# status: says whether it runs.
#
# STATE_DIR defaults to $CHORUS_CACHE/run/cluster. The test suite uses its own.
# With CHORUS_EXIT_WITH_PID set, the control plane stops itself when that
# process exits (the test run uses this, so a killed run leaves nothing behind).
source "$(dirname "$0")/lib.sh"
cmd=${1:-status}
state=${2:-$CHORUS_CACHE/run/cluster}
mkdir -p "$state"
state=$(cd "$state" && pwd)
pidfile=$state/launcher.pid

# The launcher of this state dir: a pid file is trusted only while that pid
# is still our launcher (a stale file after kill -9 may name a reused pid).
launcher_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  pid_alive "$pid" && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "chorus-cluster.*--state-dir $state " && echo "$pid"
}
running() { launcher_pid >/dev/null && [ -f "$state/ready" ]; }

case $cmd in
up)
  if running; then
    step "control plane already running (launcher pid $(launcher_pid))"
    echo "export KUBECONFIG=$state/kubeconfig"
    exit 0
  fi
  "$CHORUS_ROOT/scripts/build-control-plane.sh"
  step "starting etcd and kube-apiserver $K8S_VERSION (state: $state)"
  rm -f "$state/ready"
  setsid nohup "$CP_BIN/chorus-cluster" --bin-dir "$CP_BIN" --state-dir "$state" \
    --exit-with-pid "${CHORUS_EXIT_WITH_PID:-0}" >"$state/launcher.log" 2>&1 < /dev/null &
  launcher=$!
  for i in $(seq 1 720); do
    [ -f "$state/ready" ] && break
    if ! pid_alive "$launcher"; then
      tail -n 20 "$state/launcher.log" >&2
      die "the control plane failed to start; logs in $state"
    fi
    [ $((i % 20)) -eq 0 ] && step "waiting for kube-apiserver /readyz ($((i / 4))s)"
    sleep 0.25
  done
  if [ ! -f "$state/ready" ]; then
    kill -TERM "$launcher" 2>/dev/null || true
    die "kube-apiserver not ready after 180s (stopped it again); logs in $state"
  fi
  grep -h "earlier" "$state/launcher.log" >&2 || true
  step "control plane ready"
  echo "export KUBECONFIG=$state/kubeconfig"
  ;;
down)
  pid=$(launcher_pid || true)
  if [ -n "$pid" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 120); do pid_alive "$pid" || break; sleep 0.25; done
    pid_alive "$pid" && { kill -KILL "$pid"; say "launcher did not stop in 30s; killed it"; }
    step "control plane stopped"
  else
    step "control plane not running"
  fi
  rm -f "$state/ready"
  ;;
status)
  if running; then echo "running: export KUBECONFIG=$state/kubeconfig"; else echo "not running"; exit 1; fi
  ;;
*) die "usage: cluster.sh up|down|status [STATE_DIR]" ;;
esac
