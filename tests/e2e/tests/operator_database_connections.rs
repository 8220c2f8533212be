//! The connection gauges against the real PostgreSQL: the operator's one
//! query per server reports the sessions a tenant's role really holds, the
//! server's client sessions and its `max_connections`, and `/metrics`
//! renders them with the labels the alerts join on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{catalog, unique_suffix};
use chorus_operator::{
    crd::ChatTenant,
    database::{Ident, PasswordAction, Postgres, Provisioner, ServerConfig, TenantDatabase},
    metrics::Metrics,
};
use sqlx::{Connection, PgConnection};

fn server() -> ServerConfig {
    chorus_e2e::operator::admin_server_config().unwrap()
}

/// The value of the sample `name{labels}` in `text`.
fn sample(text: &str, name_and_labels: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test]
async fn the_gauges_report_the_servers_real_counts() {
    let server = server();
    let role = format!("chat_conn_{}", unique_suffix());
    let db = TenantDatabase {
        name: Ident::new(&role).unwrap(),
        connection_limit: 10,
        owner: "e2e/conns".into(),
        isolation: chorus_operator::database::Isolation::Database,
    };
    let postgres = Postgres::default();
    postgres
        .ensure(&server, &db, &PasswordAction::Set("pw-conns".into()))
        .await
        .unwrap();
    let ct: ChatTenant = serde_yaml::from_str(&format!(
        r#"
apiVersion: chorus.dev/v1alpha1
kind: ChatTenant
metadata: {{name: conns, namespace: e2e, uid: 0b7f6f2e-2222-4c3b-9d7e-5a4f3c2b1a00}}
spec:
  tenantId: conns
  runtime: {{image: "ghcr.io/chorus-dev/chat-runtime:0.1.0"}}
  database: {{serverRef: {{name: pg}}, name: {role}, connectionLimit: 10}}
"#
    ))
    .unwrap();
    let t = chorus_operator::validate::validate(&ct).unwrap();
    let metrics = Metrics::default();
    let address = format!("{}:{}", server.host, server.port);
    metrics.tenants.database_server(&t, address.clone());
    metrics.tenants.observe(&t, &Default::default());

    // Three sessions as the tenant's role.
    let url = format!(
        "postgres://{role}:pw-conns@{}:{}/{role}?sslmode=disable",
        server.host, server.port
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(PgConnection::connect(&url).await.unwrap());
    }
    let tenant = r#"chorus_tenant_database_connections{namespace="e2e",tenant="conns"}"#;
    let limit = r#"chorus_tenant_database_connection_limit{namespace="e2e",tenant="conns"}"#;
    let total = format!(r#"chorus_database_server_connections{{server="{address}"}}"#);
    let max = format!(r#"chorus_database_server_max_connections{{server="{address}"}}"#);
    let read = || async {
        metrics.observe_connections(&postgres.connections().await);
        metrics.render()
    };

    let text = read().await;
    assert_eq!(sample(&text, tenant), Some(3), "{text}");
    assert_eq!(sample(&text, limit), Some(10), "{text}");
    let mut admin = catalog::admin_connection().await.unwrap();
    let (real_max,): (String,) = sqlx::query_as("SELECT current_setting('max_connections')")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(sample(&text, &max), real_max.parse().ok(), "{text}");
    // Every client session counts: the tenant's three, the operator's own.
    let sessions = sample(&text, &total).unwrap();
    assert!(sessions >= 4, "{sessions}\n{text}");
    let (now,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(
        (sessions - now).abs() <= 2,
        "reported {sessions}, pg_stat_activity has {now}"
    );

    // A session ends: the next reading follows (a backend leaves
    // pg_stat_activity a moment after its client closes).
    held.pop().unwrap().close().await.unwrap();
    let mut last = None;
    for _ in 0..50 {
        last = sample(&read().await, tenant);
        if last == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, Some(2));
    for c in held {
        c.close().await.unwrap();
    }
    chorus_operator::database::drop_tenant(
        &chorus_operator::database::AdminPools::default(),
        &server,
        &db,
    )
    .await
    .unwrap();
}
