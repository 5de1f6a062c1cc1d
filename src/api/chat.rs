//! The chat service both front ends share (OpenAI's `/v1/chat/completions` and
//! `/v1/completions`, Ollama's `/api/chat` and `/api/generate`): render the conversation
//! with the model's own template, constrain the output when the request demands a tool call
//! or a JSON shape, generate through a grant, and turn the worker's tokens into content and
//! tool calls. The front ends only translate their wire formats to and from these types.

use std::collections::VecDeque;

use serde_json::Value;
use vramd_protocol::{FinishReason, GenerateEvent, GenerateRequest, Grammar, Input, SamplingParams, TokenLogprob};

use super::{ApiError, AppState};
use crate::arbiter::Grant;
use crate::chat::template::ChatTemplate;
use crate::chat::tools::{self, Delta, StreamParser};
use crate::chat::{Message, Tool, ToolCall, ToolChoice};
use crate::config::ModelKind;
use crate::worker::client::{CallError, EventStream};

/// What the output must look like.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum OutputFormat {
    #[default]
    Text,
    /// Any JSON object (`response_format: json_object`, Ollama `format: "json"`).
    JsonObject,
    /// JSON matching this schema (`json_schema`, an Ollama `format` schema).
    JsonSchema(Value),
}

/// A conversation to continue, or a raw prompt to complete.
#[derive(Clone, Debug)]
pub enum Prompt {
    Chat {
        messages: Vec<Message>,
        tools: Vec<Tool>,
        choice: ToolChoice,
        parallel: bool,
    },
    Text(String),
}

/// One request to the chat service.
#[derive(Clone, Debug)]
pub struct ChatJob {
    pub model: String,
    pub request_id: String,
    pub prompt: Prompt,
    pub format: OutputFormat,
    pub params: SamplingParams,
    /// A person waits on it (streamed): the worker serves it before background generations.
    pub interactive: bool,
}

/// What the front ends relay, in order: content and calls, then one `Done`.
#[derive(Debug)]
pub enum ChatEvent {
    Content {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Call {
        index: usize,
        call: ToolCall,
    },
    Done(Usage),
}

#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
    pub prompt_tokens: u32,
    /// Prompt tokens the context already held: only the others were decoded.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
}

/// How the model's text becomes events.
enum Reader {
    /// Content as it comes.
    Plain,
    /// Content and tool calls in the model's own syntax.
    Tools(StreamParser),
    /// The whole output is the forced call(s), parsed at the end.
    Forced(String),
}

/// A running chat: the grant (the model is busy while it lives) and the worker's stream.
pub struct ChatRun {
    pub grant: Grant,
    events: EventStream<GenerateEvent>,
    reader: Reader,
    ready: VecDeque<ChatEvent>,
    calls: usize,
    finished: bool,
}

/// A token's log-probability as OpenAI's `logprobs.content` entry (Ollama's is the same).
pub fn logprob_entry(l: &TokenLogprob) -> Value {
    let top: Vec<Value> = l
        .top
        .iter()
        .map(|t| serde_json::json!({"token": t.token, "logprob": t.logprob, "bytes": t.bytes}))
        .collect();
    serde_json::json!({"token": l.token, "logprob": l.logprob, "bytes": l.bytes, "top_logprobs": top})
}

/// The configured chat model `model` (an LLM that is not an embedding model).
pub fn chat_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    let cfg = state
        .config
        .model(model)
        .ok_or_else(|| ApiError::UnknownModel(model.to_owned()))?;
    match (cfg.kind, cfg.llm_options.as_ref()) {
        (ModelKind::Image, _) => Err(invalid(
            "model",
            format!("model {model:?} is an image model; use /v1/images/generations"),
        )),
        (_, Some(o)) if o.embeddings => Err(invalid(
            "model",
            format!("model {model:?} is an embedding model; use /v1/embeddings"),
        )),
        _ => Ok(()),
    }
}

/// The context length of `model` (the worker's once loaded, the estimate's before).
pub fn context_length(state: &AppState, model: &str) -> u32 {
    let snapshot = state.arbiter.snapshot();
    let entry = snapshot.models.iter().find(|m| m.name == model);
    entry.and_then(|m| m.context_length).unwrap_or(0)
}

/// The model's per-model cap when the request sets no `max_tokens`.
pub fn default_max_tokens(state: &AppState, model: &str) -> Option<u32> {
    state.config.model(model)?.llm_options.as_ref()?.max_tokens
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Validates, renders and starts `job`; errors before the first token are the request's
/// answer (400 for what the request got wrong).
pub async fn start(state: &AppState, mut job: ChatJob) -> Result<ChatRun, ApiError> {
    chat_model(state, &job.model)?;
    let template = state.templates.get(&job.model);
    let (input, reader) = prepare(&job, template)?;
    if let Some(g) = grammar(&job)? {
        if job.params.grammar.is_some() {
            return Err(invalid(
                "grammar",
                "a grammar and a forced tool call or response format cannot both shape the output",
            ));
        }
        job.params.grammar = Some(g);
    }
    if let Reader::Tools(parser) = &reader {
        // The markers are special tokens in some families: they must reach the parser.
        job.params.preserved = parser.format().markers().iter().map(|m| (*m).to_owned()).collect();
    }
    let req = GenerateRequest {
        request_id: job.request_id.clone(),
        input,
        params: job.params,
        interactive: job.interactive,
    };
    let (grant, events) = state.arbiter.generate(&job.model, &req).await?;
    Ok(ChatRun {
        grant,
        events,
        reader,
        ready: VecDeque::new(),
        calls: 0,
        finished: false,
    })
}

/// The worker's input and how to read its output.
fn prepare(job: &ChatJob, template: Option<&ChatTemplate>) -> Result<(Input, Reader), ApiError> {
    let Prompt::Chat {
        messages,
        tools,
        choice,
        ..
    } = &job.prompt
    else {
        let Prompt::Text(prompt) = &job.prompt else {
            unreachable!()
        };
        return Ok((Input::Text { prompt: prompt.clone() }, Reader::Plain));
    };
    tools::validate_history(messages).map_err(|e| invalid("messages", e))?;
    tools::check_choice(tools, choice).map_err(|e| invalid("tool_choice", e))?;
    let offered: &[Tool] = if *choice == ToolChoice::None { &[] } else { tools };
    let Some(template) = template else {
        if !offered.is_empty() || messages.iter().any(|m| !m.tool_calls.is_empty() || m.role == "tool") {
            return Err(invalid(
                "tools",
                "this model's file carries no chat template, so it cannot be offered tools",
            ));
        }
        let plain = messages
            .iter()
            .map(|m| vramd_protocol::ChatMessage {
                role: m.role.clone(),
                content: m.content.clone().unwrap_or_default(),
            })
            .collect();
        return Ok((Input::Chat { messages: plain }, Reader::Plain));
    };
    if !offered.is_empty() && !template.supports_tools() {
        return Err(invalid(
            "tools",
            "this model's chat template takes no tools: offer none, or use a model made for tool calls",
        ));
    }
    let rendered = template
        .render(messages, offered, true)
        .map_err(|e| invalid("messages", format!("the model's chat template failed: {e}")))?;
    // The worker adds BOS as the vocabulary asks; a template that writes it too would double
    // it (llama.cpp's server strips it the same way).
    let bos = template.bos_token();
    let prompt = match rendered.strip_prefix(bos) {
        Some(rest) if !bos.is_empty() => rest.to_owned(),
        _ => rendered,
    };
    let reader = match (offered.is_empty(), forced(choice)) {
        (true, _) => Reader::Plain,
        (false, true) => Reader::Forced(String::new()),
        (false, false) => Reader::Tools(StreamParser::new(tools::detect(template.source()))),
    };
    Ok((Input::Text { prompt }, reader))
}

fn forced(choice: &ToolChoice) -> bool {
    matches!(choice, ToolChoice::Required | ToolChoice::Function(_))
}

/// The grammar the output must follow: the forced call's, or the requested JSON shape.
fn grammar(job: &ChatJob) -> Result<Option<Grammar>, ApiError> {
    let schema = |v: &Value| Grammar::JsonSchema { schema: v.to_string() };
    let call = match &job.prompt {
        Prompt::Chat {
            tools,
            choice,
            parallel,
            ..
        } if forced(choice) => tools::forced_schema(tools, choice, *parallel),
        _ => None,
    };
    match (call, &job.format) {
        (Some(_), OutputFormat::JsonObject | OutputFormat::JsonSchema(_)) => Err(invalid(
            "response_format",
            "a forced tool call and a response format cannot both shape the output",
        )),
        (Some(c), OutputFormat::Text) => Ok(Some(schema(&c))),
        (None, OutputFormat::Text) => Ok(None),
        (None, OutputFormat::JsonObject) => Ok(Some(schema(&serde_json::json!({"type": "object"})))),
        (None, OutputFormat::JsonSchema(s)) => {
            if !s.is_object() {
                return Err(invalid("response_format", "the JSON schema must be an object"));
            }
            Ok(Some(Grammar::JsonSchema { schema: s.to_string() }))
        }
    }
}

impl ChatRun {
    /// The next event; `Ok(None)` after `Done`.
    pub async fn next(&mut self) -> Result<Option<ChatEvent>, ApiError> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(Some(e));
            }
            if self.finished {
                return Ok(None);
            }
            match self.events.next().await? {
                Some(GenerateEvent::Token { text, logprob }) => self.read(text, logprob),
                Some(GenerateEvent::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    health,
                }) => {
                    self.grant.report(health);
                    self.finish(finish_reason, prompt_tokens, completion_tokens)?;
                }
                Some(GenerateEvent::Error { error }) => return Err(CallError::Worker(error, Default::default()).into()),
                Some(GenerateEvent::Started { .. }) => {
                    return Err(CallError::Protocol("second `started`".into()).into())
                }
                None => return Err(CallError::Transport("the worker ended the stream early".into()).into()),
            }
        }
    }

    fn read(&mut self, text: String, logprob: Option<TokenLogprob>) {
        match &mut self.reader {
            Reader::Plain => self.ready.push_back(ChatEvent::Content { text, logprob }),
            Reader::Forced(all) => all.push_str(&text),
            Reader::Tools(parser) => {
                let deltas = parser.push(&text);
                self.push_deltas(deltas);
            }
        }
    }

    fn push_deltas(&mut self, deltas: Vec<Delta>) {
        for d in deltas {
            match d {
                Delta::Content(text) => self.ready.push_back(ChatEvent::Content { text, logprob: None }),
                Delta::Call { call, .. } => self.push_call(call),
            }
        }
    }

    fn push_call(&mut self, call: ToolCall) {
        let index = self.calls;
        self.calls += 1;
        self.ready.push_back(ChatEvent::Call { index, call });
    }

    fn finish(&mut self, reason: FinishReason, prompt_tokens: u32, completion_tokens: u32) -> Result<(), ApiError> {
        match std::mem::replace(&mut self.reader, Reader::Plain) {
            Reader::Plain => {}
            Reader::Tools(mut parser) => {
                let deltas = parser.finish();
                self.push_deltas(deltas);
            }
            Reader::Forced(all) => match tools::parse_forced(&all) {
                Ok(calls) => calls.into_iter().for_each(|c| self.push_call(c)),
                // The request's own limit cut the call short: what there is, as text.
                Err(_) if reason == FinishReason::Length => self.ready.push_back(ChatEvent::Content {
                    text: all,
                    logprob: None,
                }),
                Err(e) => {
                    return Err(ApiError::WorkerFailed(format!(
                        "the forced tool call did not parse ({e}): {all}"
                    )))
                }
            },
        }
        let finish_reason = match reason {
            _ if self.calls > 0 => "tool_calls",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        };
        self.ready.push_back(ChatEvent::Done(Usage {
            finish_reason,
            prompt_tokens,
            cached_tokens: self.grant.cached_tokens,
            completion_tokens,
        }));
        self.finished = true;
        Ok(())
    }
}
