//! The worker test harness: `vramd_worker_kit::testing` (start the binary on a temporary
//! socket with stdin piped, a small HTTP/1.1 client), aimed at `vramd-llm-worker`.
//!
//! - [`Worker::start`] runs the binary and waits until health answers; [`Worker::stream`]
//!   starts a generation and reads its [`GenerateEvent`]s.
//! - [`tiny_model`] writes `vramd-gguf`'s random-weight llama model.

#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use serde::Serialize;
use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec};
use vramd_protocol::{GenerateEvent, LoadOptions, LoadRequest, GENERATE};
pub use vramd_worker_kit::testing::Response;

pub const WORKER: &str = env!("CARGO_BIN_EXE_vramd-llm-worker");

/// The NDJSON lines of a generation.
pub type Events = vramd_worker_kit::testing::Events<GenerateEvent>;

pub struct Worker(vramd_worker_kit::testing::Worker);

impl Worker {
    pub fn start() -> Worker {
        Worker(vramd_worker_kit::testing::Worker::start(
            WORKER,
            "info,llama-cpp-2=warn",
        ))
    }

    /// Starts a generation and returns its status and line reader.
    pub fn stream(&self, body: &impl Serialize) -> (u16, Events) {
        self.0.stream_at(GENERATE, body)
    }
}

impl Deref for Worker {
    type Target = vramd_worker_kit::testing::Worker;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Writes the tiny llama model (ChatML template unless `template` is false).
pub fn tiny_model(dir: &Path, name: &str, template: bool) -> PathBuf {
    let mut spec = TinyLlamaSpec::default();
    if !template {
        spec.chat_template = None;
    }
    model_with(dir, name, &spec)
}

pub fn model_with(dir: &Path, name: &str, spec: &TinyLlamaSpec) -> PathBuf {
    let path = dir.join(name);
    write_tiny_llama(&path, spec).expect("write tiny llama");
    path
}

pub fn load_request(name: &str, path: &Path, context_length: u32) -> LoadRequest {
    LoadRequest {
        model: name.into(),
        path: path.to_owned(),
        options: LoadOptions {
            context_length,
            gpu_layers: u32::MAX,
            threads: 2,
            mmap: true,
            batch: 512,
        },
    }
}
