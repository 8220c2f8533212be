//! The wire protocol of docs/protocol.md, as types: what a client sends
//! ([`client`]), what the server sends ([`server`]), the room events that are
//! stored and delivered ([`event`]), the error codes ([`error`]) and the close
//! codes ([`close`]).
//!
//! Why a module of its own: every layer speaks these shapes (the store writes
//! room events, the hub and the socket writer encode them, the session
//! decodes client frames, REST and WebSocket report the same errors). Keeping
//! them here, typed and in one place, means a field is named once, and the
//! doc is checked against the types by a test (`tests` below). This module
//! depends on nothing else in the crate, so it never takes part in an import
//! cycle: the store, hub, ws and http modules depend on it, never the other
//! way round.

pub mod client;
pub mod close;
pub mod error;
pub mod event;
pub mod server;
pub mod types;

pub use client::{ClientFrame, FrameError, PresenceStatus, decode, scan_id};
pub use error::ErrorCode;
pub use event::{MemberAction, RoomEvent, StoredEvent};
pub use server::{ResumeReason, ServerFrame, UnsubscribeReason, encode};
pub use types::{Attachment, Role, RoomId, Seq, Status, User, UserId, UserRef};

#[cfg(test)]
mod doc_tests;
