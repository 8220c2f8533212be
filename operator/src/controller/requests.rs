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

/// What an idle resync sends today: no status write and no Event, but a
/// server-side apply of both Secrets and every child, each resync.
#[tokio::test]
async fn an_idle_resync_today_reapplies_the_secrets_and_every_child() {
    let (ctx, verifier) = settled().await;
    let seen = run(&ctx, &verifier).await;
    let mut want = vec![DB_SECRET, AUTH_SECRET];
    want.extend(CHILDREN);
    assert_eq!(writes(&seen), want);
    assert_eq!(
        seen.iter().filter(|s| !s.is_write()).count(),
        13,
        "reads: tenant, 3 Secrets, 2 Deployments, 7 prune lists (CronJob included)"
    );
}

#[tokio::test]
#[ignore = "issue 13: skip no-op applies"]
async fn an_idle_resync_sends_no_write() {
    let (ctx, verifier) = settled().await;
    let seen = run(&ctx, &verifier).await;
    assert_eq!(writes(&seen), Vec::<String>::new());
}
