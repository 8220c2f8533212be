//! Several replicas on one database: messages, typing and presence cross
//! replicas; a replica killed while clients send loses nothing, duplicates
//! nothing, and clients resuming on the survivor see no gap.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::{Value, json};
use support::{Next, Replica, Ws, fresh_db, http, join, public_room, signup};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn messages_typing_and_presence_cross_replicas() {
    let db = fresh_db().await;
    let a = Replica::start(&db).await;
    let b = Replica::start(&db).await;
    let alice = signup(&a.http, "alice").await;
    let bob = signup(&b.http, "bob").await;
    let room = public_room(&a.http, &alice, "general").await;
    join(&b.http, &bob, room).await;

    let mut bob_ws = Ws::connect(&b.ws, &bob).await;
    let sub = bob_ws.subscribe(room, None).await;
    assert_eq!(sub["type"], "subscribed");
    let mut alice_ws = Ws::connect(&a.ws, &alice).await;
    alice_ws.subscribe(room, None).await;

    // A message sent to replica A reaches a client on replica B.
    alice_ws
        .send(json!({"type": "send", "id": "s1", "room": room, "client_msg_id": "m1", "body": "hello from A"}))
        .await;
    let ack = alice_ws.expect("ack", T, |f| f["type"] == "ack").await;
    let event = bob_ws
        .expect("the message on B", T, |f| {
            f["type"] == "event" && f["kind"] == "message"
        })
        .await;
    assert_eq!(event["body"], "hello from A");
    assert_eq!(event["seq"], ack["seq"]);
    assert_eq!(event["sender"]["username"], "alice");

    // Typing crosses too (and is not echoed to the typer).
    alice_ws.send(json!({"type": "typing", "room": room})).await;
    let typing = bob_ws
        .expect("typing on B", T, |f| f["type"] == "typing")
        .await;
    assert_eq!(typing["user"]["username"], "alice");

    // Presence: alice goes away on A; bob on B sees it; the REST view agrees.
    alice_ws
        .send(json!({"type": "presence", "status": "away"}))
        .await;
    let p = bob_ws
        .expect("alice away on B", T, |f| {
            f["type"] == "presence" && f["status"] == "away"
        })
        .await;
    assert!(p["user"].is_i64());
    let (_, view) = http(
        "GET",
        &format!("{}/api/v1/rooms/{room}/presence", b.http),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(view["away"], 1, "{view}");
    assert_eq!(view["online"], 1, "bob himself: {view}");
    // Alice disconnects: offline, seen on B.
    drop(alice_ws);
    bob_ws
        .expect("alice offline on B", T, |f| {
            f["type"] == "presence" && f["status"] == "offline"
        })
        .await;
}

/// A client that sends numbered messages, retrying unacked ones after a
/// reconnect with the same client_msg_id.
struct Sender {
    name: String,
    token: String,
    ws: Ws,
    acked: BTreeMap<String, i64>,
    next: usize,
}

impl Sender {
    async fn send_one(&mut self, room: i64, id: &str) -> Result<i64, ()> {
        self.ws
            .send(json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": format!("{} says {id}", self.name)}))
            .await;
        loop {
            match self.ws.next(T).await {
                Next::Frame(f) if f["type"] == "ack" && f["id"] == id => {
                    return Ok(f["seq"].as_i64().unwrap());
                }
                Next::Frame(f) if f["type"] == "error" && f["code"] == "rate_limited" => {
                    tokio::time::sleep(Duration::from_millis(
                        f["retry_after_ms"].as_u64().unwrap_or(50),
                    ))
                    .await;
                    self.ws
                        .send(json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": format!("{} says {id}", self.name)}))
                        .await;
                }
                Next::Frame(_) => continue,
                Next::Closed(_) | Next::Timeout => return Err(()),
            }
        }
    }
}

#[tokio::test]
async fn killing_a_replica_loses_and_duplicates_nothing() {
    let db = fresh_db().await;
    let mut a = Replica::start_with(
        &db,
        support::ReplicaOpts {
            env: vec![("CHAT_MESSAGES_PER_SECOND", "1000".into())],
            ..Default::default()
        },
    )
    .await;
    let b = Replica::start_with(
        &db,
        support::ReplicaOpts {
            env: vec![("CHAT_MESSAGES_PER_SECOND", "1000".into())],
            ..Default::default()
        },
    )
    .await;
    let owner = signup(&b.http, "owner").await;
    let room = public_room(&b.http, &owner, "load").await;

    // The reader starts on A and must resume on B.
    let reader_token = signup(&a.http, "reader").await;
    join(&a.http, &reader_token, room).await;
    let mut reader = Ws::connect(&a.ws, &reader_token).await;
    let sub = reader.subscribe(room, None).await;
    let epoch = sub["epoch"].as_str().unwrap().to_string();
    let mut last_seen = sub["last_seq"].as_i64().unwrap();
    let mut seen: Vec<i64> = Vec::new();

    let mut senders = Vec::new();
    for i in 0..3 {
        let name = format!("sender{i}");
        let token = signup(&a.http, &name).await;
        join(&a.http, &token, room).await;
        let ws = Ws::connect(&a.ws, &token).await;
        senders.push(Sender {
            name,
            token,
            ws,
            acked: BTreeMap::new(),
            next: 0,
        });
    }

    // Phase 1: send on A, reading as we go; kill A in the middle.
    let per_sender = 40;
    let kill_at = 15;
    let mut pending: Vec<(usize, String)> = Vec::new();
    for round in 0..per_sender {
        if round == kill_at {
            a.kill().await;
        }
        for (i, s) in senders.iter_mut().enumerate() {
            let id = format!("{}-{}", s.name, s.next);
            match s.send_one(room, &id).await {
                Ok(seq) => {
                    s.acked.insert(id, seq);
                    s.next += 1;
                }
                Err(()) => pending.push((i, id)),
            }
        }
        if !pending.is_empty() {
            break;
        }
        // Drain what the reader has so far.
        while let Next::Frame(f) = reader.next(Duration::from_millis(1)).await {
            if f["type"] == "event" {
                let seq = f["seq"].as_i64().unwrap();
                seen.push(seq);
                last_seen = seq;
            }
        }
    }
    assert!(!pending.is_empty(), "the kill interrupted the senders");

    // Phase 2: everyone reconnects to B; senders retry what was unacked with
    // the same client_msg_id, then finish.
    for s in senders.iter_mut() {
        s.ws = Ws::connect(&b.ws, &s.token).await;
    }
    for (i, id) in pending {
        let s = &mut senders[i];
        let seq = s.send_one(room, &id).await.expect("retry on B");
        s.acked.insert(id, seq);
        s.next += 1;
    }
    for s in senders.iter_mut() {
        while s.next < per_sender {
            let id = format!("{}-{}", s.name, s.next);
            let seq = s.send_one(room, &id).await.expect("send on B");
            s.acked.insert(id, seq);
            s.next += 1;
        }
    }

    // The reader resumes on B from what it last saw.
    let mut reader = Ws::connect(&b.ws, &reader_token).await;
    let resumed = reader.subscribe(room, Some((&epoch, last_seen))).await;
    assert_eq!(resumed["recovered"], true, "{resumed}");
    let room_last = resumed["room_last_seq"].as_i64().unwrap();
    while last_seen < room_last {
        match reader.next(T).await {
            Next::Frame(f) if f["type"] == "event" => {
                let seq = f["seq"].as_i64().unwrap();
                seen.push(seq);
                last_seen = seq;
            }
            Next::Frame(_) => {}
            other => panic!(
                "reader stalled at {last_seen}/{room_last}: {}",
                matches!(other, Next::Timeout)
            ),
        }
    }

    // No gap and no duplicate in what the reader got.
    let first = sub["last_seq"].as_i64().unwrap() + 1;
    let expected: Vec<i64> = (first..=room_last).collect();
    assert_eq!(seen, expected, "contiguous, each seq once");

    // Every acknowledged message is in history exactly once, in seq order.
    let mut history: Vec<Value> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let url = match before {
            Some(b0) => format!(
                "{}/api/v1/rooms/{room}/messages?limit=200&before={b0}",
                b.http
            ),
            None => format!("{}/api/v1/rooms/{room}/messages?limit=200", b.http),
        };
        let (_, page) = http("GET", &url, Some(&owner), None).await;
        let msgs = page["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        before = msgs.last().and_then(|m| m["seq"].as_i64());
        history.extend(msgs);
    }
    history.reverse();
    let seqs: Vec<i64> = history.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "history in seq order");
    let ids: Vec<String> = history
        .iter()
        .map(|m| m["client_msg_id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no message twice");
    let mut total = 0;
    for s in &senders {
        for (id, seq) in &s.acked {
            total += 1;
            let m = history
                .iter()
                .find(|m| m["client_msg_id"] == id.as_str())
                .unwrap_or_else(|| panic!("acked {id} missing"));
            assert_eq!(
                m["seq"].as_i64(),
                Some(*seq),
                "ack seq matches history for {id}"
            );
        }
    }
    assert_eq!(total, 3 * per_sender);
    assert_eq!(history.len(), total, "nothing but the acked messages");
}
