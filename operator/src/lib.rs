//! Chorus operator: reconciles `ChatTenant` resources into per-tenant databases,
//! chat-runtime Deployments and the objects around them.
//!
//! The reconcile pipeline reads top to bottom:
//! [`crd`] (types) -> [`validate`] (pure) -> [`build`] (pure, one file per
//! child kind) -> [`apply`] (server-side apply, orphan deletion) ->
//! [`status`] (conditions). [`database`] provisions the tenant's PostgreSQL
//! database and role; [`controller`] wires the steps into kube-runtime.

pub mod apply;
pub mod build;
pub mod children;
pub mod controller;
pub mod crd;
pub mod database;
pub mod error;
pub mod metrics;
pub mod model;
pub mod names;
pub mod rollout;
pub mod runner;
pub mod status;
pub mod telemetry;
pub mod validate;
