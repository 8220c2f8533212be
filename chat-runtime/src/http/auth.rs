//! The caller's identity: the [`Authed`] extractor for REST handlers, and
//! the token lookup the WebSocket upgrade shares with it. A missing or
//! refused token is `401 unauthorized` with the reason; a storage failure
//! while checking it is a `500`.

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, header, request::Parts},
};

use crate::{
    auth::{AuthError, Principal},
    error::AppError,
    state::AppState,
};

/// The caller, from `Authorization: Bearer <token>`.
pub struct Authed(pub Principal);

/// An authentication failure as an API error.
pub fn auth_error(e: AuthError) -> AppError {
    match e {
        AuthError::Store(s) => s.into(),
        other => AppError::Unauthorized(other.to_string()),
    }
}

/// The token of an `Authorization: Bearer` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

/// Verifies `token` (signature, claims, revocation) and finds its user.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, AppError> {
    state
        .auth
        .authenticate(state.hub.store(), token)
        .await
        .map_err(auth_error)
}

/// Redeems a WebSocket ticket (`POST /api/v1/ws-ticket`) for the principal
/// it was issued to: unknown, used and expired tickets, tokens logged out or
/// expired since, are `401 unauthorized`.
pub async fn redeem_ticket(state: &AppState, ticket: &str) -> Result<Principal, AppError> {
    let store = state.hub.store();
    let Some(t) = store.redeem_ws_ticket(ticket).await? else {
        return Err(AppError::Unauthorized(
            "unknown or already used ticket: get a new one from POST /api/v1/ws-ticket".into(),
        ));
    };
    if !t.fresh {
        return Err(AppError::Unauthorized(
            "expired ticket: get a new one from POST /api/v1/ws-ticket and connect at once".into(),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if t.token_exp <= now {
        return Err(auth_error(AuthError::Invalid("token expired".into())));
    }
    if let Some(jti) = &t.jti
        && store.is_revoked(jti).await?
    {
        return Err(auth_error(AuthError::Revoked));
    }
    let user = store.user(t.user).await?;
    Ok(Principal {
        user,
        jti: t.jti,
        exp: t.token_exp,
    })
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or_else(|| auth_error(AuthError::Missing))?;
        Ok(Authed(authenticate(state, &token).await?))
    }
}
