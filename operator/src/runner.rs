//! Process wiring: leader election (a coordination.k8s.io Lease, via
//! kube-lease-manager), the health/metrics HTTP server, and the controller,
//! which runs only while this replica holds the lease.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::{
    controller::{self, Context, Settings},
    metrics::Metrics,
};

/// How long a successful API call keeps `/readyz` green.
pub const API_FRESHNESS: Duration = Duration::from_secs(30);
/// How often the API server is probed.
const API_PROBE_EVERY: Duration = Duration::from_secs(10);

/// What `/readyz` reports: a reachable API server (a successful call within
/// [`API_FRESHNESS`]) and, while this replica runs the controller, watches
/// that finished their initial list. A standby replica (leader election,
/// not leading) is ready when the API server is reachable: it can take over,
/// and a rolling update of the operator must not wait for it to lead.
#[derive(Debug, Default)]
pub struct Health {
    last_api_ok: Mutex<Option<Instant>>,
    controller_running: AtomicBool,
    /// Watch stores of the running controller still without their initial
    /// list.
    stores_pending: AtomicUsize,
}

impl Health {
    /// Records a successful API call now.
    pub fn api_ok(&self) {
        self.api_ok_at(Instant::now());
    }

    fn api_ok_at(&self, at: Instant) {
        if let Ok(mut last) = self.last_api_ok.lock() {
            *last = Some(last.map_or(at, |l| l.max(at)));
        }
    }

    /// The controller starts with `stores` watch stores to fill.
    pub fn controller_started(&self, stores: usize) {
        self.stores_pending.store(stores, Ordering::SeqCst);
        self.controller_running.store(true, Ordering::SeqCst);
    }

    /// One watch store finished its initial list.
    pub fn store_ready(&self) {
        let _ = self
            .stores_pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// The controller stopped (shutdown or lost lease).
    pub fn controller_stopped(&self) {
        self.controller_running.store(false, Ordering::SeqCst);
        self.stores_pending.store(0, Ordering::SeqCst);
    }

    /// Why this replica is not ready, or `None` when it is.
    pub fn not_ready(&self, now: Instant) -> Option<&'static str> {
        let api_fresh = self
            .last_api_ok
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|at| now.saturating_duration_since(at) < API_FRESHNESS);
        if !api_fresh {
            return Some("no successful Kubernetes API call in the last 30 s");
        }
        if self.controller_running.load(Ordering::SeqCst)
            && self.stores_pending.load(Ordering::SeqCst) > 0
        {
            return Some("the controller's watches have not finished their initial list");
        }
        None
    }
}

/// State of the HTTP endpoints.
#[derive(Clone)]
struct Endpoints {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// `/healthz` (liveness: the process serves requests; an unreachable API
/// server is a readiness matter, restarting would not fix it), `/readyz`
/// ([`Health`]) and `/metrics`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(Endpoints { metrics, health })
}

async fn readyz(State(e): State<Endpoints>) -> (StatusCode, String) {
    match e.health.not_ready(Instant::now()) {
        None => (StatusCode::OK, "ok".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why.into()),
    }
}

/// Probes the API server every [`API_PROBE_EVERY`] until `shutdown`.
async fn probe_api(client: Client, health: Arc<Health>, shutdown: Shutdown) {
    let probe = async {
        loop {
            let call = tokio::time::timeout(Duration::from_secs(5), client.apiserver_version());
            match call.await {
                Ok(Ok(_)) => health.api_ok(),
                Ok(Err(e)) => tracing::warn!(error = %e, "Kubernetes API probe failed"),
                Err(_) => tracing::warn!("Kubernetes API probe timed out"),
            }
            tokio::time::sleep(API_PROBE_EVERY).await;
        }
    };
    tokio::select! {
        _ = probe => {},
        _ = shutdown.wait() => {},
    }
}

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
            let app = router(metrics.clone(), ctx.health.clone());
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
    let prober = tokio::spawn(probe_api(
        client.clone(),
        ctx.health.clone(),
        shutdown.clone(),
    ));

    match config.leader_election {
        None => {
            metrics.leader.set(1);
            controller::run(ctx.clone(), shutdown.clone().wait()).await;
        }
        Some(le) => lead(client, ctx.clone(), le, shutdown.clone()).await?,
    }
    metrics.leader.set(0);
    prober.abort();
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
    State(e): State<Endpoints>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    (
        StatusCode::OK,
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        e.metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(app: &Router, path: &str) -> (StatusCode, String) {
        let req = http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).to_string())
    }

    #[tokio::test]
    async fn the_endpoints_answer() {
        let health = Arc::new(Health::default());
        health.api_ok();
        let app = router(Arc::new(Metrics::default()), health);
        assert_eq!(get(&app, "/healthz").await, (StatusCode::OK, "ok".into()));
        assert_eq!(get(&app, "/readyz").await, (StatusCode::OK, "ok".into()));
        let (status, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("chorus_"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert_eq!(get(&app, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn readiness_follows_the_watches_and_the_api_server() {
        let health = Arc::new(Health::default());
        let app = router(Arc::new(Metrics::default()), health.clone());
        // Nothing reached the API server yet; liveness is unaffected.
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        health.api_ok();
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::OK,
            "a standby replica"
        );
        // Leading: not ready until both stores listed.
        health.controller_started(2);
        let (status, why) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(why.contains("initial list"), "{why}");
        health.store_ready();
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.store_ready();
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        // An API server silent for longer than API_FRESHNESS.
        let now = Instant::now();
        assert!(health.not_ready(now).is_none());
        assert!(
            health
                .not_ready(now + API_FRESHNESS + Duration::from_secs(1))
                .is_some_and(|w| w.contains("API"))
        );
        // Lease lost: back to a standby's readiness.
        health.controller_stopped();
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
    }
}
