//! The chart's two RBAC modes, proven by running the operator as the chart's
//! ServiceAccount (impersonated) against the real apiserver:
//!
//! - `watchNamespaces: [t]`: Roles in `t` only; the operator, watching only
//!   `t`, provisions a tenant there to Ready, and the ServiceAccount cannot
//!   read Secrets anywhere else.
//! - cluster-wide (the default): a ClusterRole that can get, create and
//!   patch Secrets by name but never list or watch them cluster-wide. (Every
//!   operator suite runs with this ClusterRole; running an all-namespaces
//!   operator on a shared cluster would adopt other tests' tenants, so the
//!   all-namespaces watch layout is unit-tested in `controller::watches` and
//!   `controller::referenced`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{sync::Arc, time::Duration};

use chorus_e2e::{
    TestNamespace, admin_client, delete_namespace,
    manifests::{apply_object, documents, repo_root, run, tool},
    operator::{
        CONVERGE, create_tenant, install_crd, put_server_secret, tenant_yaml, wait_condition,
        wait_gone,
    },
    service_account_client, unique_suffix, wait_for,
};
use chorus_operator::{
    controller::{Context, Settings},
    crd::ChatTenant,
    metrics::Metrics,
    runner::{self, RunConfig, Shutdown},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, ObjectMeta, PostParams},
};

/// Renders the chart with `sets`, applies its ServiceAccount and RBAC, and
/// returns a client impersonating that ServiceAccount.
async fn chart_rbac(admin: &Client, namespace: &str, sets: &[&str]) -> Client {
    let chart = repo_root().join("charts/chorus-operator");
    let release = format!("op{}", unique_suffix());
    let mut args = vec![
        "template",
        &release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        "1.36.3",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = run(&tool("helm").unwrap(), &args, None).unwrap();
    let mut sa = None;
    for obj in documents(&String::from_utf8_lossy(&out.stdout)).unwrap() {
        let kind = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        if matches!(
            kind.as_str(),
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            if kind == "ServiceAccount" {
                sa = obj.metadata.name.clone();
            }
            apply_object(admin, namespace, &obj, "helm").await.unwrap();
        }
    }
    service_account_client(namespace, &sa.unwrap())
        .await
        .unwrap()
}

fn forbidden<T: std::fmt::Debug>(r: kube::Result<T>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

async fn private_secret(admin: &Client, ns: &str) {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some("private".into()),
            ..ObjectMeta::default()
        },
        string_data: Some([("k".to_string(), "v".to_string())].into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

#[tokio::test]
async fn namespaced_mode_needs_and_gets_roles_in_the_listed_namespaces_only() {
    let admin = admin_client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let op_ns = TestNamespace::create(&admin, "rbac-op").await.unwrap().name;
    let tenants_ns = TestNamespace::create(&admin, "rbac-t").await.unwrap().name;
    let other_ns = TestNamespace::create(&admin, "rbac-x").await.unwrap().name;
    private_secret(&admin, &other_ns).await;
    put_server_secret(&admin, &op_ns, "shared-pg", None)
        .await
        .unwrap();
    let set = format!("watchNamespaces={{{tenants_ns}}}");
    let sa = chart_rbac(&admin, &op_ns, &[&set]).await;

    // No Secret outside the listed namespace and the operator's own.
    assert!(forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
    ));
    let other: Api<Secret> = Api::namespaced(sa.clone(), &other_ns);
    assert!(forbidden(other.list(&ListParams::default()).await));
    assert!(forbidden(other.get("private").await));
    assert!(forbidden(
        Api::<ChatTenant>::all(sa.clone())
            .list(&ListParams::default())
            .await
    ));

    // The operator, as the ServiceAccount, watching only the listed namespace.
    let (stop, shutdown) = Shutdown::new();
    let settings = Settings {
        server_namespace: op_ns.clone(),
        watch_namespaces: vec![tenants_ns.clone()],
        resync: Duration::from_secs(300),
        instance: "e2e-rbac".into(),
        concurrency: chorus_operator::controller::DEFAULT_CONCURRENCY,
    };
    let ctx = Arc::new(Context::new(
        sa,
        settings.clone(),
        Arc::new(Metrics::default()),
    ));
    let config = RunConfig {
        settings,
        http_addr: None,
        leader_election: None,
    };
    let task = tokio::spawn(runner::run_with(ctx.clone(), config, shutdown));
    let health = ctx.health.clone();
    wait_for("readiness", CONVERGE, || async {
        health
            .not_ready(std::time::Instant::now())
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();

    let (yaml, _) = tenant_yaml("scoped", "");
    create_tenant(&admin, &tenants_ns, &yaml).await.unwrap();
    wait_condition(
        &admin,
        &tenants_ns,
        "scoped",
        "Ready",
        "True",
        None,
        CONVERGE,
    )
    .await
    .unwrap();

    // Deleted while the operator runs (the finalizer drops the database).
    let tenants: Api<ChatTenant> = Api::namespaced(admin.clone(), &tenants_ns);
    tenants
        .delete("scoped", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&tenants, "scoped").await.unwrap();
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for ns in [&op_ns, &tenants_ns, &other_ns] {
        delete_namespace(&admin, ns).await;
    }
}

#[tokio::test]
async fn cluster_wide_mode_reads_secrets_by_name_but_never_lists_or_watches_them() {
    let admin = admin_client().await.unwrap();
    let op_ns = TestNamespace::create(&admin, "rbac-cw").await.unwrap().name;
    let other_ns = TestNamespace::create(&admin, "rbac-cwx")
        .await
        .unwrap()
        .name;
    private_secret(&admin, &other_ns).await;
    let sa = chart_rbac(&admin, &op_ns, &[]).await;

    let other: Api<Secret> = Api::namespaced(sa.clone(), &other_ns);
    assert!(forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
    ));
    assert!(forbidden(other.list(&ListParams::default()).await));
    // By name: the Secrets a ChatTenant names (<name>-db, <name>-auth, the
    // external key, env references) may live in any tenant namespace.
    other.get("private").await.unwrap();
    // Its own namespace: the server Secrets, watched by metadata.
    Api::<Secret>::namespaced(sa.clone(), &op_ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    // ChatTenants everywhere.
    Api::<ChatTenant>::all(sa)
        .list(&ListParams::default())
        .await
        .unwrap();
    for ns in [&op_ns, &other_ns] {
        delete_namespace(&admin, ns).await;
    }
}
