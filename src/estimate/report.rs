//! What `GET /v1/estimate` and D-Bus `Estimate` answer: a model's estimate for one query,
//! typed, so both transports show the same thing. Pure, like the rest of `estimate`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::{image, image_weights, llm, llm_shape, Calibration, ImageWeights, LlmShape};
use crate::config::{ModelConfig, ModelKind};

/// What estimates know about a model's files.
#[derive(Clone, Debug)]
pub enum Shape {
    Llm(LlmShape),
    Image(ImageWeights),
    /// Not a GGUF vramd can read: only the files' size is known.
    Opaque(u64),
}

impl Shape {
    /// Reads the headers of a model's files (the one place estimates touch files).
    pub fn read(kind: ModelKind, files: &[(&'static str, &Path)]) -> Shape {
        let size = || {
            files
                .iter()
                .filter_map(|(_, p)| std::fs::metadata(p).ok())
                .map(|m| m.len())
                .sum()
        };
        match kind {
            ModelKind::Llm => match files.first().map(|(_, p)| llm_shape(p)) {
                Some(Ok(s)) => Shape::Llm(s),
                _ => Shape::Opaque(size()),
            },
            ModelKind::Image => match image_weights(files) {
                Ok(w) => Shape::Image(w),
                Err(_) => Shape::Opaque(size()),
            },
        }
    }
}

/// What to estimate: an image size, an LLM context, or just the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EstimateQuery {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub context: Option<u32>,
}

/// A model's estimate for one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Estimate {
    pub model: String,
    pub kind: ModelKind,
    #[serde(flatten)]
    pub detail: Detail,
    pub total: u64,
    pub calibrated: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Llm {
        /// Tokens of context per slot.
        context_length: u32,
        /// Slots, each with a KV cache of `context_length` tokens.
        parallel: u32,
        parts: LlmParts,
    },
    Image {
        width: u32,
        height: u32,
        parts: ImageParts,
    },
    /// Not a GGUF file vramd can read: the estimate is the file size.
    Opaque {
        parts: OpaqueParts,
        note: &'static str,
    },
    /// The files do not match the model's kind.
    None {},
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LlmParts {
    pub weights: u64,
    pub context: u64,
    pub compute: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageParts {
    pub weights: u64,
    pub components: BTreeMap<String, u64>,
    pub sampling: u64,
    pub vae_decode: VaeParts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VaeParts {
    pub gpu: u64,
    pub tiled: u64,
    pub cpu: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpaqueParts {
    pub weights: u64,
}

/// The context length an LLM runs with: the configured one, else what it was trained for.
pub fn context_length(cfg: &ModelConfig, shape: &Shape) -> u32 {
    let configured = cfg.llm_options.as_ref().map_or(0, |o| o.context_length);
    match shape {
        Shape::Llm(s) if configured == 0 => s.n_ctx_train,
        _ => configured,
    }
}

/// Sequences an LLM serves at once, each with its own KV cache.
pub fn slots(cfg: &ModelConfig) -> u32 {
    cfg.llm_options.as_ref().map_or(1, |o| o.parallel)
}

/// Estimates `cfg` (whose files have `shape`) for `query`.
pub fn report(cfg: &ModelConfig, shape: &Shape, query: EstimateQuery, calibration: &Calibration) -> Estimate {
    let model = cfg.name.as_str();
    let (detail, total, calibrated) = match (cfg.kind, shape) {
        (ModelKind::Llm, Shape::Llm(s)) => {
            let ctx = query.context.unwrap_or_else(|| context_length(cfg, shape));
            let e = llm(s, ctx, slots(cfg), Some(calibration), model);
            let context_length = if ctx == 0 { s.n_ctx_train } else { ctx };
            let parts = LlmParts {
                weights: e.weights,
                context: e.context,
                compute: e.compute,
            };
            (
                Detail::Llm {
                    context_length,
                    parallel: slots(cfg),
                    parts,
                },
                e.total,
                e.calibrated,
            )
        }
        (ModelKind::Image, Shape::Image(w)) => {
            let (width, height) = (query.width.unwrap_or(512), query.height.unwrap_or(512));
            let e = image(w, width, height, Some(calibration), model);
            let parts = ImageParts {
                weights: e.weights,
                components: w.components.iter().cloned().collect(),
                sampling: e.sampling,
                vae_decode: VaeParts {
                    gpu: e.vae_gpu,
                    tiled: e.vae_tiled,
                    cpu: e.vae_cpu,
                },
            };
            (Detail::Image { width, height, parts }, e.total, e.calibrated)
        }
        (_, Shape::Opaque(bytes)) => {
            let parts = OpaqueParts { weights: *bytes };
            let note = "not a GGUF file vramd can read: the estimate is the file size";
            (Detail::Opaque { parts, note }, *bytes, false)
        }
        _ => (Detail::None {}, 0, false),
    };
    Estimate {
        model: model.to_owned(),
        kind: cfg.kind,
        detail,
        total,
        calibrated,
    }
}
