#!/usr/bin/env bash
# Builds the local cluster from the Go modules in tests/control-plane, into
# $CHORUS_CACHE/control-plane/<k8s version>/:
#   control plane  etcd, kube-apiserver, kube-controller-manager, kube-scheduler
#   node           kubelet, kube-proxy, containerd (+ shim, ctr), runc, CNI plugins,
#                  the sandbox ("pause") image
#   add-ons        kwok (fake nodes), metrics-server
#   ours           chorus-cluster (the launcher), chorus-image, openapi2jsonschema
# A second run with unchanged go.mod/go.sum and sources builds nothing.
source "$(dirname "$0")/lib.sh"
mod=$CHORUS_ROOT/tests/control-plane
mkdir -p "$CP_BIN"

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

# fresh NAME KEY: true when the stamp for NAME matches KEY and its binary exists.
fresh() { [ -e "$CP_BIN/$1" ] && [ "$(cat "$CP_BIN/$1.stamp" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$CP_BIN/$1.stamp"; }

# build_group NAME KEY NOTE -- GO-BUILD-ARGS...: one `go build` of several
# commands into a scratch dir (they share compiled packages), then moved in.
build_group() {
  local name=$1 key=$2 note=$3; shift 4
  fresh "$name" "$key" && return 0
  step "building $name$note"
  local tmp; tmp=$(mktemp -d "$CP_BIN/.build.XXXXXX")
  go build -o "$tmp/" "$@"
  for f in "$tmp"/*; do mv -f "$f" "$CP_BIN/"; done
  rmdir "$tmp"
  touch "$CP_BIN/$name"
  stamp "$name" "$key"
}

# --- the control plane and the node's Kubernetes components (one module) ---
cd "$mod"
k8s_key=$(hash_of go.mod go.sum)
build_group .k8s "$k8s_key" " (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy; a cold build takes about 15 minutes on 2 cores)" -- \
  -ldflags "$k8s_ldflags" \
  go.etcd.io/etcd/server/v3 \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
[ -e "$CP_BIN/server" ] && mv -f "$CP_BIN/server" "$CP_BIN/etcd"
build_group chorus-cluster "$(hash_of go.mod go.sum cmd/chorus-cluster/*.go)" "" -- ./cmd/chorus-cluster
build_group openapi2jsonschema "$(hash_of go.mod go.sum cmd/openapi2jsonschema/*.go)" "" -- ./cmd/openapi2jsonschema

# --- the node's container runtime (its own module) ---
cd "$mod/node"
node_key=$(hash_of go.mod go.sum)
build_group .containerd "$node_key" " (containerd, containerd-shim-runc-v2, ctr; about 4 minutes cold)" -- \
  -ldflags "-s -w" -tags "no_btrfs no_devmapper no_zfs" \
  github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
  github.com/containerd/containerd/v2/cmd/ctr
# runc needs cgo (its nsenter is C) and libseccomp (Debian's libseccomp-dev),
# so that pods asking for the RuntimeDefault seccomp profile (Chorus's do)
# get it enforced.
if ! pkg-config --exists libseccomp 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian's libseccomp-dev and pkg-config (runc's seccomp support)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libseccomp-dev pkg-config >/dev/null || {
      apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q libseccomp-dev pkg-config >/dev/null; }
  else
    die "libseccomp-dev is missing: sudo apt-get install libseccomp-dev pkg-config"
  fi
fi
CGO_ENABLED=1 build_group runc "$node_key-seccomp" " (runc, with seccomp)" -- -ldflags "-s -w" -tags seccomp github.com/opencontainers/runc
if ! fresh cni "$node_key"; then
  step "building the CNI plugins (bridge, host-local, loopback, portmap)"
  mkdir -p "$CP_BIN/cni"
  go build -ldflags "-s -w" -o "$CP_BIN/cni/" \
    github.com/containernetworking/plugins/plugins/main/bridge \
    github.com/containernetworking/plugins/plugins/ipam/host-local \
    github.com/containernetworking/plugins/plugins/main/loopback \
    github.com/containernetworking/plugins/plugins/meta/portmap
  stamp cni "$node_key"
fi
build_group chorus-image "$(hash_of go.mod go.sum cmd/chorus-image/*.go)" "" -- ./cmd/chorus-image
pause_key=$(hash_of go.mod go.sum cmd/pause/*.go cmd/chorus-image/*.go)
if ! fresh images/pause.tar "$pause_key"; then
  step "building the sandbox image localhost/chorus/pause:3.10"
  root=$(mktemp -d)
  CGO_ENABLED=0 go build -ldflags "-s -w" -o "$root/pause" ./cmd/pause
  mkdir -p "$CP_BIN/images"
  "$CP_BIN/chorus-image" --rootfs "$root" --tag localhost/chorus/pause:3.10 --out "$CP_BIN/images/pause.tar" \
    --entrypoint /pause --user 65535:65535
  rm -rf "$root"
  stamp images/pause.tar "$pause_key"
fi

# --- add-ons (their own module) ---
cd "$mod/addons"
addons_key=$(hash_of go.mod go.sum)
build_group .addons "$addons_key" " (kwok, metrics-server; about 3 minutes cold)" -- \
  -ldflags "-s -w" sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/metrics-server/cmd/metrics-server
if ! fresh kwok-stages.yaml "$addons_key"; then
  # kwok's own "fast" stages: nodes and pods become Ready at once.
  kwok_dir=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  for f in "$kwok_dir"/kustomize/stage/node/fast/node-initialize.yaml \
           "$kwok_dir"/kustomize/stage/node/heartbeat-with-lease/*.yaml \
           "$kwok_dir"/kustomize/stage/pod/fast/pod-*.yaml; do
    echo "---"; cat "$f"
  done > "$CP_BIN/kwok-stages.yaml"
  stamp kwok-stages.yaml "$addons_key"
fi
