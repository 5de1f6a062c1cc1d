//! The llama thread: the one owner of the backend, the model and its context.
//!
//! Loading, decoding and sampling block, and a `LlamaContext` borrows its model and is not
//! `Sync`, so all of it lives on one dedicated OS thread that takes [`Job`]s from a channel in
//! arrival order (the channel is the queue). The async side never waits on that thread except
//! through the reply channels it sent along with a job; [`Health`] is published in a shared
//! cell after every change, so `GET /internal/health` answers even mid-generation.
//!
//! Lifetimes without self-reference: [`run`] (the outer loop) waits for a `Load`; [`load`]
//! owns the `LlamaModel` on its stack for as long as it stays loaded, and [`Loaded::serve`]
//! (the inner loop) keeps the `Option<LlamaContext<'_>>` that borrows it. Returning from them
//! (hard unload, or a load of another model) frees the context, then the model.

use std::num::NonZeroU32;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};
use tokio::sync::{mpsc, oneshot};
use vramd_protocol::{
    Bytes, ErrorCode, GenerateEvent, GenerateRequest, Health, LoadRequest, LoadResponse, RestoreResponse, UnloadMode,
    WorkerError, WorkerState,
};

use crate::generate::{self, Outcome};
use crate::logcap;
use crate::memory::{self, KvGeometry};

pub enum Job {
    Load {
        req: LoadRequest,
        reply: oneshot::Sender<Result<LoadResponse, WorkerError>>,
    },
    Unload {
        mode: UnloadMode,
        reply: oneshot::Sender<Health>,
    },
    /// Recreate the context a soft unload dropped.
    Restore {
        reply: oneshot::Sender<Result<RestoreResponse, WorkerError>>,
    },
    Generate {
        req: GenerateRequest,
        out: mpsc::Sender<Out>,
    },
}

/// What the engine sends back for a generation: a refusal, or the next line of the stream.
pub type Out = vramd_worker_kit::Out<GenerateEvent>;

use vramd_worker_kit::engine::empty_health;
pub use vramd_worker_kit::error;
use vramd_worker_kit::Status;

/// The async side's handle on the llama thread.
pub type Engine = vramd_worker_kit::Engine<Job>;

/// Starts the llama thread.
pub fn start() -> std::io::Result<Engine> {
    Engine::start("llama", "the llama thread", run)
}

/// What only this worker writes into its [`Health`].
trait StatusExt {
    fn set_bytes(&self, weights: u64, context: u64, compute: u64) -> Health;
}

impl StatusExt for Status {
    fn set_bytes(&self, weights: u64, context: u64, compute: u64) -> Health {
        self.update(|h| h.bytes = Bytes::new(weights, context, compute))
    }
}

fn run(jobs: std_mpsc::Receiver<Job>, status: Status) {
    let backend = match LlamaBackend::init() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot initialise llama.cpp: {e}");
            std::process::exit(70); // EX_SOFTWARE
        }
    };
    tracing::info!(gpu_offload = backend.supports_gpu_offload(), "llama.cpp backend ready");
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        match job {
            Job::Load { req, reply } => next = load(&backend, req, reply, &jobs, &status),
            Job::Unload { reply, .. } => {
                let _ = reply.send(status.clear());
            }
            Job::Generate { out, .. } => {
                let _ = out.blocking_send(Out::Refused(error(ErrorCode::NotLoaded, "no model is loaded")));
            }
            Job::Restore { reply } => {
                let _ = reply.send(Err(error(ErrorCode::NotLoaded, "no model is loaded")));
            }
        }
    }
}

/// Settings a context is (re)created with.
struct CtxSettings {
    n_ctx: u32,
    batch: u32,
    threads: i32,
}

/// Loads the model, then serves it until it is unloaded; returns a job that must run after the
/// model is freed (the load of another model).
fn load(
    backend: &LlamaBackend,
    req: LoadRequest,
    reply: oneshot::Sender<Result<LoadResponse, WorkerError>>,
    jobs: &std_mpsc::Receiver<Job>,
    status: &Status,
) -> Option<Job> {
    let started = Instant::now();
    status.update(|h| {
        *h = empty_health();
        h.state = WorkerState::Loading;
        h.model = Some(req.model.clone());
    });
    let opts = &req.options;
    tracing::info!(model = %req.model, path = %req.path.display(), ?opts, "loading");
    if !req.path.is_file() {
        status.clear();
        let msg = format!("{}: not found, or not a file", req.path.display());
        let _ = reply.send(Err(error(ErrorCode::LoadFailed, msg)));
        return None;
    }
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(opts.gpu_layers)
        .with_use_mmap(opts.mmap)
        // Replaces llama.cpp's default progress printer (a line of dots on stderr).
        .with_progress_callback(|_| true);
    logcap::begin();
    let loaded = LlamaModel::load_from_file(backend, &req.path, &params);
    let cap = logcap::take();
    let model = match loaded {
        Ok(m) => m,
        Err(e) => {
            status.clear();
            let why = if cap.errors.is_empty() {
                e.to_string()
            } else {
                cap.errors.join("; ")
            };
            let msg = format!("llama.cpp cannot load {}: {why}", req.path.display());
            tracing::warn!("{msg}");
            let _ = reply.send(Err(error(ErrorCode::LoadFailed, msg)));
            return None;
        }
    };
    let train = model.n_ctx_train();
    let wanted = match opts.context_length {
        0 => train,
        n if train > 0 => n.min(train),
        n => n,
    };
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(4, |n| n.get()),
        n => n as usize,
    };
    let mut settings = CtxSettings {
        n_ctx: wanted.max(1),
        batch: if opts.batch == 0 { 512 } else { opts.batch },
        threads: i32::try_from(threads).unwrap_or(i32::MAX),
    };
    let device = device_name(backend, opts.gpu_layers);
    let weights = model.size();
    status.update(|h| {
        h.device = device.clone();
        h.bytes = Bytes::new(weights, 0, 0);
    });
    let (ctx, ctx_bytes) = match new_context(backend, &model, &settings) {
        Ok(c) => c,
        Err(e) => {
            status.clear();
            let _ = reply.send(Err(error(ErrorCode::LoadFailed, e.message)));
            return None;
        }
    };
    // llama.cpp rounds the context up (to a multiple of 256): recreate it at that size, and
    // check prompts against it.
    settings.n_ctx = ctx.n_ctx();
    let health = status.update(|h| {
        h.state = WorkerState::Loaded;
        h.bytes = Bytes::new(weights, ctx_bytes.0, ctx_bytes.1);
    });
    let response = LoadResponse {
        load_ms: started.elapsed().as_millis() as u64,
        context_length: ctx.n_ctx(),
        train_context_length: train,
        has_chat_template: model.chat_template(None).is_ok(),
        health,
    };
    tracing::info!(
        model = %req.model,
        load_ms = response.load_ms,
        n_ctx = response.context_length,
        n_ctx_train = train,
        weights,
        kv = ctx_bytes.0,
        compute = ctx_bytes.1,
        device = %device,
        chat_template = response.has_chat_template,
        "loaded"
    );
    let _ = reply.send(Ok(response));
    let loaded = Loaded {
        backend,
        model: &model,
        settings,
        weights,
        status,
    };
    loaded.serve(ctx, jobs)
}

/// A loaded model and what the engine needs to serve it.
struct Loaded<'a> {
    backend: &'a LlamaBackend,
    model: &'a LlamaModel,
    settings: CtxSettings,
    weights: u64,
    status: &'a Status,
}

impl<'a> Loaded<'a> {
    fn serve(&self, ctx: LlamaContext<'a>, jobs: &std_mpsc::Receiver<Job>) -> Option<Job> {
        let mut ctx = Some(ctx);
        loop {
            let job = jobs.recv().ok()?;
            match job {
                Job::Load { .. } => {
                    tracing::info!("another load: freeing the current model first");
                    drop(ctx);
                    self.status.clear();
                    return Some(job);
                }
                Job::Unload {
                    mode: UnloadMode::Soft,
                    reply,
                } => {
                    // Clearing the KV cache frees nothing: the context itself must go.
                    ctx = None;
                    self.status.set_bytes(self.weights, 0, 0);
                    let h = self.status.set_state(WorkerState::SoftUnloaded);
                    tracing::info!("soft unload: context freed, weights kept");
                    let _ = reply.send(h);
                }
                Job::Unload {
                    mode: UnloadMode::Hard,
                    reply,
                } => {
                    drop(ctx);
                    // The model is freed when `load` returns, before the next job is taken.
                    let h = self.status.clear();
                    tracing::info!("hard unload: model freed");
                    let _ = reply.send(h);
                    return None;
                }
                Job::Generate { req, out } => self.generate(&mut ctx, req, &out),
                Job::Restore { reply } => {
                    let restored = self.ensure_context(&mut ctx).map(|context_ms| {
                        if context_ms > 0 {
                            tracing::info!(context_ms, "context restored after a soft unload");
                        }
                        RestoreResponse {
                            health: self.status.update(|_| ()),
                            context_ms,
                        }
                    });
                    let _ = reply.send(restored);
                }
            }
        }
    }

    /// Recreates the context if a soft unload dropped it; returns the milliseconds spent.
    fn ensure_context(&self, ctx: &mut Option<LlamaContext<'a>>) -> Result<u64, WorkerError> {
        if ctx.is_some() {
            return Ok(0);
        }
        let t = Instant::now();
        let (c, (kv, compute)) = new_context(self.backend, self.model, &self.settings)?;
        *ctx = Some(c);
        self.status.set_bytes(self.weights, kv, compute);
        self.status.set_state(WorkerState::Loaded);
        Ok(t.elapsed().as_millis() as u64)
    }

    fn generate(&self, ctx: &mut Option<LlamaContext<'a>>, req: GenerateRequest, out: &mpsc::Sender<Out>) {
        if out.is_closed() {
            tracing::info!(request_id = %req.request_id, "client left before its turn");
            return;
        }
        let prompt = match generate::prepare(self.model, &req, self.settings.n_ctx) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(request_id = %req.request_id, "refused: {}", e.message);
                let _ = out.blocking_send(Out::Refused(e));
                return;
            }
        };
        let context_ms = match self.ensure_context(ctx) {
            Ok(ms) => ms,
            Err(e) => {
                let _ = out.blocking_send(Out::Refused(e));
                return;
            }
        };
        let Some(ctx) = ctx.as_mut() else { return };
        self.status.set_state(WorkerState::Busy);
        let prompt_tokens = prompt.len() as u32;
        let started = GenerateEvent::Started {
            prompt_tokens,
            context_ms,
        };
        let outcome = if out.blocking_send(Out::Event(started)).is_ok() {
            generate::run(self.model, ctx, &prompt, &req, out)
        } else {
            Outcome::Cancelled { completion: 0 }
        };
        let health = self.status.set_state(WorkerState::Loaded);
        let last = match outcome {
            Outcome::Finished { reason, completion } => GenerateEvent::Done {
                finish_reason: reason,
                prompt_tokens,
                completion_tokens: completion,
                health,
            },
            Outcome::Cancelled { completion } => {
                tracing::info!(
                    request_id = %req.request_id,
                    "generation cancelled after {completion} tokens"
                );
                return;
            }
            Outcome::Failed { error, completion } => {
                tracing::warn!(
                    request_id = %req.request_id,
                    "generation failed after {completion} tokens: {}",
                    error.message
                );
                GenerateEvent::Error { error }
            }
        };
        let _ = out.blocking_send(Out::Event(last));
    }
}

/// Creates a context; returns it with its (KV, compute) bytes.
fn new_context<'m>(
    backend: &LlamaBackend,
    model: &'m LlamaModel,
    s: &CtxSettings,
) -> Result<(LlamaContext<'m>, (u64, u64)), WorkerError> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(s.n_ctx))
        .with_n_batch(s.batch)
        .with_n_threads(s.threads)
        .with_n_threads_batch(s.threads);
    logcap::begin();
    let created = model.new_context(backend, params);
    let cap = logcap::take();
    let ctx = created.map_err(|e| {
        let why = if cap.errors.is_empty() {
            e.to_string()
        } else {
            cap.errors.join("; ")
        };
        let msg = format!("llama.cpp cannot create a context of {} tokens: {why}", s.n_ctx);
        tracing::warn!("{msg}");
        error(ErrorCode::Internal, msg)
    })?;
    let geometry = KvGeometry {
        n_layer: model.n_layer(),
        n_embd: u32::try_from(model.n_embd()).unwrap_or(0),
        n_head: model.n_head(),
        n_head_kv: model.n_head_kv(),
    };
    // The context uses llama.cpp's default KV type, f16.
    let kv = memory::kv_cache_bytes(geometry, ctx.n_ctx(), memory::KV_F16_BYTES);
    tracing::debug!(n_ctx = ctx.n_ctx(), kv, compute = cap.compute_bytes, "context created");
    Ok((ctx, (kv, cap.compute_bytes)))
}

/// `cpu`, or the first GPU llama.cpp offloads to (`cuda:0`) when layers are offloaded.
fn device_name(backend: &LlamaBackend, gpu_layers: u32) -> String {
    if gpu_layers == 0 || !backend.supports_gpu_offload() {
        return "cpu".into();
    }
    list_llama_ggml_backend_devices()
        .into_iter()
        .find(|d| {
            matches!(
                d.device_type,
                LlamaBackendDeviceType::Gpu | LlamaBackendDeviceType::IntegratedGpu
            )
        })
        .map_or_else(
            || "cpu".into(),
            |d| {
                // Device names are `CUDA0`, `Vulkan1`…: backend, then the index.
                let index = d.name.trim_start_matches(|c: char| !c.is_ascii_digit());
                let index = if index.is_empty() { "0" } else { index };
                format!("{}:{index}", d.backend.to_ascii_lowercase())
            },
        )
}
