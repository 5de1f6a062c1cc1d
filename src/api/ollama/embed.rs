//! `POST /api/embed` and the older `POST /api/embeddings`, through the same embedding
//! service as `/v1/embeddings` (models configured with `embeddings = true`). Vectors are
//! unit length (Ollama normalises `/api/embed`'s too); `dimensions` shortens them and
//! normalises again, as Ollama does.

use std::time::{Duration, Instant};

use axum::extract::{Extension, State};
use axum::Json;
use serde_json::{json, Value};

use super::super::embeddings;
use super::super::privileged::MayChangeState;
use super::super::{ApiError, AppState, RequestId};
use super::wire::{self, EmbedRequest, EmbeddingsRequest};
use super::{After, OllamaJson};

pub async fn embed(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    MayChangeState(may): MayChangeState,
    OllamaJson(req): OllamaJson<EmbedRequest>,
) -> Result<Json<Value>, ApiError> {
    let began = Instant::now();
    let model = super::resolve(&state, &req.model)?;
    let after = After::new(&state, &model, req.keep_alive.as_ref(), may)?;
    embeddings::embedding_model(&state, &model)?;
    wire::check_options(req.options.as_ref())?;
    if req.truncate == Some(false) {
        tracing::debug!(
            model,
            "truncate: false is what vramd does anyway: a too long input is a 400"
        );
    }
    let inputs = wire::embed_inputs(req.input.as_ref())?;
    if inputs.is_empty() {
        super::load(&state, &model, &id.0).await?;
        after.apply().await;
        return Ok(Json(json!({"model": req.model, "embeddings": []})));
    }
    let (mut vectors, tokens, load) = run(&state, &model, inputs, &id.0).await?;
    wire::shorten(&mut vectors, req.dimensions);
    after.apply().await;
    Ok(Json(json!({
        "model": req.model, "embeddings": vectors, "total_duration": nanos(began.elapsed()),
        "load_duration": nanos(load), "prompt_eval_count": tokens,
    })))
}

/// The legacy endpoint: one `prompt`, one `embedding`; an empty prompt loads the model.
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    MayChangeState(may): MayChangeState,
    OllamaJson(req): OllamaJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = super::resolve(&state, &req.model)?;
    let after = After::new(&state, &model, req.keep_alive.as_ref(), may)?;
    embeddings::embedding_model(&state, &model)?;
    wire::check_options(req.options.as_ref())?;
    if req.prompt.is_empty() {
        super::load(&state, &model, &id.0).await?;
        after.apply().await;
        return Ok(Json(json!({"embedding": []})));
    }
    let (mut vectors, _, _) = run(&state, &model, vec![req.prompt], &id.0).await?;
    after.apply().await;
    Ok(Json(json!({"embedding": vectors.pop().unwrap_or_default()})))
}

/// The vectors, the prompt tokens, and the load time when this request loaded the model.
async fn run(
    state: &AppState,
    model: &str,
    inputs: Vec<String>,
    request_id: &str,
) -> Result<(Vec<Vec<f32>>, u32, Duration), ApiError> {
    let resident = |state: &AppState| {
        let snapshot = state.arbiter.snapshot();
        let entry = snapshot.models.iter().find(|m| m.name == model);
        entry.map(|m| (m.state.holds_memory(), m.load_ms))
    };
    let before = resident(state).is_some_and(|(held, _)| held);
    let (vectors, tokens) = embeddings::embed(state, model, inputs, request_id).await?;
    let load = match (before, resident(state)) {
        (false, Some((_, Some(ms)))) => Duration::from_millis(ms),
        _ => Duration::ZERO,
    };
    Ok((vectors, tokens, load))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
