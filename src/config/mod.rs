//! The configuration: `/etc/vramd/vramd.toml` plus model drop-ins in `models.d/*.toml`.
//!
//! Parsing ([`parse_main`], [`parse_dropin`], [`Config::assemble`]) is pure: text in,
//! typed configuration or a [`ConfigError`] with file, line and reason out. Reading files
//! lives in [`load`]. Unknown keys are errors, because a misspelt `reserve` that is silently
//! ignored is exactly how a GPU runs out of memory.

mod load;
mod raw;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::units::{ByteSize, Timeout};

// Re-exported from its leaf module, `model`, where the registry and the planner find it
// without importing the configuration.
pub use crate::model::ModelKind;
pub use load::{load, LoadedConfig, DEFAULT_CONFIG_PATH};
pub use raw::{parse_dropin, parse_main, RawDropin, RawMain};

/// A configuration problem, located in its file when it comes from one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl ConfigError {
    pub(crate) fn at_span(
        file: &Path,
        text: &str,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_owned(),
            at: span.map(|s| line_col(text, s.start)),
            message: message.into(),
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, col)
}

/// Where the memory figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// NVML when it initialises, else the budget.
    Auto,
    /// NVIDIA's management library: real device figures.
    Nvml,
    /// A configured total; what is used is what workers report.
    Budget,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DaemonConfig {
    /// Bound when vramd is started by hand rather than socket-activated.
    pub socket: PathBuf,
    /// Exit after this long with nothing loaded and nobody connected.
    pub idle_exit: Timeout,
    /// Log filter when `RUST_LOG` is not set (`info`, `vramd=debug`, ...).
    pub log: String,
    /// Largest request body accepted.
    pub max_body: ByteSize,
    /// How long a connection may take to send a request's headers (and a new connection its
    /// first byte): a local process cannot hold connections for free.
    pub header_timeout: Timeout,
    /// How long a keep-alive connection may wait for its next request: longer than HTTP
    /// clients keep pooled connections (aiohttp 15 s, httpx 5 s), so that none sends a
    /// request on a connection vramd is closing; as nginx's default.
    pub idle_timeout: Timeout,
    /// How long a streamed answer waits for its client to read on before the generation is
    /// stopped: a client that stops reading must not hold its model from everyone.
    pub stall_timeout: Timeout,
    /// Connections served at once over all listeners; more wait in the kernel's backlog
    /// until one closes, so no client can run the daemon out of file descriptors.
    pub max_connections: u32,
    /// How long in-flight requests may run on after a stop request.
    pub shutdown_timeout: Timeout,
    /// Persistent state (estimator calibration, ...).
    pub state_dir: PathBuf,
    /// Where the worker binaries are; unset: next to `vramd` in a build tree, else
    /// `/usr/libexec/vramd`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_dir: Option<PathBuf>,
    /// Where worker sockets go; unset: `$RUNTIME_DIRECTORY`, else `$XDG_RUNTIME_DIR/vramd`,
    /// else a private folder under `/tmp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_dir: Option<PathBuf>,
    /// How long a worker may take to answer its first health check.
    pub worker_start_timeout: Timeout,
    /// How long a running worker may take to answer a health check (one every half of it)
    /// before it is taken for hung (stopped, deadlocked in the engine) and killed, so the
    /// requests on it fail and the next one gets a new worker; `"0"`: never.
    pub worker_health_timeout: Timeout,
    /// The group whose members (and root) may change state: load, unload, pin, interrupt.
    /// Reading status and generating are open to anyone who can reach the socket.
    pub control_group: String,
    /// The API keys file (see `keys`): TCP clients need a key from it once it lists any; a
    /// `control` key also allows state changes, on either listener.
    pub keys_file: PathBuf,
    /// The image model that requests naming none get (OpenAI's without `model` or with
    /// `dall-e-2`/`dall-e-3`/`gpt-image-1`; A1111's until a client picks a checkpoint); unset:
    /// the first image model configured. Checked in [`Config::assemble`], since the model
    /// may come from a drop-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_image_model: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryConfig {
    pub backend: BackendKind,
    pub budget: ByteSize,
    pub reserve: ByteSize,
    /// RAM that model files may be locked into (`mlock`); 0 locks nothing.
    pub pin_ram: ByteSize,
    /// The GPU (NVML index) vramd manages.
    pub device: u32,
}

/// Component files of an image model, for models not shipped as one checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageComponents {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diffusion_model: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub taesd: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_l: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_g: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub t5xxl: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llm: Option<PathBuf>,
}

impl ImageComponents {
    /// Every configured component as (role, path), in a fixed order.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        [
            ("diffusion_model", &self.diffusion_model),
            ("vae", &self.vae),
            ("taesd", &self.taesd),
            ("clip_l", &self.clip_l),
            ("clip_g", &self.clip_g),
            ("t5xxl", &self.t5xxl),
            ("llm", &self.llm),
        ]
        .into_iter()
        .filter_map(|(role, p)| p.as_deref().map(|p| (role, p)))
        .collect()
    }
}

/// What a model is loaded from. Requests name models, never files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ModelSource {
    File { path: PathBuf },
    Components(ImageComponents),
}

impl ModelSource {
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        match self {
            ModelSource::File { path } => vec![("path", path.as_path())],
            ModelSource::Components(c) => c.files(),
        }
    }
}

/// How many layers an LLM offloads to the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuLayers {
    All,
    Count(u32),
}

impl Serialize for GpuLayers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuLayers::All => s.serialize_str("all"),
            GpuLayers::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> serde::Deserialize<'de> for GpuLayers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("gpu_layers must be \"all\" or a number of layers"))?
        {
            Raw::N(n) => Ok(GpuLayers::Count(n)),
            Raw::S(s) if s == "all" => Ok(GpuLayers::All),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "gpu_layers must be \"all\" or a number, not {s:?}"
            ))),
        }
    }
}

/// Slots of an LLM unless configured: the person's chat and one background request of a
/// WebUI (a title, tags) run side by side, for twice the KV of one conversation.
pub const DEFAULT_PARALLEL: u32 = 2;
/// The most slots a model may have (llama.cpp's own limit is 256 sequences).
pub const MAX_PARALLEL: u32 = 64;

/// How an LLM is loaded; ignored for image models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LlmOptions {
    /// Context length in tokens; 0 means the model's training context.
    pub context_length: u32,
    pub gpu_layers: GpuLayers,
    /// Generation threads; 0 lets the worker pick.
    pub threads: u32,
    /// Memory-map the weights (page cache, fast reloads).
    pub mmap: bool,
    pub batch: u32,
    /// An embedding model: served by `/v1/embeddings` and `/api/embed`, not by chat.
    pub embeddings: bool,
    /// The most tokens a chat or completion generates when the request sets no limit
    /// (`None`: until the model ends its turn or the context is full, as OpenAI does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Host memory the conversation's KV cache may be kept in across a soft unload.
    pub kv_ram: ByteSize,
    /// Conversations served at once (slots of one context, decoded in one batch); each
    /// slot has `context_length` tokens of KV, so the KV cache is `parallel` times larger.
    pub parallel: u32,
}

impl Default for LlmOptions {
    fn default() -> Self {
        LlmOptions {
            context_length: 4096,
            gpu_layers: GpuLayers::All,
            threads: 0,
            mmap: true,
            batch: 512,
            embeddings: false,
            max_tokens: None,
            kv_ram: ByteSize(1 << 30),
            parallel: DEFAULT_PARALLEL,
        }
    }
}

/// Limits of an image model's requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageOptions {
    /// Width and height must be multiples of this (8 for SD1.x latents; 16 or 64 for some).
    pub size_multiple: u32,
    /// Largest width or height accepted.
    pub max_size: u32,
    /// Most images per request (`n`, `batch_size` × `n_iter`).
    pub max_batch: u32,
    /// The folder of this model's LoRAs (`<lora:name:weight>` in a prompt names a file in
    /// it, without its extension); none: LoRAs are refused.
    pub lora_dir: Option<std::path::PathBuf>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            size_multiple: 8,
            max_size: 2048,
            max_batch: 8,
            lora_dir: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub kind: ModelKind,
    #[serde(flatten)]
    pub source: ModelSource,
    /// Set for `llm` models only.
    #[serde(flatten)]
    pub llm_options: Option<LlmOptions>,
    /// Set for `image` models only.
    #[serde(flatten)]
    pub image_options: Option<ImageOptions>,
    /// Never evicted to make room.
    pub pinned: bool,
    /// Among idle models, lower priority is evicted first.
    pub priority: i32,
    /// Unload after this long unused; `"0"`: stay loaded while memory allows.
    pub keep_alive: Timeout,
    /// Where it was defined (`file:line`), for messages.
    #[serde(skip)]
    pub origin: String,
}

/// The resolved configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub memory: MemoryConfig,
    pub policy: PolicyConfig,
    pub dbus: DbusConfig,
    pub models: Vec<ModelConfig>,
}

/// Which message bus the D-Bus interface is served on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// The system bus: the installed daemon, watched by every user's notification agent.
    System,
    /// The session bus of the user running vramd: per-user installs and tests.
    Session,
    /// No D-Bus interface at all.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DbusConfig {
    pub bus: BusKind,
}

impl Default for DbusConfig {
    fn default() -> Self {
        DbusConfig { bus: BusKind::System }
    }
}

/// How the arbiter makes room (see `planner` for the ladder's rungs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyConfig {
    /// The steps tried, in order, when a request does not fit.
    pub ladder: Vec<crate::planner::Rung>,
    /// LLMs idle this long are the first to be unloaded.
    pub llm_idle_first: Timeout,
    /// How long a request may wait for a busy model before a 503.
    pub wait_timeout: Timeout,
    /// The `Retry-After` of a 503 when memory is short.
    pub retry_after: Timeout,
    /// How long the arbiter must have been quiet (no request started or finished, no
    /// eviction) before it restores soft-unloaded contexts that fit again; `"0"`: never.
    /// A short pause keeps back-to-back images from trading the LLM's context back and forth.
    pub restore_after: Timeout,
}

impl PolicyConfig {
    /// The planner's policy: durations in whole seconds, `llm_idle_first = "0"` (never)
    /// as never stale, a `retry_after` of at least one second.
    pub fn planner(&self) -> crate::planner::Policy {
        crate::planner::Policy {
            ladder: self.ladder.clone(),
            llm_idle_first: self.llm_idle_first.0.map_or(u64::MAX, |d| d.as_secs()),
            retry_after: self.retry_after.0.map_or(5, |d| d.as_secs().max(1)),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            ladder: crate::planner::Policy::default().ladder,
            llm_idle_first: Timeout(Some(Duration::from_secs(600))),
            wait_timeout: Timeout(Some(Duration::from_secs(60))),
            retry_after: Timeout(Some(Duration::from_secs(5))),
            restore_after: Timeout(Some(Duration::from_secs(2))),
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: PathBuf::from("/run/vramd/vramd.sock"),
            idle_exit: Timeout(Some(Duration::from_secs(300))),
            log: "info".into(),
            max_body: ByteSize(16 << 20),
            header_timeout: Timeout(Some(Duration::from_secs(10))),
            idle_timeout: Timeout(Some(Duration::from_secs(75))),
            stall_timeout: Timeout(Some(Duration::from_secs(30))),
            max_connections: 256,
            shutdown_timeout: Timeout(Some(Duration::from_secs(10))),
            state_dir: PathBuf::from("/var/lib/vramd"),
            worker_dir: None,
            runtime_dir: None,
            worker_start_timeout: Timeout(Some(Duration::from_secs(30))),
            worker_health_timeout: Timeout(Some(Duration::from_secs(10))),
            control_group: "vramd".into(),
            keys_file: PathBuf::from("/etc/vramd/keys.toml"),
            default_image_model: None,
        }
    }
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            backend: BackendKind::Auto,
            budget: ByteSize(8 << 30),
            reserve: ByteSize(512 << 20),
            pin_ram: ByteSize(0),
            device: 0,
        }
    }
}

impl Config {
    /// The built-in defaults: no models.
    pub fn defaults() -> Config {
        Config {
            daemon: DaemonConfig::default(),
            memory: MemoryConfig::default(),
            policy: PolicyConfig::default(),
            dbus: DbusConfig::default(),
            models: Vec::new(),
        }
    }

    /// Builds the configuration from the main file and its drop-ins (in the order given),
    /// checking what no single file can: unique model names.
    pub fn assemble(main: RawMain, dropins: Vec<RawDropin>) -> Result<Config, ConfigError> {
        let mut config = main.config;
        for dropin in dropins {
            config.models.extend(dropin.models);
        }
        for (i, m) in config.models.iter().enumerate() {
            if let Some(first) = config.models[..i].iter().find(|o| o.name == m.name) {
                let (file, line) = split_origin(&m.origin);
                return Err(ConfigError {
                    file,
                    at: line.map(|l| (l, 1)),
                    message: format!("model {:?} is defined twice (first at {})", m.name, first.origin),
                });
            }
        }
        if let Some(name) = &config.daemon.default_image_model {
            if config.default_image_model().map(|m| &m.name) != Some(name) {
                return Err(ConfigError {
                    file: main.file,
                    at: main.default_image_at,
                    message: format!(
                        "default_image_model {name:?} is not a configured image model (image models: {})",
                        config
                            .image_models()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
        }
        Ok(config)
    }

    /// The image models, in configuration order.
    pub fn image_models(&self) -> impl Iterator<Item = &ModelConfig> {
        self.models.iter().filter(|m| m.kind == ModelKind::Image)
    }

    /// The image model for requests that name none: `[daemon] default_image_model`, else
    /// the first image model configured.
    pub fn default_image_model(&self) -> Option<&ModelConfig> {
        match &self.daemon.default_image_model {
            Some(name) => self.image_models().find(|m| &m.name == name),
            None => self.image_models().next(),
        }
    }

    /// The resolved configuration as TOML that parses back to the same configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("configuration serialises to TOML")
    }

    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

fn split_origin(origin: &str) -> (PathBuf, Option<usize>) {
    match origin.rsplit_once(':') {
        Some((file, line)) => match line.parse() {
            Ok(l) => (PathBuf::from(file), Some(l)),
            Err(_) => (PathBuf::from(origin), None),
        },
        None => (PathBuf::from(origin), None),
    }
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
