//! Proves the test environment is real: a kube-apiserver that serves CRDs,
//! watches, server-side apply with conflicts and RBAC; controllers that create
//! ServiceAccounts and roll out Deployments; a real node that runs pods and a
//! kwok fake node that holds many; metrics-server's API; and a PostgreSQL that
//! runs sqlx migrations.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{TestNamespace, admin_client, fresh_database, service_account_client, wait_for};
use futures::StreamExt;
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, CustomResource, CustomResourceExt, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        WatchStreamExt,
        wait::{await_condition, conditions},
        watcher,
    },
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A throwaway custom resource for the smoke test.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "smoke.chorus.dev",
    version = "v1",
    kind = "Widget",
    namespaced
)]
struct WidgetSpec {
    size: i32,
}

#[tokio::test]
async fn apiserver_reports_the_built_version() {
    let client = admin_client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert!(
        version.git_version.starts_with("v1.36."),
        "kube-apiserver reports {}, expected v1.36.x",
        version.git_version
    );
}

#[tokio::test]
async fn crd_watch_and_server_side_apply_conflict() {
    let client = admin_client().await.unwrap();
    let ns = TestNamespace::create(&client, "smoke-crd").await.unwrap();

    // Install the CRD and wait until the apiserver serves it.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "widgets.smoke.chorus.dev",
        &PatchParams::apply("chorus-e2e").force(),
        &Patch::Apply(Widget::crd()),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "widgets.smoke.chorus.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD not Established within 30s")
    .unwrap();

    // Watch, then create: the watch must deliver the new object. A watch
    // error is not the end of the stream: kube-runtime's watcher yields it and
    // then lists again. A fresh CRD shows why: its watch cache starts after
    // the first list, so the first WATCH can get 410 "too old resource
    // version" (seen in CI: "645 (661)"), and a client that stops there has a
    // watch that never resumes. After such a re-list the object arrives in the
    // new initial list (InitApply) instead of as an Apply.
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns.name);
    let mut events = watcher(widgets.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut watch_errors = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitDone) => return,
                Ok(_) => {}
                Err(e) => watch_errors.push(e.to_string()),
            }
        }
        panic!("watch ended before its initial list");
    })
    .await
    .expect("the watch did not finish its initial list");
    // Server-side apply creates the object, owned by field manager "team-a".
    let patch = |size: i32| json!({"apiVersion": "smoke.chorus.dev/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": size}});
    let created = widgets
        .patch("w1", &PatchParams::apply("team-a"), &Patch::Apply(patch(1)))
        .await
        .unwrap();
    assert_eq!(created.spec.size, 1);
    let observed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(w) | watcher::Event::InitApply(w))
                    if w.name_any() == "w1" =>
                {
                    return w;
                }
                Ok(_) => {}
                Err(e) => watch_errors.push(e.to_string()),
            }
        }
        panic!("watch ended");
    })
    .await
    .unwrap_or_else(|_| {
        panic!("the watch did not deliver the created object; watch errors: {watch_errors:?}")
    });
    assert_eq!(observed.spec.size, 1);

    // Two field managers disagree on one field: the second gets a conflict.
    widgets
        .patch("w1", &PatchParams::apply("team-a"), &Patch::Apply(patch(2)))
        .await
        .unwrap();
    let err = widgets
        .patch("w1", &PatchParams::apply("team-b"), &Patch::Apply(patch(3)))
        .await
        .expect_err("a second field manager must conflict");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409, "expected 409 Conflict, got {status:?}")
        }
        other => panic!("expected an API conflict, got {other}"),
    }
    // Forcing takes ownership.
    let forced = widgets
        .patch(
            "w1",
            &PatchParams::apply("team-b").force(),
            &Patch::Apply(patch(3)),
        )
        .await
        .unwrap();
    assert_eq!(forced.spec.size, 3);
}

#[tokio::test]
async fn rbac_denies_then_allows_a_service_account() {
    let admin = admin_client().await.unwrap();
    let ns = TestNamespace::create(&admin, "smoke-rbac").await.unwrap();
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("reader".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();

    let as_reader: Api<ConfigMap> = Api::namespaced(
        service_account_client(&ns.name, "reader").await.unwrap(),
        &ns.name,
    );
    match as_reader.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden before any Role exists, got {other:?}"),
    }

    let role = Role {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..ObjectMeta::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into(), "list".into()],
            ..PolicyRule::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("configmap-reader".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "configmap-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.name.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns.name)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The RBAC authorizer reads from an informer cache: allow it to catch up.
    wait_for(
        "the RoleBinding to take effect",
        Duration::from_secs(10),
        || {
            let api = as_reader.clone();
            async move { api.list(&ListParams::default()).await.ok() }
        },
    )
    .await
    .unwrap();
    // Writes stay forbidden: the Role grants reads only.
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("nope".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    match as_reader.create(&PostParams::default(), &cm).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 for a create the Role does not grant, got {other:?}"),
    }
}

#[tokio::test]
async fn postgres_runs_a_migration() {
    let url = fresh_database("smoke").await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::migrate!("./migrations").run(&pool).await.unwrap();
    sqlx::query("INSERT INTO smoke_notes (body) VALUES ($1)")
        .bind("hello")
        .execute(&pool)
        .await
        .unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM smoke_notes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied, 1);
}

/// A Deployment of the sandbox image (a program that only waits), so the
/// smoke test needs nothing but the cluster itself.
fn pause_deployment(name: &str, replicas: i32, on_kwok: bool) -> serde_json::Value {
    let mut pod = json!({
        "containers": [{"name": "pause", "image": "localhost/chorus/pause:3.10", "imagePullPolicy": "Never"}],
        "terminationGracePeriodSeconds": 1
    });
    if on_kwok {
        pod["nodeSelector"] = json!({"type": "kwok"});
        pod["tolerations"] =
            json!([{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod}
        }
    })
}

#[tokio::test]
async fn controllers_schedule_and_run_pods_on_the_real_node_and_on_kwok() {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        core::v1::{Node, Pod},
    };
    let client = admin_client().await.unwrap();
    let ns = TestNamespace::create(&client, "smoke-node").await.unwrap();
    // kube-controller-manager's ServiceAccount controller.
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), &ns.name);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten() }
        },
    )
    .await
    .unwrap();
    // The real node and the fake ones are Ready; the fake ones are tainted.
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let real: Vec<_> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() == Some("chorus-node"))
        .collect();
    assert_eq!(real.len(), 1);
    assert!(ready(real[0]));
    let fake: Vec<_> = nodes
        .iter()
        .filter(|n| n.labels().get("type").map(String::as_str) == Some("kwok"))
        .collect();
    assert!(!fake.is_empty() && fake.iter().all(|n| ready(n)));
    assert!(fake.iter().all(|n| {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "kwok.x-k8s.io/node"))
    }));

    // Deployments roll out: one pod on the real node, fifty on kwok.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    for (name, replicas, kwok) in [("real", 1, false), ("fake", 50, true)] {
        deployments
            .patch(
                name,
                &PatchParams::apply("smoke").force(),
                &Patch::Apply(pause_deployment(name, replicas, kwok)),
            )
            .await
            .unwrap();
    }
    for (name, replicas) in [("real", 1), ("fake", 50)] {
        let deployments = deployments.clone();
        wait_for(
            &format!("Deployment {name} available"),
            Duration::from_secs(120),
            || {
                let deployments = deployments.clone();
                async move {
                    let st = deployments.get(name).await.ok()?.status?;
                    (st.available_replicas == Some(replicas)).then_some(())
                }
            },
        )
        .await
        .unwrap();
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let real_pods = pods
        .list(&ListParams::default().labels("app=real"))
        .await
        .unwrap()
        .items;
    let pod = &real_pods[0];
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("chorus-node")
    );
    let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert!(
        ip.starts_with("10.244.0."),
        "a pod IP on the node bridge: {ip}"
    );
    let fake_pods = pods
        .list(&ListParams::default().labels("app=fake"))
        .await
        .unwrap()
        .items;
    assert!(fake_pods.iter().all(|p| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| n.starts_with("kwok-node-"))
    }));

    // metrics-server's API is served through the aggregation layer.
    let metrics = client
        .request_text(
            http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes/chorus-node")
                .body(Vec::new())
                .unwrap(),
        )
        .await;
    // The first scrape lands within one resolution (15 s) of start.
    let metrics = match metrics {
        Ok(m) => m,
        Err(_) => {
            tokio::time::sleep(Duration::from_secs(20)).await;
            client
                .request_text(
                    http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes/chorus-node")
                        .body(Vec::new())
                        .unwrap(),
                )
                .await
                .unwrap()
        }
    };
    assert!(metrics.contains("\"cpu\""), "{metrics}");
    chorus_e2e::delete_namespace(&client, &ns.name).await;
}
