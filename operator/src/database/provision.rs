//! Provisioning a tenant's role and database: observe the catalog, plan only
//! the DDL that is missing (pure), then execute it. A second run against a
//! provisioned tenant plans nothing.

use sqlx::{Connection, PgConnection, Row};

use super::{
    DatabaseError,
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
}

/// The role as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleRow {
    /// `rolcanlogin`.
    pub can_login: bool,
    /// Any of superuser, createdb, createrole, replication, bypassrls.
    pub privileged: bool,
    /// `rolconnlimit`.
    pub connection_limit: i32,
}

/// The database as the catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseRow {
    /// Owner role name.
    pub owner: String,
    /// True while PUBLIC holds any privilege on the database (including the
    /// implicit defaults when `datacl` is NULL).
    pub public_has_privileges: bool,
}

/// Catalog state for one tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The role, if it exists.
    pub role: Option<RoleRow>,
    /// The database, if it exists.
    pub database: Option<DatabaseRow>,
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

/// Plans the DDL that brings the server to what `db` needs. Pure.
pub fn plan(db: &TenantDatabase, observed: &Observed, password: &PasswordAction) -> Vec<Statement> {
    let name = db.name.quoted();
    let limit = db.connection_limit;
    let mut out = Vec::new();
    let verifier = match password {
        PasswordAction::Set(p) => Some(postgres_protocol::password::scram_sha_256(p.as_bytes())),
        PasswordAction::Keep => None,
    };
    match &observed.role {
        None => {
            let base =
                format!("CREATE ROLE {name} WITH {ROLE_ATTRIBUTES} CONNECTION LIMIT {limit}");
            out.push(match &verifier {
                Some(v) => Statement {
                    sql: format!("{base} PASSWORD {}", quote_literal(v)),
                    redacted: format!("{base} PASSWORD '***'"),
                },
                None => Statement::plain(base),
            });
        }
        Some(role) => {
            if !role.can_login || role.privileged || role.connection_limit != limit {
                out.push(Statement::plain(format!(
                    "ALTER ROLE {name} WITH {ROLE_ATTRIBUTES} CONNECTION LIMIT {limit}"
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
    match &observed.database {
        None => {
            out.push(Statement::plain(format!(
                "CREATE DATABASE {name} OWNER {name} ENCODING 'UTF8'"
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

/// Reads the catalog rows for the tenant.
pub async fn observe(conn: &mut PgConnection, name: &Ident) -> Result<Observed, DatabaseError> {
    let role = sqlx::query(
        "SELECT rolcanlogin, (rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls) AS privileged, rolconnlimit \
         FROM pg_roles WHERE rolname = $1",
    )
    .bind(name.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading pg_roles"))?
    .map(|row| -> Result<RoleRow, sqlx::Error> {
        Ok(RoleRow {
            can_login: row.try_get("rolcanlogin")?,
            privileged: row.try_get("privileged")?,
            connection_limit: row.try_get("rolconnlimit")?,
        })
    })
    .transpose()
    .map_err(DatabaseError::query("decoding pg_roles"))?;
    let database = sqlx::query(
        "SELECT pg_get_userbyid(datdba)::text AS owner, \
                (datacl IS NULL OR EXISTS (SELECT 1 FROM unnest(datacl) a WHERE a::text LIKE '=%')) AS public_privs \
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
        })
    })
    .transpose()
    .map_err(DatabaseError::query("decoding pg_database"))?;
    Ok(Observed { role, database })
}

/// Brings the server to what `db` needs, executing only missing DDL, then
/// makes sure PUBLIC has no rights on the database's `public` schema.
pub async fn ensure(
    server: &ServerConfig,
    db: &TenantDatabase,
    password: &PasswordAction,
) -> Result<EnsureOutcome, DatabaseError> {
    let mut conn = admin_connection(server).await?;
    let observed = observe(&mut conn, &db.name).await?;
    let mut statements = plan(db, &observed, password);
    // CREATE DATABASE ... OWNER needs the admin to be a member of the owner
    // role unless it is superuser.
    if observed.database.is_none() {
        let (is_super,): (bool,) =
            sqlx::query_as("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut conn)
                .await
                .map_err(DatabaseError::query("reading the admin role"))?;
        if !is_super {
            let at = statements
                .iter()
                .position(|s| s.sql.starts_with("CREATE DATABASE"))
                .unwrap_or(statements.len());
            statements.insert(
                at,
                Statement::plain(format!("GRANT {} TO CURRENT_USER", db.name.quoted())),
            );
        }
    }
    let mut outcome = EnsureOutcome {
        created_role: observed.role.is_none(),
        created_database: observed.database.is_none(),
        ..EnsureOutcome::default()
    };
    for st in &statements {
        sqlx::raw_sql(sqlx::AssertSqlSafe(st.sql.clone()))
            .execute(&mut conn)
            .await
            .map_err(|source| DatabaseError::Ddl {
                statement: st.redacted.clone(),
                source,
            })?;
        tracing::info!(statement = %st.redacted, "database DDL");
        outcome.executed.push(st.redacted.clone());
    }
    let _ = conn.close().await;

    // The public schema lives inside the tenant database: connect there.
    let mut tenant_conn =
        connect(&server.admin_options().database(db.name.as_str()), server).await?;
    let (public_schema_open,): (bool,) = sqlx::query_as(
        "SELECT nspacl IS NULL OR EXISTS (SELECT 1 FROM unnest(nspacl) a WHERE a::text LIKE '=%') \
         FROM pg_namespace WHERE nspname = 'public'",
    )
    .fetch_optional(&mut tenant_conn)
    .await
    .map_err(DatabaseError::query("reading schema public"))?
    .unwrap_or((false,));
    if public_schema_open {
        let sql = "REVOKE ALL ON SCHEMA public FROM PUBLIC";
        sqlx::raw_sql(sql)
            .execute(&mut tenant_conn)
            .await
            .map_err(|source| DatabaseError::Ddl {
                statement: sql.to_string(),
                source,
            })?;
        tracing::info!(statement = sql, database = %db.name, "database DDL");
        outcome.executed.push(format!("{sql} (in {})", db.name));
    }
    let _ = tenant_conn.close().await;
    Ok(outcome)
}

/// Whether the tenant role logs in with `password`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// The password works.
    Ok,
    /// The server refused the password (SQLSTATE 28P01): the Secret and the
    /// role disagree.
    PasswordMismatch,
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
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("28P01") => {
            Ok(LoginCheck::PasswordMismatch)
        }
        Ok(Err(source)) => Err(DatabaseError::Unreachable {
            server: format!("{}:{}", server.host, server.port),
            source,
        }),
        Err(_) => Err(DatabaseError::Timeout {
            server: format!("{}:{}", server.host, server.port),
        }),
    }
}

/// Terminates the tenant's sessions, drops its database, then its role.
/// Idempotent: missing objects are skipped.
pub async fn drop_tenant(
    server: &ServerConfig,
    name: &Ident,
) -> Result<Vec<String>, DatabaseError> {
    let mut conn = admin_connection(server).await?;
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
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&mut conn)
            .await
            .map_err(|source| DatabaseError::Ddl {
                statement: sql.clone(),
                source,
            })?;
        tracing::info!(statement = %sql, "database DDL");
        executed.push(sql);
    }
    let _ = conn.close().await;
    Ok(executed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantDatabase {
        TenantDatabase {
            name: Ident::new("chat_acme").unwrap(),
            connection_limit: 50,
        }
    }

    fn healthy() -> Observed {
        Observed {
            role: Some(RoleRow {
                can_login: true,
                privileged: false,
                connection_limit: 50,
            }),
            database: Some(DatabaseRow {
                owner: "chat_acme".into(),
                public_has_privileges: false,
            }),
        }
    }

    #[test]
    fn fresh_server_gets_role_database_and_revoke() {
        let plan = plan(
            &tenant(),
            &Observed::default(),
            &PasswordAction::Set("pw".into()),
        );
        let redacted: Vec<_> = plan.iter().map(|s| s.redacted.as_str()).collect();
        assert_eq!(
            redacted,
            [
                "CREATE ROLE \"chat_acme\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD '***'",
                "CREATE DATABASE \"chat_acme\" OWNER \"chat_acme\" ENCODING 'UTF8'",
                "REVOKE ALL ON DATABASE \"chat_acme\" FROM PUBLIC",
            ]
        );
        assert!(plan[0].sql.contains("SCRAM-SHA-256$"));
        assert!(
            !plan[0].sql.contains("'pw'"),
            "no plaintext password in SQL"
        );
    }

    #[test]
    fn provisioned_tenant_plans_nothing() {
        assert!(plan(&tenant(), &healthy(), &PasswordAction::Keep).is_empty());
    }

    #[test]
    fn drift_is_repaired() {
        let mut observed = healthy();
        observed.role = Some(RoleRow {
            can_login: true,
            privileged: true,
            connection_limit: 5,
        });
        observed.database = Some(DatabaseRow {
            owner: "postgres".into(),
            public_has_privileges: true,
        });
        let redacted: Vec<_> = plan(&tenant(), &observed, &PasswordAction::Keep)
            .into_iter()
            .map(|s| s.redacted)
            .collect();
        assert_eq!(
            redacted,
            [
                "ALTER ROLE \"chat_acme\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50",
                "ALTER DATABASE \"chat_acme\" OWNER TO \"chat_acme\"",
                "REVOKE ALL ON DATABASE \"chat_acme\" FROM PUBLIC",
            ]
        );
    }

    #[test]
    fn rotation_sets_only_the_password() {
        let plan = plan(&tenant(), &healthy(), &PasswordAction::Set("new".into()));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].redacted, "ALTER ROLE \"chat_acme\" PASSWORD '***'");
    }
}
