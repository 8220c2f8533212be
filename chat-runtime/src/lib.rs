//! Chorus chat runtime: a tenant's real-time chat over WebSocket and HTTP on
//! PostgreSQL.
//!
//! The pipeline reads top to bottom: [`config`] -> [`store`] (sqlx,
//! migrations) -> [`hub`] (fan-out across replicas, presence, the per-socket
//! queues) -> [`chat`] (every write: validate, store, publish once) -> the
//! two surfaces, [`ws`] (sessions) and [`http`] (REST), both thin adapters
//! over [`chat`] -> [`web`] (the static client). [`protocol`] holds the wire
//! types every layer shares; [`committer`] groups sends into per-room
//! transactions; [`state`] is what handlers share, [`app`] wires the routers
//! and [`server`] starts and drains them. docs/architecture-runtime.md has
//! the module map and the rules that keep it acyclic.

#![deny(missing_docs)]

pub mod app;
pub mod auth;
pub mod authlimit;
pub mod chat;
pub mod committer;
pub mod config;
pub mod error;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod web;
pub mod ws;
