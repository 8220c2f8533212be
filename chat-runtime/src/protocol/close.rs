//! WebSocket close codes (docs/protocol.md, "Close codes").

/// Reconnect and resume: drain, queue overflow, missed pings, a gap that
/// could not be read, or a changed database history.
pub const RECONNECT: u16 = 4000;
/// The connection's token expired (at its `exp`): log in again, then
/// reconnect.
pub const UNAUTHORIZED: u16 = 4001;
/// A frame above the frame limit (the standard "message too big").
pub const TOO_LARGE: u16 = 1009;

/// Every close code the server sends, for the doc check.
pub const ALL: [u16; 3] = [RECONNECT, UNAUTHORIZED, TOO_LARGE];
