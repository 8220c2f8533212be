//! Every token refusal, against a running runtime on a real database:
//! missing, malformed, `alg: none`, expired, wrongly signed, another tenant's,
//! logged out; External mode with HS256, RS256 (JWKS file) and ES256 (JWKS
//! URL), wrong issuer and audience.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header, encode,
    jwk::{Jwk, JwkSet},
};
use serde_json::{Value, json};
use support::{JWT_SECRET, Replica, ReplicaOpts, Ws, fresh_db, http, signup};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn me(base: &str, token: &str) -> (u16, Value) {
    http("GET", &format!("{base}/api/v1/me"), Some(token), None).await
}

fn hs256(secret: &str, claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn builtin_tokens_and_every_refusal() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let token = signup(&r.http, "alice").await;
    let (status, body) = me(&r.http, &token).await;
    assert_eq!(
        (status, body["user"]["username"].as_str()),
        (200, Some("alice"))
    );

    // Login with the password works; a wrong password does not.
    let (status, login) = http(
        "POST",
        &format!("{}/api/v1/auth/login", r.http),
        None,
        Some(json!({"username": "alice", "password": "password-alice"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, wrong) = http(
        "POST",
        &format!("{}/api/v1/auth/login", r.http),
        None,
        Some(json!({"username": "alice", "password": "nope-nope-nope"})),
    )
    .await;
    assert_eq!(
        (status, wrong["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // Taken usernames are refused.
    let (status, _) = http(
        "POST",
        &format!("{}/api/v1/auth/signup", r.http),
        None,
        Some(json!({"username": "alice", "password": "another-password"})),
    )
    .await;
    assert_eq!(status, 409);

    let (status, missing) = http("GET", &format!("{}/api/v1/me", r.http), None, None).await;
    assert_eq!(status, 401);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer")
    );
    assert_eq!(me(&r.http, "not-a-jwt").await.0, 401);

    // alg: none, with otherwise valid claims.
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims =
        json!({"sub": "1", "tid": "acme", "exp": now() + 600, "iss": "chorus", "aud": "acme"});
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    assert_eq!(me(&r.http, &none).await.0, 401, "alg none refused");
    // Expired.
    let uid = body["user"]["id"].as_i64().unwrap().to_string();
    let expired = hs256(
        JWT_SECRET,
        json!({"sub": uid, "tid": "acme", "exp": now() - 3600, "iss": "chorus", "aud": "acme"}),
    );
    let (status, e) = me(&r.http, &expired).await;
    assert_eq!(status, 401);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("expired"),
        "{e}"
    );
    // Signed with another key.
    let forged = hs256(
        "another-secret-0123456789abcdef012345",
        json!({"sub": uid, "tid": "acme", "exp": now() + 600, "iss": "chorus", "aud": "acme"}),
    );
    let (status, e) = me(&r.http, &forged).await;
    assert_eq!(status, 401);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad signature"),
        "{e}"
    );
    // Minted for another tenant (same key, as if keys were shared).
    let other = hs256(
        JWT_SECRET,
        json!({"sub": uid, "tid": "globex", "exp": now() + 600, "iss": "chorus", "aud": "acme"}),
    );
    let (status, e) = me(&r.http, &other).await;
    assert_eq!(status, 401);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("globex"),
        "{e}"
    );
    // A token from another tenant's runtime is refused.
    let db2 = fresh_db().await;
    let globex = Replica::start_with(
        &db2,
        ReplicaOpts {
            tenant: "globex",
            env: vec![],
        },
    )
    .await;
    let globex_token = signup(&globex.http, "alice").await;
    assert_eq!(
        me(&r.http, &globex_token).await.0,
        401,
        "cross-tenant token refused"
    );
    // Also on the WebSocket: refused before the upgrade.
    assert!(Ws::try_connect(&r.ws, &globex_token).await.is_err());

    // Logout: the token stops working, a fresh login still works.
    let (status, _) = http(
        "POST",
        &format!("{}/api/v1/auth/logout", r.http),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, e) = me(&r.http, &token).await;
    assert_eq!(status, 401);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("logged out")
    );
    assert_eq!(me(&r.http, login["token"].as_str().unwrap()).await.0, 200);
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("fixtures/rsa-test-key.pem")).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("fixtures/ec-test-key.pem")).unwrap()
}

fn jwks(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(JwkSet { keys: vec![jwk] }).unwrap()
}

fn signed(key: &EncodingKey, alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    encode(&h, &claims, key).unwrap()
}

fn claims(sub: &str, tid: &str, iss: &str, aud: &str) -> Value {
    json!({"sub": sub, "tid": tid, "iss": iss, "aud": aud, "exp": now() + 600, "preferred_username": sub})
}

#[tokio::test]
async fn external_tokens_hs256_rs256_file_es256_url() {
    const ISS: &str = "https://id.acme.example";
    const AUD: &str = "acme-chat";
    let shared = "external-shared-secret-0123456789abcdef";

    // RS256 keys from a JWKS file.
    let dir = std::env::temp_dir().join(format!("jwks-{}", support::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(
        &file,
        jwks(&rsa_key(), Algorithm::RS256, "rsa-1").to_string(),
    )
    .unwrap();

    let db = fresh_db().await;
    let r = Replica::start_with(
        &db,
        ReplicaOpts {
            tenant: "acme",
            env: vec![
                ("CHAT_AUTH_MODE", "external".into()),
                ("CHAT_EXTERNAL_ISSUER", ISS.into()),
                ("CHAT_EXTERNAL_AUDIENCE", AUD.into()),
                ("CHAT_EXTERNAL_JWT_SECRET", shared.into()),
                (
                    "CHAT_EXTERNAL_JWKS_FILE",
                    file.to_string_lossy().to_string(),
                ),
            ],
        },
    )
    .await;
    let hs = hs256(shared, claims("user-1", "acme", ISS, AUD));
    let (status, body) = me(&r.http, &hs).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["username"], "user-1", "created on first sight");
    let rs = signed(
        &rsa_key(),
        Algorithm::RS256,
        "rsa-1",
        claims("user-2", "acme", ISS, AUD),
    );
    assert_eq!(me(&r.http, &rs).await.0, 200);
    // The same subject maps to the same user.
    let again = hs256(shared, claims("user-1", "acme", ISS, AUD));
    assert_eq!(
        me(&r.http, &again).await.1["user"]["id"],
        body["user"]["id"]
    );

    // Refusals.
    for (what, token) in [
        (
            "wrong issuer",
            hs256(shared, claims("u", "acme", "https://evil.example", AUD)),
        ),
        (
            "wrong audience",
            hs256(shared, claims("u", "acme", ISS, "other-app")),
        ),
        (
            "other tenant",
            hs256(shared, claims("u", "globex", ISS, AUD)),
        ),
        (
            "unknown kid",
            signed(
                &rsa_key(),
                Algorithm::RS256,
                "rsa-9",
                claims("u", "acme", ISS, AUD),
            ),
        ),
        (
            "ES256 without such a key",
            signed(
                &ec_key(),
                Algorithm::ES256,
                "rsa-1",
                claims("u", "acme", ISS, AUD),
            ),
        ),
        (
            "expired",
            hs256(
                shared,
                json!({"sub": "u", "tid": "acme", "iss": ISS, "aud": AUD, "exp": now() - 600}),
            ),
        ),
    ] {
        let (status, e) = me(&r.http, &token).await;
        assert_eq!(status, 401, "{what} must be refused: {e}");
    }
    // Signup/login are for built-in accounts only.
    let (status, _) = http(
        "POST",
        &format!("{}/api/v1/auth/signup", r.http),
        None,
        Some(json!({"username": "zed", "password": "password-zed"})),
    )
    .await;
    assert_eq!(status, 403);

    // ES256 keys from a JWKS URL (served on loopback by this test).
    let set = jwks(&ec_key(), Algorithm::ES256, "ec-1");
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let s = set.clone();
            async move { axum::Json(s) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let db2 = fresh_db().await;
    let r2 = Replica::start_with(
        &db2,
        ReplicaOpts {
            tenant: "acme",
            env: vec![
                ("CHAT_AUTH_MODE", "external".into()),
                ("CHAT_EXTERNAL_ISSUER", ISS.into()),
                ("CHAT_EXTERNAL_AUDIENCE", AUD.into()),
                (
                    "CHAT_EXTERNAL_JWKS_URL",
                    format!("http://127.0.0.1:{}/jwks.json", addr.port()),
                ),
            ],
        },
    )
    .await;
    let es = signed(
        &ec_key(),
        Algorithm::ES256,
        "ec-1",
        claims("user-3", "acme", ISS, AUD),
    );
    assert_eq!(me(&r2.http, &es).await.0, 200);
    // HS256 is not configured on this one.
    assert_eq!(
        me(&r2.http, &hs256(shared, claims("u", "acme", ISS, AUD)))
            .await
            .0,
        401
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_configuration_fails_at_start_with_one_clear_line() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-runtime"))
        .env_clear()
        .env("CHAT_DATABASE_URL", "postgres://u@127.0.0.1/db")
        .env("CHAT_TENANT_ID", "acme")
        .env("CHAT_JWT_SECRET", "short")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CHAT_JWT_SECRET: is 5 bytes; use at least 32 random bytes"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_bad_jwks_file_fails_start_up_with_one_clear_line() {
    let dir = std::env::temp_dir().join(format!("jwks-bad-{}", support::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    std::fs::write(&file, "this is not JSON").unwrap();
    // The database is unreachable on purpose: the key file is checked
    // first, so start-up fails at once instead of waiting for it.
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-runtime"))
        .env_clear()
        .env("CHAT_DATABASE_URL", "postgres://u@127.0.0.1:1/db")
        .env("CHAT_TENANT_ID", "acme")
        .env("CHAT_AUTH_MODE", "external")
        .env("CHAT_EXTERNAL_ISSUER", "https://id.acme.example")
        .env("CHAT_EXTERNAL_AUDIENCE", "acme-chat")
        .env("CHAT_EXTERNAL_JWKS_FILE", &file)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(15), run)
        .await
        .expect("start-up must fail at once on a bad JWKS file")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CHAT_EXTERNAL_JWKS_FILE") && stderr.contains("not a JSON Web Key Set"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_socket_is_closed_with_4001_when_its_token_expires() {
    let db = fresh_db().await;
    let r = Replica::start(&db).await;
    let token = signup(&r.http, "alice").await;
    let (_, body) = me(&r.http, &token).await;
    let uid = body["user"]["id"].as_i64().unwrap().to_string();
    let short = hs256(
        JWT_SECRET,
        json!({"sub": uid, "tid": "acme", "exp": now() + 3, "iss": "chorus", "aud": "acme"}),
    );
    let mut ws = Ws::connect(&r.ws, &short).await;
    match ws.next(std::time::Duration::from_secs(10)).await {
        support::Next::Closed(code) => assert_eq!(code, Some(4001)),
        support::Next::Frame(f) => panic!("expected the 4001 close, got {f}"),
        support::Next::Timeout => panic!("the socket outlived its token"),
    }
    // A socket with a long-lived token stays open meanwhile.
    let mut long = Ws::connect(&r.ws, &token).await;
    long.send(json!({"type": "ping", "id": "still"})).await;
    long.expect("pong", std::time::Duration::from_secs(5), |f| {
        f["type"] == "pong"
    })
    .await;
}
