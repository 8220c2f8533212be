//! Every Kubernetes Event the controller publishes, with its type, reason and
//! text, in one place so the texts are read and reviewed together. Pure:
//! [`super::Context::publish`] sends them. Each text says what happened and,
//! for warnings, what to do.

use kube::runtime::events::EventType;

use crate::{
    crd::{ChatTenantStatus, ReleaseState},
    rollout::{self, Phase, Plan},
};

/// One Event about a ChatTenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `spec.suspend` became true (`message` is also the condition's).
    Suspended {
        /// Text.
        message: String,
    },
    /// The spec does not validate (`message` is also the condition's).
    InvalidSpec {
        /// Text.
        message: String,
    },
    /// A child the spec no longer asks for was deleted.
    ChildDeleted {
        /// `Kind/name`.
        child: String,
    },
    /// The builtin JWT key was generated.
    AuthKeyCreated {
        /// Secret name.
        secret: String,
    },
    /// Provisioning failed: `reason` is `ServerUnreachable`, `NameInUse` or
    /// `ProvisioningFailed`.
    ProvisioningFailed {
        /// Event reason.
        reason: &'static str,
        /// The error.
        error: String,
    },
    /// The role was created.
    RoleCreated {
        /// Role name.
        role: String,
        /// Its connection limit.
        connection_limit: i32,
    },
    /// The database was created.
    DatabaseCreated {
        /// Database (and owner role) name; with Schema isolation the schema.
        role: String,
        /// The shared database holding the schema (Schema isolation).
        shared: Option<String>,
    },
    /// The connection Secret was written for the first time.
    SecretCreated {
        /// Secret name.
        secret: String,
    },
    /// The role existed without its Secret, so both got a new password.
    PasswordReset {
        /// Role name.
        role: String,
        /// Secret name.
        secret: String,
    },
    /// A rotation request was carried out.
    PasswordRotated {
        /// Role name.
        role: String,
        /// `spec.database.passwordRotation.requestedAt`.
        request: String,
    },
    /// DDL repaired drift of an existing role or database.
    DatabaseRepaired {
        /// The (redacted) statements.
        statements: Vec<String>,
    },
    /// The Secret's password does not log in (`message` is also the
    /// condition's).
    PasswordMismatch {
        /// Text.
        message: String,
    },
    /// A release was promoted (the cut-over happened).
    Promoted {
        /// Release number.
        number: i64,
        /// Image now stable.
        image: String,
        /// Its slot.
        slot: &'static str,
        /// The slot that drains.
        draining: &'static str,
        /// Until when, or `now`.
        until: String,
    },
    /// A release was aborted by `abortRevision`.
    Aborted {
        /// Release number.
        number: i64,
        /// What happened.
        message: String,
    },
    /// A release aborted by itself: its candidate did not come up.
    CandidateUnhealthy {
        /// Release number.
        number: i64,
        /// The pods and the cause.
        message: String,
    },
    /// A release aborted (or, after the cut-over, rolled back) by itself:
    /// its analysis failed `failureLimit` intervals in a row.
    AnalysisFailed {
        /// Release number.
        number: i64,
        /// The figures and thresholds.
        message: String,
    },
    /// A promoted release was rolled back within the drain window.
    RolledBack {
        /// Release number.
        number: i64,
        /// What happened.
        message: String,
    },
    /// A release started.
    ReleaseStarted {
        /// Release number.
        number: i64,
        /// The candidate image.
        candidate: String,
        /// Its revision.
        revision: String,
        /// Its slot.
        slot: &'static str,
        /// The open release it replaces, if any.
        supersedes: Option<i64>,
    },
    /// A canary step began.
    CanaryStep {
        /// Release number.
        number: i64,
        /// `2/4` or `done`.
        step: String,
        /// Traffic weight now.
        weight: i32,
    },
    /// Deletion with `reclaimPolicy: Retain`.
    DatabaseRetained {
        /// Database and role name; with Schema isolation the schema.
        database: String,
        /// The shared database holding the schema (Schema isolation).
        shared: Option<String>,
    },
    /// Deletion with `reclaimPolicy: Delete` found a name not this tenant's.
    DatabaseLeftAlone {
        /// Why nothing was dropped.
        why: String,
    },
    /// Deletion dropped the database and role.
    DatabaseDropped {
        /// Database and role name; with Schema isolation the schema.
        database: String,
        /// The shared database that held the schema (Schema isolation).
        shared: Option<String>,
    },
    /// Deletion waits for the database server (`message` is also the
    /// condition's).
    DeletionBlocked {
        /// Text.
        message: String,
    },
    /// A backup Job completed (`message` is also `status.backup.message`).
    BackupSucceeded {
        /// Text.
        message: String,
        /// Its completion time (one Event series per backup).
        at: String,
    },
    /// A backup Job failed or cannot run (`message` is also the
    /// `BackupHealthy` condition's).
    BackupFailed {
        /// Text.
        message: String,
        /// The failure time, or the condition's reason when no Job failed
        /// (one Event series per failure).
        cause: String,
    },
}

impl Event {
    /// `Normal` or `Warning`.
    pub fn type_(&self) -> EventType {
        match self {
            Event::InvalidSpec { .. }
            | Event::ProvisioningFailed { .. }
            | Event::PasswordReset { .. }
            | Event::PasswordMismatch { .. }
            | Event::Aborted { .. }
            | Event::CandidateUnhealthy { .. }
            | Event::AnalysisFailed { .. }
            | Event::RolledBack { .. }
            | Event::DatabaseLeftAlone { .. }
            | Event::DeletionBlocked { .. }
            | Event::BackupFailed { .. } => EventType::Warning,
            _ => EventType::Normal,
        }
    }

    /// The CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Event::Suspended { .. } => "Suspended",
            Event::InvalidSpec { .. } => "InvalidSpec",
            Event::ChildDeleted { .. } => "ChildDeleted",
            Event::AuthKeyCreated { .. } => "AuthKeyCreated",
            Event::ProvisioningFailed { reason, .. } => reason,
            Event::RoleCreated { .. } => "RoleCreated",
            Event::DatabaseCreated { .. } => "DatabaseCreated",
            Event::SecretCreated { .. } => "SecretCreated",
            Event::PasswordReset { .. } => "PasswordReset",
            Event::PasswordRotated { .. } => "PasswordRotated",
            Event::DatabaseRepaired { .. } => "DatabaseRepaired",
            Event::PasswordMismatch { .. } => "PasswordMismatch",
            Event::Promoted { .. } => "Promoted",
            Event::Aborted { .. } => "Aborted",
            Event::ReleaseStarted { .. } => "ReleaseStarted",
            Event::CandidateUnhealthy { .. } => "CandidateUnhealthy",
            Event::AnalysisFailed { .. } => "AnalysisFailed",
            Event::RolledBack { .. } => "RolledBack",
            Event::CanaryStep { .. } => "CanaryStep",
            Event::DatabaseRetained { .. } => "DatabaseRetained",
            Event::DatabaseLeftAlone { .. } => "DatabaseLeftAlone",
            Event::DatabaseDropped { .. } => "DatabaseDropped",
            Event::DeletionBlocked { .. } => "DeletionBlocked",
            Event::BackupSucceeded { .. } => "BackupSucceeded",
            Event::BackupFailed { .. } => "BackupFailed",
        }
    }

    /// The Event's action. The recorder folds Events with the same type,
    /// reason and action into one series (keeping the first text), so each
    /// release (and each of its steps) has its own action.
    pub fn action(&self) -> String {
        match self {
            Event::Promoted { number, .. }
            | Event::Aborted { number, .. }
            | Event::CandidateUnhealthy { number, .. }
            | Event::AnalysisFailed { number, .. }
            | Event::RolledBack { number, .. }
            | Event::ReleaseStarted { number, .. } => format!("Release{number}"),
            Event::CanaryStep { number, step, .. } => format!("Release{number}Step{step}"),
            Event::BackupSucceeded { at, .. } => format!("Backup{at}"),
            Event::BackupFailed { cause, .. } => format!("Backup{cause}"),
            _ => "Reconcile".into(),
        }
    }

    /// The text (the publisher cuts it to 1000 bytes).
    pub fn note(&self) -> String {
        match self {
            Event::Suspended { message }
            | Event::InvalidSpec { message }
            | Event::PasswordMismatch { message }
            | Event::DeletionBlocked { message }
            | Event::BackupSucceeded { message, .. }
            | Event::BackupFailed { message, .. } => message.clone(),
            Event::ChildDeleted { child } => {
                format!("deleted {child}: the spec no longer asks for it")
            }
            Event::AuthKeyCreated { secret } => {
                format!("generated the JWT signing key into Secret {secret}")
            }
            Event::ProvisioningFailed { error, .. } => error.clone(),
            Event::RoleCreated {
                role,
                connection_limit,
            } => format!(
                "created role {role} (LOGIN, no CREATEDB/CREATEROLE/SUPERUSER, connection limit {connection_limit})"
            ),
            Event::DatabaseCreated { role, shared: None } => {
                format!("created database {role} owned by {role}; PUBLIC revoked")
            }
            Event::DatabaseCreated {
                role,
                shared: Some(db),
            } => format!(
                "created schema {role} owned by {role} in the shared database {db}; no other tenant role may use it"
            ),
            Event::SecretCreated { secret } => {
                format!("wrote connection details to Secret {secret}")
            }
            Event::PasswordReset { role, secret } => {
                format!("role {role} existed without Secret {secret}: set a new password in both")
            }
            Event::PasswordRotated { role, request } => format!(
                "rotated the password of role {role} (request {request}); pods restart to pick it up"
            ),
            Event::DatabaseRepaired { statements } => {
                format!("repaired drift: {}", statements.join("; "))
            }
            Event::Promoted {
                number,
                image,
                slot,
                draining,
                until,
            } => format!(
                "release {number}: {image} is now stable in slot {slot}; slot {draining} drains until {until}"
            ),
            Event::Aborted { number, message }
            | Event::CandidateUnhealthy { number, message }
            | Event::AnalysisFailed { number, message }
            | Event::RolledBack { number, message } => format!("release {number}: {message}"),
            Event::ReleaseStarted {
                number,
                candidate,
                revision,
                slot,
                supersedes,
            } => format!(
                "release {number}: candidate {candidate} (revision {revision}) runs in slot {slot}{}",
                supersedes
                    .map(|n| format!("; it supersedes release {n}"))
                    .unwrap_or_default()
            ),
            Event::CanaryStep {
                number,
                step,
                weight,
            } => format!("release {number}: step {step}, candidate at {weight}% of traffic"),
            Event::DatabaseRetained {
                database,
                shared: None,
            } => format!("reclaimPolicy Retain: database and role {database} are kept"),
            Event::DatabaseRetained {
                database,
                shared: Some(db),
            } => format!(
                "reclaimPolicy Retain: schema {database} (in database {db}) and role {database} are kept"
            ),
            Event::DatabaseLeftAlone { why } => {
                format!("reclaimPolicy Delete: dropped nothing: {why}")
            }
            Event::DatabaseDropped {
                database,
                shared: None,
            } => format!(
                "reclaimPolicy Delete: terminated sessions, dropped database and role {database}"
            ),
            Event::DatabaseDropped {
                database,
                shared: Some(db),
            } => format!(
                "reclaimPolicy Delete: terminated sessions, dropped schema {database} (in database {db}) with its tables, then role {database}"
            ),
        }
    }
}

/// The release events of one reconcile: a new release, a step, a cut-over,
/// an abort. Pure: compares the release in the plan with the one in the
/// last status, so each happens once per release.
pub fn rollout_events(old: Option<&ChatTenantStatus>, plan: &Plan) -> Vec<Event> {
    let mut events = Vec::new();
    let Some(new) = plan.release.as_ref() else {
        return events;
    };
    let before = old
        .and_then(|s| s.release.as_ref())
        .filter(|o| o.number == new.number);
    if before.is_none() && new.closed_at.is_none() {
        let supersedes = old
            .and_then(|s| s.release.as_ref())
            .filter(|o| o.closed_at.is_none())
            .map(|o| o.number);
        events.push(Event::ReleaseStarted {
            number: new.number,
            candidate: new.image.clone(),
            revision: new.revision.clone(),
            slot: plan.other.slot.as_str(),
            supersedes,
        });
    }
    let state_changed = before.is_none_or(|o| o.state != new.state);
    if new.step.is_some()
        && before.is_none_or(|o| o.step != new.step)
        && matches!(plan.phase, Phase::Canary | Phase::Promoting)
    {
        events.push(Event::CanaryStep {
            number: new.number,
            step: new.step.clone().unwrap_or_default(),
            weight: plan.canary_weight,
        });
    }
    if state_changed && new.state == ReleaseState::Promoted && plan.cut_over {
        events.push(Event::Promoted {
            number: new.number,
            image: plan.stable.image.clone(),
            slot: plan.stable.slot.as_str(),
            draining: plan.other.slot.as_str(),
            until: plan
                .draining
                .as_ref()
                .map_or_else(|| "now".into(), |d| d.until.clone()),
        });
    }
    if state_changed && new.state == ReleaseState::Aborted {
        let number = new.number;
        let message = new.message.clone().unwrap_or_default();
        events.push(match new.reason.as_deref() {
            Some(rollout::CANDIDATE_UNHEALTHY) => Event::CandidateUnhealthy { number, message },
            Some(rollout::ANALYSIS_FAILED) => Event::AnalysisFailed { number, message },
            Some(rollout::ROLLED_BACK) => Event::RolledBack { number, message },
            _ => Event::Aborted { number, message },
        });
    }
    events
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        build::tests::tenant_and_plan,
        crd::{Candidate, ChatTenantStatus},
    };

    #[test]
    fn warnings_are_the_ones_that_need_someone() {
        let warning = |e: Event| e.type_() == EventType::Warning;
        assert!(warning(Event::PasswordMismatch {
            message: "m".into()
        }));
        assert!(warning(Event::ProvisioningFailed {
            reason: "NameInUse",
            error: "e".into()
        }));
        assert!(!warning(Event::RoleCreated {
            role: "r".into(),
            connection_limit: 5
        }));
        assert_eq!(
            Event::ProvisioningFailed {
                reason: "NameInUse",
                error: "e".into()
            }
            .reason(),
            "NameInUse"
        );
    }

    #[test]
    fn database_texts_name_the_objects() {
        assert_eq!(
            Event::RoleCreated {
                role: "chat_acme".into(),
                connection_limit: 50
            }
            .note(),
            "created role chat_acme (LOGIN, no CREATEDB/CREATEROLE/SUPERUSER, connection limit 50)"
        );
        assert_eq!(
            Event::PasswordReset {
                role: "chat_acme".into(),
                secret: "acme-db".into()
            }
            .note(),
            "role chat_acme existed without Secret acme-db: set a new password in both"
        );
        assert_eq!(
            Event::DatabaseRepaired {
                statements: vec!["A".into(), "B".into()]
            }
            .note(),
            "repaired drift: A; B"
        );
    }

    #[test]
    fn a_new_candidate_starts_a_release_once() {
        let (_, plan) = tenant_and_plan(|ct| {
            ct.spec.rollout.candidate = Some(Candidate {
                image: "ghcr.io/chorus-dev/chat-runtime:0.2.0".into(),
                attempt: None,
            });
        });
        let events = rollout_events(None, &plan);
        assert!(
            matches!(
                &events[..],
                [Event::ReleaseStarted {
                    slot: "green",
                    number: 1,
                    ..
                }]
            ),
            "{events:?}"
        );
        let old = ChatTenantStatus {
            release: plan.release.clone(),
            ..ChatTenantStatus::default()
        };
        assert_eq!(rollout_events(Some(&old), &plan), []);
    }

    #[test]
    fn each_release_has_its_own_event_key_and_text() {
        let started = |number| Event::ReleaseStarted {
            number,
            candidate: "img:0.2.0".into(),
            revision: format!("rev{number}"),
            slot: "green",
            supersedes: None,
        };
        assert_ne!(started(1).action(), started(2).action());
        assert_ne!(started(1).note(), started(2).note());
        assert!(started(2).note().starts_with("release 2: "));
        let step = |step: &str| Event::CanaryStep {
            number: 1,
            step: step.into(),
            weight: 25,
        };
        assert_ne!(step("1/2").action(), step("2/2").action());
        assert!(
            Event::CandidateUnhealthy {
                number: 3,
                message: "m".into()
            }
            .type_()
                == EventType::Warning
        );
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
