//! Schema isolation (`spec.database.isolation: Schema`): the tenant's role
//! owns a schema of its own, named like the role, in a database shared by
//! the Schema tenants of the server; a tenant costs a role and a schema
//! instead of a database (about 8 MB of catalog each).
//!
//! The shared database (default `chorus_tenants`) belongs to the admin. It is
//! marked `chorus.dev/shared-database`, PUBLIC has no privilege on it, and
//! only the members of role `<database>_members` (marked
//! `chorus.dev/shared-database-members=<database>`) may connect: one
//! `CONNECT` grant to that role instead of one per tenant keeps the
//! database's ACL small and its row free of concurrent updates. In it,
//! PUBLIC has no privilege on schema `public`, which holds only what the
//! admin installs (the `pg_trgm` extension when the server has it, so
//! tenants get trigram search indexes); the members may use it, nobody but
//! the admin may create in it. Each tenant role:
//!
//! - is a member of `<database>_members` (and nothing else);
//! - owns schema `<name>`, marked like its role (`chorus.dev/tenant=...`);
//!   nobody else has a privilege on it, so no tenant reads another's tables;
//! - has `search_path = "<name>", public` in the shared database
//!   (`ALTER ROLE .. IN DATABASE .. SET`): the runtime's unqualified tables,
//!   including sqlx's `_sqlx_migrations`, land in its schema;
//! - has no `CREATE` or `TEMPORARY` on the database: it cannot make other
//!   schemas or install extensions that would be visible to every tenant.
//!
//! As in [`super::provision`], each reconcile observes the catalog and plans
//! only missing DDL (pure functions here), so a provisioned tenant issues
//! none. The shared objects are set up by the first tenant that needs them,
//! one reconcile at a time in this process.

use sqlx::{PgConnection, Row};
use tokio::sync::Mutex;

use super::{
    DatabaseError,
    claim::{
        self, ClaimError, MEMBERS_MARK_PREFIX, SHARED_DATABASE_MARK, claim_comment, claimed_by,
    },
    ident::{Ident, IdentError, quote_literal},
    pool::AdminPools,
    provision::{
        AdminRow, DatabaseRow, DropOutcome, EnsureOutcome, Isolation, PasswordAction, RoleRow,
        Statement, TenantDatabase, execute, observe_database, observe_role, plan_role,
    },
    server::ServerConfig,
};

/// The role whose members may connect to shared database `database`:
/// `<database>_members`.
pub fn members_role(database: &Ident) -> Result<Ident, IdentError> {
    Ident::new(&format!("{database}_members"))
}

/// The shared database and its members role of a Schema tenant.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a> {
    /// The shared database.
    pub database: &'a Ident,
    /// Its members role ([`members_role`]).
    pub members: &'a Ident,
}

impl<'a> Shared<'a> {
    /// The shared objects of `db`, when it has Schema isolation.
    pub fn of(db: &'a TenantDatabase) -> Option<Self> {
        match &db.isolation {
            Isolation::Database => None,
            Isolation::Schema { database, members } => Some(Self { database, members }),
        }
    }
}

/// Server-wide catalog state for a Schema tenant, read on an admin
/// connection to any database (these catalogs are shared).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerObserved {
    /// The operator's own login.
    pub admin: AdminRow,
    /// The tenant role, if it exists.
    pub role: Option<RoleRow>,
    /// The shared database, if it exists.
    pub database: Option<DatabaseRow>,
    /// The members role's comment, if the role exists (`Some(None)`: it
    /// exists without a comment).
    pub members: Option<Option<String>>,
    /// The members role holds `CONNECT` on the shared database (explicitly:
    /// not through PUBLIC).
    pub members_can_connect: bool,
    /// The tenant role is a member of the members role.
    pub tenant_is_member: bool,
    /// The tenant role's `search_path` in the shared database is
    /// `"<name>", public`.
    pub search_path_set: bool,
}

/// The tenant's schema as the shared database's catalog shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaRow {
    /// Owner role name.
    pub owner: String,
    /// The schema's comment (the ownership mark).
    pub comment: Option<String>,
    /// PUBLIC holds a privilege on it.
    pub public_has_privileges: bool,
}

/// State inside the shared database, read on an admin connection to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SchemaObserved {
    /// The tenant's schema, if it exists.
    pub schema: Option<SchemaRow>,
    /// PUBLIC holds a privilege on schema `public`.
    pub public_open: bool,
    /// The members role holds `USAGE` on schema `public`.
    pub members_use_public: bool,
    /// `pg_trgm` is installed in the shared database.
    pub trgm_installed: bool,
    /// `pg_trgm` can be installed (its files are on the server).
    pub trgm_available: bool,
}

impl ServerObserved {
    /// Whether the tenant may use its role, and the shared database and
    /// members role are the operator's ([`claim`]).
    pub fn check_claim(&self, db: &TenantDatabase, shared: Shared<'_>) -> Result<(), ClaimError> {
        let name = db.name.as_str();
        if name == self.admin.name {
            return Err(ClaimError::AdminRole { name: name.into() });
        }
        if db.name == *shared.members {
            return Err(ClaimError::Shared {
                object: "role",
                name: name.into(),
            });
        }
        if let Some(r) = &self.role
            && claimed_by(r.comment.as_deref()) != Some(db.owner.as_str())
        {
            return Err(claim::refusal(
                "role",
                name,
                &db.owner,
                r.comment.as_deref(),
                "SCHEMA",
            ));
        }
        let not_shared =
            |object: &'static str, name: &Ident, comment: Option<&str>, mark: String| {
                ClaimError::NotShared {
                    object,
                    name: name.to_string(),
                    what: match claimed_by(comment) {
                        Some(holder) => format!("belongs to ChatTenant {holder}"),
                        None => "was not created by Chorus for Schema tenants".into(),
                    },
                    mark,
                }
            };
        if let Some(d) = &self.database
            && d.comment.as_deref() != Some(SHARED_DATABASE_MARK)
        {
            return Err(not_shared(
                "database",
                shared.database,
                d.comment.as_deref(),
                SHARED_DATABASE_MARK.into(),
            ));
        }
        let members_mark = members_mark(shared.database);
        if let Some(comment) = &self.members
            && comment.as_deref() != Some(members_mark.as_str())
        {
            return Err(not_shared(
                "role",
                shared.members,
                comment.as_deref(),
                members_mark,
            ));
        }
        Ok(())
    }
}

impl SchemaObserved {
    /// Whether the tenant may use schema `<name>`: free, marked as its own,
    /// or unmarked and owned by its role (the operator stopped between
    /// `CREATE SCHEMA` and its comment; both run in one transaction, so
    /// only a hand-made schema is unmarked).
    pub fn check_claim(&self, db: &TenantDatabase) -> Result<(), ClaimError> {
        match &self.schema {
            None => Ok(()),
            Some(s) if claimed_by(s.comment.as_deref()) == Some(db.owner.as_str()) => Ok(()),
            Some(s) if s.comment.is_none() && s.owner == db.name.as_str() => Ok(()),
            Some(s) => Err(claim::refusal(
                "schema",
                db.name.as_str(),
                &db.owner,
                s.comment.as_deref(),
                "SCHEMA",
            )),
        }
    }
}

fn members_mark(database: &Ident) -> String {
    format!("{MEMBERS_MARK_PREFIX}{database}")
}

/// The `pg_db_role_setting` entry `search_path = "<name>", public` is stored
/// as: each element as `quote_ident` writes it, joined by `, `.
const SEARCH_PATH_SETTING: &str = "'search_path=' || quote_ident($1) || ', public'";

/// The statements that set up the shared database and its members role,
/// when missing. Pure. Run on a connection to `postgres`.
pub fn plan_shared(shared: Shared<'_>, observed: &ServerObserved) -> Vec<Statement> {
    let (db, members) = (shared.database.quoted(), shared.members.quoted());
    let mut out = Vec::new();
    if observed.members.is_none() {
        out.push(Statement::plain(format!(
            "CREATE ROLE {members} WITH NOLOGIN; COMMENT ON ROLE {members} IS {}",
            quote_literal(&members_mark(shared.database))
        )));
    }
    match &observed.database {
        None => {
            // Owned by the admin; CREATE DATABASE cannot share a transaction.
            out.push(Statement::plain(format!(
                "CREATE DATABASE {db} ENCODING 'UTF8'"
            )));
            out.push(Statement::plain(format!(
                "COMMENT ON DATABASE {db} IS {}",
                quote_literal(SHARED_DATABASE_MARK)
            )));
            out.push(Statement::plain(format!(
                "REVOKE ALL ON DATABASE {db} FROM PUBLIC"
            )));
        }
        Some(d) if d.public_has_privileges => out.push(Statement::plain(format!(
            "REVOKE ALL ON DATABASE {db} FROM PUBLIC"
        ))),
        Some(_) => {}
    }
    if !observed.members_can_connect {
        out.push(Statement::plain(format!(
            "GRANT CONNECT ON DATABASE {db} TO {members}"
        )));
    }
    out
}

/// The tenant's own server-wide DDL: its role, the admin's membership in it
/// (without superuser, to create its schema and drop what it owns), its
/// membership in the members role and its `search_path`. Pure. Run after
/// [`plan_shared`], on a connection to `postgres`.
pub fn plan_tenant(
    db: &TenantDatabase,
    shared: Shared<'_>,
    observed: &ServerObserved,
    password: &PasswordAction,
) -> Vec<Statement> {
    let name = db.name.quoted();
    let mut out = plan_role(db, observed.role.as_ref(), password);
    if !observed.admin.superuser && !observed.admin.member_of_tenant {
        out.push(Statement::plain(format!("GRANT {name} TO CURRENT_USER")));
    }
    if !observed.tenant_is_member {
        out.push(Statement::plain(format!(
            "GRANT {} TO {name}",
            shared.members.quoted()
        )));
    }
    if !observed.search_path_set {
        out.push(Statement::plain(format!(
            "ALTER ROLE {name} IN DATABASE {} SET search_path = {name}, public",
            shared.database.quoted()
        )));
    }
    out
}

/// Inside the shared database, shared by every tenant: schema `public`
/// closed to PUBLIC and usable by the members. Pure. `pg_trgm` is planned
/// apart ([`plan_trgm`]): it is optional.
pub fn plan_shared_schema(shared: Shared<'_>, observed: &SchemaObserved) -> Vec<Statement> {
    let mut out = Vec::new();
    if observed.public_open {
        out.push(Statement::plain(
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".into(),
        ));
    }
    if !observed.members_use_public {
        out.push(Statement::plain(format!(
            "GRANT USAGE ON SCHEMA public TO {}",
            shared.members.quoted()
        )));
    }
    out
}

/// `pg_trgm` in schema `public` of the shared database, when the server has
/// it and it is not installed: tenants cannot install it themselves (no
/// `CREATE` on the database), and one tenant's copy would be every
/// tenant's. Pure.
pub fn plan_trgm(observed: &SchemaObserved) -> Option<Statement> {
    (!observed.trgm_installed && observed.trgm_available).then(|| {
        Statement::plain("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public".into())
    })
}

/// The tenant's schema: created owned by its role and marked, in one
/// transaction; otherwise its owner, mark and PUBLIC's privileges repaired.
/// Pure. The caller checked [`SchemaObserved::check_claim`].
pub fn plan_schema(db: &TenantDatabase, observed: &SchemaObserved) -> Vec<Statement> {
    let name = db.name.quoted();
    let mark = quote_literal(&claim_comment(&db.owner));
    let mut out = Vec::new();
    match &observed.schema {
        None => out.push(Statement::plain(format!(
            "CREATE SCHEMA {name} AUTHORIZATION {name}; COMMENT ON SCHEMA {name} IS {mark}"
        ))),
        Some(s) => {
            if s.owner != db.name.as_str() {
                out.push(Statement::plain(format!(
                    "ALTER SCHEMA {name} OWNER TO {name}"
                )));
            }
            if claimed_by(s.comment.as_deref()) != Some(db.owner.as_str()) {
                out.push(Statement::plain(format!(
                    "COMMENT ON SCHEMA {name} IS {mark}"
                )));
            }
            if s.public_has_privileges {
                out.push(Statement::plain(format!(
                    "REVOKE ALL ON SCHEMA {name} FROM PUBLIC"
                )));
            }
        }
    }
    out
}

/// Reads [`ServerObserved`].
pub async fn observe_server(
    conn: &mut PgConnection,
    db: &TenantDatabase,
    shared: Shared<'_>,
) -> Result<ServerObserved, DatabaseError> {
    let (admin, role) = observe_role(conn, &db.name).await?;
    let database = observe_database(conn, shared.database).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT \
           EXISTS (SELECT 1 FROM pg_roles m WHERE m.rolname = $2) AS members_exists, \
           (SELECT shobj_description(m.oid, 'pg_authid') FROM pg_roles m WHERE m.rolname = $2) AS members_comment, \
           EXISTS (SELECT 1 FROM pg_database d, aclexplode(d.datacl) a JOIN pg_roles m ON m.oid = a.grantee \
                   WHERE d.datname = $3 AND m.rolname = $2 AND a.privilege_type = 'CONNECT') AS members_connect, \
           EXISTS (SELECT 1 FROM pg_auth_members am JOIN pg_roles m ON m.oid = am.roleid JOIN pg_roles r ON r.oid = am.member \
                   WHERE m.rolname = $2 AND r.rolname = $1) AS tenant_is_member, \
           EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole \
                   JOIN pg_database d ON d.oid = s.setdatabase, unnest(s.setconfig) c \
                   WHERE r.rolname = $1 AND d.datname = $3 AND c = {SEARCH_PATH_SETTING}) AS search_path_set"
    )))
    .bind(db.name.as_str())
    .bind(shared.members.as_str())
    .bind(shared.database.as_str())
    .fetch_one(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading the shared database's roles"))?;
    let decode = || -> Result<ServerObserved, sqlx::Error> {
        let exists: bool = row.try_get("members_exists")?;
        let comment: Option<String> = row.try_get("members_comment")?;
        Ok(ServerObserved {
            admin: admin.clone(),
            role: role.clone(),
            database: database.clone(),
            members: exists.then_some(comment),
            members_can_connect: row.try_get("members_connect")?,
            tenant_is_member: row.try_get("tenant_is_member")?,
            search_path_set: row.try_get("search_path_set")?,
        })
    };
    decode().map_err(DatabaseError::query("decoding the shared database's roles"))
}

/// Reads [`SchemaObserved`] on a connection to the shared database.
pub async fn observe_schema(
    conn: &mut PgConnection,
    db: &TenantDatabase,
    shared: Shared<'_>,
) -> Result<SchemaObserved, DatabaseError> {
    let row = sqlx::query(
        "SELECT \
           n.oid IS NOT NULL AS schema_exists, \
           pg_get_userbyid(n.nspowner)::text AS owner, \
           obj_description(n.oid, 'pg_namespace') AS comment, \
           EXISTS (SELECT 1 FROM aclexplode(n.nspacl) a WHERE a.grantee = 0) AS schema_public, \
           EXISTS (SELECT 1 FROM pg_namespace p, aclexplode(p.nspacl) a \
                   WHERE p.nspname = 'public' AND a.grantee = 0) AS public_open, \
           EXISTS (SELECT 1 FROM pg_namespace p, aclexplode(p.nspacl) a JOIN pg_roles m ON m.oid = a.grantee \
                   WHERE p.nspname = 'public' AND m.rolname = $2 AND a.privilege_type = 'USAGE') AS members_use_public, \
           EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') AS trgm_installed \
         FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = $1",
    )
    .bind(db.name.as_str())
    .bind(shared.members.as_str())
    .fetch_one(&mut *conn)
    .await
    .map_err(DatabaseError::query("reading the tenant's schema"))?;
    let decode = || -> Result<SchemaObserved, sqlx::Error> {
        let exists: bool = row.try_get("schema_exists")?;
        Ok(SchemaObserved {
            schema: if exists {
                Some(SchemaRow {
                    owner: row.try_get("owner")?,
                    comment: row.try_get("comment")?,
                    public_has_privileges: row.try_get("schema_public")?,
                })
            } else {
                None
            },
            public_open: row.try_get("public_open")?,
            members_use_public: row.try_get("members_use_public")?,
            trgm_installed: row.try_get("trgm_installed")?,
            trgm_available: false,
        })
    };
    let mut observed = decode().map_err(DatabaseError::query("decoding the tenant's schema"))?;
    if !observed.trgm_installed {
        // Reads the server's extension directory: only while not installed.
        let (available,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm')",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(DatabaseError::query("reading pg_available_extensions"))?;
        observed.trgm_available = available;
    }
    Ok(observed)
}

/// Serializes the set-up of shared objects in this process: the first
/// tenants of a server all find them missing at once, and concurrent
/// `GRANT`s on one object fail ("tuple concurrently updated").
static SHARED_SETUP: Mutex<()> = Mutex::const_new(());

/// Executes shared set-up DDL that another operator process may have run
/// first: "already exists" is success.
async fn execute_shared(conn: &mut PgConnection, st: &Statement) -> Result<(), DatabaseError> {
    match execute(conn, st).await {
        Err(DatabaseError::Ddl {
            source: sqlx::Error::Database(e),
            ..
        }) if matches!(e.code().as_deref(), Some("42P04" | "42710" | "23505")) => Ok(()),
        other => other,
    }
}

/// Checks, without changing anything, that the tenant may use its role and
/// schema and that the shared objects are the operator's.
pub async fn check_claim(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
    shared: Shared<'_>,
) -> Result<(), DatabaseError> {
    let mut conn = pools.acquire(server).await?;
    let observed = observe_server(&mut conn, db, shared).await?;
    drop(conn);
    observed.check_claim(db, shared)?;
    if observed.database.is_some() {
        let mut conn = pools.acquire_in(server, shared.database.as_str()).await?;
        observe_schema(&mut conn, db, shared)
            .await?
            .check_claim(db)?;
    }
    Ok(())
}

/// Brings the server to what a Schema tenant needs, executing only missing
/// DDL: on an admin connection to `postgres`, the shared objects
/// ([`plan_shared`]) and the tenant's role ([`plan_tenant`]); then on one to
/// the shared database, schema `public` ([`plan_shared_schema`],
/// [`plan_trgm`]) and the tenant's schema ([`plan_schema`]). Refuses, before
/// any DDL, what is not this tenant's or not the operator's.
pub async fn ensure(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
    shared: Shared<'_>,
    password: &PasswordAction,
) -> Result<EnsureOutcome, DatabaseError> {
    let mut conn = pools.acquire(server).await?;
    let mut observed = observe_server(&mut conn, db, shared).await?;
    observed.check_claim(db, shared)?;
    let mut outcome = EnsureOutcome {
        created_role: observed.role.is_none(),
        ..EnsureOutcome::default()
    };
    if !plan_shared(shared, &observed).is_empty() {
        let _setup = SHARED_SETUP.lock().await;
        observed = observe_server(&mut conn, db, shared).await?;
        observed.check_claim(db, shared)?;
        for st in plan_shared(shared, &observed) {
            execute_shared(&mut conn, &st).await?;
            outcome.executed.push(st.redacted);
        }
    }
    for st in plan_tenant(db, shared, &observed, password) {
        execute(&mut conn, &st).await?;
        outcome.executed.push(st.redacted);
    }
    drop(conn);

    let mut conn = pools.acquire_in(server, shared.database.as_str()).await?;
    let mut inside = observe_schema(&mut conn, db, shared).await?;
    inside.check_claim(db)?;
    let in_db = |sql: String| format!("{sql} (in {})", shared.database);
    if !plan_shared_schema(shared, &inside).is_empty() || plan_trgm(&inside).is_some() {
        let _setup = SHARED_SETUP.lock().await;
        inside = observe_schema(&mut conn, db, shared).await?;
        for st in plan_shared_schema(shared, &inside) {
            execute_shared(&mut conn, &st).await?;
            outcome.executed.push(in_db(st.redacted));
        }
        if let Some(st) = plan_trgm(&inside) {
            // Optional: without it, search scans (the runtime says so).
            match execute_shared(&mut conn, &st).await {
                Ok(()) => outcome.executed.push(in_db(st.redacted)),
                Err(e) => tracing::warn!(
                    error = %e,
                    database = %shared.database,
                    "pg_trgm could not be installed in the shared database; tenants' search scans without a trigram index"
                ),
            }
        }
    }
    outcome.created_database = inside.schema.is_none();
    for st in plan_schema(db, &inside) {
        execute(&mut conn, &st).await?;
        outcome.executed.push(in_db(st.redacted));
    }
    Ok(outcome)
}

/// Terminates the tenant role's sessions, drops its schema with everything
/// in it and whatever else it owns or was granted in the shared database,
/// then the role, when they are this tenant's. The shared database and
/// members role stay. Idempotent.
pub async fn drop_tenant(
    pools: &AdminPools,
    server: &ServerConfig,
    db: &TenantDatabase,
    shared: Shared<'_>,
) -> Result<DropOutcome, DatabaseError> {
    let mut conn = pools.acquire(server).await?;
    let observed = observe_server(&mut conn, db, shared).await?;
    let left_alone = |e: ClaimError| DropOutcome {
        executed: Vec::new(),
        left_alone: Some(e),
    };
    if let Err(e) = observed.check_claim(db, shared) {
        return Ok(left_alone(e));
    }
    let name = db.name.quoted();
    let mut executed = Vec::new();
    if observed.database.is_some() {
        let mut inside = pools.acquire_in(server, shared.database.as_str()).await?;
        if let Err(e) = observe_schema(&mut inside, db, shared)
            .await?
            .check_claim(db)
        {
            return Ok(left_alone(e));
        }
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db.name.as_str())
        .execute(&mut *inside)
        .await
        .map_err(DatabaseError::query("terminating sessions"))?;
        let mut statements = vec![format!("DROP SCHEMA IF EXISTS {name} CASCADE")];
        if observed.role.is_some() {
            // Grants to the role in this database (and on the database).
            statements.push(format!("DROP OWNED BY {name}"));
        }
        let _setup = SHARED_SETUP.lock().await;
        for sql in statements {
            execute(&mut inside, &Statement::plain(sql.clone())).await?;
            executed.push(format!("{sql} (in {})", shared.database));
        }
    }
    let sql = format!("DROP ROLE IF EXISTS {name}");
    execute(&mut conn, &Statement::plain(sql.clone())).await?;
    executed.push(sql);
    Ok(DropOutcome {
        executed,
        left_alone: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::database::provision::tests::{admin, healthy_role};

    const MARK: &str = "chorus.dev/tenant=tenants/acme";

    fn ident(s: &str) -> Ident {
        Ident::new(s).unwrap()
    }

    fn tenant() -> TenantDatabase {
        TenantDatabase {
            name: ident("chat_acme"),
            connection_limit: 50,
            owner: "tenants/acme".into(),
            isolation: Isolation::schema(ident("chorus_tenants")).unwrap(),
        }
    }

    fn healthy_server() -> ServerObserved {
        ServerObserved {
            admin: admin(),
            role: Some(healthy_role()),
            database: Some(DatabaseRow {
                owner: "postgres".into(),
                public_has_privileges: false,
                comment: Some(SHARED_DATABASE_MARK.into()),
            }),
            members: Some(Some(format!("{MEMBERS_MARK_PREFIX}chorus_tenants"))),
            members_can_connect: true,
            tenant_is_member: true,
            search_path_set: true,
        }
    }

    fn healthy_schema() -> SchemaObserved {
        SchemaObserved {
            schema: Some(SchemaRow {
                owner: "chat_acme".into(),
                comment: Some(MARK.into()),
                public_has_privileges: false,
            }),
            public_open: false,
            members_use_public: true,
            trgm_installed: true,
            trgm_available: true,
        }
    }

    fn sql(plan: Vec<Statement>) -> Vec<String> {
        plan.into_iter().map(|s| s.redacted).collect()
    }

    #[test]
    fn a_fresh_server_gets_the_shared_objects_then_the_tenant() {
        let t = tenant();
        let shared = Shared::of(&t).unwrap();
        let fresh = ServerObserved {
            admin: admin(),
            ..ServerObserved::default()
        };
        assert_eq!(fresh.check_claim(&t, shared), Ok(()));
        assert_eq!(
            sql(plan_shared(shared, &fresh)),
            [
                "CREATE ROLE \"chorus_tenants_members\" WITH NOLOGIN; COMMENT ON ROLE \"chorus_tenants_members\" IS 'chorus.dev/shared-database-members=chorus_tenants'",
                "CREATE DATABASE \"chorus_tenants\" ENCODING 'UTF8'",
                "COMMENT ON DATABASE \"chorus_tenants\" IS 'chorus.dev/shared-database'",
                "REVOKE ALL ON DATABASE \"chorus_tenants\" FROM PUBLIC",
                "GRANT CONNECT ON DATABASE \"chorus_tenants\" TO \"chorus_tenants_members\"",
            ]
        );
        let tenant_plan = plan_tenant(&t, shared, &fresh, &PasswordAction::Set("pw".into()));
        assert!(
            !tenant_plan[0].sql.contains("'pw'"),
            "no plaintext password"
        );
        assert_eq!(
            sql(tenant_plan),
            [
                "CREATE ROLE \"chat_acme\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 50 PASSWORD '***'; COMMENT ON ROLE \"chat_acme\" IS 'chorus.dev/tenant=tenants/acme'",
                "GRANT \"chorus_tenants_members\" TO \"chat_acme\"",
                "ALTER ROLE \"chat_acme\" IN DATABASE \"chorus_tenants\" SET search_path = \"chat_acme\", public",
            ]
        );
        let inside = SchemaObserved {
            public_open: true,
            trgm_available: true,
            ..SchemaObserved::default()
        };
        assert_eq!(inside.check_claim(&t), Ok(()));
        assert_eq!(
            sql(plan_shared_schema(shared, &inside)),
            [
                "REVOKE ALL ON SCHEMA public FROM PUBLIC",
                "GRANT USAGE ON SCHEMA public TO \"chorus_tenants_members\"",
            ]
        );
        assert_eq!(
            plan_trgm(&inside).map(|s| s.sql),
            Some("CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public".into())
        );
        assert_eq!(
            sql(plan_schema(&t, &inside)),
            [
                "CREATE SCHEMA \"chat_acme\" AUTHORIZATION \"chat_acme\"; COMMENT ON SCHEMA \"chat_acme\" IS 'chorus.dev/tenant=tenants/acme'"
            ]
        );
    }

    #[test]
    fn a_provisioned_tenant_plans_nothing() {
        let t = tenant();
        let shared = Shared::of(&t).unwrap();
        let (server, inside) = (healthy_server(), healthy_schema());
        assert_eq!(server.check_claim(&t, shared), Ok(()));
        assert_eq!(inside.check_claim(&t), Ok(()));
        let keep = PasswordAction::Keep("pw".into());
        assert!(plan_shared(shared, &server).is_empty());
        assert!(plan_tenant(&t, shared, &server, &keep).is_empty());
        assert!(plan_shared_schema(shared, &inside).is_empty());
        assert!(plan_trgm(&inside).is_none());
        assert!(plan_schema(&t, &inside).is_empty());
        // Without pg_trgm on the server: nothing to try.
        let no_trgm = SchemaObserved {
            trgm_installed: false,
            trgm_available: false,
            ..healthy_schema()
        };
        assert!(plan_trgm(&no_trgm).is_none());
    }

    #[test]
    fn drift_is_repaired() {
        let t = tenant();
        let shared = Shared::of(&t).unwrap();
        let server = ServerObserved {
            admin: AdminRow {
                superuser: false,
                ..admin()
            },
            database: Some(DatabaseRow {
                owner: "postgres".into(),
                public_has_privileges: true,
                comment: Some(SHARED_DATABASE_MARK.into()),
            }),
            members_can_connect: false,
            tenant_is_member: false,
            search_path_set: false,
            ..healthy_server()
        };
        assert_eq!(
            sql(plan_shared(shared, &server)),
            [
                "REVOKE ALL ON DATABASE \"chorus_tenants\" FROM PUBLIC",
                "GRANT CONNECT ON DATABASE \"chorus_tenants\" TO \"chorus_tenants_members\"",
            ]
        );
        assert_eq!(
            sql(plan_tenant(
                &t,
                shared,
                &server,
                &PasswordAction::Keep("pw".into())
            )),
            [
                "GRANT \"chat_acme\" TO CURRENT_USER",
                "GRANT \"chorus_tenants_members\" TO \"chat_acme\"",
                "ALTER ROLE \"chat_acme\" IN DATABASE \"chorus_tenants\" SET search_path = \"chat_acme\", public",
            ]
        );
        let inside = SchemaObserved {
            schema: Some(SchemaRow {
                owner: "postgres".into(),
                comment: Some(MARK.into()),
                public_has_privileges: true,
            }),
            ..healthy_schema()
        };
        assert_eq!(
            sql(plan_schema(&t, &inside)),
            [
                "ALTER SCHEMA \"chat_acme\" OWNER TO \"chat_acme\"",
                "REVOKE ALL ON SCHEMA \"chat_acme\" FROM PUBLIC",
            ]
        );
    }

    #[test]
    fn what_is_not_ours_is_refused_before_any_ddl() {
        let t = tenant();
        let shared = Shared::of(&t).unwrap();
        // The shared database is a Database tenant's, or someone else's.
        for (comment, says) in [
            (
                Some("chorus.dev/tenant=other/x"),
                "belongs to ChatTenant other/x",
            ),
            (None, "was not created by Chorus"),
        ] {
            let mut server = healthy_server();
            if let Some(d) = server.database.as_mut() {
                d.comment = comment.map(String::from);
            }
            let err = server.check_claim(&t, shared).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(
                err.contains(
                    "COMMENT ON DATABASE \"chorus_tenants\" IS 'chorus.dev/shared-database'"
                ),
                "{err}"
            );
        }
        // A members role that is not the operator's.
        let mut server = healthy_server();
        server.members = Some(None);
        assert!(matches!(
            server.check_claim(&t, shared),
            Err(ClaimError::NotShared { object: "role", .. })
        ));
        // Another tenant's role, and a tenant named like the members role.
        let mut server = healthy_server();
        if let Some(r) = server.role.as_mut() {
            r.comment = Some("chorus.dev/tenant=other/acme".into());
        }
        assert!(matches!(
            server.check_claim(&t, shared),
            Err(ClaimError::OtherTenant { object: "role", .. })
        ));
        let members_named = TenantDatabase {
            name: ident("chorus_tenants_members"),
            ..tenant()
        };
        assert!(matches!(
            healthy_server().check_claim(&members_named, Shared::of(&members_named).unwrap()),
            Err(ClaimError::Shared { object: "role", .. })
        ));
        // Another tenant's schema, or one Chorus did not make.
        for (comment, owner) in [
            (Some("chorus.dev/tenant=other/acme"), "chat_acme"),
            (None, "postgres"),
        ] {
            let inside = SchemaObserved {
                schema: Some(SchemaRow {
                    owner: owner.into(),
                    comment: comment.map(String::from),
                    public_has_privileges: false,
                }),
                ..healthy_schema()
            };
            assert!(inside.check_claim(&t).is_err(), "{comment:?} {owner}");
        }
        // Unmarked but owned by the tenant's role: ours, and marked.
        let unmarked = SchemaObserved {
            schema: Some(SchemaRow {
                owner: "chat_acme".into(),
                comment: None,
                public_has_privileges: false,
            }),
            ..healthy_schema()
        };
        assert_eq!(unmarked.check_claim(&t), Ok(()));
        assert_eq!(
            sql(plan_schema(&t, &unmarked)),
            ["COMMENT ON SCHEMA \"chat_acme\" IS 'chorus.dev/tenant=tenants/acme'"]
        );
    }

    #[test]
    fn the_members_role_is_named_after_the_database() {
        assert_eq!(
            members_role(&ident("chorus_tenants")).unwrap().as_str(),
            "chorus_tenants_members"
        );
        assert!(members_role(&ident(&"a".repeat(60))).is_err());
    }
}
