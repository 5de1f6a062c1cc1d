//! The llama thread: the one owner of the backend, the model and its context.
//!
//! Loading, decoding and sampling block, and a `LlamaContext` borrows its model and is not
//! `Sync`, so all of it lives on one dedicated OS thread that takes [`EngineCall`]s from a
//! channel in arrival order (the channel is the queue). The async side never waits on that
//! thread except through the reply channels it sent along with a call; [`Health`] is
//! published in a shared cell after every change, so `GET /internal/health` answers even
//! mid-generation.
//!
//! Lifetimes without self-reference: [`run`] (the outer loop) waits for a `Load`;
//! [`load_and_serve`] owns the `LlamaModel` on its stack for as long as it stays loaded, and
//! [`Loaded::serve`] (the inner loop) keeps the `Option<LlamaContext<'_>>` that borrows it.
//! Returning from them (hard unload, or a load of another model) frees the context, then the
//! model.
//!
//! One generation itself (prompt, decode loop, streamed pieces) is [`generate`]'s: this
//! module calls it, never the reverse.

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
    Bytes, EmbedRequest, EmbedResponse, ErrorCode, GenerateEvent, GenerateRequest, Health, LoadOptions, LoadRequest,
    LoadResponse, RestoreResponse, UnloadMode, WorkerError, WorkerState,
};
use vramd_worker_kit::engine::device_label;
use vramd_worker_kit::{error, HealthWriter};

use crate::backlog::{Backlog, Take, Waiting};
use crate::generate::{self, Out, Outcome, Running};
use crate::logcap;
use crate::memory::{self, KvGeometry};
use crate::slots::{Ended, Slots};

/// A call to the llama thread, with the channel its answer goes back on.
pub enum EngineCall {
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
    /// Pooled embeddings (a model loaded with `embeddings`).
    Embed {
        req: EmbedRequest,
        reply: oneshot::Sender<Result<EmbedResponse, WorkerError>>,
    },
}

/// The async side's handle on the llama thread.
pub type Engine = vramd_worker_kit::Engine<EngineCall>;

/// Starts the llama thread.
pub fn start() -> std::io::Result<Engine> {
    Engine::start("llama", "the llama thread", run)
}

/// What only this worker writes into its [`Health`].
trait HealthWriterExt {
    fn set_bytes(&self, weights: u64, context: u64, compute: u64) -> Health;
}

impl HealthWriterExt for HealthWriter {
    fn set_bytes(&self, weights: u64, context: u64, compute: u64) -> Health {
        self.update(|h| h.bytes = Bytes::new(weights, context, compute))
    }
}

fn run(calls: std_mpsc::Receiver<EngineCall>, status: HealthWriter) {
    let mut calls = Backlog::new(calls);
    // The CPU (and GPU) modules must be registered before llama.cpp starts.
    #[cfg(feature = "dynamic-backends")]
    let module = match crate::backends::load() {
        Ok(module) => Some(module),
        Err(e) => {
            tracing::error!("cannot load llama.cpp's backends: {e}");
            std::process::exit(70); // EX_SOFTWARE
        }
    };
    #[cfg(not(feature = "dynamic-backends"))]
    let module: Option<String> = None;
    let backend = match LlamaBackend::init() {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("cannot initialise llama.cpp: {e}");
            std::process::exit(70); // EX_SOFTWARE
        }
    };
    tracing::info!(gpu_offload = backend.supports_gpu_offload(), "llama.cpp backend ready");
    // SAFETY: llama.cpp returns a static NUL-terminated string (or NULL).
    let info = unsafe {
        let p = llama_cpp_sys_2::llama_print_system_info();
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let cpu = vramd_worker_kit::cpu::this_machine(&info);
    // `x86-64-v4 build (…) on a x86-64-v4 CPU; ggml-cpu-zen4 from /usr/lib/vramd`
    let cpu = match module {
        Some(module) => format!("{cpu}; {module}"),
        None => cpu,
    };
    tracing::info!(%cpu, "CPU code");
    status.update(|h| h.cpu = Some(cpu));
    let mut next = None;
    loop {
        let call = match next.take() {
            Some(call) => call,
            None => match calls.next(waiting) {
                Some(call) => call,
                None => return,
            },
        };
        match call {
            EngineCall::Load { req, reply } => next = load_and_serve(&backend, req, reply, &mut calls, &status),
            EngineCall::Unload { reply, .. } => {
                let _ = reply.send(status.clear());
            }
            EngineCall::Generate { out, .. } => {
                let _ = out.blocking_send(Out::Refused(error(ErrorCode::NotLoaded, "no model is loaded")));
            }
            EngineCall::Restore { reply } => {
                let _ = reply.send(Err(error(ErrorCode::NotLoaded, "no model is loaded")));
            }
            EngineCall::Embed { reply, .. } => {
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
    /// The context computes pooled embeddings instead of logits.
    embeddings: bool,
    /// Host memory for the KV cache across a soft unload.
    kv_ram: u64,
    /// Slots: sequences served at once, `n_ctx` tokens each.
    parallel: u32,
}

impl CtxSettings {
    /// What the load options ask of a model trained with `train` tokens of context: 0 means
    /// the training context, more is clamped to it; 0 threads means one per CPU.
    fn new(opts: &LoadOptions, train: u32) -> CtxSettings {
        let wanted = match opts.context_length {
            0 => train,
            n if train > 0 => n.min(train),
            n => n,
        };
        let threads = match opts.threads {
            0 => std::thread::available_parallelism().map_or(4, |n| n.get()),
            n => n as usize,
        };
        CtxSettings {
            n_ctx: wanted.max(1),
            batch: if opts.batch == 0 { 512 } else { opts.batch },
            threads: i32::try_from(threads).unwrap_or(i32::MAX),
            embeddings: opts.embeddings,
            kv_ram: opts.kv_ram,
            // An embedding input is one batch of one sequence.
            parallel: if opts.embeddings { 1 } else { opts.parallel.max(1) },
        }
    }
}

/// Loads the model, then serves it until it is unloaded; returns a call that must run after
/// the model is freed (the load of another model). The model lives on this function's
/// stack while it is loaded, so that the context can borrow it (see the module's
/// documentation); a failure to load or to create the first context answers `load_failed`
/// and leaves the worker empty.
fn load_and_serve(
    backend: &LlamaBackend,
    req: LoadRequest,
    reply: oneshot::Sender<Result<LoadResponse, WorkerError>>,
    calls: &mut Backlog<EngineCall>,
    status: &HealthWriter,
) -> Option<EngineCall> {
    let started = Instant::now();
    status.loading(&req.model);
    let opts = &req.options;
    tracing::info!(model = %req.model, path = %req.path.display(), ?opts, "loading");
    let model = match load_model(backend, &req) {
        Ok(m) => m,
        Err(e) => return load_failed(status, reply, e),
    };
    let mut settings = CtxSettings::new(opts, model.n_ctx_train());
    let device = device_name(backend, opts.gpu_layers);
    let weights = model.size();
    status.update(|h| {
        h.device = device.clone();
        h.bytes = Bytes::new(weights, 0, 0);
    });
    let (ctx, (kv, compute)) = match new_context(backend, &model, &settings) {
        Ok(c) => c,
        Err(e) => return load_failed(status, reply, error(ErrorCode::LoadFailed, e.message)),
    };
    // llama.cpp rounds each slot's context up (to a multiple of 256): recreate it at that
    // size, and check prompts against it.
    settings.n_ctx = ctx.n_ctx() / settings.parallel;
    let health = status.update(|h| {
        h.state = WorkerState::Loaded;
        h.bytes = Bytes::new(weights, kv, compute);
    });
    let response = LoadResponse {
        load_ms: started.elapsed().as_millis() as u64,
        context_length: settings.n_ctx,
        train_context_length: model.n_ctx_train(),
        has_chat_template: model.chat_template(None).is_ok(),
        health,
    };
    tracing::info!(
        model = %req.model,
        load_ms = response.load_ms,
        n_ctx = response.context_length,
        parallel = settings.parallel,
        n_ctx_train = response.train_context_length,
        weights,
        kv,
        compute,
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
    loaded.serve(ctx, calls)
}

/// Answers a load that failed; the worker is empty again.
fn load_failed(
    status: &HealthWriter,
    reply: oneshot::Sender<Result<LoadResponse, WorkerError>>,
    e: WorkerError,
) -> Option<EngineCall> {
    status.clear();
    let _ = reply.send(Err(e));
    None
}

/// Reads the model file with llama.cpp. A failure is `load_failed` with llama.cpp's own
/// logged reasons, which say what is wrong with the file (llama-cpp-2's error does not).
fn load_model(backend: &LlamaBackend, req: &LoadRequest) -> Result<LlamaModel, WorkerError> {
    if !req.path.is_file() {
        let msg = format!("{}: not found, or not a file", req.path.display());
        return Err(error(ErrorCode::LoadFailed, msg));
    }
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(req.options.gpu_layers)
        .with_use_mmap(req.options.mmap)
        // Replaces llama.cpp's default progress printer (a line of dots on stderr).
        .with_progress_callback(|_| true);
    logcap::begin();
    let loaded = LlamaModel::load_from_file(backend, &req.path, &params);
    let cap = logcap::take();
    loaded.map_err(|e| {
        let msg = format!("llama.cpp cannot load {}: {}", req.path.display(), cap.reason(e));
        tracing::warn!("{msg}");
        error(ErrorCode::LoadFailed, msg)
    })
}

/// A loaded model and what the engine needs to serve it.
struct Loaded<'a> {
    backend: &'a LlamaBackend,
    model: &'a LlamaModel,
    settings: CtxSettings,
    weights: u64,
    status: &'a HealthWriter,
}

impl<'a> Loaded<'a> {
    /// Serves calls until the model is to be freed: a hard unload (`None`), or a load of
    /// another model, returned so that it runs once this model is gone. While generations
    /// run, waiting calls are looked at between steps; a generation waits for a free slot,
    /// any other call for every slot to be idle.
    fn serve(&self, ctx: LlamaContext<'a>, calls: &mut Backlog<EngineCall>) -> Option<EngineCall> {
        let mut ctx = Some(ctx);
        let n_batch = self.settings.batch as usize;
        let mut slots = Slots::new(self.settings.parallel, self.settings.n_ctx as usize, n_batch);
        loop {
            let idle = slots.idle();
            let may_run = |w: &Waiting| if w.generation { slots.has_free() } else { idle };
            match calls.take(waiting, may_run, idle) {
                Take::Closed => return None,
                Take::Call(call) => {
                    if let Some(next) = self.call(call, &mut ctx, &mut slots) {
                        return next;
                    }
                    continue;
                }
                Take::Wait => {}
            }
            if let Some(c) = ctx.as_mut().filter(|_| !slots.idle()) {
                let ended = slots.step(self.model, c);
                // The last generation to end reports the worker free.
                if slots.idle() {
                    self.status.set_state(WorkerState::Loaded);
                }
                for e in ended {
                    self.answer(e);
                }
            }
        }
    }

    /// Runs one call taken from the backlog; `Some` when the model is to be freed (see
    /// [`Loaded::serve`]). Calls other than generations come only while all slots are idle.
    fn call(
        &self,
        call: EngineCall,
        ctx: &mut Option<LlamaContext<'a>>,
        slots: &mut Slots,
    ) -> Option<Option<EngineCall>> {
        match call {
            EngineCall::Load { .. } => {
                tracing::info!("another load: freeing the current model first");
                *ctx = None;
                self.status.clear();
                return Some(Some(call));
            }
            EngineCall::Unload {
                mode: UnloadMode::Soft,
                reply,
            } => {
                // Clearing the KV cache frees nothing: the context itself must go. Each
                // slot's KV goes to host memory first, within the budget, reported as host
                // bytes until a recreated context takes it back (`set_bytes` clears them).
                let kept = ctx.as_ref().map_or(0, |c| slots.keep(c, self.settings.kv_ram));
                *ctx = None;
                self.status
                    .update(|h| h.bytes = Bytes::new(self.weights, 0, 0).with_host(kept));
                let h = self.status.set_state(WorkerState::SoftUnloaded);
                tracing::info!(kept_kv_bytes = kept, "soft unload: context freed, weights kept");
                let _ = reply.send(h);
            }
            EngineCall::Unload {
                mode: UnloadMode::Hard,
                reply,
            } => {
                *ctx = None;
                // The model is freed when `load_and_serve` returns, before the next call is
                // taken.
                let h = self.status.clear();
                tracing::info!("hard unload: model freed");
                let _ = reply.send(h);
                return Some(None);
            }
            EngineCall::Generate { req, out } => self.admit(ctx, slots, req, out),
            EngineCall::Embed { req, reply } => {
                let _ = reply.send(self.embed(ctx, &req));
            }
            EngineCall::Restore { reply } => {
                let restored = self.ensure_cached(ctx, slots).map(|context_ms| {
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
        None
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

    fn embed(&self, ctx: &mut Option<LlamaContext<'a>>, req: &EmbedRequest) -> Result<EmbedResponse, WorkerError> {
        if !self.settings.embeddings {
            return Err(error(
                ErrorCode::InvalidRequest,
                "this model is not loaded as an embedding model",
            ));
        }
        self.ensure_context(ctx)?;
        let Some(ctx) = ctx.as_mut() else {
            return Err(error(ErrorCode::Internal, "no context"));
        };
        self.status.set_state(WorkerState::Busy);
        let result = crate::embed::embed(self.model, ctx, req);
        let health = self.status.set_state(WorkerState::Loaded);
        let (embeddings, prompt_tokens) = result?;
        tracing::info!(request_id = %req.request_id, inputs = embeddings.len(), prompt_tokens, "embedded");
        Ok(EmbedResponse {
            embeddings,
            prompt_tokens,
            health,
        })
    }

    /// [`Loaded::ensure_context`], and the KV kept in host memory put back into a context
    /// that had to be recreated.
    fn ensure_cached(&self, ctx: &mut Option<LlamaContext<'a>>, slots: &mut Slots) -> Result<u64, WorkerError> {
        let was_gone = ctx.is_none();
        let ms = self.ensure_context(ctx)?;
        if let (true, Some(c)) = (was_gone, ctx.as_mut()) {
            let tokens = slots.restore(c);
            if tokens > 0 {
                tracing::info!(tokens, "KV cache put back from host memory");
            }
        }
        Ok(ms)
    }

    /// Starts a generation on a free slot: refuses it, or sends `started` and leaves it to
    /// the slots' steps.
    fn admit(
        &self,
        ctx: &mut Option<LlamaContext<'a>>,
        slots: &mut Slots,
        req: GenerateRequest,
        out: mpsc::Sender<Out>,
    ) {
        if out.is_closed() {
            tracing::info!(request_id = %req.request_id, "client left before its turn");
            return;
        }
        if self.settings.embeddings {
            let refused = error(ErrorCode::InvalidRequest, "this model is loaded as an embedding model");
            let _ = out.blocking_send(Out::Refused(refused));
            return;
        }
        let (prompt, sampler) = match generate::prepare(self.model, &req, self.settings.n_ctx) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(request_id = %req.request_id, "refused: {}", e.message);
                let _ = out.blocking_send(Out::Refused(e));
                return;
            }
        };
        let context_ms = match self.ensure_cached(ctx, slots) {
            Ok(ms) => ms,
            Err(e) => {
                let _ = out.blocking_send(Out::Refused(e));
                return;
            }
        };
        let Some(ctx) = ctx.as_mut() else { return };
        let health = self.status.set_state(WorkerState::Busy);
        let (slot, cached) = slots.claim(ctx, &prompt);
        tracing::debug!(request_id = %req.request_id, slot, cached, "slot claimed");
        let started = GenerateEvent::Started {
            prompt_tokens: prompt.len() as u32,
            context_ms,
            cached_tokens: cached as u32,
            health: Some(health),
        };
        if out.blocking_send(Out::Event(started)).is_ok() {
            let running = Running::new(self.model, req, out, (prompt, sampler), cached, slots.n_ctx());
            slots.start(slot, running);
        }
    }

    /// Sends a generation's last event.
    fn answer(&self, ended: Ended) {
        let Ended { running, outcome } = ended;
        let request_id = &running.req.request_id;
        let last = match outcome {
            Outcome::Finished { reason, completion } => GenerateEvent::Done {
                finish_reason: reason,
                prompt_tokens: running.prompt_tokens(),
                completion_tokens: completion,
                health: self.status.update(|_| ()),
            },
            Outcome::Cancelled { completion } => {
                tracing::info!(%request_id, "generation cancelled after {completion} tokens");
                return;
            }
            Outcome::Failed { error, completion } => {
                tracing::warn!(%request_id, "generation failed after {completion} tokens: {}", error.message);
                GenerateEvent::Error { error }
            }
        };
        running.send_last(last);
    }
}

/// How a call waits in the backlog: generations are ordered by interactivity.
fn waiting(call: &EngineCall) -> Waiting {
    match call {
        EngineCall::Generate { req, .. } => Waiting {
            generation: true,
            interactive: req.interactive,
            passed: 0,
        },
        _ => Waiting {
            generation: false,
            interactive: false,
            passed: 0,
        },
    }
}

/// Creates a context; returns it with its (KV, compute) bytes.
fn new_context<'m>(
    backend: &LlamaBackend,
    model: &'m LlamaModel,
    s: &CtxSettings,
) -> Result<(LlamaContext<'m>, (u64, u64)), WorkerError> {
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(s.n_ctx.saturating_mul(s.parallel)))
        .with_n_seq_max(s.parallel)
        .with_n_batch(s.batch)
        .with_n_threads(s.threads)
        .with_n_threads_batch(s.threads)
        .with_embeddings(s.embeddings);
    // An embedding input must fit one physical batch (non-causal attention): make it the
    // logical batch.
    let params = if s.embeddings {
        params.with_n_ubatch(s.batch)
    } else {
        params
    };
    logcap::begin();
    let created = model.new_context(backend, params);
    let cap = logcap::take();
    let ctx = created.map_err(|e| {
        let msg = format!(
            "llama.cpp cannot create a context of {} tokens: {}",
            s.n_ctx,
            cap.reason(e)
        );
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
        // Device names are `CUDA0`, `Vulkan1`…: backend, then the index.
        .map_or_else(|| "cpu".into(), |d| device_label(&d.backend, &d.name))
}
