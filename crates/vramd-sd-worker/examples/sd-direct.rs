//! The benchmark suite's reference for row 3 (benches/suite.py): one image made by calling
//! stable-diffusion.cpp (`diffusion-rs-sys`) in-process, through the same thin wrapper the
//! SD worker uses (`src/sd.rs`, included here by path), with no daemon, socket, worker
//! protocol, PNG or base64 in between.
//!
//! `sd-direct --diffusion-model F --llm F --taesd F [--size 256] [--steps 4] [--cfg 1]
//! [--threads 2] [--rounds 3]` creates one context, makes one warm-up image, then prints one
//! JSON line per round: `{"ms": …}`, the `generate_image` call alone.

#[path = "../src/sd.rs"]
#[allow(dead_code)]
mod sd;

use std::path::PathBuf;
use std::time::Instant;

use vramd_protocol::{ImageRequest, VaePlacement};

unsafe extern "C" fn quiet(_: diffusion_rs_sys::sd_log_level_t, _: *const std::ffi::c_char, _: *mut std::ffi::c_void) {}
unsafe extern "C" fn no_progress(_: i32, _: i32, _: f32, _: *mut std::ffi::c_void) {}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut params = sd::ContextParams {
        mmap: true,
        threads: 2,
        ..Default::default()
    };
    let (mut size, mut steps, mut cfg, mut rounds) = (256u32, 4u32, 1.0f32, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--diffusion-model" => params.diffusion_model = Some(PathBuf::from(value)),
            "--model" => params.model = Some(PathBuf::from(value)),
            "--llm" => params.llm = Some(PathBuf::from(value)),
            "--taesd" => params.taesd = Some(PathBuf::from(value)),
            "--vae" => params.vae = Some(PathBuf::from(value)),
            "--size" => size = value.parse()?,
            "--steps" => steps = value.parse()?,
            "--cfg" => cfg = value.parse()?,
            "--threads" => params.threads = value.parse()?,
            "--rounds" => rounds = value.parse()?,
            _ => return Err(format!("unknown argument {flag}").into()),
        }
    }
    // SAFETY: plain functions that never unwind; nothing else in this process logs through
    // stable-diffusion.cpp.
    unsafe {
        diffusion_rs_sys::sd_set_log_callback(Some(quiet), std::ptr::null_mut());
        diffusion_rs_sys::sd_set_progress_callback(Some(no_progress), std::ptr::null_mut());
    }
    let mut ctx = sd::SdContext::new(&params)?.ok_or("stable-diffusion.cpp could not create the context")?;
    let req = ImageRequest {
        request_id: "bench".into(),
        prompt: "a lighthouse on a cliff at dusk".into(),
        negative_prompt: String::new(),
        width: size,
        height: size,
        steps,
        cfg_scale: cfg,
        seed: Some(42),
        sampler: "euler".into(),
        scheduler: String::new(),
        batch_count: 1,
        vae: VaePlacement::Gpu,
        png_text: Vec::new(),
        source: None,
        hires: None,
        loras: Vec::new(),
    };
    for round in 0..=rounds {
        let t = Instant::now();
        let images = ctx.generate(&req, 42)?.ok_or("stable-diffusion.cpp made no image")?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(images.len(), 1);
        if round > 0 {
            println!("{{\"ms\": {ms:.3}}}");
        }
    }
    Ok(())
}
