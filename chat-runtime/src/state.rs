//! The state every handler shares ([`AppState`]), and the request size limit
//! derived from the configuration. Built once by the server at start-up; the
//! routers ([`crate::app`]), REST handlers ([`crate::http`]) and the
//! WebSocket layer ([`crate::ws`]) read it.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU32},
};

use crate::{
    auth::Authenticator, authlimit::AuthLimiter, chat::Chat, config::Config, hub::Hub,
    metrics::Metrics,
};

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Configuration.
    pub config: Arc<Config>,
    /// Every chat write and read (validation, storage, publishing).
    pub chat: Arc<Chat>,
    /// Fan-out, presence and storage (WebSocket sessions subscribe here).
    pub hub: Arc<Hub>,
    /// Token handling.
    pub auth: Arc<Authenticator>,
    /// Sign-up and login limits.
    pub auth_limiter: Arc<AuthLimiter>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set on SIGTERM: readiness fails, upgrades are refused.
    pub draining: Arc<AtomicBool>,
    /// Set once migrations ran and the listeners are up.
    pub started: Arc<AtomicBool>,
    /// WebSockets accepted and not yet closed.
    pub sockets: Arc<AtomicU32>,
}

impl AppState {
    /// Builds the state (the chat service gets its committer and rate
    /// limiter here).
    pub fn new(config: Config, hub: Arc<Hub>, auth: Authenticator, metrics: Arc<Metrics>) -> Self {
        let chat = Chat::new(hub.clone(), metrics.clone(), &config.limits);
        Self {
            auth_limiter: Arc::new(AuthLimiter::new(&config.auth_limits)),
            chat: Arc::new(chat),
            config: Arc::new(config),
            hub,
            auth: Arc::new(auth),
            metrics,
            draining: Arc::new(AtomicBool::new(false)),
            started: Arc::new(AtomicBool::new(false)),
            sockets: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Largest REST body and WebSocket frame (see [`request_limit`]).
    pub fn request_limit(&self) -> usize {
        request_limit(&self.config)
    }
}

/// Largest REST body and WebSocket frame: twice the message limit (JSON
/// escaping) plus 64 KiB for the other fields.
pub fn request_limit(config: &Config) -> usize {
    config.limits.max_message_bytes as usize * 2 + 64 * 1024
}
