//! `POST /v1/chat/completions` and `POST /v1/completions`: OpenAI's wire format around the
//! chat service ([`super::chat`]): request bodies in, JSON or Server-Sent Events out, tool
//! calls and logprobs shaped as OpenAI shapes them.
//!
//! The grant lives inside the response stream, so the model counts as busy exactly as long
//! as a client is being answered; a client that disconnects drops the stream, which closes
//! the worker connection, which cancels the generation.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use vramd_protocol::TokenLogprob;

use super::chat::{self, logprob_entry, ChatEvent, ChatJob, ChatRun, OutputFormat, Usage};
use super::error::error_json;
use super::openai::{ChatRequest, CompletionRequest, Sampling};
use super::sse::{self, frame};
use super::{ApiError, ApiJson, AppState, RequestId};
use crate::chat::ToolCall;

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
    chat::chat_model(&state, &req.model)?;
    let (prompt, format) = (req.prompt()?, req.format()?);
    let job = job(&state, req.model, id.0, prompt, format, &req.sampling)?;
    respond(state, Flavor::Chat, job, &req.sampling).await
}

pub async fn completion(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    chat::chat_model(&state, &req.model)?;
    let prompt = req.prompt()?;
    let job = job(&state, req.model, id.0, prompt, OutputFormat::Text, &req.sampling)?;
    respond(state, Flavor::Text, job, &req.sampling).await
}

/// The chat service's job for `model`, with the sampling checked against its context.
fn job(
    state: &AppState,
    model: String,
    request_id: String,
    prompt: chat::Prompt,
    format: OutputFormat,
    sampling: &Sampling,
) -> Result<ChatJob, ApiError> {
    let params = sampling.params(
        chat::context_length(state, &model),
        chat::default_max_tokens(state, &model),
    )?;
    Ok(ChatJob {
        model,
        request_id,
        prompt,
        format,
        params,
        interactive: sampling.stream,
    })
}

/// How long a streamed request may wait for its grant before its response headers go out
/// anyway: a person's chat must show at once that it was heard, even when it queues.
const HEADERS_WITHIN: Duration = Duration::from_millis(200);
/// While a streamed request waits, an SSE comment this often keeps proxies and clients from
/// timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(5);

type Starting = Pin<Box<dyn Future<Output = Result<ChatRun, ApiError>> + Send>>;

async fn respond(state: AppState, flavor: Flavor, job: ChatJob, sampling: &Sampling) -> Result<Response, ApiError> {
    let usage_chunk = sampling.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let stall = state.config.daemon.stall_timeout.0.unwrap_or(Duration::from_secs(30));
    let queued = Instant::now();
    let head = Head {
        flavor,
        id: format!(
            "{}-{}",
            if flavor == Flavor::Chat { "chatcmpl" } else { "cmpl" },
            job.request_id
        ),
        created: crate::registry::unix_secs(SystemTime::now()),
        model: job.model.clone(),
        usage_chunk,
        queued,
    };
    let mut starting: Starting =
        Box::pin(async move { chat::start(&state, job).await.map_err(|e| for_flavor(e, flavor)) });
    if !sampling.stream {
        let run = starting.await?;
        return collect(head.meta(&run), run).await;
    }
    match tokio::time::timeout(HEADERS_WITHIN, &mut starting).await {
        // Refusals that come at once keep their HTTP status (400, 404, 503, 507).
        Ok(started) => {
            let run = started?;
            Ok(stream_chunks(Phase::first(head.meta(&run), run), stall))
        }
        Err(_) => Ok(stream_chunks(Phase::Waiting { head, starting }, stall)),
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

/// What a response's objects share that is known before the grant.
struct Head {
    flavor: Flavor,
    id: String,
    created: u64,
    model: String,
    usage_chunk: bool,
    queued: Instant,
}

impl Head {
    fn meta(self, run: &ChatRun) -> Meta {
        let queued_ms = self.queued.elapsed().as_millis() as u64;
        Meta {
            flavor: self.flavor,
            id: self.id,
            created: self.created,
            model: self.model,
            vramd: json!({"load_ms": run.grant.load_ms, "queued_ms": queued_ms, "actions": run.grant.actions}),
            usage_chunk: self.usage_chunk,
        }
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
    /// `stream_options.include_usage`: a last chunk with the usage and no choices.
    usage_chunk: bool,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
            (Flavor::Text, _) => "text_completion",
        }
    }

    fn body(&self, choice: Value, chunk: bool) -> Value {
        json!({"id": self.id, "object": self.object(chunk), "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// A streamed chunk with one delta (chat) or text piece (completions).
    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> Value {
        let choice = match self.flavor {
            Flavor::Chat => json!({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}),
            Flavor::Text => {
                let text = delta.get("content").and_then(Value::as_str).unwrap_or("");
                json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs})
            }
        };
        self.body(choice, true)
    }
}

fn usage(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
           "total_tokens": u.prompt_tokens + u.completion_tokens,
           "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
}

/// OpenAI's `tool_calls` entry; streamed, it carries its `index` too.
fn tool_call(index: usize, call: &ToolCall) -> Value {
    json!({"index": index, "id": call.id, "type": "function",
           "function": {"name": call.name, "arguments": call.arguments}})
}

/// The legacy completions' `logprobs` object for these tokens.
fn legacy_logprobs(tokens: &[TokenLogprob]) -> Value {
    let mut offset = 0;
    let offsets: Vec<usize> = tokens
        .iter()
        .map(|t| {
            let at = offset;
            offset += t.token.len();
            at
        })
        .collect();
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| Value::Object(t.top.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect()))
        .collect();
    json!({"tokens": tokens.iter().map(|t| &t.token).collect::<Vec<_>>(),
           "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
           "top_logprobs": top, "text_offset": offsets})
}

/// The whole answer: content, calls and logprobs gathered, then one JSON body.
async fn collect(meta: Meta, mut run: ChatRun) -> Result<Response, ApiError> {
    let (mut text, mut calls, mut logprobs) = (String::new(), Vec::new(), Vec::new());
    let done = loop {
        match run.next().await? {
            Some(ChatEvent::Content { text: t, logprob }) => {
                text.push_str(&t);
                logprobs.extend(logprob);
            }
            Some(ChatEvent::Call { index, call }) => calls.push(tool_call(index, &call)),
            Some(ChatEvent::Done(u)) => break u,
            None => return Err(ApiError::WorkerFailed("the chat ended without its last event".into())),
        }
    };
    let logprobs = match (logprobs.is_empty(), meta.flavor) {
        (true, _) => Value::Null,
        (false, Flavor::Chat) => json!({"content": logprobs.iter().map(logprob_entry).collect::<Vec<_>>()}),
        (false, Flavor::Text) => legacy_logprobs(&logprobs),
    };
    let choice = match meta.flavor {
        Flavor::Chat => {
            let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::from(text) }});
            if !calls.is_empty() {
                calls
                    .iter_mut()
                    .for_each(|c| drop(c.as_object_mut().map(|o| o.remove("index"))));
                message["tool_calls"] = Value::Array(calls);
            }
            json!({"index": 0, "message": message, "finish_reason": done.finish_reason, "logprobs": logprobs})
        }
        Flavor::Text => json!({"index": 0, "text": text, "finish_reason": done.finish_reason, "logprobs": logprobs}),
    };
    let mut body = meta.body(choice, false);
    body["usage"] = usage(&done);
    body["vramd"] = meta.vramd.clone();
    Ok(Json(body).into_response())
}

/// Where a streamed answer is.
enum Phase {
    /// Headers sent, the grant not yet: keep-alive comments until it comes.
    Waiting {
        head: Head,
        starting: Starting,
    },
    /// Granted: the chat's first frame (the assistant role), then its events.
    Running {
        meta: Meta,
        run: Box<ChatRun>,
        first: Option<Vec<u8>>,
    },
    Done,
}

impl Phase {
    fn first(meta: Meta, run: ChatRun) -> Phase {
        let first = (meta.flavor == Flavor::Chat)
            .then(|| frame(&meta.chunk(json!({"role": "assistant", "content": ""}), None, Value::Null)));
        Phase::Running {
            meta,
            run: Box::new(run),
            first,
        }
    }

    /// The next bytes to send, and the phase after them; `None` at the end.
    async fn advance(self) -> Option<(Vec<u8>, Phase)> {
        match self {
            Phase::Done => None,
            Phase::Waiting { head, mut starting } => match tokio::time::timeout(KEEP_ALIVE, &mut starting).await {
                Err(_) => Some((
                    b": waiting for the model\n\n".to_vec(),
                    Phase::Waiting { head, starting },
                )),
                Ok(Ok(run)) => Box::pin(Phase::first(head.meta(&run), run).advance()).await,
                Ok(Err(e)) => Some((frame(&error_json(&e)), Phase::Done)),
            },
            Phase::Running {
                meta,
                run,
                first: Some(line),
            } => Some((line, Phase::Running { meta, run, first: None })),
            Phase::Running {
                meta,
                mut run,
                first: None,
            } => match run.next().await {
                Ok(Some(event)) => {
                    let (bytes, finished) = chunk_of(&meta, event);
                    let next = if finished {
                        Phase::Done
                    } else {
                        Phase::Running { meta, run, first: None }
                    };
                    Some((bytes, next))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(model = %meta.model, "stream failed: {e}");
                    Some((frame(&error_json(&e)), Phase::Done))
                }
            },
        }
    }
}

/// Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`. A failure after
/// the stream started (or a refusal after the headers went out while the request waited)
/// becomes an `error` event, what OpenAI clients raise on, and no DONE.
fn stream_chunks(phase: Phase, stall: Duration) -> Response {
    let step = |phase: Phase| async move { phase.advance().await.map(|(bytes, next)| (Bytes::from(bytes), next)) };
    sse::response(super::stall::driven(phase, step, stall))
}

impl super::stall::Stalled for Phase {
    fn stalled(&mut self, why: &str) {
        if let Phase::Running { run, .. } = self {
            run.grant.fail(&why);
        }
    }
}

/// The SSE bytes of one chat event, and whether the stream is over.
fn chunk_of(meta: &Meta, event: ChatEvent) -> (Vec<u8>, bool) {
    match event {
        ChatEvent::Content { text, logprob } => {
            let logprobs = match (logprob.as_ref(), meta.flavor) {
                (None, _) => Value::Null,
                (Some(l), Flavor::Chat) => json!({"content": [logprob_entry(l)]}),
                (Some(l), Flavor::Text) => legacy_logprobs(std::slice::from_ref(l)),
            };
            (frame(&meta.chunk(json!({"content": text}), None, logprobs)), false)
        }
        ChatEvent::Call { index, call } => {
            let delta = json!({"tool_calls": [tool_call(index, &call)]});
            (frame(&meta.chunk(delta, None, Value::Null)), false)
        }
        ChatEvent::Done(u) => {
            let mut last = meta.chunk(json!({}), Some(u.finish_reason), Value::Null);
            last["vramd"] = meta.vramd.clone();
            let mut bytes = if meta.usage_chunk {
                let mut b = frame(&last);
                let mut tail = meta.body(Value::Null, true);
                tail["choices"] = json!([]);
                tail["usage"] = usage(&u);
                b.extend(frame(&tail));
                b
            } else {
                last["usage"] = usage(&u);
                frame(&last)
            };
            bytes.extend_from_slice(b"data: [DONE]\n\n");
            (bytes, true)
        }
    }
}
