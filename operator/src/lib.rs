//! Chorus operator: reconciles `ChatTenant` resources into per-tenant databases,
//! chat-runtime Deployments and the objects around them.
//!
//! The reconcile pipeline reads top to bottom:
//! [`crd`] (types) -> [`validate`] (pure, gives a [`model::Tenant`]) ->
//! [`rollout`] (pure plan of the two slots; [`analysis`] judges a
//! release from the runtime's metrics) -> [`build`] (pure, one file per
//! child kind) -> [`apply`] (server-side apply, orphan deletion) ->
//! [`status`] (conditions). [`children`] is the one list of child kinds that
//! apply, prune and the watches follow; [`names`] holds the names, labels and
//! Secret keys every step shares. [`database`] provisions the tenant's
//! PostgreSQL database and role; [`controller`] drives the steps from
//! kube-runtime; [`runner`] adds leader election and the HTTP endpoints.
//! docs/architecture-operator.md describes the whole and its invariants.

#![deny(missing_docs)]

pub mod analysis;
pub mod apply;
pub mod build;
pub mod cache;
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
pub mod tenant_metrics;
pub mod validate;

#[cfg(test)]
mod fixtures;
