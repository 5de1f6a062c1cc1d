//! `POST /api/chat` and `POST /api/generate`: Ollama's requests into a chat-service job,
//! its events out as NDJSON lines (or one object with `stream: false`), then the client's
//! `keep_alive` wish.
//!
//! As in the OpenAI front end, the grant lives inside the response stream, so the model
//! counts as busy exactly as long as a client is being answered, and a client that hangs
//! up cancels the generation. The wish is applied after the last line was sent and before
//! the body ends, so a client that reads to the end sees its effect (a privileged
//! `keep_alive: 0` has unloaded the model); it runs in its own task, so a client that
//! leaves early does not cancel it.

use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use vramd_protocol::SamplingParams;

use super::super::chat::{self, ChatEvent, ChatJob, ChatRun, Usage};
use super::super::error::ollama_error_json;
use super::super::privileged::MayChangeState;
use super::super::{ApiError, AppState, RequestId};
use super::wire::{self, ChatRequest, Common, Flavor, GenerateRequest, Timings};
use super::{info, After, OllamaJson};

pub async fn chat(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    MayChangeState(may): MayChangeState,
    OllamaJson(req): OllamaJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let began = Instant::now();
    let model = super::resolve(&state, &req.model)?;
    let after = After::new(&state, &model, req.common.keep_alive.as_ref(), may)?;
    if req.messages.is_empty() {
        return lifecycle(&state, &id.0, Flavor::Chat, &req.model, after).await;
    }
    chat::chat_model(&state, &model)?;
    let job = ChatJob {
        prompt: req.prompt()?,
        format: wire::format(req.common.format.as_ref())?,
        params: params(&state, &model, &req.common)?,
        model,
        request_id: id.0,
        interactive: req.common.stream != Some(false),
    };
    let reply = Reply::new(Flavor::Chat, req.model, began);
    respond(state, job, reply, req.common.stream != Some(false), after).await
}

pub async fn generate(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    MayChangeState(may): MayChangeState,
    OllamaJson(req): OllamaJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let began = Instant::now();
    let model = super::resolve(&state, &req.model)?;
    let after = After::new(&state, &model, req.common.keep_alive.as_ref(), may)?;
    if req.prompt.is_empty() {
        return lifecycle(&state, &id.0, Flavor::Generate, &req.model, after).await;
    }
    chat::chat_model(&state, &model)?;
    if !req.template.is_empty() {
        tracing::debug!(
            model,
            "the request's `template` is ignored: the model's own chat template applies"
        );
    }
    if !req.context.is_empty() {
        tracing::debug!(
            model,
            "the request's `context` is ignored: vramd keeps no token context"
        );
    }
    let job = ChatJob {
        prompt: req.prompt(state.templates.get(&model).is_some())?,
        format: wire::format(req.common.format.as_ref())?,
        params: params(&state, &model, &req.common)?,
        model,
        request_id: id.0,
        interactive: req.common.stream != Some(false),
    };
    let reply = Reply::new(Flavor::Generate, req.model, began);
    respond(state, job, reply, req.common.stream != Some(false), after).await
}

fn params(state: &AppState, model: &str, common: &Common) -> Result<SamplingParams, ApiError> {
    if common.think.as_ref().is_some_and(|t| *t != Value::Bool(false)) {
        tracing::debug!(model, "`think` noted: a model's reasoning stays in the content");
    }
    wire::params(
        common,
        chat::context_length(state, model),
        chat::default_max_tokens(state, model),
    )
}

/// A request without messages (or prompt): Ollama's way to load a model, or with
/// `keep_alive: 0` to unload it. Answered with one object, as Ollama does even when it
/// would stream.
async fn lifecycle(
    state: &AppState,
    request_id: &str,
    flavor: Flavor,
    echo: &str,
    after: After,
) -> Result<Response, ApiError> {
    let reason = if after.unloads() {
        "unload"
    } else {
        chat::chat_model(state, &after.model)?;
        super::load(state, &after.model, request_id).await?;
        "load"
    };
    after.apply().await;
    let now = info::rfc3339(SystemTime::now());
    Ok(Json(wire::lifecycle(flavor, echo, &now, reason)).into_response())
}

async fn respond(
    state: AppState,
    job: ChatJob,
    mut reply: Reply,
    stream: bool,
    after: After,
) -> Result<Response, ApiError> {
    let run = chat::start(&state, job)
        .await
        .map_err(|e| for_flavor(e, reply.flavor))?;
    reply.started = Instant::now();
    if stream {
        let stall = state.config.daemon.stall_timeout.0.unwrap_or(Duration::from_secs(30));
        return Ok(stream_lines(reply, run, after, stall));
    }
    let body = collect(reply, run).await;
    after.apply().await;
    Ok(Json(body?).into_response())
}

/// Errors the chat service words for `messages` are about `prompt` in `/api/generate`.
fn for_flavor(e: ApiError, flavor: Flavor) -> ApiError {
    match e {
        ApiError::InvalidRequest { message, param }
            if flavor == Flavor::Generate && param.as_deref() == Some("messages") =>
        {
            ApiError::InvalidRequest {
                message,
                param: Some("prompt".into()),
            }
        }
        other => other,
    }
}

/// One request's answer: what every object shares, and the times its metrics report.
struct Reply {
    flavor: Flavor,
    /// The model as the client named it (Ollama echoes the request's name).
    model: String,
    began: Instant,
    /// When the worker took the request.
    started: Instant,
    first: Option<Instant>,
}

impl Reply {
    fn new(flavor: Flavor, model: String, began: Instant) -> Reply {
        Reply {
            flavor,
            model,
            began,
            started: began,
            first: None,
        }
    }

    /// A token arrived (the first one ends the prompt's evaluation).
    fn token(&mut self) {
        self.first.get_or_insert_with(Instant::now);
    }

    fn object(&self, text: &str, calls: Vec<Value>, logprobs: Vec<Value>, done: bool) -> Value {
        let now = info::rfc3339(SystemTime::now());
        let mut v = wire::object(self.flavor, &self.model, &now, text, calls, done);
        if !logprobs.is_empty() {
            v["logprobs"] = Value::Array(logprobs);
        }
        v
    }

    /// The last object: `done: true` with the reason and the metrics.
    fn last(&self, text: &str, calls: Vec<Value>, logprobs: Vec<Value>, usage: &Usage) -> Value {
        let now = Instant::now();
        let first = self.first.unwrap_or(now);
        let timings = Timings {
            total: now - self.began,
            load: self.started - self.began,
            prompt_eval: first.saturating_duration_since(self.started),
            eval: now - first,
        };
        let mut v = self.object(text, calls, logprobs, true);
        let fields = v.as_object_mut().expect("an object");
        fields.extend(wire::metrics(usage, &timings));
        v
    }
}

/// The whole answer as one object (`stream: false`).
async fn collect(mut reply: Reply, mut run: ChatRun) -> Result<Value, ApiError> {
    let (mut text, mut calls, mut logprobs) = (String::new(), Vec::new(), Vec::new());
    let usage = loop {
        match run.next().await? {
            Some(ChatEvent::Content { text: t, logprob }) => {
                reply.token();
                text.push_str(&t);
                logprobs.extend(logprob.as_ref().map(crate::api::chat::logprob_entry));
            }
            Some(ChatEvent::Call { index, call }) => {
                reply.token();
                calls.push(wire::tool_call(index, &call));
            }
            Some(ChatEvent::Done(u)) => break u,
            None => return Err(ApiError::WorkerFailed("the chat ended without its last event".into())),
        }
    };
    drop(run);
    Ok(reply.last(&text, calls, logprobs, &usage))
}

enum Phase {
    Running(Box<ChatRun>, After),
    /// The last line is out; the wish is being applied.
    Finishing(tokio::task::JoinHandle<()>),
}

/// NDJSON lines: one per piece of content or tool call, then the last with the metrics. A
/// failure after the first line becomes an `{"error": …}` line, which Ollama's clients
/// raise on.
fn stream_lines(reply: Reply, run: ChatRun, after: After, stall: Duration) -> Response {
    let start = Lines(reply, Phase::Running(Box::new(run), after));
    let step = |Lines(mut reply, phase): Lines| async move {
        match phase {
            Phase::Running(mut run, after) => {
                let (line, over) = next_line(&mut reply, &mut run).await;
                if !over {
                    return Some((line, Lines(reply, Phase::Running(run, after))));
                }
                drop(run); // the model is free before the wish (an unload) is applied
                let wish = tokio::spawn(after.apply());
                Some((line, Lines(reply, Phase::Finishing(wish))))
            }
            Phase::Finishing(wish) => {
                let _ = wish.await;
                None
            }
        }
    };
    super::ndjson(crate::api::stall::driven(start, step, stall))
}

/// A stream's state: the reply being built and where the stream is.
struct Lines(Reply, Phase);

impl crate::api::stall::Stalled for Lines {
    fn stalled(&mut self, why: &str) {
        if let Phase::Running(run, _) = &mut self.1 {
            run.grant.fail(&why);
        }
    }
}

/// The next line, and whether it is the last.
async fn next_line(reply: &mut Reply, run: &mut ChatRun) -> (axum::body::Bytes, bool) {
    loop {
        let v = match run.next().await {
            Ok(Some(ChatEvent::Content { text, logprob })) => {
                reply.token();
                if text.is_empty() && logprob.is_none() {
                    continue;
                }
                reply.object(
                    &text,
                    Vec::new(),
                    logprob.iter().map(crate::api::chat::logprob_entry).collect(),
                    false,
                )
            }
            Ok(Some(ChatEvent::Call { index, call })) => {
                reply.token();
                reply.object("", vec![wire::tool_call(index, &call)], Vec::new(), false)
            }
            Ok(Some(ChatEvent::Done(u))) => return (super::line(&reply.last("", Vec::new(), Vec::new(), &u)), true),
            Ok(None) => {
                let e = ApiError::WorkerFailed("the chat ended without its last event".into());
                return (super::line(&ollama_error_json(&e)), true);
            }
            Err(e) => {
                tracing::warn!(model = %reply.model, "stream failed: {e}");
                return (super::line(&ollama_error_json(&e)), true);
            }
        };
        return (super::line(&v), false);
    }
}
