//! Schema isolation (`spec.database.isolation: Schema`) against the real
//! PostgreSQL: two tenants on one server get a role and a schema each in one
//! shared database; each runs the runtime's migrations (sqlx's
//! `_sqlx_migrations` included) into its own schema through the role's
//! `search_path`, builds its trigram index, and cannot read the other's
//! tables, create schemas or extensions, or write to `public`. A second
//! `ensure` issues no DDL. A schema-only dump restores with the command of
//! docs/operations.md (read from it). `Delete` drops one tenant's schema and role and
//! leaves the other working.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{process::Command, time::Duration};

use chat_runtime::store::Store;
use chorus_e2e::{catalog, operator::admin_url_parts, unique_suffix};
use chorus_operator::database::{
    AdminPools, ClaimError, DatabaseError, Ident, Isolation, LoginCheck, PasswordAction,
    ServerConfig, TenantDatabase, check_claim, check_login, drop_tenant, ensure,
};
use sqlx::{Connection, PgConnection};

fn server() -> ServerConfig {
    chorus_e2e::operator::admin_server_config().unwrap()
}

fn suffix() -> String {
    unique_suffix().replace('-', "_")
}

fn schema_tenant(name: &str, shared: &Ident) -> TenantDatabase {
    TenantDatabase {
        name: Ident::new(name).unwrap(),
        connection_limit: 5,
        owner: format!("e2e-schema/{name}"),
        isolation: Isolation::schema(shared.clone()).unwrap(),
    }
}

fn uri(db: &TenantDatabase, password: &str) -> String {
    server().tenant_uri(&db.name, password, db.database())
}

async fn connect(db: &TenantDatabase, password: &str) -> PgConnection {
    PgConnection::connect(&uri(db, password)).await.unwrap()
}

/// The SQLSTATE of `sql` run on `conn`, which must fail.
async fn refused(conn: &mut PgConnection, sql: &str) -> String {
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .expect_err(sql);
    match err {
        sqlx::Error::Database(e) => e.code().unwrap_or_default().to_string(),
        other => panic!("{sql}: {other}"),
    }
}

async fn scalar(conn: &mut PgConnection, sql: &str) -> Option<String> {
    let (v,): (Option<String>,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    v
}

#[tokio::test]
async fn two_schema_tenants_share_a_database_and_see_nothing_of_each_other() {
    let (server, pools) = (server(), AdminPools::default());
    let s = suffix();
    let shared = Ident::new(&format!("shared_{s}")).unwrap();
    let a = schema_tenant(&format!("chat_a_{s}"), &shared);
    let b = schema_tenant(&format!("chat_b_{s}"), &shared);

    // First provisioning: the shared objects, then each tenant.
    let first = ensure(&pools, &server, &a, &PasswordAction::Set("pw-a".into()))
        .await
        .unwrap();
    assert!(first.created_role && first.created_database, "{first:?}");
    assert!(
        first
            .executed
            .iter()
            .any(|s| s.starts_with("CREATE DATABASE")),
        "{first:?}"
    );
    let second = ensure(&pools, &server, &b, &PasswordAction::Set("pw-b".into()))
        .await
        .unwrap();
    assert!(
        !second
            .executed
            .iter()
            .any(|s| s.starts_with("CREATE DATABASE")),
        "the shared database is made once: {second:?}"
    );
    // Idempotent: nothing left to do for either.
    for (db, pw) in [(&a, "pw-a"), (&b, "pw-b")] {
        let again = ensure(&pools, &server, db, &PasswordAction::Keep(pw.into()))
            .await
            .unwrap();
        assert!(again.executed.is_empty(), "{again:?}");
        assert_eq!(
            check_login(&pools, &server, db, pw).await.unwrap(),
            LoginCheck::Ok
        );
        check_claim(&pools, &server, db).await.unwrap();
    }

    // Each tenant runs the runtime's migrations into its own schema.
    for (db, pw) in [(&a, "pw-a"), (&b, "pw-b")] {
        let store = Store::connect(&uri(db, pw), 2, Duration::from_secs(10))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        assert_eq!(store.schema().await.unwrap(), db.name.as_str());
        assert!(
            store.ensure_search_index().await.unwrap(),
            "pg_trgm from schema public serves {}",
            db.name
        );
        // A restart migrates nothing and keeps its epoch.
        let epoch = store.epoch().await.unwrap();
        store.migrate().await.unwrap();
        assert_eq!(store.epoch().await.unwrap(), epoch);
        store.pool.close().await;
    }
    let mut conn_a = connect(&a, "pw-a").await;
    let mut conn_b = connect(&b, "pw-b").await;
    assert_eq!(
        scalar(
            &mut conn_a,
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = '_sqlx_migrations'::regclass"
        )
        .await
        .as_deref(),
        Some(a.name.as_str()),
        "sqlx's table resolves to the tenant's schema"
    );
    let (tables_in_public,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&mut conn_a)
            .await
            .unwrap();
    assert_eq!(tables_in_public, 0, "nothing lands in public");

    // Isolation: no reading, no creating outside its own schema.
    let b_messages = format!("SELECT * FROM {}.messages", b.name.quoted());
    assert_eq!(refused(&mut conn_a, &b_messages).await, "42501");
    let a_meta = format!("SELECT * FROM {}.chat_meta", a.name.quoted());
    assert_eq!(refused(&mut conn_b, &a_meta).await, "42501");
    let a_insert = format!(
        "INSERT INTO {}.chat_meta (key, value) VALUES ('x', 'y')",
        a.name.quoted()
    );
    assert_eq!(refused(&mut conn_b, &a_insert).await, "42501");
    for sql in [
        "CREATE SCHEMA intruder",
        "CREATE TABLE public.intruder (x int)",
        "CREATE TEMP TABLE intruder (x int)",
        "CREATE EXTENSION IF NOT EXISTS hstore",
    ] {
        assert_eq!(refused(&mut conn_a, sql).await, "42501", "{sql}");
    }
    // A role that is not a Schema tenant cannot connect at all.
    let outsider = format!("outsider_{s}");
    catalog::admin_sql(format!("CREATE ROLE \"{outsider}\" LOGIN PASSWORD 'pw-o'"))
        .await
        .unwrap();
    let pg = admin_url_parts().unwrap();
    let outsider_uri = format!(
        "postgres://{outsider}:pw-o@{}:{}/{shared}?sslmode=disable",
        pg.host, pg.port
    );
    match PgConnection::connect(&outsider_uri).await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("42501")),
        other => panic!("an outsider connected to the shared database: {other:?}"),
    }
    catalog::admin_sql(format!("DROP ROLE \"{outsider}\""))
        .await
        .unwrap();

    // Backup and restore as docs/operations.md has it (pg_dump --schema;
    // pg_restore without the schema's own entry).
    let instance = scalar(
        &mut conn_a,
        "SELECT value FROM chat_meta WHERE key = 'instance'",
    )
    .await;
    let dump = std::env::temp_dir().join(format!("schema-{s}.dump"));
    let status = Command::new("pg_dump")
        .args(["--format=custom", "--no-password"])
        .arg(format!("--file={}", dump.display()))
        .arg(format!("--dbname={}", uri(&a, "pw-a")))
        .arg(format!("--schema=\"{}\"", a.name))
        .status()
        .expect("pg_dump on PATH");
    assert!(status.success());
    sqlx::raw_sql("UPDATE chat_meta SET value = 'changed' WHERE key = 'instance'")
        .execute(&mut conn_a)
        .await
        .unwrap();
    conn_a.close().await.unwrap();
    let command = restore_command_of_the_docs();
    assert_eq!(command[3], "/backups/<file>");
    let restore = Command::new(&command[0])
        .args(&command[1..3])
        .arg(&dump)
        .env("DATABASE_URL", uri(&a, "pw-a"))
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let _ = std::fs::remove_file(&dump);
    let mut conn_a = connect(&a, "pw-a").await;
    assert_eq!(
        scalar(
            &mut conn_a,
            "SELECT value FROM chat_meta WHERE key = 'instance'"
        )
        .await,
        instance
    );
    conn_a.close().await.unwrap();

    // reclaimPolicy Delete: A's schema and role go, B keeps working.
    let dropped = drop_tenant(&pools, &server, &a).await.unwrap();
    assert!(dropped.left_alone.is_none(), "{dropped:?}");
    assert!(!catalog::role_exists(a.name.as_str()).await.unwrap());
    assert!(catalog::database_exists(shared.as_str()).await.unwrap());
    assert_eq!(
        check_login(&pools, &server, &b, "pw-b").await.unwrap(),
        LoginCheck::Ok
    );
    let (schemas,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_namespace WHERE nspname = $1 OR nspname = $2")
            .bind(a.name.as_str())
            .bind(b.name.as_str())
            .fetch_one(&mut conn_b)
            .await
            .unwrap();
    assert_eq!(schemas, 1, "only B's schema is left");
    let (messages,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
        .fetch_one(&mut conn_b)
        .await
        .unwrap();
    assert_eq!(messages, 0);
    conn_b.close().await.unwrap();
    drop_tenant(&pools, &server, &b).await.unwrap();
    assert!(!catalog::role_exists(b.name.as_str()).await.unwrap());
    // Dropping again finds nothing to do.
    drop_tenant(&pools, &server, &b).await.unwrap();
    drop_shared(&shared).await;
}

/// The `command` of the Schema restore Job in docs/operations.md.
fn restore_command_of_the_docs() -> Vec<String> {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let block = docs
        .split("<!-- restore-job-schema -->\n```yaml\n")
        .nth(1)
        .expect("docs/operations.md has the restore-job-schema block");
    let yaml = block.split("```").next().unwrap();
    let parsed: std::collections::BTreeMap<String, Vec<String>> =
        serde_yaml::from_str(yaml.trim()).unwrap();
    parsed["command"].clone()
}

async fn drop_shared(shared: &Ident) {
    catalog::admin_sql(format!("DROP DATABASE {} WITH (FORCE)", shared.quoted()))
        .await
        .unwrap();
    catalog::admin_sql(format!("DROP ROLE \"{shared}_members\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_shared_database_is_nobodys_own_and_a_foreign_one_is_refused() {
    let (server, pools) = (server(), AdminPools::default());
    let s = suffix();
    let shared = Ident::new(&format!("shared_{s}")).unwrap();
    let a = schema_tenant(&format!("chat_c_{s}"), &shared);
    ensure(&pools, &server, &a, &PasswordAction::Set("pw".into()))
        .await
        .unwrap();
    // A Database tenant named like the shared database is refused.
    let squatter = TenantDatabase {
        name: shared.clone(),
        connection_limit: 5,
        owner: "e2e-schema/squatter".into(),
        isolation: Isolation::Database,
    };
    match check_claim(&pools, &server, &squatter).await {
        Err(DatabaseError::Claim(ClaimError::Shared { .. })) => {}
        other => panic!("{other:?}"),
    }
    // A Schema tenant naming a database Chorus did not make is refused,
    // before any DDL.
    let foreign = format!("foreign_{s}");
    catalog::admin_sql(format!("CREATE DATABASE \"{foreign}\""))
        .await
        .unwrap();
    let lost = schema_tenant(&format!("chat_d_{s}"), &Ident::new(&foreign).unwrap());
    match ensure(&pools, &server, &lost, &PasswordAction::Set("pw".into())).await {
        Err(DatabaseError::Claim(ClaimError::NotShared {
            object: "database", ..
        })) => {}
        other => panic!("{other:?}"),
    }
    assert!(!catalog::role_exists(lost.name.as_str()).await.unwrap());
    drop_tenant(&pools, &server, &a).await.unwrap();
    catalog::admin_sql(format!("DROP DATABASE \"{foreign}\""))
        .await
        .unwrap();
    drop_shared(&shared).await;
}
