//! The daemon's state and its models: `/health`, `/v1/status`, the model list, loading,
//! unloading and pinning, and `/v1/estimate`. Each handler validates, asks the arbiter, and
//! shapes the answer.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, ApiJson, AppState, Privileged};
use crate::arbiter::{LoadOutcome, UnloadMode, UnloadOutcome};
use crate::estimate::{Estimate, EstimateQuery};

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Everything the arbiter knows: memory figures and every configured model.
pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.arbiter.current().await?;
    Ok(Json(serde_json::to_value(&*snapshot).expect("snapshot serialises")))
}

/// The OpenAI model list, with vramd's own fields beside the standard ones.
pub async fn models(State(state): State<AppState>) -> Json<Value> {
    let snapshot = state.arbiter.snapshot();
    let data: Vec<Value> = snapshot
        .models
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "vramd",
                "kind": m.kind,
                "state": m.state,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnloadBody {
    mode: UnloadMode,
}

pub async fn unload(
    _: Privileged,
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UnloadBody>,
) -> Result<Json<UnloadOutcome>, ApiError> {
    Ok(Json(state.arbiter.unload(&name, body.mode).await?))
}

/// Loads a model now (and, for a `failed` model, tries again).
pub async fn load(
    _: Privileged,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<LoadOutcome>, ApiError> {
    Ok(Json(state.arbiter.load(&name).await?))
}

pub async fn pin(
    _: Privileged,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.arbiter.set_pinned(&name, true).await?;
    Ok(Json(json!({"model": name, "pinned": true})))
}

pub async fn unpin(
    _: Privileged,
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.arbiter.set_pinned(&name, false).await?;
    Ok(Json(json!({"model": name, "pinned": false})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EstimateParams {
    model: String,
    width: Option<u32>,
    height: Option<u32>,
    context: Option<u32>,
}

/// `GET /v1/estimate?model=…&width=…&height=…` (images) or `&context=…` (LLMs).
pub async fn estimate(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<EstimateParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Estimate>, ApiError> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::InvalidRequest {
        message: e.body_text(),
        param: None,
    })?;
    let query = EstimateQuery {
        width: q.width,
        height: q.height,
        context: q.context,
    };
    Ok(Json(state.arbiter.estimate(&q.model, query).await?))
}
