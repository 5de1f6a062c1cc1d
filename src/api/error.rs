//! The one place HTTP errors are shaped: every error is JSON,
//! `{"error":{"message":…,"type":…,"code":…,"param":…}}`, the format OpenAI clients parse,
//! except on Ollama's routes (`/api/…`), where it is Ollama's `{"error":"message"}`.
//!
//! Handler errors are [`ApiError`]s. Errors that axum produces itself (405, 413, bad JSON)
//! are rewritten by [`json_errors`], so no plain-text error can leave the daemon.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use vramd_protocol::ErrorCode;

use crate::access::Denied;
use crate::arbiter::{ArbiterError, RunError};
use crate::worker::client::CallError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no route for {method} {path}")]
    UnknownRoute { method: String, path: String },
    #[error("model {0:?} does not exist; GET /v1/models lists the configured models")]
    UnknownModel(String),
    /// An image request naming no configured image model: the message lists them, since an
    /// image client (a WebUI) has no `/v1/models` to look at.
    #[error("image model {0:?} does not exist; the image models are: {1}")]
    UnknownImageModel(String, String),
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    #[error("{0}")]
    Unavailable(String),
    /// The model cannot be used until someone fixes it (see `/v1/status`).
    #[error("{0}")]
    ModelFailed(String),
    /// The worker crashed or misbehaved while serving the request.
    #[error("{0}")]
    WorkerFailed(String),
    #[error("{0}")]
    InUse(String),
    /// Not enough memory now: 503 with `Retry-After`.
    #[error("{message}")]
    NoMemory { message: String, retry_after: u64 },
    /// The model's worker is serving others and did not get to this request in time: 503
    /// with `Retry-After`.
    #[error("{message}")]
    Busy { message: String, retry_after: u64 },
    /// More than the whole memory budget: 507.
    #[error("{0}")]
    TooLarge(String),
    #[error("the generation was interrupted")]
    Interrupted,
    /// The caller may not change state (see `access` and `privileged.rs`): 403.
    #[error("{0}")]
    AccessDenied(String),
    /// Something that is not there, other than a model or a route (Ollama's `pull` of a
    /// model vramd is not configured with): 404.
    #[error("{0}")]
    NotFound(String),
    /// A request vramd will never serve (Ollama's `create`, `copy`, `delete`, `push`: models
    /// are configured in models.d): 501, which says the server lacks the feature, not that
    /// the request was malformed.
    #[error("{0}")]
    NotSupported(String),
    /// A TCP request without a valid API key while keys are configured (see `keys`): 401.
    #[error("{0}")]
    Unauthorized(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    code: &'a str,
    param: Option<&'a str>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::UnknownRoute { .. } => (StatusCode::NOT_FOUND, "not_found_error", "unknown_route"),
            ApiError::UnknownModel(_) | ApiError::UnknownImageModel(..) => {
                (StatusCode::NOT_FOUND, "not_found_error", "model_not_found")
            }
            ApiError::InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_value"),
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "unavailable"),
            ApiError::ModelFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "model_failed"),
            ApiError::WorkerFailed(_) => (StatusCode::BAD_GATEWAY, "server_error", "worker_failed"),
            ApiError::InUse(_) => (StatusCode::CONFLICT, "invalid_request_error", "model_busy"),
            ApiError::NoMemory { .. } => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "insufficient_memory"),
            ApiError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "server_error", "model_busy"),
            ApiError::TooLarge(_) => (
                StatusCode::INSUFFICIENT_STORAGE,
                "invalid_request_error",
                "exceeds_memory_budget",
            ),
            ApiError::Interrupted => (StatusCode::CONFLICT, "invalid_request_error", "interrupted"),
            ApiError::AccessDenied(_) => (StatusCode::FORBIDDEN, "permission_error", "access_denied"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error", "not_found"),
            ApiError::NotSupported(_) => (StatusCode::NOT_IMPLEMENTED, "invalid_request_error", "not_supported"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key"),
        }
    }
}

impl From<ArbiterError> for ApiError {
    fn from(e: ArbiterError) -> Self {
        match e {
            ArbiterError::UnknownModel(m) => ApiError::UnknownModel(m),
            ArbiterError::ModelFailed { .. } => ApiError::ModelFailed(e.to_string()),
            ArbiterError::WorkerFailed { .. } => ApiError::WorkerFailed(e.to_string()),
            ArbiterError::InUse { .. } => ApiError::InUse(e.to_string()),
            ArbiterError::NoMemory { retry_after, .. } => ApiError::NoMemory {
                message: e.to_string(),
                retry_after,
            },
            ArbiterError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            ArbiterError::Busy { retry_after, .. } => ApiError::Busy {
                message: e.to_string(),
                retry_after,
            },
            ArbiterError::Stopped => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Arbiter(e) => e.into(),
            RunError::Worker(e) => e.into(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        ApiError::AccessDenied(e.to_string())
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Worker(w, _) => match w.code {
                ErrorCode::PromptTooLong => ApiError::InvalidRequest {
                    message: w.message,
                    param: Some("messages".into()),
                },
                ErrorCode::NoChatTemplate => ApiError::InvalidRequest {
                    message: w.message,
                    param: Some("model".into()),
                },
                ErrorCode::InvalidRequest => ApiError::InvalidRequest {
                    message: w.message,
                    param: None,
                },
                ErrorCode::NotLoaded | ErrorCode::LoadFailed | ErrorCode::Internal => {
                    ApiError::WorkerFailed(format!("the worker failed: {}", w.message))
                }
            },
            CallError::Unreachable(_) | CallError::Transport(_) | CallError::Protocol(_) => {
                ApiError::WorkerFailed(format!("the model's worker failed during the request ({e})"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code) = self.parts();
        let param = match &self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::UnknownModel(_) | ApiError::UnknownImageModel(..) => Some("model"),
            _ => None,
        };
        let mut resp = error_response(status, &self.to_string(), kind, code, param);
        if let ApiError::NoMemory { retry_after, .. } | ApiError::Busy { retry_after, .. } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        if let ApiError::Unauthorized(_) = self {
            // Bearer for API clients; Basic so that a browser (the status page) asks for it.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"vramd\", Basic realm=\"vramd\""),
            );
        }
        resp
    }
}

/// The JSON error object, for error events inside an already started stream.
pub fn error_json(e: &ApiError) -> serde_json::Value {
    let (_, kind, code) = e.parts();
    serde_json::json!({"error": {"message": e.to_string(), "type": kind, "code": code}})
}

/// Ollama's error object, for the `{"error": …}` line of an NDJSON stream that failed after
/// it started (what Ollama's clients raise on).
pub fn ollama_error_json(e: &ApiError) -> serde_json::Value {
    serde_json::json!({ "error": e.to_string() })
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: &str, param: Option<&str>) -> Response {
    let body = Envelope {
        error: ErrorBody {
            message,
            kind,
            code,
            param,
        },
    };
    let mut resp = (status, axum::Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A JSON body extractor whose rejections are [`ApiError`]s or, for an oversized body, a
/// 413 that [`json_errors`] turns into JSON.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::InvalidRequest {
                message: format!(
                    "invalid request: {}",
                    e.body_text()
                        .trim_start_matches("Failed to deserialize the JSON body into the target type: ")
                ),
                param: None,
            }
            .into_response()),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BadJson(e.body_text()).into_response()),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BadJson(
                "expected a JSON body with `Content-Type: application/json`".into(),
            )
            .into_response()),
            // Body too large (413) and body read errors keep their status; json_errors words them.
            Err(other) => Err(other.into_response()),
        }
    }
}

/// Rewrites any error response that is not already JSON (axum's own 405 and 413, a
/// timeout) into the JSON error shape, keeping status and headers such as `Allow`; on
/// Ollama's routes (`/api/…`), into Ollama's shape ([`ollama_shape`]).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let ollama = req.uri().path().starts_with("/api/");
    let resp = openai_shape(next.run(req).await).await;
    if ollama {
        ollama_shape(resp).await
    } else {
        resp
    }
}

/// Ollama's clients read errors as `{"error": "message"}` (the official Python client
/// raises `ResponseError(body["error"])`; given an object it would show its JSON). The
/// status and headers (`Retry-After`, `Allow`) stay.
async fn ollama_shape(resp: Response) -> Response {
    if !(resp.status().is_client_error() || resp.status().is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let message = match &value["error"] {
        serde_json::Value::String(m) => m.clone(),
        e => e["message"].as_str().unwrap_or("error").to_owned(),
    };
    let body = serde_json::to_vec(&serde_json::json!({ "error": message })).expect("serialises");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(body))
}

async fn openai_shape(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let (kind, code, fallback) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed for this route",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "invalid_request_error",
            "payload_too_large",
            "request body is larger than [daemon] max_body",
        ),
        s if s.is_client_error() => ("invalid_request_error", "bad_request", "bad request"),
        _ => ("server_error", "internal_error", "internal error"),
    };
    let message = match (status, text.trim()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) | (_, "") => fallback.to_owned(),
        (_, t) => t.to_owned(),
    };
    let mut new = error_response(status, &message, kind, code, None);
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    *new.status_mut() = status;
    new.map(Body::new)
}
