#!/usr/bin/env bash
# Builds the chart and test tools from Go modules into $CHORUS_CACHE/tools/bin
# (cached by version): helm and kubeconform for the chart, nats-server for the
# runtime's NATS broker tests. None can be downloaded as a release binary on
# our machines, but their go.mod files allow `go install`.
source "$(dirname "$0")/lib.sh"
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.7.0
NATS_SERVER_VERSION=v2.15.3
mkdir -p "$TOOLS_BIN"

# install NAME MODULE@VERSION: `go install` unless the stamped version is built.
install() {
  local name=$1 pkg=$2
  if [ -x "$TOOLS_BIN/$name" ] && [ "$(cat "$TOOLS_BIN/$name.stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  step "building $name from $pkg"
  GOBIN=$TOOLS_BIN go install -ldflags "-s -w" "$pkg"
  echo "$pkg" > "$TOOLS_BIN/$name.stamp"
}

install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
install nats-server "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
