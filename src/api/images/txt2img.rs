//! AUTOMATIC1111's `txt2img` (hires fix included), `progress` and `interrupt`, and the answer
//! `txt2img` and `img2img` share: `images`, `parameters` and `info` as A1111 writes them.

use axum::extract::{Extension, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vramd_protocol::{Hires, ImageRequest};

use super::{
    defaults, hires_upscaler, image_model, invalid, parameters_text, run, sampler, scheduler, vae, validate, Generated,
    Images,
};
use crate::api::{ApiError, ApiJson, AppState, RequestId};
use crate::config::{ImageOptions, ModelKind};

/// What `txt2img` and `img2img` share: A1111's generation fields, and vramd's own.
#[derive(Deserialize)]
pub struct A1111Request {
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
    #[serde(flatten)]
    unsupported: Unsupported,
    // Everything else A1111 takes (`save_images`, `send_images`, `hr_*` with `enable_hr`
    // off, `override_settings_restore_afterwards`, `do_not_save_grid`, …) does not change
    // the image: accepted and ignored.
}

impl A1111Request {
    /// The request as an [`Images`] for its model (as [`crate::api::a1111::txt2img_model`]
    /// picks it), with that model's limits; txt2img until the caller adds more.
    pub fn images<'s>(&self, state: &'s AppState, id: &str) -> Result<(Images, &'s ImageOptions), ApiError> {
        let checkpoint = self
            .override_settings
            .as_ref()
            .and_then(|o| o.get("sd_model_checkpoint"))
            .and_then(Value::as_str);
        let model = crate::api::a1111::txt2img_model(state, self.model.as_deref(), checkpoint)?;
        let limits = image_model(state, &model)?;
        self.unsupported.check()?;
        let request = ImageRequest {
            negative_prompt: self.negative_prompt.clone(),
            width: self.width.unwrap_or(512),
            height: self.height.unwrap_or(512),
            steps: self.steps.unwrap_or(20),
            cfg_scale: self.cfg_scale.unwrap_or(7.0),
            seed: self.seed,
            sampler: sampler(
                self.sampler_name.as_deref().or(self.sampler_index.as_deref()),
                "sampler_name",
            )?,
            scheduler: scheduler(self.scheduler.as_deref())?,
            batch_count: self.batch_size.unwrap_or(1).saturating_mul(self.n_iter.unwrap_or(1)),
            ..defaults(id, self.prompt.clone())
        };
        Ok((Images::new(model, request, vae(self.vae.as_deref())?), limits))
    }
}

#[derive(Deserialize)]
pub struct Txt2Img {
    #[serde(flatten)]
    common: A1111Request,
    #[serde(flatten)]
    hires: HiresFields,
}

/// A1111 fields that change the image and that vramd cannot honour: each is accepted at
/// its "off" value (what clients send by default) and a 400 naming it otherwise.
#[derive(Deserialize, Default)]
pub struct Unsupported {
    #[serde(default)]
    restore_faces: Option<bool>,
    #[serde(default)]
    tiling: Option<bool>,
    #[serde(default)]
    subseed_strength: Option<f32>,
    #[serde(default)]
    styles: Option<Vec<String>>,
    #[serde(default)]
    script_name: Option<String>,
    #[serde(default)]
    alwayson_scripts: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    hr_prompt: Option<String>,
    #[serde(default)]
    hr_negative_prompt: Option<String>,
}

impl Unsupported {
    pub fn check(&self) -> Result<(), ApiError> {
        let set = [
            ("restore_faces", self.restore_faces == Some(true), "face restoration"),
            ("tiling", self.tiling == Some(true), "tileable images"),
            (
                "subseed_strength",
                self.subseed_strength.is_some_and(|s| s != 0.0),
                "variation seeds",
            ),
            ("styles", self.styles.as_ref().is_some_and(|s| !s.is_empty()), "styles"),
            (
                "script_name",
                self.script_name.as_ref().is_some_and(|s| !s.is_empty()),
                "scripts",
            ),
            (
                "alwayson_scripts",
                self.alwayson_scripts.as_ref().is_some_and(|s| !s.is_empty()),
                "scripts",
            ),
            (
                "hr_prompt",
                self.hr_prompt.as_ref().is_some_and(|s| !s.is_empty()),
                "a second prompt for hires fix",
            ),
            (
                "hr_negative_prompt",
                self.hr_negative_prompt.as_ref().is_some_and(|s| !s.is_empty()),
                "a second prompt for hires fix",
            ),
        ];
        match set.iter().find(|(_, on, _)| *on) {
            Some((field, _, what)) => Err(invalid(
                field,
                format!("`{field}`: {what} is not supported by vramd; leave it out"),
            )),
            None => Ok(()),
        }
    }
}

/// Hires fix as A1111 takes it (its defaults: scale 2, the `Latent` upscaler, as many
/// second-pass steps as the first, denoising strength 0.75).
#[derive(Deserialize, Default)]
pub struct HiresFields {
    #[serde(default)]
    enable_hr: bool,
    hr_scale: Option<f32>,
    hr_upscaler: Option<String>,
    hr_second_pass_steps: Option<u32>,
    hr_resize_x: Option<u32>,
    hr_resize_y: Option<u32>,
    denoising_strength: Option<f32>,
}

impl HiresFields {
    /// The second pass, its size rounded to the model's `size_multiple` (checked against
    /// `max_size` with the request); `None` with `enable_hr` off.
    fn hires(&self, width: u32, height: u32, limits: &ImageOptions) -> Result<Option<Hires>, ApiError> {
        if !self.enable_hr {
            return Ok(None);
        }
        let (x, y) = (self.hr_resize_x.unwrap_or(0), self.hr_resize_y.unwrap_or(0));
        let (w, h) = match (x, y) {
            (0, 0) => {
                let scale = self.hr_scale.unwrap_or(2.0);
                if !(1.0..=4.0).contains(&scale) {
                    return Err(invalid(
                        "hr_scale",
                        format!("`hr_scale` must be between 1 and 4, got {scale}"),
                    ));
                }
                (
                    f64::from(width) * f64::from(scale),
                    f64::from(height) * f64::from(scale),
                )
            }
            // One side given: the other keeps the picture's proportions, as in A1111.
            (x, 0) => (f64::from(x), f64::from(x) * f64::from(height) / f64::from(width.max(1))),
            (0, y) => (f64::from(y) * f64::from(width) / f64::from(height.max(1)), f64::from(y)),
            (x, y) => (f64::from(x), f64::from(y)),
        };
        let m = f64::from(limits.size_multiple);
        let round = |v: f64| ((v / m).round() * m).max(m) as u32;
        let strength = self.denoising_strength.unwrap_or(0.75);
        if !(0.0..=1.0).contains(&strength) {
            return Err(invalid(
                "denoising_strength",
                format!("`denoising_strength` must be between 0 and 1, got {strength}"),
            ));
        }
        Ok(Some(Hires {
            upscaler: hires_upscaler(self.hr_upscaler.as_deref())?,
            width: round(w),
            height: round(h),
            steps: self.hr_second_pass_steps.unwrap_or(0),
            denoising_strength: strength,
        }))
    }
}

pub async fn txt2img(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<Txt2Img>,
) -> Result<Json<Value>, ApiError> {
    let (mut images, limits) = req.common.images(&state, &id.0)?;
    let (width, height) = (images.request.width, images.request.height);
    images.request.hires = req.hires.hires(width, height, limits)?;
    validate(&images, limits, ("width", "height"), "batch_size")?;
    images.loras(limits)?;
    let parameters = parameters_json(&images);
    let template = images.clone();
    let out = run(&state, images, &id.0).await?;
    Ok(Json(answer(&template, parameters, out)))
}

/// An `f32` the client sent as a short decimal (0.4), written back as that decimal rather
/// than as the nearest `f64` of the `f32` (0.4000000059604645).
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// A1111's `parameters`: the request as it was understood.
pub fn parameters_json(images: &Images) -> Value {
    let job = &images.request;
    let mut p = json!({
        "prompt": images.prompt, "negative_prompt": job.negative_prompt, "width": job.width, "height": job.height,
        "steps": job.steps, "cfg_scale": decimal(job.cfg_scale), "seed": job.seed.unwrap_or(-1), "sampler_name": job.sampler,
        "scheduler": job.scheduler, "batch_size": job.batch_count, "model": images.model,
    });
    if let Some(h) = &job.hires {
        p["enable_hr"] = json!(true);
        p["hr_upscaler"] = json!(h.upscaler);
        p["hr_resize_x"] = json!(h.width);
        p["hr_resize_y"] = json!(h.height);
        p["hr_second_pass_steps"] = json!(h.steps);
        p["denoising_strength"] = json!(decimal(h.denoising_strength));
    }
    if let Some(s) = &job.source {
        p["denoising_strength"] = json!(decimal(s.strength));
        p["mask"] = json!(s.mask.is_some());
    }
    p
}

/// A1111's answer: `images` (base64 PNGs), `parameters`, and `info`, a JSON string with the
/// seeds, the sampler, the size (the final one, after hires fix) and what vramd decided.
pub fn answer(template: &Images, parameters: Value, out: Generated) -> Value {
    let seeds: Vec<i64> = out.images.iter().map(|(s, _)| *s).collect();
    let job = &template.request;
    let n = seeds.len();
    let (width, height) = template.size();
    let info = json!({
        "prompt": template.prompt, "negative_prompt": job.negative_prompt,
        "all_prompts": vec![&template.prompt; n], "all_negative_prompts": vec![&job.negative_prompt; n],
        "seed": seeds.first(), "all_seeds": seeds, "subseed": -1, "all_subseeds": vec![-1; n], "subseed_strength": 0,
        "width": width, "height": height, "sampler_name": job.sampler, "scheduler": job.scheduler,
        "cfg_scale": decimal(job.cfg_scale), "steps": job.steps, "batch_size": n, "n_iter": 1, "index_of_first_image": 0,
        "denoising_strength": job.source.as_ref().map(|s| s.strength).or(job.hires.as_ref().map(|h| h.denoising_strength)).map(decimal),
        "restore_faces": false, "styles": [], "clip_skip": 1, "sd_model_name": template.model, "sd_model_hash": null,
        "infotexts": seeds.iter().map(|s| parameters_text(template, *s)).collect::<Vec<_>>(),
        "vramd": out.vramd,
    });
    let images: Vec<&str> = out.images.iter().map(|(_, b)| b.as_str()).collect();
    json!({"images": images, "parameters": parameters, "info": info.to_string()})
}

#[derive(Deserialize)]
pub struct ProgressQuery {
    /// A1111's: leave `current_image` out.
    #[serde(default)]
    skip_current_image: bool,
}

/// A1111's progress of the image running now, read from the arbiter's state as of this
/// request (a client that just got its image must not see it still running).
pub async fn progress(State(state): State<AppState>, Query(q): Query<ProgressQuery>) -> Result<Json<Value>, ApiError> {
    let snapshot = state.arbiter.current().await?;
    let running = snapshot
        .models
        .iter()
        .filter(|m| m.kind == ModelKind::Image)
        .flat_map(|m| m.running.iter().map(move |r| (m.name.as_str(), r)))
        .next();
    let Some((model, r)) = running else {
        // A checkpoint being loaded (chosen with `POST options`) is a job too, as in A1111,
        // so a client that polls until `job_count` is 0 waits for it.
        let loading = snapshot
            .models
            .iter()
            .find(|m| m.kind == ModelKind::Image && m.state == crate::model::ModelState::Loading);
        let (jobs, job) = loading.map_or((0, String::new()), |m| (1, format!("loading {}", m.name)));
        return Ok(Json(
            json!({"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": jobs, "job": job, "sampling_step": 0,
            "sampling_steps": 0, "interrupted": false, "skipped": false}, "current_image": null, "textinfo": null}),
        ));
    };
    let p = r.progress.unwrap_or_default();
    let current_image = (!q.skip_current_image)
        .then(|| state.previews.get(&r.request_id))
        .flatten();
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
        "current_image": current_image, "textinfo": null,
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
