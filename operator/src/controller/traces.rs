//! A reconcile's trace through the real OTLP/HTTP exporter into an
//! in-process receiver: one `reconcile` span (tenant, namespace) with a
//! child span per step, and a span per child object applied.

use std::time::Duration;

use chorus_telemetry::receiver::{Received, Receiver};
use tracing_subscriber::prelude::*;

use super::reconcile;
use crate::fixtures::{context, tenant_path};

// Run alone, in a process of its own (scripts/test.sh does:
// `cargo test --workspace --locked -- --ignored controller::traces`, with the
// workspace's features, so nothing is rebuilt):
// next to the other unit tests on parallel threads, a span call site first
// hit on another thread (with no subscriber) while this test's scoped
// dispatcher is being installed can keep a cached "never" interest, and a
// step span goes missing about every other run.
#[tokio::test]
#[ignore = "run alone by scripts/test.sh (scoped dispatchers and parallel tests race)"]
async fn a_reconcile_is_a_span_with_a_child_per_step() {
    let receiver = Receiver::start().await.expect("receiver");
    let provider =
        chorus_telemetry::tracer_provider("chorus-operator", Some(&receiver.traces_url()))
            .expect("exporter");
    let subscriber = tracing_subscriber::registry().with(chorus_telemetry::trace_layer(
        &provider,
        "chorus-operator",
        "chorus_operator",
    ));
    let (ctx, verifier) = context();
    {
        let _default = tracing::subscriber::set_default(subscriber);
        // The first adds the finalizer, the second provisions.
        for _ in 0..2 {
            // Other tests hit the same span call sites on their threads, with
            // no subscriber: a call site registered there while this
            // dispatcher was being added may have cached "never".
            tracing::callsite::rebuild_interest_cache();
            let ct = verifier.tenant(&tenant_path("tenants", "acme"));
            let result = tokio::time::timeout(Duration::from_secs(5), reconcile(ct, ctx.clone()))
                .await
                .expect("a reconcile finishes within 5 s");
            assert!(result.is_ok(), "{result:?}");
        }
    }
    // Flush (what the binary does at exit).
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .expect("join")
        .expect("flushed");

    let spans = receiver.spans();
    let reconciles: Vec<&Received> = spans.iter().filter(|s| s.name == "reconcile").collect();
    assert_eq!(reconciles.len(), 2, "{spans:#?}");
    let provisioning = reconciles
        .iter()
        .copied()
        .find(|r| spans.iter().any(|s| s.parent_span_id == r.span_id))
        .expect("a reconcile with children");
    assert_eq!(provisioning.attr("tenant"), Some("acme"));
    assert_eq!(provisioning.attr("namespace"), Some("tenants"));
    assert_eq!(provisioning.parent_span_id, "");
    assert_eq!(
        provisioning
            .resource
            .get("service.name")
            .map(String::as_str),
        Some("chorus-operator")
    );
    let children_of = |parent: &Received| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| s.parent_span_id == parent.span_id)
            .cloned()
            .collect()
    };
    let steps = children_of(provisioning);
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names
            .iter()
            .copied()
            .filter(|n| !n.starts_with("apply "))
            .collect::<Vec<_>>()
            .len(),
        names.len(),
        "only steps under the reconcile: {names:?}"
    );
    for want in [
        "database", "auth", "observe", "analysis", "rollout", "apply", "backup", "status",
    ] {
        assert!(names.contains(&want), "no {want} step in {names:?}");
    }
    for s in &steps {
        assert_eq!(s.trace_id, provisioning.trace_id, "{s:?}");
    }
    // Each child object applied is a span under the apply step.
    let apply = steps
        .iter()
        .find(|s| s.name == "apply")
        .expect("apply step");
    let applied: Vec<String> = children_of(apply).into_iter().map(|s| s.name).collect();
    assert!(
        applied.contains(&"apply Deployment/acme-blue".to_string())
            && applied.contains(&"apply Service/acme".to_string())
            && applied.contains(&"apply PodDisruptionBudget/acme".to_string()),
        "{applied:?}"
    );
    let blue = children_of(apply)
        .into_iter()
        .find(|s| s.name == "apply Deployment/acme-blue")
        .expect("blue");
    assert_eq!(blue.attr("kind"), Some("Deployment"));
    assert_eq!(blue.attr("written"), Some("true"));
    // The database Secret is applied inside the database step.
    let database = steps
        .iter()
        .find(|s| s.name == "database")
        .expect("database step");
    assert!(
        children_of(database)
            .iter()
            .any(|s| s.name == "apply Secret/acme-db"),
        "{:?}",
        children_of(database)
    );
}
