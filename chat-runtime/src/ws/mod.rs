//! The WebSocket side of the protocol (docs/protocol.md, section 5): the
//! upgrade ([`upgrade`]), one session per socket ([`session`]: reads client
//! frames and calls the chat service), and the socket's writer (`writer`:
//! ordered, gap-free delivery from the socket's queue). Frame types are in
//! [`crate::protocol`]; the queue is [`crate::hub::outbox`].

pub mod ack_order;
pub mod session;
pub mod throttle;
pub mod upgrade;
mod writer;

use std::borrow::Cow;

use axum::extract::ws::Utf8Bytes;

use crate::{
    chat::ChatError,
    protocol::{ErrorCode, ServerFrame, encode},
    store::StoreError,
};

/// An error frame for a storage refusal or failure (failures are logged,
/// never detailed to the client).
pub(crate) fn store_error_frame(id: Option<&str>, e: &StoreError) -> Utf8Bytes {
    let message = match e {
        StoreError::Db(err) => {
            tracing::error!(error = %err, "database error while handling a frame");
            Cow::Borrowed("internal error; retry")
        }
        other => Cow::Owned(other.to_string()),
    };
    encode(&ServerFrame::Error {
        id: id.map(Cow::Borrowed),
        code: e.code(),
        message,
        retry_after_ms: None,
    })
}

/// An error frame for a refused or failed chat request.
pub(crate) fn chat_error_frame(id: Option<&str>, e: &ChatError) -> Utf8Bytes {
    match e {
        ChatError::RateLimited {
            retry_after_ms,
            per_second,
        } => encode(&ServerFrame::Error {
            id: id.map(Cow::Borrowed),
            code: ErrorCode::RateLimited,
            message: Cow::Owned(format!(
                "too many messages: at most {per_second} per second; retry in {retry_after_ms} ms"
            )),
            retry_after_ms: Some(*retry_after_ms),
        }),
        ChatError::Rejected(e) | ChatError::Store(e) => store_error_frame(id, e),
    }
}
