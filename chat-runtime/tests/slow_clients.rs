//! Clients that do not read: a peer flooding requests (pings) without
//! reading the answers cannot grow the server's memory without bound, and a
//! peer whose socket stalls is really disconnected (the connection gauge
//! and the slow-client counter say so).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::{Duration, Instant};

use futures::SinkExt;
use serde_json::json;
use support::{Replica, TwoInARoom, Ws, fresh_db, metric, signup, two_in_a_room};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_client_flooding_pings_without_reading_is_disconnected() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    assert_eq!(metric(&r.admin, "chat_connections").await, Some(1.0));

    // Each ping is answered with a pong echoing the 64-character id; the
    // client never reads. Far more pongs than the socket buffers and the
    // 4,096-frame queue hold.
    let ping = format!(r#"{{"type":"ping","id":"{}"}}"#, "p".repeat(64));
    let started = Instant::now();
    let mut sent = 0u32;
    while sent < 200_000 && started.elapsed() < Duration::from_secs(40) {
        if ws
            .ws
            .feed(Message::Text(ping.clone().into()))
            .await
            .is_err()
        {
            break; // the server hung up: what this test expects
        }
        sent += 1;
        if sent.is_multiple_of(256) && ws.ws.flush().await.is_err() {
            break;
        }
    }
    let _ = ws.ws.flush().await;

    // Disconnected within the write timeout (10 s) plus slack; counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = metric(&r.admin, "chat_connections").await;
        if open == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flooding client is still connected ({open:?} open) after {sent} pings"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&r.admin, "chat_slow_client_disconnects_total").await,
        Some(1.0)
    );
    let closed = r.log_lines(|l| l["message"] == "websocket closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["reason"], "queue overflowed", "{closed:?}");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let db = fresh_db().await;
    let TwoInARoom {
        r,
        alice,
        bob,
        room,
    } = two_in_a_room(&db, 10000).await;
    // Alice subscribes, then never reads again.
    let mut stuck = Ws::connect(&r.ws, &alice).await;
    stuck.subscribe(room, None).await;
    // Bob sends 16 KiB messages at a steady 100/s: alice's writer keeps up
    // until the socket buffers are full, then blocks mid-write (her queue
    // overflows behind it, but the reconnect close cannot get through).
    let mut sender = Ws::connect(&r.ws, &bob).await;
    let body = "x".repeat(16_000);
    for i in 0..450 {
        sender
            .send(json!({"type": "send", "id": format!("s{i}"), "room": room, "client_msg_id": format!("m{i}"), "body": body}))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sender
        .expect("the last ack", Duration::from_secs(30), |f| {
            f["type"] == "ack" && f["id"] == "s449"
        })
        .await;

    // Within the write timeout (10 s) plus slack, her socket is gone.
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let open = metric(&r.admin, "chat_connections").await;
        if open == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled subscriber is still connected ({open:?} open)"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let closed = r.log_lines(|l| l["message"] == "websocket closed");
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0]["reason"], "write stalled", "{closed:?}");
    assert_eq!(
        metric(&r.admin, "chat_slow_client_disconnects_total").await,
        Some(1.0)
    );
    drop(stuck);
}
