#!/usr/bin/env bash
# cluster.sh up|down|status [STATE_DIR]
#
# up:     builds the cluster if needed, starts it in the background unless already
#         running (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#         one real node: containerd, runc, CNI bridge, kubelet, kube-proxy; kwok
#         fake nodes; metrics-server), imports the images from `make images`,
#         waits until the node is Ready and prints `export KUBECONFIG=/absolute/path`.
#         CHORUS_NODE=0 starts etcd + kube-apiserver only (no root needed).
# down:   stops it; no process, mount, network namespace, veth or iptables rule
#         is left behind.
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
  node_flags=()
  if [ "${CHORUS_NODE:-1}" != 0 ]; then
    # The node: iptables for kube-proxy and the CNI plugins, conntrack for
    # kube-proxy, iproute2 for the bridge.
    need_packages "the local node" iptables:iptables conntrack:conntrack ip:iproute2
    node_flags=(--node --image-dir "$CHORUS_CACHE/images")
    step "starting the cluster $K8S_VERSION: control plane, one real node, kwok, metrics-server (state: $state)"
  else
    step "starting etcd and kube-apiserver $K8S_VERSION (state: $state)"
  fi
  rm -f "$state/ready"
  setsid nohup "$CP_BIN/chorus-cluster" --bin-dir "$CP_BIN" --state-dir "$state" "${node_flags[@]}" \
    --exit-with-pid "${CHORUS_EXIT_WITH_PID:-0}" >"$state/launcher.log" 2>&1 < /dev/null &
  launcher=$!
  shown=0
  for i in $(seq 1 1440); do
    [ -f "$state/ready" ] && break
    if ! pid_alive "$launcher"; then
      tail -n 20 "$state/launcher.log" >&2
      die "the cluster failed to start; logs in $state"
    fi
    # A progress line for each step the launcher reports.
    n=$(wc -l < "$state/launcher.log" 2>/dev/null || echo 0)
    if [ "$n" -gt "$shown" ]; then
      tail -n +"$((shown + 1))" "$state/launcher.log" | head -n "$((n - shown))" | grep -E 'started|Ready|serving|earlier|removed|imported' \
        | sed 's/^.*chorus-cluster: /    /' >&2 || true
      shown=$n
    fi
    sleep 0.25
  done
  if [ ! -f "$state/ready" ]; then
    kill -TERM "$launcher" 2>/dev/null || true
    die "the cluster was not ready after 360s (stopped it again); logs in $state"
  fi
  step "cluster ready"
  echo "export KUBECONFIG=$state/kubeconfig"
  ;;
down)
  pid=$(launcher_pid || true)
  if [ -n "$pid" ]; then
    kill -TERM "$pid"
    for _ in $(seq 1 360); do pid_alive "$pid" || break; sleep 0.25; done
    pid_alive "$pid" && { kill -KILL "$pid"; say "launcher did not stop in 90s; killed it"; }
    step "control plane stopped"
  else
    step "control plane not running"
  fi
  # A launcher killed with SIGKILL could not clean up its node: do it now.
  if [ -d "$state/node" ] && [ -x "$CP_BIN/chorus-cluster" ]; then
    "$CP_BIN/chorus-cluster" --cleanup --state-dir "$state" 2>&1 | sed 's/^.*chorus-cluster: /    /' >&2
  fi
  rm -f "$state/ready"
  ;;
status)
  if running; then echo "running: export KUBECONFIG=$state/kubeconfig"; else echo "not running"; exit 1; fi
  ;;
*) die "usage: cluster.sh up|down|status [STATE_DIR]" ;;
esac
