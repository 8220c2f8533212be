//! Two tenants in one database, one schema each (the operator's
//! `isolation: Schema`: each role's `search_path` is its schema): each
//! runtime migrates into its own schema, numbers its rooms from 1, and
//! neither receives the other's typing or messages, although NOTIFY
//! channels belong to the database (the runtime names them after its
//! schema).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection};
use support::{Next, Replica, Ws, fresh_db, join, public_room, signup, unique};

const T: Duration = Duration::from_secs(10);

/// Role and schema `name` in the database of admin URL `db`, as the
/// operator makes them; returns the role's URL.
async fn schema_tenant(db: &str, name: &str) -> String {
    let mut admin = PgConnection::connect(db).await.unwrap();
    let database = db.rsplit('/').next().unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE \"{name}\" LOGIN PASSWORD 'pw'; \
         CREATE SCHEMA \"{name}\" AUTHORIZATION \"{name}\"; \
         ALTER ROLE \"{name}\" IN DATABASE \"{database}\" SET search_path = \"{name}\", public; \
         REVOKE ALL ON SCHEMA public FROM PUBLIC; \
         REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC; \
         GRANT CONNECT ON DATABASE \"{database}\" TO \"{name}\""
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let (_, host_and_db) = db.split_once('@').unwrap();
    format!("postgres://{name}:pw@{host_and_db}")
}

#[tokio::test]
async fn tenants_in_one_database_share_no_channel() {
    let db = fresh_db().await;
    let suffix = unique();
    let url_a = schema_tenant(&db, &format!("t_a_{suffix}")).await;
    let url_b = schema_tenant(&db, &format!("t_b_{suffix}")).await;
    let a = Replica::start(&url_a).await;
    let b = Replica::start(&url_b).await;

    let alice = signup(&a.http, "alice").await;
    let bob = signup(&a.http, "bob").await;
    let carol = signup(&b.http, "carol").await;
    let room_a = public_room(&a.http, &alice, "general").await;
    let room_b = public_room(&b.http, &carol, "general").await;
    assert_eq!(room_a, room_b, "each schema numbers its rooms from 1");
    join(&a.http, &bob, room_a).await;

    let mut alice_ws = Ws::connect(&a.ws, &alice).await;
    let mut bob_ws = Ws::connect(&a.ws, &bob).await;
    let mut carol_ws = Ws::connect(&b.ws, &carol).await;
    alice_ws.subscribe(room_a, None).await;
    bob_ws.subscribe(room_a, None).await;
    carol_ws.subscribe(room_b, None).await;

    alice_ws
        .send(json!({"type": "typing", "room": room_a}))
        .await;
    bob_ws.expect("typing", T, |f| f["type"] == "typing").await;
    alice_ws
        .send(json!({"type": "send", "id": "s1", "room": room_a, "client_msg_id": "m1", "body": "only for tenant a"}))
        .await;
    alice_ws.expect("ack", T, |f| f["type"] == "ack").await;
    bob_ws.expect("event", T, |f| f["type"] == "event").await;

    // Nothing of tenant a reaches tenant b's room with the same id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match carol_ws.next(left).await {
            Next::Frame(f) => assert!(
                f["type"] != "typing" && f["type"] != "event",
                "tenant b got {f}"
            ),
            Next::Timeout => break,
            Next::Closed(code) => panic!("closed: {code:?}"),
        }
    }
}
