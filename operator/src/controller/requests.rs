//! The controller's requests, checked at the API level with the
//! [`crate::fixtures`] verifier: which writes a reconcile sends, in which
//! order, for a new tenant and for an idle resync.

use std::sync::Arc;

use super::{Context, reconcile};
use crate::fixtures::{ApiServerVerifier, Seen, context, tenant_path};

async fn run(ctx: &Arc<Context>, verifier: &ApiServerVerifier) -> Vec<Seen> {
    let ct = verifier.tenant(&tenant_path("tenants", "acme"));
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        reconcile(ct, ctx.clone()),
    )
    .await
    .expect("a reconcile finishes within 5 s");
    assert!(result.is_ok(), "{result:?}");
    verifier.take()
}

fn writes(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.is_write())
        .map(Seen::line)
        .collect()
}

const TENANT: &str = "PATCH /apis/chorus.dev/v1alpha1/namespaces/tenants/chattenants/acme";
const STATUS: &str = "PATCH /apis/chorus.dev/v1alpha1/namespaces/tenants/chattenants/acme/status";
const EVENT: &str = "POST /apis/events.k8s.io/v1/namespaces/tenants/events";
const DB_SECRET: &str = "PATCH /api/v1/namespaces/tenants/secrets/acme-db";
const AUTH_SECRET: &str = "PATCH /api/v1/namespaces/tenants/secrets/acme-auth";
/// The children of the sample tenant, in the order of the one list.
const CHILDREN: [&str; 7] = [
    "PATCH /apis/apps/v1/namespaces/tenants/deployments/acme-blue",
    "PATCH /apis/apps/v1/namespaces/tenants/deployments/acme-green",
    "PATCH /api/v1/namespaces/tenants/services/acme",
    "PATCH /api/v1/namespaces/tenants/services/acme-blue",
    "PATCH /api/v1/namespaces/tenants/services/acme-green",
    "PATCH /api/v1/namespaces/tenants/services/acme-preview",
    "PATCH /apis/policy/v1/namespaces/tenants/poddisruptionbudgets/acme",
];

fn event_reasons(seen: &[Seen]) -> Vec<String> {
    seen.iter()
        .filter(|s| s.line() == EVENT)
        .map(|s| s.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn the_first_reconcile_only_adds_the_finalizer() {
    let (ctx, verifier) = context();
    let seen = run(&ctx, &verifier).await;
    assert_eq!(writes(&seen), [TENANT]);
    assert_eq!(
        seen[0].body,
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["chorus.dev/cleanup"]},
        ])
    );
}

#[tokio::test]
async fn a_new_tenant_gets_its_secrets_then_its_children_then_a_status() {
    let (ctx, verifier) = context();
    run(&ctx, &verifier).await;
    let seen = run(&ctx, &verifier).await;
    let mut want = vec![DB_SECRET, EVENT, EVENT, EVENT, AUTH_SECRET, EVENT];
    want.extend(CHILDREN);
    want.push(STATUS);
    assert_eq!(writes(&seen), want);
    assert_eq!(
        event_reasons(&seen),
        [
            "RoleCreated",
            "DatabaseCreated",
            "SecretCreated",
            "AuthKeyCreated"
        ]
    );
    // Every apply is a forced server-side apply by the operator.
    for s in seen.iter().filter(|s| s.method == "PATCH") {
        assert!(
            s.uri.contains("fieldManager=chorus-operator") && s.uri.contains("force=true"),
            "{}",
            s.uri
        );
    }
    let status = seen.iter().find(|s| s.line() == STATUS).map(|s| &s.body);
    let ready = status.and_then(|b| {
        b["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "DatabaseReady")
            .cloned()
    });
    assert_eq!(ready.map(|c| c["status"].clone()), Some("True".into()));
}

/// Runs the reconciles that bring the sample tenant to rest: the finalizer,
/// the first provisioning, and one more that sees the Deployments it made.
async fn settled() -> (Arc<Context>, ApiServerVerifier) {
    let (ctx, verifier) = context();
    for _ in 0..3 {
        run(&ctx, &verifier).await;
    }
    (ctx, verifier)
}

/// An idle resync reads (the tenant, its Secrets, each child: without the
/// watch caches of a running controller, children are read one by one) and
/// writes nothing: no apply, no status, no Event.
#[tokio::test]
async fn an_idle_resync_sends_no_write() {
    let (ctx, verifier) = settled().await;
    let seen = run(&ctx, &verifier).await;
    assert_eq!(writes(&seen), Vec::<String>::new());
    assert!(!seen.is_empty(), "it did read");
}

/// A child edited or deleted by hand is put back by the next reconcile, and
/// only that child is written.
#[tokio::test]
async fn drift_is_repaired_child_by_child() {
    let (ctx, verifier) = settled().await;
    let blue = "/apis/apps/v1/namespaces/tenants/deployments/acme-blue";
    let mut edited = verifier.get(blue).unwrap_or_default();
    edited["spec"]["replicas"] = serde_json::json!(7);
    verifier.insert(blue, edited);
    let seen = run(&ctx, &verifier).await;
    assert_eq!(writes(&seen), [CHILDREN[0]]);
    assert_ne!(
        verifier.get(blue).unwrap_or_default()["spec"]["replicas"],
        7
    );

    verifier.remove("/api/v1/namespaces/tenants/services/acme-preview");
    verifier.remove("/api/v1/namespaces/tenants/secrets/acme-auth");
    let seen = run(&ctx, &verifier).await;
    // The auth key is gone with its Secret: a new one is made (and said),
    // and the pods get its checksum.
    let applies: Vec<String> = writes(&seen)
        .into_iter()
        .filter(|w| !w.contains("/events"))
        .collect();
    assert_eq!(
        applies,
        [AUTH_SECRET, CHILDREN[0], CHILDREN[1], CHILDREN[5]]
    );
    assert_eq!(writes(&run(&ctx, &verifier).await), Vec::<String>::new());
}
