//! The wire protocol between the daemon and its worker processes, in one place.
//!
//! # Transport
//! Each worker serves HTTP/1.1 on a private Unix socket that the daemon names on the
//! worker's command line (`--socket PATH`, in the daemon's runtime directory). Bodies are
//! JSON (`Content-Type: application/json`). The daemon is the only client.
//!
//! # Endpoints
//! | method, path | request body | response |
//! | --- | --- | --- |
//! | `GET /internal/health` | — | [`Health`] |
//! | `POST /internal/load` | [`LoadRequest`] | [`LoadResponse`] |
//! | `POST /internal/unload` | [`UnloadRequest`] | [`Health`] after the unload |
//! | `POST /internal/generate` | [`GenerateRequest`] | a stream of [`GenerateEvent`]s |
//!
//! `generate` answers `200` with `Content-Type: application/x-ndjson`: one JSON
//! [`GenerateEvent`] per line, `started` first, then `token`s, then exactly one `done` or
//! `error`. A client that closes the connection cancels the generation; the worker notices
//! between two tokens.
//!
//! Any other failure is a non-2xx status with a [`WorkerError`] body.
//!
//! # Readiness and lifetime
//! A worker is ready when `GET /internal/health` answers. It exits when its standard input
//! reaches end-of-file (the daemon holds the other end of that pipe, so a worker never
//! outlives the daemon), and it reports memory after every load and every generation.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const HEALTH: &str = "/internal/health";
pub const LOAD: &str = "/internal/load";
pub const UNLOAD: &str = "/internal/unload";
pub const GENERATE: &str = "/internal/generate";

/// Bytes a model holds, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Model weights (on the device for offloaded layers, in mapped host memory otherwise).
    pub weights: u64,
    /// KV cache (LLM) or other per-context state.
    pub context: u64,
    /// Compute buffers, as the library reports them.
    pub compute: u64,
    pub total: u64,
}

impl Bytes {
    pub fn new(weights: u64, context: u64, compute: u64) -> Bytes {
        Bytes {
            weights,
            context,
            compute,
            total: weights + context + compute,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// No model.
    Empty,
    Loading,
    /// Weights and context (KV cache, compute buffers) allocated.
    Loaded,
    /// Weights only; the next generation recreates the context.
    SoftUnloaded,
    /// Generating.
    Busy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub state: WorkerState,
    /// The model's configured name, once loaded.
    pub model: Option<String>,
    pub bytes: Bytes,
    /// The largest `bytes.total` seen since the model was loaded.
    pub peak_bytes: u64,
    pub pid: u32,
    /// Where the weights live: `cpu`, or the GPU backend such as `cuda:0`.
    pub device: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadRequest {
    /// The configured model name, echoed in [`Health::model`].
    pub model: String,
    pub path: PathBuf,
    pub options: LoadOptions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// Context length in tokens; 0 means the model's training context.
    pub context_length: u32,
    /// Layers to offload to the GPU; `u32::MAX` means all.
    pub gpu_layers: u32,
    /// CPU threads for generation; 0 means the worker picks.
    pub threads: u32,
    /// Memory-map the weights so they come from the page cache.
    pub mmap: bool,
    /// Logical batch size for prompt processing.
    pub batch: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            context_length: 4096,
            gpu_layers: u32::MAX,
            threads: 0,
            mmap: true,
            batch: 512,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadResponse {
    pub health: Health,
    pub load_ms: u64,
    /// The context length in effect.
    pub context_length: u32,
    /// The context length the model was trained with.
    pub train_context_length: u32,
    /// Whether the model carries a chat template.
    pub has_chat_template: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnloadMode {
    /// Free KV cache and compute buffers, keep the weights.
    Soft,
    /// Free the model.
    Hard,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnloadRequest {
    pub mode: UnloadMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Input {
    /// Formatted with the model's own chat template.
    Chat { messages: Vec<ChatMessage> },
    /// Used as is.
    Text { prompt: String },
}

/// Sampling parameters, with OpenAI's meanings. `temperature == 0` is greedy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: i32,
    pub min_p: f32,
    pub seed: Option<u32>,
    pub stop: Vec<String>,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: 256,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            seed: None,
            stop: Vec::new(),
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The daemon's request id, for the worker's logs.
    pub request_id: String,
    pub input: Input,
    pub params: SamplingParams,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerateEvent {
    Started {
        prompt_tokens: u32,
        /// Time spent recreating the context after a soft unload, 0 if it was there.
        context_ms: u64,
    },
    Token {
        text: String,
    },
    Done {
        finish_reason: FinishReason,
        prompt_tokens: u32,
        completion_tokens: u32,
        health: Health,
    },
    Error {
        error: WorkerError,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed.
    InvalidRequest,
    /// Generation was asked of a worker with no model.
    NotLoaded,
    /// The model file could not be loaded (corrupt, truncated, unsupported).
    LoadFailed,
    /// The prompt does not fit the context.
    PromptTooLong,
    /// A chat request for a model without a chat template.
    NoChatTemplate,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_lines() {
        let e = GenerateEvent::Token { text: "hé".into() };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"type":"token","text":"hé"}"#);
        assert_eq!(serde_json::from_str::<GenerateEvent>(&line).unwrap(), e);
        let input: Input = serde_json::from_str(r#"{"kind":"text","prompt":"hi"}"#).unwrap();
        assert_eq!(input, Input::Text { prompt: "hi".into() });
    }

    #[test]
    fn bytes_total_is_the_sum() {
        assert_eq!(Bytes::new(1, 2, 3).total, 6);
    }
}
