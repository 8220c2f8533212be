//! The chart's `tracing.*` values: the operator Deployment gets the
//! standard OpenTelemetry variables only when `tracing.otlpEndpoint` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use chorus_e2e::manifests::{documents, repo_root, run, tool};
use serde_json::Value;

fn operator_env(set: &str) -> Vec<(String, Value)> {
    let helm = tool("helm").unwrap();
    let chart = repo_root().join("charts/chorus-operator");
    let out = run(
        &helm,
        &[
            "template",
            "chorus",
            &chart.to_string_lossy(),
            "--namespace",
            "chorus-system",
            "--kube-version",
            "1.36.3",
            "--show-only",
            "templates/deployment.yaml",
            "--set",
            set,
        ],
        None,
    )
    .unwrap();
    let yaml = String::from_utf8(out.stdout).unwrap();
    let doc = documents(&yaml).unwrap().remove(0);
    let v = serde_json::to_value(&doc).unwrap();
    v["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
        .collect()
}

#[test]
fn tracing_is_off_by_default_and_sets_the_standard_variables_when_on() {
    let off = operator_env("replicaCount=2");
    assert!(off.iter().all(|(n, _)| !n.starts_with("OTEL_")), "{off:?}");
    let on = operator_env("tracing.otlpEndpoint=http://otel-collector.observability:4318");
    let get = |name: &str| {
        on.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} in {on:?}"))
    };
    assert_eq!(
        get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "http://otel-collector.observability:4318"
    );
    assert_eq!(get("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf");
    assert_eq!(get("OTEL_TRACES_SAMPLER"), "parentbased_traceidratio");
    assert_eq!(get("OTEL_TRACES_SAMPLER_ARG"), "1");
    assert_eq!(get("OTEL_SERVICE_NAME"), "chorus-operator");
    assert!(get("OTEL_RESOURCE_ATTRIBUTES").contains("k8s.pod.name=$(POD_NAME)"));
    // $(POD_NAME) expands only when POD_NAME comes first.
    let pos = |name: &str| on.iter().position(|(n, _)| n == name).unwrap();
    assert!(pos("POD_NAME") < pos("OTEL_RESOURCE_ATTRIBUTES"));
}
