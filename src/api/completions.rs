//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, lease the model from the
//! arbiter (loading it if needed), relay the worker's token stream as OpenAI JSON or SSE.
//!
//! The lease lives inside the response stream, so the model counts as busy exactly as long
//! as a client is being answered; a client that disconnects drops the stream, which closes
//! the worker connection, which cancels the generation.

use std::convert::Infallible;
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use vramd_protocol::{FinishReason, GenerateEvent, GenerateRequest, Input, SamplingParams};

use super::error::error_json;
use super::openai::{ChatRequest, CompletionRequest};
use super::{ApiError, ApiJson, AppState, RequestId};
use crate::arbiter::{Job, Lease};
use crate::config::ModelKind;
use crate::worker::client::{CallError, EventStream};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Chat,
    Text,
}

pub async fn chat(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let context = text_model_context(&state, &req.model)?;
    let input = req.input()?;
    let params = req.sampling.params(context)?;
    generate(state, Flavor::Chat, req.model, id.0, input, params, req.sampling.stream).await
}

pub async fn completion(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let context = text_model_context(&state, &req.model)?;
    let input = req.input()?;
    let params = req.sampling.params(context)?;
    generate(state, Flavor::Text, req.model, id.0, input, params, req.sampling.stream).await
}

/// Checks that `model` is a configured LLM; returns its context length when known.
fn text_model_context(state: &AppState, model: &str) -> Result<u32, ApiError> {
    let cfg = state
        .config
        .model(model)
        .ok_or_else(|| ApiError::UnknownModel(model.to_owned()))?;
    if cfg.kind != ModelKind::Llm {
        return Err(ApiError::InvalidRequest {
            message: format!("model {model:?} is an image model; use /v1/images/generations"),
            param: Some("model".into()),
        });
    }
    let loaded = state
        .arbiter
        .snapshot()
        .models
        .iter()
        .find(|m| m.name == model)
        .and_then(|m| m.context_length);
    Ok(loaded.unwrap_or_else(|| cfg.llm_options.as_ref().map_or(0, |o| o.context_length)))
}

async fn generate(
    state: AppState,
    flavor: Flavor,
    model: String,
    request_id: String,
    input: Input,
    params: SamplingParams,
    stream: bool,
) -> Result<Response, ApiError> {
    let queued = Instant::now();
    let req = GenerateRequest {
        request_id: request_id.clone(),
        input,
        params,
    };
    let (lease, mut events) = start(&state, &model, &req).await.map_err(|e| for_flavor(e, flavor))?;
    let queued_ms = queued.elapsed().as_millis() as u64;
    match events.next().await? {
        Some(GenerateEvent::Started { .. }) => {}
        Some(GenerateEvent::Error { error }) => {
            return Err(for_flavor(CallError::Worker(error, Default::default()).into(), flavor))
        }
        other => return Err(CallError::Protocol(format!("expected `started`, got {other:?}")).into()),
    }
    let meta = Meta {
        flavor,
        id: format!(
            "{}-{request_id}",
            if flavor == Flavor::Chat { "chatcmpl" } else { "cmpl" }
        ),
        created: crate::registry::unix_secs(SystemTime::now()),
        model,
        vramd: json!({"load_ms": lease.load_ms, "queued_ms": queued_ms, "actions": lease.actions}),
    };
    if stream {
        Ok(sse(meta, lease, events))
    } else {
        collect(meta, lease, events).await
    }
}

/// Leases the model and starts the generation. A worker that cannot even be reached has
/// just died: the arbiter learns it within moments and starts a new one, so try again
/// (twice at most) instead of failing a request that never reached any worker.
async fn start(
    state: &AppState,
    model: &str,
    req: &GenerateRequest,
) -> Result<(Lease, EventStream<GenerateEvent>), ApiError> {
    let mut attempts = 0;
    loop {
        let lease = state.arbiter.acquire(model, Job::Text).await?;
        match lease.client.generate(req).await {
            Ok(events) => return Ok((lease, events)),
            Err(CallError::Transport(e)) if attempts < 2 => {
                attempts += 1;
                tracing::warn!(model, "worker unreachable ({e}); retrying on a restarted worker");
                drop(lease);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Worker errors about the input name `messages`; a completion's input is `prompt`.
fn for_flavor(e: ApiError, flavor: Flavor) -> ApiError {
    match e {
        ApiError::InvalidRequest { message, param }
            if flavor == Flavor::Text && param.as_deref() == Some("messages") =>
        {
            ApiError::InvalidRequest {
                message,
                param: Some("prompt".into()),
            }
        }
        other => other,
    }
}

/// What every response object of one request shares.
struct Meta {
    flavor: Flavor,
    id: String,
    created: u64,
    model: String,
    /// What vramd did for this request (load time, time queued).
    vramd: Value,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Text, _) => "text_completion",
        }
    }

    fn choice(&self, text: Option<&str>, finish: Option<FinishReason>, chunk: bool) -> Value {
        match (self.flavor, chunk) {
            (Flavor::Chat, false) => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
            }
            (Flavor::Chat, true) => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null})
            }
            (Flavor::Text, _) => {
                json!({"index": 0, "text": text.unwrap_or(""), "finish_reason": finish, "logprobs": null})
            }
        }
    }

    fn body(&self, choice: Value, chunk: bool) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": [choice]})
    }
}

fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

async fn collect(meta: Meta, mut lease: Lease, mut events: EventStream<GenerateEvent>) -> Result<Response, ApiError> {
    let mut text = String::new();
    loop {
        match events.next().await? {
            Some(GenerateEvent::Token { text: t }) => text.push_str(&t),
            Some(GenerateEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                health,
            }) => {
                lease.report(health);
                let mut body = meta.body(meta.choice(Some(&text), Some(finish_reason), false), false);
                body["usage"] = usage(prompt_tokens, completion_tokens);
                body["vramd"] = meta.vramd.clone();
                return Ok(Json(body).into_response());
            }
            Some(GenerateEvent::Error { error }) => return Err(CallError::Worker(error, Default::default()).into()),
            Some(GenerateEvent::Started { .. }) => return Err(CallError::Protocol("second `started`".into()).into()),
            None => return Err(CallError::Transport("the worker ended the stream early".into()).into()),
        }
    }
}

/// Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`. A failure after
/// the stream started becomes an `error` event (what OpenAI clients raise on) and no DONE.
fn sse(meta: Meta, lease: Lease, events: EventStream<GenerateEvent>) -> Response {
    enum Phase {
        First,
        Tokens,
        Finished,
    }
    let state = (meta, lease, events, Phase::First);
    let stream = futures_util::stream::unfold(state, |(meta, mut lease, mut events, phase)| async move {
        let data = match phase {
            Phase::Finished => return None,
            Phase::First if meta.flavor == Flavor::Chat => {
                let mut first = meta.body(meta.choice(None, None, true), true);
                first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
                let line = frame(&first);
                return Some((Ok::<_, Infallible>(line), (meta, lease, events, Phase::Tokens)));
            }
            Phase::First | Phase::Tokens => events.next().await,
        };
        let (line, next) = match data {
            Ok(Some(GenerateEvent::Token { text })) => (
                frame(&meta.body(meta.choice(Some(&text), None, true), true)),
                Phase::Tokens,
            ),
            Ok(Some(GenerateEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                health,
            })) => {
                lease.report(health);
                let mut last = meta.body(meta.choice(None, Some(finish_reason), true), true);
                last["usage"] = usage(prompt_tokens, completion_tokens);
                last["vramd"] = meta.vramd.clone();
                let mut bytes = frame(&last);
                bytes.extend_from_slice(b"data: [DONE]\n\n");
                (bytes, Phase::Finished)
            }
            Ok(Some(GenerateEvent::Error { error })) => (
                frame(&error_json(&CallError::Worker(error, Default::default()).into())),
                Phase::Finished,
            ),
            Ok(Some(GenerateEvent::Started { .. })) => (
                frame(&error_json(&CallError::Protocol("second `started`".into()).into())),
                Phase::Finished,
            ),
            Ok(None) => (
                frame(&error_json(
                    &CallError::Transport("the worker ended the stream early".into()).into(),
                )),
                Phase::Finished,
            ),
            Err(e) => {
                tracing::warn!(model = %meta.model, "stream failed: {e}");
                (frame(&error_json(&e.into())), Phase::Finished)
            }
        };
        Some((Ok(line), (meta, lease, events, next)))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    resp
}

fn frame(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}
