//! Ollama's API (`/api/…` and `/`) on the same listeners as vramd's own, so that programs
//! that speak it (editor plugins, Home Assistant, Open WebUI's Ollama connection, the
//! official `ollama` Python client) work unmodified. Chat and generation go through the
//! chat service ([`super::chat`]) exactly as the OpenAI routes do; this module only
//! translates ([`wire`]) and describes models ([`info`]).
//!
//! What differs from Ollama, on purpose:
//! - models are those configured in models.d: `pull` of one succeeds at once, `create`,
//!   `copy`, `delete` and `push` answer 501 "not supported";
//! - `keep_alive` is a wish about the client's own use, not an order: `0` unloads the model
//!   (once the answer is complete) only for a caller who may change state (root or the
//!   control group on the Unix socket); from anyone else it makes the model the first to go
//!   when memory is needed. A duration sets the model's idle policy until it is unloaded.
//!   Neither ever fails the request;
//! - `/api/version` says [`OLLAMA_VERSION`], the Ollama release whose API this follows
//!   (clients compare it with a minimum), and vramd's own version as `vramd_version`.

mod embed;
mod generate;
mod info;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

pub use embed::{embed, embeddings};
pub use generate::{chat, generate};

use super::{chat as chat_service, ApiError, AppState};
use crate::arbiter::{ArbiterError, KeepAlive, UnloadMode, Work};
use crate::config::{ModelConfig, ModelKind, ModelSource};
use info::Facts;
use wire::Wish;

/// The Ollama release whose API vramd follows, as `/api/version` reports it. Clients check
/// it against a minimum (VS Code's Copilot wants 0.6.4, others far newer), so it is the
/// release this module was checked against, not vramd's own version.
pub const OLLAMA_VERSION: &str = "0.32.15";

/// `GET /` and `HEAD /`: what Ollama answers, which clients use to detect a server.
pub async fn root() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Ollama is running",
    )
}

pub async fn version() -> Json<Value> {
    Json(json!({"version": OLLAMA_VERSION, "vramd_version": env!("CARGO_PKG_VERSION")}))
}

/// The configured LLM named `name` (Ollama's names carry a tag: `chat:latest` is `chat`).
/// Image models are not Ollama models: they are not found here, as in `/api/tags`.
pub(super) fn resolve(state: &AppState, name: &str) -> Result<String, ApiError> {
    let llm = |n: &str| {
        state
            .config
            .model(n)
            .filter(|m| m.kind == ModelKind::Llm)
            .map(|m| m.name.clone())
    };
    llm(name)
        .or_else(|| name.strip_suffix(":latest").and_then(llm))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "model '{name}' not found; GET /api/tags lists the configured models"
            ))
        })
}

/// The configured LLMs, in configuration order.
fn llms(state: &AppState) -> Vec<&ModelConfig> {
    state
        .config
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Llm)
        .collect()
}

fn path_of(m: &ModelConfig) -> PathBuf {
    match &m.source {
        ModelSource::File { path } => path.clone(),
        ModelSource::Components(_) => PathBuf::new(),
    }
}

/// The facts of these models' files, read off the async threads (see [`info::facts`]).
async fn facts_of(models: &[&ModelConfig]) -> Vec<Arc<Facts>> {
    let paths: Vec<PathBuf> = models.iter().map(|m| path_of(m)).collect();
    tokio::task::spawn_blocking(move || paths.iter().map(|p| info::facts(p)).collect())
        .await
        .expect("reading model headers does not panic")
}

/// Ollama's `capabilities`: `embedding`, or `completion` and `tools` when the model's own
/// template can take tools.
fn capabilities(state: &AppState, m: &ModelConfig) -> Vec<&'static str> {
    if m.llm_options.as_ref().is_some_and(|o| o.embeddings) {
        return vec!["embedding"];
    }
    let mut caps = vec!["completion"];
    if state.templates.get(&m.name).is_some_and(|t| t.supports_tools()) {
        caps.push("tools");
    }
    caps
}

/// `GET /api/tags`: the configured LLMs, chat and embedding models alike.
pub async fn tags(State(state): State<AppState>) -> Json<Value> {
    let models = llms(&state);
    let facts = facts_of(&models).await;
    let list: Vec<Value> = models
        .iter()
        .zip(facts)
        .map(|(m, f)| {
            let name = info::tagged(&m.name);
            json!({"name": name, "model": name, "modified_at": info::rfc3339(f.modified),
                   "size": f.size, "digest": f.digest, "details": f.details(),
                   "capabilities": capabilities(&state, m)})
        })
        .collect();
    Json(json!({ "models": list }))
}

/// `GET /api/ps`: the LLMs holding memory, as `/v1/status` shows them: `size` and
/// `size_vram` are what the registry counts the model as holding (the worker's figures
/// plus reservations, or NVML's when larger), `expires_at` when its idle policy (a client's
/// wish, else its configured `keep_alive`) unloads it, if ever.
pub async fn ps(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.arbiter.current().await?;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(snapshot.at);
    let loaded: Vec<_> = snapshot
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Llm && m.state.holds_memory())
        .filter_map(|m| Some((m, state.config.model(&m.name)?)))
        .collect();
    let configs: Vec<&ModelConfig> = loaded.iter().map(|(_, c)| *c).collect();
    let facts = facts_of(&configs).await;
    let list: Vec<Value> = loaded
        .iter()
        .zip(facts)
        .map(|((m, cfg), f)| {
            let keep = m.keep_alive_override.unwrap_or(cfg.keep_alive);
            let expires = match keep.0 {
                None => info::forever(now),
                Some(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(m.last_used.unwrap_or(snapshot.at)) + d,
            };
            let name = info::tagged(&m.name);
            json!({"name": name, "model": name, "size": m.held(), "digest": f.digest,
                   "details": f.details(), "expires_at": info::rfc3339(expires), "size_vram": m.held(),
                   "context_length": m.context_length.unwrap_or(0)})
        })
        .collect();
    Ok(Json(json!({ "models": list })))
}

/// `POST /api/show`: details, parameters, the chat template from the GGUF, capabilities
/// and the GGUF metadata (`model_info`).
pub async fn show(
    State(state): State<AppState>,
    OllamaJson(req): OllamaJson<wire::NamedRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = resolve(&state, req.model()?)?;
    let cfg = state.config.model(&model).expect("resolved");
    let f = facts_of(&[cfg]).await.remove(0);
    let template = state
        .templates
        .get(&model)
        .map(|t| t.source().to_owned())
        .unwrap_or_default();
    let mut parameters = vec![format!(
        "{:<30} {}",
        "num_ctx",
        chat_service::context_length(&state, &model)
    )];
    if let Some(max) = chat_service::default_max_tokens(&state, &model) {
        parameters.push(format!("{:<30} {max}", "num_predict"));
    }
    let modelfile = format!(
        "# Modelfile generated by vramd for {model:?}: vramd's models are configured in models.d\nFROM {}\n{}\n",
        path_of(cfg).display(),
        parameters
            .iter()
            .map(|p| format!("PARAMETER {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(Json(json!({
        "license": "", "modelfile": modelfile, "parameters": parameters.join("\n"), "template": template,
        "details": f.details(), "model_info": f.model_info, "capabilities": capabilities(&state, cfg),
        "modified_at": info::rfc3339(f.modified),
    })))
}

const NOT_SUPPORTED: &str = "not supported: models are configured in models.d";

/// `POST /api/pull`: a configured model is already here, so the pull succeeds at once, as
/// Ollama's does for a model it has; any other is a 404.
pub async fn pull(
    State(state): State<AppState>,
    OllamaJson(req): OllamaJson<wire::NamedRequest>,
) -> Result<Response, ApiError> {
    let name = req.model()?;
    if resolve(&state, name).is_err() {
        return Err(ApiError::NotFound(format!(
            "{NOT_SUPPORTED}, and {name:?} is not one of them"
        )));
    }
    if req.stream == Some(false) {
        return Ok(Json(json!({"status": "success"})).into_response());
    }
    let lines = [json!({"status": "pulling manifest"}), json!({"status": "success"})];
    let chunks = lines.map(|l| Ok::<_, std::convert::Infallible>(line(&l)));
    Ok(ndjson(futures_util::stream::iter(chunks)))
}

/// `create`, `copy`, `delete`, `push`, blobs: vramd does not manage model files.
pub async fn unsupported() -> ApiError {
    ApiError::NotSupported(NOT_SUPPORTED.to_owned())
}

/// A JSON body whatever its `Content-Type`: Ollama reads bodies so, and the examples in its
/// documentation (`curl … -d '{…}'`) send `application/x-www-form-urlencoded`. Errors are
/// those of [`ApiJson`](super::ApiJson): a 400 for a body that is not JSON or not the
/// request's shape (naming the field), a 413 past `[daemon] max_body`.
pub(super) struct OllamaJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for OllamaJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadJson("missing request body".into()).into_response());
        }
        serde_json::from_slice(&bytes).map(OllamaJson).map_err(|e| {
            let err = match e.classify() {
                serde_json::error::Category::Data => ApiError::InvalidRequest {
                    message: format!("invalid request: {e}"),
                    param: None,
                },
                _ => ApiError::BadJson(e.to_string()),
            };
            err.into_response()
        })
    }
}

/// One NDJSON line.
fn line(v: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(v).expect("JSON serialises");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// A streamed response of NDJSON lines, as Ollama streams (`application/x-ndjson`).
fn ndjson<S>(lines: S) -> Response
where
    S: futures_util::TryStream<Ok = Bytes, Error = std::convert::Infallible> + Send + 'static,
{
    let mut resp = Body::from_stream(lines).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Loads `model` as a request would (Ollama's empty chat, prompt or input), for anyone.
async fn load(state: &AppState, model: &str, request_id: &str) -> Result<(), ApiError> {
    drop(state.arbiter.acquire(model, Work::Text, request_id).await?);
    Ok(())
}

/// What is left to do once an answer is complete: the client's `keep_alive` wish (see the
/// module documentation). Never an error for the client: what cannot be done is logged.
pub(super) struct After {
    state: AppState,
    model: String,
    wish: Option<Wish>,
    /// The caller may change state (`MayChangeState`).
    may: bool,
}

impl After {
    fn new(state: &AppState, model: &str, keep_alive: Option<&Value>, may: bool) -> Result<After, ApiError> {
        Ok(After {
            state: state.clone(),
            model: model.to_owned(),
            wish: wire::keep_alive(keep_alive)?,
            may,
        })
    }

    fn unloads(&self) -> bool {
        self.wish == Some(Wish::Unload)
    }

    async fn apply(self) {
        let Some(wish) = self.wish else { return };
        let (arbiter, model) = (&self.state.arbiter, self.model.as_str());
        let result = match wish {
            Wish::Idle(t) => arbiter.keep_alive(model, KeepAlive::Idle(t)).await,
            Wish::Unload if self.may => match arbiter.unload(model, UnloadMode::Hard).await {
                Ok(_) => Ok(()),
                Err(ArbiterError::InUse { reason, .. }) => {
                    tracing::info!(
                        model,
                        "keep_alive 0: not unloaded now ({reason}); it goes first when memory is needed"
                    );
                    arbiter.keep_alive(model, KeepAlive::EvictFirst).await
                }
                Err(e) => Err(e),
            },
            Wish::Unload => arbiter.keep_alive(model, KeepAlive::EvictFirst).await,
        };
        if let Err(e) = result {
            tracing::warn!(model, "keep_alive wish not applied: {e}");
        }
    }
}
