//! `GET /ws`: the WebSocket upgrade. Everything that can be refused is
//! refused here, as a JSON error with a status (not a frame): no upgrade
//! (`400`), a page of a foreign origin (`403`), a draining replica or a full
//! one (`503`), a bad ticket or token (`401`). The caller is identified
//! once, here, by a one-time `?ticket=` (`POST /api/v1/ws-ticket`), or, as a
//! fallback, by `?access_token=` or an `Authorization` header; the
//! connection then lives until the token's `exp`.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use axum::{
    extract::{State, WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection},
    http::{HeaderMap, header},
    response::Response,
};
use serde::Deserialize;
use tracing::Instrument;

use super::session;
use crate::{
    auth::AuthError,
    error::AppError,
    http::{
        auth::{auth_error, authenticate, bearer, redeem_ticket},
        extract::AppQuery,
    },
    state::AppState,
};

/// How a browser (which cannot set headers on a WebSocket) identifies
/// itself: `?ticket=` (preferred: the token stays out of URLs and logs) or
/// `?access_token=` (fallback).
#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
    ticket: Option<String>,
}

/// Whether a WebSocket upgrade may proceed given its `Origin`: no header
/// (not a browser), the page's own origin (the `Host` it connected to), or
/// one of `CHAT_CORS_ORIGINS`. Browsers send `Origin` on every WebSocket
/// handshake and do not apply CORS to it, so this check is what keeps a
/// foreign page from opening a socket with a user's credentials.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    if allowed.contains(&origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    match (origin.split_once("://"), host) {
        (Some((scheme, authority)), Some(host)) => {
            matches!(scheme, "http" | "https") && authority == host
        }
        _ => false,
    }
}

/// Most bytes of queued frames sent in one socket write (frames beyond it
/// are written as the buffer fills).
pub const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// `GET /ws`.
pub async fn upgrade(
    State(state): State<AppState>,
    AppQuery(q): AppQuery<WsQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    if !origin_allowed(&headers, &state.config.cors_origins) {
        return Err(AppError::Forbidden(
            "this page's origin may not open a WebSocket here: use the same origin, or add it to CHAT_CORS_ORIGINS".into(),
        ));
    }
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
    let principal = match (q.ticket, q.access_token.or_else(|| bearer(&headers))) {
        (Some(ticket), _) => redeem_ticket(&state, &ticket).await?,
        (None, Some(token)) => authenticate(&state, &token).await?,
        (None, None) => return Err(auth_error(AuthError::Missing)),
    };
    let max = state.config.limits.max_connections;
    let Some(slot) = ConnectionSlot::acquire(&state.sockets, max) else {
        state.metrics.connections_refused.inc();
        return Err(AppError::Unavailable(format!(
            "this replica holds its maximum of {max} connections; retry later"
        )));
    };
    // Small buffers keep memory per idle connection low; messages larger than
    // the body limit (plus framing) are refused by the protocol layer.
    let frame_limit = state.request_limit();
    // The request's span (with its request id), captured here: the upgrade
    // callback runs in a task of its own, outside it.
    let span = tracing::Span::current();
    Ok(ws
        .read_buffer_size(4 * 1024)
        // Frames are buffered until the writer flushes, which it does when
        // its queue is empty: a socket that fell behind gets everything
        // queued in one write (up to this many bytes per write).
        .write_buffer_size(WRITE_BUFFER_BYTES)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_origin_or_listed_origins_may_upgrade() {
        let h = |origin: Option<&str>, host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        let listed = vec!["https://app.example.com".to_string()];
        assert!(
            origin_allowed(&h(None, "chat.example.com"), &[]),
            "not a browser"
        );
        assert!(origin_allowed(
            &h(Some("https://chat.example.com"), "chat.example.com"),
            &[]
        ));
        assert!(origin_allowed(
            &h(Some("http://127.0.0.1:8080"), "127.0.0.1:8080"),
            &[]
        ));
        assert!(!origin_allowed(
            &h(Some("https://evil.example"), "chat.example.com"),
            &[]
        ));
        assert!(!origin_allowed(&h(Some("null"), "chat.example.com"), &[]));
        assert!(!origin_allowed(
            &h(
                Some("https://chat.example.com.evil.example"),
                "chat.example.com"
            ),
            &[]
        ));
        assert!(origin_allowed(
            &h(Some("https://App.example.com"), "chat.example.com"),
            &listed
        ));
        assert!(!origin_allowed(
            &h(Some("https://app.example.com:444"), "chat.example.com"),
            &listed
        ));
    }

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
