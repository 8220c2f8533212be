//! Chorus chat runtime: a tenant's real-time chat over WebSocket and HTTP on
//! PostgreSQL.
//!
//! The pipeline reads top to bottom: [`config`] -> [`store`] (sqlx,
//! migrations) -> [`hub`] (fan-out across replicas, presence) -> [`ws`]
//! (protocol, sessions) and [`http`] (REST) -> [`web`] (the static client);
//! [`committer`] groups sends into per-room transactions; [`app`] wires the
//! routers and [`server`] starts and drains them.

pub mod app;
pub mod auth;
pub mod committer;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod ws;
