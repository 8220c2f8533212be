//! Hardening, against the real binary and PostgreSQL: WebSocket tickets
//! (one use, expiry, the token out of the URL), sign-up and login limits
//! (per address, per username, lockout, `Retry-After`), private rooms that
//! look absent to non-members on every route and frame, `bad_frame` that
//! keeps the frame's id, search in scripts without spaces, security headers
//! and CORS, the retention sweep and the spread of the SIGTERM drain.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use tokio_tungstenite::tungstenite::Error as WsError;

const T: Duration = Duration::from_secs(10);

async fn ticket(base: &str, token: &str) -> (u16, Value) {
    http(
        "POST",
        &format!("{base}/api/v1/ws-ticket"),
        Some(token),
        None,
    )
    .await
}

/// The status and error code of a refused upgrade.
async fn refused_upgrade(url: &str) -> (u16, String) {
    match Ws::try_connect_url(url).await {
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body: Value = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (status, body["error"]["code"].as_str().unwrap_or("").into())
        }
        Ok(_) => panic!("{url}: upgrade accepted"),
        Err(e) => panic!("{url}: {e}"),
    }
}

// ---- WebSocket tickets ----

#[tokio::test]
async fn a_ws_ticket_opens_one_socket_once_and_expires() {
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![("CHAT_WS_TICKET_SECONDS", "1".into())],
            ..Default::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;

    let (status, t) = ticket(&r.http, &alice).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["expires_in"], 1);
    let t = t["ticket"].as_str().unwrap().to_string();
    assert!(t.len() >= 43 && !t.contains(&alice), "opaque: {t}");
    let url = format!("{}?ticket={t}", r.ws);
    let mut ws = Ws::try_connect_url(&url).await.unwrap();
    assert_eq!(ws.hello["user"]["username"], "alice");
    assert_eq!(ws.subscribe(room, None).await["type"], "subscribed");
    // Single use: the same ticket again is refused.
    assert_eq!(refused_upgrade(&url).await, (401, "unauthorized".into()));
    // Unknown tickets are refused.
    assert_eq!(
        refused_upgrade(&format!("{}?ticket=not-a-ticket", r.ws)).await,
        (401, "unauthorized".into())
    );
    // Expiry: a ticket presented after its lifetime is refused (and gone).
    let (_, late) = ticket(&r.http, &alice).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let late_url = format!("{}?ticket={}", r.ws, late["ticket"].as_str().unwrap());
    assert_eq!(
        refused_upgrade(&late_url).await,
        (401, "unauthorized".into())
    );
    // A ticket needs a valid token; a logged-out token's ticket is refused.
    assert_eq!(ticket(&r.http, "nope").await.0, 401);
    let (_, t2) = ticket(&r.http, &alice).await;
    let (status, _) = http(
        "POST",
        &format!("{}/api/v1/auth/logout", r.http),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let url2 = format!("{}?ticket={}", r.ws, t2["ticket"].as_str().unwrap());
    assert_eq!(refused_upgrade(&url2).await, (401, "unauthorized".into()));
    // The documented fallback still works.
    let bob = signup(&r.http, "bob").await;
    Ws::connect(&r.ws, &bob).await;
}

#[tokio::test]
async fn a_ticket_from_one_replica_opens_a_socket_on_another() {
    let db = fresh_db().await;
    let a = Replica::start(&db).await;
    let b = Replica::start(&db).await;
    let alice = signup(&a.http, "alice").await;
    let (_, t) = ticket(&a.http, &alice).await;
    let url = format!("{}?ticket={}", b.ws, t["ticket"].as_str().unwrap());
    let ws = Ws::try_connect_url(&url).await.unwrap();
    assert_eq!(ws.hello["user"]["username"], "alice");
    let again = format!("{}?ticket={}", a.ws, t["ticket"].as_str().unwrap());
    assert_eq!(refused_upgrade(&again).await.0, 401, "used on b, gone on a");
}

// ---- sign-up and login limits ----

async fn login(base: &str, name: &str, password: &str) -> (u16, hyper::HeaderMap, Value) {
    let body = json!({"username": name, "password": password}).to_string();
    let (status, headers, bytes) = request(
        "POST",
        &format!("{base}/api/v1/auth/login"),
        &[("content-type", "application/json".into())],
        Some(body.into()),
    )
    .await;
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Asserts a 429 in the API's rate-limit shape; returns `retry_after_ms`.
fn assert_limited(status: u16, headers: &hyper::HeaderMap, body: &Value) -> u64 {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let ms = body["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(ms > 0);
    let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(secs, ms.div_ceil(1000), "Retry-After agrees with the body");
    ms
}

#[tokio::test]
async fn logins_are_limited_per_address_per_username_and_locked_after_failures() {
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                ("CHAT_AUTH_IP_BURST", "8".into()),
                ("CHAT_AUTH_IP_PER_MINUTE", "1".into()),
                ("CHAT_AUTH_USERNAME_BURST", "100".into()),
                ("CHAT_AUTH_USERNAME_PER_MINUTE", "100".into()),
                ("CHAT_LOGIN_LOCKOUT_AFTER", "3".into()),
                // Long enough that slow hashing on a busy machine cannot
                // outlast it between the failures and the check.
                ("CHAT_LOGIN_LOCKOUT_SECONDS", "5".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    signup(&r.http, "alice").await; // 1 of the address's 8
    // Three wrong passwords lock the username (5 s): even the right
    // password is refused with 429 while locked, without hashing.
    for _ in 0..3 {
        let (status, _, body) = login(&r.http, "alice", "wrong-password").await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, headers, body) = login(&r.http, "alice", "password-alice").await;
    let ms = assert_limited(status, &headers, &body);
    assert!(ms <= 5000, "{ms}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{body}"
    );
    // Unknown usernames are locked the same way (nothing to probe).
    for _ in 0..3 {
        assert_eq!(login(&r.http, "nobody", "wrong-password").await.0, 401);
    }
    let (status, headers, body) = login(&r.http, "nobody", "wrong-password").await;
    assert_limited(status, &headers, &body);
    // After the lockout the right password works and ends the streak.
    tokio::time::sleep(Duration::from_millis(ms + 100)).await;
    let (status, _, body) = login(&r.http, "alice", "password-alice").await;
    assert_eq!(status, 200, "{body}");
    // The address has now spent its burst of 8 (1 sign-up, 7 logins): the
    // next attempt, for any username, is refused with the time to wait.
    let (status, headers, body) = login(&r.http, "carol", "whatever-pass").await;
    let ms = assert_limited(status, &headers, &body);
    assert!(
        ms > 20_000 && ms <= 60_000,
        "one per minute comes back: {ms}"
    );
    let (status, _, body) = request(
        "POST",
        &format!("{}/api/v1/auth/signup", r.http),
        &[("content-type", "application/json".into())],
        Some(
            json!({"username": "dave", "password": "password-dave"})
                .to_string()
                .into(),
        ),
    )
    .await;
    assert_eq!(status, 429, "sign-ups share the address's bucket: {body:?}");
}

#[tokio::test]
async fn attempts_naming_one_username_are_limited_across_addresses() {
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![
                ("CHAT_AUTH_USERNAME_BURST", "3".into()),
                ("CHAT_AUTH_USERNAME_PER_MINUTE", "1".into()),
                ("CHAT_LOGIN_LOCKOUT_AFTER", "0".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    signup(&r.http, "alice").await; // 1 of alice's 3
    assert_eq!(login(&r.http, "alice", "password-alice").await.0, 200);
    assert_eq!(login(&r.http, "alice", "wrong-password").await.0, 401);
    let (status, headers, body) = login(&r.http, "alice", "password-alice").await;
    assert_limited(status, &headers, &body);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("username"),
        "{body}"
    );
    // Another username is not affected.
    signup(&r.http, "bob").await;
    assert_eq!(login(&r.http, "bob", "password-bob").await.0, 200);
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    let db = fresh_db().await;
    let limits = |trusted: &str| ReplicaOpts {
        env: vec![
            ("CHAT_AUTH_IP_BURST", "2".into()),
            ("CHAT_AUTH_IP_PER_MINUTE", "1".into()),
            ("CHAT_TRUSTED_PROXIES", trusted.into()),
        ],
        ..Default::default()
    };
    let attempt = |base: String, xff: &'static str| async move {
        request(
            "POST",
            &format!("{base}/api/v1/auth/login"),
            &[
                ("content-type", "application/json".into()),
                ("x-forwarded-for", xff.into()),
            ],
            Some(
                json!({"username": "x-user", "password": "whatever-pass"})
                    .to_string()
                    .into(),
            ),
        )
        .await
        .0
    };
    // Default: a client cannot buy new buckets by inventing addresses.
    let r = Replica::start_with(&db, limits("")).await;
    let statuses = [
        attempt(r.http.clone(), "198.51.100.1").await,
        attempt(r.http.clone(), "198.51.100.2").await,
        attempt(r.http.clone(), "198.51.100.3").await,
    ];
    assert_eq!(statuses, [401, 401, 429]);
    // Behind a trusted proxy (here: loopback) each forwarded client has its
    // own bucket.
    let r = Replica::start_with(&db, limits("127.0.0.1/32, ::1")).await;
    let statuses = [
        attempt(r.http.clone(), "198.51.100.1").await,
        attempt(r.http.clone(), "198.51.100.1").await,
        attempt(r.http.clone(), "198.51.100.1").await,
        attempt(r.http.clone(), "198.51.100.2").await,
    ];
    assert_eq!(statuses, [401, 401, 429, 401]);
}

// ---- private rooms look absent ----

/// An answer with the room's id replaced by `N`: what must not differ
/// between a private room and a missing one.
fn shape(status: u16, body: &Value, room: i64) -> String {
    let text = body.to_string().replace(&room.to_string(), "N");
    format!("{status} {text}")
}

#[tokio::test]
async fn a_private_room_answers_non_members_exactly_like_a_missing_room() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let bob = signup(&r.http, "bob").await;
    signup(&r.http, "carol").await;
    let (status, created) = http(
        "POST",
        &format!("{}/api/v1/rooms", r.http),
        Some(&alice),
        Some(json!({"name": "secret", "kind": "private", "topic": "the plan"})),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let private = created["room"]["id"].as_i64().unwrap();
    let (_, dm) = http(
        "POST",
        &format!("{}/api/v1/dms", r.http),
        Some(&alice),
        Some(json!({"user": "carol"})),
    )
    .await;
    let dm = dm["room"]["id"].as_i64().unwrap();
    for room in [private, dm] {
        let (status, sent) = http(
            "POST",
            &format!("{}/api/v1/rooms/{room}/messages", r.http),
            Some(&alice),
            Some(json!({"client_msg_id": "m1", "body": "top secret"})),
        )
        .await;
        assert_eq!(status, 200, "{sent}");
    }
    let missing = 987_654_321_i64;
    let seq = 2; // the message above (seq 1 is the owner joining)

    // Every REST route that takes a room id.
    let routes: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/api/v1/rooms/{r}".into(), None),
        ("POST", "/api/v1/rooms/{r}/join".into(), None),
        ("POST", "/api/v1/rooms/{r}/leave".into(), None),
        (
            "POST",
            "/api/v1/rooms/{r}/invite".into(),
            Some(json!({"user": "carol"})),
        ),
        ("GET", "/api/v1/rooms/{r}/members".into(), None),
        (
            "PUT",
            "/api/v1/rooms/{r}/members/carol/role".into(),
            Some(json!({"role": "moderator"})),
        ),
        (
            "POST",
            "/api/v1/rooms/{r}/kick".into(),
            Some(json!({"user": "carol"})),
        ),
        (
            "POST",
            "/api/v1/rooms/{r}/bans".into(),
            Some(json!({"user": "carol"})),
        ),
        ("DELETE", "/api/v1/rooms/{r}/bans/carol".into(), None),
        ("GET", "/api/v1/rooms/{r}/presence".into(), None),
        (
            "POST",
            "/api/v1/rooms/{r}/read".into(),
            Some(json!({"seq": seq})),
        ),
        ("GET", "/api/v1/rooms/{r}/messages".into(), None),
        (
            "POST",
            "/api/v1/rooms/{r}/messages".into(),
            Some(json!({"client_msg_id": "b1", "body": "hi"})),
        ),
        (
            "PATCH",
            format!("/api/v1/rooms/{{r}}/messages/{seq}"),
            Some(json!({"body": "edited"})),
        ),
        (
            "DELETE",
            format!("/api/v1/rooms/{{r}}/messages/{seq}"),
            None,
        ),
        (
            "PUT",
            format!("/api/v1/rooms/{{r}}/messages/{seq}/reactions/ok"),
            None,
        ),
        (
            "DELETE",
            format!("/api/v1/rooms/{{r}}/messages/{seq}/reactions/ok"),
            None,
        ),
        ("GET", format!("/api/v1/rooms/{{r}}/threads/{seq}"), None),
        ("GET", "/api/v1/search?q=secret&room={r}".into(), None),
    ];
    for (method, path, body) in &routes {
        let call = |room: i64| {
            let url = format!("{}{}", r.http, path.replace("{r}", &room.to_string()));
            let body = body.clone();
            let bob = bob.clone();
            async move { http(method, &url, Some(&bob), body).await }
        };
        let (ms, mb) = call(missing).await;
        for room in [private, dm] {
            let (ps, pb) = call(room).await;
            assert_eq!(
                shape(ps, &pb, room),
                shape(ms, &mb, missing),
                "{method} {path}: a private room must answer like a missing one"
            );
            assert!(!pb.to_string().contains("secret"), "{method} {path}: {pb}");
        }
        if path.starts_with("/api/v1/search") {
            assert_eq!((ms, mb["results"].as_array().map(Vec::len)), (200, Some(0)));
        } else {
            assert_eq!(ms, 404, "{method} {path}: {mb}");
            assert_eq!(mb["error"]["code"], "not_found", "{method} {path}");
        }
    }

    // Every WebSocket frame that takes a room id.
    let mut ws = Ws::connect(&r.ws, &bob).await;
    let frames: Vec<Value> = vec![
        json!({"type": "subscribe", "room": 0}),
        json!({"type": "subscribe", "room": 0, "epoch": "e", "last_seq": 1}),
        json!({"type": "unsubscribe", "room": 0}),
        json!({"type": "send", "room": 0, "client_msg_id": "w1", "body": "hi"}),
        json!({"type": "edit", "room": 0, "seq": seq, "body": "x"}),
        json!({"type": "delete", "room": 0, "seq": seq}),
        json!({"type": "react", "room": 0, "seq": seq, "emoji": "ok"}),
        json!({"type": "react", "room": 0, "seq": seq, "emoji": "ok", "on": false}),
        json!({"type": "read", "room": 0, "seq": seq}),
        json!({"type": "typing", "room": 0}),
    ];
    for (i, frame) in frames.iter().enumerate() {
        let mut answers = Vec::new();
        for (k, room) in [missing, private, dm].into_iter().enumerate() {
            let mut f = frame.clone();
            f["room"] = json!(room);
            let id = format!("f{i}-{k}");
            f["id"] = json!(id);
            ws.send(f).await;
            let mut answer = ws.expect("answer", T, |a| a["id"] == id).await;
            answer["id"] = json!("ID");
            answers.push(shape(200, &answer, room));
        }
        assert_eq!(answers[1], answers[0], "{frame}: private vs missing");
        assert_eq!(answers[2], answers[0], "{frame}: DM vs missing");
        if frame["type"] != "unsubscribe" && frame["type"] != "typing" {
            assert!(answers[0].contains("not_found"), "{frame}: {}", answers[0]);
        }
    }
    // Members still see their room; a public room still tells a non-member
    // to join.
    assert_eq!(
        http(
            "GET",
            &format!("{}/api/v1/rooms/{private}/messages", r.http),
            Some(&alice),
            None
        )
        .await
        .0,
        200
    );
    let public = public_room(&r.http, &alice, "open").await;
    let (status, e) = http(
        "GET",
        &format!("{}/api/v1/rooms/{public}/messages", r.http),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
}

// ---- bad_frame keeps the id ----

#[tokio::test]
async fn a_frame_that_does_not_parse_is_refused_with_its_id_and_the_socket_lives() {
    use futures::SinkExt;
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    let mut ws = Ws::connect(&r.ws, &alice).await;
    let deep = format!(
        r#"{{"type":"send","id":"deep","room":{room},"x":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let frames = [
        format!(
            r#"{{"type":"send","id":"huge","room":{room},"client_msg_id":"a","body":"x","n":1e400}}"#
        ),
        format!(
            r#"{{"type":"send","id":"lone","room":{room},"client_msg_id":"b","body":"\ud800"}}"#
        ),
        deep,
        r#"{"type":"ping","id":"cut","#.to_string(),
        r#"{"type":"ping","id":"tail"} {"type":"ping"}"#.to_string(),
    ];
    for frame in &frames {
        ws.send_raw(frame).await;
    }
    for id in ["huge", "lone", "deep", "cut", "tail"] {
        let e = ws.expect("bad_frame", T, |f| f["type"] == "error").await;
        assert_eq!(
            (e["id"].as_str(), e["code"].as_str()),
            (Some(id), Some("bad_frame")),
            "{e}"
        );
    }
    // A binary frame with a readable id gets it back too.
    ws.ws
        .send(tokio_tungstenite::tungstenite::Message::Binary(
            br#"{"type":"ping","id":"bin"}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    let e = ws
        .expect("binary refused", T, |f| f["type"] == "error")
        .await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str()),
        (Some("bin"), Some("bad_frame"))
    );
    // The connection survived all of it, in order.
    ws.send(json!({"type": "ping", "id": "alive"})).await;
    let pong = ws.expect("pong", T, |f| f["type"] == "pong").await;
    assert_eq!(pong["id"], "alive");
}

// ---- search in scripts without spaces ----

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn search(base: &str, token: &str, q: &str) -> Vec<String> {
    let (status, found) = http(
        "GET",
        &format!("{base}/api/v1/search?q={}", urlencode(q)),
        Some(token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{q}: {found}");
    found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["message"]["body"].as_str().unwrap().to_string())
        .collect()
}

async fn post_messages(base: &str, token: &str, room: i64, bodies: &[&str]) {
    for (i, body) in bodies.iter().enumerate() {
        let (status, sent) = http(
            "POST",
            &format!("{base}/api/v1/rooms/{room}/messages"),
            Some(token),
            Some(json!({"client_msg_id": format!("s{i}"), "body": body})),
        )
        .await;
        assert_eq!(status, 200, "{sent}");
    }
}

const SCRIPTS: [&str; 6] = [
    "我家在上海东边。",
    "東京タワーに行きました",
    "서울에 갑니다",
    "ฉันอยู่กรุงเทพมหานคร",
    "Tokyo meeting at 東京駅",
    "the meeting is at noon",
];

/// Each script's words are found inside the text, and only there.
async fn search_finds_words_of_every_script(base: &str, token: &str) {
    for (q, expect) in [
        ("上海", vec!["我家在上海东边。"]),
        ("东边", vec!["我家在上海东边。"]),
        ("北京", vec![]),
        ("タワー", vec!["東京タワーに行きました"]),
        ("서울", vec!["서울에 갑니다"]),
        ("부산", vec![]),
        ("กรุงเทพ", vec!["ฉันอยู่กรุงเทพมหานคร"]),
        ("meeting 東京", vec!["Tokyo meeting at 東京駅"]),
        ("上海 東京", vec![]),
        ("%", vec![]),
    ] {
        assert_eq!(search(base, token, q).await, expect, "{q}");
    }
    let mut tokyo = search(base, token, "東京").await;
    tokyo.sort();
    assert_eq!(tokyo, ["Tokyo meeting at 東京駅", "東京タワーに行きました"]);
}

#[tokio::test]
async fn search_finds_words_in_scripts_without_spaces_and_ranks_latin_text() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    post_messages(&r.http, &alice, room, &SCRIPTS).await;
    search_finds_words_of_every_script(&r.http, &alice).await;
    // Latin text: full-text words, ranked; among equal ranks newest first.
    let other = public_room(&r.http, &alice, "releases").await;
    post_messages(
        &r.http,
        &alice,
        other,
        &[
            "release release release: notes for the release",
            "the release is out",
            "prerelease builds",
            "another release today",
        ],
    )
    .await;
    assert_eq!(
        search(&r.http, &alice, "release").await,
        [
            "release release release: notes for the release",
            "another release today",
            "the release is out",
        ]
    );
    assert_eq!(
        search(&r.http, &alice, "MEETING").await.len(),
        2,
        "case-insensitive"
    );
    // The trigram index gets built in the background (pg_trgm is available
    // to the test server's superuser).
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let valid: Option<(bool,)> = sqlx::query_as(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'messages_body_trgm'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if valid == Some((true,)) {
            break;
        }
        assert!(Instant::now() < deadline, "no trigram index: {valid:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    search_finds_words_of_every_script(&r.http, &alice).await;
}

#[tokio::test]
async fn search_works_when_the_role_cannot_create_pg_trgm() {
    use sqlx::Connection;
    // A database the tenant role does not own, with rights on schema public
    // only: CREATE EXTENSION is refused, the migrations must still pass.
    let admin = std::env::var("CHORUS_TEST_DATABASE_URL").unwrap();
    let name = format!("rt_notrgm_{}", unique());
    let role = format!("r_{}", unique());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    for sql in [
        format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw-{role}'"),
        format!("CREATE DATABASE \"{name}\""),
        format!("GRANT CONNECT, TEMP ON DATABASE \"{name}\" TO \"{role}\""),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let (scheme_user, rest) = admin.split_once('@').unwrap();
    let (scheme, _) = scheme_user.split_once("://").unwrap();
    let host = &rest[..rest.rfind('/').unwrap()];
    let db_admin = format!("{}/{name}", &admin[..admin.rfind('/').unwrap()]);
    let mut on_db = sqlx::PgConnection::connect(&db_admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT ALL ON SCHEMA public TO \"{role}\""
    )))
    .execute(&mut on_db)
    .await
    .unwrap();
    let url = format!("{scheme}://{role}:pw-{role}@{host}/{name}");
    let r = Replica::start(&url).await;
    let (trgm,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm')")
            .fetch_one(&mut on_db)
            .await
            .unwrap();
    assert!(!trgm, "the role could not create the extension");
    let alice = signup(&r.http, "alice").await;
    let room = public_room(&r.http, &alice, "general").await;
    post_messages(&r.http, &alice, room, &SCRIPTS).await;
    search_finds_words_of_every_script(&r.http, &alice).await;
}

// ---- security headers, CORS and WebSocket origins ----

#[tokio::test]
async fn upgrades_from_foreign_origins_are_refused_and_headers_are_set() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![("CHAT_CORS_ORIGINS", "https://app.example.com".into())],
            ..Default::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let host = r.http.trim_start_matches("http://").to_string();
    let upgrade = |origin: String| {
        let url = format!("{}?access_token={alice}", r.ws);
        async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut().insert("origin", origin.parse().unwrap());
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(WsError::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(upgrade("https://evil.example".into()).await, 403);
    assert_eq!(upgrade(format!("http://{host}")).await, 101, "same origin");
    assert_eq!(
        upgrade("https://app.example.com".into()).await,
        101,
        "listed"
    );
    // Security headers on the page and the API.
    for path in ["/", "/api/v1/rooms"] {
        let (_, headers, _) = request(
            "GET",
            &format!("{}{path}", r.http),
            &[("authorization", format!("Bearer {alice}"))],
            None,
        )
        .await;
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert!(headers.contains_key("content-security-policy"), "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
    }
}

// ---- retention and drain ----

#[tokio::test]
async fn retention_removes_old_history_keeps_recent_and_resume_past_it_is_not_recovered() {
    use sqlx::Connection;
    let db = fresh_db().await;
    let a = Replica::start(&db).await;
    let alice = signup(&a.http, "alice").await;
    let room = public_room(&a.http, &alice, "general").await; // seq 1: alice joined
    let bodies: Vec<String> = (2..=11).map(|s| format!("message {s}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    post_messages(&a.http, &alice, room, &refs).await; // seqs 2..=11
    let epoch = Ws::connect(&a.ws, &alice).await.hello["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    // Seqs up to 6 are ten days old; the rest are recent.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    for table in ["messages", "room_events"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET created_at = now() - interval '10 days' WHERE room_id = $1 AND seq <= 6"
        )))
        .bind(room)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    // A replica keeping 7 days sweeps at start (then hourly).
    let b = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![("CHAT_HISTORY_RETENTION_DAYS", "7".into())],
            ..Default::default()
        },
    )
    .await;
    let deadline = Instant::now() + T;
    while b
        .log_lines(|l| l["message"] == "history retention removed old rows")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no sweep logged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seqs = |table: &'static str| {
        let db = db.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
            sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(format!(
                "SELECT seq FROM {table} WHERE room_id = $1 ORDER BY seq"
            )))
            .bind(room)
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .map(|(s,)| s)
            .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        seqs("messages").await,
        (7..=11).collect::<Vec<_>>(),
        "old go, recent stay"
    );
    assert_eq!(seqs("room_events").await, (7..=11).collect::<Vec<_>>());
    let (_, history) = http(
        "GET",
        &format!("{}/api/v1/rooms/{room}/messages", b.http),
        Some(&alice),
        None,
    )
    .await;
    let shown: Vec<i64> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(shown, [11, 10, 9, 8, 7]);
    // Resuming from before the swept range cannot be exact.
    let mut ws = Ws::connect(&b.ws, &alice).await;
    let sub = ws.subscribe(room, Some((&epoch, 3))).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["reason"].as_str()),
        (Some(false), Some("history_gone")),
        "{sub}"
    );
    // Resuming from inside what is kept still is.
    let mut ws = Ws::connect(&b.ws, &alice).await;
    let sub = ws.subscribe(room, Some((&epoch, 6))).await;
    assert_eq!(
        (sub["recovered"].as_bool(), sub["replayed"].as_i64()),
        (Some(true), Some(5)),
        "{sub}"
    );
}

#[tokio::test]
async fn sigterm_spreads_the_closes_over_the_drain_window() {
    let db = fresh_db().await;
    let window = Duration::from_secs(3);
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            env: vec![("CHAT_DRAIN_SECONDS", window.as_secs().to_string())],
            ..Default::default()
        },
    )
    .await;
    let alice = signup(&r.http, "alice").await;
    let n = 8;
    let mut sockets = Vec::new();
    for _ in 0..n {
        sockets.push(Ws::connect(&r.ws, &alice).await);
    }
    let start = Instant::now();
    r.terminate();
    // Spawned at once (collected), so each close is timed when it arrives.
    let waits: Vec<_> = sockets
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                match s.next(Duration::from_secs(10)).await {
                    Next::Closed(code) => (code, start.elapsed()),
                    _ => panic!("socket not closed"),
                }
            })
        })
        .collect();
    let mut closes = Vec::new();
    for w in waits {
        closes.push(w.await.unwrap());
    }
    assert!(
        closes.iter().all(|(code, _)| *code == Some(4000)),
        "{closes:?}"
    );
    let mut at: Vec<Duration> = closes.into_iter().map(|(_, t)| t).collect();
    at.sort();
    // Spread evenly: socket i of n at i/n of the window (0, 375 ms, ... 2.6 s).
    let spread = at[n - 1] - at[0];
    assert!(
        spread >= window.mul_f64(0.6),
        "closes spread over {spread:?} only: {at:?}"
    );
    assert!(at[n - 1] <= window + Duration::from_secs(1), "late: {at:?}");
    // Never a burst: at most two closes within any 200 ms.
    for pair in at.windows(3) {
        assert!(
            pair[2] - pair[0] > Duration::from_millis(200),
            "burst: {at:?}"
        );
    }
}
