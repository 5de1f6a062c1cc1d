//! Errors as the protocol shapes them: every non-2xx answer is a JSON [`WorkerError`].

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use vramd_protocol::{ErrorCode, WorkerError};

/// A [`WorkerError`] from a code and a message.
pub fn error(code: ErrorCode, message: impl Into<String>) -> WorkerError {
    WorkerError {
        code,
        message: message.into(),
    }
}

/// The one place error codes become statuses.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest | ErrorCode::PromptTooLong | ErrorCode::NoChatTemplate => StatusCode::BAD_REQUEST,
        ErrorCode::NotLoaded => StatusCode::CONFLICT,
        ErrorCode::LoadFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A [`WorkerError`] as an HTTP response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: WorkerError,
}

impl ApiError {
    /// An `invalid_request` error with a status of its own (the 404/405 fallbacks).
    pub fn new(status: StatusCode, message: &str) -> ApiError {
        ApiError {
            status,
            error: error(ErrorCode::InvalidRequest, message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.error)).into_response()
    }
}

impl From<WorkerError> for ApiError {
    fn from(error: WorkerError) -> Self {
        ApiError {
            status: status_of(error.code),
            error,
        }
    }
}

/// Parses a JSON body; a bad body is `invalid_request`, in the protocol's error shape.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| error(ErrorCode::InvalidRequest, format!("request body: {e}")).into())
}

/// Adds the JSON answers for an unknown path (404) and a known path with the wrong method (405).
pub fn with_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_statuses() {
        assert_eq!(status_of(ErrorCode::InvalidRequest), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(ErrorCode::NotLoaded), StatusCode::CONFLICT);
        assert_eq!(status_of(ErrorCode::LoadFailed), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status_of(ErrorCode::Internal), StatusCode::INTERNAL_SERVER_ERROR);
        let e: ApiError = error(ErrorCode::LoadFailed, "x").into();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn a_bad_body_is_an_invalid_request() {
        let e = parse::<vramd_protocol::UnloadRequest>(&Bytes::from_static(b"{")).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.error.code, ErrorCode::InvalidRequest);
        assert!(e.error.message.starts_with("request body:"), "{e:?}");
    }
}
