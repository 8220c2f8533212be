//! The chart's monitoring objects: ServiceMonitor, PodMonitor and
//! PrometheusRule validate (kubeconform -strict) against the Prometheus
//! Operator's CRD schemas vendored in tests/e2e/schemas (made by
//! scripts/monitoring-schemas.sh from the prometheus-operator Go module, not
//! downloaded at test time); the dashboard ConfigMap carries Grafana's
//! sidecar label and valid JSON; and every metric name a rule or a panel
//! uses is exposed by the operator's or the runtime's `/metrics` registry.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeSet;

use chorus_e2e::manifests::{documents, repo_root, run, tool};
use serde_json::Value;

const ALL_ON: &str = "monitoring.serviceMonitor.enabled=true,monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true";

fn chart() -> String {
    repo_root()
        .join("charts/chorus-operator")
        .to_string_lossy()
        .to_string()
}

fn render(set: &str, only: &[&str]) -> String {
    let helm = tool("helm").unwrap();
    let chart = chart();
    let mut args = vec![
        "template",
        "chorus",
        chart.as_str(),
        "--namespace",
        "chorus-system",
        "--kube-version",
        "1.36.3",
        "--set",
        set,
    ];
    for o in only {
        args.push("--show-only");
        args.push(o);
    }
    String::from_utf8(run(&helm, &args, None).unwrap().stdout).unwrap()
}

fn kubeconform(yaml: &str) -> Result<String, String> {
    let location = format!(
        "{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        repo_root()
            .join("tests/e2e/schemas/monitoring.coreos.com")
            .display()
    );
    run(
        &tool("kubeconform").unwrap(),
        &["-strict", "-summary", "-schema-location", &location, "-"],
        Some(yaml),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
    .map_err(|e| e.to_string())
}

const MONITORING: [&str; 3] = [
    "templates/servicemonitor.yaml",
    "templates/podmonitor.yaml",
    "templates/prometheusrule.yaml",
];

#[test]
fn monitoring_is_off_by_default_and_lints_when_on() {
    let default = render("replicaCount=2", &[]);
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "grafana_dashboard",
    ] {
        assert!(!default.contains(kind), "{kind} rendered by default");
    }
    let helm = tool("helm").unwrap();
    let lint = run(
        &helm,
        &["lint", "--strict", &chart(), "--set", ALL_ON],
        None,
    )
    .unwrap();
    assert!(String::from_utf8_lossy(&lint.stdout).contains("0 chart(s) failed"));
}

#[test]
fn monitoring_objects_match_the_prometheus_operator_schemas() {
    let yaml = render(ALL_ON, &MONITORING);
    let summary = kubeconform(&yaml).unwrap();
    assert!(
        summary.contains("Valid: 3, Invalid: 0, Errors: 0, Skipped: 0"),
        "{summary}"
    );
    // Strict: a misspelled field is refused.
    let bad = yaml.replace("podMetricsEndpoints:", "podMetricEndpoints:");
    assert_ne!(bad, yaml);
    assert!(
        kubeconform(&bad).is_err(),
        "kubeconform must refuse an unknown field"
    );
}

/// `(expr of every rule, expr of every panel target)`, from the rendered chart.
fn expressions() -> Vec<String> {
    let yaml = render(
        ALL_ON,
        &["templates/prometheusrule.yaml", "templates/dashboard.yaml"],
    );
    let mut exprs = Vec::new();
    for doc in documents(&yaml).unwrap() {
        let v = serde_json::to_value(&doc).unwrap();
        match doc.types.as_ref().map(|t| t.kind.as_str()) {
            Some("PrometheusRule") => {
                for g in v["spec"]["groups"].as_array().unwrap() {
                    for r in g["rules"].as_array().unwrap() {
                        exprs.push(r["expr"].as_str().unwrap().to_string());
                    }
                }
            }
            Some("ConfigMap") => {
                assert_eq!(v["metadata"]["labels"]["grafana_dashboard"], "1");
                let dash: Value =
                    serde_json::from_str(v["data"]["chorus.json"].as_str().unwrap()).unwrap();
                for p in dash["panels"].as_array().unwrap() {
                    for t in p["targets"].as_array().unwrap() {
                        exprs.push(t["expr"].as_str().unwrap().to_string());
                    }
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    exprs
}

/// Every sample name a registry can expose, from its `# TYPE` lines (a
/// labelled family with no series yet has no sample line).
fn exposed(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("#") && words.next() == Some("TYPE") {
            let (name, kind) = (words.next().unwrap(), words.next().unwrap());
            let base = name.to_string();
            match kind {
                "counter" => {
                    names.insert(format!("{}_total", base.trim_end_matches("_total")));
                }
                "histogram" => {
                    for s in ["", "_bucket", "_sum", "_count"] {
                        names.insert(format!("{base}{s}"));
                    }
                }
                _ => {
                    names.insert(base);
                }
            }
        }
    }
    names
}

/// Metric names in a PromQL expression: identifiers of our two prefixes.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cur = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            cur.push(c);
        } else {
            if (cur.starts_with("chorus_") || cur.starts_with("chat_"))
                && cur != "chorus_dev_tenant"
            {
                out.insert(cur.clone());
            }
            cur.clear();
        }
    }
    out
}

/// The operator's registry as `/metrics` renders it once a reconcile has
/// failed and one of a tenant with backups has succeeded (a labelled family
/// without series renders nothing).
fn operator_metrics_after_a_reconcile() -> String {
    let mut ct: chorus_operator::crd::ChatTenant = serde_yaml::from_str(
        r#"
apiVersion: chorus.dev/v1alpha1
kind: ChatTenant
metadata: {name: acme, namespace: tenants, uid: 0b7f6f2e-1111-4c3b-9d7e-5a4f3c2b1a00}
spec:
  tenantId: acme
  runtime: {image: ghcr.io/chorus-dev/chat-runtime:0.1.0}
  database: {serverRef: {name: pg}, name: chat_acme}
  backup: {schedule: "@daily", retention: {count: 3}, destination: {persistentVolumeClaim: {claimName: d}}}
"#,
    )
    .unwrap();
    ct.status = Some(
        serde_json::from_value(serde_json::json!({
            "backup": {"lastSuccessfulTime": "2026-12-01T06:00:00Z"}
        }))
        .unwrap(),
    );
    let t = chorus_operator::validate::validate(&ct).unwrap();
    let m = chorus_operator::metrics::Metrics::default();
    m.failed("apply");
    m.tenants.observe(&t, ct.status.as_ref().unwrap());
    // One collection of the database servers' connection figures.
    m.tenants.database_server(&t, "pg:5432".into());
    m.observe_connections(&[chorus_operator::database::ServerConnections {
        server: "pg:5432".into(),
        max: 100,
        total: 3,
        by_role: [("chat_acme".to_string(), 2)].into(),
    }]);
    m.render()
}

#[test]
fn every_metric_in_a_rule_or_panel_exists() {
    let operator = operator_metrics_after_a_reconcile();
    let runtime = {
        let m = chat_runtime::metrics::Metrics::default();
        // What a scrape sets before rendering.
        m.observe_pool(3, 1, 10);
        m.render()
    };
    let mut exists = exposed(&operator);
    exists.extend(exposed(&runtime));
    assert!(
        exists.contains("chorus_tenant_ready") && exists.contains("chat_connections"),
        "{exists:?}\n{operator}"
    );
    let exprs = expressions();
    assert!(exprs.len() > 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        used.extend(metric_names(e));
    }
    let missing: Vec<_> = used.iter().filter(|n| !exists.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "not exposed by either /metrics: {missing:?}"
    );
    // docs/metrics.md lists every metric used.
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    for n in &used {
        let base = n.trim_end_matches("_bucket");
        assert!(doc.contains(base), "docs/metrics.md does not list {base}");
    }
    // ... and every metric either process exposes, with its labels.
    for n in &exists {
        let derived = ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| n.strip_suffix(s).is_some_and(|b| exists.contains(b)));
        if !derived {
            assert!(
                doc.contains(&format!("`{n}`")),
                "docs/metrics.md does not list {n}, which /metrics exposes"
            );
        }
    }
}

/// Every key path of values.yaml (maps are walked; lists and empty maps are
/// leaves).
fn value_keys(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
    if let serde_yaml::Value::Mapping(m) = v {
        for (k, child) in m {
            let key = format!("{prefix}{}", k.as_str().unwrap());
            match child {
                serde_yaml::Value::Mapping(c) if !c.is_empty() && key != "resources" => {
                    value_keys(child, &format!("{key}."), out)
                }
                _ => out.push(key),
            }
        }
    }
}

#[test]
fn the_chart_readme_covers_every_value_and_the_schema_refuses_bad_ones() {
    let dir = repo_root().join("charts/chorus-operator");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("values.yaml")).unwrap()).unwrap();
    let mut keys = Vec::new();
    value_keys(&values, "", &mut keys);
    assert!(keys.len() > 30, "{keys:?}");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "charts/chorus-operator/README.md misses {missing:?}"
    );

    // values.schema.json: helm refuses bad values, naming them.
    let helm = tool("helm").unwrap();
    let chart = chart();
    for (set, says) in [
        ("replicaCount=-1", "/replicaCount"),
        ("replicaCont=2", "replicaCont"),
        (
            "monitoring.podMonitor.interval=soon",
            "/monitoring/podMonitor/interval",
        ),
        (
            "databaseServers[0].name=pg,databaseServers[0].host=h",
            "password",
        ),
        (
            "tracing.otlpEndpoint=otel-collector:4318",
            "/tracing/otlpEndpoint",
        ),
        ("tracing.samplingRatio=2", "/tracing/samplingRatio"),
        (
            "monitoring.prometheusRule.databaseConnectionsRatio=80",
            "/monitoring/prometheusRule/databaseConnectionsRatio",
        ),
    ] {
        let err = run(
            &helm,
            &[
                "template",
                "x",
                &chart,
                "--kube-version",
                "1.36.3",
                "--set",
                set,
            ],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(says), "--set {set}: {err}");
    }
}
