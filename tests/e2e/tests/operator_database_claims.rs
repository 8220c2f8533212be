//! Database names on a shared server: a ChatTenant uses only the role and
//! database the operator created for it (marked `chorus.dev/tenant=<ns>/<name>`).
//! Another tenant's database, the admin role and objects Chorus did not
//! create are refused with `NameInUse`, never re-passworded or dropped; a
//! retained database is found again by a ChatTenant re-created under the same
//! name; and an admin login with only CREATEROLE and CREATEDB is enough.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    catalog,
    operator::{
        OperatorEnv, admin_url_parts, condition, create_tenant, put_server_secret_as, secret_text,
        tenant_yaml, wait_gone,
    },
    unique_suffix,
};
use chorus_operator::crd::ChatTenant;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use sqlx::{Connection, PgConnection};

async fn admin_db() -> PgConnection {
    catalog::admin_connection().await.unwrap()
}

async fn exists(catalog: &str, name: &str) -> bool {
    match catalog {
        "role" => catalog::role_exists(name).await.unwrap(),
        _ => catalog::database_exists(name).await.unwrap(),
    }
}

async fn admin_sql(sql: String) {
    catalog::admin_sql(sql).await.unwrap();
}

async fn event_messages(env: &OperatorEnv, name: &str, reason: &str) -> Vec<String> {
    let events = env.events(name).await.unwrap();
    events
        .into_iter()
        .filter(|(r, _)| r == reason)
        .map(|(_, message)| message)
        .collect()
}

async fn can_connect(uri: &str) -> bool {
    PgConnection::connect(uri).await.is_ok()
}

#[tokio::test]
async fn another_tenants_database_is_refused_and_never_dropped() {
    let env = OperatorEnv::new("op-claim", Duration::from_secs(300))
        .await
        .unwrap();
    let (_, db) = env.ready_tenant("acme", "").await.unwrap();
    let uri = secret_text(&env.client, &env.ns, "acme-db", "uri")
        .await
        .unwrap()
        .unwrap();

    // A second tenant names acme's database (reclaimPolicy Delete).
    let (thief, own_db) = tenant_yaml("thief", "");
    let thief = thief.replace(&own_db, &db);
    create_tenant(&env.client, &env.ns, &thief).await.unwrap();
    let ct = env
        .wait_condition("thief", "DatabaseReady", "False", Some("NameInUse"))
        .await
        .unwrap();
    let message = condition(&ct, "DatabaseReady").unwrap().message;
    assert!(
        message.contains(&format!("ChatTenant {}/acme", env.ns)) && message.contains("immutable"),
        "the condition names the holder and what to do: {message}"
    );
    assert!(
        env.api::<Secret>()
            .get_opt("thief-db")
            .await
            .unwrap()
            .is_none(),
        "a refused name gets no connection Secret"
    );
    assert!(can_connect(&uri).await, "acme's password was not touched");

    // Deleting the refused tenant drops nothing.
    let cts = env.api::<ChatTenant>();
    cts.delete("thief", &DeleteParams::default()).await.unwrap();
    wait_gone(&cts, "thief").await.unwrap();
    assert!(exists("database", &db).await && exists("role", &db).await);
    assert!(can_connect(&uri).await, "acme still connects");
    let left_alone = event_messages(&env, "thief", "DatabaseLeftAlone").await;
    assert!(
        left_alone.iter().any(|m| m.contains("dropped nothing")),
        "{left_alone:?}"
    );

    // acme itself is unaffected.
    env.wait_condition("acme", "Ready", "True", None)
        .await
        .unwrap();
    env.stop().await;
}

#[tokio::test]
async fn a_role_chorus_did_not_create_is_left_alone_until_handed_over() {
    let env = OperatorEnv::new("op-legacy", Duration::from_secs(300))
        .await
        .unwrap();
    // Another application's role and database on the same server.
    let legacy = format!("legacy_{}", unique_suffix());
    admin_sql(format!(
        "CREATE ROLE \"{legacy}\" LOGIN PASSWORD 'legacy-app-password'"
    ))
    .await;
    admin_sql(format!("CREATE DATABASE \"{legacy}\" OWNER \"{legacy}\"")).await;
    let pg = admin_url_parts().unwrap();
    let legacy_uri = format!(
        "postgres://{legacy}:legacy-app-password@{}:{}/{legacy}",
        pg.host, pg.port
    );

    let (yaml, own_db) = tenant_yaml("adopt", "");
    let yaml = yaml.replace(&own_db, &legacy);
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    let ct = env
        .wait_condition("adopt", "DatabaseReady", "False", Some("NameInUse"))
        .await
        .unwrap();
    let message = condition(&ct, "DatabaseReady").unwrap().message;
    let mark = format!("chorus.dev/tenant={}/adopt", env.ns);
    assert!(
        message.contains("not created by Chorus")
            && message.contains(&format!("COMMENT ON ROLE \"{legacy}\" IS '{mark}'")),
        "the condition says how to hand the role over: {message}"
    );
    assert!(
        can_connect(&legacy_uri).await,
        "the application's password was not changed"
    );

    // The admin hands role and database over, as the message says.
    admin_sql(format!("COMMENT ON ROLE \"{legacy}\" IS '{mark}'")).await;
    admin_sql(format!("COMMENT ON DATABASE \"{legacy}\" IS '{mark}'")).await;
    chorus_e2e::wait_for(
        "the handed-over tenant to be Ready",
        Duration::from_secs(90),
        || {
            let cts = env.api::<ChatTenant>();
            async move {
                let ct = cts.get("adopt").await.ok()?;
                (condition(&ct, "Ready")?.status == "True").then_some(())
            }
        },
    )
    .await
    .unwrap();
    let uri = secret_text(&env.client, &env.ns, "adopt-db", "uri")
        .await
        .unwrap()
        .unwrap();
    assert!(can_connect(&uri).await, "the new Secret's password works");
    assert!(
        !can_connect(&legacy_uri).await,
        "the role got a new password, known only to the Secret"
    );
    env.stop().await;
}

#[tokio::test]
async fn a_retained_database_is_found_again_by_the_same_tenant() {
    let env = OperatorEnv::new("op-retain", Duration::from_secs(300))
        .await
        .unwrap();
    let (yaml, db) = tenant_yaml("keep", "");
    let yaml = yaml.replace("reclaimPolicy: Delete", "reclaimPolicy: Retain");
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    env.wait_condition("keep", "Ready", "True", None)
        .await
        .unwrap();
    let cts = env.api::<ChatTenant>();
    cts.delete("keep", &DeleteParams::default()).await.unwrap();
    wait_gone(&cts, "keep").await.unwrap();
    assert!(exists("database", &db).await);

    // Same namespace and name: the retained role and database are its own.
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    env.wait_condition("keep", "Ready", "True", None)
        .await
        .unwrap();
    let uri = secret_text(&env.client, &env.ns, "keep-db", "uri")
        .await
        .unwrap()
        .unwrap();
    assert!(can_connect(&uri).await);
    env.stop().await;
    // The runtime pods may still be draining: end their sessions too.
    admin_sql(format!("DROP DATABASE \"{db}\" WITH (FORCE)")).await;
    admin_sql(format!("DROP ROLE \"{db}\"")).await;
}

#[tokio::test]
async fn an_admin_with_only_createrole_and_createdb_provisions_changes_and_drops() {
    let env = OperatorEnv::new("op-limited", Duration::from_secs(300))
        .await
        .unwrap();
    let admin = format!("limited_admin_{}", unique_suffix());
    admin_sql(format!(
        "CREATE ROLE \"{admin}\" LOGIN CREATEROLE CREATEDB PASSWORD 'limited-admin-password'"
    ))
    .await;
    put_server_secret_as(
        &env.client,
        &env.ns,
        "limited-pg",
        None,
        (admin.clone(), "limited-admin-password".into()),
    )
    .await
    .unwrap();
    let (yaml, db) = tenant_yaml("acme", "");
    let yaml = yaml.replace(
        "serverRef: {name: shared-pg}",
        "serverRef: {name: limited-pg}",
    );
    create_tenant(&env.client, &env.ns, &yaml).await.unwrap();
    env.wait_condition("acme", "Ready", "True", None)
        .await
        .unwrap();

    // A spec change alters only the connection limit (a CREATEROLE admin may
    // not name SUPERUSER in ALTER ROLE).
    let cts = env.api::<ChatTenant>();
    cts.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"database": {"connectionLimit": 7}}})),
    )
    .await
    .unwrap();
    chorus_e2e::wait_for(
        "the connection limit to follow",
        Duration::from_secs(30),
        || {
            let db = db.clone();
            async move {
                let (limit,): (i32,) =
                    sqlx::query_as("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1")
                        .bind(&db)
                        .fetch_one(&mut admin_db().await)
                        .await
                        .ok()?;
                (limit == 7).then_some(())
            }
        },
    )
    .await
    .unwrap();
    env.wait_condition("acme", "Ready", "True", None)
        .await
        .unwrap();

    cts.delete("acme", &DeleteParams::default()).await.unwrap();
    wait_gone(&cts, "acme").await.unwrap();
    assert!(!exists("database", &db).await && !exists("role", &db).await);
    env.stop().await;
}
