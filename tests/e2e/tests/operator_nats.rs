//! A tenant on the NATS broker, in the cluster: nats-server (built from its
//! Go module, image `localhost/chorus/nats-server`) runs as a pod that
//! requires a user and password; the ChatTenant names its Secret under
//! `spec.runtime.broker.nats.auth`. The runtime's two replicas log in, and a
//! presence change on one pod reaches a client on the other (presence never
//! touches the database, so only NATS can carry it), as does a message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::{Duration, Instant};

use chorus_e2e::{
    chat::{ChatSocket, create_room, join_room, reachable_service_url, signup},
    operator::{OperatorEnv, TEST_RESOURCES},
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Secret, Service},
};
use kube::api::PostParams;
use serde_json::json;

const T: Duration = Duration::from_secs(120);
/// The image `scripts/images.sh nats` builds (its tag is the module version
/// in scripts/build-tools.sh).
const NATS_IMAGE: &str = "localhost/chorus/nats-server:2.15.3";

/// nats-server as a Deployment and Service `nats`, logins only for the user
/// and password of Secret `nats-login`; returns the Service's cluster IP (the
/// local cluster runs no cluster DNS).
async fn start_nats(env: &OperatorEnv) -> String {
    let password = format!("pw-{}", chorus_e2e::unique_suffix());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "nats-login"},
        "type": "kubernetes.io/basic-auth",
        "stringData": {"username": "chat", "password": password}
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let from_secret = |name: &str, key: &str| json!({"name": name, "valueFrom": {"secretKeyRef": {"name": "nats-login", "key": key}}});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "nats"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "nats"}},
            "template": {
                "metadata": {"labels": {"app": "nats"}},
                "spec": {"containers": [{
                    "name": "nats",
                    "image": NATS_IMAGE,
                    "args": ["-p", "4222", "--user", "$(NATS_USER)", "--pass", "$(NATS_PASSWORD)"],
                    "env": [from_secret("NATS_USER", "username"), from_secret("NATS_PASSWORD", "password")],
                    "ports": [{"containerPort": 4222}],
                    "readinessProbe": {"tcpSocket": {"port": 4222}, "periodSeconds": 1},
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}}
                }]}
            }
        }
    }))
    .unwrap();
    env.api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "nats"},
        "spec": {"selector": {"app": "nats"}, "ports": [{"port": 4222, "targetPort": 4222}]}
    }))
    .unwrap();
    env.api::<Service>()
        .create(&PostParams::default(), &service)
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap()
}

/// A socket of `token` served by a pod other than `not_on` (the Service
/// spreads new connections; retries until one lands elsewhere).
async fn socket_on_another_pod(url: &str, token: &str, not_on: Option<&str>) -> ChatSocket {
    let deadline = Instant::now() + T;
    loop {
        let s = ChatSocket::connect(url, token).await.unwrap();
        let server = s.hello["server"].as_str().unwrap_or_default().to_string();
        if Some(server.as_str()) != not_on {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "every connection landed on {server}"
        );
        s.close().await;
    }
}

#[tokio::test]
async fn replicas_on_two_pods_share_presence_and_messages_over_an_authenticated_nats() {
    let env = OperatorEnv::new("nats", Duration::from_secs(300))
        .await
        .unwrap();
    let nats_ip = start_nats(&env).await;
    env.ready_tenant(
        "acme",
        &format!(
            "  runtime:\n    image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\"\n    replicas: 2\n    resources: {TEST_RESOURCES}\n    broker: {{type: Nats, nats: {{url: \"nats://{nats_ip}:4222\", auth: {{basicAuthSecretRef: {{name: nats-login}}}}}}}}\n  networkPolicy: {{}}"
        ),
    )
    .await
    .unwrap();
    let deployment = env.api::<Deployment>().get("acme-blue").await.unwrap();
    let env_names: Vec<String> = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        env_names.iter().any(|n| n == "CHAT_NATS_PASSWORD"),
        "{env_names:?}"
    );

    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let alice = signup(&url, "alice").await.unwrap();
    let bob = signup(&url, "bob").await.unwrap();
    let room = create_room(&url, &alice, "general", "public")
        .await
        .unwrap();
    join_room(&url, &bob, room).await.unwrap();
    let mut sa = socket_on_another_pod(&url, &alice, None).await;
    let pod_a = sa.hello["server"].as_str().unwrap().to_string();
    let mut sb = socket_on_another_pod(&url, &bob, Some(&pod_a)).await;
    tracing::info!(pod_a, pod_b = %sb.hello["server"], "one socket on each pod");
    for s in [&mut sa, &mut sb] {
        s.send(json!({"type": "subscribe", "room": room}))
            .await
            .unwrap();
        s.expect("subscribed", T).await.unwrap();
    }

    // Presence is never stored: only the broker carries it across pods. The
    // replicas may still be logging in to NATS, so alice toggles until bob
    // sees it.
    let deadline = Instant::now() + T;
    let mut status = "away";
    'crossed: loop {
        sa.send(json!({"type": "presence", "status": status}))
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(f) = sb.next_frame(Duration::from_millis(200)).await
                && f["type"] == "presence"
                && f["status"] == status
            {
                break 'crossed;
            }
        }
        assert!(
            Instant::now() < deadline,
            "alice's presence never reached bob's pod over NATS"
        );
        status = if status == "away" { "online" } else { "away" };
    }

    sa.send(json!({"type": "send", "id": "1", "room": room, "client_msg_id": "m1", "body": "over nats"}))
        .await
        .unwrap();
    let ack = sa.expect("ack", T).await.unwrap();
    let event = sb.expect("event", T).await.unwrap();
    assert_eq!(event["body"], "over nats");
    assert_eq!(event["seq"], ack["seq"]);
    env.stop().await;
}
