//! The two-slot layout end to end: a canary by replica ratio, a stale
//! promoteRevision that does nothing, promotion with a cut-over and drain,
//! the spec catching up without a restart, an abort; Gateway API routes with
//! exact weights, and a missing Gateway API reported in a condition.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    operator::{OperatorEnv, TEST_RESOURCES, condition, create_tenant, wait_condition},
    unique_suffix, wait_for,
};
use chorus_operator::{crd::ChatTenant, validate::revision_of};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    core::{ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::json;

/// Real pods start, migrate and pass their probes before Ready.
const T: Duration = Duration::from_secs(120);
const OLD: &str = "ghcr.io/chorus-dev/chat-runtime:0.1.0";
const NEW: &str = "ghcr.io/chorus-dev/chat-runtime:0.2.0";

async fn deployment(api: &Api<Deployment>, name: &str) -> (String, i32) {
    let d = api.get(name).await.unwrap();
    let spec = d.spec.unwrap();
    (
        spec.template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap(),
        spec.replicas.unwrap(),
    )
}

async fn wait_deployment(api: &Api<Deployment>, name: &str, image: &str, replicas: i32) {
    let what = format!("{name} running {image} x{replicas}");
    wait_for(&what, T, || {
        let api = api.clone();
        async move {
            let d = api.get(name).await.ok()?;
            let spec = d.spec?;
            let c = spec.template.spec?.containers[0].image.clone()?;
            (c == image && spec.replicas == Some(replicas)).then_some(())
        }
    })
    .await
    .unwrap();
}

async fn merge(api: &Api<ChatTenant>, patch: serde_json::Value) {
    api.patch("acme", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

fn tenant_yaml(extra: &str) -> String {
    format!(
        r#"
apiVersion: chorus.dev/v1alpha1
kind: ChatTenant
metadata: {{name: acme}}
spec:
  tenantId: acme
  runtime: {{image: "{OLD}", replicas: 4, resources: {TEST_RESOURCES}}}
  database: {{serverRef: {{name: shared-pg}}, name: chat_rollout_{}, reclaimPolicy: Delete}}
{extra}
"#,
        unique_suffix()
    )
}

#[tokio::test]
async fn canary_promote_drain_and_abort_by_revision() {
    let env = OperatorEnv::new("rollout", Duration::from_secs(300))
        .await
        .unwrap();
    let (client, ns) = (env.client.clone(), env.ns.clone());
    create_tenant(&client, &ns, &tenant_yaml("  rollout: {drainSeconds: 3}"))
        .await
        .unwrap();
    wait_condition(&client, &ns, "acme", "Ready", "True", None, T)
        .await
        .unwrap();
    let cts: Api<ChatTenant> = Api::namespaced(client.clone(), &ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);

    // Canary at 25% without a Gateway: one pod of four, serving both slots.
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": NEW}, "canary": {"weight": 25}}}}),
    )
    .await;
    wait_deployment(&deps, "acme-green", NEW, 1).await;
    // Stable gives up its pod once the candidate's is available; the status
    // written in that reconcile shows the effective 25%.
    wait_deployment(&deps, "acme-blue", OLD, 3).await;
    let ct = wait_for("AwaitingPromotion at an effective 25%", T, || {
        let api = cts.clone();
        async move {
            let ct = api.get("acme").await.ok()?;
            let st = ct.status.as_ref()?;
            (condition(&ct, "AwaitingPromotion")?.status == "True"
                && st.traffic.as_ref()?.canary_weight == 25)
                .then_some(ct)
        }
    })
    .await
    .unwrap();
    let status = ct.status.clone().unwrap();
    let rev = status.candidate.as_ref().unwrap().revision.clone();
    assert_eq!(
        rev,
        status.release.as_ref().unwrap().revision,
        "the release's own revision"
    );
    assert_ne!(rev, revision_of(NEW), "not a hash of the image alone");
    let traffic = status.traffic.unwrap();
    assert_eq!(
        (traffic.canary_weight, traffic.provider.as_str()),
        (25, "ReplicaRatio")
    );
    let serving = svcs
        .get("acme")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    assert!(
        !serving.contains_key("chorus.dev/slot"),
        "replica ratio: the serving Service selects both slots"
    );
    assert_eq!(
        condition(&ct, "Ready").unwrap().status,
        "True",
        "stable keeps serving"
    );

    // A promoteRevision that names another release does nothing.
    merge(
        &cts,
        json!({"spec": {"rollout": {"promoteRevision": revision_of("some/other:9.9")}}}),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deployment(&deps, "acme-green").await, (NEW.to_string(), 1));
    assert_eq!(
        cts.get("acme")
            .await
            .unwrap()
            .status
            .unwrap()
            .stable
            .unwrap()
            .slot,
        "blue"
    );

    // The right revision promotes: green scales up, takes over, blue drains.
    merge(&cts, json!({"spec": {"rollout": {"promoteRevision": rev}}})).await;
    let promoted = wait_condition(
        &client,
        &ns,
        "acme",
        "Progressing",
        "False",
        Some("Promoted"),
        T,
    )
    .await
    .unwrap();
    let st = promoted.status.unwrap();
    let stable = st.stable.unwrap();
    assert_eq!(
        (stable.slot.as_str(), stable.image.as_str()),
        ("green", NEW)
    );
    assert!(st.draining.is_some(), "the old slot drains");
    assert_eq!(deployment(&deps, "acme-green").await, (NEW.to_string(), 4));
    let serving = svcs
        .get("acme")
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap();
    assert_eq!(
        serving.get("chorus.dev/slot").map(String::as_str),
        Some("green")
    );
    // After drainSeconds the old slot goes to zero.
    wait_deployment(&deps, "acme-blue", OLD, 0).await;

    // The SRE moves the image into spec.runtime.image: nothing restarts.
    let green_generation = deps.get("acme-green").await.unwrap().metadata.generation;
    merge(&cts, json!({"spec": {"runtime": {"image": NEW}, "rollout": {"candidate": null, "canary": null, "promoteRevision": null}}})).await;
    wait_condition(
        &client,
        &ns,
        "acme",
        "Progressing",
        "False",
        Some("Complete"),
        T,
    )
    .await
    .unwrap();
    assert_eq!(
        deps.get("acme-green").await.unwrap().metadata.generation,
        green_generation
    );

    // Next release, aborted: all traffic back on stable, candidate at zero.
    let third = "ghcr.io/chorus-dev/chat-runtime:0.3.0";
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": third}, "canary": {"weight": 50}}}}),
    )
    .await;
    wait_deployment(&deps, "acme-blue", third, 2).await;
    let third_rev = wait_for("release of 0.3.0 in status", T, || {
        let api = cts.clone();
        async move {
            let r = api.get("acme").await.ok()?.status?.release?;
            (r.image == third).then_some(r.revision)
        }
    })
    .await
    .unwrap();
    merge(
        &cts,
        json!({"spec": {"rollout": {"abortRevision": third_rev}}}),
    )
    .await;
    let aborted = wait_condition(
        &client,
        &ns,
        "acme",
        "Progressing",
        "False",
        Some("Aborted"),
        T,
    )
    .await
    .unwrap();
    wait_deployment(&deps, "acme-blue", third, 0).await;
    wait_deployment(&deps, "acme-green", NEW, 4).await;
    assert_eq!(aborted.status.unwrap().traffic.unwrap().canary_weight, 0);

    let events: Vec<String> =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|e| e.reason)
            .collect();
    for r in ["ReleaseStarted", "Promoted", "Aborted"] {
        assert!(
            events.iter().any(|e| e == r),
            "missing Event {r}: {events:?}"
        );
    }
    env.stop().await;
}

fn http_routes() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

#[tokio::test]
async fn gateway_routes_carry_exact_weights_and_a_missing_gateway_api_is_reported() {
    let env = OperatorEnv::new("gateway", Duration::from_secs(2))
        .await
        .unwrap();
    let (client, ns) = (env.client.clone(), env.ns.clone());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Start without the Gateway API (a rerun on a reused cluster removes it).
    if crds
        .get_opt("httproutes.gateway.networking.k8s.io")
        .await
        .unwrap()
        .is_some()
    {
        crds.delete(
            "httproutes.gateway.networking.k8s.io",
            &DeleteParams::default(),
        )
        .await
        .unwrap();
        wait_for("the HTTPRoute CRD to go", T, || {
            let c = crds.clone();
            async move {
                c.get_opt("httproutes.gateway.networking.k8s.io")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            }
        })
        .await
        .unwrap();
    }
    create_tenant(
        &client,
        &ns,
        &tenant_yaml("  exposure: {host: acme.example.com, gateway: {parentRef: {name: public, namespace: gateways}}}"),
    )
    .await
    .unwrap();
    let ct = wait_condition(
        &client,
        &ns,
        "acme",
        "Degraded",
        "True",
        Some("GatewayAPIMissing"),
        T,
    )
    .await
    .unwrap();
    assert!(
        condition(&ct, "Degraded")
            .unwrap()
            .message
            .contains("install its CRDs")
    );
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("acme-blue")
            .await
            .unwrap()
            .is_some()
    );

    // Install a (minimal) Gateway API HTTPRoute CRD: the route appears.
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "httproutes.gateway.networking.k8s.io",
            "annotations": {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}},
        "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
            "names": {"plural": "httproutes", "singular": "httproute", "kind": "HTTPRoute", "listKind": "HTTPRouteList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .unwrap();
    crds.patch(
        &crd.name_any(),
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &http_routes());
    let route = wait_for("the HTTPRoute", T, || {
        let r = routes.clone();
        async move { r.get_opt("acme").await.ok().flatten() }
    })
    .await
    .unwrap();
    assert_eq!(route.data["spec"]["hostnames"][0], "acme.example.com");
    assert_eq!(route.data["spec"]["parentRefs"][0]["namespace"], "gateways");
    wait_condition(&client, &ns, "acme", "Degraded", "False", None, T)
        .await
        .unwrap();

    // A canary at 10% is exact on the route, stable keeps full capacity.
    let cts: Api<ChatTenant> = Api::namespaced(client.clone(), &ns);
    merge(
        &cts,
        json!({"spec": {"rollout": {"candidate": {"image": NEW}, "canary": {"weight": 10}}}}),
    )
    .await;
    wait_for("route weights 90/10", T, || {
        let r = routes.clone();
        async move {
            let route = r.get("acme").await.ok()?;
            let b = route.data["spec"]["rules"][0]["backendRefs"]
                .as_array()?
                .clone();
            (b[0]["name"] == "acme-blue"
                && b[0]["weight"] == 90
                && b[1]["name"] == "acme-green"
                && b[1]["weight"] == 10)
                .then_some(())
        }
    })
    .await
    .unwrap();
    let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_deployment(&deps, "acme-blue", OLD, 4).await;
    wait_deployment(&deps, "acme-green", NEW, 1).await;
    wait_for("status.traffic.provider GatewayAPI", T, || {
        let api = cts.clone();
        async move {
            let p = api.get("acme").await.ok()?.status?.traffic?.provider;
            (p == "GatewayAPI").then_some(())
        }
    })
    .await
    .unwrap();

    // Exposure removed: the route is deleted.
    merge(&cts, json!({"spec": {"exposure": null}})).await;
    wait_for("the HTTPRoute to be deleted", T, || {
        let r = routes.clone();
        async move { r.get_opt("acme").await.ok()?.is_none().then_some(()) }
    })
    .await
    .unwrap();
    env.stop().await;
}
