//! The WebSocket protocol (docs/protocol.md): frames, per-socket queues and
//! the session loop.

pub mod ack_order;
pub mod outbox;
pub mod protocol;
pub mod session;
pub mod throttle;
mod writer;
