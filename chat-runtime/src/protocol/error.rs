//! Error codes (docs/protocol.md, "Errors" and "Server → client"): the one
//! table of stable codes, the HTTP status of each, and which codes each
//! surface uses.
//!
//! A refusal has one code whatever surface reports it, with one exception
//! kept from the documented protocol: an invalid value is `invalid` in an
//! error frame and `400 bad_request` over REST ([`ErrorCode::for_rest`]).
//! Storage errors are classified once, by `StoreError::code` in the store
//! (this module depends on nothing in the crate, so the store can depend on
//! it).

use std::fmt;

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// A stable error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Frames: not JSON, not an object, no or invalid `type`, a missing or
    /// mistyped field.
    BadFrame,
    /// Frames: a `type` the server does not know.
    UnknownType,
    /// REST: a field is missing or invalid, or the request does not parse.
    BadRequest,
    /// REST: no token, or a refused one.
    Unauthorized,
    /// Authenticated, not allowed (not a member, wrong role, banned).
    Forbidden,
    /// No such room, message, user or route.
    NotFound,
    /// REST: the path exists, the method does not.
    MethodNotAllowed,
    /// Already exists.
    Conflict,
    /// REST: the body is over the request limit.
    TooLarge,
    /// Frames: a value out of bounds (REST reports it as `bad_request`).
    Invalid,
    /// Too many sends; `retry_after_ms` says when to retry.
    RateLimited,
    /// REST: the replica is draining or full.
    Unavailable,
    /// A server fault; details are in the server log only.
    Internal,
}

impl ErrorCode {
    /// Codes an error frame may carry.
    pub const FRAME: [ErrorCode; 8] = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownType,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Invalid,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    /// Codes a REST error body may carry.
    pub const REST: [ErrorCode; 10] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Invalid => "invalid",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code a REST error body uses for this refusal: frame-only codes
    /// (`invalid`, `bad_frame`, `unknown_type`) are `bad_request` there.
    pub const fn for_rest(self) -> ErrorCode {
        match self {
            ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::Invalid => {
                ErrorCode::BadRequest
            }
            other => other,
        }
    }

    /// The HTTP status of a REST error with this code.
    pub const fn http_status(self) -> StatusCode {
        match self.for_rest() {
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_the_serde_names() {
        for code in ErrorCode::FRAME.iter().chain(&ErrorCode::REST) {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn rest_statuses_match_the_doc_table() {
        assert_eq!(ErrorCode::Invalid.for_rest(), ErrorCode::BadRequest);
        assert_eq!(ErrorCode::Invalid.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(ErrorCode::TooLarge.http_status().as_u16(), 413);
        assert_eq!(ErrorCode::RateLimited.http_status().as_u16(), 429);
        for code in ErrorCode::REST {
            assert_eq!(code.for_rest(), code, "{code} is a REST code");
        }
    }
}
