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
    let router = Router::new()
        .route("/", get(web::index))
        .route("/app.js", get(web::script))
        .route("/app.css", get(web::style))
        .route("/ws", get(upgrade))
        .route("/api/v1/auth/signup", post(accounts::signup))
        .route("/api/v1/auth/login", post(accounts::login))
        .route("/api/v1/auth/logout", post(accounts::logout))
        .route("/api/v1/me", get(accounts::me))
        .route("/api/v1/ws-ticket", post(accounts::ws_ticket))
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
        .layer(DefaultBodyLimit::max(body_limit));
    let router = match cors(&state.config.cors_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    let metrics = state.metrics.clone();
    security_headers(router)
        .layer(axum::middleware::from_fn(request_id))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            count_response,
        ))
        .with_state(state)
}

/// Counts every public response by status class
/// (`chat_http_responses_total`).
async fn count_response(
    axum::extract::State(metrics): axum::extract::State<std::sync::Arc<crate::metrics::Metrics>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(req).await;
    metrics.http_response(response.status().as_u16());
    response
}

/// The web client's Content-Security-Policy: its own script, style and
/// connections only (no inline code, no eval), no plugins, no framing.
/// Sent on every response: JSON answers are never meant to run either.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// Headers every public response carries (unless a handler set its own):
/// no MIME sniffing, no referrer, the CSP, and no framing (old browsers read
/// `X-Frame-Options`, new ones `frame-ancestors`).
fn security_headers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    use axum::http::{HeaderName, HeaderValue, header};
    use tower_http::set_header::SetResponseHeaderLayer;
    let headers: [(HeaderName, &'static str); 4] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ];
    headers.into_iter().fold(router, |r, (name, value)| {
        r.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ))
    })
}

/// CORS for the listed origins (`CHAT_CORS_ORIGINS`); `None` (no CORS
/// headers at all: same origin only) when there are none. Tokens travel in
/// `Authorization`, never cookies, so credentials are not allowed.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([header::RETRY_AFTER, HeaderName::from_static("x-request-id")])
            .max_age(std::time::Duration::from_secs(600)),
    )
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
    // The route template (`/api/v1/rooms/{room}`) names the span in traces;
    // unrouted requests have none.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        http.route = route.as_deref(),
        http.response.status_code = tracing::field::Empty,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // Trace-only fields: recorded only when traces are on, so that log
    // lines stay as they are otherwise.
    let traced = chorus_telemetry::enabled();
    if traced {
        let name = format!(
            "{} {}",
            req.method(),
            route.as_deref().unwrap_or("unrouted")
        );
        span.record("otel.name", name.as_str());
        span.record("otel.kind", "server");
        chorus_telemetry::continue_remote_trace(&span, req.headers());
    }
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    if traced && status >= 500 {
        span.record("otel.status_code", "error");
    }
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

#[cfg(test)]
mod tests {
    //! The routers driven with `oneshot`, no listener and no database: only
    //! requests that are answered before any storage call (routing, error
    //! shapes, limits, probes, the web client).

    use std::{sync::Arc, time::Duration};

    use axum::{
        body::Body,
        http::{Request, StatusCode, header},
    };
    use futures::{StreamExt, future::BoxFuture, stream::BoxStream};
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;
    use crate::{
        auth::Authenticator,
        config::{Auth, Config, ExternalAuth, Limits},
        hub::{Broker, Hub, Inbound},
        metrics::Metrics,
        store::{RoomId, Seq, Store},
    };

    struct NoBroker;

    impl Broker for NoBroker {
        fn publish_wakeup(&self, _: RoomId, _: Seq) {}
        fn publish_ephemeral(&self, _: String) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn subscribe(&self) -> BoxStream<'static, Inbound> {
            futures::stream::pending().boxed()
        }
    }

    fn state(auth: Auth) -> AppState {
        state_with(auth, vec![])
    }

    fn state_with(auth: Auth, cors_origins: Vec<String>) -> AppState {
        let config = Config {
            database_url: "postgres://nobody@127.0.0.1:1/none".into(),
            tenant_id: "acme".into(),
            pod_name: "pod-a".into(),
            listen_addr: ([127, 0, 0, 1], 0).into(),
            admin_addr: ([127, 0, 0, 1], 0).into(),
            auth,
            limits: Limits {
                max_connections: 10,
                messages_per_second: 10,
                max_message_bytes: 1000,
                history_retention_days: 0,
            },
            drain: Duration::from_secs(1),
            resume_limit: 100,
            db_pool_size: 1,
            synchronous_commit: crate::config::SynchronousCommit::Server,
            auth_limits: Default::default(),
            trusted_proxies: vec![],
            cors_origins,
            ws_ticket_ttl: Duration::from_secs(30),
            broker: crate::config::Broker::Postgres,
        };
        let pool = sqlx::PgPool::connect_lazy(&config.database_url).unwrap();
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(
            Store { pool },
            metrics.clone(),
            "pod-a".into(),
            "epoch".into(),
            Arc::new(NoBroker),
        );
        let auth = Authenticator::new(&config.tenant_id, &config.auth).unwrap();
        AppState::new(config, hub, auth, metrics)
    }

    fn builtin() -> AppState {
        state(Auth::Builtin {
            secret: "test-secret-0123456789abcdef0123456789".into(),
        })
    }

    async fn call(router: Router, req: Request<Body>) -> (StatusCode, header::HeaderMap, String) {
        let response = router.oneshot(req).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(bytes.to_vec()).unwrap(),
        )
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn post_json(uri: &str, body: impl Into<Body>) -> Request<Body> {
        Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .unwrap()
    }

    /// Asserts the API's error shape and returns the message.
    fn api_error(
        status: StatusCode,
        headers: &header::HeaderMap,
        body: &str,
        code: &str,
    ) -> String {
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "application/json",
            "{status} {body}"
        );
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], code, "{body}");
        v["error"]["message"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let (status, headers, body) = call(app(builtin()), get("/api/v1/nope")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        api_error(status, &headers, &body, "not_found");
        let req = Request::delete("/api/v1/rooms")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = call(app(builtin()), req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        api_error(status, &headers, &body, "method_not_allowed");
    }

    #[tokio::test]
    async fn responses_are_counted_by_status_class() {
        let state = builtin();
        let metrics = state.metrics.clone();
        let router = app(state);
        call(router.clone(), get("/api/v1/nope")).await;
        call(router.clone(), get("/api/v1/me")).await;
        call(router, get("/app.js")).await;
        let text = metrics.render();
        for want in [
            "chat_http_responses_total{status_class=\"4xx\"} 2",
            "chat_http_responses_total{status_class=\"2xx\"} 1",
            "chat_http_responses_total{status_class=\"5xx\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[tokio::test]
    async fn every_response_carries_a_request_id() {
        let req = Request::get("/nope")
            .header("x-request-id", "abc-123")
            .body(Body::empty())
            .unwrap();
        let (_, headers, _) = call(app(builtin()), req).await;
        assert_eq!(headers["x-request-id"], "abc-123");
        let (_, headers, _) = call(app(builtin()), get("/")).await;
        let id = headers["x-request-id"].to_str().unwrap();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }

    #[tokio::test]
    async fn calls_without_a_token_are_unauthorized() {
        let (status, headers, body) = call(app(builtin()), get("/api/v1/me")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let message = api_error(status, &headers, &body, "unauthorized");
        assert!(message.contains("token"), "{message}");
    }

    #[tokio::test]
    async fn bodies_are_checked_before_anything_else() {
        let (status, headers, body) = call(
            app(builtin()),
            post_json("/api/v1/auth/signup", "{not json"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        api_error(status, &headers, &body, "bad_request");
        let limit = builtin().request_limit();
        let big = format!(r#"{{"username":"{}"}}"#, "x".repeat(limit));
        let (status, headers, body) =
            call(app(builtin()), post_json("/api/v1/auth/signup", big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        api_error(status, &headers, &body, "too_large");
    }

    #[tokio::test]
    async fn external_auth_tenants_refuse_signup() {
        let external = state(Auth::External(ExternalAuth {
            hs256_secret: Some("s".into()),
            jwks: None,
            issuer: "idp".into(),
            audience: "chat".into(),
        }));
        let creds = r#"{"username":"alice","password":"correct horse"}"#;
        let (status, headers, body) =
            call(app(external), post_json("/api/v1/auth/signup", creds)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        api_error(status, &headers, &body, "forbidden");
    }

    #[tokio::test]
    async fn the_websocket_endpoint_needs_an_upgrade() {
        let (status, headers, body) = call(app(builtin()), get("/ws")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = api_error(status, &headers, &body, "bad_request");
        assert!(message.contains("WebSocket"), "{message}");
    }

    #[tokio::test]
    async fn the_web_client_is_served() {
        for (path, kind) in [
            ("/", "text/html"),
            ("/app.js", "text/javascript"),
            ("/app.css", "text/css"),
        ] {
            let (status, headers, body) = call(app(builtin()), get(path)).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            let content_type = headers[header::CONTENT_TYPE].to_str().unwrap();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
            assert!(!body.is_empty());
        }
    }

    #[tokio::test]
    async fn every_response_carries_the_security_headers() {
        let posted = post_json("/api/v1/auth/signup", "{not json");
        for req in [
            get("/"),
            get("/app.js"),
            get("/api/v1/me"),
            get("/nope"),
            posted,
        ] {
            let uri = req.uri().clone();
            let (_, headers, _) = call(app(builtin()), req).await;
            assert_eq!(headers["x-content-type-options"], "nosniff", "{uri}");
            assert_eq!(headers["referrer-policy"], "no-referrer", "{uri}");
            assert_eq!(headers["x-frame-options"], "DENY", "{uri}");
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("frame-ancestors 'none'"), "{uri}: {csp}");
            assert!(csp.contains("script-src 'self';"), "{uri}: {csp}");
            assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        }
        // The page has nothing inline the policy would block.
        let (_, _, html) = call(app(builtin()), get("/")).await;
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "{html}"
        );
        for handler in [
            "onclick=",
            "onsubmit=",
            "onload=",
            "onerror=",
            "javascript:",
        ] {
            assert!(!html.contains(handler), "inline {handler}");
        }
    }

    #[tokio::test]
    async fn cors_is_off_by_default_and_follows_the_allow_list() {
        let from = |origin: &str, req: Request<Body>| {
            let (mut parts, body) = req.into_parts();
            parts
                .headers
                .insert(header::ORIGIN, origin.parse().unwrap());
            Request::from_parts(parts, body)
        };
        let preflight = |origin: &str| {
            Request::builder()
                .method("OPTIONS")
                .uri("/api/v1/rooms")
                .header(header::ORIGIN, origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .body(Body::empty())
                .unwrap()
        };
        // Default: no CORS headers, whoever asks.
        let (_, headers, _) = call(
            app(builtin()),
            from("https://app.example.com", get("/api/v1/me")),
        )
        .await;
        assert!(!headers.contains_key("access-control-allow-origin"));
        let (_, headers, _) = call(app(builtin()), preflight("https://app.example.com")).await;
        assert!(!headers.contains_key("access-control-allow-origin"));
        // Listed: preflight and answers carry it, for that origin only.
        let listed = || {
            app(state_with(
                Auth::Builtin {
                    secret: "test-secret-0123456789abcdef0123456789".into(),
                },
                vec!["https://app.example.com".into()],
            ))
        };
        let (status, headers, _) = call(listed(), preflight("https://app.example.com")).await;
        assert!(status.is_success(), "{status}");
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example.com"
        );
        let methods = headers["access-control-allow-methods"].to_str().unwrap();
        assert!(
            methods.contains("POST") && methods.contains("DELETE"),
            "{methods}"
        );
        let allowed = headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed.contains("authorization"), "{allowed}");
        assert!(!headers.contains_key("access-control-allow-credentials"));
        let (status, headers, _) =
            call(listed(), from("https://app.example.com", get("/api/v1/me"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://app.example.com"
        );
        let exposed = headers["access-control-expose-headers"].to_str().unwrap();
        assert!(exposed.contains("retry-after"), "{exposed}");
        let (_, headers, _) = call(listed(), preflight("https://evil.example")).await;
        assert!(!headers.contains_key("access-control-allow-origin"));
        // WebSocket upgrades check the same list (refused before anything else).
        let ws = |origin: &str| from(origin, get("/ws"));
        let (status, headers, body) = call(app(builtin()), ws("https://evil.example")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        api_error(status, &headers, &body, "forbidden");
        let (status, _, _) = call(listed(), ws("https://app.example.com")).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "allowed; then: not an upgrade"
        );
    }

    #[tokio::test]
    async fn probes_follow_start_up() {
        let s = builtin();
        let (status, _, body) = call(admin(s.clone()), get("/livez")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        let (status, _, body) = call(admin(s.clone()), get("/startupz")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "starting")
        );
        let (status, _, body) = call(admin(s.clone()), get("/readyz")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "starting")
        );
        s.started.store(true, std::sync::atomic::Ordering::Relaxed);
        let (status, _, _) = call(admin(s.clone()), get("/startupz")).await;
        assert_eq!(status, StatusCode::OK);
        s.draining.store(true, std::sync::atomic::Ordering::Relaxed);
        let (status, _, body) = call(admin(s.clone()), get("/readyz")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        );
        let (status, headers, body) = call(admin(s), get("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        assert!(body.contains("chat_connections"), "{body}");
    }
}
