//! The worker protocol over HTTP (see `vramd_protocol`): four routes, JSON errors.
//!
//! Handlers never block: they hand a job to the llama thread with a reply channel and await
//! it, or read the published [`Health`](vramd_protocol::Health). A generation streams NDJSON
//! from the channel the llama thread writes; when the client leaves, hyper drops the body,
//! the channel closes, and the llama thread stops between two tokens.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use vramd_protocol::{
    ErrorCode, GenerateEvent, GenerateRequest, LoadRequest, UnloadRequest, WorkerError, GENERATE, HEALTH, LOAD, UNLOAD,
};

use crate::engine::{error, Engine, Job, Out};

/// Lines buffered between the llama thread and the HTTP body.
const STREAM_BUFFER: usize = 64;

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;

pub fn router(engine: Engine) -> Router {
    Router::new()
        .route(HEALTH, get(health))
        .route(LOAD, post(load))
        .route(UNLOAD, post(unload))
        .route(GENERATE, post(generate))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        // The daemon is the only client; long chats must not hit axum's 2 MiB default.
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(engine)
}

/// A [`WorkerError`] as an HTTP response.
pub struct ApiError {
    status: StatusCode,
    error: WorkerError,
}

impl ApiError {
    fn new(status: StatusCode, message: &str) -> ApiError {
        ApiError {
            status,
            error: error(ErrorCode::InvalidRequest, message),
        }
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
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| error(ErrorCode::InvalidRequest, format!("request body: {e}")).into())
}

fn engine_gone<T>(_: T) -> ApiError {
    error(ErrorCode::Internal, "the llama thread has stopped").into()
}

async fn health(State(engine): State<Engine>) -> Response {
    Json(engine.health()).into_response()
}

async fn load(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: LoadRequest = parse(&body)?;
    let (reply, rx) = oneshot::channel();
    engine.submit(Job::Load { req, reply })?;
    let response = rx.await.map_err(engine_gone)??;
    Ok(Json(response).into_response())
}

async fn unload(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: UnloadRequest = parse(&body)?;
    let (reply, rx) = oneshot::channel();
    engine.submit(Job::Unload { mode: req.mode, reply })?;
    Ok(Json(rx.await.map_err(engine_gone)?).into_response())
}

async fn generate(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: GenerateRequest = parse(&body)?;
    let (out, mut rx) = mpsc::channel(STREAM_BUFFER);
    engine.submit(Job::Generate { req, out })?;
    // The first message decides the status: a refusal, or `started`.
    let first = match rx.recv().await {
        Some(Out::Event(e)) => e,
        Some(Out::Refused(e)) => return Err(e.into()),
        None => return Err(engine_gone(())),
    };
    let stream = futures_util::stream::unfold(Lines::new(first, rx), |mut lines| async move {
        let line = lines.next().await?;
        Some((Ok::<_, Infallible>(line), lines))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The NDJSON lines of one generation; ends with exactly one `done` or `error`.
struct Lines {
    first: Option<GenerateEvent>,
    rx: mpsc::Receiver<Out>,
    ended: bool,
}

impl Lines {
    fn new(first: GenerateEvent, rx: mpsc::Receiver<Out>) -> Lines {
        Lines {
            first: Some(first),
            rx,
            ended: false,
        }
    }

    async fn next(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        let event = match self.first.take() {
            Some(e) => e,
            None => match self.rx.recv().await {
                Some(Out::Event(e)) => e,
                Some(Out::Refused(error)) => GenerateEvent::Error { error },
                // The llama thread dropped the stream without a last word.
                None => GenerateEvent::Error {
                    error: error(ErrorCode::Internal, "generation ended without a result"),
                },
            },
        };
        self.ended = matches!(event, GenerateEvent::Done { .. } | GenerateEvent::Error { .. });
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        Some(line)
    }
}
