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
//! | `POST /internal/restore` | — (empty or `{}`) | [`RestoreResponse`] |
//! | `POST /internal/generate` | [`GenerateRequest`] | a stream of [`GenerateEvent`]s |
//! | `POST /internal/embed` | [`EmbedRequest`] | [`EmbedResponse`] (embedding models) |
//!
//! The image worker serves `health` and `unload` the same way, takes an
//! [`ImageLoadRequest`] on `POST /internal/load` (answering [`ImageLoadResponse`]) and
//! generates with `POST /internal/images` ([`ImageRequest`] → a stream of [`ImageEvent`]s).
//! For it a soft unload is a hard one: stable-diffusion.cpp keeps no droppable context.
//!
//! `restore` undoes a soft unload ahead of the next request: the LLM worker recreates the
//! context it dropped (a no-op answering `context_ms: 0` when the context is there; a
//! `not_loaded` error when no model is). The daemon calls it in the background once memory
//! allows, so the next chat does not pay for the context. The image worker does not serve it.
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

pub mod cpu;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const HEALTH: &str = "/internal/health";
pub const LOAD: &str = "/internal/load";
pub const UNLOAD: &str = "/internal/unload";
pub const RESTORE: &str = "/internal/restore";
pub const GENERATE: &str = "/internal/generate";
pub const IMAGES: &str = "/internal/images";
pub const EMBED: &str = "/internal/embed";

/// Bytes a model holds, by part: `weights`, `context` and `compute` add up to `total`, the
/// figure the daemon counts against the device (or the budget); `host` is apart from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    /// Model weights (on the device for offloaded layers, in mapped host memory otherwise).
    pub weights: u64,
    /// KV cache (LLM) or other per-context state.
    pub context: u64,
    /// Compute buffers on the device, as the library reports them.
    pub compute: u64,
    /// `weights + context + compute`: what counts against the device.
    pub total: u64,
    /// Host RAM held for parts that vramd placed on the CPU: a VAE (or TAESD) placed there,
    /// its decode buffer; for an LLM, the sequence's KV kept in RAM across a soft unload.
    /// Not part of `total` and never counted against the device or the budget: a placement
    /// on the CPU is logical, so on a CPU-only build (the budget backend), where the
    /// "device" is the CPU too, such a part is host memory all the same. Absent from an
    /// older worker's report: 0.
    #[serde(default)]
    pub host: u64,
}

impl Bytes {
    /// Device bytes only; [`Bytes::with_host`] adds the host part.
    pub fn new(weights: u64, context: u64, compute: u64) -> Bytes {
        Bytes {
            weights,
            context,
            compute,
            total: weights + context + compute,
            host: 0,
        }
    }

    /// The same device bytes, with `host` bytes in host RAM beside them.
    pub fn with_host(self, host: u64) -> Bytes {
        Bytes { host, ..self }
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
    /// The CPU code the engine runs and the CPU it runs on
    /// (`x86-64-v3 build (avx avx2 f16c fma) on a x86-64-v4 CPU`); workers before 0.2 sent none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Image workers only: weights per component and what the last generation measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageHealth>,
}

/// What an image worker knows about its memory, for the arbiter's VAE estimates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHealth {
    /// Bytes of weights per component (`diffusion_model`, `clip_l`, `llm`, `vae`, `taesd`, …)
    /// as stable-diffusion.cpp allocated them.
    pub components: Vec<ComponentBytes>,
    /// Where the VAE of the current context runs.
    pub vae_backend: VaePlacement,
    /// Compute peaks of the last generation, if any.
    pub last: Option<GenerationPeaks>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentBytes {
    pub name: String,
    pub bytes: u64,
    /// `gpu`/`cpu`: where this component's params buffer lives.
    pub device: String,
}

/// Measured compute-buffer peaks of one generation, per phase, with its resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationPeaks {
    pub width: u32,
    pub height: u32,
    /// Text encoders and diffusion sampling, on the device only (a buffer in host RAM, such
    /// as that of a text encoder the library kept on the CPU, is left out): the arbiter
    /// calibrates device estimates with it.
    pub sampling_bytes: u64,
    /// VAE (or TAESD) decode, wherever it ran (`vae`): with `cpu`, host memory.
    pub vae_decode_bytes: u64,
    pub vae: VaePlacement,
    pub sampling_ms: u64,
    pub vae_decode_ms: u64,
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
    /// An embedding model: its context computes pooled embeddings (`/internal/embed`)
    /// instead of generating.
    #[serde(default)]
    pub embeddings: bool,
    /// Host memory the conversation's KV cache may be kept in across a soft unload, so the
    /// next turn needs no prefill; 0 keeps nothing.
    #[serde(default)]
    pub kv_ram: u64,
    /// Sequences served at once in one context (continuous batching); each has
    /// `context_length` tokens of its own KV. 0 or absent means 1.
    #[serde(default)]
    pub parallel: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            context_length: 4096,
            gpu_layers: u32::MAX,
            threads: 0,
            mmap: true,
            batch: 512,
            embeddings: false,
            kv_ram: 0,
            parallel: 1,
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

/// The answer to `POST /internal/restore`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResponse {
    /// Health after the restore: `loaded`, with the context's bytes.
    pub health: Health,
    /// Time spent recreating the context, 0 if it was there.
    pub context_ms: u64,
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
    /// `None`: until the model ends its turn or the context is full.
    pub max_tokens: Option<u32>,
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
    /// Added to the logits of these token ids before sampling (-100 bans a token).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logit_bias: Vec<(i32, f32)>,
    /// Report each token's log-probability and this many alternatives (`None`: no logprobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u32>,
    /// Constrains the output (structured output, forced tool calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<Grammar>,
    /// Special tokens written out as text instead of dropped, because the daemon reads them
    /// (a model family's tool-call markers such as `[TOOL_CALLS]` or `<|python_tag|>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preserved: Vec<String>,
}

/// What the output must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Grammar {
    /// A JSON Schema (as JSON text); the worker converts it with llama.cpp's converter, so
    /// the output always parses and matches it.
    JsonSchema { schema: String },
    /// A grammar in llama.cpp's GBNF, used as is.
    Gbnf { text: String },
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_tokens: None,
            temperature: 0.8,
            top_p: 0.95,
            top_k: 40,
            min_p: 0.05,
            seed: None,
            stop: Vec::new(),
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
            logprobs: None,
            grammar: None,
            preserved: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The daemon's request id, for the worker's logs.
    pub request_id: String,
    pub input: Input,
    pub params: SamplingParams,
    /// A person is waiting on it (a streamed chat): it goes before background generations
    /// waiting with it, within a bound.
    #[serde(default)]
    pub interactive: bool,
}

/// One sampled token's log-probability (natural log, over the full vocabulary before any
/// sampler), with the likeliest alternatives, as OpenAI's `logprobs.content` entries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// `POST /internal/embed`: one pooled embedding per input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedRequest {
    pub request_id: String,
    pub inputs: Vec<String>,
    /// Scale each vector to length 1 (what OpenAI and Ollama return).
    pub normalize: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmbedResponse {
    pub embeddings: Vec<Vec<f32>>,
    pub prompt_tokens: u32,
    pub health: Health,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of generation token or a stop sequence.
    Stop,
    /// `max_tokens` reached.
    Length,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GenerateEvent {
    Started {
        prompt_tokens: u32,
        /// Time spent recreating the context after a soft unload, 0 if it was there.
        context_ms: u64,
        /// Prompt tokens whose KV the context already held (the prompt cache): only the
        /// others were decoded.
        #[serde(default)]
        cached_tokens: u32,
        /// What the worker holds now, context included: a generation cancelled before its
        /// `done` still tells the daemon about a context it recreated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        health: Option<Health>,
    },
    Token {
        text: String,
        /// With `logprobs`: the sampled token's, and the likeliest alternatives.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        logprob: Option<TokenLogprob>,
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

/// Where an image's VAE decode runs. `tiled` decodes in tiles on the same device, without
/// reloading; `cpu` needs the context re-created with the VAE on the CPU (from the page cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VaePlacement {
    #[default]
    Gpu,
    Tiled,
    Cpu,
}

/// The files of an image model, as configured: one checkpoint `model`, or components.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFiles {
    pub model: Option<PathBuf>,
    pub diffusion_model: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub taesd: Option<PathBuf>,
    pub clip_l: Option<PathBuf>,
    pub clip_g: Option<PathBuf>,
    pub t5xxl: Option<PathBuf>,
    pub llm: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLoadRequest {
    pub model: String,
    pub files: ImageFiles,
    /// Memory-map the weights so they come from the page cache.
    pub mmap: bool,
    /// CPU threads; 0 means the worker picks.
    pub threads: u32,
    /// `cpu` creates the context with the VAE on the CPU; anything else on the device.
    pub vae: VaePlacement,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLoadResponse {
    pub health: Health,
    pub load_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRequest {
    pub request_id: String,
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    /// `None`: random; the seed used is reported with each image.
    pub seed: Option<i64>,
    /// stable-diffusion.cpp sampler name (`euler_a`, `euler`, `dpm++2m`, …).
    pub sampler: String,
    /// stable-diffusion.cpp scheduler name (`discrete`, `karras`, …); empty = the default.
    pub scheduler: String,
    /// Images to make, one after another, seeds counting up.
    pub batch_count: u32,
    /// Where this generation's VAE decode runs. `cpu` on a worker whose context has the VAE
    /// on the device re-creates the context first (and the reverse for `gpu`/`tiled`).
    pub vae: VaePlacement,
    /// Text chunks to write into each PNG (A1111 puts the parameters under `parameters`).
    pub png_text: Vec<(String, String)>,
    /// img2img: the picture the generation starts from (and for inpainting, its mask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceImage>,
    /// Hires fix: a second pass at a larger size from the first pass's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires: Option<Hires>,
    /// LoRAs applied to this generation only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<Lora>,
}

/// Raw 8-bit pixels, rows top to bottom, base64-encoded: the daemon decodes and resizes
/// what clients send (PNG, JPEG, WebP), so a worker gets exactly `width·height·channels`
/// bytes and never parses an image format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pixels {
    pub width: u32,
    pub height: u32,
    /// 3 (RGB) for a picture, 1 for a mask.
    pub channels: u8,
    pub base64: String,
}

/// img2img's starting point, at the request's own width and height.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceImage {
    pub image: Pixels,
    /// Inpainting: one channel, 255 where the picture is painted again, 0 where it is kept.
    pub mask: Option<Pixels>,
    /// How much of the picture is noised away (A1111's `denoising_strength`): 0 keeps it,
    /// 1 replaces it.
    pub strength: f32,
}

/// A1111's hires fix: the first pass at the request's size, then the result upscaled to
/// `width`×`height` and sampled again for `steps` (0: as many as the first pass) at
/// `denoising_strength`. Where the request's VAE decode runs applies to the final size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hires {
    /// stable-diffusion.cpp's upscaler name, which is A1111's: `Latent`, `Latent (nearest)`,
    /// `Lanczos`, `Nearest`, …
    pub upscaler: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub denoising_strength: f32,
}

/// One LoRA file, checked by the daemon to lie in the model's LoRA folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lora {
    pub path: std::path::PathBuf,
    pub multiplier: f32,
}

// `done` carries the worker's whole health: events are made one at a time and serialized at
// once, so the size of the largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageEvent {
    /// Work began; `switch_ms` is the time spent re-creating the context for another VAE
    /// placement (0 when none was needed).
    Started {
        switch_ms: u64,
    },
    /// A sampling step finished (`step` counts from 1, over all images of the batch).
    Progress {
        step: u32,
        steps: u32,
    },
    /// A preview of the image being sampled (a cheap projection of the latent, at the
    /// latent's size), for A1111's `current_image`; at most a few per second.
    Preview {
        step: u32,
        png_base64: String,
    },
    /// One finished image: a PNG, base64-encoded, and the seed that made it.
    Image {
        index: u32,
        seed: i64,
        png_base64: String,
    },
    Done {
        health: Health,
        peaks: GenerationPeaks,
    },
    Error {
        error: WorkerError,
    },
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
        let e = GenerateEvent::Token {
            text: "hé".into(),
            logprob: None,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(line, r#"{"type":"token","text":"hé"}"#);
        assert_eq!(serde_json::from_str::<GenerateEvent>(&line).unwrap(), e);
        let input: Input = serde_json::from_str(r#"{"kind":"text","prompt":"hi"}"#).unwrap();
        assert_eq!(input, Input::Text { prompt: "hi".into() });
        // Fields added since are optional on the wire, so either side may be older.
        let p: SamplingParams = serde_json::from_str(
            r#"{"max_tokens":null,"temperature":0.0,"top_p":1.0,"top_k":0,"min_p":0.0,"seed":null,
                "stop":[],"repeat_penalty":1.0,"frequency_penalty":0.0,"presence_penalty":0.0}"#,
        )
        .unwrap();
        assert_eq!((p.logprobs, p.grammar, p.preserved.len()), (None, None, 0));
        let g = Grammar::JsonSchema { schema: "{}".into() };
        let line = serde_json::to_string(&g).unwrap();
        assert_eq!(line, r#"{"kind":"json_schema","schema":"{}"}"#);
    }

    #[test]
    fn bytes_total_is_the_sum() {
        assert_eq!(Bytes::new(1, 2, 3).total, 6);
    }

    #[test]
    fn host_bytes_stay_out_of_the_total_and_default_to_zero() {
        let b = Bytes::new(1, 2, 3).with_host(40);
        assert_eq!((b.total, b.host), (6, 40));
        let old: Bytes = serde_json::from_str(r#"{"weights":1,"context":2,"compute":3,"total":6}"#).unwrap();
        assert_eq!(old, Bytes::new(1, 2, 3));
    }
}
