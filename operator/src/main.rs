//! The `chorus-operator` binary.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use chorus_operator::{
    controller::Settings,
    runner::{self, LeaderElection, RunConfig, Shutdown},
    telemetry,
};
use clap::Parser;

/// Reconciles ChatTenants into databases, runtime Deployments and the objects around them.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Namespace of the database server Secrets (spec.database.serverRef).
    /// Defaults to the operator's own namespace.
    #[arg(long, env = "CHORUS_SERVER_NAMESPACE")]
    server_namespace: Option<String>,

    /// Watch only these namespaces, comma-separated (default: all
    /// namespaces). The operator then needs RBAC in these namespaces only.
    #[arg(long, env = "CHORUS_WATCH_NAMESPACE", value_delimiter = ',')]
    watch_namespace: Vec<String>,

    /// Seconds between idle resyncs of each ChatTenant.
    #[arg(long, env = "CHORUS_RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,

    /// Reconciles that may run at once (0: no limit). The default keeps a
    /// burst of new tenants from flooding the apiserver and PostgreSQL; see
    /// docs/operations.md.
    #[arg(long, env = "CHORUS_MAX_CONCURRENT_RECONCILES", default_value_t = chorus_operator::controller::DEFAULT_CONCURRENCY)]
    max_concurrent_reconciles: u16,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "CHORUS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,

    /// Disable leader election (run exactly one replica then).
    #[arg(long, env = "CHORUS_NO_LEADER_ELECTION")]
    no_leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "CHORUS_LEASE_NAME", default_value = "chorus-operator")]
    lease_name: String,

    /// Seconds the leader Lease stays valid without renewal.
    #[arg(long, env = "CHORUS_LEASE_SECONDS", default_value_t = 15)]
    lease_seconds: u64,

    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// The operator's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "chorus-system")]
    namespace: String,

    /// Log filter, for example `info` or `chorus_operator=debug,info`.
    #[arg(long, env = "CHORUS_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let telemetry = telemetry::init(&args.log_level);
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build a Kubernetes client: run in a pod with a ServiceAccount, or set KUBECONFIG");
            return ExitCode::FAILURE;
        }
    };
    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("chorus-operator-{}", std::process::id()));
    let config = RunConfig {
        settings: Settings {
            server_namespace: args
                .server_namespace
                .clone()
                .unwrap_or_else(|| args.namespace.clone()),
            watch_namespaces: args
                .watch_namespace
                .iter()
                .map(|ns| ns.trim().to_string())
                .filter(|ns| !ns.is_empty())
                .collect(),
            resync: Duration::from_secs(args.resync_seconds.max(1)),
            instance: identity.clone(),
            concurrency: args.max_concurrent_reconciles,
        },
        http_addr: Some(args.http_addr),
        leader_election: (!args.no_leader_election).then(|| LeaderElection {
            lease_name: args.lease_name.clone(),
            lease_namespace: args.namespace.clone(),
            identity,
            lease_seconds: args.lease_seconds.max(3),
        }),
    };
    let (stop, shutdown) = Shutdown::new();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    let code = match runner::run(client, config, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "operator stopped");
            ExitCode::FAILURE
        }
    };
    // The last reconciles' spans go out before the process ends.
    telemetry.shutdown(Duration::from_secs(3)).await;
    code
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
