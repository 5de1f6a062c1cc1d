//! `vramd-gguf`: read and write GGUF files without linking ggml.
//!
//! Why this crate exists: the daemon needs a model's tensor sizes (to know how much VRAM a load
//! will take) before it asks a worker to load it, and the test suites need small, deterministic
//! llama.cpp and stable-diffusion.cpp models that can be generated on the fly instead of being
//! downloaded. Both only need the container format, so this crate stays free of ggml and of any
//! heavy dependency.
//!
//! - [`read`]: [`GgufFile::open`] memory-maps a file and parses header, metadata and tensor table
//!   without touching tensor data.
//! - [`write`](mod@write): [`GgufWriter`] builds GGUF v3 files with correct alignment.
//! - [`quant`]: f32 → f16 / Q8_0 / Q4_0 conversion, so writers can emit quantized tensors.
//! - [`llama`]: a tiny random-weight llama model that llama.cpp's loader accepts.
//! - [`manifest`]: random-weight stable-diffusion.cpp models from a tensor-shape manifest.

pub mod llama;
pub mod manifest;
pub mod quant;
pub mod read;
pub mod rng;
pub mod types;
pub mod write;

pub use read::{Gguf, GgufFile, ReadError, TensorInfo};
pub use types::{GgmlType, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};
pub use write::{GgufWriter, WriteError};
