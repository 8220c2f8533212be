//! The operator as a user runs it: `helm install` of charts/chorus-operator
//! with the image built by `make images`, cluster-wide (the chart's default),
//! under its own ServiceAccount token and exactly the RBAC the chart installs.
//! Its /healthz, /readyz and /metrics answer through its Service, and it makes
//! a ChatTenant Ready with real pods.
//!
//! This binary holds one test: a cluster-wide operator would reconcile the
//! ChatTenants of any suite running beside it, and cargo runs test binaries
//! one after another. It starts by removing what earlier binaries left (their
//! operators have stopped, so their ChatTenants are garbage a cluster-wide
//! operator would otherwise adopt), and uninstalls the release at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    TestNamespace, admin_client,
    chat::{request, service_url},
    delete_namespace,
    manifests::{repo_root, run, tool},
    operator::{create_tenant, put_server_secret, tenant_yaml, wait_condition},
    wait_for,
};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};

const T: Duration = Duration::from_secs(180);

/// Deletes every test namespace left by earlier test binaries, dropping the
/// finalizers of their ChatTenants first (no operator runs for them now).
async fn clean_slate(admin: &kube::Client) {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Patch, PatchParams};
    let cts = Api::<chorus_operator::crd::ChatTenant>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    for ct in cts.items {
        let ns = ct.metadata.namespace.clone().unwrap_or_default();
        let name = ct.metadata.name.clone().unwrap_or_default();
        let _ = Api::<chorus_operator::crd::ChatTenant>::namespaced(admin.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    let namespaces = Api::<Namespace>::all(admin.clone())
        .list(&ListParams::default().labels("chorus.dev/test=true"))
        .await
        .unwrap();
    for ns in namespaces.items {
        delete_namespace(admin, ns.metadata.name.as_deref().unwrap_or_default()).await;
    }
}

#[tokio::test]
async fn helm_installed_operator_serves_probes_and_makes_a_tenant_ready() {
    let admin = admin_client().await.unwrap();
    clean_slate(&admin).await;
    let system = TestNamespace::create(&admin, "chorus-system")
        .await
        .unwrap()
        .name;
    let tenants = TestNamespace::create(&admin, "in-cluster")
        .await
        .unwrap()
        .name;
    put_server_secret(&admin, &system, "shared-pg", None)
        .await
        .unwrap();

    let helm = tool("helm").unwrap();
    let chart = repo_root().join("charts/chorus-operator");
    let kubeconfig = std::env::var("CHORUS_TEST_KUBECONFIG").unwrap();
    let release = "chorus-operator";
    run(
        &helm,
        &[
            "install",
            release,
            chart.to_str().unwrap(),
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            &system,
            "--set",
            "replicaCount=1",
            "--set",
            "resyncSeconds=60",
            "--wait",
            "--timeout",
            "180s",
        ],
        None,
    )
    .expect("helm install waits until the operator's pod is Ready (its /readyz passes)");

    // The operator runs in a pod on the real node, as its ServiceAccount.
    let pods = Api::<Pod>::namespaced(admin.clone(), &system)
        .list(&ListParams::default().labels("app.kubernetes.io/name=chorus-operator"))
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let spec = pod.spec.clone().unwrap();
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("chorus-operator")
    );
    assert_eq!(spec.node_name.as_deref(), Some("chorus-node"));
    let status = pod
        .status
        .clone()
        .unwrap()
        .container_statuses
        .unwrap()
        .remove(0);
    assert!(status.ready);
    assert_eq!(status.image, "ghcr.io/chorus-dev/chorus-operator:0.1.0");

    // A tenant in another namespace becomes Ready: cluster-wide RBAC at work.
    let (yaml, _) = tenant_yaml("acme", "");
    create_tenant(&admin, &tenants, &yaml).await.unwrap();
    wait_condition(&admin, &tenants, "acme", "Ready", "True", None, T)
        .await
        .unwrap();

    // Probes and metrics through the operator's Service.
    let base = service_url(&admin, &system, "chorus-operator-metrics", "http")
        .await
        .unwrap();
    for path in ["/healthz", "/readyz"] {
        let (status, _) = request("GET", &format!("{base}{path}"), None, None)
            .await
            .unwrap();
        assert_eq!(status, 200, "{path}");
    }
    let metrics = wait_for("a reconcile counted in /metrics", T, || {
        let url = format!("{base}/metrics");
        async move {
            let (status, _) = request("GET", &url, None, None).await.ok()?;
            (status == 200).then_some(())?;
            let text = raw_get(&url).await?;
            text.contains("chorus_reconcile").then_some(text)
        }
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("# TYPE"),
        "Prometheus text format:\n{metrics}"
    );

    // Remove the tenant while the operator still runs (its finalizer), then
    // the release; the cluster-wide operator must not outlive this binary.
    Api::<chorus_operator::crd::ChatTenant>::namespaced(admin.clone(), &tenants)
        .delete("acme", &Default::default())
        .await
        .unwrap();
    chorus_e2e::operator::wait_gone(
        &Api::<chorus_operator::crd::ChatTenant>::namespaced(admin.clone(), &tenants),
        "acme",
    )
    .await
    .unwrap();
    run(
        &helm,
        &[
            "uninstall",
            release,
            "--kubeconfig",
            &kubeconfig,
            "--namespace",
            &system,
            "--wait",
        ],
        None,
    )
    .unwrap();
    wait_for("the operator's Deployment to go", T, || {
        let deps = Api::<Deployment>::namespaced(admin.clone(), &system);
        async move {
            deps.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        }
    })
    .await
    .unwrap();
    delete_namespace(&admin, &tenants).await;
    delete_namespace(&admin, &system).await;
}

/// The body of a GET as text.
async fn raw_get(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let stream = tokio::net::TcpStream::connect((uri.host()?, uri.port_u16()?))
        .await
        .ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = http::Request::get(uri.path())
        .header("host", "operator")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .ok()?;
    let resp = sender.send_request(req).await.ok()?;
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some(String::from_utf8_lossy(&bytes).to_string())
}
