#!/usr/bin/env bash
# Regenerates tests/e2e/schemas/monitoring.coreos.com/: kubeconform JSON
# schemas of the Prometheus Operator kinds the chart can render (ServiceMonitor,
# PodMonitor, PrometheusRule), from the CRD YAML shipped in the
# prometheus-operator Go module (`go mod download`, so nothing is fetched at
# test time; the output is committed). Strict like openapi2jsonschema
# --strict: every object with `properties` refuses unknown fields unless the
# CRD preserves them.
#
#   scripts/monitoring-schemas.sh            # PROMETHEUS_OPERATOR_VERSION=v0.85.0
source "$(dirname "$0")/lib.sh"
version=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
module=github.com/prometheus-operator/prometheus-operator
dir=$(cd "$(mktemp -d)" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
out=$CHORUS_ROOT/tests/e2e/schemas/monitoring.coreos.com
mkdir -p "$out"
python3 - "$dir/example/prometheus-operator-crd" "$out" "$module@$version" <<'PY'
import json, sys, yaml
src, out, origin = sys.argv[1:4]

def strict(s):
    if isinstance(s, dict):
        if "properties" in s and "additionalProperties" not in s \
                and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
        for v in s.values():
            strict(v)
    elif isinstance(s, list):
        for v in s:
            strict(v)
    return s

for plural in ["servicemonitors", "podmonitors", "prometheusrules"]:
    crd = yaml.safe_load(open(f"{src}/monitoring.coreos.com_{plural}.yaml"))
    kind = crd["spec"]["names"]["kind"].lower()
    for v in crd["spec"]["versions"]:
        schema = strict(v["schema"]["openAPIV3Schema"])
        schema["description"] = f"{crd['spec']['names']['kind']} {v['name']} from {origin}"
        path = f"{out}/{kind}-monitoring-{v['name']}.json"
        with open(path, "w") as f:
            json.dump(schema, f, indent=1, sort_keys=True)
        print(path)
PY
