//! The worker protocol over HTTP (see `vramd_protocol`): six routes, JSON errors.
//!
//! Handlers never block: they hand a call to the llama thread with a reply channel and await
//! it, or read the published [`Health`](vramd_protocol::Health). A generation streams NDJSON
//! from the channel the llama thread writes; when the client leaves, hyper drops the body,
//! the channel closes, and the llama thread stops between two tokens.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use vramd_protocol::{
    EmbedRequest, GenerateRequest, LoadRequest, UnloadRequest, EMBED, GENERATE, HEALTH, LOAD, RESTORE, UNLOAD,
};
use vramd_worker_kit::{parse, with_fallbacks, ApiError};

use crate::engine::{Engine, EngineCall};

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
            .route(GENERATE, post(generate))
            .route(EMBED, post(embed)),
    )
    // The daemon is the only client; long chats must not hit axum's 2 MiB default.
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .with_state(engine)
}

async fn health(State(engine): State<Engine>) -> Response {
    Json(engine.health()).into_response()
}

async fn load(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: LoadRequest = parse(&body)?;
    let response = engine.ask(|reply| EngineCall::Load { req, reply }).await??;
    Ok(Json(response).into_response())
}

async fn unload(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: UnloadRequest = parse(&body)?;
    let health = engine.ask(|reply| EngineCall::Unload { mode: req.mode, reply }).await?;
    Ok(Json(health).into_response())
}

async fn restore(State(engine): State<Engine>) -> Result<Response, ApiError> {
    let response = engine.ask(|reply| EngineCall::Restore { reply }).await??;
    Ok(Json(response).into_response())
}

async fn generate(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: GenerateRequest = parse(&body)?;
    engine
        .stream(STREAM_BUFFER, |out| EngineCall::Generate { req, out })
        .await
}

async fn embed(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: EmbedRequest = parse(&body)?;
    let response = engine.ask(|reply| EngineCall::Embed { req, reply }).await??;
    Ok(Json(response).into_response())
}
