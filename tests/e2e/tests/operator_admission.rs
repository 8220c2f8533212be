//! Invalid ChatTenants are refused by the real kube-apiserver at admission
//! (schema + CEL), with a message that names the field; immutable fields say
//! so on update.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use chorus_e2e::{TestNamespace, admin_client, operator::install_crd};
use chorus_operator::crd::ChatTenant;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

fn valid() -> Value {
    json!({
        "apiVersion": "chorus.dev/v1alpha1",
        "kind": "ChatTenant",
        "metadata": {"name": "acme"},
        "spec": {
            "tenantId": "acme",
            "runtime": {"image": "ghcr.io/chorus-dev/chat-runtime:0.1.0"},
            "database": {"serverRef": {"name": "shared-pg"}, "name": "chat_acme"}
        }
    })
}

/// Applies `doc` and returns the apiserver's refusal message.
async fn refusal(api: &Api<ChatTenant>, name: &str, doc: &Value) -> String {
    let ct: ChatTenant = match serde_json::from_value(doc.clone()) {
        Ok(ct) => ct,
        // Shapes the Rust type cannot hold go through a raw apply.
        Err(_) => {
            return match api
                .patch(name, &PatchParams::apply("e2e"), &Patch::Apply(doc))
                .await
            {
                Err(kube::Error::Api(s)) => s.message,
                other => panic!("expected a refusal for {doc}, got {other:?}"),
            };
        }
    };
    match api.create(&PostParams::default(), &ct).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            s.message
        }
        other => panic!("expected 422 for {doc}, got {other:?}"),
    }
}

fn with(mut doc: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut target = &mut doc;
    for part in parent.split('/').filter(|p| !p.is_empty()) {
        target = target
            .as_object_mut()
            .unwrap()
            .entry(part)
            .or_insert_with(|| json!({}));
    }
    target
        .as_object_mut()
        .unwrap()
        .insert(key.to_string(), value);
    doc
}

#[tokio::test]
async fn bad_specs_are_refused_with_a_message_naming_the_field() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "admission").await.unwrap();
    let api: Api<ChatTenant> = Api::namespaced(client, &ns.name);

    let cases: Vec<(Value, &str)> = vec![
        (
            with(valid(), "/spec/database/name", json!("postgres")),
            "spec.database.name is reserved",
        ),
        (
            with(valid(), "/spec/database/name", json!("template1")),
            "spec.database.name is reserved",
        ),
        (
            with(valid(), "/spec/database/name", json!("pg_x")),
            "spec.database.name is reserved",
        ),
        (
            with(valid(), "/spec/database/name", json!("public")),
            "spec.database.name is reserved",
        ),
        (
            with(
                valid(),
                "/spec/database/passwordRotation",
                json!({"requestedAt": "next tuesday at noon"}),
            ),
            "spec.database.passwordRotation.requestedAt",
        ),
        (
            with(
                valid(),
                "/spec/networkPolicy",
                json!({"allowEgressTo": [{"cidr": "10.0.0.0/33"}]}),
            ),
            "spec.networkPolicy.allowEgressTo[].cidr must be a CIDR",
        ),
        (
            with(
                valid(),
                "/spec/networkPolicy",
                json!({"allowEgressTo": [{"cidr": "10.0.0.0/16", "ports": [70000]}]}),
            ),
            "spec.networkPolicy.allowEgressTo[0].ports[0]",
        ),
        (
            with(
                valid(),
                "/spec/database/name",
                json!("Robert'); DROP TABLE"),
            ),
            "spec.database.name",
        ),
        (
            with(valid(), "/spec/tenantId", json!("Not_A_Label")),
            "spec.tenantId",
        ),
        (
            with(valid(), "/spec/runtime/replicas", json!(-1)),
            "spec.runtime.replicas",
        ),
        (
            with(
                valid(),
                "/spec/runtime/terminationGracePeriodSeconds",
                json!(5),
            ),
            "spec.runtime.terminationGracePeriodSeconds",
        ),
        (
            with(
                valid(),
                "/spec/runtime/env",
                json!([{"name": "CHAT_DATABASE_URL", "value": "x"}]),
            ),
            "names starting with CHAT_ are set by the operator",
        ),
        (
            with(
                valid(),
                "/spec/autoscaling",
                json!({"minReplicas": 5, "maxReplicas": 2}),
            ),
            "spec.autoscaling.minReplicas must be less than or equal to spec.autoscaling.maxReplicas",
        ),
        (
            with(
                valid(),
                "/spec/autoscaling",
                json!({"targetCPUUtilizationPercentage": 0}),
            ),
            "targetCPUUtilizationPercentage",
        ),
        (
            with(valid(), "/spec/database/reclaimPolicy", json!("Shred")),
            "spec.database.reclaimPolicy",
        ),
        (
            with(valid(), "/spec/database/connectionLimit", json!(0)),
            "spec.database.connectionLimit",
        ),
        (
            with(valid(), "/spec/limits/maxMessageBytes", json!(10)),
            "spec.limits.maxMessageBytes",
        ),
        (
            with(valid(), "/spec/auth", json!({"mode": "External"})),
            "spec.auth.externalJwt is required when spec.auth.mode is External",
        ),
        (
            with(
                valid(),
                "/spec/auth",
                json!({"mode": "External", "externalJwt": {"issuer": "i", "audience": "a"}}),
            ),
            "needs secretRef (HS256 shared secret) or jwksUri",
        ),
        (
            with(
                valid(),
                "/spec/auth",
                json!({"mode": "External", "externalJwt": {"issuer": "i", "audience": "a", "jwksUri": "http://insecure"}}),
            ),
            "jwksUri must be an https:// URL",
        ),
        (
            with(valid(), "/spec/rollout/canary", json!({"weight": 10})),
            "spec.rollout.canary.weight needs spec.rollout.candidate",
        ),
        (
            with(
                valid(),
                "/spec/rollout",
                json!({"candidate": {"image": "x:2"}, "canary": {"weight": 101}}),
            ),
            "spec.rollout.canary.weight",
        ),
        (
            with(
                valid(),
                "/spec/rollout",
                json!({"strategy": "BlueGreen", "candidate": {"image": "x:2"}, "canary": {"weight": 5}}),
            ),
            "spec.rollout.canary is only valid with strategy Canary",
        ),
        (
            with(
                valid(),
                "/spec/exposure",
                json!({"host": "a.example.com", "ingress": {}, "gateway": {"parentRef": {"name": "g"}}}),
            ),
            "set either ingress or gateway, not both",
        ),
        (
            with(valid(), "/metadata/name", json!("a".repeat(51))),
            "metadata.name must be at most 50 characters",
        ),
        (
            with(valid(), "/spec/runtime/broker", json!({"type": "Nats"})),
            "spec.runtime.broker.nats (with url) is required",
        ),
        (
            with(
                valid(),
                "/spec/runtime/broker",
                json!({"type": "Postgres", "nats": {"url": "nats://nats:4222"}}),
            ),
            "spec.runtime.broker.nats is only read when spec.runtime.broker.type is Nats",
        ),
        (
            with(
                valid(),
                "/spec/runtime/broker",
                json!({"type": "Nats", "nats": {"url": "http://nats:4222"}}),
            ),
            "spec.runtime.broker.nats.url must be nats://host:port",
        ),
        (
            with(
                valid(),
                "/spec/runtime/broker",
                json!({"type": "Nats", "nats": {"url": "nats://nats:4222", "subjectPrefix": "chorus.*"}}),
            ),
            "spec.runtime.broker.nats.subjectPrefix",
        ),
        (
            with(
                valid(),
                "/spec/runtime/broker",
                json!({"type": "Nats", "nats": {"url": "nats://nats:4222", "auth": {
                    "tokenSecretRef": {"name": "nats", "key": "token"},
                    "basicAuthSecretRef": {"name": "nats-login"}}}}),
            ),
            "spec.runtime.broker.nats.auth needs exactly one of tokenSecretRef and basicAuthSecretRef",
        ),
        (
            with(
                valid(),
                "/spec/runtime/broker",
                json!({"type": "Nats", "nats": {"url": "nats://nats:4222", "auth": {}}}),
            ),
            "spec.runtime.broker.nats.auth needs exactly one of tokenSecretRef and basicAuthSecretRef",
        ),
    ];
    for (doc, expected) in cases {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        let message = refusal(&api, &name, &doc).await;
        assert!(
            message.contains(expected),
            "refusal for {doc} should mention {expected:?}; got: {message}"
        );
    }
}

#[tokio::test]
async fn immutable_fields_say_so() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "immutable").await.unwrap();
    let api: Api<ChatTenant> = Api::namespaced(client, &ns.name);
    let ct: ChatTenant = serde_json::from_value(valid()).unwrap();
    api.create(&PostParams::default(), &ct).await.unwrap();
    for (patch, expected) in [
        (
            json!({"spec": {"database": {"name": "chat_other"}}}),
            "spec.database.name is immutable",
        ),
        (
            json!({"spec": {"tenantId": "other"}}),
            "spec.tenantId is immutable",
        ),
        (
            json!({"spec": {"database": {"serverRef": {"name": "other-pg"}}}}),
            "spec.database.serverRef is immutable",
        ),
    ] {
        match api
            .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422);
                assert!(s.message.contains(expected), "{}", s.message);
            }
            other => panic!("expected a refusal for {patch}, got {other:?}"),
        }
    }
    // Mutable fields still change.
    api.patch(
        "acme",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runtime": {"replicas": 5}}})),
    )
    .await
    .unwrap();
}
