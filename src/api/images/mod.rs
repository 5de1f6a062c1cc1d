//! Image generation: OpenAI's `POST /v1/images/generations` and `/v1/images/edits`
//! ([`openai`], [`edit`]) and the AUTOMATIC1111 API that WebUIs speak ([`txt2img`]:
//! `txt2img`, `progress`, `interrupt`; [`edit`]: `img2img`).
//!
//! Every front end becomes one [`Images`] (the worker protocol's [`ImageRequest`] with the
//! model, the count and the caller's VAE wish), validated against the model's limits, its
//! prompt's `<lora:…>` tags resolved in the model's LoRA folder ([`lora`]), its pictures
//! decoded and fitted here ([`pixels`]), granted by the arbiter (which decides the VAE
//! placement for the largest size the request reaches, the hires pass's included, and
//! follows the progress) and run one image at a time on the worker, so each PNG carries its
//! own seed in the `parameters` text chunk, as A1111 writes it.

use std::time::Instant;

use serde_json::{json, Value};
use vramd_protocol::{ImageEvent, ImageRequest, VaePlacement};

use super::{ApiError, AppState};
use crate::arbiter::{Grant, Work};
use crate::config::{ImageOptions, ModelKind};
use crate::worker::client::CallError;

pub mod edit;
pub mod files;
pub mod lora;
pub mod openai;
pub mod pixels;
pub mod txt2img;

pub use openai::openai;
pub use txt2img::{interrupt, progress, txt2img};

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

/// Hires fix's upscalers: stable-diffusion.cpp's, which are named as A1111 names them (its
/// `Model` upscaler needs an upscaler model file, which vramd does not configure).
pub const HIRES_UPSCALERS: &[&str] = &[
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
    "Lanczos",
    "Nearest",
];

/// An upscaler name as A1111 spells it (any case) as stable-diffusion.cpp's; absent or empty
/// is A1111's default, `Latent`.
pub fn hires_upscaler(name: Option<&str>) -> Result<String, ApiError> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Ok("Latent".into());
    };
    // A1111's "None" upscaler is a plain resize of the first pass's picture before the
    // second: the engine's Lanczos.
    if name.eq_ignore_ascii_case("none") {
        return Ok("Lanczos".into());
    }
    HIRES_UPSCALERS
        .iter()
        .find(|u| u.eq_ignore_ascii_case(name))
        .map(|u| (*u).to_owned())
        .ok_or_else(|| {
            invalid(
                "hr_upscaler",
                format!(
                    "hires upscaler {name:?} is not available; available: {}",
                    HIRES_UPSCALERS.join(", ")
                ),
            )
        })
}

/// The worker's request for `prompt` with A1111's defaults (512×512, 20 steps, CFG 7,
/// `euler_a`, the engine's scheduler, a random seed, one image, txt2img): each front end
/// sets what its API says over these.
pub fn defaults(request_id: &str, prompt: String) -> ImageRequest {
    ImageRequest {
        request_id: request_id.to_owned(),
        prompt,
        negative_prompt: String::new(),
        width: 512,
        height: 512,
        steps: 20,
        cfg_scale: 7.0,
        seed: None,
        sampler: "euler_a".into(),
        scheduler: String::new(),
        batch_count: 1,
        vae: VaePlacement::default(),
        png_text: Vec::new(),
        source: None,
        hires: None,
        loras: Vec::new(),
    }
}

/// One image request, whichever API it came from: what the worker is sent for each image
/// (`seed` is the first image's, `vae` is set by the grant), and what only the daemon uses.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub model: String,
    /// The request for the worker: its prompt without `<lora:…>` tags (see [`Images::loras`]).
    pub request: ImageRequest,
    /// The prompt as the client wrote it, tags included: what `parameters` shows, as A1111.
    pub prompt: String,
    /// vramd's extension: force the VAE placement (`gpu`, `tiled`, `cpu`) instead of `auto`.
    pub vae: Option<VaePlacement>,
}

impl Images {
    /// A request for `model`; the prompt's LoRA tags are resolved by [`Images::loras`].
    pub fn new(model: String, request: ImageRequest, vae: Option<VaePlacement>) -> Images {
        Images {
            model,
            prompt: request.prompt.clone(),
            request,
            vae,
        }
    }

    /// Takes the prompt's `<lora:name:weight>` tags out of the text the encoder sees and
    /// resolves them in the model's `lora_dir`.
    pub fn loras(&mut self, limits: &ImageOptions) -> Result<(), ApiError> {
        let (text, tags) = lora::parse(&self.prompt)?;
        self.request.loras = lora::resolve(&self.model, limits.lora_dir.as_deref(), &tags)?;
        self.request.prompt = text;
        Ok(())
    }

    /// The largest picture the request makes: the hires pass's, else its own size.
    pub fn size(&self) -> (u32, u32) {
        let r = &self.request;
        r.hires.as_ref().map_or((r.width, r.height), |h| (h.width, h.height))
    }

    fn count(&self) -> u32 {
        self.request.batch_count
    }

    fn seed(&self) -> i64 {
        self.request.seed.unwrap_or(-1)
    }
}

pub(super) fn invalid(param: &str, message: impl Into<String>) -> ApiError {
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
    let (hires_w, hires_h) = images.size();
    let sizes = [
        (job.width, size_param.0),
        (job.height, size_param.1),
        (hires_w, "hr_resize_x"),
        (hires_h, "hr_resize_y"),
    ];
    for (value, param) in sizes {
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
    let mut s = images.prompt.clone();
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
    if let Some(source) = &job.source {
        s.push_str(&format!(", Denoising strength: {}", source.strength));
    }
    if let Some(h) = &job.hires {
        s.push_str(&format!(
            ", Denoising strength: {}, Hires upscale: {}x{}, Hires steps: {}, Hires upscaler: {}",
            h.denoising_strength, h.width, h.height, h.steps, h.upscaler
        ));
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

/// The latest preview of each image request being made, by request id: A1111's
/// `current_image`. A request's entry is removed when it ends, however it ends.
#[derive(Default)]
pub struct Previews(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Previews {
    fn set(&self, request_id: &str, png_base64: String) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(request_id.to_owned(), png_base64);
    }

    pub fn get(&self, request_id: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(request_id)
            .cloned()
    }

    fn remove(&self, request_id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(request_id);
    }
}

/// Removes a request's preview when dropped (its handler ended, or its client left).
struct PreviewGuard<'a>(&'a Previews, &'a str);

impl Drop for PreviewGuard<'_> {
    fn drop(&mut self) {
        self.0.remove(self.1);
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
    let (width, height) = images.size();
    let work = Work::Image {
        width,
        height,
        count: images.count(),
        vae: images.vae,
    };
    let (mut grant, first) = state
        .arbiter
        .images(&images.model, work, &one_image(&images, 0))
        .await?;
    let queued_ms = queued.elapsed().as_millis() as u64;
    let _preview = PreviewGuard(&state.previews, request_id);
    let result = generate_all(&images, &mut grant, first, &state.previews).await;
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
    previews: &Previews,
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
                Some(ImageEvent::Preview { png_base64, .. }) => previews.set(&images.request.request_id, png_base64),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::images::openai::openai_size;

    fn request() -> ImageRequest {
        ImageRequest {
            negative_prompt: "blurry".into(),
            height: 768,
            seed: Some(42),
            ..defaults("r", "a cat".into())
        }
    }

    fn job() -> Images {
        with(request())
    }

    fn with(request: ImageRequest) -> Images {
        Images::new("sd".into(), request, None)
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
            lora_dir: None,
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
    fn hires_upscalers_are_the_engine_s_under_a1111_s_names() {
        assert_eq!(hires_upscaler(None).unwrap(), "Latent");
        assert_eq!(hires_upscaler(Some("")).unwrap(), "Latent");
        assert_eq!(
            hires_upscaler(Some("latent (NEAREST-exact)")).unwrap(),
            "Latent (nearest-exact)"
        );
        assert_eq!(hires_upscaler(Some("None")).unwrap(), "Lanczos");
        assert_eq!(param(hires_upscaler(Some("ESRGAN_4x")).unwrap_err()), "hr_upscaler");
        // A hires pass past the model's limit names the hires field.
        let limits = ImageOptions::default();
        let mut big = job();
        big.request.hires = Some(vramd_protocol::Hires {
            upscaler: "Latent".into(),
            width: 4096,
            height: 512,
            steps: 0,
            denoising_strength: 0.7,
        });
        assert_eq!(big.size(), (4096, 512));
        assert_eq!(
            param(validate(&big, &limits, ("width", "height"), "n").unwrap_err()),
            "hr_resize_x"
        );
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
