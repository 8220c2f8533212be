//! The chat features end to end on a real database: rooms, DMs, membership
//! and roles, history paging, edits, tombstones, reactions, threads, read
//! state, search, attachments, idempotent retries and rate limits.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Replica, ReplicaOpts, TwoInARoom, Ws, fresh_db, http, join, public_room, signup, two_in_a_room,
};

const T: Duration = Duration::from_secs(10);

async fn post(base: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    http("POST", &format!("{base}{path}"), Some(token), Some(body)).await
}

async fn get(base: &str, path: &str, token: &str) -> (u16, Value) {
    http("GET", &format!("{base}{path}"), Some(token), None).await
}

async fn send(base: &str, token: &str, room: i64, id: &str, body: Value) -> (u16, Value) {
    let mut b = body;
    b["client_msg_id"] = json!(id);
    post(base, &format!("/api/v1/rooms/{room}/messages"), token, b).await
}

#[tokio::test]
async fn rooms_membership_roles_and_dms() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let (alice, bob, carol) = (
        signup(&r.http, "alice").await,
        signup(&r.http, "bob").await,
        signup(&r.http, "carol").await,
    );
    // Public room: anyone joins; lists show it.
    let general = public_room(&r.http, &alice, "general").await;
    let (_, public) = get(&r.http, "/api/v1/rooms?scope=public", &bob).await;
    assert!(
        public["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == general)
    );
    join(&r.http, &bob, general).await;
    let (_, joined) = get(&r.http, "/api/v1/rooms", &bob).await;
    assert_eq!(joined["rooms"][0]["role"], "member");

    // Private room: invisible and unjoinable; members may not invite; moderators may.
    let (_, private) = post(
        &r.http,
        "/api/v1/rooms",
        &alice,
        json!({"name": "secret", "kind": "private"}),
    )
    .await;
    let secret = private["room"]["id"].as_i64().unwrap();
    assert_eq!(
        get(&r.http, &format!("/api/v1/rooms/{secret}"), &bob)
            .await
            .0,
        404
    );
    let (status, e) = post(
        &r.http,
        &format!("/api/v1/rooms/{secret}/join"),
        &bob,
        json!({}),
    )
    .await;
    assert_eq!(
        status, 404,
        "a private room looks absent to non-members: {e}"
    );
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist or is private")
    );
    assert_eq!(
        post(
            &r.http,
            &format!("/api/v1/rooms/{secret}/invite"),
            &alice,
            json!({"user": "bob"})
        )
        .await
        .0,
        200
    );
    let (status, _) = post(
        &r.http,
        &format!("/api/v1/rooms/{secret}/invite"),
        &bob,
        json!({"user": "carol"}),
    )
    .await;
    assert_eq!(status, 403, "members do not invite to private rooms");
    let (status, _) = http(
        "PUT",
        &format!("{}/api/v1/rooms/{secret}/members/bob/role", r.http),
        Some(&alice),
        Some(json!({"role": "moderator"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        post(
            &r.http,
            &format!("/api/v1/rooms/{secret}/invite"),
            &bob,
            json!({"user": "carol"})
        )
        .await
        .0,
        200
    );
    let (_, members) = get(&r.http, &format!("/api/v1/rooms/{secret}/members"), &carol).await;
    let roles: Vec<(String, String)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["username"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("alice".into(), "owner".into()),
            ("bob".into(), "moderator".into()),
            ("carol".into(), "member".into())
        ]
    );
    // Only owners change roles; the last owner cannot be demoted.
    let (status, _) = http(
        "PUT",
        &format!("{}/api/v1/rooms/{secret}/members/carol/role", r.http),
        Some(&bob),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, e) = http(
        "PUT",
        &format!("{}/api/v1/rooms/{secret}/members/alice/role", r.http),
        Some(&alice),
        Some(json!({"role": "member"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");

    // Kick and ban: moderators over members, never over owners.
    assert_eq!(
        post(
            &r.http,
            &format!("/api/v1/rooms/{secret}/kick"),
            &bob,
            json!({"user": "alice"})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        post(
            &r.http,
            &format!("/api/v1/rooms/{general}/bans"),
            &alice,
            json!({"user": "bob"})
        )
        .await
        .0,
        200
    );
    let (status, e) = post(
        &r.http,
        &format!("/api/v1/rooms/{general}/join"),
        &bob,
        json!({}),
    )
    .await;
    assert_eq!(status, 403);
    assert!(e["error"]["message"].as_str().unwrap().contains("banned"));
    assert_eq!(
        http(
            "DELETE",
            &format!("{}/api/v1/rooms/{general}/bans/bob", r.http),
            Some(&alice),
            None
        )
        .await
        .0,
        200
    );
    join(&r.http, &bob, general).await;
    assert_eq!(
        post(
            &r.http,
            &format!("/api/v1/rooms/{general}/kick"),
            &alice,
            json!({"user": "bob"})
        )
        .await
        .0,
        200
    );
    let (status, _) = send(&r.http, &bob, general, "after-kick", json!({"body": "hi"})).await;
    assert_eq!(status, 403, "a kicked user cannot post");

    // DMs: one room per pair, whoever asks.
    let (_, dm1) = post(&r.http, "/api/v1/dms", &alice, json!({"user": "carol"})).await;
    let (_, dm2) = post(&r.http, "/api/v1/dms", &carol, json!({"user": "alice"})).await;
    assert_eq!(dm1["room"]["id"], dm2["room"]["id"]);
    assert_eq!(dm1["room"]["kind"], "dm");
    assert_eq!(
        get(
            &r.http,
            &format!("/api/v1/rooms/{}", dm1["room"]["id"]),
            &bob
        )
        .await
        .0,
        404,
        "DMs are private"
    );
    // Leave.
    assert_eq!(
        post(
            &r.http,
            &format!("/api/v1/rooms/{secret}/leave"),
            &carol,
            json!({})
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get(&r.http, &format!("/api/v1/rooms/{secret}/members"), &carol)
            .await
            .0,
        404,
        "once out, a private room looks absent"
    );
}

#[tokio::test]
async fn messages_history_edits_reactions_threads_read_state_search() {
    let db = fresh_db().await;
    let TwoInARoom {
        r,
        alice,
        bob,
        room,
    } = two_in_a_room(&db, 500).await;

    // 120 messages; history pages by keyset, newest first, no overlap.
    let mut seqs = Vec::new();
    for i in 0..120 {
        let (status, ack) = send(
            &r.http,
            &alice,
            room,
            &format!("m{i}"),
            json!({"body": format!("message number {i}")}),
        )
        .await;
        assert_eq!(status, 200, "{ack}");
        seqs.push(ack["seq"].as_i64().unwrap());
    }
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive seqs"
    );
    let (_, page1) = get(
        &r.http,
        &format!("/api/v1/rooms/{room}/messages?limit=50"),
        &bob,
    )
    .await;
    let p1: Vec<i64> = page1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(p1.len(), 50);
    assert_eq!(p1[0], *seqs.last().unwrap());
    let next = page1["next_before"].as_i64().unwrap();
    let (_, page2) = get(
        &r.http,
        &format!("/api/v1/rooms/{room}/messages?limit=50&before={next}"),
        &bob,
    )
    .await;
    let p2: Vec<i64> = page2["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(p2[0], next - 1, "the next page starts right below");

    // Unread counts follow the read position.
    let (_, rooms) = get(&r.http, "/api/v1/rooms", &bob).await;
    assert_eq!(rooms["rooms"][0]["unread"], 120);
    let (_, read) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/read"),
        &bob,
        json!({"seq": seqs[99]}),
    )
    .await;
    assert_eq!(read["last_read_seq"], seqs[99]);
    let (_, rooms) = get(&r.http, "/api/v1/rooms", &bob).await;
    assert_eq!(rooms["rooms"][0]["unread"], 20);

    // Edit (author only), delete (tombstone), reactions.
    let target = seqs[0];
    let (status, _) = http(
        "PATCH",
        &format!("{}/api/v1/rooms/{room}/messages/{target}", r.http),
        Some(&bob),
        Some(json!({"body": "hijack"})),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = http(
        "PATCH",
        &format!("{}/api/v1/rooms/{room}/messages/{target}", r.http),
        Some(&alice),
        Some(json!({"body": "edited text"})),
    )
    .await;
    assert_eq!(status, 200);
    for who in [&alice, &bob] {
        assert_eq!(
            http(
                "PUT",
                &format!(
                    "{}/api/v1/rooms/{room}/messages/{target}/reactions/%F0%9F%91%8D",
                    r.http
                ),
                Some(who),
                None
            )
            .await
            .0,
            200
        );
    }
    let (_, again) = http(
        "PUT",
        &format!(
            "{}/api/v1/rooms/{room}/messages/{target}/reactions/%F0%9F%91%8D",
            r.http
        ),
        Some(&bob),
        None,
    )
    .await;
    assert!(again["seq"].is_null(), "reacting twice changes nothing");
    let (_, hist) = get(
        &r.http,
        &format!(
            "/api/v1/rooms/{room}/messages?before={}&limit=1",
            target + 1
        ),
        &bob,
    )
    .await;
    let m = &hist["messages"][0];
    assert_eq!(m["body"], "edited text");
    assert!(m["edited_at"].is_string());
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}])
    );
    let second = seqs[1];
    assert_eq!(
        http(
            "DELETE",
            &format!("{}/api/v1/rooms/{room}/messages/{second}", r.http),
            Some(&bob),
            None
        )
        .await
        .0,
        403
    );
    assert_eq!(
        http(
            "DELETE",
            &format!("{}/api/v1/rooms/{room}/messages/{second}", r.http),
            Some(&alice),
            None
        )
        .await
        .0,
        200
    );
    let (_, hist) = get(
        &r.http,
        &format!(
            "/api/v1/rooms/{room}/messages?before={}&limit=1",
            second + 1
        ),
        &bob,
    )
    .await;
    assert_eq!(hist["messages"][0]["deleted"], true);
    assert_eq!(
        hist["messages"][0]["body"], "",
        "tombstone keeps the seq, not the text"
    );

    // Threads: replies to a root, listed apart; replies to replies refused.
    let root = seqs[5];
    let (_, reply) = send(
        &r.http,
        &bob,
        room,
        "r1",
        json!({"body": "a reply", "thread_root": root}),
    )
    .await;
    send(
        &r.http,
        &alice,
        room,
        "r2",
        json!({"body": "another reply", "thread_root": root}),
    )
    .await;
    let (status, _) = send(
        &r.http,
        &alice,
        room,
        "r3",
        json!({"body": "nested", "thread_root": reply["seq"]}),
    )
    .await;
    assert_eq!(status, 400);
    let (_, thread) = get(
        &r.http,
        &format!("/api/v1/rooms/{room}/threads/{root}"),
        &alice,
    )
    .await;
    let bodies: Vec<&str> = thread["replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["a reply", "another reply"]);
    let (_, hist) = get(
        &r.http,
        &format!("/api/v1/rooms/{room}/messages?before={}&limit=1", root + 1),
        &bob,
    )
    .await;
    assert_eq!(hist["messages"][0]["reply_count"], 2);

    // Search: words in the caller's rooms only.
    let (_, found) = get(&r.http, "/api/v1/search?q=number%2077", &bob).await;
    let hits = found["results"].as_array().unwrap();
    assert!(
        hits.iter()
            .any(|h| h["message"]["body"] == "message number 77"),
        "{found}"
    );
    let stranger = signup(&r.http, "stranger").await;
    let (_, none) = get(&r.http, "/api/v1/search?q=number", &stranger).await;
    assert_eq!(
        none["results"].as_array().unwrap().len(),
        0,
        "no results from rooms one is not in"
    );

    // Attachments: references with limits.
    let (status, _) = send(&r.http, &alice, room, "att1", json!({"body": "", "attachments": [{"url": "https://cdn.example/cat.png", "content_type": "image/png", "size_bytes": 1234, "name": "cat.png"}]})).await;
    assert_eq!(status, 200);
    let (status, e) = send(&r.http, &alice, room, "att2", json!({"body": "x", "attachments": [{"url": "https://cdn.example/big.bin", "content_type": "application/octet-stream", "size_bytes": 1u64 << 40}]})).await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("attachments[0].size_bytes"),
        "{e}"
    );

    // Retried sends: one message, the original ack.
    let (_, first) = send(&r.http, &alice, room, "retry-me", json!({"body": "once"})).await;
    let (_, second_try) = send(&r.http, &alice, room, "retry-me", json!({"body": "once"})).await;
    assert_eq!(first["seq"], second_try["seq"]);
    assert_eq!(
        (
            first["duplicate"].as_bool(),
            second_try["duplicate"].as_bool()
        ),
        (Some(false), Some(true))
    );
    // Concurrent retries race: still one message.
    let sends = (0..8).map(|_| send(&r.http, &alice, room, "race", json!({"body": "raced"})));
    let acks = futures::future::join_all(sends).await;
    let raced: std::collections::BTreeSet<i64> = acks
        .iter()
        .map(|(_, a)| a["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(
        raced.len(),
        1,
        "eight concurrent retries, one seq: {acks:?}"
    );
    let (_, found) = get(&r.http, "/api/v1/search?q=raced", &alice).await;
    assert_eq!(found["results"].as_array().unwrap().len(), 1);

    // Too large: the message names the limit.
    let (status, e) = send(
        &r.http,
        &alice,
        room,
        "big",
        json!({"body": "x".repeat(20_000)}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit is 16384"),
        "{e}"
    );
}

#[tokio::test]
async fn websocket_ops_and_idempotent_retries() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    assert_eq!(ws.hello["user"]["username"], "alice");
    ws.subscribe(room, None).await;
    for attempt in 0..2 {
        ws.send(json!({"type": "send", "id": format!("a{attempt}"), "room": room, "client_msg_id": "same", "body": "retry"})).await;
    }
    let a0 = ws
        .expect("first ack", T, |f| f["type"] == "ack" && f["id"] == "a0")
        .await;
    let a1 = ws
        .expect("second ack", T, |f| f["type"] == "ack" && f["id"] == "a1")
        .await;
    assert_eq!(a0["seq"], a1["seq"]);
    assert_eq!(a1["duplicate"], true);
    let seq = a0["seq"].as_i64().unwrap();
    ws.send(json!({"type": "edit", "id": "e", "room": room, "seq": seq, "body": "retry, edited"}))
        .await;
    let edit = ws
        .expect("edit event", T, |f| {
            f["type"] == "event" && f["kind"] == "edit"
        })
        .await;
    assert_eq!(edit["message_seq"], seq);
    ws.send(json!({"type": "react", "id": "r", "room": room, "seq": seq, "emoji": "🎉"}))
        .await;
    ws.expect("reaction event", T, |f| {
        f["type"] == "event" && f["kind"] == "reaction" && f["on"] == true
    })
    .await;
    ws.send(json!({"type": "delete", "id": "d", "room": room, "seq": seq}))
        .await;
    ws.expect("delete event", T, |f| {
        f["type"] == "event" && f["kind"] == "delete"
    })
    .await;
    ws.send(json!({"type": "read", "id": "rd", "room": room, "seq": seq}))
        .await;
    let read = ws.expect("read", T, |f| f["type"] == "read").await;
    assert_eq!(read["last_read_seq"], seq);
    ws.send(json!({"type": "ping", "id": "p1"})).await;
    ws.expect("pong", T, |f| f["type"] == "pong" && f["id"] == "p1")
        .await;
    let (_, hist) = get(&r.http, &format!("/api/v1/rooms/{room}/messages"), &alice).await;
    let msgs: Vec<&Value> = hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["client_msg_id"] == "same")
        .collect();
    assert_eq!(msgs.len(), 1, "one message for two sends");
}

#[tokio::test]
async fn rate_limits_and_connection_limits() {
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                ("CHAT_MESSAGES_PER_SECOND", "2".into()),
                ("CHAT_MAX_CONNECTIONS", "2".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    // Burst of 4 allowed (2/s, burst 2x), then refused with retry_after_ms.
    let mut limited = None;
    for i in 0..8 {
        ws.send(json!({"type": "send", "id": format!("s{i}"), "room": room, "client_msg_id": format!("c{i}"), "body": "x"})).await;
        let f = ws
            .expect("answer", T, |f| f["type"] == "ack" || f["type"] == "error")
            .await;
        if f["type"] == "error" {
            limited = Some(f);
            break;
        }
    }
    let limited = limited.expect("the rate limit applies");
    assert_eq!(limited["code"], "rate_limited");
    let retry = limited["retry_after_ms"].as_u64().unwrap();
    assert!((1..=500).contains(&retry), "{limited}");
    tokio::time::sleep(Duration::from_millis(retry + 10)).await;
    ws.send(
        json!({"type": "send", "id": "later", "room": room, "client_msg_id": "later", "body": "x"}),
    )
    .await;
    ws.expect("accepted after waiting", T, |f| {
        f["type"] == "ack" && f["id"] == "later"
    })
    .await;
    // REST is limited by the same bucket, with a 429.
    let mut saw_429 = false;
    for i in 0..6 {
        let (status, body) = send(
            &r.http,
            &alice,
            room,
            &format!("rest{i}"),
            json!({"body": "x"}),
        )
        .await;
        if status == 429 {
            assert!(body["error"]["retry_after_ms"].is_u64());
            saw_429 = true;
            break;
        }
    }
    assert!(saw_429);

    // Max connections: the third upgrade is refused with 503.
    let _second = Ws::connect(&r.ws, &alice).await;
    match Ws::try_connect(&r.ws, &alice).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 503)
        }
        Err(other) => panic!("expected 503, got {other}"),
        Ok(_) => panic!("a third connection must be refused"),
    }
}
