//! Status: conditions computed from what the reconcile observed (pure), and
//! the one place that writes `.status` (only when it changed, so an idle
//! resync writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    crd::{ChatTenant, ChatTenantStatus, DatabaseStatus, SlotStatus, TrafficStatus},
    model::Tenant,
    names::{FIELD_MANAGER, db_secret_name, selector_string, slot_selector, tenant_selector},
    rollout::{self, Phase, Plan},
};

/// Condition types, in the order `kubectl describe` shows them.
pub mod types {
    /// Summary: the tenant serves chat.
    pub const READY: &str = "Ready";
    /// Role, database and Secret are in place and agree.
    pub const DATABASE_READY: &str = "DatabaseReady";
    /// The stable slot has its pods available.
    pub const AVAILABLE: &str = "Available";
    /// Something is changing (pods rolling, a release in flight).
    pub const PROGRESSING: &str = "Progressing";
    /// A release waits for `promoteRevision`.
    pub const AWAITING_PROMOTION: &str = "AwaitingPromotion";
    /// Something needs the admin's attention.
    pub const DEGRADED: &str = "Degraded";
    /// `spec.suspend` is true.
    pub const SUSPENDED: &str = "Suspended";
}

/// The database as this reconcile found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseState {
    /// Provisioned and the Secret's password works.
    Ready,
    /// Not ready; `reason` is a CamelCase condition reason.
    NotReady {
        /// Condition reason.
        reason: &'static str,
        /// What happened and what to do.
        message: String,
    },
}

/// A problem that makes the tenant Degraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason.
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
}

/// What one Deployment reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeploymentObservation {
    /// `status.availableReplicas`.
    pub available: i32,
    /// The controller has not caught up with the spec yet, or pods of an
    /// older template still run.
    pub rolling: bool,
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Observations {
    /// Database state.
    pub database: DatabaseState,
    /// Stable slot Deployment.
    pub stable: DeploymentObservation,
    /// Other slot Deployment.
    pub other: DeploymentObservation,
    /// Degraded causes.
    pub problems: Vec<Problem>,
    /// When the password last changed.
    pub password_changed_at: Option<String>,
    /// The rotation request last acted on.
    pub rotation_request_handled: Option<String>,
}

/// Sets condition `type_` in `conditions`, keeping `lastTransitionTime` when
/// the status value does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: i64,
    now: &Time,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: Some(generation),
            last_transition_time: now.clone(),
        }),
    }
}

/// The full status after a normal reconcile. Pure.
pub fn compute(
    old: Option<&ChatTenantStatus>,
    t: &Tenant,
    plan: &Plan,
    obs: &Observations,
    now: &Time,
) -> ChatTenantStatus {
    let g = t.generation;
    let mut s = old.cloned().unwrap_or_default();
    s.observed_generation = Some(g);
    let mut c = std::mem::take(&mut s.conditions);

    let db_ready = obs.database == DatabaseState::Ready;
    match &obs.database {
        DatabaseState::Ready => set_condition(
            &mut c,
            types::DATABASE_READY,
            true,
            "Provisioned",
            match t.database.schema() {
                None => format!(
                    "database {} and role {} are provisioned; credentials in Secret {}",
                    t.database.name,
                    t.database.name,
                    db_secret_name(t)
                ),
                Some(schema) => format!(
                    "schema {schema} in the shared database {}, and role {}, are provisioned; credentials in Secret {}",
                    t.database.database(),
                    t.database.name,
                    db_secret_name(t)
                ),
            },
            g,
            now,
        ),
        DatabaseState::NotReady { reason, message } => set_condition(
            &mut c,
            types::DATABASE_READY,
            false,
            reason,
            message,
            g,
            now,
        ),
    }

    let want = plan.stable.replicas;
    let available = obs.stable.available;
    let is_available = if want == 0 {
        false
    } else {
        available >= (want - t.spec.disruption.max_unavailable).max(1)
    };
    let (reason, message) = if want == 0 {
        (
            "ScaledToZero",
            "spec.runtime.replicas is 0: no pod serves chat".to_string(),
        )
    } else if is_available {
        (
            "MinimumReplicasAvailable",
            format!(
                "{available}/{want} pods of slot {} are available",
                plan.stable.slot.as_str()
            ),
        )
    } else {
        (
            "MinimumReplicasUnavailable",
            format!(
                "{available}/{want} pods of slot {} are available; check `kubectl describe deployment {}-{}`",
                plan.stable.slot.as_str(),
                t.name,
                plan.stable.slot.as_str()
            ),
        )
    };
    set_condition(
        &mut c,
        types::AVAILABLE,
        is_available,
        reason,
        message,
        g,
        now,
    );

    let rolling = obs.stable.rolling || obs.other.rolling;
    let revision = plan.candidate_revision().unwrap_or_default().to_string();
    let release = plan.release.as_ref();
    let number = release.map_or(0, |r| r.number);
    let step = release
        .and_then(|r| r.step.as_deref())
        .map(|s| format!(", step {s}"))
        .unwrap_or_default();
    let pause = release
        .and_then(|r| r.pause_until.as_deref())
        .map(|u| format!(", paused until {u}"))
        .unwrap_or_default();
    let (progressing, reason, message) = match plan.phase {
        Phase::Canary => (
            true,
            "CanaryInProgress",
            format!(
                "release {number}: candidate {} at {}% of traffic ({}){step}{pause}; {}",
                plan.other.image,
                plan.canary_weight,
                plan.provider.as_str(),
                if plan.awaiting_promotion {
                    format!("promote with spec.rollout.promoteRevision: {revision}")
                } else {
                    format!("abort with spec.rollout.abortRevision: {revision}")
                }
            ),
        ),
        Phase::Preview => (
            true,
            "PreviewInProgress",
            format!(
                "release {number}: candidate {} runs behind Service {}-preview; promote with spec.rollout.promoteRevision: {revision}",
                plan.other.image, t.name,
            ),
        ),
        Phase::Promoting => (
            true,
            "Promoting",
            format!(
                "release {number}: scaling candidate to {} pods before the cut-over ({} available)",
                plan.other.replicas, obs.other.available
            ),
        ),
        Phase::Promoted => (
            false,
            "Promoted",
            format!(
                "release {number}: {} is stable in slot {}{}; set spec.runtime.image to it and remove spec.rollout.candidate",
                plan.stable.image,
                plan.stable.slot.as_str(),
                plan.draining
                    .as_ref()
                    .map(|d| format!(
                        "; slot {} drains until {} (abortRevision {revision} rolls back until then)",
                        d.slot, d.until
                    ))
                    .unwrap_or_default()
            ),
        ),
        Phase::Aborted => {
            let why = release.and_then(|r| r.reason.as_deref());
            let reason = match why {
                Some(rollout::CANDIDATE_UNHEALTHY) => rollout::CANDIDATE_UNHEALTHY,
                Some(rollout::ROLLED_BACK) => rollout::ROLLED_BACK,
                Some(rollout::ANALYSIS_FAILED) => rollout::ANALYSIS_FAILED,
                _ => "Aborted",
            };
            (
                false,
                reason,
                format!(
                    "release {number}: {}; all traffic is on {}; start another release by changing or re-adding spec.rollout.candidate",
                    release
                        .and_then(|r| r.message.clone())
                        .unwrap_or_else(|| format!("candidate {} was aborted and scaled to zero", plan.other.image)),
                    plan.stable.image
                ),
            )
        }
        Phase::Idle if rolling => (true, "RollingUpdate", "pods are being replaced".to_string()),
        Phase::Idle => (false, "Complete", "all objects match the spec".to_string()),
    };
    set_condition(
        &mut c,
        types::PROGRESSING,
        progressing,
        reason,
        message,
        g,
        now,
    );

    let awaiting = plan.awaiting_promotion;
    set_condition(
        &mut c,
        types::AWAITING_PROMOTION,
        awaiting,
        if awaiting {
            "WaitingForPromoteRevision"
        } else {
            "NoReleaseWaiting"
        },
        if awaiting {
            format!("set spec.rollout.promoteRevision (or abortRevision) to {revision}")
        } else {
            "no release is waiting for promotion".to_string()
        },
        g,
        now,
    );

    match obs.problems.first() {
        Some(p) => {
            let message = obs
                .problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            set_condition(&mut c, types::DEGRADED, true, p.reason, message, g, now)
        }
        None => set_condition(
            &mut c,
            types::DEGRADED,
            false,
            "AsExpected",
            "no problems",
            g,
            now,
        ),
    }
    set_condition(
        &mut c,
        types::SUSPENDED,
        false,
        "Reconciling",
        "the operator reconciles this tenant",
        g,
        now,
    );

    let ready = db_ready && is_available && obs.problems.is_empty();
    let (reason, message) = if ready {
        ("TenantReady", "the tenant serves chat".to_string())
    } else if !db_ready {
        (
            "DatabaseNotReady",
            "see condition DatabaseReady".to_string(),
        )
    } else if !is_available {
        ("PodsUnavailable", "see condition Available".to_string())
    } else {
        ("Degraded", "see condition Degraded".to_string())
    };
    set_condition(&mut c, types::READY, ready, reason, message, g, now);
    c.sort_by_key(|c| condition_order(&c.type_));
    s.conditions = c;

    s.endpoint = Some(endpoint(t));
    s.replicas = Some(if plan.serve_both_slots {
        plan.stable.replicas + plan.other.replicas
    } else {
        plan.stable.replicas
    });
    s.selector = Some(selector_string(&if plan.serve_both_slots {
        tenant_selector(t)
    } else {
        slot_selector(t, plan.stable.slot)
    }));
    s.stable = Some(SlotStatus {
        revision: plan.stable.revision.clone(),
        image: plan.stable.image.clone(),
        slot: plan.stable.slot.as_str().to_string(),
        replicas: plan.stable.replicas,
        available_replicas: obs.stable.available,
    });
    s.candidate = match plan.phase {
        Phase::Canary | Phase::Preview | Phase::Promoting | Phase::Aborted => Some(SlotStatus {
            revision: revision.clone(),
            image: plan.other.image.clone(),
            slot: plan.other.slot.as_str().to_string(),
            replicas: plan.other.replicas,
            available_replicas: obs.other.available,
        }),
        Phase::Idle | Phase::Promoted => None,
    };
    s.draining = plan.draining.clone();
    s.release = plan.release.clone();
    s.analysis = plan.analysis.clone();
    s.traffic = Some(TrafficStatus {
        canary_weight: plan.canary_weight,
        stable_weight: 100 - plan.canary_weight,
        provider: if plan.phase == Phase::Idle {
            "None".to_string()
        } else {
            plan.provider.as_str().to_string()
        },
    });
    s.database = Some(DatabaseStatus {
        name: t.database.database().to_string(),
        role: t.database.name.to_string(),
        schema: t.database.schema().map(ToString::to_string),
        secret_name: db_secret_name(t),
        password_changed_at: obs.password_changed_at.clone(),
        rotation_request_handled: obs.rotation_request_handled.clone(),
    });
    s
}

/// Status for a tenant the operator does not reconcile right now: an invalid
/// spec (`Degraded`) or `spec.suspend` (`Suspended`). Other fields are kept.
pub fn compute_blocked(
    old: Option<&ChatTenantStatus>,
    generation: i64,
    suspended: Option<&str>,
    invalid: Option<&str>,
    now: &Time,
) -> ChatTenantStatus {
    let mut s = old.cloned().unwrap_or_default();
    s.observed_generation = Some(generation);
    let mut c = std::mem::take(&mut s.conditions);
    if let Some(msg) = suspended {
        set_condition(
            &mut c,
            types::SUSPENDED,
            true,
            "SuspendedBySpec",
            msg,
            generation,
            now,
        );
    }
    if let Some(msg) = invalid {
        set_condition(
            &mut c,
            types::DEGRADED,
            true,
            "InvalidSpec",
            msg,
            generation,
            now,
        );
        set_condition(
            &mut c,
            types::READY,
            false,
            "InvalidSpec",
            "see condition Degraded",
            generation,
            now,
        );
    }
    c.sort_by_key(|c| condition_order(&c.type_));
    s.conditions = c;
    s
}

fn condition_order(t: &str) -> usize {
    [
        types::READY,
        types::DATABASE_READY,
        types::AVAILABLE,
        types::PROGRESSING,
        types::AWAITING_PROMOTION,
        types::DEGRADED,
        types::SUSPENDED,
    ]
    .iter()
    .position(|x| *x == t)
    .unwrap_or(usize::MAX)
}

/// `https://<host>` with TLS, `http://<host>` without, or the in-cluster
/// Service URL when the tenant is not exposed.
pub fn endpoint(t: &Tenant) -> String {
    match &t.spec.exposure {
        Some(e) if e.tls.is_some() => format!("https://{}", e.host),
        Some(e) => format!("http://{}", e.host),
        None => format!("http://{}.{}.svc:8080", t.name, t.namespace),
    }
}

/// Writes `.status` with server-side apply unless it is unchanged.
/// Returns whether a write happened.
pub async fn write(
    api: &Api<ChatTenant>,
    name: &str,
    old: Option<&ChatTenantStatus>,
    new: &ChatTenantStatus,
) -> Result<bool, kube::Error> {
    if old == Some(new) {
        return Ok(false);
    }
    let patch = json!({
        "apiVersion": "chorus.dev/v1alpha1",
        "kind": "ChatTenant",
        "status": new,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    fn obs(available: i32) -> Observations {
        Observations {
            database: DatabaseState::Ready,
            stable: DeploymentObservation {
                available,
                rolling: false,
            },
            other: DeploymentObservation::default(),
            problems: vec![],
            password_changed_at: Some("2026-11-24T10:00:00Z".into()),
            rotation_request_handled: None,
        }
    }

    fn cond<'a>(s: &'a ChatTenantStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn healthy_tenant_is_ready() {
        let (t, plan) = tenant_and_plan(|_| {});
        let s = compute(None, &t, &plan, &obs(2), &now());
        assert_eq!(cond(&s, "Ready").status, "True");
        assert_eq!(cond(&s, "DatabaseReady").status, "True");
        assert_eq!(cond(&s, "Available").status, "True");
        assert_eq!(cond(&s, "Progressing").status, "False");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.endpoint.as_deref(), Some("http://acme.tenants.svc:8080"));
        assert_eq!(s.replicas, Some(2));
        assert_eq!(
            s.selector.as_deref(),
            Some("chorus.dev/slot=blue,chorus.dev/tenant=acme")
        );
        assert_eq!(s.stable.as_ref().unwrap().slot, "blue");
        assert_eq!(s.conditions[0].type_, "Ready");
    }

    #[test]
    fn unavailable_pods_and_database_problems_say_what_to_do() {
        let (t, plan) = tenant_and_plan(|_| {});
        let s = compute(None, &t, &plan, &obs(0), &now());
        assert_eq!(cond(&s, "Ready").reason, "PodsUnavailable");
        assert!(
            cond(&s, "Available")
                .message
                .contains("kubectl describe deployment acme-blue")
        );

        let mut o = obs(2);
        o.database = DatabaseState::NotReady {
            reason: "PasswordMismatch",
            message: "rotate".into(),
        };
        let s = compute(None, &t, &plan, &o, &now());
        assert_eq!(cond(&s, "Ready").reason, "DatabaseNotReady");
        assert_eq!(cond(&s, "DatabaseReady").reason, "PasswordMismatch");
    }

    #[test]
    fn unchanged_inputs_give_an_identical_status() {
        let (t, plan) = tenant_and_plan(|_| {});
        let first = compute(None, &t, &plan, &obs(2), &now());
        let later = Time(jiff::Timestamp::from_second(1_800_000_900).unwrap());
        let second = compute(Some(&first), &t, &plan, &obs(2), &later);
        assert_eq!(first, second, "an idle resync must not change status");
        let third = compute(Some(&first), &t, &plan, &obs(0), &later);
        assert_eq!(cond(&third, "Available").last_transition_time, later);
    }

    #[test]
    fn blocked_tenants_say_why() {
        let s = compute_blocked(None, 4, Some("spec.suspend is true"), None, &now());
        assert_eq!(cond(&s, "Suspended").status, "True");
        let s = compute_blocked(None, 4, None, Some("spec.database.name: bad"), &now());
        assert_eq!(cond(&s, "Degraded").reason, "InvalidSpec");
        assert_eq!(cond(&s, "Ready").status, "False");
    }
}
