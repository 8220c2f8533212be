//! Harness for the Chorus end-to-end suites.
//!
//! The suites run against real components that `make test` starts once per run
//! (see `scripts/test.sh`):
//! - a Kubernetes cluster built from Go modules (control plane, one real node
//!   running the project's images, kwok fake nodes, metrics-server), whose
//!   kubeconfig is in `CHORUS_TEST_KUBECONFIG`;
//! - a PostgreSQL server whose admin URL is in `CHORUS_TEST_DATABASE_URL`, and
//!   which pods reach at `CHORUS_TEST_POD_DATABASE_HOST`.
//!
//! Each test takes its own namespace ([`TestNamespace`]) and its own database
//! ([`fresh_database`]), so tests run in parallel without seeing each other.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use sqlx::{Connection, PgConnection};

pub mod catalog;
pub mod chat;
pub mod manifests;
pub mod operator;
pub mod requests;

/// Errors from the harness; every message says what to run to fix it.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A required environment variable is not set.
    #[error(
        "{0} is not set: run the suites with `make test` (or `make cluster-up db-up` and export it)"
    )]
    MissingEnv(&'static str),
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Where the kubeconfig was read from.
        path: String,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A PostgreSQL call failed.
    #[error("postgres: {0}")]
    Sql(#[from] sqlx::Error),
    /// Test YAML that does not parse.
    #[error("test YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A manifest or tool problem.
    #[error("{0}")]
    Manifest(String),
    /// A wait ran out of time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// Result alias for the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

fn env(name: &'static str) -> Result<String> {
    std::env::var(name).map_err(|_| HarnessError::MissingEnv(name))
}

/// A unique, DNS-1123-safe suffix: process id, a clock reading and a counter.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}{n}", std::process::id() % 0xfff, nanos % 0xfffff)
}

/// Sends logs of the code under test to the test's captured output (shown
/// when a test fails). Level from `RUST_LOG`, default `info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The admin kubeconfig of the control plane started for this test run.
pub async fn admin_config() -> Result<Config> {
    let path = env("CHORUS_TEST_KUBECONFIG")?;
    let kubeconfig = Kubeconfig::read_from(&path).map_err(|source| HarnessError::Kubeconfig {
        path: path.clone(),
        source,
    })?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| HarnessError::Kubeconfig { path, source })
}

/// A client with cluster-admin rights (group `system:masters`).
pub async fn admin_client() -> Result<Client> {
    init_logging();
    Ok(Client::try_from(admin_config().await?)?)
}

/// A client that impersonates the ServiceAccount `namespace/name`, with the
/// groups a real ServiceAccount token carries.
pub async fn service_account_client(namespace: &str, name: &str) -> Result<Client> {
    let mut config = admin_config().await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
        "system:authenticated".to_string(),
    ]);
    Ok(Client::try_from(config)?)
}

/// A namespace of the test's own, labelled `chorus.dev/test`. Suites that run
/// pods delete it when done ([`delete_namespace`]); the cluster is thrown away
/// after the run anyway.
pub struct TestNamespace {
    /// The namespace name.
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<unique>`.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let name = format!("{prefix}-{}", unique_suffix());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("chorus.dev/test".to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { name })
    }
}

/// Deletes a test namespace without waiting: the namespace controller removes
/// its pods (freeing the node), even while a ChatTenant's finalizer keeps the
/// namespace itself Terminating after its operator stopped.
pub async fn delete_namespace(client: &Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &kube::api::DeleteParams::background())
        .await;
}

/// The admin URL of the PostgreSQL server started for this test run.
pub fn database_admin_url() -> Result<String> {
    env("CHORUS_TEST_DATABASE_URL")
}

/// Replaces the database name (the path) of a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => format!("{}/{database}", &url[..i]),
        _ => format!("{url}/{database}"),
    }
}

/// Creates an empty database of the test's own and returns its URL (admin
/// credentials). Names are generated here, never taken from input, so the
/// identifier is safe to splice after quoting.
pub async fn fresh_database(prefix: &str) -> Result<String> {
    let admin = database_admin_url()?;
    let name = format!("{prefix}_{}", unique_suffix()).replace('-', "_");
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(with_database(&admin, &name))
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(HarnessError::Timeout(timeout, what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_the_path() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/postgres", "t1"),
            "postgres://u:p@127.0.0.1:5432/t1"
        );
    }

    #[test]
    fn unique_suffixes_differ() {
        assert_ne!(unique_suffix(), unique_suffix());
    }
}
