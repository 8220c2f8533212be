//! REST handlers (docs/protocol.md, "REST"): JSON in and out, errors as
//! `{"error": {"code", "message"}}`.

pub mod accounts;
pub mod extract;
pub mod messages;
pub mod rooms;
