//! Membership rules end to end: a member who leaves, is kicked or is banned
//! stops receiving the room on every replica at once (open sockets
//! included), and only moderators and owners can lift a ban.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Next, Replica, Ws, fresh_db, http, join, public_room, signup};

const T: Duration = Duration::from_secs(10);

async fn post(base: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
    http("POST", &format!("{base}{path}"), Some(token), Some(body)).await
}

/// Reads `ws` for `quiet`, failing on any event or typing frame of `room`.
async fn hears_nothing_of(ws: &mut Ws, room: i64, quiet: Duration, who: &str) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Next::Timeout => return,
            Next::Frame(f) => assert!(
                !((f["type"] == "event" || f["type"] == "typing") && f["room"] == room),
                "{who} still receives room {room}: {f}"
            ),
            Next::Closed(code) => panic!("{who}'s socket closed ({code:?})"),
        }
    }
}

/// Waits for the member event ending `user`'s membership and the
/// `unsubscribed` frame after it.
async fn sees_own_removal(ws: &mut Ws, room: i64, user: &str, action: &str) {
    let e = ws
        .expect("the member event", T, |f| {
            f["type"] == "event" && f["kind"] == "member" && f["user"]["username"] == user
        })
        .await;
    assert_eq!(e["action"], action, "{e}");
    let u = ws
        .expect("unsubscribed", T, |f| f["type"] == "unsubscribed")
        .await;
    assert_eq!(u["room"], room, "{u}");
    assert_eq!(u["reason"], "membership_ended", "{u}");
}

#[tokio::test]
async fn leaving_kicked_and_banned_members_stop_receiving_on_every_replica() {
    let db = fresh_db().await;
    let a = Replica::start(&db).await;
    let b = Replica::start(&db).await;
    let alice = signup(&a.http, "alice").await;
    let room = public_room(&a.http, &alice, "general").await;
    let mut on_b = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        let token = signup(&b.http, name).await;
        join(&b.http, &token, room).await;
        let mut ws = Ws::connect(&b.ws, &token).await;
        assert_eq!(ws.subscribe(room, None).await["type"], "subscribed");
        on_b.push((name, token, ws));
    }
    let mut alice_ws = Ws::connect(&a.ws, &alice).await;
    alice_ws.subscribe(room, None).await;

    // Bob is kicked, carol leaves, dave is banned: all through replica A,
    // while their sockets are open on replica B.
    let (status, _) = post(
        &a.http,
        &format!("/api/v1/rooms/{room}/kick"),
        &alice,
        json!({"user": "bob"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &a.http,
        &format!("/api/v1/rooms/{room}/leave"),
        &on_b[1].1,
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post(
        &a.http,
        &format!("/api/v1/rooms/{room}/bans"),
        &alice,
        json!({"user": "dave"}),
    )
    .await;
    assert_eq!(status, 200);
    for ((name, _, ws), action) in on_b.iter_mut().zip(["kicked", "left", "banned"]) {
        sees_own_removal(ws, room, name, action).await;
    }

    // Alice keeps talking; erin (still a member, also on B) hears it; the
    // three others hear nothing more, and their typing goes nowhere.
    for (_, _, ws) in on_b.iter_mut().take(3) {
        ws.send(json!({"type": "typing", "room": room})).await;
        let e = ws
            .expect("typing refused", T, |f| f["type"] == "error")
            .await;
        assert!(e["message"].as_str().unwrap().contains("subscribe"), "{e}");
    }
    alice_ws
        .send(json!({"type": "send", "id": "s", "room": room, "client_msg_id": "after", "body": "after the removals"}))
        .await;
    alice_ws
        .expect("ack", T, |f| f["type"] == "ack" && f["id"] == "s")
        .await;
    alice_ws.send(json!({"type": "typing", "room": room})).await;
    // Erin hears both (typing may overtake the message: it skips the database).
    let erin = &mut on_b[3].2;
    let (mut message, mut typing) = (false, false);
    while !(message && typing) {
        let f = erin
            .expect("alice's message and typing on B", T, |f| {
                f["type"] == "typing" || (f["type"] == "event" && f["kind"] == "message")
            })
            .await;
        if f["type"] == "typing" {
            typing = true;
        } else {
            assert_eq!(f["body"], "after the removals");
            message = true;
        }
    }
    for (name, _, ws) in on_b.iter_mut().take(3) {
        hears_nothing_of(ws, room, Duration::from_millis(1500), name).await;
    }

    // A removed member cannot subscribe again.
    let (_, _, bob_ws) = &mut on_b[0];
    let refused = bob_ws.subscribe(room, None).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "forbidden", "{refused}");
}

#[tokio::test]
async fn only_moderators_and_owners_lift_a_ban_by_inviting() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let carol = signup(&r.http, "carol").await;
    let dave = signup(&r.http, "dave").await;
    let room = public_room(&r.http, &alice, "general").await;
    join(&r.http, &carol, room).await;
    join(&r.http, &dave, room).await;
    let (status, _) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/bans"),
        &alice,
        json!({"user": "dave"}),
    )
    .await;
    assert_eq!(status, 200);

    // A plain member's invitation does not undo the ban.
    let (status, e) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/invite"),
        &carol,
        json!({"user": "dave"}),
    )
    .await;
    assert_eq!(status, 403, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("banned"),
        "{e}"
    );
    let (status, _) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/join"),
        &dave,
        json!({}),
    )
    .await;
    assert_eq!(status, 403, "the ban still holds");

    // The owner's invitation lifts it.
    let (status, e) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/invite"),
        &alice,
        json!({"user": "dave"}),
    )
    .await;
    assert_eq!(status, 200, "{e}");
    let (status, members) = http(
        "GET",
        &format!("{}/api/v1/rooms/{room}/members", r.http),
        Some(&dave),
        None,
    )
    .await;
    assert_eq!(status, 200, "dave is a member again: {members}");
}

#[tokio::test]
async fn leaving_a_dm_is_undone_by_opening_it_again() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let bob = signup(&r.http, "bob").await;
    let (status, dm) = post(&r.http, "/api/v1/dms", &alice, json!({"user": "bob"})).await;
    assert_eq!(status, 200, "{dm}");
    let room = dm["room"]["id"].as_i64().unwrap();
    let (status, _) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/leave"),
        &alice,
        json!({}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, again) = post(&r.http, "/api/v1/dms", &alice, json!({"user": "bob"})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["room"]["id"], room, "the same DM room");
    assert_eq!(again["room"]["role"], "member");
    let (status, _) = post(
        &r.http,
        &format!("/api/v1/rooms/{room}/messages"),
        &alice,
        json!({"client_msg_id": "back", "body": "I'm back"}),
    )
    .await;
    assert_eq!(status, 200);
    // Bob, who never left, sees the rejoin and the message.
    let (_, hist) = http(
        "GET",
        &format!("{}/api/v1/rooms/{room}/messages", r.http),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(hist["messages"][0]["body"], "I'm back", "{hist}");
    let (_, members) = http(
        "GET",
        &format!("{}/api/v1/rooms/{room}/members", r.http),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(members["members"].as_array().unwrap().len(), 2, "{members}");
}
