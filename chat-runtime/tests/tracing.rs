//! OpenTelemetry traces from a real runtime: with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointing at an in-process OTLP/HTTP receiver, one message sent over a
//! WebSocket produces connected spans (`ws.frame` → `chat.send` →
//! `chat.commit` → `chat.fanout`, one trace), HTTP requests their `request`
//! span with route and status, and log lines the ids of their span.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use chorus_telemetry::receiver::{Received, Receiver};
use serde_json::json;
use support::{Replica, ReplicaOpts, Ws, fresh_db, http, public_room, signup};

const T: Duration = Duration::from_secs(10);

fn find<'a>(spans: &'a [Received], name: &str, pred: impl Fn(&Received) -> bool) -> &'a Received {
    spans
        .iter()
        .find(|s| s.name == name && pred(s))
        .unwrap_or_else(|| panic!("no {name} span in {spans:#?}"))
}

#[tokio::test]
async fn a_send_is_one_trace_from_the_frame_to_the_fan_out() {
    let receiver = Receiver::start().await.unwrap();
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.clone()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
                ("OTEL_RESOURCE_ATTRIBUTES", "chorus.tenant=acme".into()),
            ],
            ..ReplicaOpts::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    ws.subscribe(room, None).await;
    ws.send(
        json!({"type": "send", "id": "s1", "room": room, "client_msg_id": "m1", "body": "hello"}),
    )
    .await;
    // The local fan-out runs before the ack is answered: either order.
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        let f = ws
            .expect("the ack and the event", T, |f| {
                f["type"] == "ack" || f["type"] == "event"
            })
            .await;
        acked |= f["type"] == "ack";
        delivered |= f["type"] == "event";
    }

    let spans = receiver
        .wait_for(T, |s| s.iter().any(|s| s.name == "chat.fanout"))
        .await;
    let frame = find(&spans, "ws.frame", |s| s.attr("frame.type") == Some("send"));
    let send = find(&spans, "chat.send", |s| s.parent_span_id == frame.span_id);
    let commit = find(&spans, "chat.commit", |s| s.parent_span_id == send.span_id);
    let fanout = find(&spans, "chat.fanout", |s| {
        s.parent_span_id == commit.span_id
    });
    // One trace, rooted at the frame.
    for s in [send, commit, fanout] {
        assert_eq!(s.trace_id, frame.trace_id, "{s:?}");
    }
    assert_eq!(frame.parent_span_id, "", "a frame starts its own trace");
    assert_eq!(send.attr("room"), Some(room.to_string().as_str()));
    assert_eq!(commit.attr("messages"), Some("1"));
    assert_eq!(fanout.attr("events"), Some("1"));
    // The frame links to the socket's upgrade request (exported when the
    // socket closes).
    assert_eq!(frame.links.len(), 1, "{frame:?}");
    drop(ws);
    let spans = receiver
        .wait_for(T, |s| s.iter().any(|s| s.attr("http.route") == Some("/ws")))
        .await;
    let upgrade = find(&spans, "GET /ws", |_| true);
    assert_eq!(
        frame.links[0],
        (upgrade.trace_id.clone(), upgrade.span_id.clone())
    );
    assert_eq!(upgrade.attr("http.response.status_code"), Some("101"));
    // The resource: the default service name and the given attributes.
    assert_eq!(
        upgrade.resource.get("service.name").map(String::as_str),
        Some("chat-runtime")
    );
    assert_eq!(
        upgrade.resource.get("chorus.tenant").map(String::as_str),
        Some("acme")
    );
}

#[tokio::test]
async fn http_requests_have_route_and_status_and_their_log_lines_the_trace_ids() {
    let receiver = Receiver::start().await.unwrap();
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.traces_url()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
                ("OTEL_SERVICE_NAME", "chat-acme".into()),
            ],
            ..ReplicaOpts::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    // A send over HTTP: the commit is a child of the request's span.
    let (status, _) = http(
        "POST",
        &format!("{}/api/v1/rooms/{room}/messages", r.http),
        Some(&alice),
        Some(json!({"client_msg_id": "h1", "body": "over http"})),
    )
    .await;
    assert!(status < 300, "{status}");
    // A refused request logs a warning inside its span.
    let (status, _) = http("GET", &format!("{}/api/v1/me", r.http), None, None).await;
    assert_eq!(status, 401);

    let spans = receiver
        .wait_for(T, |s| {
            s.iter().any(|s| s.name == "GET /api/v1/me")
                && s.iter().any(|s| s.name == "chat.commit")
        })
        .await;
    let post = find(&spans, "POST /api/v1/rooms/{room}/messages", |_| true);
    assert_eq!(
        post.attr("http.route"),
        Some("/api/v1/rooms/{room}/messages")
    );
    assert_eq!(post.attr("method"), Some("POST"));
    let commit = find(&spans, "chat.commit", |s| s.parent_span_id == post.span_id);
    assert_eq!(commit.trace_id, post.trace_id);
    let me = find(&spans, "GET /api/v1/me", |_| true);
    assert_eq!(me.attr("http.response.status_code"), Some("401"));
    assert_eq!(
        me.resource.get("service.name").map(String::as_str),
        Some("chat-acme")
    );

    let refused = r.log_lines(|l| l["message"] == "request refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        refused[0]["trace_id"],
        me.trace_id.as_str(),
        "{}",
        refused[0]
    );
    assert_eq!(refused[0]["span_id"], me.span_id.as_str(), "{}", refused[0]);
    assert_eq!(refused[0]["tenant"], "acme");
    // Outside any span: no ids.
    let started = r.log_lines(|l| l["message"] == "chat runtime started");
    assert!(started[0].get("trace_id").is_none(), "{}", started[0]);
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_lines_carry_no_trace_ids() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let (status, _) = http("GET", &format!("{}/api/v1/me", r.http), None, None).await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = r.log_lines(|l| l["message"] == "request refused");
    assert_eq!(refused.len(), 1);
    assert!(refused[0].get("trace_id").is_none(), "{}", refused[0]);
    assert!(
        r.log_lines(|l| l["message"] == "exporting traces over OTLP/HTTP")
            .is_empty()
    );
}

#[tokio::test]
async fn a_grpc_protocol_is_refused_with_a_clear_line_and_the_runtime_serves() {
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    "http://127.0.0.1:4317".into(),
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()),
            ],
            ..ReplicaOpts::default()
        },
    )
    .await;
    let errors = r.log_lines(|l| l["level"] == "ERROR");
    assert!(
        errors.iter().any(|l| l["error"]
            .as_str()
            .is_some_and(|e| e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("grpc"))),
        "{errors:?}"
    );
    let (status, _) = http("GET", &format!("{}/api/v1/me", r.http), None, None).await;
    assert_eq!(status, 401);
}
