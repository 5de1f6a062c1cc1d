//! What `vramd-llm-worker`'s end-to-end tests share besides `vramd_worker_kit::testing` (which
//! starts the binary on a temporary socket with stdin piped, and speaks HTTP to it):
//!
//! - [`Worker`]: that harness aimed at this binary ([`LlmWorker`]): `Worker::start()` runs
//!   it, `w.stream(&req)` starts a generation and reads its [`GenerateEvent`]s;
//! - [`tiny_model`] writes `vramd-gguf`'s random-weight llama model.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec};
use vramd_protocol::{GenerateEvent, LoadOptions, LoadRequest, GENERATE};
use vramd_worker_kit::testing::WorkerBinary;

/// `vramd-llm-worker` as its tests drive it.
pub enum LlmWorker {}

impl WorkerBinary for LlmWorker {
    type Event = GenerateEvent;
    const PATH: &'static str = env!("CARGO_BIN_EXE_vramd-llm-worker");
    const RUST_LOG: &'static str = "info,llama-cpp-2=warn";
    const STREAM: &'static str = GENERATE;
}

pub type Worker = vramd_worker_kit::testing::Worker<LlmWorker>;

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
            ..LoadOptions::default()
        },
    }
}
