//! Step 1 of a reconcile: the tenant's role, database and connection Secret
//! `<name>-db`.
//!
//! The Secret is the source of truth for the password: it is created once,
//! and a new password is only set when there is no Secret yet, or when
//! `spec.database.passwordRotation.requestedAt` names a request not handled
//! yet ([`Password::decide`], pure). Ordering keeps the password known
//! outside the server at every moment: a new Secret is written before the
//! role gets its password; a rotated password reaches the Secret only after
//! the role has it. A name that is not this tenant's gets no Secret. A
//! tenant verified a moment ago skips the catalog and the login
//! ([`super::verified`]).

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{Context, ServerSecretError, events::Event, verified};
use crate::{
    apply::{Observed, apply_one},
    build::secret::build_db_secret,
    crd::{ChatTenant, ChatTenantStatus},
    database::{
        DatabaseError, EnsureOutcome, Isolation, LoginCheck, PasswordAction, ServerConfig,
        generate_password,
    },
    error::Error,
    model::Tenant,
    names::{DB_SECRET_PASSWORD_KEY, db_secret_name, key_checksum, secret_value},
    rollout,
    status::{self, DatabaseState},
};

/// What the database step found and did.
pub(super) struct DatabaseOutcome {
    /// For the `DatabaseReady` condition.
    pub(super) state: DatabaseState,
    /// `status.database.passwordChangedAt` (also a pod annotation).
    pub(super) password_changed_at: Option<String>,
    /// `status.database.rotationRequestHandled`.
    pub(super) rotation_request_handled: Option<String>,
    /// Checksum of the connection URI `<name>-db` holds, when this reconcile
    /// wrote it (otherwise the pods keep the one they run with).
    pub(super) uri_hash: Option<String>,
    /// The error the reconcile returns (so it retries with backoff).
    pub(super) error: Option<Error>,
}

impl DatabaseOutcome {
    /// The server Secret is unusable: nothing was provisioned, and the
    /// password bookkeeping of the last status stays.
    pub(super) fn server_unusable(old: Option<&ChatTenantStatus>, e: ServerSecretError) -> Self {
        let old_db = old.and_then(|s| s.database.as_ref());
        Self {
            state: DatabaseState::NotReady {
                reason: "ServerSecretInvalid",
                message: e.to_string(),
            },
            password_changed_at: old_db.and_then(|d| d.password_changed_at.clone()),
            rotation_request_handled: old_db.and_then(|d| d.rotation_request_handled.clone()),
            uri_hash: None,
            error: Some(e.into()),
        }
    }
}

/// What to do with the role's password this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Password {
    /// No password in a Secret yet: a new one, into a new Secret first, then
    /// the role.
    New(String),
    /// A rotation request not handled yet: a new one, into the role first,
    /// then the Secret.
    Rotate(String),
    /// The Secret's password stays (the role is checked against it).
    Keep(String),
}

impl Password {
    /// The decision. Pure: `existing` is the Secret's password, `requested`
    /// is `spec.database.passwordRotation.requestedAt`, `handled` is
    /// `status.database.rotationRequestHandled`; `generate` makes a new
    /// password when one is needed. A request is only acted on when a
    /// password exists to rotate; a new Secret marks the request handled too.
    pub(crate) fn decide(
        existing: Option<String>,
        requested: Option<&str>,
        handled: Option<&str>,
        generate: impl FnOnce() -> String,
    ) -> Self {
        match existing {
            None => Password::New(generate()),
            Some(_) if requested.is_some() && requested != handled => Password::Rotate(generate()),
            Some(p) => Password::Keep(p),
        }
    }

    /// The password the Secret holds after this reconcile.
    pub(crate) fn value(&self) -> &str {
        match self {
            Password::New(p) | Password::Rotate(p) | Password::Keep(p) => p,
        }
    }

    /// What the role gets.
    pub(crate) fn action(&self) -> PasswordAction {
        match self {
            Password::New(p) | Password::Rotate(p) => PasswordAction::Set(p.clone()),
            Password::Keep(p) => PasswordAction::Keep(p.clone()),
        }
    }

    fn is_new(&self) -> bool {
        matches!(self, Password::New(_))
    }

    fn rotates(&self) -> bool {
        matches!(self, Password::Rotate(_))
    }
}

/// The `ProvisioningFailed` family of reasons of a database error.
pub(super) fn failure_reason(e: &DatabaseError) -> &'static str {
    if matches!(e, DatabaseError::Busy { .. }) {
        "ServerBusy"
    } else if e.is_unreachable() {
        "ServerUnreachable"
    } else if matches!(e, DatabaseError::Claim(_)) {
        "NameInUse"
    } else {
        "ProvisioningFailed"
    }
}

/// The state the `DatabaseReady` condition shows: a failure that says
/// nothing about the tenant's own role and database (`transient`: the server
/// busy or unreachable, its connection slots full) keeps a tenant that was
/// ready Ready, so an overloaded server or operator does not flip healthy
/// tenants; the error still makes the reconcile retry with backoff, and is
/// logged and counted. Pure.
pub(super) fn unless_transient(
    was_ready: bool,
    transient: bool,
    state: DatabaseState,
) -> DatabaseState {
    if was_ready && transient {
        DatabaseState::Ready
    } else {
        state
    }
}

/// The Events after a successful `ensure`. Pure.
pub(super) fn provisioning_events(
    t: &Tenant,
    password: &Password,
    outcome: &EnsureOutcome,
    requested: Option<&str>,
) -> Vec<Event> {
    let role = t.database.name.to_string();
    let mut events = Vec::new();
    if outcome.created_role {
        events.push(Event::RoleCreated {
            role: role.clone(),
            connection_limit: t.database.connection_limit,
        });
    }
    if outcome.created_database {
        events.push(Event::DatabaseCreated {
            role: role.clone(),
            shared: t
                .database
                .schema()
                .map(|_| t.database.database().to_string()),
        });
    }
    if password.is_new() {
        events.push(Event::SecretCreated {
            secret: db_secret_name(t),
        });
        if !outcome.created_role {
            events.push(Event::PasswordReset {
                role: role.clone(),
                secret: db_secret_name(t),
            });
        }
    }
    if password.rotates() {
        events.push(Event::PasswordRotated {
            role,
            request: requested.unwrap_or_default().to_string(),
        });
    }
    let other_ddl = outcome
        .executed
        .len()
        .saturating_sub(usize::from(outcome.created_role))
        .saturating_sub(usize::from(outcome.created_database) * 2);
    if !outcome.created_role
        && !outcome.created_database
        && other_ddl > 0
        && !password.rotates()
        && !password.is_new()
    {
        events.push(Event::DatabaseRepaired {
            statements: outcome.executed.clone(),
        });
    }
    events
}

/// Provisions the tenant's database on `server`, writing `<name>-db`.
pub(super) async fn provision(
    ctx: &Context,
    ct: &ChatTenant,
    t: &Tenant,
    server: &ServerConfig,
) -> DatabaseOutcome {
    let old_db = ct.status.as_ref().and_then(|s| s.database.as_ref());
    let mut changed_at = old_db.and_then(|d| d.password_changed_at.clone());
    let mut handled = old_db.and_then(|d| d.rotation_request_handled.clone());
    let requested = t
        .spec
        .database
        .password_rotation
        .as_ref()
        .map(|r| r.requested_at.clone());
    let was_ready = ct.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == status::types::DATABASE_READY && c.status == "True")
    });
    let transient = |e: &DatabaseError| was_ready && e.is_transient();
    let fail = |reason: &'static str, e: Error, changed_at, handled| DatabaseOutcome {
        state: unless_transient(
            was_ready,
            matches!(&e, Error::Database(d) if d.is_transient()),
            DatabaseState::NotReady {
                reason,
                message: format!("{e}; the operator retries with backoff"),
            },
        ),
        password_changed_at: changed_at,
        rotation_request_handled: handled,
        uri_hash: None,
        error: Some(e),
    };

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &t.namespace);
    let existing = match secrets.get_opt(&db_secret_name(t)).await {
        Ok(s) => s,
        Err(e) => {
            let e = Error::kube("reading the database Secret")(e);
            return fail("SecretUnreadable", e, changed_at, handled);
        }
    };
    let password = Password::decide(
        existing
            .as_ref()
            .and_then(|s| secret_value(s, DB_SECRET_PASSWORD_KEY)),
        requested.as_deref(),
        handled.as_deref(),
        generate_password,
    );
    let action = password.action();
    let role = &t.database.name;
    let db_secret = build_db_secret(t, server, role, password.value());
    let uri_hash = key_checksum(&server.tenant_uri(role, password.value(), t.database.database()));

    // Verified a moment ago with the same settings and password: only the
    // Secret is compared (a no-op when it is as built).
    let verify_key = verified::key(server, &t.database, password.value());
    if matches!(password, Password::Keep(_))
        && ctx
            .verified
            .fresh(ct, verify_key, verified::window(ctx.settings.resync))
    {
        let observed = Observed::Known(existing.map(std::sync::Arc::new));
        if let Err(e) = apply_one(&ctx.client, &t.namespace, &db_secret, observed).await {
            ctx.verified.forget(ct);
            return fail("SecretWriteFailed", e.into(), changed_at, handled);
        }
        return DatabaseOutcome {
            state: DatabaseState::Ready,
            password_changed_at: changed_at,
            rotation_request_handled: handled,
            uri_hash: Some(uri_hash),
            error: None,
        };
    }
    ctx.verified.forget(ct);

    if password.is_new() {
        if let Err(e) = ctx.databases.check_claim(server, &t.database).await {
            let reason = failure_reason(&e);
            if !transient(&e) {
                ctx.publish(ct, provisioning_failed(reason, &e)).await;
            }
            return fail(reason, e.into(), changed_at, handled);
        }
        let none = Observed::Known(None);
        if let Err(e) = apply_one(&ctx.client, &t.namespace, &db_secret, none).await {
            return fail("SecretWriteFailed", e.into(), changed_at, handled);
        }
    }
    let outcome = match ctx.databases.ensure(server, &t.database, &action).await {
        Ok(o) => o,
        Err(e) => {
            let reason = failure_reason(&e);
            if !transient(&e) {
                ctx.publish(ct, provisioning_failed(reason, &e)).await;
            }
            return fail(reason, e.into(), changed_at, handled);
        }
    };
    ctx.metrics
        .ddl_statements
        .inc_by(outcome.executed.len() as u64);
    if matches!(action, PasswordAction::Set(_)) {
        changed_at = Some(rollout::format_time(jiff::Timestamp::now().as_second()));
        handled = requested.clone();
    }
    // The Secret follows the server (host, port, sslmode); with a rotation
    // it gets the new password only after the role has it.
    let observed = Observed::Known(existing.map(std::sync::Arc::new));
    if !password.is_new()
        && let Err(e) = apply_one(&ctx.client, &t.namespace, &db_secret, observed).await
    {
        return fail("SecretWriteFailed", e.into(), changed_at, handled);
    }
    for event in provisioning_events(t, &password, &outcome, requested.as_deref()) {
        ctx.publish(ct, event).await;
    }

    let login = ctx
        .databases
        .check_login(server, &t.database, password.value())
        .await;
    let secret = db_secret_name(t);
    // States the next reconcile repairs (or that pass) retry with backoff;
    // the condition names the role's attribute at fault, not the password.
    let retry = |reason: &'static str, why: String| {
        let e = Error::Database(DatabaseError::Login {
            role: role.to_string(),
            why: why.clone(),
        });
        (
            DatabaseState::NotReady {
                reason,
                message: format!("role {role} cannot log in: {why}"),
            },
            Some(e),
        )
    };
    let (state, error) = match login {
        Ok(LoginCheck::Ok) => (DatabaseState::Ready, None),
        Ok(LoginCheck::PasswordMismatch) => {
            let message = format!(
                "the password in Secret {secret} does not match role {role} (changed outside the operator?); the role's expiry, LOGIN, connection limit and database ownership were checked and are fine; set spec.database.passwordRotation.requestedAt to the current time to set a new password in both"
            );
            // Said once per occurrence, not at every resync.
            let already_reported = ct.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == status::types::DATABASE_READY && c.reason == "PasswordMismatch"
                })
            });
            if !already_reported {
                let event = Event::PasswordMismatch {
                    message: message.clone(),
                };
                ctx.publish(ct, event).await;
            }
            let state = DatabaseState::NotReady {
                reason: "PasswordMismatch",
                message,
            };
            (state, None)
        }
        Ok(LoginCheck::PasswordExpired { valid_until }) => retry(
            "PasswordExpired",
            format!(
                "its password expired at {valid_until} (VALID UNTIL set outside the operator); the operator resets it to 'infinity' and retries; a password rotation would not help"
            ),
        ),
        Ok(LoginCheck::NoPassword) => retry(
            "RoleHasNoPassword",
            format!("it has no password; the operator sets the one in Secret {secret} and retries"),
        ),
        Ok(LoginCheck::RoleMissing) => retry(
            "RoleMissing",
            format!(
                "it does not exist (dropped outside the operator?); the operator recreates it with the password in Secret {secret} and retries"
            ),
        ),
        Ok(LoginCheck::LoginDisabled) => retry(
            "LoginDisabled",
            "it has NOLOGIN (changed outside the operator?); the operator sets LOGIN and retries"
                .to_string(),
        ),
        Ok(LoginCheck::NoConnectPrivilege { owner }) => retry(
            "NoConnectPrivilege",
            match &t.database.isolation {
                Isolation::Database => format!(
                    "it may not connect to database {role} (owner is now {owner}); the operator gives the database back to {role} and retries"
                ),
                Isolation::Schema { database, members } => format!(
                    "it may not connect to the shared database {database} (a grant was revoked outside the operator?); the operator grants CONNECT to {members} and membership in it to {role} again and retries"
                ),
            },
        ),
        Ok(LoginCheck::ServerFull(why)) => {
            let (state, e) = retry(
                "ServerFull",
                format!(
                    "the server has no free connection slot ({why}) although the role is below its connection limit; new pods cannot connect either: raise the server's max_connections or reduce the tenants' connections"
                ),
            );
            (unless_transient(was_ready, true, state), e)
        }
        Ok(LoginCheck::Refused(why)) => (
            DatabaseState::NotReady {
                reason: "LoginRefused",
                message: format!(
                    "the server refused role {role}'s login to database {}: {why}; allow it in the server's pg_hba.conf for the operator and the tenant's pods",
                    t.database.database()
                ),
            },
            None,
        ),
        Err(e) => return fail(failure_reason(&e), e.into(), changed_at, handled),
    };
    if state == DatabaseState::Ready && error.is_none() {
        ctx.verified.record(ct, verify_key);
    }
    DatabaseOutcome {
        state,
        password_changed_at: changed_at,
        rotation_request_handled: handled,
        uri_hash: Some(uri_hash),
        error,
    }
}

fn provisioning_failed(reason: &'static str, e: &DatabaseError) -> Event {
    Event::ProvisioningFailed {
        reason,
        error: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::tenant_and_plan;

    fn fresh() -> String {
        "fresh".into()
    }

    #[test]
    fn no_secret_means_a_new_password_even_with_a_request() {
        assert_eq!(
            Password::decide(None, None, None, fresh),
            Password::New("fresh".into())
        );
        assert_eq!(
            Password::decide(None, Some("t1"), None, fresh),
            Password::New("fresh".into())
        );
    }

    #[test]
    fn an_existing_password_is_kept_without_a_new_request() {
        let keep = Password::Keep("old".into());
        assert_eq!(
            Password::decide(Some("old".into()), None, None, fresh),
            keep
        );
        assert_eq!(
            Password::decide(Some("old".into()), Some("t1"), Some("t1"), fresh),
            keep
        );
        assert_eq!(keep.action(), PasswordAction::Keep("old".into()));
        assert_eq!(keep.value(), "old");
    }

    #[test]
    fn a_request_not_handled_yet_rotates() {
        let p = Password::decide(Some("old".into()), Some("t2"), Some("t1"), fresh);
        assert_eq!(p, Password::Rotate("fresh".into()));
        assert_eq!(p.action(), PasswordAction::Set("fresh".into()));
        assert_eq!(
            Password::decide(Some("old".into()), Some("t1"), None, fresh),
            Password::Rotate("fresh".into())
        );
    }

    #[test]
    fn the_generator_runs_only_when_a_password_is_needed() {
        let p = Password::decide(Some("old".into()), None, None, || {
            panic!("no new password needed")
        });
        assert_eq!(p, Password::Keep("old".into()));
    }

    fn outcome(executed: &[&str], created_role: bool, created_database: bool) -> EnsureOutcome {
        EnsureOutcome {
            executed: executed.iter().map(|s| s.to_string()).collect(),
            created_role,
            created_database,
        }
    }

    fn reasons(events: Vec<Event>) -> Vec<&'static str> {
        events.iter().map(Event::reason).collect()
    }

    #[test]
    fn a_busy_server_keeps_a_ready_tenant_ready() {
        let not_ready = || DatabaseState::NotReady {
            reason: "ServerBusy",
            message: "m".into(),
        };
        let cases = [
            (true, true, DatabaseState::Ready),
            (true, false, not_ready()),
            (false, true, not_ready()),
            (false, false, not_ready()),
        ];
        for (was_ready, transient, want) in cases {
            assert_eq!(
                unless_transient(was_ready, transient, not_ready()),
                want,
                "{was_ready} {transient}"
            );
        }
        let busy = DatabaseError::Busy {
            server: "pg:5432".into(),
            why: "full".into(),
        };
        assert!(busy.is_transient());
        assert_eq!(failure_reason(&busy), "ServerBusy");
    }

    #[test]
    fn first_provisioning_says_role_database_and_secret() {
        let (t, _) = tenant_and_plan(|_| {});
        let o = outcome(&["CREATE ROLE", "CREATE DATABASE", "REVOKE"], true, true);
        let events = provisioning_events(&t, &Password::New("p".into()), &o, None);
        assert_eq!(
            reasons(events),
            ["RoleCreated", "DatabaseCreated", "SecretCreated"]
        );
    }

    #[test]
    fn a_role_without_its_secret_gets_a_reset_warning() {
        let (t, _) = tenant_and_plan(|_| {});
        let o = outcome(&["ALTER ROLE ... PASSWORD"], false, false);
        let events = provisioning_events(&t, &Password::New("p".into()), &o, None);
        assert_eq!(reasons(events), ["SecretCreated", "PasswordReset"]);
    }

    #[test]
    fn rotation_and_repair_are_told_apart() {
        let (t, _) = tenant_and_plan(|_| {});
        let o = outcome(&["ALTER ROLE ... PASSWORD"], false, false);
        let rotated = provisioning_events(&t, &Password::Rotate("p".into()), &o, Some("t1"));
        assert_eq!(
            rotated,
            [Event::PasswordRotated {
                role: "chat_acme".into(),
                request: "t1".into()
            }]
        );
        let o = outcome(&["ALTER ROLE ... CONNECTION LIMIT 50"], false, false);
        let repaired = provisioning_events(&t, &Password::Keep("p".into()), &o, None);
        assert_eq!(reasons(repaired), ["DatabaseRepaired"]);
        let idle = provisioning_events(
            &t,
            &Password::Keep("p".into()),
            &outcome(&[], false, false),
            None,
        );
        assert_eq!(idle, []);
    }
}
