//! Sign-up, login, logout and the caller's identity.

use std::time::Instant;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    error::{ApiResult, AppError},
    http::{auth::Authed, client_ip::ClientIp, extract::AppJson},
    state::AppState,
    store::accounts::{hash_password, verify_password},
};

/// Sign-up / login body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password (8 to 256 characters).
    pub password: String,
    /// Display name (sign-up only; defaults to the username).
    #[serde(default)]
    pub display_name: Option<String>,
}

fn builtin_only(state: &AppState) -> ApiResult<()> {
    if state.auth.builtin() {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "this tenant uses External auth: sign in with its identity provider".into(),
        ))
    }
}

/// `POST /api/v1/auth/signup`.
pub async fn signup(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(c): AppJson<Credentials>,
) -> ApiResult<Json<Value>> {
    builtin_only(&state)?;
    // Limits first: nothing below (hashing above all) runs for a refused
    // attempt.
    state
        .auth_limiter
        .admit_signup(ip, &c.username.to_lowercase())?;
    if !(8..=256).contains(&c.password.chars().count()) {
        return Err(AppError::BadRequest(
            "password must be 8 to 256 characters".into(),
        ));
    }
    let display = c.display_name.clone().unwrap_or_else(|| c.username.clone());
    if display.trim().is_empty() || display.chars().count() > 64 {
        return Err(AppError::BadRequest(
            "display_name must be 1 to 64 characters".into(),
        ));
    }
    let username = c.username.to_lowercase();
    crate::store::accounts::validate_username(&username)?;
    let hash = hash_password(c.password).await?;
    let user = state
        .hub
        .store()
        .create_user(&username, display.trim(), &hash)
        .await?;
    let (token, exp) = state
        .auth
        .issue(&user)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(
        json!({"token": token, "expires_at": exp, "user": user}),
    ))
}

/// `POST /api/v1/auth/login`.
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(c): AppJson<Credentials>,
) -> ApiResult<Json<Value>> {
    builtin_only(&state)?;
    let username = c.username.to_lowercase();
    let limiter = &state.auth_limiter;
    limiter.admit_login(ip, &username, Instant::now())?;
    // Unknown usernames count failures like known ones, so the limits do
    // not tell which exist.
    let refused = || {
        if let Some(lock) = limiter.failed(&username, Instant::now()) {
            tracing::warn!(
                username = %username,
                lockout_s = lock.as_secs(),
                "username locked after failed logins"
            );
        }
        AppError::Unauthorized("wrong username or password".into())
    };
    let Some((user, Some(hash))) = state.hub.store().user_with_hash(&username).await? else {
        // Spend the same time as a real check, so usernames cannot be probed.
        let _ = verify_password(c.password, "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$K7C0D7WX3zy3qfvMZ2hVRyp8lnDmwOITIIfPfUoHXiU".into()).await;
        return Err(refused());
    };
    if !verify_password(c.password, hash).await {
        return Err(refused());
    }
    limiter.succeeded(&username);
    let (token, exp) = state
        .auth
        .issue(&user)
        .map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Json(
        json!({"token": token, "expires_at": exp, "user": user}),
    ))
}

/// `POST /api/v1/ws-ticket`: a one-time ticket for `GET /ws?ticket=`, so
/// the token itself never appears in a URL (and so in no access log). It is
/// good for one upgrade within `expires_in` seconds, on any replica, and the
/// connection it opens lives until the token's own expiry.
pub async fn ws_ticket(State(state): State<AppState>, Authed(p): Authed) -> ApiResult<Json<Value>> {
    let ttl = state.config.ws_ticket_ttl;
    let ticket = state
        .hub
        .store()
        .create_ws_ticket(p.user.id, p.jti.as_deref(), p.exp, ttl)
        .await?;
    Ok(Json(json!({"ticket": ticket, "expires_in": ttl.as_secs()})))
}

/// `POST /api/v1/auth/logout`: the token stops working.
pub async fn logout(State(state): State<AppState>, Authed(p): Authed) -> ApiResult<Json<Value>> {
    if let Some(jti) = &p.jti {
        state.hub.store().revoke_token(jti, p.exp).await?;
    }
    Ok(Json(json!({"logged_out": true})))
}

/// `GET /api/v1/me`.
pub async fn me(Authed(p): Authed) -> Json<Value> {
    Json(json!({"user": p.user}))
}
