//! The admin listener's handlers: probes (`/livez`, `/startupz`, `/readyz`)
//! and Prometheus metrics. Plain text, not the API's JSON: kubelets and
//! scrapers read them, not clients.

use std::sync::atomic::Ordering;

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::state::AppState;

/// `GET /livez`: the process answers.
pub async fn livez() -> &'static str {
    "ok"
}

/// `GET /startupz`: migrations ran and the listeners are up.
pub async fn startupz(State(s): State<AppState>) -> Response {
    if s.started.load(Ordering::Relaxed) {
        (StatusCode::OK, "started").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

/// `GET /readyz`: started, not draining, and the database answers.
pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.draining.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if !s.started.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response();
    }
    if !s.hub.store().ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response();
    }
    (StatusCode::OK, "ready").into_response()
}

/// `GET /metrics`: OpenMetrics text.
pub async fn metrics(State(s): State<AppState>) -> Response {
    let pool = &s.hub.store().pool;
    s.metrics
        .observe_pool(pool.size(), pool.num_idle(), s.config.db_pool_size);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
