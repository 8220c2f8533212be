#!/usr/bin/env bash
# make demo: the whole path on this machine, everything in the local cluster.
#
# 1. builds the cluster (first run) and the images (make images);
# 2. starts the cluster (control plane, one real node) and the dev PostgreSQL,
#    which pods reach at the node bridge's address 10.244.0.1;
# 3. helm-installs charts/chorus-operator with the built image (cluster-wide,
#    the chart's default) and the server Secret `shared-pg`;
# 4. applies examples/minimal.yaml and waits until the tenant is Ready: its
#    runtime pods started from the image, migrated chat_acme, passed probes;
# 5. forwards 127.0.0.1:$CHORUS_DEMO_PORT (8080) to the tenant's Service and
#    signs up two demo users.
#
# Ctrl-C stops the port-forward and tears the demo down (release, namespaces,
# cluster); the dev database keeps its data for the next run (make db-down).
source "$(dirname "$0")/lib.sh"
cd "$CHORUS_ROOT"
PORT=${CHORUS_DEMO_PORT:-8080}
NS=demo
SYSTEM=chorus-system
command -v kubectl >/dev/null || die "kubectl is needed for the demo"

step "building the cluster's binaries and the images (cached after the first run)"
"$CHORUS_ROOT/scripts/images.sh" 2>&1 | sed 's/^/    /' >&2
"$CHORUS_ROOT/scripts/build-tools.sh" 2>&1 | sed 's/^/    /' >&2

step "starting the cluster"
line=$("$CHORUS_ROOT/scripts/cluster.sh" up)
export KUBECONFIG=${line#export KUBECONFIG=}
step "starting PostgreSQL (dev), listening for pods on 10.244.0.1"
# Restart so it listens on the bridge the cluster just created.
"$CHORUS_ROOT/scripts/db.sh" down dev >/dev/null 2>&1 || true
"$CHORUS_ROOT/scripts/db.sh" up dev >/dev/null

FORWARD=
cleanup() {
  trap - EXIT INT TERM
  [ -n "$FORWARD" ] && kill "$FORWARD" 2>/dev/null
  step "tearing the demo down (release, namespaces, cluster)"
  helm uninstall chorus-operator -n "$SYSTEM" --wait >/dev/null 2>&1 || true
  "$CHORUS_ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
  step "stopped; the dev database keeps chat_acme (make db-down stops it)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "installing the operator with Helm (image ghcr.io/chorus-dev/chorus-operator:0.1.0)"
kubectl get ns "$SYSTEM" >/dev/null 2>&1 || kubectl create ns "$SYSTEM" >/dev/null
kubectl get ns "$NS" >/dev/null 2>&1 || kubectl create ns "$NS" >/dev/null
# The dev server's admin credentials become the server Secret (examples/shared-pg-secret.yaml).
if [ "$(id -u)" = 0 ]; then pgdir=/var/tmp/chorus-pg/dev; else pgdir=$CHORUS_CACHE/pg/dev; fi
kubectl -n "$SYSTEM" create secret generic shared-pg \
  --from-literal=host=10.244.0.1 --from-literal=port="$(cat "$pgdir/port")" \
  --from-literal=username=postgres --from-literal=password="$(cat "$pgdir/admin-password")" \
  --from-literal=sslmode=disable --dry-run=client -o yaml | kubectl apply -f - >/dev/null
helm upgrade --install chorus-operator charts/chorus-operator -n "$SYSTEM" \
  --set replicaCount=1 --wait --timeout 180s >/dev/null
kubectl -n "$SYSTEM" get pods -o wide

step "applying examples/minimal.yaml in namespace $NS"
kubectl -n "$NS" apply -f examples/minimal.yaml >/dev/null
for i in $(seq 1 180); do
  ready=$(kubectl -n "$NS" get ct acme -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
  [ "$ready" = True ] && break
  if [ $((i % 5)) -eq 0 ]; then
    step "waiting for Ready: $(kubectl -n "$NS" get ct acme -o jsonpath='{range .status.conditions[*]}{.type}={.status} {end}' 2>/dev/null)"
  fi
  sleep 1
done
[ "$ready" = True ] || { kubectl -n "$NS" describe ct acme >&2; die "the tenant did not become Ready; kubectl -n $NS describe ct acme"; }
kubectl -n "$NS" get ct acme -o wide
kubectl -n "$NS" get deploy,pods,svc -l chorus.dev/tenant=acme

step "forwarding 127.0.0.1:$PORT to Service acme"
kubectl -n "$NS" port-forward --address 127.0.0.1 svc/acme "$PORT:8080" >"$CHORUS_CACHE/demo-port-forward.log" 2>&1 &
FORWARD=$!
for i in $(seq 1 40); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.25; done
logins=""
for u in alice bob; do
  curl -sf -X POST -H 'content-type: application/json' "http://127.0.0.1:$PORT/api/v1/auth/signup" \
    -d "{\"username\":\"$u\",\"password\":\"demo-password-$u\"}" >/dev/null 2>&1 || true
  logins="$logins $u / demo-password-$u;"
done

cat <<MSG

  Chorus demo is running, everything in the local cluster.
    Web client:  http://127.0.0.1:$PORT/   (log in as two users in two browser windows and chat)
    Logins:     $logins
    Try:
      export KUBECONFIG=$KUBECONFIG
      kubectl -n $NS get ct acme -o wide
      kubectl -n $NS patch ct acme --type merge -p '{"spec":{"rollout":{"candidate":{"image":"ghcr.io/chorus-dev/chat-runtime:0.2.0"},"canary":{"weight":50}}}}'
      kubectl -n $NS get ct acme -o jsonpath='{.status.candidate.revision}'   # then promote it:
      kubectl -n $NS patch ct acme --type merge -p '{"spec":{"rollout":{"promoteRevision":"<that revision>"}}}'
  Ctrl-C to stop and tear down.
MSG
wait "$FORWARD"
