//! The operator's pods serve chat on the real node: a ChatTenant becomes
//! Ready only when its runtime pods (the project's image, imported into the
//! node's containerd) have started, read their Secrets, migrated the
//! tenant's database and passed their probes. A client signs up, opens a
//! WebSocket through the tenant's Service, sends and receives; two tenants in
//! two namespaces cannot use each other's tokens or database credentials; and
//! a pod deleted under connected clients drains them with the reconnect code,
//! after which they resume on the other pod without losing an acknowledged
//! message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chorus_e2e::{
    chat::{ChatSocket, Closed, create_room, join_room, reachable_service_url, request, signup},
    operator::{OperatorEnv, secret_text},
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(120);
/// How long a tenant's pods may take to be all ready after the tenant is.
const PODS_READY: Duration = Duration::from_secs(90);

/// The tenant's pods: all Running and Ready, no restarts, from the image the
/// spec names.
///
/// Ready on the ChatTenant means enough pods are available (`replicas -
/// disruption.maxUnavailable`, at least one), so a second pod may still be
/// starting when it turns True: this waits up to [`PODS_READY`] for every
/// pod's container to be ready before it asserts.
async fn assert_pods_serving(env: &OperatorEnv, tenant: &str, image: &str) -> Vec<Pod> {
    let list = ListParams::default().labels(&format!("chorus.dev/tenant={tenant}"));
    let deadline = tokio::time::Instant::now() + PODS_READY;
    let pods = loop {
        let pods = env.api::<Pod>().list(&list).await.unwrap().items;
        let all_ready = !pods.is_empty()
            && pods.iter().all(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().all(|c| c.ready))
            });
        if all_ready || tokio::time::Instant::now() > deadline {
            break pods;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(!pods.is_empty(), "no pods for tenant {tenant}");
    for p in &pods {
        let status = p.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"), "{:?}", status);
        let c = &status.container_statuses.clone().unwrap()[0];
        assert!(c.ready, "container of {:?} not ready", p.metadata.name);
        assert_eq!(c.restart_count, 0, "{:?} restarted", p.metadata.name);
        assert_eq!(c.image, image);
        assert_eq!(
            p.spec.as_ref().unwrap().node_name.as_deref(),
            Some("chorus-node"),
            "runs on the real node"
        );
    }
    pods
}

#[tokio::test]
async fn tenants_chat_through_their_service_and_stay_apart() {
    let image = "ghcr.io/chorus-dev/chat-runtime:0.1.0";
    let a = OperatorEnv::new("rt-a", Duration::from_secs(300))
        .await
        .unwrap();
    let b = OperatorEnv::new("rt-b", Duration::from_secs(300))
        .await
        .unwrap();
    let (ct_a, db_a) = a.ready_tenant("acme", "").await.unwrap();
    let (_, db_b) = b.ready_tenant("acme", "").await.unwrap();
    assert_eq!(ct_a.status.unwrap().database.unwrap().name, db_a);
    assert_pods_serving(&a, "acme", image).await;
    assert_pods_serving(&b, "acme", image).await;

    let url_a = reachable_service_url(&a.client, &a.ns, "acme", "http")
        .await
        .unwrap();
    let url_b = reachable_service_url(&b.client, &b.ns, "acme", "http")
        .await
        .unwrap();
    let alice = signup(&url_a, "alice").await.unwrap();
    let bob = signup(&url_a, "bob").await.unwrap();
    let carol = signup(&url_b, "carol").await.unwrap();

    // Tokens of one tenant are refused by the other (REST and WebSocket).
    let (status, _) = request("GET", &format!("{url_b}/api/v1/rooms"), Some(&alice), None)
        .await
        .unwrap();
    assert_eq!(status, 401, "tenant A's token at tenant B");
    assert!(
        ChatSocket::connect(&url_a, &carol).await.is_err(),
        "tenant B's token at A's WebSocket"
    );

    // Chat through A's Service: a room, two sockets, a send and its fan-out.
    let room = create_room(&url_a, &alice, "general", "public")
        .await
        .unwrap();
    join_room(&url_a, &bob, room).await.unwrap();
    let mut sa = ChatSocket::connect(&url_a, &alice).await.unwrap();
    let mut sb = ChatSocket::connect(&url_a, &bob).await.unwrap();
    for s in [&mut sa, &mut sb] {
        s.send(json!({"type": "subscribe", "room": room}))
            .await
            .unwrap();
        s.expect("subscribed", T).await.unwrap();
    }
    sa.send(json!({"type": "send", "id": "1", "room": room, "client_msg_id": "m1", "body": "hello from a pod"}))
        .await
        .unwrap();
    let ack = sa.expect("ack", T).await.unwrap();
    let event = sb.expect("event", T).await.unwrap();
    assert_eq!(event["body"], "hello from a pod");
    assert_eq!(event["seq"], ack["seq"]);

    // The runtime wrote as the tenant's role, into the tenant's database; A's
    // credentials open neither B's database nor B's role.
    let uri_a = secret_text(&a.client, &a.ns, "acme-db", "uri")
        .await
        .unwrap()
        .unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&uri_a)
        .await
        .unwrap();
    let (count, owner): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT tableowner::text FROM pg_tables WHERE tablename = 'messages')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!((count, owner.as_str()), (1, db_a.as_str()));
    let cross = uri_a.replace(&format!("/{db_a}?"), &format!("/{db_b}?"));
    assert!(
        <sqlx::PgConnection as sqlx::Connection>::connect(&cross)
            .await
            .is_err(),
        "tenant A's role must not open tenant B's database"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_deleted_pod_drains_its_sockets_and_clients_resume_without_loss() {
    let env = OperatorEnv::new("rt-drain", Duration::from_secs(300))
        .await
        .unwrap();
    // Grace 25 s: the runtime drains over 10 s (grace minus the 15 s margin).
    env.ready_tenant("acme", "  runtime: {image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\", replicas: 2, terminationGracePeriodSeconds: 25, resources: {requests: {cpu: 10m, memory: 64Mi}}}")
        .await
        .unwrap();
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let owner = signup(&url, "owner").await.unwrap();
    let room = create_room(&url, &owner, "general", "public")
        .await
        .unwrap();

    // Readers through the Service until both pods serve some of them.
    let mut readers = Vec::new();
    for i in 0..24 {
        let token = signup(&url, &format!("reader{i}")).await.unwrap();
        request(
            "POST",
            &format!("{url}/api/v1/rooms/{room}/join"),
            Some(&token),
            None,
        )
        .await
        .unwrap();
        let mut s = ChatSocket::connect(&url, &token).await.unwrap();
        s.send(json!({"type": "subscribe", "room": room}))
            .await
            .unwrap();
        let sub = s.expect("subscribed", T).await.unwrap();
        readers.push((token, s, sub["epoch"].as_str().unwrap().to_string()));
    }
    let servers: BTreeSet<String> = readers
        .iter()
        .map(|(_, s, _)| s.hello["server"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        servers.len(),
        2,
        "kube-proxy spread the sockets over both pods: {servers:?}"
    );
    let victim = servers.iter().next().unwrap().clone();

    // A sender through REST the whole time; acknowledged seqs are recorded.
    let sender_url = url.clone();
    let sender = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        for i in 0..120 {
            let (status, ack) = request(
                "POST",
                &format!("{sender_url}/api/v1/rooms/{room}/messages"),
                Some(&owner),
                Some(json!({"client_msg_id": format!("m{i}"), "body": format!("message {i}")})),
            )
            .await
            .unwrap_or((0, Value::Null));
            if status == 200 {
                acked.insert(ack["seq"].as_i64().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        acked
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    env.api::<Pod>()
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();

    // Every reader: read until the sender is done; on a close, reconnect
    // through the Service and resume from the last seq seen.
    let mut tasks = Vec::new();
    for (token, mut socket, mut epoch) in readers {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
            let mut last = 0;
            let mut closes = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
            while tokio::time::Instant::now() < deadline {
                match socket.next_frame(Duration::from_secs(2)).await {
                    Ok(v) if v["type"] == "event" => {
                        let seq = v["seq"].as_i64().unwrap();
                        *seen.entry(seq).or_default() += 1;
                        last = last.max(seq);
                    }
                    Ok(_) => {}
                    Err(Closed::Idle) => {}
                    Err(code) => {
                        closes.push((code, std::time::Instant::now()));
                        // Reconnect; the Service may still route to the
                        // draining pod for a moment (503), so retry.
                        let mut attempt = 0;
                        socket = loop {
                            attempt += 1;
                            match ChatSocket::connect(&url, &token).await {
                                Ok(s) => break s,
                                Err(e) if attempt < 60 => {
                                    let _ = e;
                                    tokio::time::sleep(Duration::from_millis(250)).await;
                                }
                                Err(e) => panic!("could not reconnect: {e}"),
                            }
                        };
                        socket
                            .send(json!({"type": "subscribe", "room": room, "epoch": epoch, "last_seq": last}))
                            .await
                            .unwrap();
                        let sub = socket.expect("subscribed", Duration::from_secs(10)).await.unwrap();
                        assert_eq!(sub["recovered"], true, "{sub}");
                        epoch = sub["epoch"].as_str().unwrap().to_string();
                    }
                }
            }
            (seen, closes)
        }));
    }
    let acked = sender.await.unwrap();
    assert!(
        acked.len() > 100,
        "the sender kept going through the drain: {} acks",
        acked.len()
    );
    let mut drained = 0;
    let mut close_times = Vec::new();
    for t in tasks {
        let (seen, closes) = t.await.unwrap();
        for seq in &acked {
            assert!(
                seen.contains_key(seq),
                "acknowledged seq {seq} never reached a reader"
            );
        }
        if !closes.is_empty() {
            drained += 1;
            assert_eq!(
                closes[0].0,
                Closed::Code(4000),
                "drain closes with the reconnect code"
            );
            close_times.push(closes[0].1.duration_since(started));
        }
    }
    assert!(drained > 0, "some readers were on the deleted pod");
    // The drain spreads closes over its window instead of closing all at once.
    close_times.sort();
    let spread = *close_times.last().unwrap() - close_times[0];
    assert!(
        drained < 3 || spread >= Duration::from_secs(2),
        "{drained} closes within {spread:?}: not spread over the drain window"
    );
    env.stop().await;
}

#[tokio::test]
async fn cpu_load_makes_the_hpa_scale_the_tenant_through_its_scale_subresource() {
    use k8s_openapi::api::{apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler};
    let env = OperatorEnv::new("rt-hpa", Duration::from_secs(300))
        .await
        .unwrap();
    // 20m of CPU requested, target 50%: a steady loop of authenticated
    // reads is far above it, an idle runtime far below. (Not logins: they are
    // rate-limited per client address before any argon2 work.)
    env.ready_tenant(
        "acme",
        "  runtime: {image: \"ghcr.io/chorus-dev/chat-runtime:0.1.0\", resources: {requests: {cpu: 20m, memory: 64Mi}}}\n  autoscaling: {minReplicas: 1, maxReplicas: 3, targetCPUUtilizationPercentage: 50, targetMemoryUtilizationPercentage: 100}",
    )
    .await
    .unwrap();
    let url = reachable_service_url(&env.client, &env.ns, "acme", "http")
        .await
        .unwrap();
    let token = signup(&url, "load").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (url, token, stop) = (url.clone(), token.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = request("GET", &format!("{url}/api/v1/rooms"), Some(&token), None).await;
            }
        }));
    }
    // metrics-server scrapes every 15 s and the HPA syncs every 5 s.
    let hpas = env.api::<HorizontalPodAutoscaler>();
    let deployments = env.api::<Deployment>();
    let scaled = chorus_e2e::wait_for(
        "the HPA to scale acme above 1 replica",
        Duration::from_secs(180),
        || {
            let (hpas, deployments) = (hpas.clone(), deployments.clone());
            async move {
                let hpa = hpas.get("acme").await.ok()?;
                let desired = hpa.status?.desired_replicas;
                let blue = deployments.get("acme-blue").await.ok()?.spec?.replicas?;
                (desired > 1 && blue > 1).then_some(blue)
            }
        },
    )
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    let hpa = hpas.get("acme").await.unwrap();
    let target = hpa.spec.scale_target_ref;
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("ChatTenant", "acme")
    );
    let cpu = hpa.status.unwrap().current_metrics.unwrap_or_default();
    assert!(
        !cpu.is_empty(),
        "the HPA read real metrics from metrics-server"
    );
    let ct = env
        .api::<chorus_operator::crd::ChatTenant>()
        .get("acme")
        .await
        .unwrap();
    assert!(
        ct.status.unwrap().replicas.unwrap_or(0) >= scaled.min(2),
        "the ChatTenant's status follows the scale"
    );
    env.stop().await;
}
