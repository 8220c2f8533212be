//! Provisioning a tenant's role and database: observe the catalog, plan only
//! the DDL that is missing (pure), then execute it. A second run against a
//! provisioned tenant plans nothing.

use sqlx::{Connection, PgConnection, Row};

use super::{
    DatabaseError,
    claim::{self, ClaimError, Existing, claim_comment},
    ident::{Ident, IdentError, quote_literal},
    pool::AdminPools,
    schema::{self, Shared},
    server::{CONNECT_TIMEOUT, ServerConfig},
};

/// What the tenant needs on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantDatabase {
    /// Database name (with [`Isolation::Schema`]: schema name); the owning
    /// role has the same name.
    pub name: Ident,
    /// `CONNECTION LIMIT` of the role.
    pub connection_limit: i32,
    /// The ChatTenant, `<namespace>/<name>`: role and database carry it as
    /// their ownership mark ([`claim`]).
    pub owner: String,
    /// A database of its own, or a schema in a shared database.
    pub isolation: Isolation,
}

/// Where the tenant's tables live (`spec.database.isolation`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Database `name`, owned by role `name`.
    Database,
    /// Schema `name`, owned by role `name`, in this database shared by the
    /// Schema tenants of the server ([`super::schema`]).
    Schema {
        /// The shared database.
        database: Ident,
        /// The role whose members may connect to it
        /// ([`super::schema::members_role`]).
        members: Ident,
    },
}

impl Isolation {
    /// Schema isolation in shared database `database`; refused when the
    /// name leaves no room for its members role.
    pub fn schema(database: Ident) -> Result<Self, IdentError> {
        let members = super::schema::members_role(&database)?;
        Ok(Self::Schema { database, members })
    }
}

impl TenantDatabase {
    /// The database the tenant's role connects to.
    pub fn database(&self) -> &Ident {
        match &self.isolation {
            Isolation::Database => &self.name,
            Isolation::Schema { database, .. } => database,
        }
    }

    /// The tenant's schema, with [`Isolation::Schema`].
    pub fn schema(&self) -> Option<&Ident> {
        match self.isolation {
            Isolation::Database => None,
            Isolation::Schema { .. } => Some(&self.name),
        }
    }
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
    /// `rolvaliduntil` as text (`None`: no expiry). Chorus roles never
    /// expire: anything but `None` or `infinity` is drift.
    pub valid_until: Option<String>,
    /// Whether the role has a password at all (`pg_authid.rolpassword`),
    /// when the admin may read it (superuser); `None` otherwise.
    pub has_password: Option<bool>,
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
    pub(super) fn plain(sql: String) -> Self {
        Self {
            redacted: sql.clone(),
            sql,
        }
    }
}

/// Whether this run must set the role's password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordAction {
    /// The Secret's password, which the role should already have: an
    /// existing role's password is left alone (a mismatch is reported, not
    /// silently fixed), but a role that does not exist yet is created with
    /// it, and a role with no password at all gets it. Once the Secret
    /// exists it is the source of truth, so a crash between writing the
    /// Secret and `CREATE ROLE` heals on the next run.
    Keep(String),
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
    .chain(
        role.valid_until
            .as_deref()
            .is_some_and(|v| v != "infinity")
            .then(|| "VALID UNTIL 'infinity'".to_string()),
    )
    .collect()
}

/// Plans the DDL that brings the server to what `db` needs. Pure. The caller
/// has checked the claim ([`Observed::check_claim`]).
pub fn plan(db: &TenantDatabase, observed: &Observed, password: &PasswordAction) -> Vec<Statement> {
    let name = db.name.quoted();
    let mark = quote_literal(&claim_comment(&db.owner));
    let mut out = plan_role(db, observed.role.as_ref(), password);
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

/// The DDL of the tenant's role: created marked, with the password when
/// missing; otherwise only its drift and the password when one must be set.
/// Pure.
pub(super) fn plan_role(
    db: &TenantDatabase,
    role: Option<&RoleRow>,
    password: &PasswordAction,
) -> Vec<Statement> {
    let name = db.name.quoted();
    let limit = db.connection_limit;
    let mark = quote_literal(&claim_comment(&db.owner));
    let mut out = Vec::new();
    let scram = |p: &str| postgres_protocol::password::scram_sha_256(p.as_bytes());
    let verifier = match (password, role) {
        (PasswordAction::Set(p), _) => Some(scram(p)),
        // The Secret already holds this password: a role created now, or
        // one with no password at all, gets it.
        (PasswordAction::Keep(p), None) => Some(scram(p)),
        (PasswordAction::Keep(p), Some(r)) if r.has_password == Some(false) => Some(scram(p)),
        (PasswordAction::Keep(_), Some(_)) => None,
    };
    match role {
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
    out
}

/// What [`ensure`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnsureOutcome {
    /// Statements executed (redacted), in order; empty when nothing changed.
    pub executed: Vec<String>,
    /// True when the role was created by this run.
    pub created_role: bool,
    /// True when the database (with Schema isolation: the schema) was
    /// created by this run.
    pub created_database: bool,
}

pub(super) async fn connect(
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

/// The SQL of "does role `r` have a password": `pg_authid` is readable only
/// by a superuser (a query naming it fails for anyone else, even in a branch
/// not taken), so otherwise the answer is unknown.
fn has_password_column(superuser: bool) -> &'static str {
    if superuser {
        "(SELECT a.rolpassword IS NOT NULL FROM pg_authid a WHERE a.oid = r.oid)"
    } else {
        "NULL::bool"
    }
}

/// Reads the catalog rows for the tenant and the admin login.
pub async fn observe(conn: &mut PgConnection, name: &Ident) -> Result<Observed, DatabaseError> {
    let (admin, role) = observe_role(conn, name).await?;
    let database = observe_database(conn, name).await?;
    Ok(Observed {
        admin,
        role,
        database,
    })
}

/// Reads the admin login and role `name` (shared catalogs: any database).
pub(super) async fn observe_role(
    conn: &mut PgConnection,
    name: &Ident,
) -> Result<(AdminRow, Option<RoleRow>), DatabaseError> {
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
    // Only a superuser may read pg_authid: otherwise whether the role has a
    // password at all stays unknown (NULL).
    let role = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, \
                rolconnlimit, rolvaliduntil::text AS valid_until, {} AS has_password, \
                shobj_description(oid, 'pg_authid') AS comment \
         FROM pg_roles r WHERE rolname = $1",
        has_password_column(admin.superuser)
    )))
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
            valid_until: row.try_get("valid_until")?,
            has_password: row.try_get("has_password")?,
            comment: row.try_get("comment")?,
        })
    })
    .transpose()
    .map_err(DatabaseError::query("decoding pg_roles"))?;
    Ok((admin, role))
}

/// Reads database `name`'s row.
pub(super) async fn observe_database(
    conn: &mut PgConnection,
    name: &Ident,
) -> Result<Option<DatabaseRow>, DatabaseError> {
    sqlx::query(
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
    .map_err(DatabaseError::query("decoding pg_database"))
}

/// Checks, without changing anything, that the tenant may use its role and
/// database ([`claim`]). Run before the first `<name>-db` Secret is written,
/// so a refused name leaves no Secret behind. One admin connection of
/// `pools`.
pub async fn check_claim(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
) -> Result<(), DatabaseError> {
    if let Some(shared) = Shared::of(db) {
        return schema::check_claim(pools, server, db, shared).await;
    }
    let mut conn = pools.acquire(server).await?;
    let observed = observe(&mut conn, &db.name).await?;
    Ok(observed.check_claim(db)?)
}

pub(super) async fn execute(conn: &mut PgConnection, st: &Statement) -> Result<(), DatabaseError> {
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

/// Brings the server to what `db` needs, executing only missing DDL, on one
/// admin connection of `pools`; a database created now also gets its
/// `public` schema closed ([`secure_public_schema`]; later drift of that
/// schema is found by [`check_login`] from inside the database). Refuses,
/// before any DDL, a role or database that is not this tenant's ([`claim`]).
pub async fn ensure(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
    password: &PasswordAction,
) -> Result<EnsureOutcome, DatabaseError> {
    if let Some(shared) = Shared::of(db) {
        return schema::ensure(pools, server, db, shared, password).await;
    }
    let mut conn = pools.acquire(server).await?;
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
    drop(conn);
    if outcome.created_database {
        outcome
            .executed
            .extend(secure_public_schema(server, db).await?);
    }
    Ok(outcome)
}

/// The SQL of "is schema `public` open to PUBLIC, and is its owner wrong",
/// readable by any role connected to the database.
const PUBLIC_SCHEMA_STATE: &str = "SELECT nspacl IS NULL OR EXISTS (SELECT 1 FROM unnest(nspacl) a WHERE a::text LIKE '=%'), \
            pg_get_userbyid(nspowner) IN ('pg_database_owner', $1) \
     FROM pg_namespace WHERE nspname = 'public'";

/// Whether schema `public` needs [`secure_public_schema`], read on a
/// connection inside the tenant's database.
async fn public_schema_drift(
    conn: &mut PgConnection,
    db: &TenantDatabase,
) -> Result<bool, DatabaseError> {
    let (open, owner_ok): (bool, bool) = sqlx::query_as(PUBLIC_SCHEMA_STATE)
        .bind(db.name.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(DatabaseError::query("reading schema public"))?
        .unwrap_or((false, true));
    Ok(open || !owner_ok)
}

/// Makes sure PUBLIC has no rights on the database's `public` schema and the
/// tenant role owns it, as the admin inside the tenant's database (a
/// connection of its own: the pool's are to `postgres`). Returns the
/// statements executed.
pub async fn secure_public_schema(
    server: &ServerConfig,
    db: &TenantDatabase,
) -> Result<Vec<String>, DatabaseError> {
    let mut tenant_conn =
        connect(&server.admin_options().database(db.name.as_str()), server).await?;
    let (public_schema_open, owner_ok): (bool, bool) = sqlx::query_as(PUBLIC_SCHEMA_STATE)
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
    let mut executed = Vec::new();
    for sql in schema_statements.into_iter().flatten() {
        execute(&mut tenant_conn, &Statement::plain(sql.clone())).await?;
        executed.push(format!("{sql} (in {})", db.name));
    }
    let _ = tenant_conn.close().await;
    Ok(executed)
}

/// Whether the tenant role logs in with `password`, and if not, why: the
/// role's state is read before the password is blamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginCheck {
    /// The password works (including when every connection the role may
    /// open is in use: the role's own limit, SQLSTATE 53300, is checked after
    /// authentication).
    Ok,
    /// The server refused the password (SQLSTATE 28P01) and nothing about
    /// the role explains it: the Secret and the role disagree.
    PasswordMismatch,
    /// The role's password expired (`VALID UNTIL` in the past).
    PasswordExpired {
        /// `rolvaliduntil`.
        valid_until: String,
    },
    /// The role has no password at all.
    NoPassword,
    /// The role does not exist.
    RoleMissing,
    /// The role has `NOLOGIN`.
    LoginDisabled,
    /// The role may not connect to its database (SQLSTATE 42501: it lost
    /// ownership or CONNECT).
    NoConnectPrivilege {
        /// The database's owner now.
        owner: String,
    },
    /// The server has no free connection slot for the role (SQLSTATE 53300
    /// while the role is below its own limit): pods cannot connect either.
    ServerFull(String),
    /// The server refused the login for another reason (pg_hba.conf,
    /// SQLSTATE 28000).
    Refused(String),
}

/// The role's state, read with the admin login after a failed login.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginRoleState {
    /// `rolcanlogin`.
    pub can_login: bool,
    /// `rolconnlimit` (-1: none).
    pub connection_limit: i32,
    /// Sessions the role has open now.
    pub sessions: i64,
    /// `rolvaliduntil`, when in the past.
    pub expired: Option<String>,
    /// Whether the role has a password (`None`: not readable).
    pub has_password: Option<bool>,
    /// Whether the role may connect to its database (`None`: no database).
    pub can_connect: Option<bool>,
    /// The database's owner.
    pub owner: Option<String>,
}

/// Classifies a failed login by SQLSTATE and the role's state (`None`: the
/// role does not exist), never by message text alone. Pure.
///
/// SQLSTATE 53300 (too_many_connections) has several causes, told apart by
/// PostgreSQL's message (English unless the server's `lc_messages` says
/// otherwise) and the role's state. Only the role's own `CONNECTION LIMIT`
/// is checked after authentication ("too many connections for role"): the
/// password worked. "sorry, too many clients already" comes before
/// authentication and "remaining connection slots are reserved" means the
/// pods cannot get in either: the server is full, whatever the role's
/// sessions. A message in another language falls back to the role's state:
/// at its limit means its own limit.
pub fn classify_login(code: &str, message: &str, role: Option<&LoginRoleState>) -> LoginCheck {
    let Some(r) = role else {
        return match code {
            "53300" => LoginCheck::ServerFull(message.to_string()),
            _ => LoginCheck::RoleMissing,
        };
    };
    let role_limit = message.contains("too many connections for role");
    let server_full = [
        "too many clients",
        "connection slots are reserved",
        "for database",
    ]
    .iter()
    .any(|m| message.contains(m));
    let at_limit = r.connection_limit >= 0 && r.sessions >= i64::from(r.connection_limit);
    match code {
        "53300" if role_limit || (!server_full && at_limit) => LoginCheck::Ok,
        "53300" => LoginCheck::ServerFull(message.to_string()),
        _ if !r.can_login => LoginCheck::LoginDisabled,
        "28P01" => match (&r.expired, r.has_password) {
            (Some(until), _) => LoginCheck::PasswordExpired {
                valid_until: until.clone(),
            },
            (None, Some(false)) => LoginCheck::NoPassword,
            _ => LoginCheck::PasswordMismatch,
        },
        "42501" if r.can_connect == Some(false) => LoginCheck::NoConnectPrivilege {
            owner: r.owner.clone().unwrap_or_default(),
        },
        _ => LoginCheck::Refused(message.to_string()),
    }
}

/// Reads the tenant role's state for [`classify_login`].
async fn login_role_state(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
) -> Result<Option<LoginRoleState>, DatabaseError> {
    let mut conn = pools.acquire(server).await?;
    let admin = observe(&mut conn, &db.name).await?.admin;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT r.rolcanlogin, r.rolconnlimit, \
                (SELECT count(*) FROM pg_stat_activity a WHERE a.usename = r.rolname) AS sessions, \
                CASE WHEN r.rolvaliduntil < now() THEN r.rolvaliduntil::text END AS expired, \
                {} AS has_password, \
                (SELECT has_database_privilege(r.oid, d.oid, 'CONNECT') FROM pg_database d WHERE d.datname = $2) AS can_connect, \
                (SELECT pg_get_userbyid(d.datdba)::text FROM pg_database d WHERE d.datname = $2) AS owner \
         FROM pg_roles r WHERE r.rolname = $1",
        has_password_column(admin.superuser)
    )))
    .bind(db.name.as_str())
    .bind(db.database().as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading the tenant role after a failed login"))?;
    drop(conn);
    row.map(|row| -> Result<LoginRoleState, sqlx::Error> {
        Ok(LoginRoleState {
            can_login: row.try_get("rolcanlogin")?,
            connection_limit: row.try_get("rolconnlimit")?,
            sessions: row.try_get("sessions")?,
            expired: row.try_get("expired")?,
            has_password: row.try_get("has_password")?,
            can_connect: row.try_get("can_connect")?,
            owner: row.try_get("owner")?,
        })
    })
    .transpose()
    .map_err(DatabaseError::query("decoding the tenant role"))
}

/// Logs in as the tenant role to its database with the Secret's password;
/// a refusal is explained from the role's state ([`classify_login`], read
/// on an admin connection of `pools`). A login that works also checks, from
/// inside the database, that schema `public` is still closed, and closes it
/// again when someone opened it ([`secure_public_schema`]).
pub async fn check_login(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
    password: &str,
) -> Result<LoginCheck, DatabaseError> {
    let options = server.tenant_options(&db.name, password, db.database());
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) if db.schema().is_some() => {
            // Schema `public` of the shared database is checked by `ensure`.
            let _ = conn.close().await;
            Ok(LoginCheck::Ok)
        }
        Ok(Ok(mut conn)) => {
            let drift = public_schema_drift(&mut conn, db).await;
            let _ = conn.close().await;
            if drift? {
                for statement in secure_public_schema(server, db).await? {
                    tracing::info!(%statement, "repaired schema public");
                }
            }
            Ok(LoginCheck::Ok)
        }
        Ok(Err(sqlx::Error::Database(e)))
            if matches!(
                e.code().as_deref(),
                Some("28P01" | "28000" | "42501" | "53300")
            ) =>
        {
            let code = e.code().unwrap_or_default().to_string();
            let state = match login_role_state(pools, server, db).await {
                Ok(state) => state,
                // The admin cannot get in either: the server is full.
                Err(_) if code == "53300" => {
                    return Ok(LoginCheck::ServerFull(e.message().to_string()));
                }
                Err(err) => return Err(err),
            };
            Ok(classify_login(&code, e.message(), state.as_ref()))
        }
        Ok(Err(sqlx::Error::Database(e))) => Err(DatabaseError::Unreachable {
            server: format!("{}:{}", server.host, server.port),
            source: sqlx::Error::Database(e),
        }),
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
/// both are this tenant's. Idempotent: missing objects are skipped. With
/// Schema isolation: [`schema::drop_tenant`].
pub async fn drop_tenant(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
) -> Result<DropOutcome, DatabaseError> {
    if let Some(shared) = Shared::of(db) {
        return schema::drop_tenant(pools, server, db, shared).await;
    }
    let mut conn = pools.acquire(server).await?;
    let observed = observe(&mut conn, &db.name).await?;
    if let Err(e) = observed.check_claim(db) {
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
    .execute(&mut *conn)
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
    drop(conn);
    Ok(DropOutcome {
        executed,
        left_alone: None,
    })
}

#[cfg(test)]
pub(in crate::database) mod tests {
    use super::*;

    const MARK: &str = "chorus.dev/tenant=tenants/acme";

    fn tenant() -> TenantDatabase {
        TenantDatabase {
            name: Ident::new("chat_acme").unwrap(),
            connection_limit: 50,
            owner: "tenants/acme".into(),
            isolation: Isolation::Database,
        }
    }

    /// A superuser admin that is not a member of the tenant role.
    pub(in crate::database) fn admin() -> AdminRow {
        AdminRow {
            name: "postgres".into(),
            superuser: true,
            member_of_tenant: false,
        }
    }

    /// The tenant role as the operator leaves it.
    pub(in crate::database) fn healthy_role() -> RoleRow {
        RoleRow {
            can_login: true,
            superuser: false,
            createdb: false,
            createrole: false,
            replication: false,
            bypassrls: false,
            connection_limit: 50,
            valid_until: None,
            has_password: Some(true),
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
        let fresh = redacted(plan(
            &tenant(),
            &observed,
            &PasswordAction::Keep("pw".into()),
        ));
        assert_eq!(fresh[1], "GRANT \"chat_acme\" TO CURRENT_USER");
        assert!(fresh[2].starts_with("CREATE DATABASE"));
        observed.admin.member_of_tenant = true;
        observed.role = healthy().role;
        observed.database = healthy().database;
        assert!(plan(&tenant(), &observed, &PasswordAction::Keep("pw".into())).is_empty());
    }

    #[test]
    fn provisioned_tenant_plans_nothing() {
        assert!(plan(&tenant(), &healthy(), &PasswordAction::Keep("pw".into())).is_empty());
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
            redacted(plan(
                &tenant(),
                &observed,
                &PasswordAction::Keep("pw".into())
            )),
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
            redacted(plan(
                &tenant(),
                &observed,
                &PasswordAction::Keep("pw".into())
            )),
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
    fn an_expiry_set_by_hand_is_repaired() {
        let mut observed = healthy();
        for until in ["2000-01-01 00:00:00+00", "2999-01-01 00:00:00+00"] {
            if let Some(r) = observed.role.as_mut() {
                r.valid_until = Some(until.into());
            }
            assert_eq!(
                redacted(plan(
                    &tenant(),
                    &observed,
                    &PasswordAction::Keep("pw".into())
                )),
                ["ALTER ROLE \"chat_acme\" WITH VALID UNTIL 'infinity'"]
            );
        }
        if let Some(r) = observed.role.as_mut() {
            r.valid_until = Some("infinity".into());
        }
        assert!(plan(&tenant(), &observed, &PasswordAction::Keep("pw".into())).is_empty());
    }

    #[test]
    fn a_missing_role_is_created_with_the_secrets_password() {
        // A crash between writing `<name>-db` and CREATE ROLE.
        let observed = Observed {
            admin: admin(),
            ..Observed::default()
        };
        let plan = plan(
            &tenant(),
            &observed,
            &PasswordAction::Keep("from-secret".into()),
        );
        assert!(plan[0].sql.starts_with("CREATE ROLE"));
        assert!(
            plan[0].sql.contains("PASSWORD 'SCRAM-SHA-256$"),
            "{}",
            plan[0].redacted
        );
    }

    #[test]
    fn a_role_without_any_password_gets_the_secrets() {
        let mut observed = healthy();
        if let Some(r) = observed.role.as_mut() {
            r.has_password = Some(false);
        }
        assert_eq!(
            redacted(plan(
                &tenant(),
                &observed,
                &PasswordAction::Keep("pw".into())
            )),
            ["ALTER ROLE \"chat_acme\" PASSWORD '***'"]
        );
        // Unknown (not superuser): left alone.
        if let Some(r) = observed.role.as_mut() {
            r.has_password = None;
        }
        assert!(plan(&tenant(), &observed, &PasswordAction::Keep("pw".into())).is_empty());
    }

    #[test]
    fn failed_logins_are_classified_by_sqlstate_and_role_state() {
        let ok = LoginRoleState {
            can_login: true,
            connection_limit: 5,
            sessions: 0,
            expired: None,
            has_password: Some(true),
            can_connect: Some(true),
            owner: Some("chat_acme".into()),
        };
        let with = |f: fn(&mut LoginRoleState)| {
            let mut r = ok.clone();
            f(&mut r);
            r
        };
        let cases: Vec<(&str, Option<LoginRoleState>, LoginCheck)> = vec![
            ("28P01", Some(ok.clone()), LoginCheck::PasswordMismatch),
            (
                "28P01",
                Some(with(|r| r.expired = Some("2000-01-01 00:00:00+00".into()))),
                LoginCheck::PasswordExpired {
                    valid_until: "2000-01-01 00:00:00+00".into(),
                },
            ),
            (
                "28P01",
                Some(with(|r| r.has_password = Some(false))),
                LoginCheck::NoPassword,
            ),
            ("28P01", None, LoginCheck::RoleMissing),
            (
                "28000",
                Some(with(|r| r.can_login = false)),
                LoginCheck::LoginDisabled,
            ),
            ("28000", Some(ok.clone()), LoginCheck::Refused("m".into())),
            (
                "42501",
                Some(with(|r| {
                    r.can_connect = Some(false);
                    r.owner = Some("postgres".into());
                })),
                LoginCheck::NoConnectPrivilege {
                    owner: "postgres".into(),
                },
            ),
            // The role's own limit: the password worked.
            ("53300", Some(with(|r| r.sessions = 5)), LoginCheck::Ok),
            (
                "53300",
                Some(with(|r| r.connection_limit = 0)),
                LoginCheck::Ok,
            ),
            // Below its limit (or unlimited): the server is full.
            (
                "53300",
                Some(ok.clone()),
                LoginCheck::ServerFull("m".into()),
            ),
            (
                "53300",
                Some(with(|r| r.connection_limit = -1)),
                LoginCheck::ServerFull("m".into()),
            ),
        ];
        for (code, state, want) in cases {
            assert_eq!(
                classify_login(code, "m", state.as_ref()),
                want,
                "{code} {state:?}"
            );
        }
    }

    #[test]
    fn too_many_connections_is_told_apart_by_message_then_role_state() {
        let at_limit = LoginRoleState {
            can_login: true,
            connection_limit: 1,
            sessions: 1,
            ..LoginRoleState::default()
        };
        let below = LoginRoleState {
            sessions: 0,
            ..at_limit.clone()
        };
        let full = "sorry, too many clients already";
        let reserved =
            "remaining connection slots are reserved for roles with the SUPERUSER attribute";
        let own = "too many connections for role \"chat_acme\"";
        let other_language = "zu viele Verbindungen";
        let server_full = |m: &str| LoginCheck::ServerFull(m.into());
        let cases = [
            // Its own limit, even when the sessions were counted after one
            // of them ended.
            (own, &below, LoginCheck::Ok),
            (own, &at_limit, LoginCheck::Ok),
            // A full server is not a working login, even when the role
            // happens to be at its limit too.
            (full, &at_limit, server_full(full)),
            (full, &below, server_full(full)),
            (reserved, &at_limit, server_full(reserved)),
            // Unknown wording: the role's state decides.
            (other_language, &at_limit, LoginCheck::Ok),
            (other_language, &below, server_full(other_language)),
        ];
        for (message, state, want) in cases {
            assert_eq!(
                classify_login("53300", message, Some(state)),
                want,
                "{message} {state:?}"
            );
        }
    }

    #[test]
    fn rotation_sets_only_the_password() {
        let plan = plan(&tenant(), &healthy(), &PasswordAction::Set("new".into()));
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].redacted, "ALTER ROLE \"chat_acme\" PASSWORD '***'");
    }
}
