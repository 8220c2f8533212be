//! Values the runtime pods read only at start-up reach them: a changed
//! database server Secret rolls the Deployment (new ReplicaSet, new pods with
//! the new `CHAT_DATABASE_URL`), and every `spec.limits` field arrives in the
//! applied Deployment's environment.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    operator::{CONVERGE, OperatorEnv, TEST_RESOURCES, secret_text},
    wait_for,
};
use chorus_operator::names::{DATABASE_URI_ANNOTATION, key_checksum};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Secret,
};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;

fn template_annotation(d: &Deployment, key: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(key)
        .cloned()
}

fn env_of(d: &Deployment, name: &str) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[tokio::test]
async fn a_changed_server_secret_rolls_the_pods_and_every_limit_reaches_the_env() {
    let env = OperatorEnv::new("op-startup", Duration::from_secs(300))
        .await
        .unwrap();
    // Readiness flips once the API server answered and the watch listed.
    let health = env.operator.context.health.clone();
    wait_for("the operator to be ready", CONVERGE, || async {
        health
            .not_ready(std::time::Instant::now())
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    let limits = format!(
        "  runtime: {{image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\", replicas: 1, resources: {TEST_RESOURCES}}}\n  limits: {{maxConnectionsPerReplica: 1234, messagesPerSecondPerUser: 7, maxMessageBytes: 4096, historyRetentionDays: 30}}"
    );
    env.ready_tenant("su", &limits).await.unwrap();
    let deployments = env.api::<Deployment>();
    let before = deployments.get("su-blue").await.unwrap();

    // Every spec.limits field, as the applied Deployment carries it.
    for (var, want) in [
        ("CHAT_MAX_CONNECTIONS", "1234"),
        ("CHAT_MESSAGES_PER_SECOND", "7"),
        ("CHAT_MAX_MESSAGE_BYTES", "4096"),
        ("CHAT_HISTORY_RETENTION_DAYS", "30"),
    ] {
        assert_eq!(env_of(&before, var).as_deref(), Some(want), "{var}");
    }

    let uri = secret_text(&env.client, &env.ns, "su-db", "uri")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        template_annotation(&before, DATABASE_URI_ANNOTATION),
        Some(key_checksum(&uri))
    );

    // The server Secret changes a value the pods read only at start-up (the
    // URI's sslmode; a host change is the same path but needs cluster DNS).
    env.api::<Secret>()
        .patch(
            "shared-pg",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"sslmode": "prefer"}})),
        )
        .await
        .unwrap();
    let new_uri = wait_for("the tenant Secret to follow", CONVERGE, || async {
        let u = secret_text(&env.client, &env.ns, "su-db", "uri")
            .await
            .ok()??;
        u.contains("sslmode=prefer").then_some(u)
    })
    .await
    .unwrap();
    let after = wait_for("the pod template to change", CONVERGE, || async {
        let d = deployments.get("su-blue").await.ok()?;
        (template_annotation(&d, DATABASE_URI_ANNOTATION) == Some(key_checksum(&new_uri)))
            .then_some(d)
    })
    .await
    .unwrap();
    assert_ne!(
        before.spec.as_ref().unwrap().template,
        after.spec.as_ref().unwrap().template
    );

    // A new ReplicaSet whose pods carry the new checksum, rolled out and Ready.
    let rs = wait_for("a new ReplicaSet with ready pods", CONVERGE, || async {
        let list = env
            .api::<ReplicaSet>()
            .list(&ListParams::default().labels("chorus.dev/tenant=su"))
            .await
            .ok()?;
        list.items.into_iter().find(|rs| {
            let ann = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(DATABASE_URI_ANNOTATION).cloned());
            ann == Some(key_checksum(&new_uri))
                && rs.status.as_ref().and_then(|s| s.ready_replicas) == Some(1)
        })
    })
    .await
    .unwrap();
    assert!(rs.metadata.name.unwrap().starts_with("su-blue-"));
    env.wait_condition("su", "Ready", "True", None)
        .await
        .unwrap();
    env.stop().await;
}
