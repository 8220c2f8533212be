//! Role drift against the real PostgreSQL: the role's attributes are read
//! before the password is blamed. A hand-set expiry, NOLOGIN or a role with
//! no password is repaired and diagnosed by name; SQLSTATE 53300 is the
//! role's own limit (a working login) or a full server (not one); and a
//! crash between writing `<name>-db` and `CREATE ROLE` heals with the
//! Secret's password.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    catalog,
    operator::{OperatorEnv, create_tenant, secret_text, tenant_yaml},
    unique_suffix,
};
use chorus_operator::database::{
    AdminPools, DatabaseError, Ident, Isolation, LoginCheck, PasswordAction, Postgres, Provisioner,
    ServerConfig, TenantDatabase, check_login, ensure, pool::ADMIN_POOL_SIZE,
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{ObjectMeta, PostParams};
use sqlx::{Connection, PgConnection};

fn server() -> ServerConfig {
    chorus_e2e::operator::admin_server_config().unwrap()
}

fn tenant(prefix: &str, limit: i32) -> TenantDatabase {
    TenantDatabase {
        name: Ident::new(&format!("chat_{prefix}_{}", unique_suffix())).unwrap(),
        connection_limit: limit,
        owner: format!("e2e/{prefix}"),
        isolation: Isolation::Database,
    }
}

/// The tests of this file share one PostgreSQL server; the one that fills
/// it takes this lock for writing, the others for reading, so no test here
/// meets "too many clients" by another's doing.
static SERVER_SLOTS: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn sql(s: String) {
    catalog::admin_sql(s).await.unwrap();
}

async fn drop_tenant(db: &TenantDatabase) {
    chorus_operator::database::drop_tenant(&AdminPools::default(), &server(), db)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_expiry_or_nologin_set_by_hand_is_diagnosed_and_repaired() {
    let _slots = SERVER_SLOTS.read().await;
    let (server, db) = (server(), tenant("expiry", 5));
    let pools = AdminPools::default();
    ensure(&pools, &server, &db, &PasswordAction::Set("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // The reproduction: an expiry set by hand.
    sql(format!(
        "ALTER ROLE {} VALID UNTIL '2000-01-01'",
        db.name.quoted()
    ))
    .await;
    match check_login(&pools, &server, &db, "pw-1").await.unwrap() {
        LoginCheck::PasswordExpired { valid_until } => {
            assert!(valid_until.starts_with("2000-01-01"))
        }
        other => panic!("an expired role is not a password mismatch: {other:?}"),
    }
    let repaired = ensure(&pools, &server, &db, &PasswordAction::Keep("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        repaired.executed,
        [format!(
            "ALTER ROLE {} WITH VALID UNTIL 'infinity'",
            db.name.quoted()
        )]
    );
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // NOLOGIN by hand.
    sql(format!("ALTER ROLE {} NOLOGIN", db.name.quoted())).await;
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::LoginDisabled
    );
    ensure(&pools, &server, &db, &PasswordAction::Keep("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // No password at all: the Secret's is set (the admin is superuser).
    sql(format!("ALTER ROLE {} PASSWORD NULL", db.name.quoted())).await;
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::NoPassword
    );
    ensure(&pools, &server, &db, &PasswordAction::Keep("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // Only a real mismatch is called one.
    sql(format!("ALTER ROLE {} PASSWORD 'other'", db.name.quoted())).await;
    assert_eq!(
        check_login(&pools, &server, &db, "pw-1").await.unwrap(),
        LoginCheck::PasswordMismatch
    );
    drop_tenant(&db).await;
}

#[tokio::test]
async fn a_missing_role_is_created_with_the_secrets_password() {
    let _slots = SERVER_SLOTS.read().await;
    let (server, db) = (server(), tenant("crash", 5));
    let pools = AdminPools::default();
    // The Secret was written, then the operator died before CREATE ROLE.
    let out = ensure(
        &pools,
        &server,
        &db,
        &PasswordAction::Keep("from-secret".into()),
    )
    .await
    .unwrap();
    assert!(out.created_role);
    assert_eq!(
        check_login(&pools, &server, &db, "from-secret")
            .await
            .unwrap(),
        LoginCheck::Ok
    );
    drop_tenant(&db).await;
}

#[tokio::test]
async fn too_many_connections_is_the_roles_limit_or_a_full_server() {
    let _slots = SERVER_SLOTS.write().await;
    let (server, db) = (server(), tenant("limit", 1));
    let pools = AdminPools::default();
    ensure(&pools, &server, &db, &PasswordAction::Set("pw".into()))
        .await
        .unwrap();
    let url = server.tenant_uri(&db.name, "pw", &db.name);
    // The role's own limit: the login itself works.
    let held = PgConnection::connect(&url).await.unwrap();
    assert_eq!(
        check_login(&pools, &server, &db, "pw").await.unwrap(),
        LoginCheck::Ok
    );
    drop(held);

    // A server full for everyone but superusers: PostgreSQL checks the
    // role's own limit first ("too many connections for role", after
    // authentication), so a role at its limit still proves its password.
    let filler = format!("filler_{}", unique_suffix());
    sql(format!("CREATE ROLE {filler} LOGIN PASSWORD 'f'")).await;
    let filler_url = format!(
        "postgres://{filler}:f@{}:{}/postgres?sslmode=disable",
        server.host, server.port
    );
    let tenant_held = PgConnection::connect(&url).await.unwrap();
    let mut held = fill(&filler_url, false).await;
    let own_limit = check_login(&pools, &server, &db, "pw").await;
    // Every slot taken, the superusers' too: "sorry, too many clients
    // already" comes before authentication. Not a working login, even
    // though the role is at its limit (the state alone said Ok before).
    held.extend(fill(&catalog_admin_url(), true).await);
    let login = || check_login(&pools, &server, &db, "pw");
    let server_full =
        |v: &Result<LoginCheck, DatabaseError>| matches!(v, Ok(LoginCheck::ServerFull(_)));
    let at_limit = while_full(&mut held, login, server_full).await;
    tenant_held.close().await.unwrap();
    held.extend(fill(&catalog_admin_url(), true).await);
    let below_limit = while_full(&mut held, login, server_full).await;
    // An operator with no pooled connection yet gets "busy", not
    // "unreachable" nor a login verdict.
    let keep = PasswordAction::Keep("pw".into());
    let fresh = || async { Postgres::default().ensure(&server, &db, &keep).await };
    let busy = while_full(&mut held, fresh, |v| {
        matches!(v, Err(DatabaseError::Busy { .. }))
    })
    .await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(own_limit.unwrap(), LoginCheck::Ok);
    for (what, full) in [("at its limit", at_limit), ("below its limit", below_limit)] {
        match full.unwrap() {
            // "sorry, too many clients already", or "remaining connection
            // slots are reserved ..." when an outside client has just left
            // a superuser-reserved slot: both a full server for the tenant.
            LoginCheck::ServerFull(why) => assert!(
                why.contains("too many clients") || why.contains("slots are reserved"),
                "{why}"
            ),
            other => panic!("a full server is not a working login ({what}): {other:?}"),
        }
    }
    match busy {
        Err(e @ DatabaseError::Busy { .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("no free connection slot"), "{e}");
        }
        other => panic!("a full server is busy: {other:?}"),
    }
    assert_eq!(
        check_login(&pools, &server, &db, "pw").await.unwrap(),
        LoginCheck::Ok
    );
    sql(format!("DROP ROLE {filler}")).await;
    drop_tenant(&db).await;
}

/// The admin URL of the test server (a superuser).
fn catalog_admin_url() -> String {
    std::env::var("CHORUS_TEST_DATABASE_URL").unwrap()
}

/// Runs `check` on a full server until it gives the full-server verdict
/// (`full`), at most 20 times, and returns the last verdict. A client
/// outside this file (an operator an earlier test left running, say) may
/// free a slot at any moment and let the check's login in, which tests
/// nothing: then the free slots are taken and the check runs again. A check
/// that never sees the server full (the bug this file guards against) gives
/// the wrong verdict every time, and the caller's assertion fails on it.
async fn while_full<T, F: Future<Output = T>>(
    held: &mut Vec<PgConnection>,
    check: impl Fn() -> F,
    full: impl Fn(&T) -> bool,
) -> T {
    let mut verdict = check().await;
    for _ in 0..20 {
        if full(&verdict) {
            break;
        }
        // The check's own connection frees its slot a moment after it
        // closes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(c) = PgConnection::connect(&catalog_admin_url()).await {
            held.push(c);
        }
        verdict = check().await;
    }
    verdict
}

/// Opens connections at `url` until the server refuses one (`all`) or only
/// the superuser-reserved slots are left.
async fn fill(url: &str, all: bool) -> Vec<PgConnection> {
    // A connection just dropped frees its slot only when its backend has
    // exited, a moment later: the counting connection waits for one.
    let mut admin = None;
    for _ in 0..100 {
        match catalog::admin_connection().await {
            Ok(c) => {
                admin = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut admin = admin.expect("no connection slot came free within 10 s");
    let (max, reserved): (String, String) = sqlx::query_as(
        "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections')",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let (max, reserved): (i64, i64) = (max.parse().unwrap(), reserved.parse().unwrap());
    let mut held = Vec::new();
    loop {
        let (in_use,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if (!all && in_use >= max - reserved) || held.len() > 1000 {
            break;
        }
        match PgConnection::connect(url).await {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    drop(admin);
    // The slot of the counting connection.
    if all && let Ok(c) = PgConnection::connect(url).await {
        held.push(c);
    }
    held
}

/// Reconciles share a few pooled admin connections per server: 12 tenants
/// provisioned and checked at once open at most `ADMIN_POOL_SIZE` admin
/// sessions (counted by a login of their own).
#[tokio::test]
async fn reconciles_share_a_small_pool_of_admin_connections() {
    let _slots = SERVER_SLOTS.read().await;
    let admin = format!("opadmin_{}", unique_suffix());
    sql(format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE CREATEDB PASSWORD 'a'"
    ))
    .await;
    let server = ServerConfig {
        username: admin.clone(),
        password: "a".into(),
        ..server()
    };
    let postgres = Postgres::default();
    let tenants: Vec<TenantDatabase> = (0..12).map(|_| tenant("pool", 5)).collect();
    let sessions = || async {
        let mut c = catalog::admin_connection().await.unwrap();
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = 'postgres'",
        )
        .bind(&admin)
        .fetch_one(&mut c)
        .await
        .unwrap();
        n
    };
    let mut peak = 0;
    for _ in 0..2 {
        let runs = tenants.iter().map(|db| {
            let (postgres, server) = (&postgres, &server);
            async move {
                postgres
                    .ensure(server, db, &PasswordAction::Keep("pw".into()))
                    .await
                    .unwrap();
                postgres.check_login(server, db, "pw").await.unwrap()
            }
        });
        let (logins, n) = tokio::join!(futures::future::join_all(runs), sessions());
        assert!(logins.iter().all(|l| *l == LoginCheck::Ok), "{logins:?}");
        peak = peak.max(n).max(sessions().await);
    }
    assert!(peak >= 1 && peak <= i64::from(ADMIN_POOL_SIZE), "{peak}");
    assert!(postgres.open_connections() <= ADMIN_POOL_SIZE);
    for db in &tenants {
        drop_tenant(db).await;
    }
    drop(postgres);
    sql(format!("DROP ROLE {admin}")).await;
}

/// The reproduction through the operator: Secret `x-db` exists
/// (written before a crash), then ChatTenant `x` is applied.
#[tokio::test]
async fn a_tenant_whose_secret_came_first_gets_a_role_with_that_password() {
    let _slots = SERVER_SLOTS.read().await;
    let env = OperatorEnv::new("op-drift", Duration::from_secs(5))
        .await
        .unwrap();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("x-db".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            [(
                "password".to_string(),
                ByteString(b"secret-came-first-0123456789".to_vec()),
            )]
            .into(),
        ),
        ..Secret::default()
    };
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let (yaml, db) = tenant_yaml("x", "");
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    env.wait_condition("x", "Ready", "True", None)
        .await
        .unwrap();
    let uri = secret_text(&env.client, &env.ns, "x-db", "uri")
        .await
        .unwrap()
        .unwrap();
    assert!(uri.contains("secret-came-first-0123456789"), "{uri}");
    PgConnection::connect(&uri).await.unwrap();

    // The hand-set expiry at the operator level: repaired at the next
    // reconcile (resync 5 s), Ready again, login works.
    sql(format!("ALTER ROLE \"{db}\" VALID UNTIL '2000-01-01'")).await;
    let role = db.clone();
    chorus_e2e::wait_for("the expiry to be repaired", Duration::from_secs(60), || {
        let db = role.clone();
        async move {
            let mut c = catalog::admin_connection().await.ok()?;
            let (v,): (Option<String>,) =
                sqlx::query_as("SELECT rolvaliduntil::text FROM pg_roles WHERE rolname = $1")
                    .bind(&db)
                    .fetch_one(&mut c)
                    .await
                    .ok()?;
            (v.as_deref() == Some("infinity")).then_some(())
        }
    })
    .await
    .unwrap();
    env.wait_condition("x", "DatabaseReady", "True", None)
        .await
        .unwrap();
    PgConnection::connect(&uri).await.unwrap();
    let events = env.events("x").await.unwrap();
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "DatabaseRepaired" && m.contains("VALID UNTIL 'infinity'")),
        "{events:?}"
    );
    env.stop().await;
}
