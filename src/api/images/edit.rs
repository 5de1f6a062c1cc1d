//! Images made from an image: AUTOMATIC1111's `POST /sdapi/v1/img2img` (with `mask`,
//! inpainting) and OpenAI's `POST /v1/images/edits` (multipart, as Open WebUI sends it:
//! `image` or repeated `image[]` parts, `prompt`, `n`, `size`, `response_format`).
//!
//! Both become a txt2img [`Images`] with a [`SourceImage`]: the picture (and mask) decoded
//! and fitted to the request's size here ([`super::pixels`]), stable-diffusion.cpp's img2img
//! doing the rest. Where A1111 has choices the engine cannot make, the request says so with
//! a 400 naming the field: `inpainting_fill` 2 and 3 (latent noise / nothing) and
//! `inpaint_full_res: true` ("only masked"). vramd's default for `inpaint_full_res` is the
//! whole picture (A1111's UI default), not the API's `true`, so a client that leaves it out
//! gets an image. `mask_blur` is accepted and has no effect: the engine takes a binary mask.

use axum::extract::{Extension, Multipart, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use vramd_protocol::{ImageRequest, SourceImage};

use super::openai::{answer as openai_answer, openai_model, openai_size, Format};
use super::pixels::{self, Resize};
use super::txt2img::{answer, parameters_json, A1111Request};
use super::{defaults, image_model, invalid, run, vae, validate, Images};
use crate::api::{ApiError, ApiJson, AppState, RequestId};

#[derive(Deserialize)]
pub struct Img2Img {
    #[serde(flatten)]
    common: A1111Request,
    /// Base64 or data URLs; the first is used (A1111 takes one picture per batch too).
    init_images: Option<Vec<String>>,
    mask: Option<String>,
    #[serde(default)]
    resize_mode: u32,
    denoising_strength: Option<f32>,
    #[serde(default)]
    inpainting_fill: u32,
    #[serde(default)]
    inpaint_full_res: bool,
    #[serde(default)]
    inpainting_mask_invert: u32,
    // `mask_blur`, `include_init_images`, … are accepted and ignored.
}

/// The picture and mask of an A1111 request, fitted to `width`×`height`.
fn a1111_source(req: &Img2Img, width: u32, height: u32) -> Result<SourceImage, ApiError> {
    let first = req.init_images.as_ref().and_then(|v| v.first()).ok_or_else(|| {
        invalid(
            "init_images",
            "`init_images` must hold one picture (base64 or a data URL)",
        )
    })?;
    let mode = Resize::from_a1111(req.resize_mode)?;
    let picture = pixels::from_base64(first, "init_images")?;
    let mut rgb = pixels::fit(&picture, width, height, mode);
    let mask = match &req.mask {
        None => None,
        Some(m) => {
            if req.inpaint_full_res {
                return Err(invalid(
                    "inpaint_full_res",
                    "inpainting \"only masked\" (`inpaint_full_res: true`) is not supported; send false to inpaint the whole picture",
                ));
            }
            let invert = match req.inpainting_mask_invert {
                0 => false,
                1 => true,
                other => {
                    return Err(invalid(
                        "inpainting_mask_invert",
                        format!("`inpainting_mask_invert` must be 0 or 1, got {other}"),
                    ))
                }
            };
            let mask = pixels::mask(&pixels::from_base64(m, "mask")?, width, height, mode, invert);
            match req.inpainting_fill {
                0 => pixels::fill_masked(&mut rgb, &mask),
                1 => {}
                2 | 3 => {
                    return Err(invalid(
                        "inpainting_fill",
                        "`inpainting_fill` 2 (latent noise) and 3 (latent nothing) are not supported by stable-diffusion.cpp; use 0 (fill) or 1 (original)",
                    ))
                }
                other => {
                    return Err(invalid(
                        "inpainting_fill",
                        format!("`inpainting_fill` must be 0 to 3, got {other}"),
                    ))
                }
            }
            Some(pixels::mask_pixels(&mask))
        }
    };
    Ok(SourceImage {
        image: pixels::rgb_pixels(&rgb),
        mask,
        strength: strength(req.denoising_strength, "denoising_strength")?,
    })
}

fn strength(value: Option<f32>, param: &str) -> Result<f32, ApiError> {
    let s = value.unwrap_or(0.75);
    if !(0.0..=1.0).contains(&s) {
        return Err(invalid(param, format!("`{param}` must be between 0 and 1, got {s}")));
    }
    Ok(s)
}

pub async fn img2img(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    ApiJson(req): ApiJson<Img2Img>,
) -> Result<Json<Value>, ApiError> {
    let (mut images, limits) = req.common.images(&state, &id.0)?;
    // Sizes and counts first: a picture is decoded only for a request that can run.
    validate(&images, limits, ("width", "height"), "batch_size")?;
    let (width, height) = (images.request.width, images.request.height);
    images.request.source = Some(a1111_source(&req, width, height)?);
    images.loras(limits)?;
    let parameters = parameters_json(&images);
    let template = images.clone();
    let out = run(&state, images, &id.0).await?;
    Ok(Json(answer(&template, parameters, out)))
}

/// OpenAI's edit request, read from its multipart form.
#[derive(Default)]
struct EditForm {
    image: Option<Vec<u8>>,
    mask: Option<Vec<u8>>,
    prompt: Option<String>,
    model: Option<String>,
    n: Option<String>,
    size: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
}

/// The parts vramd reads; others (`background`, `quality`, `user`, `input_fidelity`, …)
/// are read and dropped. The first `image` or `image[]` part is the picture.
async fn read_form(mut form: Multipart) -> Result<EditForm, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        invalid(
            "image",
            format!("the multipart body could not be read: {}", e.body_text()),
        )
    };
    let mut out = EditForm::default();
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" | "image[]" => {
                let bytes = field.bytes().await.map_err(bad)?;
                out.image.get_or_insert(bytes.to_vec());
            }
            "mask" => out.mask = Some(field.bytes().await.map_err(bad)?.to_vec()),
            _ => {
                let text = field.text().await.map_err(bad)?;
                let slot = match name.as_str() {
                    "prompt" => &mut out.prompt,
                    "model" => &mut out.model,
                    "n" => &mut out.n,
                    "size" => &mut out.size,
                    "response_format" => &mut out.response_format,
                    "output_format" => &mut out.output_format,
                    _ => continue,
                };
                *slot = Some(text);
            }
        }
    }
    Ok(out)
}

/// `POST /v1/images/edits`: OpenAI's mask is a PNG whose transparent pixels are the part to
/// paint again (the opposite of A1111's white), so its alpha is read inverted; without a
/// mask the whole picture is repainted at strength 0.75.
pub async fn openai_edits(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    headers: HeaderMap,
    form: Multipart,
) -> Result<Json<Value>, ApiError> {
    let form = read_form(form).await?;
    let model = openai_model(&state, form.model.as_deref())?;
    let limits = image_model(&state, &model)?;
    let format = Format::parse(form.output_format.as_deref(), form.response_format.as_deref())?;
    let prompt = form
        .prompt
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid("prompt", "`prompt` is required"))?;
    let picture = pixels::from_bytes(
        form.image
            .as_deref()
            .ok_or_else(|| invalid("image", "`image` is required"))?,
        "image",
    )?;
    let (width, height) = match form.size.as_deref() {
        None | Some("auto") => fit_size(picture.width(), picture.height(), limits),
        Some(s) => openai_size(Some(s))?,
    };
    let n = match form.n.as_deref() {
        None => 1,
        Some(n) => n
            .trim()
            .parse()
            .map_err(|_| invalid("n", format!("`n` must be a number, got {n:?}")))?,
    };
    let request = ImageRequest {
        width,
        height,
        batch_count: n,
        ..defaults(&id.0, prompt)
    };
    let mut images = Images::new(model, request, vae(None)?);
    validate(&images, limits, ("size", "size"), "n")?;
    let mask = form
        .mask
        .as_deref()
        .map(|m| pixels::from_bytes(m, "mask"))
        .transpose()?
        .map(|m| pixels::mask_pixels(&pixels::openai_mask(&m, width, height)));
    images.request.source = Some(SourceImage {
        image: pixels::rgb_pixels(&pixels::fit(&picture, width, height, Resize::Stretch)),
        mask,
        strength: 0.75,
    });
    images.loras(limits)?;
    let out = run(&state, images, &id.0).await?;
    openai_answer(&state, &headers, format, out)
}

/// `size: auto` for an edit: the picture's own size, scaled down to fit `max_size` and
/// rounded to the model's `size_multiple`.
fn fit_size(w: u32, h: u32, limits: &crate::config::ImageOptions) -> (u32, u32) {
    let scale = f64::min(1.0, f64::from(limits.max_size) / f64::from(w.max(h).max(1)));
    let m = f64::from(limits.size_multiple);
    let round = |v: u32| (((f64::from(v) * scale) / m).round() * m).max(m) as u32;
    (round(w), round(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ImageOptions;

    #[test]
    fn auto_sizes_keep_the_picture_s_shape_within_the_limits() {
        let limits = ImageOptions {
            size_multiple: 64,
            max_size: 1024,
            ..ImageOptions::default()
        };
        assert_eq!(fit_size(512, 512, &limits), (512, 512));
        assert_eq!(fit_size(2048, 1024, &limits), (1024, 512));
        assert_eq!(fit_size(500, 300, &limits), (512, 320));
        assert_eq!(fit_size(10, 10, &limits), (64, 64));
    }

    fn img2img(extra: serde_json::Value) -> Img2Img {
        let mut v = serde_json::json!({"prompt": "p", "init_images": [png_b64(8, 8)]});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn png_b64(w: u32, h: u32) -> String {
        use base64::Engine as _;
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([200, 10, 10])));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    }

    fn param(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a1111_sources_are_fitted_and_unsupported_choices_name_their_field() {
        let s = a1111_source(&img2img(serde_json::json!({})), 16, 8).unwrap();
        assert_eq!((s.image.width, s.image.height, s.strength), (16, 8, 0.75));
        assert!(s.mask.is_none());
        let masked = img2img(serde_json::json!({"mask": png_b64(8, 8), "denoising_strength": 0.4}));
        let s = a1111_source(&masked, 16, 16).unwrap();
        assert_eq!((s.mask.as_ref().unwrap().channels, s.strength), (1, 0.4));
        for (extra, field) in [
            (serde_json::json!({"init_images": []}), "init_images"),
            (serde_json::json!({"init_images": ["!!"]}), "init_images"),
            (serde_json::json!({"resize_mode": 7}), "resize_mode"),
            (serde_json::json!({"denoising_strength": 1.5}), "denoising_strength"),
            (serde_json::json!({"mask": "!!"}), "mask"),
            (
                serde_json::json!({"mask": png_b64(8, 8), "inpainting_fill": 2}),
                "inpainting_fill",
            ),
            (
                serde_json::json!({"mask": png_b64(8, 8), "inpaint_full_res": true}),
                "inpaint_full_res",
            ),
            (
                serde_json::json!({"mask": png_b64(8, 8), "inpainting_mask_invert": 2}),
                "inpainting_mask_invert",
            ),
        ] {
            let e = a1111_source(&img2img(extra.clone()), 16, 16).unwrap_err();
            assert_eq!(param(e), field, "{extra}");
        }
    }
}
