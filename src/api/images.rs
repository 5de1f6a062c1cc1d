//! Image generation: OpenAI's `POST /v1/images/generations` and the AUTOMATIC1111 API that
//! WebUIs speak (`/sdapi/v1/txt2img`, `sd-models`, `progress`, `interrupt`).
//!
//! Both front ends become one [`Images`] (the worker protocol's [`ImageRequest`] with the
//! model, the count and the caller's VAE wish), validated against the model's limits,
//! granted by the arbiter (which decides the VAE placement and follows the progress) and
//! run one image at a time on the worker, so each PNG carries its own seed in the
//! `parameters` text chunk, as A1111 writes it.

use std::time::Instant;

use axum::extract::{Extension, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vramd_protocol::{ImageEvent, ImageRequest, VaePlacement};

use super::{ApiError, ApiJson, AppState, RequestId};
use crate::arbiter::{Grant, Work};
use crate::config::{ImageOptions, ModelKind};
use crate::worker::client::CallError;

/// stable-diffusion.cpp's samplers, and the A1111 names that map to them.
pub const SAMPLERS: &[(&str, &[&str])] = &[
    ("euler_a", &["Euler a", "euler_a", "k_euler_a"]),
    ("euler", &["Euler", "euler", "k_euler"]),
    ("heun", &["Heun", "heun"]),
    ("dpm2", &["DPM2", "dpm2"]),
    ("dpm++2s_a", &["DPM++ 2S a", "dpm++2s_a"]),
    ("dpm++2m", &["DPM++ 2M", "dpm++2m"]),
    ("dpm++2mv2", &["DPM++ 2M v2", "dpm++2mv2"]),
    ("ipndm", &["iPNDM", "ipndm"]),
    ("ipndm_v", &["iPNDM_V", "ipndm_v"]),
    ("lcm", &["LCM", "lcm"]),
    ("ddim_trailing", &["DDIM", "ddim", "ddim_trailing"]),
    ("tcd", &["TCD", "tcd"]),
];
/// One scheduler as A1111 lists it (`GET /sdapi/v1/schedulers`), and stable-diffusion.cpp's
/// name for it. Only schedulers the engine has are here (its `scheduler_t`, less `ltx2`,
/// which is for video): A1111's `polyexponential`, `ddim` and `beta` have no counterpart.
pub struct Scheduler {
    /// What sd.cpp's `str_to_scheduler` takes.
    pub engine: &'static str,
    /// A1111's identifier (what SillyTavern sends back), then its label.
    pub name: &'static str,
    pub label: &'static str,
    pub aliases: &'static [&'static str],
    /// A1111's `default_rho` (-1: none).
    pub rho: f32,
}

const fn sched(
    engine: &'static str,
    name: &'static str,
    label: &'static str,
    aliases: &'static [&'static str],
    rho: f32,
) -> Scheduler {
    Scheduler {
        engine,
        name,
        label,
        aliases,
        rho,
    }
}

/// A1111's "normal" and "uniform" are both the model's own discretisation of its training
/// timesteps, which is what sd.cpp calls `discrete`: one entry, so the list offers each
/// real schedule once, with both A1111 spellings accepted.
pub const SCHEDULERS: &[Scheduler] = &[
    sched("", "automatic", "Automatic", &[], -1.0),
    sched("discrete", "normal", "Normal", &["uniform", "discrete"], -1.0),
    sched("karras", "karras", "Karras", &[], 7.0),
    sched("exponential", "exponential", "Exponential", &[], -1.0),
    sched("sgm_uniform", "sgm_uniform", "SGM Uniform", &["SGMUniform"], -1.0),
    sched("simple", "simple", "Simple", &[], -1.0),
    sched("ays", "align_your_steps", "Align Your Steps", &["ays"], -1.0),
    sched("kl_optimal", "kl_optimal", "KL Optimal", &[], -1.0),
    sched("gits", "gits", "GITS", &[], -1.0),
    sched("smoothstep", "smoothstep", "Smoothstep", &[], -1.0),
    sched("lcm", "lcm", "LCM", &[], -1.0),
    sched("bong_tangent", "bong_tangent", "Bong Tangent", &[], -1.0),
];

pub const MAX_STEPS: u32 = 150;

/// One image request, whichever API it came from: what the worker is sent for each image
/// (`seed` is the first image's, `vae` is set by the grant), and what only the daemon uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub model: String,
    pub request: ImageRequest,
    /// vramd's extension: force the VAE placement (`gpu`, `tiled`, `cpu`) instead of `auto`.
    pub vae: Option<VaePlacement>,
}

impl Images {
    fn count(&self) -> u32 {
        self.request.batch_count
    }

    fn seed(&self) -> i64 {
        self.request.seed.unwrap_or(-1)
    }
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// Checks a request against the model's limits. Pure.
pub fn validate(
    images: &Images,
    limits: &ImageOptions,
    size_param: (&str, &str),
    count_param: &str,
) -> Result<(), ApiError> {
    let (job, count) = (&images.request, images.count());
    for (value, param) in [(job.width, size_param.0), (job.height, size_param.1)] {
        if value == 0 || value % limits.size_multiple != 0 {
            return Err(invalid(
                param,
                format!(
                    "`{param}` must be a positive multiple of {} for this model, got {value}",
                    limits.size_multiple
                ),
            ));
        }
        if value > limits.max_size {
            return Err(invalid(
                param,
                format!("`{param}` must be at most {}, got {value}", limits.max_size),
            ));
        }
    }
    if !(1..=MAX_STEPS).contains(&job.steps) {
        return Err(invalid(
            "steps",
            format!("`steps` must be between 1 and {MAX_STEPS}, got {}", job.steps),
        ));
    }
    if !(1..=limits.max_batch).contains(&count) {
        return Err(invalid(
            count_param,
            format!(
                "`{count_param}` must be between 1 and {}, got {}",
                limits.max_batch, count
            ),
        ));
    }
    if !(0.0..=30.0).contains(&job.cfg_scale) {
        return Err(invalid(
            "cfg_scale",
            format!("`cfg_scale` must be between 0 and 30, got {}", job.cfg_scale),
        ));
    }
    if job.prompt.is_empty() {
        return Err(invalid("prompt", "`prompt` must not be empty"));
    }
    for (text, param) in [(&job.prompt, "prompt"), (&job.negative_prompt, "negative_prompt")] {
        if text.len() > MAX_PROMPT_BYTES {
            return Err(invalid(
                param,
                format!(
                    "`{param}` is {} bytes; at most {MAX_PROMPT_BYTES} are accepted",
                    text.len()
                ),
            ));
        }
    }
    Ok(())
}

/// The longest prompt an image request may carry: far past anything a text encoder reads
/// (CLIP takes 77 tokens per chunk), and well within what the worker's engine thread can
/// parse (`vramd_worker_kit::ENGINE_STACK`).
pub const MAX_PROMPT_BYTES: usize = 256 << 10;

/// Maps a sampler name (sd.cpp's or A1111's) to sd.cpp's; `None` for the default.
pub fn sampler(name: Option<&str>, param: &str) -> Result<String, ApiError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok("euler_a".into());
    };
    SAMPLERS
        .iter()
        .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .map(|(s, _)| (*s).to_owned())
        .ok_or_else(|| {
            let known: Vec<&str> = SAMPLERS.iter().map(|(s, _)| *s).collect();
            invalid(param, format!("unknown sampler {name:?}; known: {}", known.join(", ")))
        })
}

/// The `vae` extension: `auto` (or absent) lets the arbiter choose.
pub fn vae(name: Option<&str>) -> Result<Option<VaePlacement>, ApiError> {
    match name {
        None | Some("auto") => Ok(None),
        Some("gpu") => Ok(Some(VaePlacement::Gpu)),
        Some("tiled") => Ok(Some(VaePlacement::Tiled)),
        Some("cpu") => Ok(Some(VaePlacement::Cpu)),
        Some(other) => Err(invalid(
            "vae",
            format!("`vae` must be auto, gpu, tiled or cpu, got {other:?}"),
        )),
    }
}

/// Maps a scheduler name (A1111's name, label or alias, or sd.cpp's; any case) to sd.cpp's;
/// empty (absent, `Automatic`) lets the engine pick the model's default.
pub fn scheduler(name: Option<&str>) -> Result<String, ApiError> {
    let Some(n) = name.filter(|n| !n.is_empty()) else {
        return Ok(String::new());
    };
    SCHEDULERS
        .iter()
        .find(|s| {
            [s.engine, s.name, s.label]
                .iter()
                .chain(s.aliases)
                .any(|a| !a.is_empty() && a.eq_ignore_ascii_case(n))
        })
        .map(|s| s.engine.to_owned())
        .ok_or_else(|| {
            let known: Vec<&str> = SCHEDULERS.iter().map(|s| s.name).collect();
            invalid(
                "scheduler",
                format!("unknown scheduler {n:?}; known: {}", known.join(", ")),
            )
        })
}

/// A1111's `parameters` text for one image.
pub fn parameters_text(images: &Images, seed: i64) -> String {
    let job = &images.request;
    let mut s = job.prompt.clone();
    if !job.negative_prompt.is_empty() {
        s.push_str(&format!("\nNegative prompt: {}", job.negative_prompt));
    }
    s.push_str(&format!(
        "\nSteps: {}, Sampler: {}, CFG scale: {}, Seed: {seed}, Size: {}x{}, Model: {}",
        job.steps, job.sampler, job.cfg_scale, job.width, job.height, images.model
    ));
    if !job.scheduler.is_empty() {
        s.push_str(&format!(", Schedule type: {}", job.scheduler));
    }
    s
}

/// A seed for "random" (-1 / absent): varied, without a random-number crate.
fn random_seed() -> i64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ((t as u64 ^ (u64::from(std::process::id()) << 32)) % (1 << 31)) as i64
}

/// The configured image model `model`, or the error to answer.
pub fn image_model<'a>(state: &'a AppState, model: &str) -> Result<&'a ImageOptions, ApiError> {
    let cfg = state.config.model(model).ok_or_else(|| {
        let known: Vec<&str> = state.config.image_models().map(|m| m.name.as_str()).collect();
        ApiError::UnknownImageModel(model.to_owned(), known.join(", "))
    })?;
    match (&cfg.image_options, cfg.kind) {
        (Some(o), ModelKind::Image) => Ok(o),
        _ => Err(invalid(
            "model",
            format!("model {model:?} is an LLM; use /v1/chat/completions"),
        )),
    }
}

/// What a finished request produced.
pub struct Generated {
    pub images: Vec<(i64, String)>,
    pub vramd: Value,
}

/// Gets a grant of the model and generates the images one after another.
pub async fn run(state: &AppState, mut images: Images, request_id: &str) -> Result<Generated, ApiError> {
    if images.seed() < 0 {
        images.request.seed = Some(random_seed());
    }
    images.request.request_id = request_id.to_owned();
    let queued = Instant::now();
    let work = Work::Image {
        width: images.request.width,
        height: images.request.height,
        count: images.count(),
        vae: images.vae,
    };
    let (mut grant, first) = state
        .arbiter
        .images(&images.model, work, &one_image(&images, 0))
        .await?;
    let queued_ms = queued.elapsed().as_millis() as u64;
    let result = generate_all(&images, &mut grant, first).await;
    let (made, switch_ms) = match result {
        Ok(r) => r,
        Err(_) if grant.interrupted() => return Err(ApiError::Interrupted),
        Err(e) => {
            grant.fail(&e);
            return Err(e);
        }
    };
    let seeds: Vec<i64> = made.iter().map(|(s, _)| *s).collect();
    let vramd = json!({
        "vae": grant.vae(),
        "actions": grant.actions,
        "load_ms": grant.load_ms,
        "queued_ms": queued_ms,
        "vae_switch_ms": switch_ms,
        "seeds": seeds,
    });
    Ok(Generated { images: made, vramd })
}

/// The worker request for image `i` of the batch: its own seed and `parameters` text.
fn one_image(images: &Images, i: u32) -> ImageRequest {
    let seed = images.seed() + i64::from(i);
    ImageRequest {
        seed: Some(seed),
        batch_count: 1,
        png_text: vec![("parameters".into(), parameters_text(images, seed))],
        ..images.request.clone()
    }
}

async fn generate_all(
    images: &Images,
    grant: &mut Grant,
    first: crate::arbiter::ImageRun,
) -> Result<(Vec<(i64, String)>, u64), ApiError> {
    let mut made = Vec::new();
    let mut switch_ms = 0;
    let mut run = first;
    for i in 0..images.count() {
        if i > 0 {
            run = grant.image(one_image(images, i)).await.map_err(CallError::from)?;
        }
        switch_ms += run.switch_ms;
        loop {
            match run.next().await? {
                Some(ImageEvent::Progress { .. } | ImageEvent::Started { .. }) => {}
                Some(ImageEvent::Image { seed, png_base64, .. }) => made.push((seed, png_base64)),
                Some(ImageEvent::Done { health, .. }) => {
                    grant.image_done(health);
                    break;
                }
                Some(ImageEvent::Error { error }) => return Err(CallError::Worker(error, Default::default()).into()),
                None => return Err(CallError::Transport("the worker ended the stream early".into()).into()),
            }
        }
    }
    Ok((made, switch_ms))
}

// ---- OpenAI ----

#[derive(Deserialize)]
pub struct OpenAiRequest {
    /// Absent, or one of OpenAI's own [`OPENAI_ALIASES`]: the default image model.
    model: Option<String>,
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    n: Option<u32>,
    size: Option<String>,
    response_format: Option<String>,
    steps: Option<u32>,
    cfg_scale: Option<f32>,
    seed: Option<i64>,
    sampler: Option<String>,
    scheduler: Option<String>,
    /// vramd's extension: `auto` (default), `gpu`, `tiled` or `cpu`.
    vae: Option<String>,
    /// `png` only: that is what the worker writes.
    output_format: Option<String>,
    // OpenAI's `quality`, `style`, `background`, `user`, `moderation` are accepted and
    // ignored (unknown fields are): none has a stable-diffusion.cpp counterpart.
}

/// OpenAI's model names, which clients send when the user left the model empty (Open
/// WebUI's OpenAI engine sends `dall-e-2`): the default image model serves them, unless a
/// configured model has that name.
pub const OPENAI_ALIASES: &[&str] = &["dall-e-2", "dall-e-3", "gpt-image-1"];

/// The image model an OpenAI request gets: the one it names, else (absent, empty or an
/// OpenAI alias) the default image model.
fn openai_model(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
    let named = model.filter(|m| !m.is_empty());
    match named {
        Some(m) if state.config.model(m).is_some() || !OPENAI_ALIASES.contains(&m) => Ok(m.to_owned()),
        _ => state
            .config
            .default_image_model()
            .map(|m| m.name.clone())
            .ok_or_else(|| invalid("model", "no image model is configured")),
    }
}

/// OpenAI's `size`: `WIDTHxHEIGHT`, or `auto` (absent too): 512×512.
fn openai_size(size: Option<&str>) -> Result<(u32, u32), ApiError> {
    match size {
        None | Some("auto") => Ok((512, 512)),
        Some(s) => s
            .split_once('x')
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
            .ok_or_else(|| {
                invalid(
                    "size",
                    format!("`size` must be \"WIDTHxHEIGHT\" or \"auto\", got {s:?}"),
                )
            }),
    }
}

pub async fn openai(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<OpenAiRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = openai_model(&state, req.model.as_deref())?;
    let limits = image_model(&state, &model)?;
    if let Some(f) = req.output_format.as_deref().filter(|f| !f.eq_ignore_ascii_case("png")) {
        return Err(invalid(
            "output_format",
            format!("only \"png\" is supported, got {f:?}"),
        ));
    }
    if let Some(f) = req.response_format.as_deref().filter(|f| *f != "b64_json") {
        return Err(invalid(
            "response_format",
            format!("only \"b64_json\" is supported, got {f:?}"),
        ));
    }
    let (width, height) = openai_size(req.size.as_deref())?;
    let images = Images {
        model,
        request: ImageRequest {
            request_id: id.0.clone(),
            prompt: req.prompt,
            negative_prompt: req.negative_prompt,
            width,
            height,
            steps: req.steps.unwrap_or(20),
            cfg_scale: req.cfg_scale.unwrap_or(7.0),
            seed: req.seed,
            sampler: sampler(req.sampler.as_deref(), "sampler")?,
            scheduler: scheduler(req.scheduler.as_deref())?,
            batch_count: req.n.unwrap_or(1),
            vae: VaePlacement::default(),
            png_text: Vec::new(),
        },
        vae: vae(req.vae.as_deref())?,
    };
    validate(&images, limits, ("size", "size"), "n")?;
    let out = run(&state, images, &id.0).await?;
    let data: Vec<Value> = out.images.iter().map(|(_, b64)| json!({"b64_json": b64})).collect();
    Ok(Json(
        json!({"created": crate::registry::unix_secs(std::time::SystemTime::now()), "data": data, "vramd": out.vramd}),
    ))
}

// ---- AUTOMATIC1111 ----

#[derive(Deserialize)]
pub struct Txt2Img {
    prompt: String,
    #[serde(default)]
    negative_prompt: String,
    width: Option<u32>,
    height: Option<u32>,
    steps: Option<u32>,
    cfg_scale: Option<f32>,
    seed: Option<i64>,
    sampler_name: Option<String>,
    sampler_index: Option<String>,
    scheduler: Option<String>,
    /// vramd's extension: `auto` (default), `gpu`, `tiled` or `cpu`.
    vae: Option<String>,
    batch_size: Option<u32>,
    n_iter: Option<u32>,
    /// vramd's own: which image model (else `override_settings.sd_model_checkpoint`, else
    /// the checkpoint chosen with `POST /sdapi/v1/options`, else the default image model).
    model: Option<String>,
    override_settings: Option<Value>,
    /// Hires fix: not there yet, so `true` is a 400 rather than an image at the base size.
    #[serde(default)]
    enable_hr: bool,
    // Everything else A1111 takes (`restore_faces`, `save_images`, `send_images`, `hr_*`
    // with `enable_hr` off, `override_settings_restore_afterwards`, …) is accepted and ignored.
}

/// The A1111 request as an [`Images`]: the model as [`super::a1111::txt2img_model`] picks it.
fn txt2img_images(state: &AppState, id: &str, req: Txt2Img) -> Result<Images, ApiError> {
    if req.enable_hr {
        return Err(invalid(
            "enable_hr",
            "hires fix (`enable_hr`) is not supported by vramd yet; turn it off",
        ));
    }
    let checkpoint = req
        .override_settings
        .as_ref()
        .and_then(|o| o.get("sd_model_checkpoint"))
        .and_then(Value::as_str);
    let model = super::a1111::txt2img_model(state, req.model.as_deref(), checkpoint)?;
    Ok(Images {
        model,
        request: ImageRequest {
            request_id: id.to_owned(),
            prompt: req.prompt,
            negative_prompt: req.negative_prompt,
            width: req.width.unwrap_or(512),
            height: req.height.unwrap_or(512),
            steps: req.steps.unwrap_or(20),
            cfg_scale: req.cfg_scale.unwrap_or(7.0),
            seed: req.seed,
            sampler: sampler(
                req.sampler_name.as_deref().or(req.sampler_index.as_deref()),
                "sampler_name",
            )?,
            scheduler: scheduler(req.scheduler.as_deref())?,
            batch_count: req.batch_size.unwrap_or(1).saturating_mul(req.n_iter.unwrap_or(1)),
            vae: VaePlacement::default(),
            png_text: Vec::new(),
        },
        vae: vae(req.vae.as_deref())?,
    })
}

pub async fn txt2img(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<Txt2Img>,
) -> Result<Json<Value>, ApiError> {
    let images = txt2img_images(&state, &id.0, req)?;
    let limits = image_model(&state, &images.model)?;
    validate(&images, limits, ("width", "height"), "batch_size")?;
    let job = &images.request;
    let parameters = json!({
        "prompt": job.prompt, "negative_prompt": job.negative_prompt, "width": job.width, "height": job.height,
        "steps": job.steps, "cfg_scale": job.cfg_scale, "seed": images.seed(), "sampler_name": job.sampler,
        "batch_size": images.count(), "model": images.model,
    });
    let template = images.clone();
    let out = run(&state, images, &id.0).await?;
    let seeds: Vec<i64> = out.images.iter().map(|(s, _)| *s).collect();
    let job = &template.request;
    let n = seeds.len();
    let info = json!({
        "prompt": job.prompt, "negative_prompt": job.negative_prompt,
        "all_prompts": vec![&job.prompt; n], "all_negative_prompts": vec![&job.negative_prompt; n],
        "seed": seeds.first(), "all_seeds": seeds, "subseed": -1, "all_subseeds": vec![-1; n], "subseed_strength": 0,
        "width": job.width, "height": job.height, "sampler_name": job.sampler, "scheduler": job.scheduler,
        "cfg_scale": job.cfg_scale, "steps": job.steps, "batch_size": n, "n_iter": 1, "index_of_first_image": 0,
        "restore_faces": false, "styles": [], "clip_skip": 1, "sd_model_name": template.model, "sd_model_hash": null,
        "infotexts": seeds.iter().map(|s| parameters_text(&template, *s)).collect::<Vec<_>>(),
        "vramd": out.vramd,
    });
    let images: Vec<&str> = out.images.iter().map(|(_, b)| b.as_str()).collect();
    Ok(Json(
        json!({"images": images, "parameters": parameters, "info": info.to_string()}),
    ))
}

/// A1111's progress of the image running now, read from the arbiter's state as of this
/// request (a client that just got its image must not see it still running).
pub async fn progress(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.arbiter.current().await?;
    let running = snapshot
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Image)
        .flat_map(|m| m.running.iter().map(move |r| (m.name.as_str(), r)))
        .next();
    let Some((model, r)) = running else {
        return Ok(Json(
            json!({"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": 0, "job": "", "sampling_step": 0,
            "sampling_steps": 0, "interrupted": false, "skipped": false}, "current_image": null, "textinfo": null}),
        ));
    };
    let p = r.progress.unwrap_or_default();
    let total = f64::from(p.images * p.steps.max(1));
    let done = f64::from(p.image * p.steps.max(1) + p.step);
    let fraction = if total > 0.0 { done / total } else { 0.0 };
    let elapsed = crate::clock::wall_ms().saturating_sub(r.started_ms) as f64 / 1000.0;
    let eta = if fraction > 0.0 {
        elapsed / fraction - elapsed
    } else {
        0.0
    };
    Ok(Json(json!({
        "progress": fraction, "eta_relative": eta,
        "state": {"job_count": 1, "job": model, "job_no": p.image, "sampling_step": p.step, "sampling_steps": p.steps,
                  "interrupted": r.interrupted, "skipped": false},
        "current_image": null, "textinfo": null,
    })))
}

/// Stops the running generation: stable-diffusion.cpp has no cancel call, so the worker is
/// stopped; the next request starts a new one (weights from the page cache). Not privileged:
/// stopping an image is part of generating (a WebUI's Stop button, over TCP), and all it
/// costs others is that image; loading, unloading and pinning stay privileged. It stops the
/// whole request (every image of the batch): `skip` is the same call.
pub async fn interrupt(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.arbiter.interrupt(None).await? {
        Some(model) => Ok(Json(json!({"interrupted": true, "model": model}))),
        None => Ok(Json(json!({"interrupted": false}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> ImageRequest {
        ImageRequest {
            request_id: "r".into(),
            prompt: "a cat".into(),
            negative_prompt: "blurry".into(),
            width: 512,
            height: 768,
            steps: 20,
            cfg_scale: 7.0,
            seed: Some(42),
            sampler: "euler_a".into(),
            scheduler: String::new(),
            batch_count: 1,
            vae: VaePlacement::default(),
            png_text: Vec::new(),
        }
    }

    fn job() -> Images {
        with(request())
    }

    fn with(request: ImageRequest) -> Images {
        Images {
            model: "sd".into(),
            request,
            vae: None,
        }
    }

    fn param(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_name_the_field() {
        let limits = ImageOptions {
            size_multiple: 64,
            max_size: 1024,
            max_batch: 4,
        };
        let v = |j: Images| validate(&j, &limits, ("width", "height"), "batch_size");
        let r = request;
        assert!(v(job()).is_ok());
        assert_eq!(param(v(with(ImageRequest { width: 500, ..r() })).unwrap_err()), "width");
        assert_eq!(
            param(v(with(ImageRequest { height: 2048, ..r() })).unwrap_err()),
            "height"
        );
        assert_eq!(param(v(with(ImageRequest { steps: 0, ..r() })).unwrap_err()), "steps");
        assert_eq!(param(v(with(ImageRequest { steps: 151, ..r() })).unwrap_err()), "steps");
        let five = with(ImageRequest { batch_count: 5, ..r() });
        assert_eq!(param(v(five).unwrap_err()), "batch_size");
        let negative = with(ImageRequest { cfg_scale: -1.0, ..r() });
        assert_eq!(param(v(negative).unwrap_err()), "cfg_scale");
        let empty = with(ImageRequest {
            prompt: String::new(),
            ..r()
        });
        assert_eq!(param(v(empty).unwrap_err()), "prompt");
    }

    #[test]
    fn samplers_accept_both_spellings() {
        assert_eq!(sampler(Some("Euler a"), "s").unwrap(), "euler_a");
        assert_eq!(sampler(Some("dpm++2m"), "s").unwrap(), "dpm++2m");
        assert_eq!(sampler(None, "s").unwrap(), "euler_a");
        assert_eq!(
            param(sampler(Some("magic"), "sampler_name").unwrap_err()),
            "sampler_name"
        );
        assert_eq!(scheduler(Some("Karras")).unwrap(), "karras");
        assert_eq!(scheduler(Some("Automatic")).unwrap(), "");
        assert!(scheduler(Some("nope")).is_err());
    }

    #[test]
    fn a1111_scheduler_names_map_to_the_engine_s() {
        // SillyTavern's default, A1111's names and labels, sd.cpp's own; any case.
        for (given, engine) in [
            ("normal", "discrete"),
            ("Uniform", "discrete"),
            ("discrete", "discrete"),
            ("automatic", ""),
            ("KARRAS", "karras"),
            ("Exponential", "exponential"),
            ("SGM Uniform", "sgm_uniform"),
            ("sgmuniform", "sgm_uniform"),
            ("Simple", "simple"),
            ("Align Your Steps", "ays"),
            ("align_your_steps", "ays"),
            ("ays", "ays"),
            ("KL Optimal", "kl_optimal"),
        ] {
            assert_eq!(scheduler(Some(given)).unwrap(), engine, "{given}");
        }
        // What the engine lacks is a 400 that lists what it has.
        for missing in ["polyexponential", "beta", "ddim"] {
            let ApiError::InvalidRequest { message, param } = scheduler(Some(missing)).unwrap_err() else {
                panic!()
            };
            assert_eq!(param.as_deref(), Some("scheduler"));
            assert!(message.contains("known: automatic, normal, karras"), "{message}");
        }
        // Every engine name in the table is one sd.cpp's `str_to_scheduler` knows.
        let engine = [
            "discrete",
            "karras",
            "exponential",
            "ays",
            "gits",
            "sgm_uniform",
            "simple",
            "smoothstep",
            "kl_optimal",
            "lcm",
            "bong_tangent",
        ];
        assert!(SCHEDULERS
            .iter()
            .all(|s| s.engine.is_empty() || engine.contains(&s.engine)));
    }

    #[test]
    fn openai_sizes() {
        assert_eq!(openai_size(None).unwrap(), (512, 512));
        assert_eq!(openai_size(Some("auto")).unwrap(), (512, 512));
        assert_eq!(openai_size(Some("768x512")).unwrap(), (768, 512));
        assert_eq!(param(openai_size(Some("big")).unwrap_err()), "size");
    }

    #[test]
    fn parameters_text_is_a1111_s() {
        assert_eq!(
            parameters_text(&job(), 43),
            "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: euler_a, CFG scale: 7, Seed: 43, Size: 512x768, Model: sd"
        );
    }
}
