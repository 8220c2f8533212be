//! Every string the operator turns into a child name, label value, DNS name,
//! reference or variable name is checked at admission by the real
//! kube-apiserver against its strictest consumer, and the controller's own
//! check (`validate`) agrees with admission case by case: what admission
//! accepts the controller accepts, what it refuses the controller refuses
//! with the same field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use chorus_e2e::{TestNamespace, admin_client, operator::install_crd};
use chorus_operator::{
    crd::ChatTenant,
    validate::{InvalidSpec, validate},
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};

fn valid(name: &str) -> Value {
    json!({
        "apiVersion": "chorus.dev/v1alpha1",
        "kind": "ChatTenant",
        "metadata": {"name": name},
        "spec": {
            "tenantId": "acme",
            "runtime": {"image": "ghcr.io/chorus-dev/chat-runtime:0.1.0"},
            "database": {"serverRef": {"name": "shared-pg"}, "name": "chat_acme"}
        }
    })
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

/// (field, document, accepted).
fn cases() -> Vec<(&'static str, Value, bool)> {
    let v = || valid("acme");
    let host = |h: &str| json!({"host": h});
    let ext = |secret_ref: Value| json!({"mode": "External", "externalJwt": {"issuer": "i", "audience": "a", "secretRef": secret_ref}});
    vec![
        // metadata.name: children are <name>, <name>-blue, <name>-preview,
        // <name>-default-deny, <name>-db, ...; Services need DNS-1035 labels
        // before v1.34, so the name starts with a letter, has no dots, and
        // leaves room for the longest suffix.
        ("metadata.name", valid("acme"), true),
        ("metadata.name", valid("a-1"), true),
        ("metadata.name", valid(&"a".repeat(50)), true),
        ("metadata.name", valid(&"a".repeat(51)), false),
        ("metadata.name", valid("acme.eu"), false),
        ("metadata.name", valid("1acme"), false),
        ("metadata.name", valid("acme-"), false),
        // Images: the Deployment refuses surrounding whitespace.
        (
            "spec.runtime.image",
            with(v(), "/spec/runtime/image", json!("rt:1 x")),
            false,
        ),
        (
            "spec.rollout.candidate.image",
            with(v(), "/spec/rollout/candidate", json!({"image": "rt: 2"})),
            false,
        ),
        // Environment variable names (the Deployment's rule before v1.34).
        (
            "spec.runtime.env[0].name",
            with(
                v(),
                "/spec/runtime/env",
                json!([{"name": "MY_VAR.x", "value": "1"}]),
            ),
            true,
        ),
        (
            "spec.runtime.env[0].name",
            with(
                v(),
                "/spec/runtime/env",
                json!([{"name": "1X", "value": "1"}]),
            ),
            false,
        ),
        (
            "spec.runtime.env[0].name",
            with(
                v(),
                "/spec/runtime/env",
                json!([{"name": "A=B", "value": "1"}]),
            ),
            false,
        ),
        // Object references.
        (
            "spec.database.serverRef.name",
            with(v(), "/spec/database/serverRef/name", json!("pg.prod-1")),
            true,
        ),
        (
            "spec.database.serverRef.name",
            with(v(), "/spec/database/serverRef/name", json!("PG_prod")),
            false,
        ),
        (
            "spec.auth.externalJwt.secretRef.name",
            with(
                v(),
                "/spec/auth",
                ext(json!({"name": "jwt key", "key": "k"})),
            ),
            false,
        ),
        (
            "spec.auth.externalJwt.secretRef.key",
            with(v(), "/spec/auth", ext(json!({"name": "jwt", "key": "k/1"}))),
            false,
        ),
        (
            "spec.auth.externalJwt.secretRef.key",
            with(
                v(),
                "/spec/auth",
                ext(json!({"name": "jwt", "key": "hs256.key_1"})),
            ),
            true,
        ),
        // Host names (Ingress, HTTPRoute, DNS).
        (
            "spec.exposure.host",
            with(v(), "/spec/exposure", host("acme.chat.example.com")),
            true,
        ),
        (
            "spec.exposure.host",
            with(v(), "/spec/exposure", host("10.0.0.1")),
            false,
        ),
        (
            "spec.exposure.host",
            with(v(), "/spec/exposure", host("a..example.com")),
            false,
        ),
        (
            "spec.exposure.host",
            with(v(), "/spec/exposure", host("a.-x.example.com")),
            false,
        ),
        (
            "spec.exposure.host",
            with(
                v(),
                "/spec/exposure",
                host(&format!("{}.example.com", "a".repeat(64))),
            ),
            false,
        ),
        (
            "spec.exposure.tls.secretName",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "tls": {"secretName": "Acme_TLS"}}),
            ),
            false,
        ),
        (
            "spec.exposure.ingress.className",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "ingress": {"className": "nginx internal"}}),
            ),
            false,
        ),
        (
            "spec.exposure.ingress.annotations",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "ingress": {"annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "1m"}}}),
            ),
            true,
        ),
        (
            "spec.exposure.ingress.annotations",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "ingress": {"annotations": {"bad key": "1"}}}),
            ),
            false,
        ),
        (
            "spec.exposure.gateway.parentRef.name",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "gateway": {"parentRef": {"name": "Public"}}}),
            ),
            false,
        ),
        (
            "spec.exposure.gateway.parentRef.namespace",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "gateway": {"parentRef": {"name": "public", "namespace": "gw.x"}}}),
            ),
            false,
        ),
        (
            "spec.exposure.gateway.parentRef.sectionName",
            with(
                v(),
                "/spec/exposure",
                json!({"host": "a.example.com", "gateway": {"parentRef": {"name": "public", "sectionName": "HTTPS"}}}),
            ),
            false,
        ),
        (
            "spec.networkPolicy.allowMetricsFrom[0].namespace",
            with(
                v(),
                "/spec/networkPolicy",
                json!({"allowMetricsFrom": [{"namespace": "Monitoring"}]}),
            ),
            false,
        ),
    ]
}

#[tokio::test]
async fn admission_and_the_controller_agree_on_every_derived_name() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "admission-names")
        .await
        .unwrap();
    let api: Api<ChatTenant> = Api::namespaced(client, &ns.name);

    for (field, doc, accepted) in cases() {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        let res = api
            .patch(&name, &PatchParams::apply("e2e"), &Patch::Apply(&doc))
            .await;
        // The controller's verdict on the same object (with the metadata
        // the apiserver would add).
        let mut local: ChatTenant = serde_json::from_value(doc.clone()).unwrap();
        local.metadata.namespace = Some(ns.name.clone());
        local.metadata.uid = Some("uid".into());
        let verdict = validate(&local);
        match (res, accepted) {
            (Ok(stored), true) => {
                assert!(verdict.is_ok(), "{field}: admitted, but {verdict:?}");
                let _ = validate(&stored);
                api.delete(&name, &DeleteParams::default()).await.unwrap();
            }
            (Err(kube::Error::Api(s)), false) => {
                assert_eq!(s.code, 422, "{field}: {s:?}");
                let shown = field.split('[').next().unwrap();
                assert!(
                    s.message.contains(shown),
                    "{field}: the refusal should name the field; got: {}",
                    s.message
                );
                match verdict {
                    Err(InvalidSpec::Field { field: f, .. }) => assert_eq!(f, field),
                    other => panic!("{field}: refused at admission, controller says {other:?}"),
                }
            }
            (other, _) => panic!("{field}: expected accepted={accepted} for {doc}, got {other:?}"),
        }
    }
}
