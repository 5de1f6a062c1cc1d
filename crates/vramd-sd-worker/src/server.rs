//! The worker protocol over HTTP (see `vramd_protocol`): health, load, unload, images.
//!
//! Handlers never block: they hand a call to the stable-diffusion.cpp thread with a reply
//! channel and await it, or read the published [`Health`](vramd_protocol::Health). A
//! generation streams NDJSON from the channel the engine thread writes (`started`,
//! `progress`…, one `image` per image, then `done` or `error`).

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use vramd_protocol::{ImageLoadRequest, ImageRequest, UnloadRequest, HEALTH, IMAGES, LOAD, UNLOAD};
use vramd_worker_kit::{parse, with_fallbacks, ApiError};

use crate::engine::{Engine, EngineCall};

/// Events buffered between the engine thread and the HTTP body (progress lines are small;
/// images are sent one at a time).
const STREAM_BUFFER: usize = 64;

/// Largest request body accepted: an img2img source and its mask at 2048×2048 are 16 MiB of
/// pixels, a third more in base64.
const MAX_BODY: usize = 64 << 20;

pub fn router(engine: Engine) -> Router {
    with_fallbacks(
        Router::new()
            .route(HEALTH, get(health))
            .route(LOAD, post(load))
            .route(UNLOAD, post(unload))
            .route(IMAGES, post(images)),
    )
    .layer(DefaultBodyLimit::max(MAX_BODY))
    .with_state(engine)
}

async fn health(State(engine): State<Engine>) -> Response {
    Json(engine.health()).into_response()
}

async fn load(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: ImageLoadRequest = parse(&body)?;
    let response = engine.ask(|reply| EngineCall::Load { req, reply }).await??;
    Ok(Json(response).into_response())
}

/// Soft and hard are the same for images: the context is all there is to free.
async fn unload(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let _: UnloadRequest = parse(&body)?;
    let health = engine.ask(|reply| EngineCall::Unload { reply }).await?;
    Ok(Json(health).into_response())
}

async fn images(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let req: ImageRequest = parse(&body)?;
    engine
        .stream(STREAM_BUFFER, |out| EngineCall::Generate { req, out })
        .await
}
