//! The small safe wrapper around stable-diffusion.cpp's C API (`diffusion-rs-sys`).
//!
//! - [`SdContext`] owns one `sd_ctx_t` (`new_sd_ctx` … `free_sd_ctx`). The context is not
//!   thread-safe, and its callbacks are process-wide, so only the engine thread touches it;
//!   the type is neither `Send` nor `Sync` (it holds a raw pointer).
//! - [`SdContext::generate`] runs `generate_image` for a protocol [`ImageRequest`] (mapped to
//!   `sd_img_gen_params_t` here, at the FFI edge, and nowhere else) and copies the returned
//!   `sd_image_t` array into owned [`RgbImage`]s, then hands it back with `free_sd_images`,
//!   which frees each image's pixels and the array as the C API requires (`diffusion-rs`
//!   frees only the array, leaking the pixels).
//! - [`sample_method`] / [`scheduler`] parse names with the library's own `str_to_*`.
//!
//! In this stable-diffusion.cpp (0.1.20 of the crate) weights are registered and validated by
//! name and shape when the context is created and read lazily, at their first use; there is
//! no `free_params_immediately` any more, so one context serves many generations. The VAE's
//! device is part of the context: the `backend` string `vae=cpu` puts it on the CPU.

use std::ffi::{c_char, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use diffusion_rs_sys as sys;
use vramd_protocol::{ImageRequest, VaePlacement};
use vramd_worker_kit::engine::device_label;

/// What a context is created from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContextParams {
    pub model: Option<std::path::PathBuf>,
    pub diffusion_model: Option<std::path::PathBuf>,
    pub vae: Option<std::path::PathBuf>,
    pub taesd: Option<std::path::PathBuf>,
    pub clip_l: Option<std::path::PathBuf>,
    pub clip_g: Option<std::path::PathBuf>,
    pub t5xxl: Option<std::path::PathBuf>,
    /// The LLM text encoder (Qwen3 for Z-Image): `llm_path`.
    pub llm: Option<std::path::PathBuf>,
    pub mmap: bool,
    pub threads: i32,
    /// Creates the context with the VAE (or TAESD) on the CPU.
    pub vae_on_cpu: bool,
}

/// One owned `sd_ctx_t`.
pub struct SdContext {
    ctx: NonNull<sys::sd_ctx_t>,
}

impl SdContext {
    /// Creates a context; `None` when stable-diffusion.cpp returns NULL (it logged why).
    pub fn new(p: &ContextParams) -> Result<Option<SdContext>, String> {
        let path = |p: &Option<std::path::PathBuf>| -> Result<Option<CString>, String> {
            p.as_deref().map(c_path).transpose()
        };
        let model = path(&p.model)?;
        let diffusion_model = path(&p.diffusion_model)?;
        let vae = path(&p.vae)?;
        let taesd = path(&p.taesd)?;
        let clip_l = path(&p.clip_l)?;
        let clip_g = path(&p.clip_g)?;
        let t5xxl = path(&p.t5xxl)?;
        let llm = path(&p.llm)?;
        let backend = p.vae_on_cpu.then(|| CString::from(c"vae=cpu"));

        // SAFETY: sd_ctx_params_init fills every field of the struct it is given.
        let mut params = unsafe {
            let mut params = std::mem::MaybeUninit::<sys::sd_ctx_params_t>::zeroed();
            sys::sd_ctx_params_init(params.as_mut_ptr());
            params.assume_init()
        };
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        params.model_path = ptr(&model);
        params.diffusion_model_path = ptr(&diffusion_model);
        params.vae_path = ptr(&vae);
        params.taesd_path = ptr(&taesd);
        params.clip_l_path = ptr(&clip_l);
        params.clip_g_path = ptr(&clip_g);
        params.t5xxl_path = ptr(&t5xxl);
        params.llm_path = ptr(&llm);
        params.backend = ptr(&backend);
        params.enable_mmap = p.mmap;
        if p.threads > 0 {
            params.n_threads = p.threads;
        }
        // SAFETY: every string the params point to lives until after this call, which copies
        // what it keeps; a NULL result is handled.
        let ctx = unsafe { sys::new_sd_ctx(&params) };
        Ok(NonNull::new(ctx).map(|ctx| SdContext { ctx }))
    }

    /// Generates `req.batch_count` images, the first from `seed` (the library counts the
    /// next ones up); `None` when stable-diffusion.cpp returns NULL (it logged why).
    pub fn generate(&mut self, req: &ImageRequest, seed: i64) -> Result<Option<Vec<RgbImage>>, String> {
        let mut inputs = Inputs::new(req)?;
        let params = img_gen_params(req, seed, &mut inputs)?;
        // SAFETY: the context is live and owned by this thread; everything the parameters
        // point to is owned by `inputs`, which outlives the call.
        let images = unsafe { sys::generate_image(self.ctx.as_ptr(), &params) };
        if images.is_null() {
            return Ok(None);
        }
        // SAFETY: a non-NULL result of generate_image for `batch_count` images, not freed yet.
        unsafe { take_images(images, params.batch_count) }.map(Some)
    }
}

/// What one call's C parameters point to besides plain numbers: the prompts, the pixels of
/// an img2img source and its mask, the LoRA paths. Owned here, for the length of the call.
pub struct Inputs {
    prompt: CString,
    negative: CString,
    image: Option<(Vec<u8>, u32, u32, u32)>,
    mask: Option<(Vec<u8>, u32, u32, u32)>,
    /// Kept alive for `loras`, which points into them.
    _lora_paths: Vec<CString>,
    loras: Vec<sys::sd_lora_t>,
}

impl Inputs {
    pub fn new(req: &ImageRequest) -> Result<Inputs, String> {
        let prompt = CString::new(req.prompt.as_str()).map_err(|_| "prompt contains a NUL byte")?;
        let negative = CString::new(req.negative_prompt.as_str()).map_err(|_| "negative_prompt contains a NUL byte")?;
        let source = req.source.as_ref();
        let image = source.map(|s| pixels(&s.image, "source image")).transpose()?;
        let mask = source
            .and_then(|s| s.mask.as_ref())
            .map(|m| pixels(m, "mask"))
            .transpose()?;
        let lora_paths = req
            .loras
            .iter()
            .map(|l| c_path(&l.path))
            .collect::<Result<Vec<_>, _>>()?;
        let loras = req
            .loras
            .iter()
            .zip(&lora_paths)
            .map(|(l, p)| sys::sd_lora_t {
                is_high_noise: false,
                multiplier: l.multiplier,
                path: p.as_ptr(),
            })
            .collect();
        Ok(Inputs {
            prompt,
            negative,
            image,
            mask,
            _lora_paths: lora_paths,
            loras,
        })
    }
}

/// Decoded pixels with their size and channel count, checked to be whole.
fn pixels(p: &vramd_protocol::Pixels, what: &str) -> Result<(Vec<u8>, u32, u32, u32), String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&p.base64)
        .map_err(|e| format!("{what}: bad base64: {e}"))?;
    let want = p.width as usize * p.height as usize * usize::from(p.channels);
    if bytes.len() != want || !(p.channels == 1 || p.channels == 3) {
        return Err(format!(
            "{what}: {} bytes for {}x{} with {} channels",
            bytes.len(),
            p.width,
            p.height,
            p.channels
        ));
    }
    Ok((bytes, p.width, p.height, u32::from(p.channels)))
}

/// An `sd_image_t` over owned pixels (the library only reads them).
fn image_of(p: &mut Option<(Vec<u8>, u32, u32, u32)>) -> sys::sd_image_t {
    match p {
        Some((data, width, height, channel)) => sys::sd_image_t {
            width: *width,
            height: *height,
            channel: *channel,
            data: data.as_mut_ptr(),
        },
        None => sys::sd_image_t {
            width: 0,
            height: 0,
            channel: 0,
            data: std::ptr::null_mut(),
        },
    }
}

impl Drop for SdContext {
    fn drop(&mut self) {
        // SAFETY: the pointer came from new_sd_ctx and is freed once, here.
        unsafe { sys::free_sd_ctx(self.ctx.as_ptr()) }
    }
}

/// `req` as the parameters of one `generate_image` call: the protocol's request meets the C
/// API here, sampler, scheduler and upscaler names included (parsed by the library). The
/// result points into `inputs`, which must outlive the call it is for.
fn img_gen_params(req: &ImageRequest, seed: i64, inputs: &mut Inputs) -> Result<sys::sd_img_gen_params_t, String> {
    let int = |v: u32, what: &str| i32::try_from(v).map_err(|_| format!("{what} is too large"));
    let sampler = sample_method(&req.sampler).ok_or_else(|| format!("unknown sampler {:?}", req.sampler))?;
    let scheduler = scheduler(&req.scheduler).ok_or_else(|| format!("unknown scheduler {:?}", req.scheduler))?;
    // SAFETY: sd_img_gen_params_init fills every field of the struct it is given.
    let mut params = unsafe {
        let mut params = std::mem::MaybeUninit::<sys::sd_img_gen_params_t>::zeroed();
        sys::sd_img_gen_params_init(params.as_mut_ptr());
        params.assume_init()
    };
    params.prompt = inputs.prompt.as_ptr();
    params.negative_prompt = inputs.negative.as_ptr();
    if let Some(source) = &req.source {
        params.init_image = image_of(&mut inputs.image);
        params.mask_image = image_of(&mut inputs.mask);
        params.strength = source.strength;
    }
    if let Some(h) = &req.hires {
        params.hires.enabled = true;
        params.hires.upscaler =
            hires_upscaler(&h.upscaler).ok_or_else(|| format!("unknown hires upscaler {:?}", h.upscaler))?;
        params.hires.target_width = int(h.width, "hires width")?;
        params.hires.target_height = int(h.height, "hires height")?;
        params.hires.steps = int(h.steps, "hires steps")?;
        params.hires.denoising_strength = h.denoising_strength;
    }
    if !inputs.loras.is_empty() {
        params.loras = inputs.loras.as_ptr();
        params.lora_count = u32::try_from(inputs.loras.len()).map_err(|_| "too many LoRAs")?;
    }
    params.width = int(req.width, "width")?;
    params.height = int(req.height, "height")?;
    params.seed = seed;
    params.batch_count = int(req.batch_count, "batch_count")?;
    params.sample_params.sample_steps = int(req.steps, "steps")?;
    params.sample_params.guidance.txt_cfg = req.cfg_scale;
    params.sample_params.sample_method = sampler;
    params.sample_params.scheduler = scheduler;
    if req.vae == VaePlacement::Tiled {
        // Tile size 0 takes the library's default (32 latent pixels), overlap 0.5 as its CLI.
        params.vae_tiling_params.enabled = true;
        params.vae_tiling_params.target_overlap = 0.5;
    }
    Ok(params)
}

/// Copies the images of a `generate_image` result into owned [`RgbImage`]s, then hands the
/// array back to `free_sd_images`, which frees each image's pixels and the array, as the C
/// API requires; an image that came back without pixels is an error.
///
/// # Safety
/// `images` is a non-NULL result of `generate_image` for `batch` images, not freed yet: an
/// array of `batch` images from calloc, each with `width·height·channel` bytes from malloc
/// (or NULL). It is freed here, exactly once.
unsafe fn take_images(images: *mut sys::sd_image_t, batch: i32) -> Result<Vec<RgbImage>, String> {
    // SAFETY: the caller's contract.
    let owned = unsafe {
        let slice = std::slice::from_raw_parts(images, usize::try_from(batch).unwrap_or(0));
        let owned: Vec<Option<RgbImage>> = slice.iter().map(|img| RgbImage::copy_from(img)).collect();
        sys::free_sd_images(images, batch);
        owned
    };
    owned
        .into_iter()
        .enumerate()
        .map(|(i, img)| img.ok_or_else(|| format!("image {i} of the batch came back empty")))
        .collect()
}

/// One generated image, 8-bit RGB, rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Copies an `sd_image_t` into RGB (grey and RGBA converted); `None` without pixels.
    ///
    /// # Safety
    /// `img.data` is NULL or points to `width·height·channel` readable bytes.
    pub(crate) unsafe fn copy_from(img: &sys::sd_image_t) -> Option<RgbImage> {
        if img.data.is_null() || img.width == 0 || img.height == 0 || !(1..=4).contains(&img.channel) {
            return None;
        }
        let n = img.width as usize * img.height as usize;
        let c = img.channel as usize;
        // SAFETY: the caller's contract.
        let data = unsafe { std::slice::from_raw_parts(img.data, n * c) };
        let pixels = match c {
            3 => data.to_vec(),
            1 | 2 => data.chunks_exact(c).flat_map(|p| [p[0]; 3]).collect(),
            _ => data.chunks_exact(c).flat_map(|p| [p[0], p[1], p[2]]).collect(),
        };
        Some(RgbImage {
            width: img.width,
            height: img.height,
            pixels,
        })
    }
}

/// A sampler by its stable-diffusion.cpp name (`euler_a`, `dpm++2m`, …); empty is the
/// model's default. `None` for an unknown name.
pub fn sample_method(name: &str) -> Option<sys::sample_method_t> {
    by_name(
        name,
        sys::sample_method_t::SAMPLE_METHOD_COUNT,
        sys::str_to_sample_method,
    )
}

/// A scheduler by its stable-diffusion.cpp name (`discrete`, `karras`, …); empty is the
/// default. `None` for an unknown name.
pub fn scheduler(name: &str) -> Option<sys::scheduler_t> {
    by_name(name, sys::scheduler_t::SCHEDULER_COUNT, sys::str_to_scheduler)
}

/// A hires-fix upscaler by its stable-diffusion.cpp name, which is A1111's (`Latent`,
/// `Latent (nearest)`, `Lanczos`, `Nearest`, …; `Model` needs an upscaler model vramd does
/// not configure, and `None` turns hires off, so neither is accepted). `None` when unknown.
pub fn hires_upscaler(name: &str) -> Option<sys::sd_hires_upscaler_t> {
    if name.is_empty() || name == "None" || name == "Model" {
        return None;
    }
    by_name(
        name,
        sys::sd_hires_upscaler_t::SD_HIRES_UPSCALER_COUNT,
        sys::str_to_sd_hires_upscaler,
    )
}

/// A C enum by name through the library's own `str_to_*`, which answers `count` (the enum's
/// last value, which also stands for "the default") for a name it does not know.
fn by_name<T: Copy + PartialEq>(name: &str, count: T, parse: unsafe extern "C" fn(*const c_char) -> T) -> Option<T> {
    if name.is_empty() {
        return Some(count);
    }
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated string; the function only compares it.
    let v = unsafe { parse(c.as_ptr()) };
    (v != count).then_some(v)
}

/// The first GPU ggml knows (`CUDA0`) as `cuda:0`; `None` on a CPU-only build or machine.
pub fn gpu_device() -> Option<String> {
    // SAFETY: ggml's device registry is static; the name is a NUL-terminated string it owns.
    let name = unsafe {
        let dev = sys::ggml_backend_dev_by_type(sys::ggml_backend_dev_type::GGML_BACKEND_DEVICE_TYPE_GPU);
        if dev.is_null() {
            return None;
        }
        c_str(sys::ggml_backend_dev_name(dev))?
    };
    // `CUDA0`: the backend, then the index.
    let index = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    Some(device_label(&name[..name.len() - index.len()], &name))
}

/// The preview callback's type.
pub type PreviewCallback = unsafe extern "C" fn(i32, i32, *mut sys::sd_image_t, bool, *mut std::ffi::c_void);

/// ggml's report of the CPU features this build uses (`SSE3 = 1 | AVX2 = 1 | …`).
pub fn system_info() -> String {
    // SAFETY: a static NUL-terminated string the library keeps (or NULL).
    unsafe { c_str(sys::sd_get_system_info()) }.unwrap_or_default()
}

/// Installs the process-wide log, progress and preview callbacks (the engine thread does,
/// once). Previews are the latent projected to RGB (`PREVIEW_PROJ`: no VAE run, so no
/// memory beyond a latent-sized picture), of the denoised latent, every step.
pub fn set_callbacks(
    log: unsafe extern "C" fn(sys::sd_log_level_t, *const c_char, *mut std::ffi::c_void),
    progress: unsafe extern "C" fn(i32, i32, f32, *mut std::ffi::c_void),
    preview: PreviewCallback,
) {
    // SAFETY: all are plain functions that never unwind into C and need no user data.
    unsafe {
        sys::sd_set_log_callback(Some(log), std::ptr::null_mut());
        sys::sd_set_progress_callback(Some(progress), std::ptr::null_mut());
        sys::sd_set_preview_callback(
            Some(preview),
            sys::preview_t::PREVIEW_PROJ,
            1,
            true,
            false,
            std::ptr::null_mut(),
        );
    }
}

/// A borrowed C string as UTF-8 (lossy); `None` for NULL.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string alive for the call.
pub unsafe fn c_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

fn c_path(p: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{}: the path contains a NUL byte", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_the_library() {
        assert_eq!(
            sample_method("euler_a"),
            Some(sys::sample_method_t::EULER_A_SAMPLE_METHOD)
        );
        assert_eq!(
            sample_method("dpm++2m"),
            Some(sys::sample_method_t::DPMPP2M_SAMPLE_METHOD)
        );
        assert_eq!(sample_method(""), Some(sys::sample_method_t::SAMPLE_METHOD_COUNT));
        assert_eq!(sample_method("euler-a"), None);
        assert_eq!(sample_method("a\0b"), None);
        assert_eq!(scheduler("karras"), Some(sys::scheduler_t::KARRAS_SCHEDULER));
        assert_eq!(scheduler(""), Some(sys::scheduler_t::SCHEDULER_COUNT));
        assert_eq!(scheduler("sometimes"), None);
    }

    /// The engine's valid request, with every field the C parameters carry set apart from
    /// the defaults.
    fn request() -> ImageRequest {
        ImageRequest {
            height: 32,
            steps: 3,
            cfg_scale: 2.5,
            sampler: "euler_a".into(),
            scheduler: "karras".into(),
            batch_count: 2,
            vae: VaePlacement::Tiled,
            ..crate::engine::tests::request()
        }
    }

    #[test]
    fn requests_become_c_params_at_the_edge() {
        let params = |req: &ImageRequest| img_gen_params(req, 7, &mut Inputs::new(req).unwrap());
        let mut inputs = Inputs::new(&request()).unwrap();
        let p = img_gen_params(&request(), 7, &mut inputs).unwrap();
        assert_eq!((p.width, p.height, p.seed, p.batch_count), (64, 32, 7, 2));
        assert_eq!(p.prompt, inputs.prompt.as_ptr());
        assert_eq!(p.negative_prompt, inputs.negative.as_ptr());
        assert!(p.init_image.data.is_null() && !p.hires.enabled && p.lora_count == 0);
        let s = &p.sample_params;
        assert_eq!((s.sample_steps, s.guidance.txt_cfg), (3, 2.5));
        assert_eq!(s.sample_method, sys::sample_method_t::EULER_A_SAMPLE_METHOD);
        assert_eq!(s.scheduler, sys::scheduler_t::KARRAS_SCHEDULER);
        assert!(p.vae_tiling_params.enabled, "tiled decode");
        for vae in [VaePlacement::Gpu, VaePlacement::Cpu] {
            let p = params(&ImageRequest { vae, ..request() }).unwrap();
            assert!(!p.vae_tiling_params.enabled, "{vae:?}");
        }
        let defaults = ImageRequest {
            sampler: String::new(),
            scheduler: String::new(),
            ..request()
        };
        let p = params(&defaults).unwrap();
        assert_eq!(p.sample_params.sample_method, sys::sample_method_t::SAMPLE_METHOD_COUNT);
        assert_eq!(p.sample_params.scheduler, sys::scheduler_t::SCHEDULER_COUNT);
        let unknown = ImageRequest {
            sampler: "euler-ish".into(),
            ..request()
        };
        assert!(params(&unknown).unwrap_err().contains("sampler"));
        let huge = ImageRequest {
            width: u32::MAX,
            ..request()
        };
        assert_eq!(params(&huge).unwrap_err(), "width is too large");
    }

    #[test]
    fn sources_hires_and_loras_become_c_params() {
        use base64::Engine as _;
        use vramd_protocol::{Hires, Lora, Pixels, SourceImage};
        let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
        let req = ImageRequest {
            source: Some(SourceImage {
                image: Pixels {
                    width: 64,
                    height: 32,
                    channels: 3,
                    base64: b64(64 * 32 * 3),
                },
                mask: Some(Pixels {
                    width: 64,
                    height: 32,
                    channels: 1,
                    base64: b64(64 * 32),
                }),
                strength: 0.6,
            }),
            hires: Some(Hires {
                upscaler: "Latent (nearest)".into(),
                width: 128,
                height: 64,
                steps: 3,
                denoising_strength: 0.5,
            }),
            loras: vec![Lora {
                path: "/l/a.safetensors".into(),
                multiplier: 0.8,
            }],
            ..request()
        };
        let mut inputs = Inputs::new(&req).unwrap();
        let p = img_gen_params(&req, 7, &mut inputs).unwrap();
        assert_eq!(
            (p.init_image.width, p.init_image.height, p.init_image.channel),
            (64, 32, 3)
        );
        assert_eq!((p.mask_image.width, p.mask_image.channel), (64, 1));
        assert_eq!(p.strength, 0.6);
        assert!(p.hires.enabled);
        assert_eq!(
            p.hires.upscaler,
            sys::sd_hires_upscaler_t::SD_HIRES_UPSCALER_LATENT_NEAREST
        );
        assert_eq!(
            (p.hires.target_width, p.hires.target_height, p.hires.steps),
            (128, 64, 3)
        );
        assert_eq!(p.lora_count, 1);
        // SAFETY: one sd_lora_t whose path is a NUL-terminated string owned by `inputs`.
        let path = unsafe { CStr::from_ptr((*p.loras).path) };
        assert_eq!(path.to_str().unwrap(), "/l/a.safetensors");
        for name in ["Lanczos", "Nearest", "Latent", "Latent (bicubic antialiased)"] {
            assert!(hires_upscaler(name).is_some(), "{name}");
        }
        for name in ["", "None", "Model", "ESRGAN_4x", "latent"] {
            assert!(hires_upscaler(name).is_none(), "{name}");
        }
        // Pixels that do not fill their size are refused before the call.
        let short = ImageRequest {
            source: Some(SourceImage {
                image: Pixels {
                    width: 64,
                    height: 32,
                    channels: 3,
                    base64: b64(10),
                },
                mask: None,
                strength: 0.5,
            }),
            ..request()
        };
        assert!(Inputs::new(&short).err().unwrap().contains("source image"));
    }

    #[test]
    fn images_are_copied_as_rgb() {
        let mut rgba = vec![1u8, 2, 3, 255, 4, 5, 6, 255];
        let img = sys::sd_image_t {
            width: 2,
            height: 1,
            channel: 4,
            data: rgba.as_mut_ptr(),
        };
        // SAFETY: 2·1·4 bytes.
        let out = unsafe { RgbImage::copy_from(&img) }.unwrap();
        assert_eq!(out.pixels, vec![1, 2, 3, 4, 5, 6]);
        let none = sys::sd_image_t {
            data: std::ptr::null_mut(),
            ..img
        };
        // SAFETY: NULL data.
        assert!(unsafe { RgbImage::copy_from(&none) }.is_none());
    }
}
