//! Ollama's wire format, both ways, as pure functions: request bodies into the chat
//! service's [`ChatJob`](super::super::chat::ChatJob) parts (messages, tools, `format`,
//! `options`, `keep_alive`), and the chat service's events into Ollama's NDJSON objects.
//! Field names and meanings follow Ollama's `api/types.go`; every rule is unit-tested here.
//!
//! Unknown fields and options are ignored, as Ollama ignores them (it logs "invalid option");
//! a known field of the wrong type is a 400 that names it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use vramd_protocol::SamplingParams;

use super::super::chat::{OutputFormat, Prompt, Usage};
use super::super::openai::Sampling;
use super::super::ApiError;
use crate::chat::{Message, Tool, ToolCall, ToolChoice};
use crate::units::Timeout;

/// What `/api/chat` and `/api/generate` share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    /// `"json"`, a JSON schema, or nothing.
    pub format: Option<Value>,
    pub options: Option<Map<String, Value>>,
    /// Streams unless `false`.
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    /// `true`, `false` or a level; vramd leaves a model's reasoning in the content.
    pub think: Option<Value>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default, deserialize_with = "nullable")]
    pub messages: Vec<RawMessage>,
    #[serde(default, deserialize_with = "nullable")]
    pub tools: Vec<RawTool>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub model: String,
    #[serde(default, deserialize_with = "nullable")]
    pub prompt: String,
    #[serde(default, deserialize_with = "nullable")]
    pub suffix: String,
    #[serde(default, deserialize_with = "nullable")]
    pub system: String,
    #[serde(default, deserialize_with = "nullable")]
    pub template: String,
    #[serde(default, deserialize_with = "nullable")]
    pub context: Vec<i64>,
    #[serde(default)]
    pub raw: bool,
    #[serde(default, deserialize_with = "nullable")]
    pub images: Vec<Value>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub images: Vec<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub tool_calls: Vec<RawToolCall>,
    pub tool_name: Option<String>,
    pub tool_call_id: Option<String>,
}

/// An assistant message's call as Ollama sends it back: arguments as an object.
#[derive(Debug, Deserialize)]
pub struct RawToolCall {
    pub id: Option<String>,
    pub function: RawFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct RawFunctionCall {
    pub name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub arguments: Value,
}

/// `{"type": "function", "function": {"name", "description", "parameters"}}`, as OpenAI's.
#[derive(Debug, Deserialize)]
pub struct RawTool {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub function: Option<RawToolFunction>,
}

#[derive(Debug, Deserialize)]
pub struct RawToolFunction {
    pub name: Option<String>,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    pub model: String,
    pub input: Option<Value>,
    /// Accepted; an input longer than the context is a 400 (vramd does not cut inputs).
    pub truncate: Option<bool>,
    pub dimensions: Option<i64>,
    pub keep_alive: Option<Value>,
    pub options: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    #[serde(default, deserialize_with = "nullable")]
    pub prompt: String,
    pub keep_alive: Option<Value>,
    pub options: Option<Map<String, Value>>,
}

/// `/api/show`, `/api/pull`, `/api/delete`, `/api/push`: `model`, or the older `name`.
#[derive(Debug, Default, Deserialize)]
pub struct NamedRequest {
    #[serde(default, deserialize_with = "nullable")]
    pub model: String,
    #[serde(default, deserialize_with = "nullable")]
    pub name: String,
    pub stream: Option<bool>,
}

impl NamedRequest {
    pub fn model(&self) -> Result<&str, ApiError> {
        match (self.model.as_str(), self.name.as_str()) {
            ("", "") => Err(invalid("model", "model is required")),
            ("", name) => Ok(name),
            (model, _) => Ok(model),
        }
    }
}

/// `null` as the field's default, as Go reads it into a slice or a string (JavaScript
/// clients send `"images": null`); serde's `default` alone takes only a missing field.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// What a client wishes for the model after its request (`keep_alive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wish {
    /// `0`: the client is done with the model.
    Unload,
    /// A duration (`Timeout::NEVER` for a negative one: "forever").
    Idle(Timeout),
}

/// `keep_alive` as Ollama reads it: a number of seconds or a Go duration (`"5m"`,
/// `"1h30m"`, `"-1m"`); negative means forever, zero means unload. A number in a string
/// (`"-1"`, `"300"`) is seconds too, as in `OLLAMA_KEEP_ALIVE`: clients send it so.
pub fn keep_alive(v: Option<&Value>) -> Result<Option<Wish>, ApiError> {
    let secs = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => n,
            _ => go_duration(s).map_err(|e| invalid("keep_alive", e))?,
        },
        Some(other) => {
            return Err(invalid(
                "keep_alive",
                format!("keep_alive must be a duration such as \"5m\" or a number of seconds, got {other}"),
            ))
        }
    };
    Ok(Some(if secs < 0.0 {
        Wish::Idle(Timeout::NEVER)
    } else if secs == 0.0 {
        Wish::Unload
    } else {
        Wish::Idle(Duration::try_from_secs_f64(secs).map_or(Timeout::NEVER, |d| Timeout(Some(d))))
    }))
}

/// Go's `time.ParseDuration`, in seconds: `"300ms"`, `"1.5h"`, `"1h30m"`, `"-1m"`, `"0"`.
fn go_duration(text: &str) -> Result<f64, String> {
    let err = || format!("time: invalid duration {text:?}");
    let (sign, mut rest) = match text.strip_prefix('-') {
        Some(r) => (-1.0, r),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..n].parse().map_err(|_| err())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += number * unit;
        rest = &rest[u..];
    }
    Ok(sign * total)
}

/// `format`: nothing, `""`, `"json"` or a JSON schema object.
pub fn format(v: Option<&Value>) -> Result<OutputFormat, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(OutputFormat::Text),
        Some(Value::String(s)) if s.is_empty() => Ok(OutputFormat::Text),
        Some(Value::String(s)) if s == "json" => Ok(OutputFormat::JsonObject),
        Some(schema @ Value::Object(_)) => Ok(OutputFormat::JsonSchema(schema.clone())),
        Some(other) => Err(invalid(
            "format",
            format!("invalid format {other}: use \"json\" or a JSON schema object"),
        )),
    }
}

impl ChatRequest {
    /// The conversation and its tools; Ollama has no `tool_choice`: the model decides.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let tools = self
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt::Chat {
            messages: messages(&self.messages)?,
            choice: if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            },
            tools,
            parallel: true,
        })
    }
}

fn tool(i: usize, t: &RawTool) -> Result<Tool, ApiError> {
    let f = t
        .function
        .as_ref()
        .filter(|_| t.kind.as_deref().unwrap_or("function") == "function");
    let Some(f) = f else {
        return Err(invalid(
            &format!("tools[{i}]"),
            "each tool must be {\"type\": \"function\", \"function\": {...}}",
        ));
    };
    let Some(name) = f.name.clone().filter(|n| !n.is_empty()) else {
        return Err(invalid(
            &format!("tools[{i}].function.name"),
            "a tool needs a function name",
        ));
    };
    Ok(Tool {
        name,
        description: f.description.clone(),
        parameters: f
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    })
}

/// The history as the chat service takes it. Ollama's calls carry no id when a client
/// sends them back (the Python client's `ToolCall` has none) and its tool results name the
/// function, not the call, so ids are made up here and each result answers the earliest
/// unanswered call of its function (or of any function, when it names none).
pub fn messages(raw: &[RawMessage]) -> Result<Vec<Message>, ApiError> {
    let mut open: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let role = m.role.to_lowercase();
        if !matches!(role.as_str(), "system" | "user" | "assistant" | "tool") {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("unknown role {:?}", m.role),
            ));
        }
        if !m.images.is_empty() {
            return Err(invalid(
                &format!("messages[{i}].images"),
                "images are not supported: vramd's language models read text only",
            ));
        }
        let tool_calls: Vec<ToolCall> = m.tool_calls.iter().enumerate().map(|(j, c)| call_of(i, j, c)).collect();
        open.extend(tool_calls.iter().map(|c| (c.id.clone(), c.name.clone())));
        let tool_call_id = match role.as_str() {
            "tool" => Some(answered(i, m, &mut open)?),
            _ => None,
        };
        let content = match m.content.clone().unwrap_or_default() {
            c if c.is_empty() && !tool_calls.is_empty() => None,
            c => Some(c),
        };
        out.push(Message {
            role,
            content,
            tool_calls,
            tool_call_id,
            name: m.tool_name.clone(),
        });
    }
    Ok(out)
}

fn call_of(i: usize, j: usize, c: &RawToolCall) -> ToolCall {
    ToolCall {
        id: c
            .id
            .clone()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("call_{i}_{j}")),
        name: c.function.name.clone(),
        arguments: match &c.function.arguments {
            Value::Null => "{}".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    }
}

/// The id of the call a tool result answers (see [`messages`]), taken off `open`.
fn answered(i: usize, m: &RawMessage, open: &mut Vec<(String, String)>) -> Result<String, ApiError> {
    let pos = match (&m.tool_call_id, &m.tool_name) {
        (Some(id), _) => open.iter().position(|(c, _)| c == id),
        (None, Some(name)) => open.iter().position(|(_, n)| n == name),
        (None, None) => (!open.is_empty()).then_some(0),
    };
    match pos {
        Some(p) => Ok(open.remove(p).0),
        None => Err(invalid(
            &format!("messages[{i}]"),
            format!(
                "messages[{i}] is a tool result, but no earlier assistant message has an unanswered tool call{}",
                m.tool_name.as_ref().map(|n| format!(" of {n:?}")).unwrap_or_default()
            ),
        )),
    }
}

impl GenerateRequest {
    /// The prompt: raw text as is (`raw`), else a one-turn chat through the model's
    /// template; a model without a template gets the text as is, as Ollama's default
    /// template (`{{ .Prompt }}`) would give it.
    pub fn prompt(&self, has_template: bool) -> Result<Prompt, ApiError> {
        if self.raw && !(self.system.is_empty() && self.template.is_empty() && self.context.is_empty()) {
            return Err(invalid("raw", "raw mode does not support template, system, or context"));
        }
        if !self.images.is_empty() {
            return Err(invalid(
                "images",
                "images are not supported: vramd's language models read text only",
            ));
        }
        if !self.suffix.is_empty() {
            return Err(invalid("suffix", "this model does not support insert (`suffix`)"));
        }
        if self.raw || !has_template {
            let text = match self.system.as_str() {
                "" => self.prompt.clone(),
                system => format!("{system}\n\n{}", self.prompt),
            };
            return Ok(Prompt::Text(text));
        }
        let mut messages = Vec::new();
        if !self.system.is_empty() {
            messages.push(text_message("system", &self.system));
        }
        messages.push(text_message("user", &self.prompt));
        Ok(Prompt::Chat {
            messages,
            tools: Vec::new(),
            choice: ToolChoice::None,
            parallel: false,
        })
    }
}

fn text_message(role: &str, text: &str) -> Message {
    Message {
        role: role.to_owned(),
        content: Some(text.to_owned()),
        ..Default::default()
    }
}

/// What an option's value must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Bool,
    Strings,
}

/// Ollama's options (`api.Options` and `api.Runner`) and their types. Those vramd does not
/// use (the runner's: context, batch, GPU layers, threads; samplers llama.cpp's worker does
/// not run) are checked and ignored: the model's configuration decides those.
const OPTIONS: &[(&str, Kind)] = &[
    ("num_predict", Kind::Number),
    ("temperature", Kind::Number),
    ("top_p", Kind::Number),
    ("top_k", Kind::Number),
    ("min_p", Kind::Number),
    ("seed", Kind::Number),
    ("stop", Kind::Strings),
    ("repeat_penalty", Kind::Number),
    ("presence_penalty", Kind::Number),
    ("frequency_penalty", Kind::Number),
    ("num_ctx", Kind::Number),
    ("num_keep", Kind::Number),
    ("typical_p", Kind::Number),
    ("tfs_z", Kind::Number),
    ("repeat_last_n", Kind::Number),
    ("mirostat", Kind::Number),
    ("mirostat_tau", Kind::Number),
    ("mirostat_eta", Kind::Number),
    ("penalize_newline", Kind::Bool),
    ("num_batch", Kind::Number),
    ("num_gpu", Kind::Number),
    ("main_gpu", Kind::Number),
    ("num_thread", Kind::Number),
    ("num_gqa", Kind::Number),
    ("draft_num_predict", Kind::Number),
    ("numa", Kind::Bool),
    ("low_vram", Kind::Bool),
    ("f16_kv", Kind::Bool),
    ("logits_all", Kind::Bool),
    ("vocab_only", Kind::Bool),
    ("use_mmap", Kind::Bool),
    ("use_mlock", Kind::Bool),
    ("embedding_only", Kind::Bool),
];

/// Checks the type of every known option (`null` counts as absent, as in Ollama).
pub fn check_options(options: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    for (key, value) in options.into_iter().flatten() {
        let Some((_, kind)) = OPTIONS.iter().find(|(k, _)| k == key) else {
            tracing::debug!(option = %key, "unknown Ollama option ignored");
            continue;
        };
        let fits = match (kind, value) {
            (_, Value::Null) => true,
            (Kind::Number, v) => v.is_number(),
            (Kind::Bool, v) => v.is_boolean(),
            (Kind::Strings, Value::String(_)) => true,
            (Kind::Strings, Value::Array(a)) => a.iter().all(Value::is_string),
            (Kind::Strings, _) => false,
        };
        if !fits {
            let what = match kind {
                Kind::Number => "a number",
                Kind::Bool => "a boolean",
                Kind::Strings => "an array of strings",
            };
            return Err(invalid(
                &format!("options.{key}"),
                format!("option {key:?} must be {what}, got {value}"),
            ));
        }
    }
    Ok(())
}

/// `options` (and `logprobs`) into sampling parameters, validated as the OpenAI front end
/// validates them. `context` is the model's context length (0 when not known yet),
/// `default_max` its configured cap. `num_predict` of 0 or less (-1 "no limit", -2 "fill the
/// context") means no limit of the request's own; one past the context is cut to it rather
/// than refused, as Ollama generates until the context is full. `num_ctx` cannot change a
/// model's context (its configuration decides it), so it is accepted and noted.
pub fn params(common: &Common, context: u32, default_max: Option<u32>) -> Result<SamplingParams, ApiError> {
    let options = common.options.as_ref();
    check_options(options)?;
    let get = |k: &str| options.and_then(|o| o.get(k)).filter(|v| !v.is_null());
    let num = |k: &str| get(k).and_then(Value::as_f64);
    if let Some(n) = num("num_ctx").filter(|n| context > 0 && *n as u32 != context) {
        tracing::debug!(
            num_ctx = n,
            context,
            "num_ctx ignored: the model's configured context applies"
        );
    }
    let max_tokens = num("num_predict").filter(|n| *n >= 1.0).map(|n| {
        let n = n.min(f64::from(u32::MAX)) as u32;
        if context > 1 {
            n.min(context - 1)
        } else {
            n
        }
    });
    let sampling = Sampling {
        max_tokens,
        temperature: num("temperature").map(|v| v as f32),
        top_p: num("top_p").map(|v| v as f32),
        top_k: num("top_k").map(|v| v as i32),
        min_p: num("min_p").map(|v| v as f32),
        seed: num("seed").filter(|s| *s >= 0.0).map(|s| s as i64),
        repeat_penalty: num("repeat_penalty").map(|v| v as f32),
        frequency_penalty: num("frequency_penalty").map(|v| v as f32),
        presence_penalty: num("presence_penalty").map(|v| v as f32),
        logprobs: common.logprobs.then_some(Value::Bool(true)),
        top_logprobs: common.top_logprobs.filter(|_| common.logprobs),
        ..Default::default()
    };
    let mut p = sampling.params(context, default_max).map_err(as_option)?;
    p.stop = match get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    p.stop.retain(|s| !s.is_empty());
    Ok(p)
}

/// The OpenAI validator names OpenAI's parameters; Ollama's live in `options`.
fn as_option(e: ApiError) -> ApiError {
    match e {
        ApiError::InvalidRequest { message, param } => {
            let param = param.map(|p| match p.as_str() {
                "max_tokens" => "options.num_predict".to_owned(),
                "top_logprobs" | "logprobs" => p,
                _ => format!("options.{p}"),
            });
            ApiError::InvalidRequest { message, param }
        }
        other => other,
    }
}

/// `/api/embed`'s `input`: a string or a list of strings; nothing (or `""`) loads the model.
pub fn embed_inputs(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let bad = || invalid("input", "invalid input type: `input` is a string or a list of strings");
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// `dimensions`: vectors cut to that width and made unit length again, as Ollama does;
/// a width at or beyond the model's leaves them whole.
pub fn shorten(vectors: &mut [Vec<f32>], dimensions: Option<i64>) {
    let Some(d) = dimensions.and_then(|d| usize::try_from(d).ok()).filter(|d| *d > 0) else {
        return;
    };
    for v in vectors.iter_mut().filter(|v| d < v.len()) {
        v.truncate(d);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Ollama's `done_reason`: `stop` or `length` (a turn that ended in tool calls stopped).
pub fn done_reason(usage: &Usage) -> &'static str {
    match usage.finish_reason {
        "length" => "length",
        _ => "stop",
    }
}

/// How long the parts of a request took, for the last object's metrics (nanoseconds).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Since the request arrived.
    pub total: Duration,
    /// Until the worker took it (queueing and loading included).
    pub load: Duration,
    /// From then until the first token.
    pub prompt_eval: Duration,
    /// From the first token to the last.
    pub eval: Duration,
}

/// The metrics fields of the last object. Durations are at least 1 ns, so that clients
/// dividing by them (tokens per second) never divide by zero. `prompt_eval_count` is the
/// whole prompt, cached tokens included: clients add it up to know how full the context is.
pub fn metrics(usage: &Usage, t: &Timings) -> Map<String, Value> {
    let ns = |d: Duration| Value::from(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    let mut m = Map::new();
    m.insert("done_reason".into(), done_reason(usage).into());
    m.insert("total_duration".into(), ns(t.total));
    m.insert("load_duration".into(), ns(t.load));
    m.insert("prompt_eval_count".into(), usage.prompt_tokens.into());
    m.insert("prompt_eval_duration".into(), ns(t.prompt_eval));
    m.insert("eval_count".into(), usage.completion_tokens.into());
    m.insert("eval_duration".into(), ns(t.eval));
    m
}

/// A call in `message.tool_calls`: arguments as an object, as Ollama's clients read them.
pub fn tool_call(index: usize, call: &ToolCall) -> Value {
    let arguments = match serde_json::from_str::<Value>(&call.arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            tracing::warn!(name = %call.name, arguments = %call.arguments, "tool call arguments are not a JSON object");
            json!({})
        }
    };
    json!({"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}})
}

/// Which endpoint's objects: `/api/chat` (`message`) or `/api/generate` (`response`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Chat,
    Generate,
}

/// One response object: `model`, `created_at`, the text (and calls), `done`.
pub fn object(flavor: Flavor, model: &str, created_at: &str, text: &str, calls: Vec<Value>, done: bool) -> Value {
    let mut v = json!({"model": model, "created_at": created_at});
    match flavor {
        Flavor::Chat => {
            let mut message = json!({"role": "assistant", "content": text});
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            v["message"] = message;
        }
        Flavor::Generate => v["response"] = text.into(),
    }
    v["done"] = done.into();
    v
}

/// The answer to a request with no messages (or no prompt): Ollama's way to load a model
/// (`done_reason: "load"`) or, with `keep_alive: 0`, to unload it (`"unload"`).
pub fn lifecycle(flavor: Flavor, model: &str, created_at: &str, reason: &str) -> Value {
    let mut v = object(flavor, model, created_at, "", Vec::new(), true);
    v["done_reason"] = reason.into();
    v
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
