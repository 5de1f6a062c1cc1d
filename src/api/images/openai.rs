//! OpenAI's `POST /v1/images/generations`, as clients send it: the model absent or one of
//! OpenAI's own names (the default image model serves those), `size` `auto`, and the answer
//! as `b64_json` or as a `url` the daemon serves for an hour ([`super::files`]).

use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use vramd_protocol::ImageRequest;

use super::{defaults, image_model, invalid, run, sampler, scheduler, vae, validate, Generated, Images};
use crate::api::{ApiError, ApiJson, AppState, RequestId};

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
pub(super) fn openai_model(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
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
pub(super) fn openai_size(size: Option<&str>) -> Result<(u32, u32), ApiError> {
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
    headers: HeaderMap,
    ApiJson(req): ApiJson<OpenAiRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = openai_model(&state, req.model.as_deref())?;
    let limits = image_model(&state, &model)?;
    let format = Format::parse(req.output_format.as_deref(), req.response_format.as_deref())?;
    let (width, height) = openai_size(req.size.as_deref())?;
    let request = ImageRequest {
        negative_prompt: req.negative_prompt,
        width,
        height,
        steps: req.steps.unwrap_or(20),
        cfg_scale: req.cfg_scale.unwrap_or(7.0),
        seed: req.seed,
        sampler: sampler(req.sampler.as_deref(), "sampler")?,
        scheduler: scheduler(req.scheduler.as_deref())?,
        batch_count: req.n.unwrap_or(1),
        ..defaults(&id.0, req.prompt)
    };
    let mut images = Images::new(model, request, vae(req.vae.as_deref())?);
    validate(&images, limits, ("size", "size"), "n")?;
    images.loras(limits)?;
    let out = run(&state, images, &id.0).await?;
    answer(&state, &headers, format, out)
}

/// How an OpenAI client wants its images: PNG only (what the worker writes), as base64 in
/// the answer or as a URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    B64Json,
    Url,
}

impl Format {
    /// `output_format` (`png` only) and `response_format` (`b64_json`, the default, or `url`).
    pub fn parse(output: Option<&str>, response: Option<&str>) -> Result<Format, ApiError> {
        if let Some(f) = output.filter(|f| !f.eq_ignore_ascii_case("png")) {
            return Err(invalid(
                "output_format",
                format!("only \"png\" is supported, got {f:?}"),
            ));
        }
        match response {
            None | Some("b64_json") => Ok(Format::B64Json),
            Some("url") => Ok(Format::Url),
            Some(f) => Err(invalid(
                "response_format",
                format!("`response_format` must be \"b64_json\" or \"url\", got {f:?}"),
            )),
        }
    }
}

/// OpenAI's answer: `{created, data: [{b64_json} or {url}], vramd}`; a URL is relative to
/// the address the request came in on (its `Host`).
pub fn answer(state: &AppState, headers: &HeaderMap, format: Format, out: Generated) -> Result<Json<Value>, ApiError> {
    let data = out
        .images
        .iter()
        .map(|(_, b64)| match format {
            Format::B64Json => Ok(json!({"b64_json": b64})),
            Format::Url => {
                let name = super::files::store(&state.config.daemon.state_dir, b64)?;
                Ok(json!({"url": super::files::url(headers, &name)}))
            }
        })
        .collect::<Result<Vec<Value>, ApiError>>()?;
    Ok(Json(
        json!({"created": crate::registry::unix_secs(std::time::SystemTime::now()), "data": data, "vramd": out.vramd}),
    ))
}
