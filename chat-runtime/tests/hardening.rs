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
                ("CHAT_LOGIN_LOCKOUT_SECONDS", "2".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    signup(&r.http, "alice").await; // 1 of the address's 8
    // Three wrong passwords lock the username (2 s): even the right
    // password is refused with 429 while locked, without hashing.
    for _ in 0..3 {
        let (status, _, body) = login(&r.http, "alice", "wrong-password").await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, headers, body) = login(&r.http, "alice", "password-alice").await;
    let ms = assert_limited(status, &headers, &body);
    assert!(ms <= 2000, "{ms}");
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
        ms > 50_000 && ms <= 60_000,
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

// ---- helpers for later sections ----

#[allow(dead_code)]
fn elapsed_ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

#[allow(dead_code)]
const TIMEOUT: Duration = T;
