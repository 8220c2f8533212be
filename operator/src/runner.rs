//! Process wiring: leader election (a coordination.k8s.io Lease, via
//! kube-lease-manager), the health/metrics HTTP server, and the controller,
//! which runs only while this replica holds the lease.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::{
    controller::{self, Context, Settings},
    metrics::Metrics,
};

/// Leader-election settings.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Lease name.
    pub lease_name: String,
    /// Lease namespace.
    pub lease_namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// Seconds a lease stays valid without renewal.
    pub lease_seconds: u64,
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Controller settings.
    pub settings: Settings,
    /// Where `/healthz`, `/readyz` and `/metrics` listen; none in tests.
    pub http_addr: Option<SocketAddr>,
    /// Leader election; `None` runs the controller unconditionally.
    pub leader_election: Option<LeaderElection>,
}

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// IO error.
        #[source]
        source: std::io::Error,
    },
    /// The Lease could not be set up.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
}

/// A shutdown signal that can be awaited from several places.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that fires it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Resolves once the signal fired (or its sender is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

/// Runs the operator until `shutdown` fires. Returns the context so callers
/// (tests) can read counters.
pub async fn run(
    client: Client,
    config: RunConfig,
    shutdown: Shutdown,
) -> Result<Arc<Context>, RunError> {
    let ctx = Arc::new(Context::new(
        client,
        config.settings.clone(),
        Arc::new(Metrics::default()),
    ));
    run_with(ctx.clone(), config, shutdown).await?;
    Ok(ctx)
}

/// Runs the operator with a context the caller keeps (tests read its
/// counters while it runs).
pub async fn run_with(
    ctx: Arc<Context>,
    config: RunConfig,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let client = ctx.client.clone();
    let metrics = ctx.metrics.clone();

    let server = match config.http_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Bind { addr, source })?;
            tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
            let app = Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(|| async { "ok" }))
                .route("/metrics", get(render_metrics))
                .with_state(metrics.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.wait())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "metrics server failed");
                }
            }))
        }
        None => None,
    };

    match config.leader_election {
        None => {
            metrics.leader.set(1);
            controller::run(ctx.clone(), shutdown.clone().wait()).await;
        }
        Some(le) => lead(client, ctx.clone(), le, shutdown.clone()).await?,
    }
    metrics.leader.set(0);
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(())
}

async fn lead(
    client: Client,
    ctx: Arc<Context>,
    le: LeaderElection,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let manager = LeaseManagerBuilder::new(client, &le.lease_name)
        .with_namespace(&le.lease_namespace)
        .with_identity(&le.identity)
        .with_duration(le.lease_seconds)
        .with_grace(le.lease_seconds.div_ceil(3).max(1))
        .build()
        .await?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(identity = %le.identity, lease = %le.lease_name, "waiting for the leader lease");
    loop {
        // Wait until this replica leads, or shutdown.
        tokio::select! {
            _ = shutdown.clone().wait() => break,
            res = leader.wait_for(|is| *is) => if res.is_err() { break },
        }
        tracing::info!(identity = %le.identity, "acquired the leader lease; starting the controller");
        ctx.metrics.leader.set(1);
        let (stop_tx, stop) = Shutdown::new();
        let mut running = tokio::spawn(controller::run(ctx.clone(), stop.wait()));
        enum Ended {
            Shutdown,
            LeaseLost,
            ControllerExited,
        }
        let ended = tokio::select! {
            _ = shutdown.clone().wait() => Ended::Shutdown,
            res = leader.wait_for(|is| !*is) => if res.is_ok() { Ended::LeaseLost } else { Ended::Shutdown },
            _ = &mut running => Ended::ControllerExited,
        };
        if let Ended::ControllerExited = ended {
            ctx.metrics.leader.set(0);
            break;
        }
        if let Ended::LeaseLost = ended {
            // Another replica may already lead: stop writing now, without
            // waiting for reconciles in flight.
            running.abort();
            let _ = running.await;
            ctx.metrics.leader.set(0);
            tracing::warn!(identity = %le.identity, "lost the leader lease; controller stopped");
            continue;
        }
        // Shutting down while still holding the lease: let reconciles in
        // flight finish, then release it.
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), running).await;
        ctx.metrics.leader.set(0);
        break;
    }
    drop(leader);
    // Dropping the receiver makes the lease task release the lease.
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(10), task).await {
        tracing::warn!(error = %e, "releasing the lease failed");
    }
    Ok(())
}

async fn render_metrics(
    State(metrics): State<Arc<Metrics>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}
