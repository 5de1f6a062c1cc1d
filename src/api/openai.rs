//! OpenAI-compatible request bodies and their validation into worker requests. Pure: no
//! I/O, so every rule is unit-tested on values.
//!
//! Unknown fields are ignored rather than refused: OpenAI clients send fields vramd has no
//! use for (`user`, `logprobs: false`, `n: 1`), and refusing them would break those clients.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use vramd_protocol::{Grammar, SamplingParams};

use super::chat::{OutputFormat, Prompt};
use super::ApiError;
use crate::chat::{Message, Tool, ToolCall, ToolChoice};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<RawMessage>,
    #[serde(default)]
    pub tools: Vec<RawTool>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<PromptText>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` is a string or a one-element array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptText {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub tool_calls: Vec<RawToolCall>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// An assistant message's call, as OpenAI sends it back in the history (its `type` is
/// always `function`).
#[derive(Debug, Deserialize)]
pub struct RawToolCall {
    pub id: String,
    pub function: RawFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct RawFunctionCall {
    pub name: String,
    /// JSON text (OpenAI); some clients send an object.
    pub arguments: Value,
}

#[derive(Debug, Deserialize)]
pub struct RawTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: Option<Tool>,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

/// `json_schema`'s `name` and `strict` are accepted and need nothing: the grammar always
/// holds the output to the schema, strictly.
#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub schema: Option<Value>,
}

/// Message content: a string, or an array of parts of which the text parts are used.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub repeat_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    /// Token id (as a string) → bias from -100 to 100.
    pub logit_bias: Option<HashMap<String, f32>>,
    /// Chat: `true`/`false`; legacy completions: the number of alternatives.
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<u32>,
    /// llama.cpp's extension: a GBNF grammar the output must follow.
    pub grammar: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `v` if it lies in `range`, else a 400 naming `name` and saying where it must lie.
fn in_range(name: &str, v: f32, range: std::ops::RangeInclusive<f32>, what: &str) -> Result<f32, ApiError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(name, format!("`{name}` must be {what}, got {v}")))
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

impl ChatRequest {
    /// The conversation, with its tools, as the chat service takes it.
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "`messages` must contain at least one message"));
        }
        let messages = self
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        let tools = self
            .tools
            .iter()
            .enumerate()
            .map(|(i, t)| match (t.kind.as_str(), &t.function) {
                ("function", Some(f)) => Ok(f.clone()),
                _ => Err(invalid(
                    &format!("tools[{i}]"),
                    "each tool must be {\"type\": \"function\", \"function\": {...}}",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prompt::Chat {
            messages,
            choice: tool_choice(self.tool_choice.as_ref(), !tools.is_empty())?,
            tools,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        })
    }

    pub fn format(&self) -> Result<OutputFormat, ApiError> {
        let Some(f) = &self.response_format else {
            return Ok(OutputFormat::Text);
        };
        match f.kind.as_str() {
            "text" => Ok(OutputFormat::Text),
            "json_object" => Ok(OutputFormat::JsonObject),
            "json_schema" => match f.json_schema.as_ref().and_then(|j| j.schema.clone()) {
                Some(schema) if schema.is_object() => Ok(OutputFormat::JsonSchema(schema)),
                _ => Err(invalid(
                    "response_format",
                    "`json_schema` needs `json_schema.schema`, a JSON Schema object",
                )),
            },
            other => Err(invalid(
                "response_format",
                format!("`response_format.type` must be text, json_object or json_schema, got {other:?}"),
            )),
        }
    }
}

/// One message of the history, checked; `developer` is OpenAI's new name for `system`.
fn message(i: usize, m: &RawMessage) -> Result<Message, ApiError> {
    if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
        return Err(invalid(
            &format!("messages[{i}].role"),
            format!("unknown role {:?}", m.role),
        ));
    }
    let content = match &m.content {
        None => None,
        Some(Content::Text(t)) => Some(t.clone()),
        Some(Content::Parts(parts)) => {
            if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                return Err(invalid(
                    &format!("messages[{i}].content"),
                    format!("content parts of type {:?} are not supported; only \"text\"", p.kind),
                ));
            }
            Some(
                parts
                    .iter()
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join(""),
            )
        }
    };
    let tool_calls = m
        .tool_calls
        .iter()
        .map(|c| ToolCall {
            id: c.id.clone(),
            name: c.function.name.clone(),
            arguments: match &c.function.arguments {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        })
        .collect();
    Ok(Message {
        role: if m.role == "developer" {
            "system".into()
        } else {
            m.role.clone()
        },
        content,
        tool_calls,
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    })
}

/// `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type": "function", "function":
/// {"name": …}}`; absent means auto (none without tools).
pub fn tool_choice(v: Option<&Value>, has_tools: bool) -> Result<ToolChoice, ApiError> {
    let bad = || {
        invalid(
            "tool_choice",
            "`tool_choice` must be auto, none, required or a named function",
        )
    };
    let choice = match v {
        None | Some(Value::Null) => return Ok(if has_tools { ToolChoice::Auto } else { ToolChoice::None }),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) => ToolChoice::Function(name.to_owned()),
            None => return Err(bad()),
        },
    };
    if !has_tools && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(invalid(
            "tool_choice",
            "`tool_choice` asks for a tool call but `tools` is empty",
        ));
    }
    Ok(choice)
}

impl CompletionRequest {
    pub fn prompt(&self) -> Result<Prompt, ApiError> {
        let prompt = match &self.prompt {
            None => return Err(invalid("prompt", "`prompt` is required")),
            Some(PromptText::One(p)) => p.clone(),
            Some(PromptText::Many(v)) if v.len() == 1 => v[0].clone(),
            Some(PromptText::Many(_)) => {
                return Err(invalid(
                    "prompt",
                    "`prompt` must be one string (batches are not supported)",
                ))
            }
        };
        if prompt.is_empty() {
            return Err(invalid("prompt", "`prompt` must not be empty"));
        }
        Ok(Prompt::Text(prompt))
    }
}

impl Sampling {
    /// Checks every parameter and fills in defaults. `context` is the model's context
    /// length when known (0 when not yet known); `default_max` the model's configured cap
    /// for requests that set none (`None`: until the model stops or the context is full).
    pub fn params(&self, context: u32, default_max: Option<u32>) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid(
                "n",
                "only n = 1 is supported: send the request again for another choice",
            ));
        }
        let penalty = |name: &str, v: Option<f32>, default: f32| {
            in_range(name, v.unwrap_or(default), -2.0..=2.0, "between -2 and 2")
        };
        let repeat_penalty = self.repeat_penalty.unwrap_or(d.repeat_penalty);
        if !(repeat_penalty > 0.0 && repeat_penalty <= 10.0) {
            return Err(invalid(
                "repeat_penalty",
                format!("`repeat_penalty` must be in (0, 10], got {repeat_penalty}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(d.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(invalid("top_p", format!("`top_p` must be in (0, 1], got {top_p}")));
        }
        let top_k = self.top_k.unwrap_or(d.top_k);
        if top_k < 0 {
            return Err(invalid("top_k", format!("`top_k` must not be negative, got {top_k}")));
        }
        Ok(SamplingParams {
            max_tokens: self.max_tokens(context, default_max)?,
            temperature: in_range(
                "temperature",
                self.temperature.unwrap_or(d.temperature),
                0.0..=2.0,
                "between 0 and 2",
            )?,
            top_p,
            top_k,
            min_p: in_range("min_p", self.min_p.unwrap_or(d.min_p), 0.0..=1.0, "in [0, 1]")?,
            // OpenAI seeds are 64-bit; llama.cpp's are 32-bit: fold, so every seed is valid.
            seed: self.seed.map(|s| (s as u64 ^ ((s as u64) >> 32)) as u32),
            stop: self.stop()?,
            repeat_penalty,
            frequency_penalty: penalty("frequency_penalty", self.frequency_penalty, d.frequency_penalty)?,
            presence_penalty: penalty("presence_penalty", self.presence_penalty, d.presence_penalty)?,
            logit_bias: self.logit_bias()?,
            logprobs: self.logprobs()?,
            grammar: self
                .grammar
                .clone()
                .filter(|g| !g.trim().is_empty())
                .map(|text| Grammar::Gbnf { text }),
            preserved: Vec::new(),
        })
    }

    /// The request's limit (below the context when it is known), else the model's default.
    fn max_tokens(&self, context: u32, default_max: Option<u32>) -> Result<Option<u32>, ApiError> {
        let asked = self.max_completion_tokens.or(self.max_tokens);
        if asked == Some(0) {
            return Err(invalid("max_tokens", "`max_tokens` must be at least 1"));
        }
        if let Some(max_tokens) = asked.filter(|m| context > 0 && *m >= context) {
            return Err(invalid(
                "max_tokens",
                format!("`max_tokens` ({max_tokens}) must be smaller than the model's context ({context} tokens)"),
            ));
        }
        Ok(asked.or(default_max))
    }

    fn stop(&self) -> Result<Vec<String>, ApiError> {
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "`stop` takes up to 4 non-empty strings"));
        }
        Ok(stop)
    }

    fn logit_bias(&self) -> Result<Vec<(i32, f32)>, ApiError> {
        let Some(map) = &self.logit_bias else {
            return Ok(Vec::new());
        };
        let mut biases = Vec::with_capacity(map.len());
        for (token, bias) in map {
            let id: i32 = token
                .parse()
                .ok()
                .filter(|id| *id >= 0)
                .ok_or_else(|| invalid("logit_bias", format!("`logit_bias` keys are token ids, got {token:?}")))?;
            if !(-100.0..=100.0).contains(bias) {
                return Err(invalid(
                    "logit_bias",
                    format!("biases are between -100 and 100, got {bias}"),
                ));
            }
            biases.push((id, *bias));
        }
        biases.sort_by_key(|(id, _)| *id);
        Ok(biases)
    }

    /// Chat's `logprobs: true` with `top_logprobs`, or the legacy completions' number.
    fn logprobs(&self) -> Result<Option<u32>, ApiError> {
        let top = self.top_logprobs.unwrap_or(0);
        let n = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {
                if self.top_logprobs.is_some_and(|t| t > 0) {
                    return Err(invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
                }
                return Ok(None);
            }
            Some(Value::Bool(true)) => top,
            Some(Value::Number(n)) => n.as_u64().map_or(u32::MAX, |n| n.min(u64::from(u32::MAX)) as u32),
            Some(_) => return Err(invalid("logprobs", "`logprobs` must be true, false or a number")),
        };
        if n > 20 {
            return Err(invalid("top_logprobs", format!("at most 20 alternatives, got {n}")));
        }
        Ok(Some(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(json: &str) -> ChatRequest {
        serde_json::from_str(json).unwrap()
    }

    fn param_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap(),
            other => panic!("not an invalid request: {other:?}"),
        }
    }

    fn messages(r: &ChatRequest) -> Vec<Message> {
        match r.prompt().unwrap() {
            Prompt::Chat { messages, .. } => messages,
            Prompt::Text(_) => panic!("a chat"),
        }
    }

    #[test]
    fn chat_messages_become_input() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],"user":"x"}"#,
        );
        let m = messages(&r);
        assert_eq!(m[0].role, "system");
        assert_eq!(m[1].content.as_deref(), Some("hi there"));
    }

    #[test]
    fn tool_calls_and_tool_replies_are_kept() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"weather?"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"sunny"}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],
            "tool_choice":{"type":"function","function":{"name":"get_weather"}},"parallel_tool_calls":false}"#,
        );
        let Prompt::Chat {
            messages,
            tools,
            choice,
            parallel,
        } = r.prompt().unwrap()
        else {
            panic!()
        };
        assert_eq!(messages[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
        assert_eq!(messages[1].content, None);
        assert_eq!(messages[2].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(tools[0].name, "get_weather");
        assert_eq!(choice, ToolChoice::Function("get_weather".into()));
        assert!(!parallel);
    }

    #[test]
    fn tool_choice_forms() {
        let v = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(tool_choice(None, true).unwrap(), ToolChoice::Auto);
        assert_eq!(tool_choice(None, false).unwrap(), ToolChoice::None);
        assert_eq!(
            tool_choice(Some(&v(r#""required""#)), true).unwrap(),
            ToolChoice::Required
        );
        assert_eq!(tool_choice(Some(&v(r#""none""#)), true).unwrap(), ToolChoice::None);
        assert_eq!(
            param_of(tool_choice(Some(&v(r#""sometimes""#)), true).unwrap_err()),
            "tool_choice"
        );
        assert_eq!(
            param_of(tool_choice(Some(&v(r#""required""#)), false).unwrap_err()),
            "tool_choice"
        );
    }

    #[test]
    fn response_formats() {
        let f = |json: &str| chat(&format!(r#"{{"model":"m","messages":[],"response_format":{json}}}"#)).format();
        assert_eq!(f(r#"{"type":"json_object"}"#).unwrap(), OutputFormat::JsonObject);
        let schema = r#"{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":{"type":"object"}}}"#;
        assert!(matches!(f(schema).unwrap(), OutputFormat::JsonSchema(_)));
        assert_eq!(param_of(f(r#"{"type":"json_schema"}"#).unwrap_err()), "response_format");
        assert_eq!(param_of(f(r#"{"type":"yaml"}"#).unwrap_err()), "response_format");
    }

    #[test]
    fn bad_chat_input_names_the_field() {
        assert_eq!(
            param_of(chat(r#"{"model":"m","messages":[]}"#).prompt().unwrap_err()),
            "messages"
        );
        assert_eq!(param_of(chat(r#"{"model":"m"}"#).prompt().unwrap_err()), "messages");
        let e = chat(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
            .prompt()
            .unwrap_err();
        assert_eq!(param_of(e), "messages[0].role");
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
            .prompt()
            .unwrap_err();
        assert_eq!(param_of(e), "messages[0].content");
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools":[{"type":"retrieval"}]}"#)
            .prompt()
            .unwrap_err();
        assert_eq!(param_of(e), "tools[0]");
    }

    #[test]
    fn completion_prompt_forms() {
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m","prompt":["once"]}"#).unwrap();
        assert!(matches!(r.prompt().unwrap(), Prompt::Text(p) if p == "once"));
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m","prompt":["a","b"]}"#).unwrap();
        assert_eq!(param_of(r.prompt().unwrap_err()), "prompt");
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m"}"#).unwrap();
        assert_eq!(param_of(r.prompt().unwrap_err()), "prompt");
    }

    #[test]
    fn sampling_defaults_and_limits() {
        let p = Sampling::default().params(4096, None).unwrap();
        assert_eq!(p.max_tokens, None, "no default cap: until the model stops");
        assert_eq!(
            Sampling::default().params(4096, Some(300)).unwrap().max_tokens,
            Some(300)
        );
        assert!(p.stop.is_empty());
        let s: Sampling = serde_json::from_str(r#"{"max_tokens":8,"temperature":0,"seed":7,"stop":"\n"}"#).unwrap();
        let p = s.params(4096, Some(300)).unwrap();
        assert_eq!(
            (p.max_tokens, p.temperature, p.seed, p.stop.clone()),
            (Some(8), 0.0, Some(7), vec!["\n".to_owned()])
        );
        let s: Sampling =
            serde_json::from_str(r#"{"logit_bias":{"15":-100,"3":2.5},"logprobs":true,"top_logprobs":3}"#).unwrap();
        let p = s.params(4096, None).unwrap();
        assert_eq!(p.logit_bias, vec![(3, 2.5), (15, -100.0)]);
        assert_eq!(p.logprobs, Some(3));
        let bad = [
            (r#"{"max_tokens":4096}"#, "max_tokens"),
            (r#"{"max_tokens":0}"#, "max_tokens"),
            (r#"{"temperature":-0.5}"#, "temperature"),
            (r#"{"top_p":0}"#, "top_p"),
            (r#"{"min_p":1.5}"#, "min_p"),
            (r#"{"top_k":-1}"#, "top_k"),
            (r#"{"presence_penalty":3}"#, "presence_penalty"),
            (r#"{"frequency_penalty":-3}"#, "frequency_penalty"),
            (r#"{"repeat_penalty":0}"#, "repeat_penalty"),
            (r#"{"stop":["a","b","c","d","e"]}"#, "stop"),
            (r#"{"stop":""}"#, "stop"),
            (r#"{"n":2}"#, "n"),
            (r#"{"logit_bias":{"x":1}}"#, "logit_bias"),
            (r#"{"logit_bias":{"5":101}}"#, "logit_bias"),
            (r#"{"logprobs":true,"top_logprobs":21}"#, "top_logprobs"),
            (r#"{"top_logprobs":2}"#, "top_logprobs"),
            (r#"{"logprobs":"yes"}"#, "logprobs"),
        ];
        for (json, field) in bad {
            let s: Sampling = serde_json::from_str(json).unwrap();
            assert_eq!(param_of(s.params(4096, None).unwrap_err()), field, "{json}");
        }
        // Unknown context: max_tokens cannot be checked against it yet.
        let s: Sampling = serde_json::from_str(r#"{"max_tokens":100000}"#).unwrap();
        assert!(s.params(0, None).is_ok());
    }

    #[test]
    fn large_seeds_fold_into_32_bits() {
        let seed = |json: &str| {
            serde_json::from_str::<Sampling>(json)
                .unwrap()
                .params(0, None)
                .unwrap()
                .seed
        };
        assert_eq!(seed(r#"{"seed":7}"#), Some(7));
        assert_eq!(seed(r#"{"seed":4294967303}"#), Some(6)); // 2^32 + 7
        assert_eq!(seed(r#"{"seed":-1}"#), Some(0));
        assert_eq!(seed("{}"), None);
    }
}
