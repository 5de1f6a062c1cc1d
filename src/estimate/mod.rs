//! Memory estimates, before anything is loaded.
//!
//! Pure functions of a model's shape (read from its GGUF header without loading it) and of
//! the request (context length, image size), corrected by what past runs measured
//! ([`Calibration`]). Reading files is in [`shape`]; everything here is arithmetic.
//!
//! Anchors for images: stable-diffusion.cpp's ggml SDXL VAE needed about 2.5 GB to decode
//! 1024×1024 and about 176 MB tiled; PyTorch UIs budget 2,200 bytes × W × H × dtype size.
//! We start from the ggml figure (≈ 2,384 bytes per output pixel) and let calibration converge
//! on what this machine measures.

mod calibration;
mod report;
pub mod shape;

use serde::Serialize;

pub use calibration::{Calibration, Phase};
pub use report::{context_length, report, slots, Estimate, EstimateQuery, Shape};
pub use shape::{image_weights, llm_shape, ImageWeights, LlmShape};

/// VAE decode on the device: bytes per output pixel (ggml SDXL VAE: 2.5 GB at 1024²).
const VAE_BYTES_PER_PIXEL: u64 = 2_384;
/// Tiled VAE decode: about constant (the tile size is), 176 MB for SDXL.
const VAE_TILED_BYTES: u64 = 176 << 20;
/// The tiny autoencoder (TAESD) decodes with a small fraction of the full VAE's memory.
const TAESD_DIVISOR: u64 = 16;
/// Diffusion sampling activations, per latent pixel (an 8×8 block of output pixels).
const SAMPLING_BYTES_PER_LATENT: u64 = 32 << 10;
/// The part of sampling compute that scales with the model (text encoders, graph
/// overhead): a quarter of the weights.
const SAMPLING_WEIGHTS_DIVISOR: u64 = 4;
/// llama.cpp's physical batch for prompt processing, which sizes its compute buffer.
const UBATCH: u64 = 512;

/// An LLM's memory at a given context length per slot, with `slots` sequences served at once
/// (each has a KV cache of its own: `[[models]] parallel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LlmEstimate {
    pub weights: u64,
    /// KV cache: 2 · n_layer · n_ctx · slots · n_embd_kv · 2 bytes (f16).
    pub context: u64,
    pub compute: u64,
    pub total: u64,
    pub calibrated: bool,
}

pub fn llm(shape: &LlmShape, n_ctx: u32, slots: u32, calibration: Option<&Calibration>, model: &str) -> LlmEstimate {
    let n_ctx = u64::from(if n_ctx == 0 { shape.n_ctx_train } else { n_ctx });
    let n_embd_kv = shape.n_embd / shape.n_head.max(1) * shape.n_head_kv;
    let context = 2 * shape.n_layer * n_ctx * u64::from(slots.max(1)) * n_embd_kv * 2;
    // Logits for one batch, plus activations and attention scores of one batch.
    let raw_compute = 4 * UBATCH * (shape.n_vocab + 4 * shape.n_embd + n_ctx);
    let factor = calibration.and_then(|c| c.factor(model, Phase::LlmCompute));
    let compute = apply(raw_compute, factor);
    LlmEstimate {
        weights: shape.weights,
        context,
        compute,
        total: shape.weights + context + compute,
        calibrated: factor.is_some(),
    }
}

/// An image generation's memory at a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ImageEstimate {
    pub weights: u64,
    /// Sampling (text encoders and diffusion) compute peak.
    pub sampling: u64,
    /// VAE decode on the device, whole image.
    pub vae_gpu: u64,
    /// VAE decode on the device, in tiles.
    pub vae_tiled: u64,
    /// Device bytes with the VAE decode on the CPU.
    pub vae_cpu: u64,
    /// Peak with the VAE on the device: weights + max(sampling, decode).
    pub total: u64,
    pub calibrated: bool,
}

pub fn image(
    weights: &ImageWeights,
    width: u32,
    height: u32,
    calibration: Option<&Calibration>,
    model: &str,
) -> ImageEstimate {
    let pixels = u64::from(width) * u64::from(height);
    let latent = pixels / 64;
    let divisor = if weights.taesd { TAESD_DIVISOR } else { 1 };
    let raw_vae = VAE_BYTES_PER_PIXEL * pixels / divisor;
    let raw_sampling = weights.total() / SAMPLING_WEIGHTS_DIVISOR + SAMPLING_BYTES_PER_LATENT * latent;
    let vae_factor = calibration.and_then(|c| c.factor(model, Phase::VaeDecode));
    let tiled_factor = calibration
        .and_then(|c| c.factor(model, Phase::VaeTiled))
        .or(vae_factor);
    let sampling_factor = calibration.and_then(|c| c.factor(model, Phase::Sampling));
    let vae_gpu = apply(raw_vae, vae_factor);
    let sampling = apply(raw_sampling, sampling_factor);
    let vae_tiled = vae_gpu.min(apply(VAE_TILED_BYTES / divisor, tiled_factor));
    ImageEstimate {
        weights: weights.total(),
        sampling,
        vae_gpu,
        vae_tiled,
        vae_cpu: 0,
        total: weights.total() + sampling.max(vae_gpu),
        calibrated: vae_factor.is_some() || sampling_factor.is_some() || tiled_factor.is_some(),
    }
}

/// The raw (uncalibrated) estimate of a phase, which calibration divides measurements by.
pub fn raw_image_phase(weights: &ImageWeights, width: u32, height: u32, phase: Phase) -> u64 {
    let e = image(weights, width, height, None, "");
    match phase {
        Phase::Sampling => e.sampling,
        Phase::VaeDecode => e.vae_gpu,
        // Raw, not limited by the whole decode: what the tiles alone are expected to take.
        Phase::VaeTiled => VAE_TILED_BYTES / if weights.taesd { TAESD_DIVISOR } else { 1 },
        Phase::LlmCompute => 0,
    }
}

fn apply(raw: u64, factor: Option<f64>) -> u64 {
    match factor {
        Some(f) => (raw as f64 * f).round() as u64,
        None => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> LlmShape {
        LlmShape {
            n_layer: 2,
            n_embd: 64,
            n_head: 4,
            n_head_kv: 4,
            n_ctx_train: 512,
            n_vocab: 683,
            weights: 678_656,
        }
    }

    #[test]
    fn llm_kv_matches_llama_cpp() {
        // What the llama.cpp worker measured for the tiny test model at n_ctx 512.
        let e = llm(&tiny(), 512, 1, None, "m");
        assert_eq!(e.context, 262_144);
        assert_eq!(e.weights, 678_656);
        // Measured compute buffer: 2,600,468 bytes. The raw estimate is within 20 %.
        assert!((2_100_000..3_200_000).contains(&e.compute), "{}", e.compute);
        assert_eq!(e.total, e.weights + e.context + e.compute);
        assert_eq!(
            llm(&tiny(), 0, 1, None, "m").context,
            e.context,
            "0 = the training context"
        );
        let gqa = LlmShape { n_head_kv: 1, ..tiny() };
        assert_eq!(llm(&gqa, 512, 1, None, "m").context, 262_144 / 4);
        let two = llm(&tiny(), 512, 2, None, "m");
        assert_eq!(two.context, 2 * e.context, "each slot has its own KV");
        assert_eq!(two.compute, e.compute);
    }

    #[test]
    fn vae_anchor_is_the_ggml_sdxl_figure() {
        let w = ImageWeights {
            components: vec![("diffusion_model".into(), 5 << 30)],
            taesd: false,
        };
        let e = image(&w, 1024, 1024, None, "sdxl");
        let gb = e.vae_gpu as f64 / 1e9;
        assert!((2.4..2.6).contains(&gb), "{gb}");
        assert_eq!(e.vae_tiled, 176 << 20);
        assert_eq!(e.vae_cpu, 0);
        assert_eq!(e.total, (5 << 30) + e.sampling.max(e.vae_gpu));
        // Four times the pixels, four times the decode; tiling stays flat.
        let big = image(&w, 2048, 2048, None, "sdxl");
        assert_eq!(big.vae_gpu, 4 * e.vae_gpu);
        assert_eq!(big.vae_tiled, e.vae_tiled);
        // Small images: tiling never costs more than decoding whole.
        let small = image(&w, 64, 64, None, "sdxl");
        assert!(small.vae_tiled <= small.vae_gpu);
    }

    #[test]
    fn calibration_moves_estimates_to_measurements() {
        let w = ImageWeights {
            components: vec![("model".into(), 1 << 30)],
            taesd: false,
        };
        let mut c = Calibration::default();
        let raw = raw_image_phase(&w, 512, 512, Phase::VaeDecode);
        for _ in 0..8 {
            c.observe("sd", Phase::VaeDecode, raw / 2, raw);
        }
        let e = image(&w, 512, 512, Some(&c), "sd");
        assert!(e.calibrated);
        let ratio = e.vae_gpu as f64 / (raw / 2) as f64;
        assert!((0.98..1.02).contains(&ratio), "{ratio}");
        assert!(!image(&w, 512, 512, Some(&c), "other").calibrated, "per model");
    }

    #[test]
    fn tiled_decodes_learn_their_own_factor() {
        let w = ImageWeights {
            components: vec![("model".into(), 1 << 30)],
            taesd: false,
        };
        let mut c = Calibration::default();
        // What stable-diffusion.cpp's SD1 VAE measured in tiles on the CPU, at any size.
        let raw = raw_image_phase(&w, 320, 320, Phase::VaeTiled);
        assert_eq!(raw, VAE_TILED_BYTES);
        c.observe("sd", Phase::VaeTiled, 436_228_588, raw);
        let e = image(&w, 1024, 1024, Some(&c), "sd");
        assert_eq!(e.vae_tiled, 436_228_588, "the same at another size");
        assert_eq!(
            e.vae_gpu,
            image(&w, 1024, 1024, None, "sd").vae_gpu,
            "whole decodes untouched"
        );
        // Without a tiled measurement the whole decode's factor stands in.
        let mut whole = Calibration::default();
        whole.observe(
            "sd",
            Phase::VaeDecode,
            raw_image_phase(&w, 512, 512, Phase::VaeDecode) * 2,
            raw_image_phase(&w, 512, 512, Phase::VaeDecode),
        );
        assert_eq!(image(&w, 1024, 1024, Some(&whole), "sd").vae_tiled, 2 * VAE_TILED_BYTES);
    }
}
