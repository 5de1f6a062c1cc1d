//! The worker protocol over HTTP (see `vramd_protocol`): five routes, JSON errors.
//!
//! Handlers never block: they hand a job to the llama thread with a reply channel and await
//! it, or read the published [`Health`](vramd_protocol::Health). A generation streams NDJSON
//! from the channel the llama thread writes; when the client leaves, hyper drops the body,
//! the channel closes, and the llama thread stops between two tokens.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};
use vramd_protocol::{ErrorCode, GenerateRequest, LoadRequest, UnloadRequest, GENERATE, HEALTH, LOAD, RESTORE, UNLOAD};
use vramd_worker_kit::{error, parse, stream_response, with_fallbacks, ApiError};

use crate::engine::{Engine, Job};

/// Lines buffered between the llama thread and the HTTP body.
const STREAM_BUFFER: usize = 64;

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 20;

pub fn router(engine: Engine) -> Router {
    with_fallbacks(
        Router::new()
            .route(HEALTH, get(health))
            .route(LOAD, post(load))
            .route(UNLOAD, post(unload))
            .route(RESTORE, post(restore))
            .route(GENERATE, post(generate)),
    )
    // The daemon is the only client; long chats must not hit axum's 2 MiB default.
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .with_state(engine)
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

async fn restore(State(engine): State<Engine>) -> Result<Response, ApiError> {
    let (reply, rx) = oneshot::channel();
    engine.submit(Job::Restore { reply })?;
    let response = rx.await.map_err(engine_gone)??;
    Ok(Json(response).into_response())
}

async fn generate(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: GenerateRequest = parse(&body)?;
    let (out, rx) = mpsc::channel(STREAM_BUFFER);
    engine.submit(Job::Generate { req, out })?;
    stream_response(rx, error(ErrorCode::Internal, "the llama thread has stopped")).await
}
