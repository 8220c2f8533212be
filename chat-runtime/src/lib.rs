//! Chorus chat runtime: a tenant's real-time chat over WebSocket and HTTP.
