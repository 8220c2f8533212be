//! `GET /ws`: the WebSocket upgrade. Everything that can be refused is
//! refused here, as a JSON error with a status (not a frame): no upgrade
//! (`400`), a draining replica or a full one (`503`), a bad token (`401`).
//! The token is checked once, here; the connection then lives until its
//! `exp`.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use axum::{
    extract::{State, WebSocketUpgrade, ws::rejection::WebSocketUpgradeRejection},
    http::HeaderMap,
    response::Response,
};
use serde::Deserialize;
use tracing::Instrument;

use super::session;
use crate::{
    auth::AuthError,
    error::AppError,
    http::{
        auth::{auth_error, authenticate, bearer},
        extract::AppQuery,
    },
    state::AppState,
};

/// `?access_token=` (browsers cannot set headers on a WebSocket).
#[derive(Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

/// `GET /ws`.
pub async fn upgrade(
    State(state): State<AppState>,
    AppQuery(q): AppQuery<WsQuery>,
    headers: HeaderMap,
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
    let principal = authenticate(&state, &token).await?;
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
