//! The reconcile driver. It only sequences the steps; each step is a module:
//!
//! 1. [`dereference`]: read the ChatTenant fresh, the server Secret, both
//!    slots' Deployments and whether the Gateway API is served;
//! 2. `validate` (pure, [`crate::validate`]): an invalid spec or
//!    `spec.suspend` stops here with a status that says why;
//! 3. [`database`]: role, database and `<name>-db`;
//! 4. [`auth`]: the key the pods authenticate with;
//! 5. [`analysis`]: scrape the release's pods and judge an interval;
//!    plan, build, apply (pure [`crate::rollout`] and [`crate::build`], then
//!    [`crate::apply`] over the one list of kinds in [`crate::children`]);
//! 6. status ([`crate::status`], written only when it changed) and
//!    [`events`].
//!
//! A failing step does not stop the later ones: the status reports every
//! problem, and the first error makes the reconcile retry with backoff.
//! Deletion runs [`cleanup`] under the finalizer. [`watches`] says what
//! starts a reconcile; [`context`] holds what reconciles share.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, ResourceExt,
    runtime::{
        controller::Action,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use tracing::Instrument;

mod admission;
mod analysis;
mod auth;
mod backup;
mod cleanup;
mod context;
mod database;
mod dereference;
pub mod events;
mod referenced;
mod server_secrets;
mod verified;
mod watches;

pub use context::{Context, DEFAULT_CONCURRENCY, Settings};
pub use dereference::ServerSecretError;
pub use watches::run;

use self::{auth::Auth, database::DatabaseOutcome, events::Event};
use crate::{
    apply::apply_children,
    build::{Inputs, build_children},
    crd::ChatTenant,
    error::{Error, Result},
    rollout::{self, Phase, Plan},
    status::{self, Observations, Problem},
    telemetry::TRACE_TARGET,
    validate::{InvalidSpec, validate},
};

/// Finalizer that applies `spec.database.reclaimPolicy` on deletion.
pub const FINALIZER: &str = "chorus.dev/cleanup";

/// Status message (and Event) of a suspended tenant.
const SUSPENDED: &str =
    "spec.suspend is true: the operator changes nothing for this tenant until it is set to false";

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Reconciles one ChatTenant once one of the slots is free
/// ([`admission`]). The reconcile itself is boxed, so a reconcile that
/// waits holds only its tenant and a place in the queue.
pub async fn reconcile(ct: Arc<ChatTenant>, ctx: Arc<Context>) -> Result<Action> {
    let _permit = ctx.admission.admit(&ct).await;
    Box::pin(reconcile_now(ct, ctx)).await
}

async fn reconcile_now(ct: Arc<ChatTenant>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    ctx.reconcile_count.fetch_add(1, Ordering::Relaxed);
    let ns = ct.namespace().unwrap_or_default();
    let api: Api<ChatTenant> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!(
        "reconcile",
        tenant = %ct.name_any(),
        namespace = %ns,
        otel.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    let result = finalizer(&api, FINALIZER, ct, |event| async {
        match event {
            Finalizer::Apply(ct) => apply_spec(&ct, &ctx, &api).await,
            Finalizer::Cleanup(ct) => {
                ctx.metrics.tenants.forget(&ns, &ct.name_any());
                ctx.verified.forget(&ct);
                cleanup::cleanup(ct, &ctx, &api).await
            }
        }
    })
    .instrument(span.clone())
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if let Err(e) = &result
        && chorus_telemetry::enabled()
    {
        span.record("otel.status_code", "error");
        span.record("error", tracing::field::display(e));
    }
    result
}

/// A reconcile step's span (trace-only: log lines keep the reconcile's),
/// named after the step: `database`, `auth`, `observe`, `analysis`,
/// `rollout`, `apply`, `backup`, `status`.
fn step(name: &'static str) -> tracing::Span {
    tracing::info_span!(target: TRACE_TARGET, "step", otel.name = name)
}

/// Requeues failures with exponential backoff and counts them by reason.
pub fn error_policy(ct: Arc<ChatTenant>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failed(err.metric_label());
    let delay = ctx.record_failure(&ct);
    tracing::warn!(tenant = %ct.name_any(), namespace = ?ct.namespace(), error = %err, reason = err.metric_label(), retry_in_s = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// Brings the cluster and the database to what the spec asks for.
async fn apply_spec(cached: &ChatTenant, ctx: &Context, api: &Api<ChatTenant>) -> Result<Action> {
    let Some(ct) = dereference::fresh_tenant(api, cached).await? else {
        return Ok(Action::await_change());
    };
    let now = now();
    let old = ct.status.as_deref();
    if ct.spec.suspend {
        return suspended(ctx, api, &ct, &now).await;
    }
    let t = match validate(&ct) {
        Ok(t) => t,
        Err(invalid) => return invalid_spec(ctx, api, &ct, invalid, &now).await,
    };
    let mut problems: Vec<Problem> = Vec::new();
    let mut first_error: Option<Error> = None;

    // 1. Database: server Secret, role, database, connection Secret.
    let (db, (db_host, db_port)) = async {
        match dereference::load_server(ctx, &t).await {
            Ok(server) => {
                ctx.metrics
                    .tenants
                    .database_server(&t, format!("{}:{}", server.host, server.port));
                (
                    database::provision(ctx, &ct, &t, &server).await,
                    (server.host.clone(), server.port),
                )
            }
            Err(e) => (
                DatabaseOutcome::server_unusable(old, e),
                (String::new(), 5432),
            ),
        }
    }
    .instrument(step("database"))
    .await;
    let DatabaseOutcome {
        state: database,
        password_changed_at,
        rotation_request_handled,
        uri_hash,
        error,
    } = db;
    first_error = first_error.or(error);

    // 2. Authentication material.
    let auth_key_hash = match auth::ensure_auth(ctx, &ct, &t)
        .instrument(step("auth"))
        .await
    {
        Ok(Auth::Key(hash)) => Some(hash),
        Ok(Auth::NoKey) => None,
        Ok(Auth::Invalid(p)) => {
            problems.push(p);
            None
        }
        Err(e) => {
            first_error.get_or_insert(e);
            None
        }
    };

    // Values the pods read from Secrets and ConfigMaps at start-up.
    // `Err`: unreadable right now, the pods keep what they run with.
    let observe = step("observe");
    let env_refs_hash = dereference::env_refs_hash(ctx, &t)
        .instrument(observe.clone())
        .await;

    // 3. Gateway API presence.
    let gateway = dereference::gateway(ctx, &t)
        .instrument(observe.clone())
        .await;
    problems.extend(gateway.problem);

    // 4. Observe the slots, plan, build, apply.
    let slots = dereference::observe_deployments(ctx, &t)
        .instrument(observe)
        .await?;
    let env_refs_hash = match env_refs_hash {
        Ok(hash) => hash,
        Err(e) => {
            first_error.get_or_insert(e);
            slots.running_env_refs_hash.clone()
        }
    };
    // The release analysis: a judgement when an interval ended.
    let judgement = ctx
        .scrapes
        .judge(ctx, &t, old, jiff::Timestamp::now().as_second())
        .instrument(step("analysis"))
        .await;
    let rollout_span = tracing::info_span!(
        target: TRACE_TARGET,
        "step",
        otel.name = "rollout",
        phase = tracing::field::Empty
    );
    let plan = rollout_span.in_scope(|| {
        rollout::plan(
            &t,
            old,
            slots.detail(t.stable_slot.other()),
            gateway.use_routes,
            jiff::Timestamp::now().as_second(),
            judgement.as_ref(),
        )
    });
    rollout_span.record("phase", tracing::field::debug(&plan.phase));
    let inputs = Inputs {
        plan: &plan,
        database_host: &db_host,
        database_port: db_port,
        password_changed_at: password_changed_at.as_deref(),
        // A key that cannot be read right now keeps the pods as they are.
        auth_key_hash: auth_key_hash
            .as_deref()
            .or(slots.running_key_hash.as_deref()),
        // Likewise a URI that could not be written and confirmed now.
        database_uri_hash: uri_hash
            .as_deref()
            .or(slots.running_database_uri_hash.as_deref()),
        env_refs_hash: env_refs_hash.as_deref(),
    };
    let children = rollout_span.in_scope(|| build_children(&t, &inputs));
    drop(rollout_span);
    match apply_children(&ctx.client, &ctx.children, &t, &children, gateway.served)
        .instrument(step("apply"))
        .await
    {
        Ok(applied) => {
            for child in applied.deleted {
                ctx.publish(&ct, Event::ChildDeleted { child }).await;
            }
        }
        Err(e) => {
            problems.push(Problem {
                reason: "ApplyFailed",
                message: format!("{e}; the operator retries with backoff"),
            });
            first_error.get_or_insert(Error::Apply(e));
        }
    }

    // 5. Backups: the CronJob's finished Jobs.
    let backups = match backup::observe(ctx, &t).instrument(step("backup")).await {
        Ok(obs) => obs,
        Err(e) => {
            first_error.get_or_insert(e);
            None
        }
    };

    // 6. Status and events.
    let obs = Observations {
        database,
        stable: slots.get(plan.stable.slot),
        other: slots.get(plan.other.slot),
        problems,
        password_changed_at,
        rotation_request_handled,
    };
    let status_span = step("status");
    let mut new = status_span.in_scope(|| status::compute(old, &t, &plan, &obs, &now));
    if backups.is_some() || t.spec.backup.is_none() {
        backup::apply(&mut new, &t, backups.as_ref(), &now);
    }
    async {
        ctx.write_status(api, &ct, &new).await?;
        ctx.metrics.tenants.observe(&t, &new);
        let backup_events = backup::events(old, &new);
        for event in events::rollout_events(old, &plan)
            .into_iter()
            .chain(backup_events)
        {
            ctx.publish(&ct, event).await;
        }
        Ok::<_, Error>(())
    }
    .instrument(status_span)
    .await?;

    if let Some(e) = first_error {
        return Err(e);
    }
    ctx.clear_failures(&ct);
    let requeue = next_requeue(
        ctx.settings.resync,
        &plan,
        jiff::Timestamp::now().as_second(),
    );
    ctx.admission.resync_in(&ct, requeue, ctx.settings.resync);
    Ok(Action::requeue(requeue))
}

/// `spec.suspend`: only the status changes (and one Event when it starts).
async fn suspended(
    ctx: &Context,
    api: &Api<ChatTenant>,
    ct: &ChatTenant,
    now: &Time,
) -> Result<Action> {
    let old = ct.status.as_deref();
    let generation = ct.metadata.generation.unwrap_or(0);
    let new = status::compute_blocked(old, generation, Some(SUSPENDED), None, now);
    let was = old.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == status::types::SUSPENDED && c.status == "True")
    });
    ctx.write_status(api, ct, &new).await?;
    if !was {
        let event = Event::Suspended {
            message: SUSPENDED.into(),
        };
        ctx.publish(ct, event).await;
    }
    ctx.clear_failures(ct);
    Ok(Action::await_change())
}

/// An invalid spec: the status and an Event say what to fix; nothing else
/// happens until the spec changes.
async fn invalid_spec(
    ctx: &Context,
    api: &Api<ChatTenant>,
    ct: &ChatTenant,
    invalid: InvalidSpec,
    now: &Time,
) -> Result<Action> {
    let message = format!("{invalid}; fix the spec and re-apply");
    let generation = ct.metadata.generation.unwrap_or(0);
    let new = status::compute_blocked(ct.status.as_deref(), generation, None, Some(&message), now);
    ctx.write_status(api, ct, &new).await?;
    ctx.publish(ct, Event::InvalidSpec { message }).await;
    Ok(Action::await_change())
}

/// When to look again after a successful reconcile: the resync; sooner
/// while a release is in flight (every 5 s while promoting, every
/// [`rollout::POLL_SECONDS`] otherwise) and just after a pause, a drain or a
/// progress deadline ends. Pure.
fn next_requeue(resync: Duration, plan: &Plan, now: i64) -> Duration {
    let mut next = resync;
    if plan.phase == Phase::Promoting {
        next = next.min(Duration::from_secs(5));
    }
    if plan.poll {
        next = next.min(Duration::from_secs(rollout::POLL_SECONDS.unsigned_abs()));
    }
    if let Some(at) = plan.wake_at {
        let left = (at - now).clamp(0, i64::MAX).unsigned_abs();
        next = next.min(Duration::from_secs(left + 1));
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    #[test]
    fn an_idle_tenant_waits_for_the_resync_and_a_drain_for_its_end() {
        let (_, mut plan) = tenant_and_plan(|_| {});
        let resync = Duration::from_secs(300);
        assert_eq!(next_requeue(resync, &plan, 0), resync);
        plan.wake_at = Some(100);
        assert_eq!(next_requeue(resync, &plan, 40), Duration::from_secs(61));
        assert_eq!(next_requeue(resync, &plan, 500), Duration::from_secs(1));
        plan.phase = Phase::Promoting;
        plan.wake_at = None;
        assert_eq!(next_requeue(resync, &plan, 0), Duration::from_secs(5));
    }
}

#[cfg(test)]
mod requests;

#[cfg(test)]
mod traces;
