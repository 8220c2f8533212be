//! Start-up and shut-down: connect, migrate, compute the epoch, start the
//! fan-out, listen on the public and admin addresses, and drain on SIGTERM.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    app,
    auth::Authenticator,
    config::{self, Config},
    hub::{self, Broker, Hub, nats::NatsBroker, pg::PgBroker},
    metrics::Metrics,
    state::AppState,
    store::Store,
};

/// A start-up failure, with what to check.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database is unreachable or refused the credentials.
    #[error("cannot connect to CHAT_DATABASE_URL: {0}")]
    Database(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Reading the epoch failed.
    #[error("cannot read the database identity: {0}")]
    Epoch(#[source] sqlx::Error),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Error.
        #[source]
        source: std::io::Error,
    },
    /// Auth keys could not be loaded.
    #[error("{0}")]
    Auth(String),
    /// The NATS broker's URL is unusable.
    #[error(transparent)]
    Nats(#[from] crate::hub::nats::NatsError),
}

/// A running runtime.
pub struct Server {
    /// Where the public listener is bound.
    pub public_addr: SocketAddr,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    /// Shared state.
    pub state: AppState,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Connects and applies migrations (the `migrate` subcommand, and the first
/// step of `serve`).
pub async fn migrate(database_url: &str) -> Result<Store, StartError> {
    let store = Store::connect(database_url, 4, Duration::from_secs(60))
        .await
        .map_err(StartError::Database)?;
    store.migrate().await?;
    Ok(store)
}

/// Serves `router` until `stopped` turns true. Chat frames are small and
/// latency-bound, so sockets get TCP_NODELAY (no Nagle delay).
fn serve(
    listener: TcpListener,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        // Peer addresses feed the sign-up and login limits.
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "listener failed");
        }
    })
}

impl Server {
    /// Starts everything; returns once both listeners accept connections.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::default());
        // Keys first: a bad JWKS file fails start-up at once, before the
        // database wait.
        let auth = Authenticator::new(&config.tenant_id, &config.auth).map_err(StartError::Auth)?;
        auth.prime().await.map_err(StartError::Auth)?;
        let store = Store::connect_with(
            &config.database_url,
            config.db_pool_size,
            Duration::from_secs(60),
            config.synchronous_commit.setting(),
        )
        .await
        .map_err(StartError::Database)?;
        store.migrate().await?;
        let epoch = store.epoch().await.map_err(StartError::Epoch)?;
        let broker: Arc<dyn Broker> = match &config.broker {
            config::Broker::Postgres => {
                let schema = store.schema().await.map_err(StartError::Database)?;
                PgBroker::new(store.pool.clone(), &schema)
            }
            config::Broker::Nats {
                url,
                subject_prefix,
                auth,
            } => NatsBroker::connect(url, subject_prefix, &config.pod_name, auth).await?,
        };
        let inbound = broker.subscribe();
        let hub = Hub::new(
            store.clone(),
            metrics.clone(),
            config.pod_name.clone(),
            epoch.clone(),
            broker,
        );
        let public = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let admin = TcpListener::bind(config.admin_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.admin_addr,
                source,
            })?;
        let public_addr = public.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen_addr,
            source,
        })?;
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            addr: config.admin_addr,
            source,
        })?;
        let retention = config.limits.history_retention_days;
        let state = AppState::new(config, hub.clone(), auth, metrics);
        let (stop, stopped) = watch::channel(false);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(hub::receive(hub.clone(), inbound)));
        tasks.push(tokio::spawn(hub::run_timers(hub.clone())));
        let index_store = store.clone();
        tasks.push(tokio::spawn(async move {
            match index_store.ensure_search_index().await {
                Ok(true) => tracing::info!("trigram search index ready"),
                Ok(false) => tracing::info!(
                    "no trigram search index (pg_trgm missing, or another replica is building it): substring search scans"
                ),
                Err(e) => tracing::warn!(error = %e, "building the trigram search index failed; substring search scans"),
            }
        }));
        let limiter = state.auth_limiter.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                limiter.prune(std::time::Instant::now());
            }
        }));
        if retention > 0 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(3600));
                loop {
                    every.tick().await;
                    match store.sweep_retention(retention).await {
                        Ok(n) if n > 0 => tracing::info!(
                            rows = n,
                            days = retention,
                            "history retention removed old rows"
                        ),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "history retention failed"),
                    }
                }
            }));
        }
        tasks.push(serve(public, app::app(state.clone()), stopped.clone()));
        tasks.push(serve(admin, app::admin(state.clone()), stopped));
        state.started.store(true, Ordering::Relaxed);
        tracing::info!(%public_addr, %admin_addr, epoch = %epoch, "chat runtime started");
        Ok(Self {
            public_addr,
            admin_addr,
            state,
            stop,
            tasks,
        })
    }

    /// Graceful drain: readiness fails and upgrades are refused at once; open
    /// sockets get the reconnect close spread over the drain window; then
    /// the listeners stop.
    pub async fn drain(self) {
        let window = self.state.config.drain;
        tracing::info!(
            sockets = self.state.sockets.load(Ordering::Relaxed),
            window_s = window.as_secs(),
            "draining"
        );
        self.state.draining.store(true, Ordering::Relaxed);
        self.state.hub.drain(window);
        let deadline = tokio::time::Instant::now() + window + Duration::from_secs(5);
        while self.state.sockets.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
        }
        tracing::info!("drained; exiting");
    }
}
