//! `POST /v1/embeddings` (OpenAI): pooled embeddings from a model configured with
//! `embeddings = true`, granted and counted like any other model.

use axum::extract::{Extension, State};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use vramd_protocol::EmbedRequest;

use super::{ApiError, ApiJson, AppState, RequestId};
use crate::config::ModelKind;

/// Inputs one request may carry (OpenAI's limit is 2,048).
pub const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbedInput,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
}

/// A string, or a list of strings (token-id arrays are not supported).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

impl EmbedInput {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            EmbedInput::One(s) => vec![s],
            EmbedInput::Many(v) => v,
        }
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Checks that `model` is a configured embedding model.
pub fn embedding_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    let cfg = state
        .config
        .model(model)
        .ok_or_else(|| ApiError::UnknownModel(model.to_owned()))?;
    match (cfg.kind, cfg.llm_options.as_ref()) {
        (ModelKind::Llm, Some(o)) if o.embeddings => Ok(()),
        _ => Err(invalid(
            "model",
            format!("model {model:?} is not an embedding model (set `embeddings = true` on an embedding GGUF)"),
        )),
    }
}

/// Runs `inputs` through `model`; the vectors are normalised to length 1.
pub async fn embed(
    state: &AppState,
    model: &str,
    inputs: Vec<String>,
    request_id: &str,
) -> Result<(Vec<Vec<f32>>, u32), ApiError> {
    embedding_model(state, model)?;
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(invalid("input", format!("`input` takes 1 to {MAX_INPUTS} strings")));
    }
    if let Some(i) = inputs.iter().position(String::is_empty) {
        return Err(invalid("input", format!("input {i} is empty")));
    }
    let req = EmbedRequest {
        request_id: request_id.to_owned(),
        inputs,
        normalize: true,
    };
    let response = state.arbiter.embed(model, &req).await?;
    Ok((response.embeddings, response.prompt_tokens))
}

pub async fn openai(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!("`encoding_format` must be float or base64, got {other:?}"),
            ))
        }
    };
    let (vectors, prompt_tokens) = embed(&state, &req.model, req.input.into_vec(), &id.0).await?;
    let width = vectors.first().map_or(0, Vec::len);
    if let Some(d) = req.dimensions.filter(|d| *d as usize != width) {
        return Err(invalid(
            "dimensions",
            format!("this model makes {width}-dimensional embeddings and cannot shorten them to {d}"),
        ));
    }
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list", "data": data, "model": req.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    })))
}
