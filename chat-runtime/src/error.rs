//! Errors of the REST API: JSON `{"error": {"code", "message"}}` with a stable
//! code (docs/protocol.md, "Errors"; the codes and their statuses are
//! [`ErrorCode`]). Client errors are logged at warn, server errors at error
//! with details that never reach the client.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::{chat::ChatError, protocol::ErrorCode, store::StoreError};

/// An API error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: already exists.
    #[error("{0}")]
    Conflict(String),
    /// 413: body too large.
    #[error("{0}")]
    TooLarge(String),
    /// 429: rate limited; also a `Retry-After` header (whole seconds).
    #[error("{message}")]
    RateLimited {
        /// When the next attempt will be accepted.
        retry_after_ms: u64,
        /// What was limited, and when to retry.
        message: String,
    },
    /// 503: draining or full.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a server-side failure (details logged, not returned).
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::BadRequest(_) => ErrorCode::BadRequest,
            AppError::Unauthorized(_) => ErrorCode::Unauthorized,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            AppError::Conflict(_) => ErrorCode::Conflict,
            AppError::TooLarge(_) => ErrorCode::TooLarge,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::Unavailable(_) => ErrorCode::Unavailable,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    fn status(&self) -> StatusCode {
        self.code().http_status()
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Internal(format!("database: {e}"))
    }
}

/// A storage refusal keeps its message; its code is [`StoreError::code`]
/// as REST names it (`invalid` is `400 bad_request`). A database failure is
/// a `500` whose detail is logged only.
impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        let code = e.code().for_rest();
        let message = match e {
            StoreError::Db(e) => return AppError::Internal(format!("database: {e}")),
            StoreError::NotFound(m)
            | StoreError::Forbidden(m)
            | StoreError::Conflict(m)
            | StoreError::Invalid(m) => m,
        };
        match code {
            ErrorCode::NotFound => AppError::NotFound(message),
            ErrorCode::Forbidden => AppError::Forbidden(message),
            ErrorCode::Conflict => AppError::Conflict(message),
            _ => AppError::BadRequest(message),
        }
    }
}

impl From<ChatError> for AppError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::RateLimited {
                retry_after_ms,
                per_second,
            } => AppError::RateLimited {
                retry_after_ms,
                message: format!(
                    "too many messages: at most {per_second} per second; retry in {retry_after_ms} ms"
                ),
            },
            ChatError::Rejected(e) | ChatError::Store(e) => e.into(),
        }
    }
}

/// The JSON body of an error.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            AppError::Internal(detail) => {
                tracing::error!(code = self.code().as_str(), detail = %detail, "request failed")
            }
            other => {
                tracing::warn!(code = other.code().as_str(), error = %other, "request refused")
            }
        }
        let message = self.to_string();
        let retry_after_ms = match &self {
            AppError::RateLimited { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: &message,
                retry_after_ms,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(ms) = retry_after_ms {
            // Whole seconds, rounded up (RFC 9110 `Retry-After: <seconds>`).
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(ms.div_ceil(1000).max(1)),
            );
        }
        response
    }
}

impl From<crate::authlimit::Refusal> for AppError {
    fn from(r: crate::authlimit::Refusal) -> Self {
        AppError::RateLimited {
            retry_after_ms: u64::try_from(r.retry_after().as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            message: r.message(),
        }
    }
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, AppError>;

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;

    async fn body(e: AppError) -> (StatusCode, Value) {
        let r = e.into_response();
        let status = r.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                r.headers().contains_key("retry-after"),
                "429 has Retry-After"
            );
        }
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_have_the_documented_shape() {
        let r = AppError::from(ChatError::RateLimited {
            retry_after_ms: 83,
            per_second: 10,
        })
        .into_response();
        assert_eq!(r.headers()["retry-after"], "1", "seconds, rounded up");
        let (status, v) = body(
            ChatError::RateLimited {
                retry_after_ms: 83,
                per_second: 10,
            }
            .into(),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            v,
            json!({"error": {"code": "rate_limited", "message": "too many messages: at most 10 per second; retry in 83 ms", "retry_after_ms": 83}})
        );
        let (status, v) = body(StoreError::Invalid("body is empty".into()).into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            v,
            json!({"error": {"code": "bad_request", "message": "body is empty"}})
        );
        let (status, v) = body(StoreError::Db(sqlx::Error::PoolTimedOut).into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            v,
            json!({"error": {"code": "internal", "message": "internal error"}}),
            "details stay in the log"
        );
    }

    #[test]
    fn store_refusals_keep_their_code_on_both_surfaces() {
        for (e, rest) in [
            (StoreError::NotFound("x".into()), ErrorCode::NotFound),
            (StoreError::Forbidden("x".into()), ErrorCode::Forbidden),
            (StoreError::Conflict("x".into()), ErrorCode::Conflict),
            (StoreError::Invalid("x".into()), ErrorCode::BadRequest),
        ] {
            assert_eq!(e.code().for_rest(), rest);
            assert_eq!(AppError::from(e).code(), rest);
        }
    }
}
