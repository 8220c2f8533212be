//! The two routers: the public one (REST, WebSocket, web client) and the
//! admin one (health and metrics). Routing only: the shared state is in
//! [`crate::state`], the REST handlers and the caller extractor in
//! [`crate::http`], the WebSocket upgrade in [`crate::ws::upgrade`].
//!
//! `app(state)` is a plain [`Router`], so tests drive it with
//! `tower::ServiceExt::oneshot` without a listener (`tests` below).

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    response::Response,
    routing::{delete, get, patch, post, put},
};
use tracing::Instrument;

use crate::state::AppState;
use crate::{
    error::AppError,
    http::{accounts, admin as health, messages, rooms},
    web,
    ws::upgrade::upgrade,
};

/// The public router.
pub fn app(state: AppState) -> Router {
    let body_limit = state.request_limit();
    Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/ws", get(upgrade))
        .route("/api/v1/auth/signup", post(accounts::signup))
        .route("/api/v1/auth/login", post(accounts::login))
        .route("/api/v1/auth/logout", post(accounts::logout))
        .route("/api/v1/me", get(accounts::me))
        .route("/api/v1/rooms", get(rooms::list).post(rooms::create))
        .route("/api/v1/dms", post(rooms::direct))
        .route("/api/v1/rooms/{room}", get(rooms::show))
        .route("/api/v1/rooms/{room}/join", post(rooms::join))
        .route("/api/v1/rooms/{room}/leave", post(rooms::leave))
        .route("/api/v1/rooms/{room}/invite", post(rooms::invite))
        .route("/api/v1/rooms/{room}/members", get(rooms::members))
        .route(
            "/api/v1/rooms/{room}/members/{user}/role",
            put(rooms::set_role),
        )
        .route("/api/v1/rooms/{room}/kick", post(rooms::kick))
        .route("/api/v1/rooms/{room}/bans", post(rooms::ban))
        .route("/api/v1/rooms/{room}/bans/{user}", delete(rooms::unban))
        .route("/api/v1/rooms/{room}/presence", get(rooms::presence))
        .route("/api/v1/rooms/{room}/read", post(messages::read))
        .route(
            "/api/v1/rooms/{room}/messages",
            get(messages::history).post(messages::send),
        )
        .route(
            "/api/v1/rooms/{room}/messages/{seq}",
            patch(messages::edit).delete(messages::remove),
        )
        .route(
            "/api/v1/rooms/{room}/messages/{seq}/reactions/{emoji}",
            put(messages::react).delete(messages::unreact),
        )
        .route("/api/v1/rooms/{room}/threads/{seq}", get(messages::thread))
        .route("/api/v1/search", get(messages::search))
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

/// The admin router: `/livez`, `/readyz`, `/startupz`, `/metrics`.
pub fn admin(state: AppState) -> Router {
    Router::new()
        .route("/livez", get(health::livez))
        .route("/startupz", get(health::startupz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
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
