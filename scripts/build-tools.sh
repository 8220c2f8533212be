#!/usr/bin/env bash
# Builds the chart tools from Go modules into $CHORUS_CACHE/tools/bin (cached by
# version): helm and kubeconform. Neither can be downloaded as a release binary
# on our machines, but both go.mod files allow `go install`.
source "$(dirname "$0")/lib.sh"
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.7.0
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
