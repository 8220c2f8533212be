//! Proves the test environment is real: a kube-apiserver that serves CRDs,
//! watches, server-side apply with conflicts and RBAC, and a PostgreSQL that
//! runs sqlx migrations.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{TestNamespace, admin_client, fresh_database, service_account_client, wait_for};
use futures::{StreamExt, TryStreamExt};
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

    // Watch, then create: the watch (not its initial list) must see the new
    // object, so wait for the initial list to finish before creating it.
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns.name);
    let mut events = watcher(widgets.clone(), watcher::Config::default()).boxed();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.try_next().await.unwrap() {
            if matches!(event, watcher::Event::InitDone) {
                return;
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
        while let Some(event) = events.try_next().await.unwrap() {
            if let watcher::Event::Apply(w) = event
                && w.name_any() == "w1"
            {
                return w;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("the watch did not deliver the created object as an event");
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
