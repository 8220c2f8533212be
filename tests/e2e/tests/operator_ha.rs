//! Two operator replicas with leader election on a coordination.k8s.io Lease:
//! only the leader reconciles; when it stops, the other takes over.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{sync::atomic::Ordering, time::Duration};

use chorus_e2e::{
    TestNamespace, admin_client,
    operator::{
        RunningOperator, create_tenant, install_crd, put_server_secret, tenant_yaml, wait_condition,
    },
    wait_for,
};
use chorus_operator::{crd::ChatTenant, runner::LeaderElection};
use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

/// Real pods start, migrate and pass their probes before Ready.
const T: Duration = Duration::from_secs(120);

fn leader(ns: &str, identity: &str) -> Option<LeaderElection> {
    Some(LeaderElection {
        lease_name: "chorus-operator".into(),
        lease_namespace: ns.into(),
        identity: identity.into(),
        lease_seconds: 3,
    })
}

#[tokio::test]
async fn only_the_leader_reconciles_and_the_other_takes_over() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "op-ha").await.unwrap().name;
    put_server_secret(&client, &ns, "shared-pg", None)
        .await
        .unwrap();
    let a = RunningOperator::start_with(
        client.clone(),
        &ns,
        Duration::from_secs(300),
        leader(&ns, "replica-a"),
    );
    let b = RunningOperator::start_with(
        client.clone(),
        &ns,
        Duration::from_secs(300),
        leader(&ns, "replica-b"),
    );

    let (yaml, _) = tenant_yaml("acme", "");
    create_tenant(&client, &ns, &yaml).await.unwrap();
    wait_condition(&client, &ns, "acme", "Ready", "True", None, T)
        .await
        .unwrap();

    let count = |op: &RunningOperator| op.context.reconcile_count.load(Ordering::Relaxed);
    let (ra, rb) = (count(&a), count(&b));
    assert!(
        (ra > 0) ^ (rb > 0),
        "exactly one replica reconciles (a: {ra}, b: {rb})"
    );
    let (leader_op, follower_op, follower_name) = if ra > 0 {
        (a, b, "replica-b")
    } else {
        (b, a, "replica-a")
    };
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("chorus-operator")
        .await
        .unwrap();
    let holder = lease.spec.unwrap().holder_identity.unwrap();
    assert_ne!(holder, follower_name, "the Lease names the leader");

    // The leader stops (and releases the Lease); the follower takes over and
    // acts on the next change.
    leader_op.stop().await;
    let cts: Api<ChatTenant> = Api::namespaced(client.clone(), &ns);
    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runtime": {"replicas": 5}}})),
    )
    .await
    .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for("the new leader to scale blue to 5", T, || {
        let d = deps.clone();
        async move { (d.get("acme-blue").await.ok()?.spec?.replicas == Some(5)).then_some(()) }
    })
    .await
    .unwrap();
    assert!(count(&follower_op) > 0, "the former follower reconciled");
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("chorus-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(follower_name)
    );
    follower_op.stop().await;
}
