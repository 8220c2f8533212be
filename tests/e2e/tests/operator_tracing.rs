//! `spec.runtime.tracing`: admission refuses bad values naming the field,
//! and a tenant's pods on the real node export their traces to an OTLP
//! receiver the test runs on the host (where pods reach the test PostgreSQL
//! too): one WebSocket send is one trace, and the resource names the tenant.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use chorus_e2e::{
    TestNamespace, admin_client,
    chat::{ChatSocket, reachable_service_url, request, signup},
    delete_namespace,
    operator::{OperatorEnv, install_crd, pod_database_host},
};
use chorus_operator::crd::ChatTenant;
use chorus_telemetry::receiver::{Received, Receiver};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);

fn tenant(name: &str, runtime: Value) -> Value {
    json!({
        "apiVersion": "chorus.dev/v1alpha1",
        "kind": "ChatTenant",
        "metadata": {"name": name},
        "spec": {
            "tenantId": name,
            "runtime": runtime,
            "database": {"serverRef": {"name": "shared-pg"}, "name": format!("chat_{name}")}
        }
    })
}

#[tokio::test]
async fn bad_tracing_settings_are_refused_naming_the_field() {
    let client = admin_client().await.unwrap();
    install_crd(&client).await.unwrap();
    let ns = TestNamespace::create(&client, "otel-adm").await.unwrap();
    let api: Api<ChatTenant> = Api::namespaced(client.clone(), &ns.name);
    let image = "ghcr.io/chorus-dev/chat-runtime:0.1.0";
    let cases = [
        (
            json!({"image": image, "tracing": {"endpoint": "otel-collector:4318"}}),
            "spec.runtime.tracing.endpoint must be an http:// or https:// URL",
        ),
        (
            json!({"image": image, "tracing": {"endpoint": "grpc://c:4317"}}),
            "spec.runtime.tracing.endpoint must be an http:// or https:// URL",
        ),
        (
            json!({"image": image, "tracing": {"endpoint": "http://c:4318", "samplingRatio": 1.5}}),
            "spec.runtime.tracing.samplingRatio",
        ),
        (
            json!({"image": image, "tracing": {"endpoint": "http://c:4318", "protocol": "grpc"}}),
            "spec.runtime.tracing.protocol",
        ),
        (
            json!({"image": image, "tracing": {"endpoint": "http://c:4318"},
                   "env": [{"name": "OTEL_SERVICE_NAME", "value": "x"}]}),
            "spec.runtime.env: OTEL_* variables are set by the operator from spec.runtime.tracing",
        ),
    ];
    for (i, (runtime, says)) in cases.into_iter().enumerate() {
        let name = format!("bad{i}");
        let doc = tenant(&name, runtime);
        let refused = api
            .patch(&name, &PatchParams::apply("e2e"), &Patch::Apply(&doc))
            .await;
        match refused {
            Err(kube::Error::Api(s)) => assert!(s.message.contains(says), "{doc}: {}", s.message),
            other => panic!("{doc} was not refused: {other:?}"),
        }
    }
    // Accepted: defaults filled in; OTEL_* by hand without tracing.
    let ok = tenant(
        "good",
        json!({"image": image, "tracing": {"endpoint": "https://otlp.example.com"}}),
    );
    let ct = api
        .patch("good", &PatchParams::apply("e2e"), &Patch::Apply(&ok))
        .await
        .unwrap();
    let tracing = ct.spec.runtime.tracing.unwrap();
    assert_eq!(tracing.sampling_ratio, 0.1);
    let by_hand = tenant(
        "byhand",
        json!({"image": image, "env": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://c:4318"}]}),
    );
    api.patch(
        "byhand",
        &PatchParams::apply("e2e"),
        &Patch::Apply(&by_hand),
    )
    .await
    .unwrap();
    delete_namespace(&client, &ns.name).await;
}

fn find<'a>(spans: &'a [Received], name: &str, pred: impl Fn(&Received) -> bool) -> &'a Received {
    spans
        .iter()
        .find(|s| s.name == name && pred(s))
        .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

#[tokio::test]
async fn a_tenants_pods_export_one_trace_per_send() {
    let host =
        pod_database_host().expect("CHORUS_TEST_POD_DATABASE_HOST (pods reach the host there)");
    let receiver = Receiver::start_on(&format!("{host}:0")).await.unwrap();
    let env = OperatorEnv::new("otel", Duration::from_secs(300))
        .await
        .unwrap();
    let extra = format!(
        "  runtime: {{image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\", resources: {}, tracing: {{endpoint: \"{}\", samplingRatio: 1}}}}",
        chorus_e2e::operator::TEST_RESOURCES,
        receiver.endpoint
    );
    env.ready_tenant("acme", &extra).await.unwrap();
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let alice = signup(&url, "alice").await.unwrap();
    let (status, room) = request(
        "POST",
        &format!("{url}/api/v1/rooms"),
        Some(&alice),
        Some(json!({"name": "general", "kind": "public"})),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{room}");
    let room = room["room"]["id"].as_i64().unwrap();
    let mut socket = ChatSocket::connect(&url, &alice).await.unwrap();
    socket
        .send(json!({"type": "subscribe", "room": room}))
        .await
        .unwrap();
    socket.expect("subscribed", T).await.unwrap();
    socket
        .send(json!({"type": "send", "id": "1", "room": room, "client_msg_id": "m1", "body": "traced"}))
        .await
        .unwrap();
    // The local fan-out runs before the ack is answered.
    socket.expect("event", T).await.unwrap();
    socket.expect("ack", T).await.unwrap();

    // The batch processor exports every 5 s.
    let spans = receiver
        .wait_for(Duration::from_secs(30), |s| {
            s.iter().any(|s| s.name == "chat.fanout")
        })
        .await;
    let frame = find(&spans, "ws.frame", |s| s.attr("frame.type") == Some("send"));
    let send = find(&spans, "chat.send", |s| s.parent_span_id == frame.span_id);
    let commit = find(&spans, "chat.commit", |s| s.parent_span_id == send.span_id);
    let fanout = find(&spans, "chat.fanout", |s| {
        s.parent_span_id == commit.span_id
    });
    for s in [send, commit, fanout] {
        assert_eq!(s.trace_id, frame.trace_id);
    }
    let resource = &frame.resource;
    assert_eq!(
        resource.get("service.name").map(String::as_str),
        Some("chat-runtime")
    );
    assert_eq!(
        resource.get("chorus.tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        resource.get("k8s.namespace.name").map(String::as_str),
        Some(env.ns.as_str())
    );
    let pod = resource.get("k8s.pod.name").cloned().unwrap_or_default();
    assert!(
        pod.starts_with("acme-blue-"),
        "the kubelet expanded $(CHAT_POD_NAME): {pod}"
    );
    assert_eq!(socket.hello["server"].as_str(), Some(pod.as_str()));
    socket.close().await;
    env.stop().await;
}
