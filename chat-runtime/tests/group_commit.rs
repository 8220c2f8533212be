//! Group commit of sends: one message the database refuses fails only its own
//! sender, never the others sharing its batch; text PostgreSQL cannot store
//! (NUL) is refused up front with an error naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use chat_runtime::store::{
    Store,
    events::{NewMessage, RoomSend},
    rooms::RoomKind,
};
use serde_json::json;
use support::{TwoInARoom, Ws, fresh_db, http, two_in_a_room};

const T: Duration = Duration::from_secs(10);

fn message(id: &str, body: &str) -> NewMessage {
    NewMessage {
        client_msg_id: id.into(),
        body: body.into(),
        thread_root: None,
        attachments: vec![],
    }
}

#[tokio::test]
async fn a_refused_message_fails_alone_in_its_batch() {
    let db = fresh_db().await;
    let store = Store::connect(&db, 2, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let alice = store.create_user("alice", "Alice", "x").await.unwrap();
    let bob = store.create_user("bob", "Bob", "x").await.unwrap();
    let carol = store.create_user("carol", "Carol", "x").await.unwrap();
    let room = store
        .create_room(&alice, RoomKind::Public, "general", "")
        .await
        .unwrap()
        .id;
    store.join(room, &bob).await.unwrap();
    store.join(room, &carol).await.unwrap();

    // Bob's body holds a NUL, which PostgreSQL refuses (validation would
    // catch it; the store must not depend on that).
    let batch = vec![
        (alice.clone(), message("a1", "first")),
        (bob.clone(), message("b1", "bad \u{0}")),
        (carol.clone(), message("c1", "third")),
    ];
    let results = store.send_batch(room, &batch).await;
    assert_eq!(results.len(), 3);
    let a = results[0].as_ref().expect("alice's message is stored");
    assert!(results[1].is_err(), "bob's message is refused");
    let c = results[2].as_ref().expect("carol's message is stored");
    assert!(a.seq < c.seq, "batch order is seq order");

    let history = store.history(room, alice.id, None, 50).await.unwrap();
    let ids: Vec<&str> = history.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(
        ids,
        ["c1", "a1"],
        "exactly the two good messages, newest first"
    );
    // A retry of a stored message is still answered as a duplicate.
    let retry = store
        .send_batch(room, &[(alice.clone(), message("a1", "first"))])
        .await;
    assert!(retry[0].as_ref().unwrap().duplicate);
}

#[tokio::test]
async fn one_transaction_serves_many_rooms_each_in_order() {
    let db = fresh_db().await;
    let store = Store::connect(&db, 2, Duration::from_secs(10))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let alice = store.create_user("alice", "Alice", "x").await.unwrap();
    let bob = store.create_user("bob", "Bob", "x").await.unwrap();
    let public = store
        .create_room(&alice, RoomKind::Public, "general", "")
        .await
        .unwrap()
        .id;
    let private = store
        .create_room(&alice, RoomKind::Private, "secret", "")
        .await
        .unwrap()
        .id;
    let before = |room| {
        let store = store.clone();
        async move { store.last_seq(room).await.unwrap() }
    };
    let (p0, q0) = (before(public).await, before(private).await);
    let send = |room, user: &chat_runtime::store::accounts::User, id: &str| RoomSend {
        room,
        user: user.clone(),
        message: message(id, "hi"),
    };
    let batch = vec![
        send(private, &alice, "q1"),
        send(public, &alice, "p1"),
        send(public, &bob, "not-a-member"),
        send(private, &bob, "not-a-member-either"),
        send(999_999, &alice, "no-such-room"),
        send(private, &alice, "q2"),
        send(public, &alice, "p1"), // a retry within the batch
        send(public, &alice, "p2"),
    ];
    let done = store.send_many(&batch).await;
    let seqs: Vec<Option<(i64, bool)>> = done
        .results
        .iter()
        .map(|r| r.as_ref().ok().map(|a| (a.seq, a.duplicate)))
        .collect();
    assert_eq!(
        seqs,
        [
            Some((q0 + 1, false)),
            Some((p0 + 1, false)),
            None,
            None,
            None,
            Some((q0 + 2, false)),
            Some((p0 + 1, true)),
            Some((p0 + 2, false)),
        ]
    );
    let code = |i: usize| done.results[i].as_ref().unwrap_err().code();
    assert_eq!(
        code(2),
        chat_runtime::protocol::ErrorCode::Forbidden,
        "public: join first"
    );
    assert_eq!(
        code(3),
        chat_runtime::protocol::ErrorCode::NotFound,
        "private: looks absent"
    );
    assert_eq!(code(4), chat_runtime::protocol::ErrorCode::NotFound);
    // Each room's events, in seq order, as the fan-out serves them.
    let events: Vec<(i64, Vec<i64>)> = done
        .events
        .iter()
        .map(|(room, list)| (*room, list.iter().map(|e| e.seq).collect()))
        .collect();
    assert!(
        events.contains(&(public, vec![p0 + 1, p0 + 2])),
        "{events:?}"
    );
    assert!(
        events.contains(&(private, vec![q0 + 1, q0 + 2])),
        "{events:?}"
    );
    assert_eq!(events.len(), 2);
    // What was stored is what the fan-out got.
    assert_eq!(before(public).await, p0 + 2);
    let stored = store.events_after(public, p0, 10).await.unwrap();
    let (_, fresh) = done.events.iter().find(|(r, _)| *r == public).unwrap();
    for (row, event) in stored.iter().zip(fresh) {
        let from_db = serde_json::to_value(&row.payload).unwrap();
        let committed: serde_json::Value = serde_json::from_str(&event.payload).unwrap();
        assert_eq!(from_db, committed);
        assert_eq!(row.created_ms, event.created_ms);
    }
    // One refused message in a batch of two rooms fails alone.
    let batch = vec![
        send(public, &alice, "p3"),
        RoomSend {
            room: private,
            user: alice.clone(),
            message: message("bad", "nul \u{0}"),
        },
        send(private, &alice, "q3"),
    ];
    let done = store.send_many(&batch).await;
    assert_eq!(done.results[0].as_ref().unwrap().seq, p0 + 3);
    assert!(done.results[1].is_err());
    assert_eq!(done.results[2].as_ref().unwrap().seq, q0 + 3);
}

#[tokio::test]
async fn nul_characters_are_refused_naming_the_field() {
    let db = fresh_db().await;
    let TwoInARoom {
        r,
        alice,
        bob,
        room,
    } = two_in_a_room(&db, 1000).await;
    let base = &r.http;

    // REST: each field is named in a 400.
    let cases = [
        (
            format!("{base}/api/v1/rooms/{room}/messages"),
            "POST",
            json!({"client_msg_id": "n1", "body": "a\u{0}b"}),
            "body",
        ),
        (
            format!("{base}/api/v1/rooms/{room}/messages"),
            "POST",
            json!({"client_msg_id": "n2", "body": "",
                   "attachments": [{"url": "https://x.example/\u{0}", "content_type": "image/png", "size_bytes": 1}]}),
            "attachments[0].url",
        ),
        (
            format!("{base}/api/v1/rooms"),
            "POST",
            json!({"name": "bad\u{0}room", "kind": "public"}),
            "name",
        ),
        (
            format!("{base}/api/v1/rooms"),
            "POST",
            json!({"name": "room", "kind": "public", "topic": "t\u{0}"}),
            "topic",
        ),
    ];
    for (url, method, body, field) in cases {
        let (status, e) = http(method, &url, Some(&alice), Some(body)).await;
        assert_eq!(status, 400, "{field}: {e}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{field} contains a NUL")),
            "{field}: {e}"
        );
    }
    let (status, e) = http(
        "POST",
        &format!("{base}/api/v1/auth/signup"),
        None,
        Some(json!({"username": "carol", "password": "password-carol", "display_name": "C\u{0}"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("display_name")
    );
    let (status, e) = http(
        "GET",
        &format!("{base}/api/v1/search?q=a%00b"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (ok, _) = http(
        "POST",
        &format!("{base}/api/v1/rooms/{room}/messages"),
        Some(&alice),
        Some(json!({"client_msg_id": "good", "body": "fine"})),
    )
    .await;
    assert_eq!(ok, 200);
    let (_, hist) = http(
        "GET",
        &format!("{base}/api/v1/rooms/{room}/messages"),
        Some(&alice),
        None,
    )
    .await;
    let seq = hist["messages"][0]["seq"].as_i64().unwrap();
    for (method, path, body, field) in [
        (
            "PATCH",
            format!("/api/v1/rooms/{room}/messages/{seq}"),
            Some(json!({"body": "x\u{0}"})),
            "body",
        ),
        (
            "PUT",
            format!("/api/v1/rooms/{room}/messages/{seq}/reactions/a%00"),
            None,
            "emoji",
        ),
    ] {
        let (status, e) = http(method, &format!("{base}{path}"), Some(&alice), body).await;
        assert_eq!(status, 400, "{field}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap().contains(field),
            "{field}: {e}"
        );
    }

    // WebSocket: senders pipelining into one room; the NUL send gets an
    // error naming the field, every other send is acknowledged.
    let mut a = Ws::connect(&r.ws, &alice).await;
    let mut b = Ws::connect(&r.ws, &bob).await;
    for i in 0..20 {
        a.send(json!({"type": "send", "id": format!("a{i}"), "room": room, "client_msg_id": format!("a{i}"), "body": "hi"}))
            .await;
        if i == 10 {
            b.send(json!({"type": "send", "id": "bad", "room": room, "client_msg_id": "bad", "body": "\u{0}"}))
                .await;
        }
        b.send(json!({"type": "send", "id": format!("b{i}"), "room": room, "client_msg_id": format!("b{i}"), "body": "hi"}))
            .await;
    }
    let mut got = std::collections::HashMap::new();
    for (ws, who) in [(&mut a, "a"), (&mut b, "b")] {
        let mut want: Vec<String> = (0..20).map(|i| format!("{who}{i}")).collect();
        if who == "b" {
            want.push("bad".into());
        }
        while !want.iter().all(|id| got.contains_key(id)) {
            let f = ws
                .expect("an answer", T, |f| {
                    f["type"] == "ack" || f["type"] == "error"
                })
                .await;
            got.insert(f["id"].as_str().unwrap_or_default().to_string(), f);
        }
    }
    let e = &got["bad"];
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("invalid")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("body contains a NUL"),
        "{e}"
    );
    for (id, f) in &got {
        if id != "bad" {
            assert_eq!(f["type"], "ack", "{id}: {f}");
        }
    }
}

/// Two replicas (two pools) group-committing to the same rooms while a third
/// edits: the room rows' locks order them. Whatever interleaving happens,
/// every send is acked once with its own seq, every committed event comes
/// back once for the fan-out, and each room's seqs run 1..=last_seq with no
/// gap, each a send acked or an edit.
#[tokio::test]
async fn replicas_writing_one_room_at_once_leave_no_gap_and_no_duplicate() {
    use std::collections::BTreeSet;

    let db = fresh_db().await;
    let connect = || async {
        let store = Store::connect(&db, 4, Duration::from_secs(10))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    };
    let (a, b, editor) = (connect().await, connect().await, connect().await);
    let alice = a.create_user("alice", "Alice", "x").await.unwrap();
    let bob = a.create_user("bob", "Bob", "x").await.unwrap();
    let mut rooms = Vec::new();
    for name in ["one", "two"] {
        let room = a
            .create_room(&alice, RoomKind::Public, name, "")
            .await
            .unwrap()
            .id;
        a.join(room, &bob).await.unwrap();
        rooms.push(room);
    }
    let first = a
        .send_batch(rooms[0], &[(alice.clone(), message("first", "edit me"))])
        .await[0]
        .as_ref()
        .unwrap()
        .seq;

    let mut base = std::collections::HashMap::new();
    for &room in &rooms {
        base.insert(room, a.last_seq(room).await.unwrap());
    }

    const BATCHES: usize = 150;
    // Each writer: batches of 1 to 3 sends over both rooms, one retry of an
    // earlier send per batch. Returns (room, seq) of every new message acked
    // and of every event the commit handed to the fan-out.
    let writer = |store: Store, user: chat_runtime::store::accounts::User, tag: &'static str| {
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let (mut acked, mut fanned) = (Vec::new(), Vec::new());
            for i in 0..BATCHES {
                let mut batch: Vec<RoomSend> = (0..=i % 3)
                    .map(|k| RoomSend {
                        room: rooms[(i + k) % 2],
                        user: user.clone(),
                        message: message(&format!("{tag}-{i}-{k}"), "hi"),
                    })
                    .collect();
                if i > 0 {
                    batch.push(RoomSend {
                        room: rooms[(i - 1) % 2],
                        user: user.clone(),
                        message: message(&format!("{tag}-{}-0", i - 1), "hi"),
                    });
                }
                let done = store.send_many(&batch).await;
                for (send, r) in batch.iter().zip(&done.results) {
                    let ack = r.as_ref().expect("every send of a member is stored");
                    let retry =
                        send.message.client_msg_id == format!("{tag}-{}-0", i.saturating_sub(1));
                    assert_eq!(ack.duplicate, i > 0 && retry, "{send:?} -> {ack:?}");
                    if !ack.duplicate {
                        acked.push((send.room, ack.seq));
                    }
                }
                for (room, events) in done.events {
                    fanned.extend(events.into_iter().map(|e| (room, e.seq)));
                }
            }
            (acked, fanned)
        })
    };
    let (wa, wb) = (
        writer(a.clone(), alice.clone(), "a"),
        writer(b.clone(), bob.clone(), "b"),
    );
    let edits = {
        let (room, alice) = (rooms[0], alice.clone());
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..100 {
                let body = format!("edit {i}");
                seqs.push((
                    room,
                    editor.edit(room, &alice, first, &body, 1000).await.unwrap(),
                ));
            }
            seqs
        })
    };
    let (acked_a, fanned_a) = wa.await.unwrap();
    let (acked_b, fanned_b) = wb.await.unwrap();
    let edited = edits.await.unwrap();

    let mut acked: Vec<(i64, i64)> = acked_a.into_iter().chain(acked_b).collect();
    let mut fanned: Vec<(i64, i64)> = fanned_a.into_iter().chain(fanned_b).collect();
    acked.sort_unstable();
    fanned.sort_unstable();
    assert_eq!(
        fanned, acked,
        "the fan-out gets exactly the messages acked as new"
    );
    let taken: BTreeSet<(i64, i64)> = acked
        .iter()
        .copied()
        .chain(edited.iter().copied())
        .collect();
    assert_eq!(
        taken.len(),
        acked.len() + edited.len(),
        "no seq taken twice"
    );
    for &room in &rooms {
        let last = a.last_seq(room).await.unwrap();
        let mut stored: Vec<i64> = Vec::new();
        let mut after = 0;
        loop {
            let page = a.events_after(room, after, 500).await.unwrap();
            let Some(end) = page.last().map(|e| e.seq) else {
                break;
            };
            stored.extend(page.iter().map(|e| e.seq));
            after = end;
        }
        assert_eq!(
            stored,
            (1..=last).collect::<Vec<_>>(),
            "room {room}: no gap"
        );
        let ours: Vec<i64> = taken
            .iter()
            .filter(|(r, _)| *r == room)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            ours,
            (base[&room] + 1..=last).collect::<Vec<_>>(),
            "room {room}: every seq since the writers started is a send acked or an edit"
        );
    }
}
