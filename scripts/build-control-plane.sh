#!/usr/bin/env bash
# Builds etcd, kube-apiserver and the chorus-cluster launcher from the Go module
# in tests/control-plane, into $CHORUS_CACHE/control-plane/<k8s version>/.
# A second run with unchanged go.mod/go.sum and launcher sources builds nothing.
source "$(dirname "$0")/lib.sh"
mod=$CHORUS_ROOT/tests/control-plane
mkdir -p "$CP_BIN"
cd "$mod"

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

# build NAME PACKAGE KEY: build when the stamp for NAME does not match KEY.
build() {
  local name=$1 pkg=$2 key=$3
  if [ -x "$CP_BIN/$name" ] && [ "$(cat "$CP_BIN/$name.stamp" 2>/dev/null)" = "$key" ]; then
    return 0
  fi
  step "building $name ($pkg)$( [ "$name" = kube-apiserver ] && echo "; a cold build takes about 10 minutes on 2 cores")"
  go build -ldflags "$ldflags" -o "$CP_BIN/$name.tmp" "$pkg"
  mv "$CP_BIN/$name.tmp" "$CP_BIN/$name"
  echo "$key" > "$CP_BIN/$name.stamp"
}

deps_key=$(hash_of go.mod go.sum)
build etcd go.etcd.io/etcd/server/v3 "$deps_key"
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$deps_key"
build chorus-cluster ./cmd/chorus-cluster "$(hash_of go.mod go.sum cmd/chorus-cluster/*.go)"
build openapi2jsonschema ./cmd/openapi2jsonschema "$(hash_of go.mod go.sum cmd/openapi2jsonschema/*.go)"
