#!/usr/bin/env bash
# make demo: the whole path on this machine, with real components.
#
# 1. starts the dev PostgreSQL and the local control plane (kube-apiserver);
# 2. installs the ChatTenant CRD and runs the operator against them;
# 3. applies examples/minimal.yaml: the operator provisions database chat_acme,
#    Secrets acme-db and acme-auth, Deployments, Services, PDB;
# 4. this control plane has no kubelet, so no Pod can run: the demo starts the
#    chat runtime on this machine with exactly the configuration the
#    Deployment carries (the tenant's Secrets), and serves its web client.
#
# Ctrl-C stops the runtime and the operator (the dev database and control
# plane keep running: `make cluster-down db-down`).
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
PORT=${CHORUS_DEMO_PORT:-8080}
NS=demo

step "starting PostgreSQL (dev) and the control plane"
"$CHORUS_ROOT/scripts/db.sh" up dev >/dev/null
line=$("$CHORUS_ROOT/scripts/cluster.sh" up)
export KUBECONFIG=${line#export KUBECONFIG=}
command -v kubectl >/dev/null || die "kubectl is needed for the demo"

step "building the operator and the chat runtime"
cargo build -q --locked -p chorus-operator -p chat-runtime
BIN=$CARGO_TARGET_DIR/debug

step "installing the ChatTenant CRD"
kubectl apply --server-side --force-conflicts -f crds/chattenants.chorus.dev.yaml >/dev/null
kubectl wait --for=condition=Established crd/chattenants.chorus.dev --timeout=30s >/dev/null
kubectl get ns chorus-system >/dev/null 2>&1 || kubectl create ns chorus-system >/dev/null
kubectl get ns "$NS" >/dev/null 2>&1 || kubectl create ns "$NS" >/dev/null

# The dev server's admin credentials become the server Secret (examples/shared-pg-secret.yaml).
if [ "$(id -u)" = 0 ]; then pgdir=/var/tmp/chorus-pg/dev; else pgdir=$CHORUS_CACHE/pg/dev; fi
kubectl -n chorus-system create secret generic shared-pg \
  --from-literal=host=127.0.0.1 --from-literal=port="$(cat "$pgdir/port")" \
  --from-literal=username=postgres --from-literal=password="$(cat "$pgdir/admin-password")" \
  --from-literal=sslmode=disable --dry-run=client -o yaml | kubectl apply -f - >/dev/null

step "starting the operator (logs: $CHORUS_CACHE/demo-operator.log)"
POD_NAMESPACE=chorus-system "$BIN/chorus-operator" --http-addr 127.0.0.1:18080 --no-leader-election \
  >"$CHORUS_CACHE/demo-operator.log" 2>&1 &
OPERATOR=$!
RUNTIME=
cleanup() {
  [ -n "$RUNTIME" ] && kill "$RUNTIME" 2>/dev/null
  kill "$OPERATOR" 2>/dev/null
  wait 2>/dev/null
  step "stopped the runtime and the operator (make cluster-down db-down stops the rest)"
}
trap cleanup EXIT INT TERM

step "applying examples/minimal.yaml in namespace $NS"
kubectl -n "$NS" apply -f examples/minimal.yaml >/dev/null
for i in $(seq 1 60); do
  ok=$(kubectl -n "$NS" get ct acme -o jsonpath='{.status.conditions[?(@.type=="DatabaseReady")].status}' 2>/dev/null || true)
  [ "$ok" = True ] && break
  sleep 0.5
done
[ "$ok" = True ] || { kubectl -n "$NS" describe ct acme >&2; die "the tenant's database did not become ready"; }
kubectl -n "$NS" get ct acme -o wide
kubectl -n "$NS" get deploy,svc,pdb,secret -l chorus.dev/tenant=acme

step "starting the chat runtime with the Deployment's configuration (no kubelet here)"
secret() { kubectl -n "$NS" get secret "$1" -o jsonpath="{.data.$2}" | base64 -d; }
CHAT_DATABASE_URL=$(secret acme-db uri) CHAT_JWT_SECRET=$(secret acme-auth jwt-secret) \
CHAT_TENANT_ID=acme CHAT_LISTEN_ADDR=127.0.0.1:$PORT CHAT_ADMIN_ADDR=127.0.0.1:$((PORT + 1)) \
CHAT_DRAIN_SECONDS=2 "$BIN/chat-runtime" >"$CHORUS_CACHE/demo-runtime.log" 2>&1 &
RUNTIME=$!
for i in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$((PORT + 1))/readyz" >/dev/null 2>&1 && break
  pid_alive "$RUNTIME" || { tail -5 "$CHORUS_CACHE/demo-runtime.log" >&2; die "the chat runtime did not start"; }
  sleep 0.5
done

cat <<EOF

  Chorus demo is running.
    Web client:  http://127.0.0.1:$PORT/   (sign up two users in two browser windows and chat)
    Tenant:      kubectl -n $NS get ct acme      (export KUBECONFIG=$KUBECONFIG)
    Database:    chat_acme, owned by role chat_acme, credentials in Secret acme-db
    Ready stays False (PodsUnavailable): this control plane has no kubelet, so the
    runtime runs on this machine with the same settings instead of in acme-blue.
  Ctrl-C to stop.
EOF
wait "$RUNTIME"
