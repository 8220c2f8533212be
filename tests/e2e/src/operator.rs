//! Helpers for the operator suites: install the CRD, run the operator
//! in-process against the real cluster (whose kube-controller-manager,
//! scheduler and kubelet run the tenants' pods for real), and read the real
//! PostgreSQL catalog.

use std::{sync::Arc, time::Duration};

use chorus_operator::{
    controller::{Context, Settings},
    crd::ChatTenant,
    runner::{self, LeaderElection, RunConfig, Shutdown},
};
use k8s_openapi::{
    ByteString, api::core::v1::Secret,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Client, CustomResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::wait::{await_condition, conditions},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::{HarnessError, Result, database_admin_url};

/// Installs (server-side applies) the ChatTenant CRD and waits until served.
pub async fn install_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "chattenants.chorus.dev",
        &PatchParams::apply("chorus-e2e").force(),
        &Patch::Apply(ChatTenant::crd()),
    )
    .await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(
            crds,
            "chattenants.chorus.dev",
            conditions::is_crd_established(),
        ),
    )
    .await
    .map_err(|_| HarnessError::Timeout(Duration::from_secs(30), "the ChatTenant CRD".into()))?
    .map_err(|e| HarnessError::Timeout(Duration::from_secs(30), e.to_string()))?;
    Ok(())
}

/// The parts of a PostgreSQL URL `postgres://user:pass@host:port/db`.
#[derive(Clone, Debug)]
pub struct PgUrl {
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// The test server's admin as the operator's [`ServerConfig`] (plain
/// loopback connection, `sslmode=disable`).
///
/// [`ServerConfig`]: chorus_operator::database::ServerConfig
pub fn admin_server_config() -> Result<chorus_operator::database::ServerConfig> {
    let pg = admin_url_parts()?;
    Ok(chorus_operator::database::ServerConfig {
        host: pg.host,
        port: pg.port,
        username: pg.user,
        password: pg.password,
        ssl_mode: "disable".into(),
    })
}

/// Splits the test server's admin URL.
pub fn admin_url_parts() -> Result<PgUrl> {
    let url = database_admin_url()?;
    let rest = url.trim_start_matches("postgres://");
    let (auth, hostpart) = rest.split_once('@').unwrap_or(("", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let hostport = hostpart.split('/').next().unwrap_or(hostpart);
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    Ok(PgUrl {
        user: user.into(),
        password: password.into(),
        host: host.into(),
        port: port.parse().unwrap_or(5432),
    })
}

/// The address at which pods on the local node reach the test PostgreSQL
/// (`CHORUS_TEST_POD_DATABASE_HOST`, the node bridge's address), when set.
/// The operator, running on the host, reaches it there too.
pub fn pod_database_host() -> Option<String> {
    std::env::var("CHORUS_TEST_POD_DATABASE_HOST")
        .ok()
        .filter(|h| !h.is_empty())
}

/// Creates (or replaces) the server Secret `name` in `namespace` pointing at
/// the test PostgreSQL, optionally with another port (a closed one simulates
/// a server that is down).
pub async fn put_server_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    port_override: Option<u16>,
) -> Result<()> {
    let pg = admin_url_parts()?;
    let login = (pg.user.clone(), pg.password.clone());
    put_server_secret_as(client, namespace, name, port_override, login).await
}

/// [`put_server_secret`] with another admin login (user, password).
pub async fn put_server_secret_as(
    client: &Client,
    namespace: &str,
    name: &str,
    port_override: Option<u16>,
    (user, password): (String, String),
) -> Result<()> {
    let pg = admin_url_parts()?;
    let data = [
        ("host", pod_database_host().unwrap_or(pg.host.clone())),
        ("port", port_override.unwrap_or(pg.port).to_string()),
        ("username", user),
        ("password", password),
        ("sslmode", "disable".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("chorus-e2e").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

/// Installs the Helm chart's ServiceAccount and RBAC (rendered with `helm
/// template`, release `release`, namespace `namespace`) and returns a client
/// that impersonates that ServiceAccount: an operator using it has exactly
/// the chart's permissions.
pub async fn chart_service_account(
    admin: &Client,
    namespace: &str,
    release: &str,
) -> Result<Client> {
    use crate::manifests::{apply_object, documents, repo_root, run, tool};
    let chart = repo_root().join("charts/chorus-operator");
    let out = run(
        &tool("helm")?,
        &[
            "template",
            release,
            chart.to_str().unwrap_or_default(),
            "--namespace",
            namespace,
            "--kube-version",
            "1.36.3",
        ],
        None,
    )?;
    let rendered = String::from_utf8_lossy(&out.stdout).to_string();
    let mut sa = None;
    for obj in documents(&rendered)? {
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
            apply_object(admin, namespace, &obj, "helm").await?;
        }
    }
    let sa =
        sa.ok_or_else(|| HarnessError::Manifest("the chart renders no ServiceAccount".into()))?;
    crate::service_account_client(namespace, &sa).await
}

/// An operator running in this process.
pub struct RunningOperator {
    stop: watch::Sender<bool>,
    task: JoinHandle<std::result::Result<(), runner::RunError>>,
    /// Its context: counters and metrics, readable while it runs.
    pub context: Arc<Context>,
}

impl RunningOperator {
    /// Starts an operator scoped to `namespace` (server Secrets there too).
    pub fn start(client: Client, namespace: &str, resync: Duration) -> Self {
        Self::start_with(client, namespace, resync, None)
    }

    /// Starts an operator with leader election on `lease`.
    pub fn start_with(
        client: Client,
        namespace: &str,
        resync: Duration,
        leader: Option<LeaderElection>,
    ) -> Self {
        Self::start_limited(
            client,
            namespace,
            resync,
            leader,
            chorus_operator::controller::DEFAULT_CONCURRENCY,
        )
    }

    /// Starts an operator that runs at most `concurrency` reconciles at
    /// once.
    pub fn start_limited(
        client: Client,
        namespace: &str,
        resync: Duration,
        leader: Option<LeaderElection>,
        concurrency: u16,
    ) -> Self {
        let (stop, shutdown) = Shutdown::new();
        let instance = leader
            .as_ref()
            .map_or_else(|| format!("e2e-{namespace}"), |l| l.identity.clone());
        let config = RunConfig {
            settings: Settings {
                server_namespace: namespace.into(),
                watch_namespaces: vec![namespace.into()],
                resync,
                instance,
                concurrency,
            },
            http_addr: None,
            leader_election: leader,
        };
        let context = Arc::new(Context::new(
            client,
            config.settings.clone(),
            Arc::new(chorus_operator::metrics::Metrics::default()),
        ));
        let task = tokio::spawn(runner::run_with(context.clone(), config, shutdown));
        Self {
            stop,
            task,
            context,
        }
    }

    /// Stops the operator and returns its context (counters).
    pub async fn stop(self) -> Arc<Context> {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(60), self.task).await {
            Ok(Ok(Ok(()))) => self.context,
            Ok(Ok(Err(e))) => panic!("operator failed: {e}"),
            Ok(Err(e)) => panic!("operator task panicked: {e}"),
            Err(_) => panic!("operator did not stop within 60s"),
        }
    }
}

/// Creates a ChatTenant from YAML in `namespace`.
pub async fn create_tenant(client: &Client, namespace: &str, yaml: &str) -> Result<ChatTenant> {
    let ct: ChatTenant = serde_yaml::from_str(yaml)?;
    Ok(Api::<ChatTenant>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &ct)
        .await?)
}

/// The condition `type_` of a ChatTenant, if set.
pub fn condition(ct: &ChatTenant, type_: &str) -> Option<Condition> {
    ct.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Waits until the ChatTenant's condition `type_` has `status` (and, when
/// given, `reason`); returns the object.
pub async fn wait_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> Result<ChatTenant> {
    let api: Api<ChatTenant> = Api::namespaced(client.clone(), namespace);
    let what = format!("ChatTenant {namespace}/{name} condition {type_}={status} {reason:?}");
    let mut last = None;
    let start = std::time::Instant::now();
    loop {
        if let Some(ct) = api.get_opt(name).await? {
            if let Some(c) = condition(&ct, type_)
                && c.status == status
                && reason.is_none_or(|r| r == c.reason)
            {
                return Ok(ct);
            }
            last = ct.status.clone();
        }
        if start.elapsed() > timeout {
            return Err(HarnessError::Timeout(
                timeout,
                format!(
                    "{what}; last status: {}",
                    serde_json::to_string(&last).unwrap_or_default()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads a Secret key as text.
pub async fn secret_text(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    let s = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await?;
    Ok(s.and_then(|s| s.data).and_then(|d| {
        d.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).to_string())
    }))
}

/// Everything an operator suite needs: a namespace with the server Secret and
/// the operator running with the chart's RBAC. The tenants' pods run on the
/// cluster's real node.
pub struct OperatorEnv {
    /// Admin client (the test's own view).
    pub client: Client,
    /// The test's namespace.
    pub ns: String,
    /// The operator under test.
    pub operator: RunningOperator,
}

/// How long suites wait for the operator to converge. Ready needs real pods
/// to start, migrate and pass their probes: seconds on an idle machine, more
/// while other suites start theirs on the same two cores.
pub const CONVERGE: Duration = Duration::from_secs(120);

impl OperatorEnv {
    /// Sets up namespace `<prefix>-<unique>` and starts the operator with
    /// `resync`.
    pub async fn new(prefix: &str, resync: Duration) -> Result<Self> {
        Self::limited(
            prefix,
            resync,
            chorus_operator::controller::DEFAULT_CONCURRENCY,
        )
        .await
    }

    /// [`OperatorEnv::new`] with at most `concurrency` reconciles at once.
    pub async fn limited(prefix: &str, resync: Duration, concurrency: u16) -> Result<Self> {
        let client = crate::admin_client().await?;
        install_crd(&client).await?;
        let ns = crate::TestNamespace::create(&client, prefix).await?.name;
        put_server_secret(&client, &ns, "shared-pg", None).await?;
        let release = format!("op{}", crate::unique_suffix());
        let as_operator = chart_service_account(&client, &ns, &release).await?;
        let operator = RunningOperator::start_limited(as_operator, &ns, resync, None, concurrency);
        Ok(Self {
            client,
            ns,
            operator,
        })
    }

    /// An API handle in the test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates ChatTenant `name` (see [`tenant_yaml`]) and waits until Ready;
    /// returns it and its database name.
    pub async fn ready_tenant(&self, name: &str, extra: &str) -> Result<(ChatTenant, String)> {
        let (yaml, db) = tenant_yaml(name, extra);
        create_tenant(&self.client, &self.ns, &yaml).await?;
        let ct = self.wait_condition(name, "Ready", "True", None).await?;
        Ok((ct, db))
    }

    /// [`wait_condition`] in the test's namespace with [`CONVERGE`].
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> Result<ChatTenant> {
        wait_condition(
            &self.client,
            &self.ns,
            name,
            type_,
            status,
            reason,
            CONVERGE,
        )
        .await
    }

    /// The Events recorded for object `name` in the test's namespace, as
    /// (reason, message).
    pub async fn events(&self, name: &str) -> Result<Vec<(String, String)>> {
        let events = self
            .api::<k8s_openapi::api::core::v1::Event>()
            .list(&kube::api::ListParams::default())
            .await?;
        Ok(events
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref() == Some(name))
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect())
    }

    /// Stops the operator and deletes the test's namespace (its pods free the
    /// node for the next test); returns the operator's context.
    pub async fn stop(self) -> Arc<Context> {
        let context = self.operator.stop().await;
        crate::delete_namespace(&self.client, &self.ns).await;
        context
    }
}

/// Resource requests of the runtime pods in tests: small, so that the
/// suites' tenants fit on the one real node (2 cores) side by side.
pub const TEST_RESOURCES: &str = "{requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 256Mi}}";

/// A ChatTenant named `name` on server Secret `shared-pg` with a database
/// name unique to this run and `reclaimPolicy: Delete` (so runs clean up),
/// plus `extra` spec lines (indented two spaces). Returns the YAML and the
/// database name.
pub fn tenant_yaml(name: &str, extra: &str) -> (String, String) {
    let db = format!("chat_{}_{}", name.replace('-', "_"), crate::unique_suffix());
    // `extra` may bring its own `runtime:`; the default one then stays out.
    let runtime = if extra.contains("\n  runtime:") || extra.starts_with("  runtime:") {
        String::new()
    } else {
        format!(
            "  runtime: {{image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\", resources: {TEST_RESOURCES}}}\n"
        )
    };
    let yaml = format!(
        r#"
apiVersion: chorus.dev/v1alpha1
kind: ChatTenant
metadata: {{name: {name}}}
spec:
  tenantId: {name}
{runtime}  database: {{serverRef: {{name: shared-pg}}, name: {db}, reclaimPolicy: Delete}}
{extra}
"#
    );
    (yaml, db)
}

/// Waits until `name` exists; returns it.
pub async fn wait_present<K>(api: &Api<K>, name: &str) -> Result<K>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    crate::wait_for(&format!("{name} to exist"), CONVERGE, || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok().flatten() }
    })
    .await
}

/// Waits until `name` no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    crate::wait_for(&format!("{name} to be gone"), CONVERGE, || {
        let api = api.clone();
        async move { api.get_opt(name).await.ok()?.is_none().then_some(()) }
    })
    .await
}
