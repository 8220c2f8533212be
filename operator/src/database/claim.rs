//! Which tenant a role or database on a shared server belongs to.
//!
//! Database names come from ChatTenants in any namespace, and the server may
//! hold roles and databases nobody gave to Chorus (the admin role itself,
//! another application's database). The operator marks what it creates with a
//! comment, `chorus.dev/tenant=<namespace>/<name>`, and touches (alters,
//! re-passwords, drops) only objects that carry the requesting tenant's mark.
//! A ChatTenant re-created under the same namespace and name finds its
//! retained database again; anything else is refused with `NameInUse`.

/// Prefix of the ownership comment on roles and databases.
pub const CLAIM_PREFIX: &str = "chorus.dev/tenant=";

/// The comment that marks an object as `owner`'s (`<namespace>/<name>`).
pub fn claim_comment(owner: &str) -> String {
    format!("{CLAIM_PREFIX}{owner}")
}

/// The tenant named by a comment, if it is a Chorus mark.
pub fn claimed_by(comment: Option<&str>) -> Option<&str> {
    comment?.strip_prefix(CLAIM_PREFIX)
}

/// The comment on a database shared by Schema tenants.
pub const SHARED_DATABASE_MARK: &str = "chorus.dev/shared-database";
/// Prefix of the comment on the role whose members may connect to a shared
/// database (`<prefix><database>`).
pub const MEMBERS_MARK_PREFIX: &str = "chorus.dev/shared-database-members=";

/// Whether a comment marks a shared database or its members role.
pub fn is_shared_mark(comment: Option<&str>) -> bool {
    comment.is_some_and(|c| c == SHARED_DATABASE_MARK || c.starts_with(MEMBERS_MARK_PREFIX))
}

/// Why the operator will not touch an existing role or database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The name is the server's admin role (the operator's own login).
    #[error(
        "{name:?} is the database server's admin role; a tenant cannot use it. Delete this ChatTenant and create it with another spec.database.name (the field is immutable)"
    )]
    AdminRole {
        /// The name.
        name: String,
    },
    /// Another ChatTenant owns it.
    #[error(
        "{object} {name:?} already belongs to ChatTenant {holder} on this server; database names must be unique per server. Delete this ChatTenant and create it with another spec.database.name (the field is immutable)"
    )]
    OtherTenant {
        /// "role" or "database".
        object: &'static str,
        /// The name.
        name: String,
        /// `<namespace>/<name>` of the owner.
        holder: String,
    },
    /// It exists but Chorus did not create it.
    #[error(
        "{object} {name:?} already exists on the server and was not created by Chorus, so the operator leaves it alone. Use another spec.database.name (delete and re-create this ChatTenant: the field is immutable), or hand the existing role and {} to this tenant: COMMENT ON ROLE \"{name}\" IS '{mark}'; COMMENT ON {container} \"{name}\" IS '{mark}' (the operator then sets a new password in the role and the tenant's Secret)", .container.to_lowercase()
    )]
    NotChorus {
        /// "role", "database" or "schema".
        object: &'static str,
        /// The name.
        name: String,
        /// The comment that would hand it over.
        mark: String,
        /// `DATABASE` or `SCHEMA`: what holds the tenant's tables.
        container: &'static str,
    },
    /// It is the shared database of Schema tenants, or the role of its
    /// members: never a tenant's own.
    #[error(
        "{object} {name:?} is the shared database of Schema tenants on this server (or the role of its members); a tenant cannot use it as its own. Delete this ChatTenant and create it with another spec.database.name (the field is immutable)"
    )]
    Shared {
        /// "role" or "database".
        object: &'static str,
        /// The name.
        name: String,
    },
    /// The shared database (or its members role) a Schema tenant names
    /// exists, but is not one the operator made for Schema tenants.
    #[error(
        "{object} {name:?} cannot be used for the shared database of Schema tenants: it {what}, so the operator leaves it alone. Use another spec.database.sharedDatabase (delete and re-create this ChatTenant: the field is immutable), or, if it was made for this purpose, mark it as the admin: COMMENT ON {} \"{name}\" IS '{mark}'", .object.to_uppercase()
    )]
    NotShared {
        /// "role" or "database".
        object: &'static str,
        /// The name.
        name: String,
        /// "belongs to ChatTenant ..." or "was not created by Chorus".
        what: String,
        /// The comment that would make it the shared one.
        mark: String,
    },
}

/// What the catalog says about one existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Existing<'a> {
    /// Its comment (`shobj_description`).
    pub comment: Option<&'a str>,
}

/// Checks that `owner` (`<namespace>/<name>`) may use role and database
/// `name`. `role`/`database` are `None` when the object does not exist.
/// A database without a mark is accepted when it is owned by a role marked
/// as this tenant's (the operator was stopped between `CREATE DATABASE` and
/// its `COMMENT`).
pub fn check(
    name: &str,
    owner: &str,
    admin: &str,
    role: Option<Existing<'_>>,
    database: Option<(Existing<'_>, &str)>,
) -> Result<(), ClaimError> {
    if name == admin {
        return Err(ClaimError::AdminRole { name: name.into() });
    }
    let refuse = |object: &'static str, comment: Option<&str>| {
        refusal(object, name, owner, comment, "DATABASE")
    };
    let role_is_ours = match role {
        None => false,
        Some(r) if claimed_by(r.comment) == Some(owner) => true,
        Some(r) => return Err(refuse("role", r.comment)),
    };
    if let Some((db, db_owner)) = database {
        let ours = claimed_by(db.comment) == Some(owner)
            || (db.comment.is_none() && role_is_ours && db_owner == name);
        if !ours {
            return Err(refuse("database", db.comment));
        }
    }
    Ok(())
}

/// Why `owner` may not use existing object `name` whose comment is
/// `comment`; `container` is `DATABASE` or `SCHEMA` (for the hand-over
/// commands).
pub fn refusal(
    object: &'static str,
    name: &str,
    owner: &str,
    comment: Option<&str>,
    container: &'static str,
) -> ClaimError {
    if is_shared_mark(comment) {
        return ClaimError::Shared {
            object,
            name: name.into(),
        };
    }
    match claimed_by(comment) {
        Some(holder) => ClaimError::OtherTenant {
            object,
            name: name.into(),
            holder: holder.into(),
        },
        None => ClaimError::NotChorus {
            object,
            name: name.into(),
            mark: claim_comment(owner),
            container,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWNER: &str = "tenants/acme";
    const MINE: &str = "chorus.dev/tenant=tenants/acme";

    fn with(comment: Option<&str>) -> Existing<'_> {
        Existing { comment }
    }

    #[test]
    fn a_free_name_and_our_own_objects_are_fine() {
        assert_eq!(check("chat_acme", OWNER, "postgres", None, None), Ok(()));
        assert_eq!(
            check(
                "chat_acme",
                OWNER,
                "postgres",
                Some(with(Some(MINE))),
                Some((with(Some(MINE)), "chat_acme"))
            ),
            Ok(())
        );
    }

    #[test]
    fn the_admin_role_is_refused() {
        assert!(matches!(
            check("chorus_admin", OWNER, "chorus_admin", None, None),
            Err(ClaimError::AdminRole { .. })
        ));
    }

    #[test]
    fn another_tenants_objects_are_refused_naming_the_holder() {
        let err = check(
            "chat_acme",
            OWNER,
            "postgres",
            Some(with(Some("chorus.dev/tenant=other/acme"))),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ChatTenant other/acme"), "{err}");
        let err = check(
            "chat_acme",
            OWNER,
            "postgres",
            None,
            Some((with(Some("chorus.dev/tenant=other/acme")), "chat_acme")),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            ClaimError::OtherTenant {
                object: "database",
                ..
            }
        ));
    }

    #[test]
    fn objects_chorus_did_not_create_are_refused_with_the_hand_over_commands() {
        let err = check("app", OWNER, "postgres", Some(with(None)), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not created by Chorus"), "{msg}");
        assert!(
            msg.contains("COMMENT ON ROLE \"app\" IS 'chorus.dev/tenant=tenants/acme'"),
            "{msg}"
        );
        // A comment that is not a Chorus mark is not ours either.
        assert!(check("app", OWNER, "postgres", Some(with(Some("billing"))), None).is_err());
        // An unmarked database is ours only when our role owns it.
        assert!(check("app", OWNER, "postgres", None, Some((with(None), "app"))).is_err());
        assert!(
            check(
                "app",
                OWNER,
                "postgres",
                Some(with(Some(MINE))),
                Some((with(None), "someone_else"))
            )
            .is_err()
        );
        assert_eq!(
            check(
                "app",
                OWNER,
                "postgres",
                Some(with(Some(MINE))),
                Some((with(None), "app"))
            ),
            Ok(())
        );
    }

    #[test]
    fn the_shared_database_is_never_a_tenants_own() {
        let err = check(
            "chorus_tenants",
            OWNER,
            "postgres",
            None,
            Some((with(Some(SHARED_DATABASE_MARK)), "postgres")),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                ClaimError::Shared {
                    object: "database",
                    ..
                }
            ),
            "{err}"
        );
        let members = format!("{MEMBERS_MARK_PREFIX}chorus_tenants");
        let err = check("x", OWNER, "postgres", Some(with(Some(&members))), None).unwrap_err();
        assert!(
            matches!(err, ClaimError::Shared { object: "role", .. }),
            "{err}"
        );
        // Hand-over commands name what holds the tables.
        let err = refusal("schema", "x", OWNER, None, "SCHEMA").to_string();
        assert!(
            err.contains("COMMENT ON SCHEMA \"x\" IS 'chorus.dev/tenant=tenants/acme'"),
            "{err}"
        );
        assert!(err.contains("existing role and schema"), "{err}");
    }
}
