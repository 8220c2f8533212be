//! The Helm chart and the examples against the real apiserver: `helm lint`,
//! `helm template | kubeconform -strict` with schemas generated from this
//! apiserver's own OpenAPI, every example applied, and the operator proven to
//! work with exactly the chart's RBAC (impersonating its ServiceAccount).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    TestNamespace, admin_client,
    manifests::{apply_object, documents, repo_root, run, tool},
    operator::{
        RunningOperator, create_tenant, install_crd, put_server_secret, tenant_yaml, wait_condition,
    },
    service_account_client, unique_suffix, wait_for,
};
use chorus_operator::{crd::ChatTenant, runner::LeaderElection};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Namespace};
use kube::{
    Api, Client,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Real pods start, migrate and pass their probes before Ready.
const T: Duration = Duration::from_secs(120);

fn chart() -> String {
    repo_root()
        .join("charts/chorus-operator")
        .to_string_lossy()
        .to_string()
}

fn helm_template(release: &str, namespace: &str, extra: &[&str]) -> String {
    let helm = tool("helm").unwrap();
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.as_str(),
        "--namespace",
        namespace,
        "--kube-version",
        "1.36.3",
    ];
    args.extend_from_slice(extra);
    let out = run(&helm, &args, None).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// kubeconform schemas generated from this apiserver's OpenAPI v3 documents
/// (v2 would drop the types of nullable CRD fields and check nothing there).
async fn schemas(client: &Client) -> tempdir::Dir {
    let dir = tempdir::Dir::new("chorus-schemas");
    let get = |path: String| {
        let c = client.clone();
        async move {
            let req = http::Request::get(path).body(Vec::new()).ok()?;
            c.request_text(req).await.ok()
        }
    };
    // The ChatTenant schema is published shortly after the CRD is Established.
    let index: serde_json::Value = wait_for("ChatTenant in /openapi/v3", T, || async {
        let text = get("/openapi/v3".into()).await?;
        text.contains("apis/chorus.dev/v1alpha1")
            .then(|| serde_json::from_str(&text).ok())
            .flatten()
    })
    .await
    .unwrap();
    let mut args: Vec<String> = Vec::new();
    for (i, (_, entry)) in index["paths"].as_object().unwrap().iter().enumerate() {
        // Without `?hash=`: the hash changes whenever an aggregated API (here
        // metrics-server's) publishes its schema, and a stale one redirects.
        let url = entry["serverRelativeURL"].as_str().unwrap();
        let url = url.split('?').next().unwrap_or(url).to_string();
        let body = get(url.clone())
            .await
            .unwrap_or_else(|| panic!("GET {url}"));
        let file = dir.path.join(format!("openapi-{i}.json"));
        std::fs::write(&file, body).unwrap();
        args.push("-in".into());
        args.push(file.to_string_lossy().to_string());
    }
    let out = dir.path.join("schemas");
    args.push("-out".into());
    args.push(out.to_string_lossy().to_string());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&tool("openapi2jsonschema").unwrap(), &argv, None).unwrap();
    dir
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir {
        pub path: std::path::PathBuf,
    }
    impl Dir {
        pub fn new(prefix: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("{prefix}-{}", chorus_e2e::unique_suffix()));
            std::fs::create_dir_all(&path).unwrap();
            Self { path }
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[tokio::test]
async fn chart_lints_and_renders_valid_strict_manifests() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let helm = tool("helm").unwrap();
    let lint = run(&helm, &["lint", "--strict", &chart()], None).unwrap();
    assert!(String::from_utf8_lossy(&lint.stdout).contains("0 chart(s) failed"));

    let dir = schemas(&client).await;
    let location = format!(
        "{}/schemas/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        dir.path.display()
    );
    let kubeconform = tool("kubeconform").unwrap();
    let renders = [
        helm_template("chorus", "chorus-system", &["--include-crds"]),
        helm_template(
            "chorus",
            "chorus-system",
            &[
                "--set",
                "watchNamespace=tenants,leaderElection.enabled=false,replicaCount=1,metrics.service.enabled=false",
                "--set",
                "databaseServers[0].name=shared-pg,databaseServers[0].host=pg,databaseServers[0].username=u,databaseServers[0].password=p",
            ],
        ),
    ];
    for rendered in &renders {
        let out = run(
            &kubeconform,
            &["-strict", "-summary", "-schema-location", &location, "-"],
            Some(rendered),
        )
        .unwrap();
        let summary = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            summary.contains("Invalid: 0, Errors: 0, Skipped: 0"),
            "{summary}"
        );
    }
    // The examples are valid ChatTenants for this apiserver's CRD schema.
    let examples = repo_root().join("examples");
    let out = run(
        &kubeconform,
        &[
            "-strict",
            "-summary",
            "-schema-location",
            &location,
            examples.to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        summary.contains("Invalid: 0, Errors: 0, Skipped: 0"),
        "{summary}"
    );

    // Strict checks that can fail: an unknown field is refused, in a chart
    // object and in a ChatTenant.
    let bad_chart = renders[0].replace("replicas: 2", "replicas: 2\n  replicaz: 3");
    let bad_tenant = std::fs::read_to_string(examples.join("production.yaml"))
        .unwrap()
        .replace(
            "targetCPUUtilizationPercentage",
            "targetCpuUtilizationPercentage",
        );
    for bad in [bad_chart, bad_tenant] {
        assert!(
            run(
                &kubeconform,
                &["-strict", "-summary", "-schema-location", &location, "-"],
                Some(&bad)
            )
            .is_err(),
            "kubeconform must refuse an unknown field"
        );
    }
}

#[tokio::test]
async fn every_example_applies_cleanly() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "examples").await.unwrap();
    let system = Namespace {
        metadata: ObjectMeta {
            name: Some("chorus-system".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let _ = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &system)
        .await;
    let mut applied = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let yaml = std::fs::read_to_string(&path).unwrap();
        for obj in documents(&yaml).unwrap() {
            apply_object(&client, &ns.name, &obj, "chorus-e2e")
                .await
                .unwrap_or_else(|e| panic!("{} does not apply: {e}", path.display()));
            applied += 1;
        }
    }
    assert!(applied >= 7, "applied {applied} objects");
    let cts = Api::<ChatTenant>::namespaced(client, &ns.name)
        .list(&Default::default())
        .await
        .unwrap();
    assert_eq!(cts.items.len(), 5, "five example ChatTenants");
}

#[tokio::test]
async fn the_operator_works_with_exactly_the_charts_rbac() {
    let admin = admin_client().await.unwrap();
    install_crd(&admin).await.unwrap();
    let ns = TestNamespace::create(&admin, "op-rbac").await.unwrap().name;
    let release = format!("rbac{}", unique_suffix());
    // Install the chart's ServiceAccount and RBAC (not its Deployment: the
    // operator runs in this test process, as that ServiceAccount).
    let rendered = helm_template(&release, &ns, &[]);
    let mut sa_name = None;
    for obj in documents(&rendered).unwrap() {
        let kind = obj.types.as_ref().unwrap().kind.clone();
        if matches!(
            kind.as_str(),
            "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
        ) {
            if kind == "ServiceAccount" {
                sa_name = obj.metadata.name.clone();
            }
            apply_object(&admin, &ns, &obj, "helm").await.unwrap();
        }
    }
    let sa_name = sa_name.expect("the chart renders a ServiceAccount");
    put_server_secret(&admin, &ns, "shared-pg", None)
        .await
        .unwrap();

    let as_operator = service_account_client(&ns, &sa_name).await.unwrap();
    // Without the chart's RBAC this client could not even list ChatTenants.
    Api::<ChatTenant>::namespaced(as_operator.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("the chart grants listing ChatTenants");

    let operator = RunningOperator::start_with(
        as_operator,
        &ns,
        Duration::from_secs(300),
        Some(LeaderElection {
            lease_name: release.clone(),
            lease_namespace: ns.clone(),
            identity: "rbac-test".into(),
            lease_seconds: 15,
        }),
    );
    let (yaml, _) = tenant_yaml(
        "acme",
        "  autoscaling: {minReplicas: 2, maxReplicas: 4}\n  networkPolicy: {allowIngressFrom: [{namespace: ingress-nginx}]}\n  exposure: {host: acme.example.com, ingress: {className: nginx}}",
    );
    create_tenant(&admin, &ns, &yaml).await.unwrap();
    let ct = wait_condition(&admin, &ns, "acme", "Ready", "True", None, T)
        .await
        .unwrap();
    assert!(
        ct.status
            .unwrap()
            .endpoint
            .unwrap()
            .starts_with("http://acme.example.com")
    );
    // Spec changes, pruning and Events all work under the chart's RBAC.
    let cts = Api::<ChatTenant>::namespaced(admin.clone(), &ns);
    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"autoscaling": null, "runtime": {"replicas": 3}}})),
    )
    .await
    .unwrap();
    let deployments = Api::<Deployment>::namespaced(admin.clone(), &ns);
    wait_for("blue at 3 replicas", T, || {
        let d = deployments.clone();
        async move { (d.get("acme-blue").await.ok()?.spec?.replicas == Some(3)).then_some(()) }
    })
    .await
    .unwrap();
    // Deletion with reclaimPolicy Delete completes.
    cts.delete("acme", &DeleteParams::default()).await.unwrap();
    wait_for("the ChatTenant to be deleted", T, || {
        let api = cts.clone();
        async move {
            api.get_opt("acme")
                .await
                .ok()
                .flatten()
                .is_none()
                .then_some(())
        }
    })
    .await
    .unwrap();
    let ctx = operator.stop().await;
    let metrics = ctx.metrics.render();
    assert!(
        !metrics.contains("reason=\"kube_api\"") && !metrics.contains("reason=\"apply\""),
        "no API call was refused:\n{metrics}"
    );
}
