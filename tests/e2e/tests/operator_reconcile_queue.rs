//! Reconciles wait for a slot (`--max-concurrent-reconciles`,
//! `controller::admission`) on a real apiserver and PostgreSQL. With one
//! slot and a 2-s resync, tenants applied at once all provision, an edit is
//! acted on while resyncs keep the slot busy, and every reconcile went
//! through the queue. One slot is the strictest setting: a reconcile that
//! waited for another one would never finish here.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{sync::atomic::Ordering, time::Duration};

use chorus_e2e::{
    operator::{CONVERGE, OperatorEnv, TEST_RESOURCES, create_tenant, tenant_yaml},
    wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const TENANTS: [&str; 4] = ["queue-a", "queue-b", "queue-c", "queue-d"];

#[tokio::test]
async fn one_slot_provisions_every_tenant_and_acts_on_an_edit() {
    let env = OperatorEnv::limited("op-queue", Duration::from_secs(2), 1)
        .await
        .unwrap();
    // No pods: the queue is what is under test, not the node.
    let runtime = format!(
        "  runtime: {{image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\", replicas: 0, resources: {TEST_RESOURCES}}}"
    );
    for name in TENANTS {
        let (yaml, _) = tenant_yaml(name, &runtime);
        create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    }
    for name in TENANTS {
        env.wait_condition(name, "DatabaseReady", "True", None)
            .await
            .unwrap();
    }

    // Resyncs of four tenants every 2 s keep the one slot busy; an edit is
    // still acted on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let image = "ghcr.io/chorus-dev/chat-runtime:0.1.1";
    env.api::<chorus_operator::crd::ChatTenant>()
        .patch(
            "queue-c",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"runtime": {"image": image}}})),
        )
        .await
        .unwrap();
    let deployments = env.api::<Deployment>();
    wait_for(
        "the edited image in a Deployment of the tenant",
        CONVERGE,
        || {
            let deployments = deployments.clone();
            async move {
                let list = deployments.list(&Default::default()).await.ok()?;
                list.items
                    .iter()
                    .filter(|d| {
                        d.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("queue-c-"))
                    })
                    .flat_map(|d| d.spec.iter())
                    .flat_map(|s| s.template.spec.iter())
                    .flat_map(|p| p.containers.iter())
                    .any(|c| c.image.as_deref() == Some(image))
                    .then_some(())
            }
        },
    )
    .await
    .unwrap();

    let ctx = env.stop().await;
    let reconciles = ctx.reconcile_count.load(Ordering::Relaxed);
    let metrics = ctx.metrics.render();
    let waited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chorus_reconcile_wait_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_default();
    assert!(reconciles >= 12, "it resynced: {reconciles} reconciles");
    assert_eq!(
        waited, reconciles,
        "every reconcile took its slot from the queue:\n{metrics}"
    );
}
