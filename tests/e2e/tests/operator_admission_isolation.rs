//! `spec.database.isolation` and `sharedDatabase` at the real
//! kube-apiserver: the isolation cannot change (in either direction, and not
//! by removing the field), the shared database cannot change or appear
//! later, and `sharedDatabase` needs `isolation: Schema`; each refusal names
//! the field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use chorus_e2e::{TestNamespace, admin_client, operator::install_crd};
use chorus_operator::crd::{ChatTenant, DatabaseIsolation};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

fn tenant(name: &str, database: Value) -> ChatTenant {
    serde_json::from_value(json!({
        "apiVersion": "chorus.dev/v1alpha1",
        "kind": "ChatTenant",
        "metadata": {"name": name},
        "spec": {
            "tenantId": name,
            "runtime": {"image": "ghcr.io/chorus-dev/chat-runtime:0.1.0"},
            "database": database
        }
    }))
    .unwrap()
}

async fn refused(api: &Api<ChatTenant>, name: &str, patch: Value, expected: &str) {
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{}", s.message);
            assert!(s.message.contains(expected), "{}", s.message);
        }
        other => panic!("expected a refusal for {patch}, got {other:?}"),
    }
}

#[tokio::test]
async fn the_isolation_and_shared_database_are_immutable() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "schema-adm").await.unwrap();
    let api: Api<ChatTenant> = Api::namespaced(client, &ns.name);
    let pp = PostParams::default();

    // Default: Database, stored as such.
    let plain = api
        .create(
            &pp,
            &tenant(
                "plain",
                json!({"serverRef": {"name": "shared-pg"}, "name": "chat_plain"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(plain.spec.database.isolation, DatabaseIsolation::Database);
    refused(
        &api,
        "plain",
        json!({"spec": {"database": {"isolation": "Schema"}}}),
        "spec.database.isolation is immutable",
    )
    .await;

    let schema = api
        .create(
            &pp,
            &tenant(
                "small",
                json!({"serverRef": {"name": "shared-pg"}, "name": "chat_small", "isolation": "Schema"}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(schema.spec.database.isolation, DatabaseIsolation::Schema);
    refused(
        &api,
        "small",
        json!({"spec": {"database": {"isolation": "Database"}}}),
        "spec.database.isolation is immutable",
    )
    .await;
    // Removing the field would default it back to Database.
    refused(
        &api,
        "small",
        json!({"spec": {"database": {"isolation": null}}}),
        "spec.database.isolation is immutable",
    )
    .await;
    // The default shared database, named explicitly, is no change; another is.
    api.patch(
        "small",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"database": {"sharedDatabase": "chorus_tenants"}}})),
    )
    .await
    .unwrap();
    refused(
        &api,
        "small",
        json!({"spec": {"database": {"sharedDatabase": "other_tenants"}}}),
        "spec.database.sharedDatabase is immutable",
    )
    .await;

    // sharedDatabase only with Schema; reserved names refused.
    for (name, database, expected) in [
        (
            "mixed",
            json!({"serverRef": {"name": "shared-pg"}, "name": "chat_mixed", "sharedDatabase": "x_tenants"}),
            "spec.database.sharedDatabase is only read with spec.database.isolation Schema",
        ),
        (
            "reserved",
            json!({"serverRef": {"name": "shared-pg"}, "name": "chat_r", "isolation": "Schema", "sharedDatabase": "postgres"}),
            "spec.database.sharedDatabase is reserved by PostgreSQL",
        ),
    ] {
        match api.create(&pp, &tenant(name, database)).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{}", s.message);
                assert!(s.message.contains(expected), "{}", s.message);
            }
            other => panic!("expected a refusal for {name}, got {other:?}"),
        }
    }
}
