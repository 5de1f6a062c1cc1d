//! OpenAI-compatible request bodies and their validation into worker requests. Pure: no
//! I/O, so every rule is unit-tested on values.
//!
//! Unknown fields are ignored rather than refused: OpenAI clients send fields vramd has no
//! use for (`user`, `logprobs: false`, `n: 1`), and refusing them would break those clients.

use serde::Deserialize;
use vramd_protocol::{ChatMessage, Input, SamplingParams};

use super::ApiError;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<RawMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    #[serde(default)]
    pub prompt: Option<Prompt>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` is a string or a one-element array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
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
    #[serde(default)]
    pub stream: bool,
    pub n: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Tokens generated when the request gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

impl ChatRequest {
    pub fn input(&self) -> Result<Input, ApiError> {
        if self.messages.is_empty() {
            return Err(invalid("messages", "`messages` must contain at least one message"));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "developer" | "tool") {
                return Err(invalid(
                    &format!("messages[{i}].role"),
                    format!("unknown role {:?}", m.role),
                ));
            }
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                        return Err(invalid(
                            &format!("messages[{i}].content"),
                            format!("content parts of type {:?} are not supported; only \"text\"", p.kind),
                        ));
                    }
                    parts
                        .iter()
                        .filter_map(|p| p.text.as_deref())
                        .collect::<Vec<_>>()
                        .join("")
                }
            };
            let role = if m.role == "developer" { "system" } else { &m.role };
            messages.push(ChatMessage {
                role: role.to_owned(),
                content,
            });
        }
        Ok(Input::Chat { messages })
    }
}

impl CompletionRequest {
    pub fn input(&self) -> Result<Input, ApiError> {
        let prompt = match &self.prompt {
            None => return Err(invalid("prompt", "`prompt` is required")),
            Some(Prompt::One(p)) => p.clone(),
            Some(Prompt::Many(v)) if v.len() == 1 => v[0].clone(),
            Some(Prompt::Many(_)) => {
                return Err(invalid(
                    "prompt",
                    "`prompt` must be one string (batches are not supported)",
                ))
            }
        };
        if prompt.is_empty() {
            return Err(invalid("prompt", "`prompt` must not be empty"));
        }
        Ok(Input::Text { prompt })
    }
}

impl Sampling {
    /// Checks every parameter and fills in defaults. `context` is the model's context
    /// length when known (0 when not yet known).
    pub fn params(&self, context: u32) -> Result<SamplingParams, ApiError> {
        let d = SamplingParams::default();
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only n = 1 is supported"));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(n) => n,
            // Not asked for: the default, within the context.
            None if context > 1 => DEFAULT_MAX_TOKENS.min(context - 1),
            None => DEFAULT_MAX_TOKENS,
        };
        if max_tokens == 0 {
            return Err(invalid("max_tokens", "`max_tokens` must be at least 1"));
        }
        if context > 0 && max_tokens >= context {
            return Err(invalid(
                "max_tokens",
                format!("`max_tokens` ({max_tokens}) must be smaller than the model's context ({context} tokens)"),
            ));
        }
        let temperature = self.temperature.unwrap_or(d.temperature);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(invalid(
                "temperature",
                format!("`temperature` must be between 0 and 2, got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(d.top_p);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(invalid("top_p", format!("`top_p` must be in (0, 1], got {top_p}")));
        }
        let min_p = self.min_p.unwrap_or(d.min_p);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(invalid("min_p", format!("`min_p` must be in [0, 1], got {min_p}")));
        }
        let top_k = self.top_k.unwrap_or(d.top_k);
        if top_k < 0 {
            return Err(invalid("top_k", format!("`top_k` must not be negative, got {top_k}")));
        }
        let penalty = |name: &str, v: Option<f32>, default: f32| -> Result<f32, ApiError> {
            let v = v.unwrap_or(default);
            if !(-2.0..=2.0).contains(&v) {
                return Err(invalid(name, format!("`{name}` must be between -2 and 2, got {v}")));
            }
            Ok(v)
        };
        let frequency_penalty = penalty("frequency_penalty", self.frequency_penalty, d.frequency_penalty)?;
        let presence_penalty = penalty("presence_penalty", self.presence_penalty, d.presence_penalty)?;
        let repeat_penalty = self.repeat_penalty.unwrap_or(d.repeat_penalty);
        if !(repeat_penalty > 0.0 && repeat_penalty <= 10.0) {
            return Err(invalid(
                "repeat_penalty",
                format!("`repeat_penalty` must be in (0, 10], got {repeat_penalty}"),
            ));
        }
        // OpenAI seeds are 64-bit; llama.cpp's are 32-bit: fold, so every seed is valid.
        let seed = self.seed.map(|s| (s as u64 ^ ((s as u64) >> 32)) as u32);
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 4 || stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "`stop` takes up to 4 non-empty strings"));
        }
        Ok(SamplingParams {
            max_tokens,
            temperature,
            top_p,
            top_k,
            min_p,
            seed,
            stop,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
        })
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

    #[test]
    fn chat_messages_become_input() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],"user":"x"}"#,
        );
        let Input::Chat { messages } = r.input().unwrap() else {
            panic!()
        };
        assert_eq!(messages[0].role, "system");
        assert_eq!(messages[1].content, "hi there");
    }

    #[test]
    fn bad_chat_input_names_the_field() {
        assert_eq!(
            param_of(chat(r#"{"model":"m","messages":[]}"#).input().unwrap_err()),
            "messages"
        );
        assert_eq!(param_of(chat(r#"{"model":"m"}"#).input().unwrap_err()), "messages");
        let e = chat(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#)
            .input()
            .unwrap_err();
        assert_eq!(param_of(e), "messages[0].role");
        let e = chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
            .input()
            .unwrap_err();
        assert_eq!(param_of(e), "messages[0].content");
    }

    #[test]
    fn completion_prompt_forms() {
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m","prompt":["once"]}"#).unwrap();
        assert_eq!(r.input().unwrap(), Input::Text { prompt: "once".into() });
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m","prompt":["a","b"]}"#).unwrap();
        assert_eq!(param_of(r.input().unwrap_err()), "prompt");
        let r: CompletionRequest = serde_json::from_str(r#"{"model":"m"}"#).unwrap();
        assert_eq!(param_of(r.input().unwrap_err()), "prompt");
    }

    #[test]
    fn sampling_defaults_and_limits() {
        let p = Sampling::default().params(4096).unwrap();
        assert_eq!(p.max_tokens, DEFAULT_MAX_TOKENS);
        assert_eq!(Sampling::default().params(64).unwrap().max_tokens, 63);
        assert!(p.stop.is_empty());
        let s: Sampling = serde_json::from_str(r#"{"max_tokens":8,"temperature":0,"seed":7,"stop":"\n"}"#).unwrap();
        let p = s.params(4096).unwrap();
        assert_eq!(
            (p.max_tokens, p.temperature, p.seed, p.stop.clone()),
            (8, 0.0, Some(7), vec!["\n".to_owned()])
        );
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
        ];
        for (json, field) in bad {
            let s: Sampling = serde_json::from_str(json).unwrap();
            assert_eq!(param_of(s.params(4096).unwrap_err()), field, "{json}");
        }
        // Unknown context: max_tokens cannot be checked against it yet.
        let s: Sampling = serde_json::from_str(r#"{"max_tokens":100000}"#).unwrap();
        assert!(s.params(0).is_ok());
    }

    #[test]
    fn large_seeds_fold_into_32_bits() {
        let seed = |json: &str| serde_json::from_str::<Sampling>(json).unwrap().params(0).unwrap().seed;
        assert_eq!(seed(r#"{"seed":7}"#), Some(7));
        assert_eq!(seed(r#"{"seed":4294967303}"#), Some(6)); // 2^32 + 7
        assert_eq!(seed(r#"{"seed":-1}"#), Some(0));
        assert_eq!(seed("{}"), None);
    }
}
