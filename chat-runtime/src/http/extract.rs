//! Extractors whose rejections use the API's JSON error format: a body, path
//! or query string that does not parse is a `400 bad_request` naming the
//! problem, a body over the limit a `413 too_large`.

use axum::{
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// An axum rejection (status and text) as an API error.
pub fn rejection(status: StatusCode, text: String) -> AppError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge(text),
        StatusCode::METHOD_NOT_ALLOWED => AppError::MethodNotAllowed(text),
        StatusCode::NOT_FOUND => AppError::NotFound(text),
        _ => AppError::BadRequest(text),
    }
}

/// `axum::Json` with JSON errors.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(AppJson(v)),
            Err(r) => Err(rejection(r.status(), r.body_text())),
        }
    }
}

/// `axum::extract::Path` with JSON errors.
pub struct AppPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for AppPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(AppPath(v)),
            Err(r) => Err(rejection(r.status(), r.body_text())),
        }
    }
}

/// `axum::extract::Query` with JSON errors.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(AppQuery(v)),
            Err(r) => Err(rejection(r.status(), r.body_text())),
        }
    }
}
