//! Shared state and the two routers: the public one (REST, WebSocket, web
//! client) and the admin one (health and metrics).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32, Ordering},
};

use axum::{
    Router,
    extract::{
        DefaultBodyLimit, FromRequestParts, Request, State, WebSocketUpgrade,
        ws::rejection::WebSocketUpgradeRejection,
    },
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
};
use serde::Deserialize;
use tracing::Instrument;

use crate::{
    auth::{AuthError, Authenticator, Principal},
    config::Config,
    error::AppError,
    http::{self, extract::AppQuery},
    hub::Hub,
    metrics::Metrics,
    ratelimit::RateLimiter,
    web,
    ws::session,
};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub config: Arc<Config>,
    /// Fan-out, presence and storage.
    pub hub: Arc<Hub>,
    /// Token handling.
    pub auth: Arc<Authenticator>,
    /// Per-user send limits.
    pub limiter: Arc<RateLimiter>,
    /// Per-room group commit of sends.
    pub committer: Arc<crate::committer::Committer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness fails, upgrades are refused.
    pub draining: Arc<AtomicBool>,
    /// Set once migrations ran and the listeners are up.
    pub started: Arc<AtomicBool>,
    /// WebSockets accepted and not yet closed.
    pub sockets: Arc<AtomicU32>,
}

/// The public router.
pub fn app(state: AppState) -> Router {
    let body_limit = request_limit(&state.config);
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/ws", get(upgrade))
        .route("/api/v1/auth/signup", post(http::accounts::signup))
        .route("/api/v1/auth/login", post(http::accounts::login))
        .route("/api/v1/auth/logout", post(http::accounts::logout))
        .route("/api/v1/me", get(http::accounts::me))
        .route(
            "/api/v1/rooms",
            get(http::rooms::list).post(http::rooms::create),
        )
        .route("/api/v1/dms", post(http::rooms::direct))
        .route("/api/v1/rooms/{room}", get(http::rooms::show))
        .route("/api/v1/rooms/{room}/join", post(http::rooms::join))
        .route("/api/v1/rooms/{room}/leave", post(http::rooms::leave))
        .route("/api/v1/rooms/{room}/invite", post(http::rooms::invite))
        .route("/api/v1/rooms/{room}/members", get(http::rooms::members))
        .route(
            "/api/v1/rooms/{room}/members/{user}/role",
            put(http::rooms::set_role),
        )
        .route("/api/v1/rooms/{room}/kick", post(http::rooms::kick))
        .route("/api/v1/rooms/{room}/bans", post(http::rooms::ban))
        .route(
            "/api/v1/rooms/{room}/bans/{user}",
            delete(http::rooms::unban),
        )
        .route("/api/v1/rooms/{room}/presence", get(http::rooms::presence))
        .route("/api/v1/rooms/{room}/read", post(http::messages::read))
        .route(
            "/api/v1/rooms/{room}/messages",
            get(http::messages::history).post(http::messages::send),
        )
        .route(
            "/api/v1/rooms/{room}/messages/{seq}",
            axum::routing::patch(http::messages::edit).delete(http::messages::remove),
        )
        .route(
            "/api/v1/rooms/{room}/messages/{seq}/reactions/{emoji}",
            put(http::messages::react).delete(http::messages::unreact),
        )
        .route(
            "/api/v1/rooms/{room}/threads/{seq}",
            get(http::messages::thread),
        )
        .route("/api/v1/search", get(http::messages::search))
        .fallback(|| async { AppError::NotFound("no such route; see docs/protocol.md".into()) })
        .method_not_allowed_fallback(|| async {
            AppError::MethodNotAllowed(
                "this path does not take that method; see docs/protocol.md".into(),
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Gives every request an id (the client's `x-request-id`, or a new one),
/// runs it in a `request` span so its log lines carry the id, and returns
/// the id in the `x-request-id` response header.
async fn request_id(req: Request, next: axum::middleware::Next) -> Response {
    use rand::RngCore;
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            rand::rng().fill_bytes(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect()
        });
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The admin router: `/livez`, `/readyz`, `/startupz`, `/metrics`.
pub fn admin(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/startupz", get(startupz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn startupz(State(s): State<AppState>) -> Response {
    if s.started.load(Ordering::Relaxed) {
        (StatusCode::OK, "started").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

async fn readyz(State(s): State<AppState>) -> Response {
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

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// The caller, from `Authorization: Bearer <token>`.
pub struct Authed(pub Principal);

fn auth_error(e: AuthError) -> AppError {
    match e {
        AuthError::Store(s) => s.into(),
        other => AppError::Unauthorized(other.to_string()),
    }
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| auth_error(AuthError::Missing))?;
        let principal = state
            .auth
            .authenticate(state.hub.store(), &token)
            .await
            .map_err(auth_error)?;
        Ok(Authed(principal))
    }
}

#[derive(Deserialize)]
struct WsQuery {
    access_token: Option<String>,
}

async fn upgrade(
    State(state): State<AppState>,
    AppQuery(q): AppQuery<WsQuery>,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let ws = ws.map_err(|r| {
        AppError::BadRequest(format!(
            "{}: /ws is the WebSocket endpoint; connect with a WebSocket client (docs/protocol.md)",
            r.body_text()
        ))
    })?;
    if state.draining.load(Ordering::Relaxed) {
        state.metrics.connections_refused.inc();
        return Err(AppError::Unavailable(
            "this replica is draining; reconnect (another replica will answer)".into(),
        ));
    }
    let token = q
        .access_token
        .or_else(|| bearer(&headers))
        .ok_or_else(|| auth_error(AuthError::Missing))?;
    let principal = state
        .auth
        .authenticate(state.hub.store(), &token)
        .await
        .map_err(auth_error)?;
    let max = state.config.limits.max_connections;
    let Some(slot) = ConnectionSlot::acquire(&state.sockets, max) else {
        state.metrics.connections_refused.inc();
        return Err(AppError::Unavailable(format!(
            "this replica holds its maximum of {max} connections; retry later"
        )));
    };
    // Small buffers keep memory per idle connection low; messages larger than
    // the body limit (plus framing) are refused by the protocol layer.
    let frame_limit = request_limit(&state.config);
    // The request's span (with its request id), captured here: the upgrade
    // callback runs in a task of its own, outside it.
    let span = tracing::Span::current();
    Ok(ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * 1024 * 1024)
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| {
            // The socket's log lines keep the upgrade request's id.
            async move {
                session::run(socket, state, principal).await;
                drop(slot);
            }
            .instrument(span)
        }))
}

/// Largest REST body and WebSocket frame: twice the message limit (JSON
/// escaping) plus 64 KiB for the other fields.
pub fn request_limit(config: &Config) -> usize {
    config.limits.max_message_bytes as usize * 2 + 64 * 1024
}

/// One WebSocket's place in the replica's connection limit. It is taken
/// before the upgrade and moved into the upgrade callback; dropping it frees
/// the place, so an upgrade that fails (and never runs the callback) frees
/// it too.
pub struct ConnectionSlot(Arc<AtomicU32>);

impl ConnectionSlot {
    /// Takes a place when fewer than `max` are taken.
    pub fn acquire(sockets: &Arc<AtomicU32>, max: u32) -> Option<Self> {
        sockets
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(sockets.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Builds the state.
pub fn state(
    config: Config,
    hub: Arc<Hub>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
) -> AppState {
    let limiter = RateLimiter::new(config.limits.messages_per_second);
    let committer = crate::committer::Committer::new(hub.store().clone());
    AppState {
        committer,
        config: Arc::new(config),
        hub,
        auth: Arc::new(auth),
        limiter: Arc::new(limiter),
        metrics,
        draining: Arc::new(AtomicBool::new(false)),
        started: Arc::new(AtomicBool::new(false)),
        sockets: Arc::new(AtomicU32::new(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_are_freed_on_drop_even_when_never_used() {
        let sockets = Arc::new(AtomicU32::new(0));
        let a = ConnectionSlot::acquire(&sockets, 2).unwrap();
        let b = ConnectionSlot::acquire(&sockets, 2).unwrap();
        assert!(ConnectionSlot::acquire(&sockets, 2).is_none(), "full");
        drop(a);
        assert_eq!(sockets.load(Ordering::Acquire), 1);
        // An upgrade callback that is dropped without running (failed
        // upgrade) still frees its slot.
        let callback = move || drop(b);
        drop(callback);
        assert_eq!(sockets.load(Ordering::Acquire), 0);
    }
}
