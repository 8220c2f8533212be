//! An idle resync writes nothing and lists nothing, counted at the
//! apiserver (API Priority and Fairness counts the operator's requests per
//! FlowSchema, see `chorus_e2e::requests`): once a tenant is Ready and its
//! pods are steady, several resyncs send reads only. A hand edit of a child
//! is still repaired.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{sync::atomic::Ordering, time::Duration};

use chorus_e2e::{
    operator::{CONVERGE, OperatorEnv},
    requests::RequestCounter,
    wait_for,
};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::api::{Patch, PatchParams};
use serde_json::json;

const RESYNC: Duration = Duration::from_secs(3);

#[tokio::test]
async fn an_idle_resync_writes_nothing_and_lists_nothing() {
    let env = OperatorEnv::new("op-idle", RESYNC).await.unwrap();
    let counter = RequestCounter::install(&env.client, &env.ns).await.unwrap();
    // The FlowSchemas are cluster-wide: removed whatever the outcome.
    let checked = std::panic::AssertUnwindSafe(idle_and_drift(&env, &counter));
    let outcome = futures::FutureExt::catch_unwind(checked).await;
    counter.remove().await;
    env.stop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn idle_and_drift(env: &OperatorEnv, counter: &RequestCounter) {
    env.ready_tenant("idle", "").await.unwrap();
    // Steady: both Deployments caught up and the stable one available.
    let deployments = env.api::<Deployment>();
    wait_for("steady Deployments", CONVERGE, || {
        let deployments = deployments.clone();
        async move {
            let list = deployments.list(&Default::default()).await.ok()?;
            list.items
                .iter()
                .all(|d| {
                    let st = d.status.clone().unwrap_or_default();
                    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    st.observed_generation == d.metadata.generation
                        && st.replicas.unwrap_or(0) == want
                        && st.available_replicas.unwrap_or(0) == want
                })
                .then_some(())
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(RESYNC * 2).await;

    let reconciles = || env.operator.context.reconcile_count.load(Ordering::Relaxed);
    let (before, r0) = (counter.counts().await.unwrap(), reconciles());
    tokio::time::sleep(RESYNC * 4).await;
    let (idle, r1) = (counter.counts().await.unwrap() - before, reconciles());
    assert!(r1 - r0 >= 3, "it resynced: {} reconciles", r1 - r0);
    assert!(
        idle.others > 0,
        "the operator's reads are counted: {idle:?}"
    );
    assert_eq!(idle.writes, 0, "{} reconciles wrote: {idle:?}", r1 - r0);
    assert_eq!(idle.lists, 0, "{} reconciles listed: {idle:?}", r1 - r0);

    // Drift is still repaired: a Service port edited by hand comes back.
    let services = env.api::<Service>();
    let patch = json!({"spec": {"ports": [{"port": 8080, "targetPort": 9999}]}});
    services
        .patch("idle", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .unwrap();
    wait_for("the Service to be repaired", CONVERGE, || {
        let services = services.clone();
        async move {
            let s = services.get("idle").await.ok()?;
            let port = s.spec?.ports?.into_iter().find(|p| p.port == 8080)?;
            (port.target_port? == IntOrString::String("http".into())).then_some(())
        }
    })
    .await
    .unwrap();
}
