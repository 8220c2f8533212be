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

/// A client that pipelines numbered sends and retries the unacknowledged
/// ones (same client_msg_id) after reconnecting.
struct Sender {
    name: String,
    token: String,
    ws: Ws,
    acked: BTreeMap<String, i64>,
    duplicates: usize,
}

impl Sender {
    fn ids(&self, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{}-{i}", self.name)).collect()
    }

    async fn send(&mut self, room: i64, id: &str) {
        self.ws
            .send(json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": format!("{} says {id}", self.name)}))
            .await;
    }

    /// Reads answers until every id in `ids` is acked or the socket ends;
    /// returns whether it ended.
    async fn collect(&mut self, room: i64, ids: &[String]) -> bool {
        while !ids.iter().all(|id| self.acked.contains_key(id)) {
            match self.ws.next(T).await {
                Next::Frame(f) if f["type"] == "ack" => {
                    let id = f["client_msg_id"].as_str().unwrap().to_string();
                    if f["duplicate"] == true {
                        self.duplicates += 1;
                    }
                    let seq = f["seq"].as_i64().unwrap();
                    if let Some(old) = self.acked.insert(id.clone(), seq) {
                        assert_eq!(old, seq, "{id} acked with two seqs");
                    }
                }
                Next::Frame(f) if f["type"] == "error" && f["code"] == "rate_limited" => {
                    tokio::time::sleep(Duration::from_millis(
                        f["retry_after_ms"].as_u64().unwrap_or(50),
                    ))
                    .await;
                    let id = f["id"].as_str().unwrap().to_string();
                    self.send(room, &id).await;
                }
                Next::Frame(f) if f["type"] == "error" => panic!("send refused: {f}"),
                Next::Frame(_) => {}
                Next::Closed(_) | Next::Timeout => return true,
            }
        }
        false
    }
}

#[tokio::test]
async fn killing_a_replica_loses_and_duplicates_nothing() {
    let db = fresh_db().await;
    let opts = || support::ReplicaOpts {
        env: vec![("CHAT_MESSAGES_PER_SECOND", "1000".into())],
        ..Default::default()
    };
    let mut a = Replica::start_with(&db, opts()).await;
    let b = Replica::start_with(&db, opts()).await;
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
            duplicates: 0,
        });
    }

    // Phase 1: every sender pipelines all its sends to A at once; A is
    // killed as soon as the first ack is back, with most sends in flight
    // (queued, committing, or committed but not yet acknowledged).
    let per_sender = 60;
    for s in senders.iter_mut() {
        for id in s.ids(per_sender) {
            s.send(room, &id).await;
        }
    }
    loop {
        match senders[0].ws.next(T).await {
            Next::Frame(f) if f["type"] == "ack" => {
                let id = f["client_msg_id"].as_str().unwrap().to_string();
                senders[0].acked.insert(id, f["seq"].as_i64().unwrap());
                break;
            }
            Next::Frame(_) => {}
            other => panic!("no ack before the kill: {}", matches!(other, Next::Timeout)),
        }
    }
    a.kill().await;
    for s in senders.iter_mut() {
        let ids = s.ids(per_sender);
        s.collect(room, &ids).await; // until A's socket ends
    }
    let in_flight: usize = senders.iter().map(|s| per_sender - s.acked.len()).sum();
    assert!(in_flight > 0, "the kill caught sends in flight");
    // What the reader got from A before it died.
    loop {
        match reader.next(Duration::from_secs(2)).await {
            Next::Frame(f) if f["type"] == "event" => {
                let seq = f["seq"].as_i64().unwrap();
                assert_eq!(seq, last_seen + 1, "contiguous on A");
                seen.push(seq);
                last_seen = seq;
            }
            Next::Frame(_) => {}
            Next::Closed(_) | Next::Timeout => break,
        }
    }

    // Phase 2: everyone reconnects to B and retries every unacknowledged
    // send with the same client_msg_id (pipelined again). Sends that A had
    // committed come back as duplicate: true with their original seq.
    let mut duplicates = 0;
    for s in senders.iter_mut() {
        s.ws = Ws::connect(&b.ws, &s.token).await;
        let ids = s.ids(per_sender);
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !s.acked.contains_key(*id))
            .cloned()
            .collect();
        for id in &missing {
            s.send(room, id).await;
        }
        assert!(!s.collect(room, &ids).await, "every retry acked on B");
        duplicates += s.duplicates;
    }
    eprintln!(
        "in flight at the kill: {in_flight}; committed but unacked (duplicate acks on retry): {duplicates}"
    );

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
