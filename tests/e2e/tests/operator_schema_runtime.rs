//! Two tenants with `spec.database.isolation: Schema` on the shared cluster:
//! both become Ready on real runtime pods that migrated into their own
//! schema of one shared database, and chat; the rooms of both have the same
//! ids (each schema has its own sequences), yet one tenant's messages and
//! typing never reach the other's sockets (the runtime's NOTIFY channels
//! carry the schema's name). `reclaimPolicy: Delete` then drops both
//! schemas and roles; the shared database stays.
//!
//! Needs the runtime image of this tree (`scripts/images.sh runtime`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    catalog,
    chat::{ChatSocket, Closed, reachable_service_url, request, signup},
    operator::{OperatorEnv, TEST_RESOURCES, create_tenant, secret_text, wait_gone},
    unique_suffix,
};
use chorus_operator::crd::ChatTenant;
use kube::api::DeleteParams;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);

fn schema_tenant_yaml(name: &str, db: &str, shared: &str) -> String {
    format!(
        r#"
apiVersion: chorus.dev/v1alpha1
kind: ChatTenant
metadata: {{name: {name}}}
spec:
  tenantId: {name}
  runtime: {{image: "ghcr.io/chorus-dev/chat-runtime:0.1.0", replicas: 1, resources: {TEST_RESOURCES}}}
  database: {{serverRef: {{name: shared-pg}}, name: {db}, reclaimPolicy: Delete, isolation: Schema, sharedDatabase: {shared}}}
"#
    )
}

/// A room `general` of `token`'s tenant at `url`, joined by `others`; its id.
async fn room(url: &str, token: &str) -> i64 {
    let (status, room) = request(
        "POST",
        &format!("{url}/api/v1/rooms"),
        Some(token),
        Some(json!({"name": "general", "kind": "public"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{room}");
    room["room"]["id"].as_i64().unwrap()
}

async fn subscribed(url: &str, token: &str, room: i64) -> ChatSocket {
    let mut s = ChatSocket::connect(url, token).await.unwrap();
    s.send(json!({"type": "subscribe", "room": room}))
        .await
        .unwrap();
    s.expect("subscribed", T).await.unwrap();
    s
}

/// Frames of `types` that arrive on `s` within `wait`.
async fn stray(s: &mut ChatSocket, types: &[&str], wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match s.next_frame(left).await {
            Ok(v) if types.iter().any(|t| v["type"] == *t) => seen.push(v),
            Ok(_) => {}
            Err(Closed::Idle) => return seen,
            Err(c) => panic!("connection ended: {c:?}"),
        }
    }
}

#[tokio::test]
async fn schema_tenants_serve_chat_from_one_shared_database_and_stay_apart() {
    let env = OperatorEnv::new("schema-rt", Duration::from_secs(300))
        .await
        .unwrap();
    let suffix = unique_suffix().replace('-', "_");
    let shared = format!("shared_{suffix}");
    let (db_a, db_b) = (format!("chat_sa_{suffix}"), format!("chat_sb_{suffix}"));
    for (name, db) in [("sa", &db_a), ("sb", &db_b)] {
        create_tenant(&env.client, &env.ns, &schema_tenant_yaml(name, db, &shared))
            .await
            .unwrap();
    }
    for (name, db) in [("sa", &db_a), ("sb", &db_b)] {
        let ct = env
            .wait_condition(name, "Ready", "True", None)
            .await
            .unwrap();
        let status = ct.status.unwrap().database.unwrap();
        assert_eq!(status.name, shared);
        assert_eq!(status.schema.as_deref(), Some(db.as_str()));
        assert_eq!(
            secret_text(&env.client, &env.ns, &format!("{name}-db"), "dbname")
                .await
                .unwrap()
                .as_deref(),
            Some(shared.as_str())
        );
    }

    let url_a = reachable_service_url(&env.client, &env.ns, "sa", "http")
        .await
        .unwrap();
    let url_b = reachable_service_url(&env.client, &env.ns, "sb", "http")
        .await
        .unwrap();
    let alice = signup(&url_a, "alice").await.unwrap();
    let bob = signup(&url_a, "bob").await.unwrap();
    let carol = signup(&url_b, "carol").await.unwrap();
    let room_a = room(&url_a, &alice).await;
    let room_b = room(&url_b, &carol).await;
    assert_eq!(
        room_a, room_b,
        "each schema numbers its rooms from the start"
    );
    let (status, joined) = request(
        "POST",
        &format!("{url_a}/api/v1/rooms/{room_a}/join"),
        Some(&bob),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{joined}");
    let mut sa = subscribed(&url_a, &alice, room_a).await;
    let mut sb = subscribed(&url_a, &bob, room_a).await;
    let mut sc = subscribed(&url_b, &carol, room_b).await;

    sa.send(json!({"type": "typing", "room": room_a}))
        .await
        .unwrap();
    sb.expect("typing", T).await.unwrap();
    sa.send(json!({"type": "send", "id": "1", "room": room_a, "client_msg_id": "m1", "body": "hello from a schema"}))
        .await
        .unwrap();
    let ack = sa.expect("ack", T).await.unwrap();
    let event = sb.expect("event", T).await.unwrap();
    assert_eq!(event["body"], "hello from a schema");
    assert_eq!(event["seq"], ack["seq"]);
    assert_eq!(
        stray(&mut sc, &["typing", "event"], Duration::from_secs(3)).await,
        Vec::<Value>::new(),
        "nothing of tenant sa reaches tenant sb's room with the same id"
    );

    // The rows are in sa's schema, written as its role; sb's are empty.
    let uri_a = secret_text(&env.client, &env.ns, "sa-db", "uri")
        .await
        .unwrap()
        .unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&uri_a)
        .await
        .unwrap();
    let (count, schema): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT schemaname::text FROM pg_tables WHERE tablename = 'messages' AND tableowner = current_user)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((count, schema.as_str()), (1, db_a.as_str()));
    let other = format!("SELECT count(*) FROM \"{db_b}\".messages");
    assert!(
        sqlx::query(sqlx::AssertSqlSafe(other))
            .fetch_one(&mut conn)
            .await
            .is_err(),
        "sa's role reads nothing of sb's schema"
    );
    <sqlx::PgConnection as sqlx::Connection>::close(conn)
        .await
        .unwrap();
    for s in [sa, sb, sc] {
        s.close().await;
    }

    // reclaimPolicy Delete: schemas and roles go, the shared database stays.
    let tenants = env.api::<ChatTenant>();
    for name in ["sa", "sb"] {
        tenants
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for name in ["sa", "sb"] {
        wait_gone(&tenants, name).await.unwrap();
    }
    for db in [&db_a, &db_b] {
        assert!(!catalog::role_exists(db).await.unwrap(), "{db}");
    }
    assert!(catalog::database_exists(&shared).await.unwrap());
    env.stop().await;
    catalog::admin_sql(format!("DROP DATABASE \"{shared}\" WITH (FORCE)"))
        .await
        .unwrap();
    catalog::admin_sql(format!("DROP ROLE \"{shared}_members\""))
        .await
        .unwrap();
}
