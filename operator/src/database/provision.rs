//! Provisioning a tenant's role and database: observe the catalog, plan only
//! the DDL that is missing (pure), then execute it. A second run against a
//! provisioned tenant plans nothing.

use sqlx::{Connection, PgConnection, Row};

use super::{
    DatabaseError,
    claim::{self, ClaimError, Existing, claim_comment},
    ident::{Ident, quote_literal},
    server::{CONNECT_TIMEOUT, ServerConfig},
};

/// What the tenant needs on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantDatabase {
    /// Database name; the owning role has the same name.
    pub name: Ident,
    /// `CONNECTION LIMIT` of the role.
    pub connection_limit: i32,
    /// The ChatTenant, `<namespace>/<name>`: role and database carry it as
    /// their ownership mark ([`claim`]).
    pub owner: String,
}

/// The role as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRow {
    /// `rolcanlogin`.
    pub can_login: bool,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolcreatedb`.
    pub createdb: bool,
    /// `rolcreaterole`.
    pub createrole: bool,
    /// `rolreplication`.
    pub replication: bool,
    /// `rolbypassrls`.
    pub bypassrls: bool,
    /// `rolconnlimit`.
    pub connection_limit: i32,
    /// The role's comment (the ownership mark).
    pub comment: Option<String>,
}

/// The database as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseRow {
    /// Owner role name.
    pub owner: String,
    /// True while PUBLIC holds any privilege on the database (including the
    /// implicit defaults when `datacl` is NULL).
    pub public_has_privileges: bool,
    /// The database's comment (the ownership mark).
    pub comment: Option<String>,
}

/// The login the operator uses on the server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdminRow {
    /// `current_user`.
    pub name: String,
    /// Superuser: no role membership is needed to act as the tenant's owner.
    pub superuser: bool,
    /// Already a member of the tenant role (needed, without superuser, to
    /// create, comment on and drop a database the role owns).
    pub member_of_tenant: bool,
}

/// Catalog state for one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The operator's own login.
    pub admin: AdminRow,
    /// The role, if it exists.
    pub role: Option<RoleRow>,
    /// The database, if it exists.
    pub database: Option<DatabaseRow>,
}

impl Observed {
    /// Whether the tenant may use the role and database
    /// ([`claim::check`]).
    pub fn check_claim(&self, db: &TenantDatabase) -> Result<(), ClaimError> {
        claim::check(
            db.name.as_str(),
            &db.owner,
            &self.admin.name,
            self.role.as_ref().map(|r| Existing {
                comment: r.comment.as_deref(),
            }),
            self.database.as_ref().map(|d| {
                (
                    Existing {
                        comment: d.comment.as_deref(),
                    },
                    d.owner.as_str(),
                )
            }),
        )
    }
}

/// One DDL statement, with a form safe to log (no password verifier).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The SQL sent to the server.
    pub sql: String,
    /// The SQL as logged and reported.
    pub redacted: String,
}

impl Statement {
    fn plain(sql: String) -> Self {
        Self {
            redacted: sql.clone(),
            sql,
        }
    }
}

/// Whether this run must set the role's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordAction {
    /// Leave the password alone (the Secret and the role already agree, or a
    /// mismatch is reported rather than silently fixed).
    Keep,
    /// Set this password (new Secret, or an explicit rotation request).
    Set(String),
}

const ROLE_ATTRIBUTES: &str = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS";

/// The attributes of an existing role that differ from what the tenant
/// needs. Only those are altered: a CREATEROLE admin that is not superuser
/// may not even name SUPERUSER, REPLICATION or BYPASSRLS in `ALTER ROLE`.
fn role_drift(role: &RoleRow, limit: i32) -> Vec<String> {
    [
        (!role.can_login, "LOGIN"),
        (role.superuser, "NOSUPERUSER"),
        (role.createdb, "NOCREATEDB"),
        (role.createrole, "NOCREATEROLE"),
        (role.replication, "NOREPLICATION"),
        (role.bypassrls, "NOBYPASSRLS"),
    ]
    .into_iter()
    .filter(|(wrong, _)| *wrong)
    .map(|(_, fix)| fix.to_string())
    .chain((role.connection_limit != limit).then(|| format!("CONNECTION LIMIT {limit}")))
    .collect()
}

/// Plans the DDL that brings the server to what `db` needs. Pure. The caller
/// has checked the claim ([`Observed::check_claim`]).
pub fn plan(db: &TenantDatabase, observed: &Observed, password: &PasswordAction) -> Vec<Statement> {
    let name = db.name.quoted();
    let limit = db.connection_limit;
    let mark = quote_literal(&claim_comment(&db.owner));
    let mut out = Vec::new();
    let verifier = match password {
        PasswordAction::Set(p) => Some(postgres_protocol::password::scram_sha_256(p.as_bytes())),
        PasswordAction::Keep => None,
    };
    match &observed.role {
        None => {
            // One simple-query message runs as one transaction: the role
            // never exists without its mark.
            let base =
                format!("CREATE ROLE {name} WITH {ROLE_ATTRIBUTES} CONNECTION LIMIT {limit}");
            let comment = format!("COMMENT ON ROLE {name} IS {mark}");
            out.push(match &verifier {
                Some(v) => Statement {
                    sql: format!("{base} PASSWORD {}; {comment}", quote_literal(v)),
                    redacted: format!("{base} PASSWORD '***'; {comment}"),
                },
                None => Statement::plain(format!("{base}; {comment}")),
            });
        }
        Some(role) => {
            let drift = role_drift(role, limit);
            if !drift.is_empty() {
                out.push(Statement::plain(format!(
                    "ALTER ROLE {name} WITH {}",
                    drift.join(" ")
                )));
            }
            if let Some(v) = &verifier {
                out.push(Statement {
                    sql: format!("ALTER ROLE {name} PASSWORD {}", quote_literal(v)),
                    redacted: format!("ALTER ROLE {name} PASSWORD '***'"),
                });
            }
        }
    }
    // Without superuser, acting as the database's owner needs membership in
    // the owner role.
    if !observed.admin.superuser && !observed.admin.member_of_tenant {
        out.push(Statement::plain(format!("GRANT {name} TO CURRENT_USER")));
    }
    match &observed.database {
        None => {
            out.push(Statement::plain(format!(
                "CREATE DATABASE {name} OWNER {name} ENCODING 'UTF8'"
            )));
            out.push(Statement::plain(format!(
                "COMMENT ON DATABASE {name} IS {mark}"
            )));
            out.push(Statement::plain(format!(
                "REVOKE ALL ON DATABASE {name} FROM PUBLIC"
            )));
        }
        Some(d) => {
            if d.owner != db.name.as_str() {
                out.push(Statement::plain(format!(
                    "ALTER DATABASE {name} OWNER TO {name}"
                )));
            }
            if d.comment.as_deref() != Some(claim_comment(&db.owner).as_str()) {
                out.push(Statement::plain(format!(
                    "COMMENT ON DATABASE {name} IS {mark}"
                )));
            }
            if d.public_has_privileges {
                out.push(Statement::plain(format!(
                    "REVOKE ALL ON DATABASE {name} FROM PUBLIC"
                )));
            }
        }
    }
    out
}

/// What [`ensure`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureOutcome {
    /// Statements executed (redacted), in order; empty when nothing changed.
    pub executed: Vec<String>,
    /// True when the role was created by this run.
    pub created_role: bool,
    /// True when the database was created by this run.
    pub created_database: bool,
}

async fn admin_connection(server: &ServerConfig) -> Result<PgConnection, DatabaseError> {
    connect(&server.admin_options(), server).await
}

async fn connect(
    options: &sqlx::postgres::PgConnectOptions,
    server: &ServerConfig,
) -> Result<PgConnection, DatabaseError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(DatabaseError::Unreachable {
            server: format!("{}:{}", server.host, server.port),
            source,
        }),
        Err(_) => Err(DatabaseError::Timeout {
            server: format!("{}:{}", server.host, server.port),
        }),
    }
}

/// Reads the catalog rows for the tenant and the admin login.
pub async fn observe(conn: &mut PgConnection, name: &Ident) -> Result<Observed, DatabaseError> {
    let admin = sqlx::query(
        "SELECT current_user::text AS name, r.rolsuper, \
                EXISTS (SELECT 1 FROM pg_roles t \
                        WHERE t.rolname = $1 AND pg_has_role(r.oid, t.oid, 'USAGE')) AS member \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .bind(name.as_str())
    .fetch_one(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading the admin role"))?;
    let admin = (|| -> Result<AdminRow, sqlx::Error> {
        Ok(AdminRow {
            name: admin.try_get("name")?,
            superuser: admin.try_get("rolsuper")?,
            member_of_tenant: admin.try_get("member")?,
        })
    })()
    .map_err(DatabaseError::query("decoding the admin role"))?;
    let role = sqlx::query(
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, \
                rolconnlimit, shobj_description(oid, 'pg_authid') AS comment \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading pg_roles"))?
    .map(|row| -> Result<RoleRow, sqlx::Error> {
        Ok(RoleRow {
            can_login: row.try_get("rolcanlogin")?,
            superuser: row.try_get("rolsuper")?,
            createdb: row.try_get("rolcreatedb")?,
            createrole: row.try_get("rolcreaterole")?,
            replication: row.try_get("rolreplication")?,
            bypassrls: row.try_get("rolbypassrls")?,
            connection_limit: row.try_get("rolconnlimit")?,
            comment: row.try_get("comment")?,
        })
    })
    .transpose()
    .map_err(DatabaseError::query("decoding pg_roles"))?;
    let database = sqlx::query(
        "SELECT pg_get_userbyid(datdba)::text AS owner, \
                (datacl IS NULL OR EXISTS (SELECT 1 FROM unnest(datacl) a WHERE a::text LIKE '=%')) AS public_privs, \
                shobj_description(oid, 'pg_database') AS comment \
         FROM pg_database WHERE datname = $1",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading pg_database"))?
    .map(|row| -> Result<DatabaseRow, sqlx::Error> {
        Ok(DatabaseRow {
            owner: row.try_get("owner")?,
            public_has_privileges: row.try_get("public_privs")?,
            comment: row.try_get("comment")?,
        })
    })
    .transpose()
    .map_err(DatabaseError::query("decoding pg_database"))?;
    Ok(Observed {
        admin,
        role,
        database,
    })
}

/// Checks, without changing anything, that the tenant may use its role and
/// database ([`claim`]). Run before the first `<name>-db` Secret is written,
/// so a refused name leaves no Secret behind.
pub async fn check_claim(server: &ServerConfig, db: &TenantDatabase) -> Result<(), DatabaseError> {
    let mut conn = admin_connection(server).await?;
    let observed = observe(&mut conn, &db.name).await;
    let _ = conn.close().await;
    Ok(observed?.check_claim(db)?)
}

async fn execute(conn: &mut PgConnection, st: &Statement) -> Result<(), DatabaseError> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(st.sql.clone()))
        .execute(&mut *conn)
        .await
        .map_err(|source| DatabaseError::Ddl {
            statement: st.redacted.clone(),
            source,
        })?;
    tracing::info!(statement = %st.redacted, "database DDL");
    Ok(())
}

/// Brings the server to what `db` needs, executing only missing DDL, then
/// makes sure PUBLIC has no rights on the database's `public` schema and the
/// tenant role may create tables in it. Refuses, before any DDL, a role or
/// database that is not this tenant's ([`claim`]).
pub async fn ensure(
    server: &ServerConfig,
    db: &TenantDatabase,
    password: &PasswordAction,
) -> Result<EnsureOutcome, DatabaseError> {
    let mut conn = admin_connection(server).await?;
    let observed = observe(&mut conn, &db.name).await?;
    observed.check_claim(db)?;
    let statements = plan(db, &observed, password);
    let mut outcome = EnsureOutcome {
        created_role: observed.role.is_none(),
        created_database: observed.database.is_none(),
        ..EnsureOutcome::default()
    };
    for st in &statements {
        execute(&mut conn, st).await?;
        outcome.executed.push(st.redacted.clone());
    }
    let _ = conn.close().await;

    // The public schema lives inside the tenant database: connect there.
    let mut tenant_conn =
        connect(&server.admin_options().database(db.name.as_str()), server).await?;
    let (public_schema_open, owner_ok): (bool, bool) = sqlx::query_as(
        "SELECT nspacl IS NULL OR EXISTS (SELECT 1 FROM unnest(nspacl) a WHERE a::text LIKE '=%'), \
                pg_get_userbyid(nspowner) IN ('pg_database_owner', $1) \
         FROM pg_namespace WHERE nspname = 'public'",
    )
    .bind(db.name.as_str())
    .fetch_optional(&mut tenant_conn)
    .await
    .map_err(DatabaseError::query("reading schema public"))?
    .unwrap_or((false, true));
    // PostgreSQL 14 and older give `public` to the bootstrap superuser: the
    // tenant role could not create its tables once PUBLIC is revoked.
    let schema_statements = [
        (!owner_ok).then(|| format!("ALTER SCHEMA public OWNER TO {}", db.name.quoted())),
        public_schema_open.then(|| "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_string()),
    ];
    for sql in schema_statements.into_iter().flatten() {
        execute(&mut tenant_conn, &Statement::plain(sql.clone())).await?;
        outcome.executed.push(format!("{sql} (in {})", db.name));
    }
    let _ = tenant_conn.close().await;
    Ok(outcome)
}

/// Whether the tenant role logs in with `password`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// The password works (including when every connection the role may
    /// open is in use: SQLSTATE 53300 comes after authentication).
    Ok,
    /// The server refused the password (SQLSTATE 28P01): the Secret and the
    /// role disagree.
    PasswordMismatch,
    /// The server refused the login for another reason (pg_hba.conf, SQLSTATE
    /// 28000, or the role may not connect to the database, 42501).
    Refused(String),
}

/// Logs in as the tenant role to its database with the Secret's password.
pub async fn check_login(
    server: &ServerConfig,
    db: &TenantDatabase,
    password: &str,
) -> Result<LoginCheck, DatabaseError> {
    let options = server.tenant_options(&db.name, password, &db.name);
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(LoginCheck::Ok)
        }
        Ok(Err(sqlx::Error::Database(e))) => match e.code().as_deref() {
            Some("28P01") => Ok(LoginCheck::PasswordMismatch),
            Some("53300") => Ok(LoginCheck::Ok),
            Some("28000" | "42501") => Ok(LoginCheck::Refused(e.message().to_string())),
            _ => Err(DatabaseError::Unreachable {
                server: format!("{}:{}", server.host, server.port),
                source: sqlx::Error::Database(e),
            }),
        },
        Ok(Err(source)) => Err(DatabaseError::Unreachable {
            server: format!("{}:{}", server.host, server.port),
            source,
        }),
        Err(_) => Err(DatabaseError::Timeout {
            server: format!("{}:{}", server.host, server.port),
        }),
    }
}

/// What [`drop_tenant`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropOutcome {
    /// Statements executed, in order.
    pub executed: Vec<String>,
    /// Why nothing was dropped, when the role or database is not this
    /// tenant's (another tenant's or not created by Chorus): it is left alone.
    pub left_alone: Option<ClaimError>,
}

/// Terminates the tenant's sessions, drops its database, then its role, when
/// both are this tenant's. Idempotent: missing objects are skipped.
pub async fn drop_tenant(
    server: &ServerConfig,
    db: &TenantDatabase,
) -> Result<DropOutcome, DatabaseError> {
    let mut conn = admin_connection(server).await?;
    let observed = observe(&mut conn, &db.name).await?;
    if let Err(e) = observed.check_claim(db) {
        let _ = conn.close().await;
        return Ok(DropOutcome {
            executed: Vec::new(),
            left_alone: Some(e),
        });
    }
    let name = &db.name;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name.as_str())
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::query("terminating sessions"))?;
    let mut executed = Vec::new();
    for sql in [
        format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", name.quoted()),
        format!("DROP ROLE IF EXISTS {}", name.quoted()),
    ] {
        execute(&mut conn, &Statement::plain(sql.clone())).await?;
        executed.push(sql);
    }
    let _ = conn.close().await;
    Ok(DropOutcome {
        executed,
        left_alone: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: &str = "chorus.dev/tenant=tenants/acme";

    fn tenant() -> TenantDatabase {
        TenantDatabase {
            name: Ident::new("chat_acme").unwrap(),
            connection_limit: 50,
            owner: "tenants/acme".into(),
        }
    }

    fn admin() -> AdminRow {
        AdminRow {
            name: "postgres".into(),
            superuser: true,
            member_of_tenant: false,
        }
    }

    fn healthy_role() -> RoleRow {
        RoleRow {
            can_login: true,
            superuser: false,
            createdb: false,
            createrole: false,
            replication: false,
            bypassrls: false,
            connection_limit: 50,
            comment: Some(MARK.into()),
        }
    }

    fn healthy() -> Observed {
        Observed {
            admin: admin(),
            role: Some(healthy_role()),
            database: Some(DatabaseRow {
                owner: "chat_acme".into(),
                public_has_privileges: false,
                comment: Some(MARK.into()),
            }),
        }
    }

    fn redacted(plan: Vec<Statement>) -> Vec<String> {
        plan.into_iter().map(|s| s.redacted).collect()
    }

    #[test]
    fn fresh_server_gets_marked_role_database_and_revoke() {
        let observed = Observed {
            admin: admin(),
            ..Observed::default()
        };
        let plan = plan(&tenant(), &observed, &PasswordAction::Set("pw".into()));
        assert!(plan[0].sql.contains("SCRAM-SHA-256$"));
        assert!(
            !plan[0].sql.contains("'pw'"),
            "no plaintext password in SQL"
        );
        assert_eq!(
            redacted(plan),
            [
                "CREATE ROLE \"chat_acme\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD '***'; COMMENT ON ROLE \"chat_acme\" IS 'chorus.dev/tenant=tenants/acme'",
                "CREATE DATABASE \"chat_acme\" OWNER \"chat_acme\" ENCODING 'UTF8'",
                "COMMENT ON DATABASE \"chat_acme\" IS 'chorus.dev/tenant=tenants/acme'",
                "REVOKE ALL ON DATABASE \"chat_acme\" FROM PUBLIC",
            ]
        );
    }

    #[test]
    fn an_admin_without_superuser_joins_the_tenant_role_once() {
        let mut observed = Observed {
            admin: AdminRow {
                superuser: false,
                ..admin()
            },
            ..Observed::default()
        };
        let fresh = redacted(plan(&tenant(), &observed, &PasswordAction::Keep));
        assert_eq!(fresh[1], "GRANT \"chat_acme\" TO CURRENT_USER");
        assert!(fresh[2].starts_with("CREATE DATABASE"));
        observed.admin.member_of_tenant = true;
        observed.role = healthy().role;
        observed.database = healthy().database;
        assert!(plan(&tenant(), &observed, &PasswordAction::Keep).is_empty());
    }

    #[test]
    fn provisioned_tenant_plans_nothing() {
        assert!(plan(&tenant(), &healthy(), &PasswordAction::Keep).is_empty());
        assert_eq!(healthy().check_claim(&tenant()), Ok(()));
    }

    #[test]
    fn drift_is_repaired_naming_only_the_wrong_attributes() {
        let mut observed = healthy();
        observed.role = Some(RoleRow {
            createdb: true,
            connection_limit: 5,
            ..healthy_role()
        });
        observed.database = Some(DatabaseRow {
            owner: "postgres".into(),
            public_has_privileges: true,
            comment: Some(MARK.into()),
        });
        assert_eq!(
            redacted(plan(&tenant(), &observed, &PasswordAction::Keep)),
            [
                "ALTER ROLE \"chat_acme\" WITH NOCREATEDB CONNECTION LIMIT 50",
                "ALTER DATABASE \"chat_acme\" OWNER TO \"chat_acme\"",
                "REVOKE ALL ON DATABASE \"chat_acme\" FROM PUBLIC",
            ]
        );
    }

    #[test]
    fn a_database_created_without_its_mark_gets_it() {
        let mut observed = healthy();
        if let Some(d) = observed.database.as_mut() {
            d.comment = None;
        }
        assert_eq!(observed.check_claim(&tenant()), Ok(()));
        assert_eq!(
            redacted(plan(&tenant(), &observed, &PasswordAction::Keep)),
            ["COMMENT ON DATABASE \"chat_acme\" IS 'chorus.dev/tenant=tenants/acme'"]
        );
    }

    #[test]
    fn another_tenants_role_is_refused() {
        let mut observed = healthy();
        if let Some(r) = observed.role.as_mut() {
            r.comment = Some("chorus.dev/tenant=other/acme".into());
        }
        assert!(matches!(
            observed.check_claim(&tenant()),
            Err(ClaimError::OtherTenant { object: "role", .. })
        ));
    }

    #[test]
    fn rotation_sets_only_the_password() {
        let plan = plan(&tenant(), &healthy(), &PasswordAction::Set("new".into()));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].redacted, "ALTER ROLE \"chat_acme\" PASSWORD '***'");
    }
}
