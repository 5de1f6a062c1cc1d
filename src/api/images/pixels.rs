//! Pictures that clients send (img2img's `init_images` and `mask`, the files of OpenAI's
//! `/v1/images/edits`) turned into the raw pixels the worker takes ([`Pixels`]): decoded
//! here, in Rust, with bounded memory, and fitted to the request's size the way A1111's
//! `resize_mode` says, so that a worker never parses an image format and a bad file is a
//! 400 naming the field before any memory is planned.

use base64::Engine as _;
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, GrayImage, RgbImage};
use vramd_protocol::Pixels;

use super::invalid;
use crate::api::ApiError;

/// Largest width or height of a picture a client may send.
const MAX_SIDE: u32 = 8192;
/// Most memory one decode may take.
const MAX_DECODE_BYTES: u64 = 512 << 20;

/// A1111's `resize_mode`: how a picture of another size is fitted to the request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// 0 "Just resize": stretched to the size (3, "latent upscale", is the same here).
    Stretch,
    /// 1 "Crop and resize": scaled to cover the size, the overflow cut off evenly.
    Crop,
    /// 2 "Resize and fill": scaled to fit inside, the rest filled from the picture's edges.
    Fill,
}

impl Resize {
    pub fn from_a1111(mode: u32) -> Result<Resize, ApiError> {
        match mode {
            0 | 3 => Ok(Resize::Stretch),
            1 => Ok(Resize::Crop),
            2 => Ok(Resize::Fill),
            other => Err(invalid(
                "resize_mode",
                format!(
                    "`resize_mode` must be 0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3, got {other}"
                ),
            )),
        }
    }
}

/// A picture from base64 (a bare string, or a `data:image/…;base64,` URL as browsers make
/// them): PNG, JPEG or WebP.
pub fn from_base64(text: &str, param: &str) -> Result<DynamicImage, ApiError> {
    let b64 = match text.strip_prefix("data:") {
        Some(url) => url
            .split_once(',')
            .map(|(_, data)| data)
            .ok_or_else(|| invalid(param, format!("`{param}` is a data URL without data")))?,
        None => text,
    };
    let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    // Padding optional: some clients strip it.
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = lenient
        .decode(clean)
        .map_err(|e| invalid(param, format!("`{param}` is not valid base64: {e}")))?;
    from_bytes(&bytes, param)
}

/// A picture from a file's bytes: PNG, JPEG or WebP, at most [`MAX_SIDE`] on a side.
pub fn from_bytes(bytes: &[u8], param: &str) -> Result<DynamicImage, ApiError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| invalid(param, format!("`{param}`: {e}")))?;
    if reader.format().is_none() {
        return Err(invalid(param, format!("`{param}` is not a PNG, JPEG or WebP picture")));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = reader;
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| invalid(param, format!("`{param}` could not be decoded: {e}")))
}

/// `img` fitted to `width`×`height` as `mode` says, in RGB (alpha dropped).
pub fn fit(img: &DynamicImage, width: u32, height: u32, mode: Resize) -> RgbImage {
    let rgb = img.to_rgb8();
    if rgb.dimensions() == (width, height) {
        return rgb;
    }
    let (w, h) = rgb.dimensions();
    match mode {
        Resize::Stretch => image::imageops::resize(&rgb, width, height, FilterType::Lanczos3),
        Resize::Crop => {
            let scale = f64::max(f64::from(width) / f64::from(w), f64::from(height) / f64::from(h));
            let (sw, sh) = scaled(w, h, scale, width, height, u32::max);
            let big = image::imageops::resize(&rgb, sw, sh, FilterType::Lanczos3);
            image::imageops::crop_imm(&big, (sw - width) / 2, (sh - height) / 2, width, height).to_image()
        }
        Resize::Fill => {
            let scale = f64::min(f64::from(width) / f64::from(w), f64::from(height) / f64::from(h));
            let (sw, sh) = scaled(w, h, scale, width, height, u32::min);
            let small = image::imageops::resize(&rgb, sw, sh, FilterType::Lanczos3);
            let (x0, y0) = ((width - sw) / 2, (height - sh) / 2);
            // Each pixel outside takes the nearest pixel of the picture: its edges stretched
            // outwards, which is what A1111's "fill" looks like.
            RgbImage::from_fn(width, height, |x, y| {
                let sx = x.saturating_sub(x0).min(sw - 1);
                let sy = y.saturating_sub(y0).min(sh - 1);
                *small.get_pixel(sx, sy)
            })
        }
    }
}

/// `w`×`h` scaled by `scale`, each side at least 1, and bounded by the target on the side
/// `pick` says (`max` to cover, `min` to fit).
fn scaled(w: u32, h: u32, scale: f64, width: u32, height: u32, pick: fn(u32, u32) -> u32) -> (u32, u32) {
    let sw = ((f64::from(w) * scale).round() as u32).max(1);
    let sh = ((f64::from(h) * scale).round() as u32).max(1);
    (pick(sw, width), pick(sh, height))
}

/// A mask as A1111 reads it: a picture with transparency uses its alpha (opaque repaints),
/// another its brightness (white repaints); then thresholded at the middle, inverted when
/// asked, and fitted like the picture it belongs to.
pub fn mask(img: &DynamicImage, width: u32, height: u32, mode: Resize, invert: bool) -> GrayImage {
    let luma = if img.color().has_alpha() && img.pixels().any(|(_, _, p)| p.0[3] != 255) {
        let rgba = img.to_rgba8();
        GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            image::Luma([rgba.get_pixel(x, y).0[3]])
        })
    } else {
        img.to_luma8()
    };
    let as_rgb = DynamicImage::ImageLuma8(luma);
    let fitted = fit(&as_rgb, width, height, mode);
    GrayImage::from_fn(width, height, |x, y| {
        let on = fitted.get_pixel(x, y).0[0] > 127;
        image::Luma([if on != invert { 255 } else { 0 }])
    })
}

/// OpenAI's mask: where it is transparent the picture is painted again (a mask without
/// transparency: where it is white, as A1111's), stretched to the picture's size.
pub fn openai_mask(img: &DynamicImage, width: u32, height: u32) -> GrayImage {
    let has_alpha = img.color().has_alpha();
    let rgba = img.to_rgba8();
    let marks = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let repaint = if has_alpha {
            p[3] < 128
        } else {
            u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]) > 381
        };
        image::Luma([if repaint { 255 } else { 0 }])
    });
    mask(&DynamicImage::ImageLuma8(marks), width, height, Resize::Stretch, false)
}

/// A1111's `inpainting_fill` 0 ("fill"): the part to repaint starts from the colour of the
/// part that is kept, so the new content is not drawn towards what was there.
pub fn fill_masked(img: &mut RgbImage, mask: &GrayImage) {
    let (mut sum, mut n) = ([0u64; 3], 0u64);
    for (p, m) in img.pixels().zip(mask.pixels()) {
        if m.0[0] == 0 {
            for (total, v) in sum.iter_mut().zip(p.0) {
                *total += u64::from(v);
            }
            n += 1;
        }
    }
    let Some(n) = std::num::NonZeroU64::new(n) else { return };
    let mean = sum.map(|s| (s / n.get()) as u8);
    for (p, m) in img.pixels_mut().zip(mask.pixels()) {
        if m.0[0] != 0 {
            p.0 = mean;
        }
    }
}

pub fn rgb_pixels(img: &RgbImage) -> Pixels {
    Pixels {
        width: img.width(),
        height: img.height(),
        channels: 3,
        base64: base64::engine::general_purpose::STANDARD.encode(img.as_raw()),
    }
}

pub fn mask_pixels(img: &GrayImage) -> Pixels {
    Pixels {
        width: img.width(),
        height: img.height(),
        channels: 1,
        base64: base64::engine::general_purpose::STANDARD.encode(img.as_raw()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn param(e: ApiError) -> (String, String) {
        match e {
            ApiError::InvalidRequest { message, param } => (param.unwrap(), message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base64_and_data_urls_decode_and_garbage_is_a_400_naming_the_field() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(3, 2, image::Rgb([9, 8, 7])));
        let b64 = base64::engine::general_purpose::STANDARD.encode(png(&img));
        assert_eq!(from_base64(&b64, "x").unwrap().dimensions(), (3, 2));
        let url = format!("data:image/png;base64,{b64}");
        assert_eq!(from_base64(&url, "x").unwrap().dimensions(), (3, 2));
        // Unpadded and wrapped base64, as some clients send it.
        let wrapped = b64
            .trim_end_matches('=')
            .chars()
            .collect::<Vec<_>>()
            .chunks(10)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(from_base64(&wrapped, "x").unwrap().dimensions(), (3, 2));
        let (p, m) = param(from_base64("not base64!", "init_images").unwrap_err());
        assert_eq!(p, "init_images");
        assert!(m.contains("base64"), "{m}");
        let text = base64::engine::general_purpose::STANDARD.encode(b"hello, not a picture");
        assert!(param(from_base64(&text, "mask").unwrap_err()).1.contains("not a PNG"));
        let mut truncated = png(&img);
        truncated.truncate(truncated.len() / 2);
        assert!(param(from_bytes(&truncated, "image").unwrap_err())
            .1
            .contains("could not be decoded"));
        assert!(param(from_base64("data:image/png;base64", "image").unwrap_err())
            .1
            .contains("without data"));
    }

    #[test]
    fn pictures_past_the_limits_are_refused_before_they_are_decoded() {
        // A PNG header that claims 100000×100000 pixels.
        let mut png = png(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)));
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let (_, m) = param(from_bytes(&png, "image").unwrap_err());
        assert!(m.contains("could not be decoded"), "{m}");
    }

    #[test]
    fn resize_modes_fit_the_picture_as_a1111_does() {
        // Left half red, right half blue, 40×20, fitted into 20×20.
        let img = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        }));
        for mode in [Resize::Stretch, Resize::Crop, Resize::Fill] {
            assert_eq!(fit(&img, 20, 20, mode).dimensions(), (20, 20), "{mode:?}");
        }
        // Crop keeps the middle: the left edge is red, the right edge blue, each half as wide.
        let crop = fit(&img, 20, 20, Resize::Crop);
        assert!(crop.get_pixel(0, 10).0[0] > 200 && crop.get_pixel(19, 10).0[2] > 200);
        // Fill scales to 20×10 in the middle; above and below repeat the edge rows.
        let fill = fit(&img, 20, 20, Resize::Fill);
        assert_eq!(fill.get_pixel(0, 0), fill.get_pixel(0, 19));
        assert!(fill.get_pixel(1, 0).0[0] > 200);
        assert_eq!(Resize::from_a1111(3).unwrap(), Resize::Stretch);
        assert_eq!(param(Resize::from_a1111(4).unwrap_err()).0, "resize_mode");
    }

    #[test]
    fn masks_use_alpha_or_brightness_and_invert_on_request() {
        let bw = DynamicImage::ImageLuma8(GrayImage::from_fn(4, 4, |x, _| {
            image::Luma([if x < 2 { 255 } else { 0 }])
        }));
        let m = mask(&bw, 4, 4, Resize::Stretch, false);
        assert_eq!((m.get_pixel(0, 0).0[0], m.get_pixel(3, 0).0[0]), (255, 0));
        let inv = mask(&bw, 4, 4, Resize::Stretch, true);
        assert_eq!((inv.get_pixel(0, 0).0[0], inv.get_pixel(3, 0).0[0]), (0, 255));
        // A transparent picture: opaque pixels repaint, whatever their colour.
        let rgba = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(4, 4, |x, _| {
            image::Rgba([0, 0, 0, if x < 2 { 255 } else { 0 }])
        }));
        let m = mask(&rgba, 8, 8, Resize::Stretch, false);
        assert_eq!(m.dimensions(), (8, 8));
        assert_eq!((m.get_pixel(0, 0).0[0], m.get_pixel(7, 0).0[0]), (255, 0));
        // OpenAI's masks are the other way round: transparent repaints.
        let o = openai_mask(&rgba, 8, 8);
        assert_eq!((o.get_pixel(0, 0).0[0], o.get_pixel(7, 0).0[0]), (0, 255));
        // "fill": the repainted part takes the mean colour of the kept part.
        let mut img = RgbImage::from_fn(4, 4, |x, _| {
            if x < 2 {
                image::Rgb([200, 0, 0])
            } else {
                image::Rgb([10, 20, 30])
            }
        });
        fill_masked(&mut img, &mask(&bw, 4, 4, Resize::Stretch, false));
        assert_eq!(img.get_pixel(0, 0).0, [10, 20, 30]);
        let p = rgb_pixels(&img);
        assert_eq!((p.width, p.height, p.channels), (4, 4, 3));
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(p.base64)
                .unwrap()
                .len(),
            48
        );
    }
}
