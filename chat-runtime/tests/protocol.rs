//! The WebSocket contract: bad frames get error frames and the connection
//! survives; resume replays exactly the missed events or says
//! `recovered: false`; SIGTERM drains with the reconnect close code; health
//! endpoints and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use serde_json::json;
use support::{
    Next, Replica, ReplicaOpts, Ws, fresh_db, get_text, http, public_room, request, signup,
};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_connection_survives() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let bob = signup(&r.http, "bob").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &bob).await;
    let cases = [
        ("{not json", "bad_frame", "frame is not JSON"),
        ("[1,2]", "bad_frame", "JSON object"),
        (r#"{"room":1}"#, "bad_frame", "no \"type\""),
        (
            r#"{"type":"shout","id":"x"}"#,
            "unknown_type",
            "expected one of",
        ),
        (
            r#"{"type":"send","id":"s","room":1}"#,
            "bad_frame",
            "client_msg_id",
        ),
        (
            r#"{"type":"send","id":"s","room":"general","client_msg_id":"a"}"#,
            "bad_frame",
            "invalid type",
        ),
    ];
    for (frame, code, hint) in cases {
        ws.send_raw(frame).await;
        let e = ws.expect("error frame", T, |f| f["type"] == "error").await;
        assert_eq!(e["code"], code, "{frame}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(hint),
            "{frame}: {e}"
        );
    }
    // Not a member: named.
    ws.send(json!({"type": "send", "id": "nm", "room": room, "client_msg_id": "a", "body": "hi"}))
        .await;
    let e = ws.expect("not a member", T, |f| f["type"] == "error").await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str()),
        (Some("nm"), Some("forbidden"))
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("not a member of room")
    );
    ws.send(json!({"type": "subscribe", "id": "sub", "room": room}))
        .await;
    let e = ws
        .expect("subscribe refused", T, |f| f["type"] == "error")
        .await;
    assert_eq!(e["id"], "sub");
    // Too large for the body limit (but within the frame limit): an error
    // frame, and the socket lives on.
    ws.send(json!({"type": "send", "id": "big", "room": room, "client_msg_id": "b", "body": "x".repeat(20_000)})).await;
    let e = ws.expect("too large", T, |f| f["type"] == "error").await;
    assert!(
        e["message"].as_str().unwrap().contains("limit is 16384"),
        "{e}"
    );
    // Binary frames are refused politely.
    use futures::SinkExt;
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            vec![0u8, 159, 146, 150].into(),
        ))
        .await
        .unwrap();
    let e = ws
        .expect("binary refused", T, |f| f["type"] == "error")
        .await;
    assert!(e["message"].as_str().unwrap().contains("binary"));
    // Still alive.
    ws.send(json!({"type": "ping", "id": "alive"})).await;
    ws.expect("pong after all that", T, |f| f["type"] == "pong")
        .await;
    // A frame above the protocol limit closes the socket (1009), it does not crash the server.
    ws.send_raw(&format!(
        r#"{{"type":"ping","id":"{}"}}"#,
        "x".repeat(200_000)
    ))
    .await;
    match ws.next(T).await {
        Next::Closed(code) => assert_eq!(code, Some(1009)),
        other => panic!(
            "expected a 1009 close, got a frame or timeout: {}",
            matches!(other, Next::Timeout)
        ),
    }
    let (status, _) = http("GET", &format!("{}/livez", r.admin), None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_events_or_says_so() {
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                ("CHAT_RESUME_LIMIT", "50".into()),
                ("CHAT_MESSAGES_PER_SECOND", "1000".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let sub = ws.subscribe(room, None).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["reason"].as_str()),
        (Some(false), Some("fresh"))
    );
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let start = sub["last_seq"].as_i64().unwrap();
    drop(ws);

    // 10 events while away: a resume gets exactly those, in order.
    let post = |i: usize| {
        let (http_base, token) = (r.http.clone(), alice.clone());
        async move {
            http(
                "POST",
                &format!("{http_base}/api/v1/rooms/{room}/messages"),
                Some(&token),
                Some(json!({"client_msg_id": format!("m{i}"), "body": format!("m{i}")})),
            )
            .await
        }
    };
    for i in 0..10 {
        assert_eq!(post(i).await.0, 200);
    }
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let resumed = ws.subscribe(room, Some((&epoch, start))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["replayed"], 10);
    let mut got = Vec::new();
    for _ in 0..10 {
        let e = ws
            .expect("replayed event", T, |f| f["type"] == "event")
            .await;
        got.push(e["seq"].as_i64().unwrap());
    }
    assert_eq!(got, ((start + 1)..=(start + 10)).collect::<Vec<_>>());
    // No more events (no duplicates); presence frames may come and go.
    loop {
        match ws.next(Duration::from_millis(500)).await {
            Next::Timeout => break,
            Next::Frame(f) => assert_ne!(f["type"], "event", "unexpected extra event {f}"),
            Next::Closed(_) => panic!("closed"),
        }
    }
    let last = start + 10;
    drop(ws);

    // Beyond the limit (50): recovered false, and where live delivery starts.
    for i in 10..70 {
        post(i).await;
    }
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let too_far = ws.subscribe(room, Some((&epoch, last))).await;
    assert_eq!(
        (too_far["recovered"].as_bool(), too_far["reason"].as_str()),
        (Some(false), Some("too_far_behind"))
    );
    assert_eq!(too_far["last_seq"], last + 60);
    // Another epoch (a restored database): recovered false.
    let other = ws.subscribe(room, Some(("not-this-epoch", last))).await;
    assert_eq!(other["reason"], "epoch_changed");
    // Live events after a non-recovered subscribe continue from last_seq.
    post(100).await;
    let live = ws.expect("live event", T, |f| f["type"] == "event").await;
    assert_eq!(live["seq"], last + 61);
}

#[tokio::test]
async fn deleted_messages_stay_deleted_in_replay_history_and_search() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let sub = ws.subscribe(room, None).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let start = sub["last_seq"].as_i64().unwrap();
    drop(ws);

    let base = format!("{}/api/v1/rooms/{room}/messages", r.http);
    let (status, sent) = http(
        "POST",
        &base,
        Some(&alice),
        Some(json!({"client_msg_id": "s1", "body": "secret plans",
            "attachments": [{"url": "https://cdn.example/secret.png", "content_type": "image/png", "size_bytes": 9}]})),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    let seq = sent["seq"].as_i64().unwrap();
    let (status, _) = http(
        "PATCH",
        &format!("{base}/{seq}"),
        Some(&alice),
        Some(json!({"body": "secret plans, revised"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = http("DELETE", &format!("{base}/{seq}"), Some(&alice), None).await;
    assert_eq!(status, 200);

    // Resume from before the message: its events replay, without content.
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let resumed = ws.subscribe(room, Some((&epoch, start))).await;
    assert_eq!(resumed["replayed"], 3, "{resumed}");
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let e = ws.expect("replayed", T, |f| f["type"] == "event").await;
        assert!(
            !e.to_string().contains("secret"),
            "deleted content replayed: {e}"
        );
        if e["kind"] != "delete" {
            assert_eq!(
                (e["body"].as_str(), e["deleted"].as_bool()),
                (Some(""), Some(true)),
                "{e}"
            );
        }
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds, ["message", "edit", "delete"]);
    let (_, hist) = http("GET", &base, Some(&alice), None).await;
    assert!(!hist.to_string().contains("secret"), "{hist}");
    assert_eq!(hist["messages"][0]["deleted"], true);
    let (_, found) = http(
        "GET",
        &format!("{}/api/v1/search?q=secret", r.http),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(found["results"], json!([]), "{found}");
}

#[tokio::test]
async fn a_hole_in_the_log_closes_with_the_reconnect_code_instead_of_skipping() {
    use sqlx::Connection;
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let last = ws.subscribe(room, None).await["last_seq"].as_i64().unwrap();
    // Forge a hole: the room moves on by two seqs but only the second event
    // exists (as if the first were lost). The fan-out poll finds it.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::query("UPDATE rooms SET last_seq = last_seq + 2 WHERE id = $1")
        .bind(room)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO room_events (room_id, seq, kind, actor_id, payload) \
         VALUES ($1, $2, 'member', 1, '{\"kind\": \"member\", \"action\": \"role\", \"user\": {\"id\": 1}}')",
    )
    .bind(room)
    .bind(last + 2)
    .execute(&mut conn)
    .await
    .unwrap();
    loop {
        match ws.next(T).await {
            Next::Closed(code) => {
                assert_eq!(code, Some(4000));
                break;
            }
            Next::Frame(f) => assert_ne!(f["type"], "event", "skipped past a hole: {f}"),
            Next::Timeout => panic!("neither the event nor a close came"),
        }
    }
}

#[tokio::test]
async fn every_rest_error_is_json_with_a_stable_code() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let base = &r.http;
    let big = json!({"client_msg_id": "big", "body": "x".repeat(200_000)});
    let cases = [
        (
            "GET",
            format!("{base}/api/v1/rooms/seven"),
            None,
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{base}/api/v1/rooms/{room}/messages?limit=many"),
            None,
            400,
            "bad_request",
        ),
        (
            "DELETE",
            format!("{base}/api/v1/rooms"),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            format!("{base}/api/v1/me"),
            None,
            405,
            "method_not_allowed",
        ),
        ("GET", format!("{base}/ws"), None, 400, "bad_request"),
        (
            "GET",
            format!("{base}/no/such/route"),
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            format!("{base}/api/v1/rooms/{room}/messages"),
            Some(big),
            413,
            "too_large",
        ),
        (
            "POST",
            format!("{base}/api/v1/rooms/{room}/messages"),
            Some(json!({"body": "no id"})),
            400,
            "bad_request",
        ),
    ];
    for (method, url, body, status, code) in cases {
        let (got, e) = http(method, &url, Some(&alice), body).await;
        assert_eq!(
            (got, e["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {url}: {e}"
        );
        assert!(
            !e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{method} {url}: {e}"
        );
    }
}

#[tokio::test]
async fn log_lines_carry_tenant_pod_and_the_sockets_request_id() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let mut req = format!("{}?access_token={alice}", r.ws)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-request-id", "ws-trace-42".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    drop(ws);
    // The session logs its end inside the upgrade request's span.
    let deadline = std::time::Instant::now() + T;
    let closed = loop {
        let lines = r.log_lines(|l| l["message"] == "websocket closed");
        if let Some(l) = lines.into_iter().next() {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 'websocket closed' line"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(closed["span"]["request_id"], "ws-trace-42", "{closed}");
    // A refused request logs a warning in its own span.
    let (status, _) = http("GET", &format!("{}/api/v1/me", r.http), None, None).await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = r.log_lines(|l| l["message"] == "request refused");
    assert_eq!(refused.len(), 1, "{:?}", r.logs.lock().unwrap());
    assert_eq!(refused[0]["code"], "unauthorized");
    assert_eq!(
        refused[0]["span"]["request_id"].as_str().map(str::len),
        Some(16)
    );
    let all = r.log_lines(|_| true);
    assert!(all.len() >= 3, "{all:?}");
    for line in &all {
        assert_eq!(line["tenant"], "acme", "{line}");
        assert_eq!(line["pod"], r.name.as_str(), "{line}");
    }
}

#[tokio::test]
async fn typing_is_throttled_per_socket() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let bob = signup(&r.http, "bob").await;
    let room = public_room(&r.http, &alice, "general").await;
    support::join(&r.http, &bob, room).await;
    let mut a = Ws::connect(&r.ws, &alice).await;
    let mut b = Ws::connect(&r.ws, &bob).await;
    a.subscribe(room, None).await;
    b.subscribe(room, None).await;
    for _ in 0..5 {
        a.send(json!({"type": "typing", "room": room})).await;
    }
    let mut seen = 0;
    loop {
        match b.next(Duration::from_millis(1500)).await {
            Next::Frame(f) if f["type"] == "typing" => seen += 1,
            Next::Frame(_) => {}
            Next::Timeout => break,
            Next::Closed(c) => panic!("closed {c:?}"),
        }
    }
    assert_eq!(seen, 1, "five typing frames in a burst reach others once");
    // After the interval, typing goes through again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.send(json!({"type": "typing", "room": room})).await;
    b.expect("typing again", T, |f| f["type"] == "typing").await;
}

#[tokio::test]
async fn sigterm_drains_with_the_reconnect_code() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let mut sockets = Vec::new();
    for _ in 0..5 {
        sockets.push(Ws::connect(&r.ws, &alice).await);
    }
    let (status, _) = http("GET", &format!("{}/readyz", r.admin), None, None).await;
    assert_eq!(status, 200);
    r.terminate();
    // Readiness fails at once; new upgrades are refused.
    let mut not_ready = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if http("GET", &format!("{}/readyz", r.admin), None, None)
            .await
            .0
            == 503
        {
            not_ready = true;
            break;
        }
    }
    assert!(not_ready, "readyz turns 503 on SIGTERM");
    match Ws::try_connect(&r.ws, &alice).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        other => panic!("upgrade during drain must get 503: {:?}", other.is_ok()),
    }
    // Every open socket is closed with 4000 within the drain window (2 s).
    for mut s in sockets {
        match s.next(Duration::from_secs(5)).await {
            Next::Closed(code) => assert_eq!(code, Some(4000)),
            _ => panic!("socket not closed with the reconnect code"),
        }
    }
}

#[tokio::test]
async fn metrics_and_health() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    ws.subscribe(room, None).await;
    ws.send(json!({"type": "send", "id": "1", "room": room, "client_msg_id": "m1", "body": "hi"}))
        .await;
    ws.expect("event", T, |f| {
        f["type"] == "event" && f["kind"] == "message"
    })
    .await;
    for path in ["/livez", "/readyz", "/startupz"] {
        assert_eq!(
            http("GET", &format!("{}{path}", r.admin), None, None)
                .await
                .0,
            200,
            "{path}"
        );
    }
    let text = get_text(&format!("{}/metrics", r.admin)).await;
    for line in [
        "chat_connections 1",
        "chat_messages_in_total 1",
        "chat_resumes_total{outcome=\"fresh\"} 1",
        "chat_db_latency_seconds_count",
        "chat_fanout_latency_seconds_count",
        "chat_deliveries_total",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    // Every response carries a request id (the client's, when it sends one).
    let echoed = header_of(
        &format!("{}/api/v1/me", r.http),
        Some("trace-me-42"),
        "x-request-id",
    )
    .await;
    assert_eq!(echoed.as_deref(), Some("trace-me-42"));
    let fresh = header_of(&format!("{}/api/v1/me", r.http), None, "x-request-id").await;
    assert_eq!(
        fresh.map(|v| v.len()),
        Some(16),
        "a generated 16-hex-digit id"
    );
    // The public listener does not expose metrics.
    assert_eq!(
        http("GET", &format!("{}/metrics", r.http), None, None)
            .await
            .0,
        404
    );
}

async fn header_of(url: &str, request_id: Option<&str>, name: &str) -> Option<String> {
    let headers: Vec<(&str, String)> = request_id
        .map(|id| ("x-request-id", id.to_string()))
        .into_iter()
        .collect();
    let (_, response, _) = request("GET", url, &headers, None).await;
    response.get(name).map(|v| v.to_str().unwrap().to_string())
}

/// The figures a release analysis reads: acks timed, failed sends by
/// reason, WebSocket ends by class, responses by status class. The database
/// failure is real: a second replica on the same (migrated) database with
/// a read-only session (`PGOPTIONS=-c default_transaction_read_only=on`)
/// starts, and PostgreSQL refuses its writes.
#[tokio::test]
async fn send_metrics_count_acks_failures_and_closes() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let value = |text: &str, key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };

    let mut ws = Ws::connect(&r.ws, &alice).await;
    ws.subscribe(room, None).await;
    ws.send(json!({"type": "send", "id": "1", "room": room, "client_msg_id": "m1", "body": "hi"}))
        .await;
    ws.expect("ack", T, |f| f["type"] == "ack").await;
    let too_long = "x".repeat(ws.hello["max_message_bytes"].as_u64().unwrap() as usize + 1);
    ws.send(
        json!({"type": "send", "id": "2", "room": room, "client_msg_id": "m2", "body": too_long}),
    )
    .await;
    ws.expect("error", T, |f| f["type"] == "error" && f["id"] == "2")
        .await;
    ws.ws.close(None).await.unwrap();
    drop(ws);
    let mut text = String::new();
    for _ in 0..50 {
        text = get_text(&format!("{}/metrics", r.admin)).await;
        if value(&text, "chat_websocket_closes_total{class=\"normal\"}") >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value(&text, "chat_send_ack_seconds_count"), 1.0);
    assert_eq!(
        value(&text, "chat_send_errors_total{reason=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "chat_send_errors_total{reason=\"database\"}"),
        0.0
    );
    assert_eq!(
        value(&text, "chat_websocket_closes_total{class=\"normal\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "chat_websocket_closes_total{class=\"abnormal\"}"),
        0.0
    );
    assert!(value(&text, "chat_http_responses_total{status_class=\"2xx\"}") >= 2.0);
    assert_eq!(
        value(&text, "chat_http_responses_total{status_class=\"1xx\"}"),
        1.0
    );

    let ro = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![("PGOPTIONS", "-c default_transaction_read_only=on".into())],
            ..Default::default()
        },
    )
    .await;
    let mut ws = Ws::connect(&ro.ws, &alice).await;
    ws.subscribe(room, None).await;
    ws.send(json!({"type": "send", "id": "3", "room": room, "client_msg_id": "m3", "body": "hi"}))
        .await;
    let err = ws
        .expect("error", T, |f| f["type"] == "error" && f["id"] == "3")
        .await;
    assert_eq!(err["code"], "internal", "{err}");
    let (status, body) = http(
        "POST",
        &format!("{}/api/v1/rooms/{room}/messages", ro.http),
        Some(&alice),
        Some(json!({"client_msg_id": "m4", "body": "hi"})),
    )
    .await;
    assert_eq!(status, 500, "{body}");
    let text = get_text(&format!("{}/metrics", ro.admin)).await;
    assert_eq!(
        value(&text, "chat_send_errors_total{reason=\"database\"}"),
        2.0
    );
    assert_eq!(value(&text, "chat_send_ack_seconds_count"), 0.0);
    assert_eq!(
        value(&text, "chat_http_responses_total{status_class=\"5xx\"}"),
        1.0
    );
}
