//! The operator's Deployment runs the chat runtime: a tenant is provisioned
//! against the real apiserver and PostgreSQL, then the real `chat-runtime`
//! binary is started with exactly the environment of the tenant's Deployment
//! (Secrets resolved as the kubelet would). It must start, be ready, and serve
//! chat from the tenant's own database with the tenant's own key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{path::PathBuf, process::Stdio, time::Duration};

use chorus_e2e::operator::{OperatorEnv, secret_text};
use k8s_openapi::api::apps::v1::Deployment;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The chat-runtime binary `cargo test --workspace` built next to this test.
fn runtime_binary() -> PathBuf {
    if let Ok(p) = std::env::var("CHAT_RUNTIME_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let bin = target.join("chat-runtime");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p chat-runtime` (make test does)",
        bin.display()
    );
    bin
}

async fn get(url: &str, token: Option<&str>, body: Option<Value>, method: &str) -> (u16, Value) {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().unwrap();
    let stream = tokio::net::TcpStream::connect((uri.host().unwrap(), uri.port_u16().unwrap()))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri.path())
        .header("host", "runtime")
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = http_body_util::Full::new(hyper::body::Bytes::from(
        body.map(|b| b.to_string()).unwrap_or_default(),
    ));
    let resp = sender.send_request(req.body(body).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_deployment_environment_starts_a_working_runtime() {
    let env = OperatorEnv::new("op-runtime", Duration::from_secs(300))
        .await
        .unwrap();
    let (ct, db) = env.ready_tenant("acme", "").await.unwrap();
    assert_eq!(ct.status.unwrap().database.unwrap().name, db);

    // The container's environment, resolved like the kubelet does.
    let d = env.api::<Deployment>().get("acme-blue").await.unwrap();
    let container = d.spec.unwrap().template.spec.unwrap().containers.remove(0);
    assert_eq!(container.args.as_deref(), Some(&["serve".to_string()][..]));
    let mut vars: Vec<(String, String)> = Vec::new();
    for e in container.env.unwrap() {
        let value = match (e.value, e.value_from) {
            (Some(v), _) => v,
            (None, Some(from)) => {
                if let Some(r) = from.secret_key_ref {
                    secret_text(&env.client, &env.ns, &r.name, &r.key)
                        .await
                        .unwrap()
                        .unwrap_or_else(|| panic!("Secret {} has no key {}", r.name, r.key))
                } else if from.field_ref.is_some() {
                    "acme-blue-7d9c-test".to_string()
                } else {
                    panic!("unexpected env source for {}", e.name)
                }
            }
            _ => panic!("{} has no value", e.name),
        };
        vars.push((e.name, value));
    }
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    for required in [
        "CHAT_DATABASE_URL",
        "CHAT_TENANT_ID",
        "CHAT_JWT_SECRET",
        "CHAT_AUTH_MODE",
        "CHAT_DRAIN_SECONDS",
    ] {
        assert!(
            names.contains(&required),
            "{required} missing from {names:?}"
        );
    }

    // Loopback ports instead of 0.0.0.0:8080/9090 (several tests share the machine).
    let mut cmd = tokio::process::Command::new(runtime_binary());
    cmd.env_clear().arg("serve");
    for (k, v) in &vars {
        cmd.env(k, v);
    }
    cmd.env("CHAT_LISTEN_ADDR", "127.0.0.1:0")
        .env("CHAT_ADMIN_ADDR", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("chat runtime started") {
                return l;
            }
        }
        panic!("the runtime exited before starting");
    })
    .await
    .expect("the runtime did not start within 30s");
    let v: Value = serde_json::from_str(&started).unwrap();
    let public = format!("http://{}", v["public_addr"].as_str().unwrap());
    let admin = format!("http://{}", v["admin_addr"].as_str().unwrap());
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // The probes the Deployment uses answer.
    for path in ["/startupz", "/readyz", "/livez"] {
        assert_eq!(
            get(&format!("{admin}{path}"), None, None, "GET").await.0,
            200,
            "{path}"
        );
    }
    // Chat works, in the tenant's own database, with tokens for this tenant.
    let (status, signup) = get(
        &format!("{public}/api/v1/auth/signup"),
        None,
        Some(serde_json::json!({"username": "alice", "password": "password-alice"})),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{signup}");
    let token = signup["token"].as_str().unwrap();
    let (_, room) = get(
        &format!("{public}/api/v1/rooms"),
        Some(token),
        Some(serde_json::json!({"name": "general", "kind": "public"})),
        "POST",
    )
    .await;
    let room = room["room"]["id"].as_i64().unwrap();
    let (status, ack) = get(
        &format!("{public}/api/v1/rooms/{room}/messages"),
        Some(token),
        Some(serde_json::json!({"client_msg_id": "m1", "body": "hello from the tenant's pod"})),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{ack}");
    // The runtime connected as the tenant's role, to the tenant's database.
    let uri = secret_text(&env.client, &env.ns, "acme-db", "uri")
        .await
        .unwrap()
        .unwrap();
    assert!(
        uri.contains(&format!("{db}:")) && uri.contains(&format!("/{db}?")),
        "{uri}"
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&uri)
        .await
        .unwrap();
    let (count, owner): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM messages), (SELECT tableowner::text FROM pg_tables WHERE tablename = 'messages')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(count, 1);
    assert_eq!(
        owner, db,
        "the runtime's tables belong to the tenant's role"
    );
    let _ = child.kill().await;
    env.stop().await;
}
