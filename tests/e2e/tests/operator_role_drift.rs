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
    operator::{OperatorEnv, admin_url_parts, create_tenant, secret_text, tenant_yaml},
    unique_suffix,
};
use chorus_operator::database::{
    Ident, LoginCheck, PasswordAction, ServerConfig, TenantDatabase, check_login, ensure,
};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{ObjectMeta, PostParams};
use sqlx::{Connection, PgConnection};

fn server() -> ServerConfig {
    let pg = admin_url_parts().unwrap();
    ServerConfig {
        host: pg.host,
        port: pg.port,
        username: pg.user,
        password: pg.password,
        ssl_mode: "disable".into(),
    }
}

fn tenant(prefix: &str, limit: i32) -> TenantDatabase {
    TenantDatabase {
        name: Ident::new(&format!("chat_{prefix}_{}", unique_suffix())).unwrap(),
        connection_limit: limit,
        owner: format!("e2e/{prefix}"),
    }
}

async fn sql(s: String) {
    catalog::admin_sql(s).await.unwrap();
}

async fn drop_tenant(db: &TenantDatabase) {
    chorus_operator::database::drop_tenant(&server(), db)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_expiry_or_nologin_set_by_hand_is_diagnosed_and_repaired() {
    let (server, db) = (server(), tenant("expiry", 5));
    ensure(&server, &db, &PasswordAction::Set("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // The reproduction: an expiry set by hand.
    sql(format!(
        "ALTER ROLE {} VALID UNTIL '2000-01-01'",
        db.name.quoted()
    ))
    .await;
    match check_login(&server, &db, "pw-1").await.unwrap() {
        LoginCheck::PasswordExpired { valid_until } => {
            assert!(valid_until.starts_with("2000-01-01"))
        }
        other => panic!("an expired role is not a password mismatch: {other:?}"),
    }
    let repaired = ensure(&server, &db, &PasswordAction::Keep("pw-1".into()))
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
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // NOLOGIN by hand.
    sql(format!("ALTER ROLE {} NOLOGIN", db.name.quoted())).await;
    assert_eq!(
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::LoginDisabled
    );
    ensure(&server, &db, &PasswordAction::Keep("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // No password at all: the Secret's is set (the admin is superuser).
    sql(format!("ALTER ROLE {} PASSWORD NULL", db.name.quoted())).await;
    assert_eq!(
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::NoPassword
    );
    ensure(&server, &db, &PasswordAction::Keep("pw-1".into()))
        .await
        .unwrap();
    assert_eq!(
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::Ok
    );

    // Only a real mismatch is called one.
    sql(format!("ALTER ROLE {} PASSWORD 'other'", db.name.quoted())).await;
    assert_eq!(
        check_login(&server, &db, "pw-1").await.unwrap(),
        LoginCheck::PasswordMismatch
    );
    drop_tenant(&db).await;
}

#[tokio::test]
async fn a_missing_role_is_created_with_the_secrets_password() {
    let (server, db) = (server(), tenant("crash", 5));
    // The Secret was written, then the operator died before CREATE ROLE.
    let out = ensure(&server, &db, &PasswordAction::Keep("from-secret".into()))
        .await
        .unwrap();
    assert!(out.created_role);
    assert_eq!(
        check_login(&server, &db, "from-secret").await.unwrap(),
        LoginCheck::Ok
    );
    drop_tenant(&db).await;
}

#[tokio::test]
async fn too_many_connections_is_the_roles_limit_or_a_full_server() {
    let (server, db) = (server(), tenant("limit", 1));
    ensure(&server, &db, &PasswordAction::Set("pw".into()))
        .await
        .unwrap();
    let url = server.tenant_uri(&db.name, "pw", &db.name);
    // The role's own limit: the login itself works.
    let held = PgConnection::connect(&url).await.unwrap();
    assert_eq!(
        check_login(&server, &db, "pw").await.unwrap(),
        LoginCheck::Ok
    );
    drop(held);

    // The server full while the role is below its limit: not a working
    // login. Fill every non-reserved slot with another role's sessions.
    let filler = format!("filler_{}", unique_suffix());
    sql(format!("CREATE ROLE {filler} LOGIN PASSWORD 'f'")).await;
    let mut admin = catalog::admin_connection().await.unwrap();
    let (max, reserved): (String, String) = sqlx::query_as(
        "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections')",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    let (max, reserved): (i64, i64) = (max.parse().unwrap(), reserved.parse().unwrap());
    let filler_url = format!(
        "postgres://{filler}:f@{}:{}/postgres?sslmode=disable",
        server.host, server.port
    );
    let mut held = Vec::new();
    loop {
        let (in_use,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if in_use >= max - reserved || held.len() > 1000 {
            break;
        }
        match PgConnection::connect(&filler_url).await {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    let full = check_login(&server, &db, "pw").await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    match full.unwrap() {
        LoginCheck::ServerFull(why) => assert!(!why.is_empty()),
        other => panic!("a full server is not a working login: {other:?}"),
    }
    assert_eq!(
        check_login(&server, &db, "pw").await.unwrap(),
        LoginCheck::Ok
    );
    sql(format!("DROP ROLE {filler}")).await;
    drop_tenant(&db).await;
}

/// The reproduction through the operator: Secret `x-db` exists
/// (written before a crash), then ChatTenant `x` is applied.
#[tokio::test]
async fn a_tenant_whose_secret_came_first_gets_a_role_with_that_password() {
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
