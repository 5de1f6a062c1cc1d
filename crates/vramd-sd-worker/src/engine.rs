//! The stable-diffusion.cpp thread: the one owner of the `sd_ctx_t`.
//!
//! A context is not thread-safe and the library's log and progress callbacks are global, so
//! all of it lives on one dedicated OS thread that takes [`EngineCall`]s from a channel in
//! arrival order (the channel is the queue). The async side never waits on that thread
//! except through the reply channels it sent along with a call; [`Health`] is published in
//! a shared cell after every change, so `GET /internal/health` answers mid-generation
//! (`busy`).
//!
//! The VAE's device belongs to the context (`vae=cpu` in its backend string). A request whose
//! [`VaePlacement`] the context does not have (`cpu` on a context with the VAE on the device,
//! `gpu`/`tiled` on one with it on the CPU) re-creates the context from the same files first,
//! reported as `switch_ms` in `started`; the worker keeps the new placement until a request
//! asks otherwise. (The placement is what the context was created with, on a CPU-only build
//! too, where both run on the CPU: the behaviour does not depend on the hardware.)
//!
//! Health splits what the model holds into device bytes and host bytes ([`Bytes::host`]) by
//! the same logic: a VAE placed on the CPU, with its decode buffer, is host memory on a
//! CPU-only build too, so that the daemon's budget backend, which stands in for a GPU,
//! counts what a GPU would hold (see [`split`]).
//!
//! There is no cancel in stable-diffusion.cpp: a client that leaves mid-generation does not
//! stop it; its results are dropped (the daemon cancels by killing the process).

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use vramd_protocol::{
    Bytes, ComponentBytes, ErrorCode, GenerationPeaks, Health, ImageEvent, ImageHealth, ImageLoadRequest,
    ImageLoadResponse, ImageRequest, VaePlacement, WorkerError, WorkerState,
};
use vramd_worker_kit::{error, HealthWriter};

use crate::logcap::{self, GenFacts, PhasePeak};
use crate::sd::{self, ContextParams, RgbImage, SdContext};

/// Largest width or height accepted.
const MAX_SIDE: u32 = 8192;
/// Most sampling steps accepted.
const MAX_STEPS: u32 = 1000;
/// Most images in one request.
const MAX_BATCH: u32 = 64;

/// A call to the stable-diffusion.cpp thread, with the channel its answer goes back on.
pub enum EngineCall {
    Load {
        req: ImageLoadRequest,
        reply: oneshot::Sender<Result<ImageLoadResponse, WorkerError>>,
    },
    Unload {
        reply: oneshot::Sender<Health>,
    },
    Generate {
        req: ImageRequest,
        out: mpsc::Sender<Out>,
    },
}

/// What the engine sends back for a generation: a refusal, or the next line of the stream.
pub type Out = vramd_worker_kit::Out<ImageEvent>;

/// The async side's handle on the stable-diffusion.cpp thread.
pub type Engine = vramd_worker_kit::Engine<EngineCall>;

/// Starts the stable-diffusion.cpp thread.
pub fn start() -> std::io::Result<Engine> {
    Engine::start("sd", "the stable-diffusion.cpp thread", run)
}

/// What only this worker writes into its [`Health`].
trait HealthWriterExt {
    fn show(&self, m: &Model, state: WorkerState) -> Health;
}

impl HealthWriterExt for HealthWriter {
    /// Publishes what `m` holds, in `state`; the peak is kept across generations.
    fn show(&self, m: &Model, state: WorkerState) -> Health {
        self.update(|h| {
            h.state = state;
            h.model = Some(m.name.clone());
            h.bytes = split(&m.components, m.vae, &m.peaks);
            h.device = m.device();
            h.image = Some(ImageHealth {
                components: m.components.clone(),
                vae_backend: m.vae,
                last: m.last.clone(),
            });
        })
    }
}

/// A loaded model: its context and what it was created from.
struct Model {
    name: String,
    params: ContextParams,
    ctx: SdContext,
    components: Vec<ComponentBytes>,
    /// Where the context's VAE runs: `Cpu`, or `Gpu` (the device, whatever it is).
    vae: VaePlacement,
    /// Compute peaks of the last generation, by phase and memory (see [`split`]).
    peaks: Peaks,
    last: Option<GenerationPeaks>,
}

impl Model {
    /// `cuda:0` when the diffusion model's weights are on a GPU, else `cpu`.
    fn device(&self) -> String {
        if weights_on_gpu(&self.components) {
            sd::gpu_device().unwrap_or_else(|| "gpu".into())
        } else {
            "cpu".into()
        }
    }
}

/// The compute peaks of one generation, per phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Peaks {
    sampling: PhasePeak,
    decode: PhasePeak,
}

/// Whether the diffusion model's weights are on a GPU: where they are is "the device".
fn weights_on_gpu(components: &[ComponentBytes]) -> bool {
    components
        .iter()
        .any(|c| c.name == "diffusion_model" && c.device == "gpu")
}

/// A phase's peak split into (device, host) bytes. `on_cpu`: vramd placed the phase's
/// runner on the CPU, so all of it is host memory whatever the build; otherwise a buffer is
/// host memory when it is not in the memory of the diffusion model's weights.
fn split_phase(peak: PhasePeak, weights_in_ram: bool, on_cpu: bool) -> (u64, u64) {
    if on_cpu {
        (0, peak.largest())
    } else {
        (peak.on(weights_in_ram), peak.on(!weights_in_ram))
    }
}

/// What a context holds on the device and in host RAM ([`Bytes::host`]), from its
/// components and the compute peaks of its last generation.
///
/// Where a part counts is logical, not physical: the VAE (or TAESD) of a context whose VAE
/// vramd placed on the CPU (`vae`), and the decode's buffers, are host memory even on a
/// CPU-only build, where "the device" is the CPU too (the daemon's budget backend stands in
/// for a GPU there, and a GPU would not hold them); any other component or buffer is host
/// memory when it is not where the diffusion model's weights are. `weights` are the
/// components on the device; `compute` the larger device-side phase peak (a phase's buffers
/// are freed before the next one's); `host` the host-side components plus the larger
/// host-side phase peak.
fn split(components: &[ComponentBytes], vae: VaePlacement, peaks: &Peaks) -> Bytes {
    let on_gpu = weights_on_gpu(components);
    let vae_on_cpu = vae == VaePlacement::Cpu;
    let host_part = |c: &ComponentBytes| {
        let is_vae = matches!(c.name.as_str(), "vae" | "taesd");
        (is_vae && vae_on_cpu) || (c.device == "gpu") != on_gpu
    };
    let (host_w, device_w) = components.iter().fold((0, 0), |(h, d), c| {
        if host_part(c) {
            (h + c.bytes, d)
        } else {
            (h, d + c.bytes)
        }
    });
    let (sampling_d, sampling_h) = split_phase(peaks.sampling, !on_gpu, false);
    let (decode_d, decode_h) = split_phase(peaks.decode, !on_gpu, vae_on_cpu);
    Bytes::new(device_w, 0, sampling_d.max(decode_d)).with_host(host_w + sampling_h.max(decode_h))
}

fn run(calls: std_mpsc::Receiver<EngineCall>, status: HealthWriter) {
    sd::set_callbacks(logcap::on_log, logcap::on_progress, logcap::on_preview);
    let cpu = vramd_worker_kit::cpu::this_machine(&sd::system_info());
    tracing::info!(%cpu, "CPU code");
    status.update(|h| h.cpu = Some(cpu));
    let mut model: Option<Model> = None;
    while let Ok(call) = calls.recv() {
        match call {
            EngineCall::Load { req, reply } => {
                if model.take().is_some() {
                    tracing::info!("another load: freeing the current model first");
                }
                let _ = reply.send(load(req, &mut model, &status));
            }
            EngineCall::Unload { reply } => {
                if model.take().is_some() {
                    tracing::info!("unload: context freed");
                }
                let _ = reply.send(status.clear());
            }
            EngineCall::Generate { req, out } => generate(&mut model, req, &out, &status),
        }
    }
}

/// Creates a context and logs what it holds; the error carries stable-diffusion.cpp's reasons.
fn create(params: &ContextParams) -> Result<(SdContext, Vec<ComponentBytes>), String> {
    logcap::begin_load();
    let created = SdContext::new(params);
    let facts = logcap::end_load();
    match created {
        Ok(Some(ctx)) => Ok((ctx, facts.components)),
        Ok(None) if facts.errors.is_empty() => Err("stable-diffusion.cpp could not create a context".into()),
        Ok(None) => Err(facts.errors.join("; ")),
        Err(e) => Err(e),
    }
}

fn load(
    req: ImageLoadRequest,
    slot: &mut Option<Model>,
    status: &HealthWriter,
) -> Result<ImageLoadResponse, WorkerError> {
    let started = Instant::now();
    status.loading(&req.model);
    tracing::info!(model = %req.model, files = ?req.files, mmap = req.mmap, vae = ?req.vae, "loading");
    let failed = |msg: String| {
        status.clear();
        tracing::warn!("{msg}");
        Err(error(ErrorCode::LoadFailed, msg))
    };
    let params = match context_params(&req) {
        Ok(p) => p,
        Err(msg) => return failed(msg),
    };
    let (ctx, components) = match create(&params) {
        Ok(c) => c,
        Err(why) => return failed(format!("stable-diffusion.cpp cannot load {}: {why}", req.model)),
    };
    let model = slot.insert(Model {
        name: req.model.clone(),
        vae: placement_of(&params),
        params,
        ctx,
        components,
        peaks: Peaks::default(),
        last: None,
    });
    let health = status.show(model, WorkerState::Loaded);
    let load_ms = ms(started.elapsed());
    tracing::info!(
        model = %req.model,
        load_ms,
        weights = health.bytes.weights,
        components = ?model.components,
        device = %health.device,
        "loaded"
    );
    Ok(ImageLoadResponse { health, load_ms })
}

/// Checks the files and turns the request into context parameters.
fn context_params(req: &ImageLoadRequest) -> Result<ContextParams, String> {
    let f = &req.files;
    if f.model.is_none() && f.diffusion_model.is_none() {
        return Err(format!("{}: no model file (`model` or `diffusion_model`)", req.model));
    }
    let all = [
        &f.model,
        &f.diffusion_model,
        &f.vae,
        &f.taesd,
        &f.clip_l,
        &f.clip_g,
        &f.t5xxl,
        &f.llm,
    ];
    for path in all.into_iter().flatten() {
        if !path.is_file() {
            return Err(format!("{}: not found, or not a file", path.display()));
        }
        check_gguf(path)?;
    }
    Ok(ContextParams {
        model: f.model.clone(),
        diffusion_model: f.diffusion_model.clone(),
        vae: f.vae.clone(),
        taesd: f.taesd.clone(),
        clip_l: f.clip_l.clone(),
        clip_g: f.clip_g.clone(),
        t5xxl: f.t5xxl.clone(),
        llm: f.llm.clone(),
        mmap: req.mmap,
        threads: i32::try_from(req.threads).unwrap_or(i32::MAX),
        vae_on_cpu: req.vae == VaePlacement::Cpu,
    })
}

/// Reads a GGUF file's header and tensor table, which checks that every tensor's data lies
/// inside the file. stable-diffusion.cpp reads weights lazily, at their first use: a truncated
/// file would load, then fail the first generation (`read tensor data failed`) or, mapped,
/// crash the process. Other formats (safetensors, ckpt) are left to stable-diffusion.cpp.
fn check_gguf(path: &std::path::Path) -> Result<(), String> {
    let mut magic = [0u8; 4];
    let is_gguf = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && &magic == b"GGUF";
    if !is_gguf {
        return Ok(());
    }
    vramd_gguf::read::GgufFile::open(path)
        .map(drop)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Everything that can refuse a request before anything runs, with `invalid_request` and
/// the field's name first. (The names of sampler and scheduler are parsed again at the FFI
/// edge, in `sd.rs`: a request is checked here, turned into C parameters there.)
pub fn validate(req: &ImageRequest) -> Result<(), WorkerError> {
    let bad = |msg: String| Err(error(ErrorCode::InvalidRequest, msg));
    for (name, v) in [("width", req.width), ("height", req.height)] {
        if v == 0 || v % 8 != 0 || v > MAX_SIDE {
            return bad(format!(
                "{name} must be a positive multiple of 8 up to {MAX_SIDE}, not {v}"
            ));
        }
    }
    if !(1..=MAX_STEPS).contains(&req.steps) {
        return bad(format!("steps must be 1 to {MAX_STEPS}, not {}", req.steps));
    }
    if !(1..=MAX_BATCH).contains(&req.batch_count) {
        return bad(format!("batch_count must be 1 to {MAX_BATCH}, not {}", req.batch_count));
    }
    if !req.cfg_scale.is_finite() {
        return bad("cfg_scale must be a finite number".into());
    }
    if sd::sample_method(&req.sampler).is_none() {
        return bad(format!("sampler: unknown sampler {:?}", req.sampler));
    }
    if sd::scheduler(&req.scheduler).is_none() {
        return bad(format!("scheduler: unknown scheduler {:?}", req.scheduler));
    }
    if req.prompt.contains('\0') || req.negative_prompt.contains('\0') {
        return bad("prompt: NUL bytes are not allowed".into());
    }
    if let Some(seed) = req.seed {
        if seed < 0 {
            return bad(format!("seed must not be negative, not {seed}"));
        }
    }
    validate_extras(req)?;
    for (keyword, text) in &req.png_text {
        if let Err(e) = crate::png::check_keyword(keyword) {
            return bad(format!("png_text: {e}"));
        }
        if text.contains('\0') {
            return bad(format!("png_text: the text of {keyword:?} contains a NUL byte"));
        }
    }
    Ok(())
}

/// img2img's source and mask (at the request's size, whole), hires fix (a known upscaler, a
/// size the engine takes) and LoRAs (files that exist).
fn validate_extras(req: &ImageRequest) -> Result<(), WorkerError> {
    let bad = |msg: String| Err(error(ErrorCode::InvalidRequest, msg));
    if let Some(source) = &req.source {
        let images =
            std::iter::once((&source.image, "source image", 3)).chain(source.mask.as_ref().map(|m| (m, "mask", 1)));
        for (p, what, channels) in images {
            if (p.width, p.height, p.channels) != (req.width, req.height, channels) {
                return bad(format!(
                    "{what}: {}x{} with {} channels, not {}x{} with {channels}",
                    p.width, p.height, p.channels, req.width, req.height
                ));
            }
        }
        if !(0.0..=1.0).contains(&source.strength) {
            return bad(format!("strength must be 0 to 1, not {}", source.strength));
        }
    }
    if let Some(h) = &req.hires {
        if sd::hires_upscaler(&h.upscaler).is_none() {
            return bad(format!("hires: unknown upscaler {:?}", h.upscaler));
        }
        for (name, v) in [("hires width", h.width), ("hires height", h.height)] {
            if v == 0 || v % 8 != 0 || v > MAX_SIDE {
                return bad(format!(
                    "{name} must be a positive multiple of 8 up to {MAX_SIDE}, not {v}"
                ));
            }
        }
        if h.steps > MAX_STEPS || !(0.0..=1.0).contains(&h.denoising_strength) {
            return bad(format!(
                "hires: steps must be 0 to {MAX_STEPS} and denoising_strength 0 to 1, not {} and {}",
                h.steps, h.denoising_strength
            ));
        }
    }
    for lora in &req.loras {
        if !lora.path.is_file() {
            return bad(format!("lora: {} is not a file", lora.path.display()));
        }
        if !lora.multiplier.is_finite() {
            return bad("lora: the weight must be a finite number".into());
        }
    }
    Ok(())
}

/// A seed for a request that asked for none: 31 random bits (what people can type back).
fn random_seed() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    (h.finish() >> 33) as i64
}

/// One request: refused before anything runs, or `started` (after switching the VAE
/// placement if needed), progress, the images, then `done` or an `error` event.
///
/// Timing: `generate_image` samples and decodes in one call, so the split between
/// `sampling_ms` and `vae_decode_ms` comes from the log: the line `decoding N latents`, which
/// stable-diffusion.cpp logs once the last image is sampled and before the first decode, is
/// the boundary (its arrival time, taken in the log callback). `sampling_ms` is the call's
/// start to that line (text encoding and the first read of lazily loaded weights included);
/// `vae_decode_ms` is that line to the call's return (the decode's own weight read and the
/// copy into `sd_image_t` included). Compute-buffer peaks are split by the same line.
fn generate(slot: &mut Option<Model>, req: ImageRequest, out: &mpsc::Sender<Out>, status: &HealthWriter) {
    if out.is_closed() {
        tracing::info!(request_id = %req.request_id, "client left before its turn");
        return;
    }
    let seed = req.seed.unwrap_or_else(random_seed);
    let (model, switch_ms) = match prepare(slot, &req, status) {
        Ok(ready) => ready,
        Err(e) => {
            tracing::info!(request_id = %req.request_id, "refused: {}", e.message);
            let _ = out.blocking_send(Out::Refused(e));
            return;
        }
    };
    status.show(model, WorkerState::Busy);
    if out
        .blocking_send(Out::Event(ImageEvent::Started { switch_ms }))
        .is_err()
    {
        tracing::info!(request_id = %req.request_id, "client left before the generation started");
        status.show(model, WorkerState::Loaded);
        return;
    }
    let generated = run_generation(model, &req, seed, out);
    let health = record(model, &generated, status);
    let images = match images_of(generated.result, &generated.facts, &req.request_id) {
        Ok(images) => images,
        Err(error) => {
            let _ = out.blocking_send(Out::Event(ImageEvent::Error { error }));
            return;
        }
    };
    let peaks = generated.peaks;
    tracing::info!(
        request_id = %req.request_id,
        images = images.len(),
        sampling_ms = peaks.sampling_ms,
        vae_decode_ms = peaks.vae_decode_ms,
        sampling_bytes = peaks.sampling_bytes,
        vae_decode_bytes = peaks.vae_decode_bytes,
        "generated"
    );
    if stream_images(&images, &req, seed, out) {
        let _ = out.blocking_send(Out::Event(ImageEvent::Done { health, peaks }));
    }
}

/// Everything before `started`, so that a request that cannot run is refused with an error
/// status rather than a stream: the request is valid, a model is loaded, and its context has
/// the VAE placement the request needs. Returns the model and `switch_ms`.
fn prepare<'m>(
    slot: &'m mut Option<Model>,
    req: &ImageRequest,
    status: &HealthWriter,
) -> Result<(&'m mut Model, u64), WorkerError> {
    validate(req)?;
    let not_loaded = || error(ErrorCode::NotLoaded, "no model is loaded");
    if slot.is_none() {
        return Err(not_loaded());
    }
    let switch_ms = switch_placement(slot, req, status)?;
    let model = slot.as_mut().ok_or_else(not_loaded)?;
    Ok((model, switch_ms))
}

/// The VAE's device is part of the context, so a request that wants it elsewhere (`cpu`
/// versus the device) re-creates the context from the same files, freeing the old one
/// first: both at once may not fit. Returns the milliseconds it took (at least 1), 0 when no
/// switch was needed; a context that cannot be re-created leaves no model loaded.
fn switch_placement(slot: &mut Option<Model>, req: &ImageRequest, status: &HealthWriter) -> Result<u64, WorkerError> {
    let want_cpu = req.vae == VaePlacement::Cpu;
    let elsewhere = slot.as_ref().is_some_and(|m| want_cpu != (m.vae == VaePlacement::Cpu));
    if !elsewhere {
        return Ok(0);
    }
    let t = Instant::now();
    let Some(mut m) = slot.take() else { return Ok(0) };
    tracing::info!(from = ?m.vae, to = ?req.vae, "re-creating the context for another VAE placement");
    status.set_state(WorkerState::Loading);
    m.params.vae_on_cpu = want_cpu;
    let params = m.params.clone();
    drop(m.ctx);
    match create(&params) {
        Ok((ctx, components)) => {
            *slot = Some(Model {
                ctx,
                components,
                vae: placement_of(&params),
                params,
                name: m.name,
                peaks: m.peaks,
                last: m.last,
            });
            Ok(ms(t.elapsed()).max(1))
        }
        Err(why) => {
            status.clear();
            let msg = format!(
                "stable-diffusion.cpp cannot re-create {} with the VAE placement {:?}: {why}",
                m.name, req.vae
            );
            tracing::warn!("{msg}");
            Err(error(ErrorCode::LoadFailed, msg))
        }
    }
}

/// What one `generate_image` call gave, what its log said, and the peaks taken from both.
struct Generated {
    result: Result<Option<Vec<RgbImage>>, String>,
    facts: GenFacts,
    peaks: GenerationPeaks,
}

/// Runs the generation with the library's log captured (progress goes to `out` as it comes)
/// and splits its time and compute peaks into sampling and decode (see [`generate`]).
fn run_generation(model: &mut Model, req: &ImageRequest, seed: i64, out: &mpsc::Sender<Out>) -> Generated {
    tracing::info!(
        request_id = %req.request_id,
        width = req.width,
        height = req.height,
        steps = req.steps,
        batch = req.batch_count,
        seed,
        vae = ?req.vae,
        "generating"
    );
    logcap::begin_generation(Some(out.clone()), req.batch_count);
    let started = Instant::now();
    let result = model.ctx.generate(req, seed);
    let ended = Instant::now();
    let facts = logcap::end_generation();

    let decode_started = facts.decode_started.unwrap_or(ended).clamp(started, ended);
    let (sampling_on_device, _) = split_phase(facts.sampling, !weights_on_gpu(&model.components), false);
    // With hires fix the images (and the decode that matters) are at the second pass's size.
    let (width, height) = req
        .hires
        .as_ref()
        .map_or((req.width, req.height), |h| (h.width, h.height));
    let peaks = GenerationPeaks {
        width,
        height,
        sampling_bytes: sampling_on_device,
        vae_decode_bytes: facts.decode.largest(),
        vae: req.vae,
        sampling_ms: ms(decode_started - started),
        vae_decode_ms: ms(ended - decode_started),
    };
    Generated { result, facts, peaks }
}

/// Keeps what a generation measured, failed or not (the arbiter's estimates learn from
/// both): the compute peaks, which health splits into device and host bytes ([`split`]),
/// and the peaks reported to the arbiter. Publishes the model `loaded` again and returns
/// that health.
fn record(model: &mut Model, generated: &Generated, status: &HealthWriter) -> Health {
    model.peaks = Peaks {
        sampling: generated.facts.sampling,
        decode: generated.facts.decode,
    };
    model.last = Some(generated.peaks.clone());
    status.show(model, WorkerState::Loaded)
}

/// The images of a generation, or the `error` event's error: stable-diffusion.cpp's logged
/// reasons when it returned NULL, ours when the result could not be taken.
fn images_of(
    result: Result<Option<Vec<RgbImage>>, String>,
    facts: &GenFacts,
    request_id: &str,
) -> Result<Vec<RgbImage>, WorkerError> {
    match result {
        Ok(Some(images)) => Ok(images),
        Ok(None) => {
            let why = if facts.errors.is_empty() {
                "no reason logged".to_string()
            } else {
                facts.errors.join("; ")
            };
            let e = error(
                ErrorCode::Internal,
                format!("stable-diffusion.cpp failed to generate: {why}"),
            );
            tracing::warn!(request_id = %request_id, "{}", e.message);
            Err(e)
        }
        Err(msg) => Err(error(ErrorCode::Internal, msg)),
    }
}

/// Sends one `image` event per image, in order, seeds counting up from `seed`. An image that
/// cannot be sent as asked becomes an `error` event, which ends the stream. Returns whether
/// every image went out, so that `done` is due; false when the stream ended or the client
/// left (there is no cancel in stable-diffusion.cpp: the results are dropped).
fn stream_images(images: &[RgbImage], req: &ImageRequest, seed: i64, out: &mpsc::Sender<Out>) -> bool {
    for (index, img) in images.iter().enumerate() {
        let event = image_event(img, index, req, seed);
        let last = matches!(event, ImageEvent::Error { .. });
        if out.blocking_send(Out::Event(event)).is_err() {
            tracing::info!(request_id = %req.request_id, "client left during the generation; results dropped");
            return false;
        }
        if last {
            return false;
        }
    }
    true
}

/// The size of the images a request makes: with hires fix, the second pass's (which is also
/// where the decode that matters runs).
fn final_size(req: &ImageRequest) -> (u32, u32) {
    req.hires
        .as_ref()
        .map_or((req.width, req.height), |h| (h.width, h.height))
}

/// Image `index` of the batch as its PNG, with the request's text chunks; an `error` event
/// when the library made another size than was asked, or the PNG cannot be written.
fn image_event(img: &RgbImage, index: usize, req: &ImageRequest, seed: i64) -> ImageEvent {
    let internal = |message: String| ImageEvent::Error {
        error: error(ErrorCode::Internal, message),
    };
    let asked = final_size(req);
    if (img.width, img.height) != asked {
        return internal(format!(
            "stable-diffusion.cpp made a {}×{} image, {}×{} was asked",
            img.width, img.height, asked.0, asked.1
        ));
    }
    match crate::png::encode(img, &req.png_text) {
        Ok(png) => ImageEvent::Image {
            index: index as u32,
            seed: seed + index as i64,
            png_base64: crate::png::base64(&png),
        },
        Err(msg) => internal(msg),
    }
}

/// The placement a context was created with: `cpu`, or the device (`gpu`, whatever it is).
fn placement_of(params: &ContextParams) -> VaePlacement {
    if params.vae_on_cpu {
        VaePlacement::Cpu
    } else {
        VaePlacement::Gpu
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid request (64×64, 2 steps, euler, seed 42); `sd.rs`'s tests start from it too.
    pub(crate) fn request() -> ImageRequest {
        ImageRequest {
            request_id: "t".into(),
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            width: 64,
            height: 64,
            steps: 2,
            cfg_scale: 1.0,
            seed: Some(42),
            sampler: "euler".into(),
            scheduler: String::new(),
            batch_count: 1,
            vae: VaePlacement::Gpu,
            png_text: vec![("parameters".into(), "a cat".into())],
            source: None,
            hires: None,
            loras: Vec::new(),
        }
    }

    fn refused(req: ImageRequest) -> String {
        let e = validate(&req).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        e.message
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        validate(&request()).unwrap();
        for vae in [VaePlacement::Tiled, VaePlacement::Cpu] {
            validate(&ImageRequest { vae, ..request() }).unwrap();
        }
        assert!(refused(ImageRequest { width: 60, ..request() }).starts_with("width"));
        assert!(refused(ImageRequest { height: 0, ..request() }).starts_with("height"));
        assert!(refused(ImageRequest { steps: 0, ..request() }).starts_with("steps"));
        assert!(refused(ImageRequest {
            batch_count: 0,
            ..request()
        })
        .starts_with("batch_count"));
        assert!(refused(ImageRequest {
            sampler: "euler-ish".into(),
            ..request()
        })
        .starts_with("sampler"));
        assert!(refused(ImageRequest {
            scheduler: "weekly".into(),
            ..request()
        })
        .starts_with("scheduler"));
        assert!(refused(ImageRequest {
            cfg_scale: f32::NAN,
            ..request()
        })
        .starts_with("cfg_scale"));
        assert!(refused(ImageRequest {
            png_text: vec![(String::new(), "x".into())],
            ..request()
        })
        .starts_with("png_text"));
        assert!(refused(ImageRequest {
            seed: Some(-1),
            ..request()
        })
        .starts_with("seed"));
    }

    #[test]
    fn load_requests_need_existing_files() {
        let req = ImageLoadRequest {
            model: "m".into(),
            files: Default::default(),
            mmap: true,
            threads: 0,
            vae: VaePlacement::Cpu,
        };
        assert!(context_params(&req).unwrap_err().contains("no model file"));
        let files = vramd_protocol::ImageFiles {
            model: Some("/nonexistent/model.gguf".into()),
            ..Default::default()
        };
        let err = context_params(&ImageLoadRequest { files, ..req.clone() }).unwrap_err();
        assert!(err.contains("not found"), "{err}");
        let here = std::env::current_exe().unwrap();
        let files = vramd_protocol::ImageFiles {
            diffusion_model: Some(here.clone()),
            llm: Some(here),
            ..Default::default()
        };
        let p = context_params(&ImageLoadRequest { files, ..req }).unwrap();
        assert!(p.vae_on_cpu && p.mmap && p.model.is_none() && p.llm.is_some());
    }

    #[test]
    fn random_seeds_fit_31_bits() {
        for _ in 0..100 {
            let s = random_seed();
            assert!((0..1 << 31).contains(&s));
        }
    }

    /// Text encoders 50, diffusion model 100, VAE 30, each on `gpu`/`cpu` as given.
    fn components(te: &str, dm: &str, vae: &str) -> Vec<ComponentBytes> {
        [
            ("text_encoders", 50, te),
            ("diffusion_model", 100, dm),
            ("vae", 30, vae),
        ]
        .map(|(name, bytes, device)| ComponentBytes {
            name: name.into(),
            bytes,
            device: device.into(),
        })
        .to_vec()
    }

    fn peaks(sampling: (u64, u64), decode: (u64, u64)) -> Peaks {
        let peak = |(ram, vram)| PhasePeak { ram, vram };
        Peaks {
            sampling: peak(sampling),
            decode: peak(decode),
        }
    }

    #[test]
    fn a_vae_placed_on_the_cpu_of_a_cpu_build_is_host_memory_with_its_decode() {
        let cpu = components("cpu", "cpu", "cpu");
        let b = split(&cpu, VaePlacement::Cpu, &peaks((10, 0), (40, 0)));
        assert_eq!(b, Bytes::new(150, 0, 10).with_host(30 + 40));
        // The same build with the VAE on "the device": everything counts, as on a GPU.
        let b = split(&cpu, VaePlacement::Gpu, &peaks((10, 0), (40, 0)));
        assert_eq!(b, Bytes::new(180, 0, 40));
    }

    #[test]
    fn a_gpu_build_counts_on_the_device_what_is_there() {
        let all = split(
            &components("gpu", "gpu", "gpu"),
            VaePlacement::Gpu,
            &peaks((0, 10), (0, 40)),
        );
        assert_eq!(all, Bytes::new(180, 0, 40));
        let vae_on_cpu = split(
            &components("gpu", "gpu", "cpu"),
            VaePlacement::Cpu,
            &peaks((0, 10), (40, 0)),
        );
        assert_eq!(vae_on_cpu, Bytes::new(150, 0, 10).with_host(70));
        // A text encoder the library kept in RAM, with its buffer, is host memory too.
        let te_in_ram = split(
            &components("cpu", "gpu", "gpu"),
            VaePlacement::Gpu,
            &peaks((60, 10), (0, 40)),
        );
        assert_eq!(te_in_ram, Bytes::new(130, 0, 40).with_host(50 + 60));
    }

    #[test]
    fn taesd_placed_on_the_cpu_counts_like_a_vae_and_no_generation_holds_no_compute() {
        let mut c = components("cpu", "cpu", "cpu");
        c[2].name = "taesd".into();
        assert_eq!(
            split(&c, VaePlacement::Cpu, &Peaks::default()),
            Bytes::new(150, 0, 0).with_host(30)
        );
    }
}
