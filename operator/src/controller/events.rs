//! Every Kubernetes Event the controller publishes, with its type, reason and
//! text, in one place so the texts are read and reviewed together. Pure:
//! [`super::Context::publish`] sends them. Each text says what happened and,
//! for warnings, what to do.

use kube::runtime::events::EventType;

use crate::{
    crd::ChatTenantStatus,
    rollout::{Phase, Plan},
    status,
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
        /// Database (and owner role) name.
        role: String,
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
    /// A release was promoted.
    Promoted {
        /// Image now stable.
        image: String,
        /// Its slot.
        slot: &'static str,
        /// The slot that drains.
        draining: &'static str,
        /// Until when, or `now`.
        until: String,
    },
    /// A release was aborted.
    Aborted {
        /// The aborted image.
        candidate: String,
        /// The stable image.
        stable: String,
    },
    /// A release started.
    ReleaseStarted {
        /// The candidate image.
        candidate: String,
        /// Its revision.
        revision: String,
        /// Its slot.
        slot: &'static str,
    },
    /// Deletion with `reclaimPolicy: Retain`.
    DatabaseRetained {
        /// Database and role name.
        database: String,
    },
    /// Deletion with `reclaimPolicy: Delete` found a name not this tenant's.
    DatabaseLeftAlone {
        /// Why nothing was dropped.
        why: String,
    },
    /// Deletion dropped the database and role.
    DatabaseDropped {
        /// Database and role name.
        database: String,
    },
    /// Deletion waits for the database server (`message` is also the
    /// condition's).
    DeletionBlocked {
        /// Text.
        message: String,
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
            | Event::DatabaseLeftAlone { .. }
            | Event::DeletionBlocked { .. } => EventType::Warning,
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
            Event::DatabaseRetained { .. } => "DatabaseRetained",
            Event::DatabaseLeftAlone { .. } => "DatabaseLeftAlone",
            Event::DatabaseDropped { .. } => "DatabaseDropped",
            Event::DeletionBlocked { .. } => "DeletionBlocked",
        }
    }

    /// The text (the publisher cuts it to 1000 bytes).
    pub fn note(&self) -> String {
        match self {
            Event::Suspended { message }
            | Event::InvalidSpec { message }
            | Event::PasswordMismatch { message }
            | Event::DeletionBlocked { message } => message.clone(),
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
            Event::DatabaseCreated { role } => {
                format!("created database {role} owned by {role}; PUBLIC revoked")
            }
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
                image,
                slot,
                draining,
                until,
            } => format!(
                "{image} is now stable in slot {slot}; slot {draining} drains until {until}"
            ),
            Event::Aborted { candidate, stable } => {
                format!("candidate {candidate} aborted; all traffic on {stable}")
            }
            Event::ReleaseStarted {
                candidate,
                revision,
                slot,
            } => format!("candidate {candidate} (revision {revision}) runs in slot {slot}"),
            Event::DatabaseRetained { database } => {
                format!("reclaimPolicy Retain: database and role {database} are kept")
            }
            Event::DatabaseLeftAlone { why } => {
                format!("reclaimPolicy Delete: dropped nothing: {why}")
            }
            Event::DatabaseDropped { database } => format!(
                "reclaimPolicy Delete: terminated sessions, dropped database and role {database}"
            ),
        }
    }
}

/// The release events of one reconcile: a cut-over, a new abort, a new
/// candidate. Pure: compares the plan with the last status.
pub fn rollout_events(old: Option<&ChatTenantStatus>, plan: &Plan) -> Vec<Event> {
    let mut events = Vec::new();
    if plan.cut_over {
        events.push(Event::Promoted {
            image: plan.stable.image.clone(),
            slot: plan.stable.slot.as_str(),
            draining: plan.other.slot.as_str(),
            until: plan.draining_until.clone().unwrap_or_else(|| "now".into()),
        });
    }
    let was_aborted = old
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::types::PROGRESSING)
        })
        .is_some_and(|c| c.reason == "Aborted");
    if plan.phase == Phase::Aborted && !was_aborted {
        events.push(Event::Aborted {
            candidate: plan.other.image.clone(),
            stable: plan.stable.image.clone(),
        });
    }
    let old_candidate = old.and_then(|s| s.candidate.as_ref());
    if matches!(plan.phase, Phase::Canary | Phase::Preview)
        && old_candidate.is_none_or(|c| Some(&c.revision) != plan.candidate_revision.as_ref())
    {
        events.push(Event::ReleaseStarted {
            candidate: plan.other.image.clone(),
            revision: plan.candidate_revision.clone().unwrap_or_default(),
            slot: plan.other.slot.as_str(),
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
        crd::{Candidate, ChatTenantStatus, SlotStatus},
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
            });
        });
        let events = rollout_events(None, &plan);
        assert!(
            matches!(&events[..], [Event::ReleaseStarted { slot: "green", .. }]),
            "{events:?}"
        );
        let old = ChatTenantStatus {
            candidate: Some(SlotStatus {
                revision: plan.candidate_revision.clone().unwrap_or_default(),
                image: plan.other.image.clone(),
                slot: "green".into(),
                replicas: 1,
                available_replicas: 0,
            }),
            ..ChatTenantStatus::default()
        };
        assert_eq!(rollout_events(Some(&old), &plan), []);
    }

    #[test]
    fn truncates_on_a_char_boundary() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
