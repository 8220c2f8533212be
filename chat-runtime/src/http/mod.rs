//! REST (docs/protocol.md, "REST"): thin adapters that decode a request,
//! call the chat service ([`crate::chat::Chat`]) and encode the answer as
//! JSON; errors are `{"error": {"code", "message"}}` ([`crate::error`]).
//! Also the caller extractor ([`auth`]) and the admin listener's handlers
//! ([`admin`]).

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod client_ip;
pub mod extract;
pub mod messages;
pub mod rooms;
