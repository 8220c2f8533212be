#!/usr/bin/env bash
# The one test command (`make test`): formatting, lints, generated-file drift,
# unit tests, then the integration suites against a real cluster (control
# plane, one real node running the project's images, kwok, metrics-server) and
# a real PostgreSQL that this script starts (and always stops again).
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
state=$CHORUS_CACHE/run/test-cluster
# One run at a time per cache: two would share (and stop) each other's servers.
mkdir -p "$CHORUS_CACHE/run"
exec 9>"$CHORUS_CACHE/run/test.lock"
flock -n 9 || die "another make test is running with CHORUS_CACHE=$CHORUS_CACHE; wait for it, or use another CHORUS_CACHE"

cleanup() {
  local rc=$?
  "$CHORUS_ROOT/scripts/cluster.sh" down "$state" || true
  "$CHORUS_ROOT/scripts/db.sh" down test || true
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "checking formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "linting (cargo clippy --all-targets -D warnings)"
cargo clippy --workspace --all-targets --locked -q -- -D warnings

step "checking generated files (crds/ and the chart's CRD copy)"
cargo run -q --locked -p chorus-operator --bin crdgen -- --check
if [ -n "$(gofmt -l tests/control-plane)" ]; then
  gofmt -l tests/control-plane >&2
  die "Go sources are not gofmt-formatted: run make fmt"
fi

step "unit tests of the cluster launcher (go test)"
(cd tests/control-plane && go test ./cmd/...)

step "building the control plane and chart tools (cached after the first run)"
"$CHORUS_ROOT/scripts/build-control-plane.sh"
"$CHORUS_ROOT/scripts/build-tools.sh"
export CHORUS_TOOLS_BIN=$TOOLS_BIN CHORUS_CP_BIN=$CP_BIN
# The runtime's NATS broker tests start this server (they fail without it).
export CHORUS_NATS_SERVER=$TOOLS_BIN/nats-server

step "building the container images (make images)"
"$CHORUS_ROOT/scripts/images.sh"

step "building tests"
cargo test --workspace --locked --no-run -q

step "starting the cluster and PostgreSQL for this run"
# The launcher watches this shell: if the run is killed, the cluster stops
# (and the next run removes whatever a SIGKILL left, and says so).
kubeconfig_line=$(CHORUS_EXIT_WITH_PID=$$ "$CHORUS_ROOT/scripts/cluster.sh" up "$state")
export CHORUS_TEST_KUBECONFIG=${kubeconfig_line#export KUBECONFIG=}
# After the cluster: PostgreSQL also listens on the node bridge, for pods.
export CHORUS_TEST_DATABASE_URL
CHORUS_TEST_DATABASE_URL=$("$CHORUS_ROOT/scripts/db.sh" up test)
# Pods reach PostgreSQL at the bridge address; the server Secrets say so.
export CHORUS_TEST_POD_DATABASE_HOST=10.244.0.1
# A watchdog stops PostgreSQL if this run is killed before its trap can.
setsid bash -c 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" down test >/dev/null 2>&1' \
  chorus-db-watchdog $$ "$CHORUS_ROOT/scripts/db.sh" </dev/null >/dev/null 2>&1 &

step "running unit and integration tests"
cargo test --workspace --locked
step "the operator's reconcile trace, alone in its process (controller::traces)"
# (--workspace: the same features as above, so nothing is rebuilt; every
# other test binary filters itself out.)
cargo test --workspace --locked -q -- --ignored controller::traces

step "browser test of the web client (Debian chromium + playwright-core)"
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's chromium"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null || {
      apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
  else
    die "/usr/bin/chromium is missing: sudo apt-get install chromium"
  fi
fi
npm ci --prefix tests/web --no-audit --no-fund --loglevel=error >/dev/null
CHAT_RUNTIME_BIN=$CARGO_TARGET_DIR/debug/chat-runtime \
CHORUS_WEB_SCREENSHOTS=$CHORUS_CACHE/web-screenshots \
  node --test --test-reporter=spec tests/web/

step "all checks passed"
