//! Migrations on a real PostgreSQL as replicas of a rollout meet them:
//! several replicas starting together on an empty database (one of the
//! migrations is a `CREATE INDEX CONCURRENTLY`, which used to deadlock
//! against a replica waiting for the migration lock), and a replica of the
//! previous release starting against a database a newer release migrated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use chat_runtime::store::{MIGRATOR, Store};
use sqlx::Connection;

#[tokio::test]
async fn replicas_starting_together_migrate_once_without_deadlock() {
    for _ in 0..3 {
        let db = support::fresh_db().await;
        let mut starts = Vec::new();
        for _ in 0..4 {
            let db = db.clone();
            starts.push(tokio::spawn(async move {
                let store = Store::connect(&db, 4, Duration::from_secs(10))
                    .await
                    .unwrap();
                store.migrate().await
            }));
        }
        for s in starts {
            s.await.unwrap().expect("every replica starts");
        }
        let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
        let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(
            applied,
            MIGRATOR.iter().count() as i64,
            "each migration applied once"
        );
    }
}

#[tokio::test]
async fn a_replica_of_the_previous_release_starts_against_a_newer_schema() {
    let db = support::fresh_db().await;
    let store = Store::connect(&db, 2, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // A newer release added an (expand-only) migration this binary does not know.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::raw_sql("ALTER TABLE messages ADD COLUMN IF NOT EXISTS future_flag boolean")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'a newer release', true, '\\x00'::bytea, 1)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // This binary (the "previous release" here) still starts and serves.
    let again = Store::connect(&db, 2, Duration::from_secs(10))
        .await
        .unwrap();
    again
        .migrate()
        .await
        .expect("an older binary starts against a newer, expand-only schema");
    let replica = support::Replica::start(&db).await;
    let token = support::signup(&replica.http, "alice").await;
    let room = support::public_room(&replica.http, &token, "general").await;
    assert!(room > 0);
}
