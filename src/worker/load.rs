//! The load call: what a configured model becomes on the wire. The configuration is the
//! daemon's; the request shapes are the protocol's, so the translation lives here.

use vramd_protocol::{
    Health, ImageFiles, ImageLoadRequest, ImageLoadResponse, LoadOptions, LoadRequest, LoadResponse, VaePlacement,
};

use super::client::{CallError, WorkerClient};
use crate::config::{GpuLayers, ModelConfig, ModelKind, ModelSource};

/// What a worker reported after loading: its memory, and the context length in effect
/// (LLMs; `None` for image models).
pub struct LoadReport {
    pub health: Health,
    pub context_length: Option<u32>,
}

impl WorkerClient {
    /// Loads `cfg` into the worker; `vae` is where an image model's VAE starts out.
    pub async fn load(&self, cfg: &ModelConfig, vae: VaePlacement) -> Result<LoadReport, CallError> {
        match cfg.kind {
            ModelKind::Llm => {
                let req = llm_request(cfg)
                    .ok_or_else(|| CallError::Protocol("an llm model has one file and llm options".into()))?;
                let resp: LoadResponse = self.post(vramd_protocol::LOAD, &req).await?;
                Ok(LoadReport {
                    health: resp.health,
                    context_length: Some(resp.context_length),
                })
            }
            ModelKind::Image => {
                let resp: ImageLoadResponse = self.post(vramd_protocol::LOAD, &image_request(cfg, vae)).await?;
                Ok(LoadReport {
                    health: resp.health,
                    context_length: None,
                })
            }
        }
    }
}

fn llm_request(cfg: &ModelConfig) -> Option<LoadRequest> {
    let (ModelSource::File { path }, Some(llm)) = (&cfg.source, &cfg.llm_options) else {
        return None;
    };
    Some(LoadRequest {
        model: cfg.name.clone(),
        path: path.clone(),
        options: LoadOptions {
            context_length: llm.context_length,
            gpu_layers: match llm.gpu_layers {
                GpuLayers::All => u32::MAX,
                GpuLayers::Count(n) => n,
            },
            threads: llm.threads,
            mmap: llm.mmap,
            batch: llm.batch,
            embeddings: llm.embeddings,
            kv_ram: llm.kv_ram.0,
            parallel: llm.parallel,
        },
    })
}

fn image_request(cfg: &ModelConfig, vae: VaePlacement) -> ImageLoadRequest {
    let files = match &cfg.source {
        ModelSource::File { path } => ImageFiles {
            model: Some(path.clone()),
            ..Default::default()
        },
        ModelSource::Components(c) => ImageFiles {
            model: None,
            diffusion_model: c.diffusion_model.clone(),
            vae: c.vae.clone(),
            taesd: c.taesd.clone(),
            clip_l: c.clip_l.clone(),
            clip_g: c.clip_g.clone(),
            t5xxl: c.t5xxl.clone(),
            llm: c.llm.clone(),
        },
    };
    ImageLoadRequest {
        model: cfg.name.clone(),
        files,
        mmap: true,
        threads: 0,
        vae,
    }
}
