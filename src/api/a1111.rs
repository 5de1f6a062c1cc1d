//! The rest of AUTOMATIC1111's `/sdapi/v1` that WebUIs read before they generate: Open WebUI
//! and SillyTavern call `GET options` to check the connection and to learn the current
//! checkpoint, set the checkpoint with `POST options`, and fill their menus from `samplers`,
//! `schedulers`, `upscalers`, `sd-vae` and `sd-models`. `txt2img`, `progress` and `interrupt`
//! are in `images.rs`.
//!
//! Lists answer what vramd really has: an empty list where it has none of the thing (no
//! upscaler models, no `sd-modules`), never a made-up entry that would fail when chosen.
//! Upscalers and latent upscale modes are stable-diffusion.cpp's hires-fix upscalers, under
//! A1111's names (which are the engine's own); LoRAs are the files in the image models'
//! `lora_dir`.
//!
//! The options are A1111's settings dict: vramd acts on `sd_model_checkpoint` (the model A1111
//! requests use) and keeps every other key as the client sent it, so a client that writes the
//! whole dict back (Open WebUI does) reads back what it wrote. They are kept in
//! `[daemon] state_dir`/`a1111-options.json`, so the chosen checkpoint survives a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use super::images::{HIRES_UPSCALERS, SAMPLERS, SCHEDULERS};
use super::{ApiError, ApiJson, AppState};
use crate::config::{Config, ModelConfig, ModelSource};

const FILE: &str = "a1111-options.json";
const CHECKPOINT: &str = "sd_model_checkpoint";

/// The options clients set, and where they are kept. One mutex, held only for a merge and
/// the file write that follows it (no `.await` under it), so concurrent `POST options`
/// reach the file in the order they changed the dict.
pub struct A1111Options {
    path: PathBuf,
    options: Mutex<Map<String, Value>>,
}

impl A1111Options {
    /// Reads the options kept in `state_dir`; a missing file is a first start, and a broken
    /// one is logged and ignored (the defaults are a working answer, a refusal to start is not).
    pub fn load(state_dir: &Path) -> A1111Options {
        let path = state_dir.join(FILE);
        let options = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Map<String, Value>>(&bytes) {
                Ok(map) => map,
                Err(e) => {
                    tracing::warn!(file = %path.display(), "ignoring the A1111 options, not a JSON object: {e}");
                    Map::new()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), "ignoring the A1111 options: {e}");
                Map::new()
            }
        };
        A1111Options {
            path,
            options: Mutex::new(options),
        }
    }

    fn get(&self) -> Map<String, Value> {
        self.options.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The checkpoint a client chose, as it was stored (a model name).
    fn checkpoint(&self) -> Option<String> {
        let options = self.options.lock().unwrap_or_else(|e| e.into_inner());
        options.get(CHECKPOINT).and_then(Value::as_str).map(str::to_owned)
    }

    /// Merges `update` in and writes the whole dict (temporary file, then rename, so a crash
    /// leaves the old file or the new one). A failed write is logged: the change still holds
    /// until the daemon stops.
    fn merge(&self, update: Map<String, Value>) {
        let mut options = self.options.lock().unwrap_or_else(|e| e.into_inner());
        options.extend(update);
        let text = Value::Object(options.clone()).to_string();
        if let Err(e) = write_atomically(&self.path, text.as_bytes()) {
            tracing::warn!(file = %self.path.display(), "could not keep the A1111 options: {e}");
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The main file of an image model: its checkpoint, or its diffusion model.
fn main_file(m: &ModelConfig) -> Option<&Path> {
    m.source.files().first().map(|(_, p)| *p)
}

/// The image model a client means by `wanted`: its name (which is also its A1111 title), its
/// file's path, or its file's name.
pub fn find_checkpoint<'a>(config: &'a Config, wanted: &str) -> Option<&'a ModelConfig> {
    let by_name = config.image_models().find(|m| m.name == wanted);
    by_name.or_else(|| {
        config.image_models().find(|m| {
            main_file(m)
                .is_some_and(|f| f.to_str() == Some(wanted) || f.file_name().and_then(|n| n.to_str()) == Some(wanted))
        })
    })
}

/// The checkpoint A1111 requests use: the one a client chose (while it is still configured),
/// else the default image model.
fn current(state: &AppState) -> Option<&ModelConfig> {
    let chosen = state.a1111.checkpoint();
    chosen
        .and_then(|c| find_checkpoint(&state.config, &c))
        .or_else(|| state.config.default_image_model())
}

/// The model of a `txt2img`: vramd's `model`, else `override_settings.sd_model_checkpoint`
/// (for that request only), else the current checkpoint. A name that is no image model is
/// passed on, to be answered with the 404 that lists them.
pub fn txt2img_model(state: &AppState, model: Option<&str>, checkpoint: Option<&str>) -> Result<String, ApiError> {
    if let Some(m) = model.filter(|m| !m.is_empty()) {
        return Ok(m.to_owned());
    }
    if let Some(c) = checkpoint.filter(|c| !c.is_empty()) {
        return Ok(find_checkpoint(&state.config, c).map_or_else(|| c.to_owned(), |m| m.name.clone()));
    }
    current(state)
        .map(|m| m.name.clone())
        .ok_or_else(|| ApiError::InvalidRequest {
            message: "no image model is configured".into(),
            param: Some("model".into()),
        })
}

/// A1111's defaults for the keys clients read, as vramd works: one checkpoint at a time, the
/// model's own VAE, no CLIP skip, PNG output.
fn defaults() -> Map<String, Value> {
    let v = json!({
        "sd_model_checkpoint": null, "sd_checkpoint_hash": null, "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1, "samples_format": "png", "grid_format": "png",
        "sd_checkpoints_limit": 1, "eta_noise_seed_delta": 0, "enable_pnginfo": true,
        "save_images_add_number": true, "show_progress_every_n_steps": 0,
        "live_previews_enable": false, "sd_vae_overrides_per_model_preferences": true,
    });
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object literal"),
    }
}

/// `GET /sdapi/v1/options`: the defaults, what clients set, and the current checkpoint.
pub async fn get_options(State(state): State<AppState>) -> Json<Value> {
    let mut options = defaults();
    options.extend(state.a1111.get());
    let title = current(&state).map(|m| Value::from(m.name.clone()));
    options.insert(CHECKPOINT.into(), title.unwrap_or(Value::Null));
    Json(Value::Object(options))
}

/// `POST /sdapi/v1/options`: any part of the dict. `sd_model_checkpoint` must name an image
/// model (400 otherwise, naming it and the models), which is loaded through the arbiter
/// before the answer, as A1111 loads a checkpoint when it is chosen: a model that cannot
/// fit is the same 507 as a load, and is not chosen. Every other key is kept as sent.
/// Choosing is a generation right (a WebUI over TCP does it), unlike `POST
/// /v1/models/{name}/load`: it only loads an image model the way its next image would.
pub async fn post_options(
    State(state): State<AppState>,
    ApiJson(mut update): ApiJson<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    if let Some(wanted) = update.get(CHECKPOINT) {
        let name = wanted.as_str().and_then(|w| find_checkpoint(&state.config, w));
        let Some(model) = name else {
            let known: Vec<&str> = state.config.image_models().map(|m| m.name.as_str()).collect();
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "sd_model_checkpoint {wanted} is not an image model; the image models are: {}",
                    known.join(", ")
                ),
                param: Some(CHECKPOINT.into()),
            });
        };
        update.insert(CHECKPOINT.into(), Value::from(model.name.clone()));
        state.arbiter.load(&model.name).await?;
    }
    state.a1111.merge(update);
    Ok(Json(Value::Bool(true)))
}

/// `GET /sdapi/v1/sd-models`: the image models; the title is the model's name, which is
/// what vramd requests name (a file hash would mean reading gigabytes at start).
pub async fn sd_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .config
        .image_models()
        .map(|m| {
            let file = main_file(m).map(|p| p.display().to_string());
            json!({"title": m.name, "model_name": m.name, "hash": null, "sha256": null, "filename": file, "config": null})
        })
        .collect();
    Json(Value::Array(models))
}

/// `GET /sdapi/v1/samplers`: the engine's samplers under their A1111 names.
pub async fn samplers() -> Json<Value> {
    let list: Vec<Value> = SAMPLERS
        .iter()
        .map(|(_, names)| json!({"name": names[0], "aliases": &names[1..], "options": {}}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/schedulers`: the engine's schedules, A1111's name first.
pub async fn schedulers() -> Json<Value> {
    let list: Vec<Value> = SCHEDULERS
        .iter()
        .map(|s| {
            let aliases = (!s.aliases.is_empty()).then_some(s.aliases);
            json!({"name": s.name, "label": s.label, "aliases": aliases, "default_rho": s.rho, "need_inner_model": false})
        })
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/upscalers`: the pixel-space upscalers hires fix can use (`None`, which
/// A1111 lists first, is refused by hires fix itself: it would make no larger image). No
/// upscaler models (ESRGAN and the like) are configured in vramd.
pub async fn upscalers() -> Json<Value> {
    let list: Vec<Value> = std::iter::once("None")
        .chain(HIRES_UPSCALERS.iter().copied().filter(|u| !u.starts_with("Latent")))
        .map(|name| json!({"name": name, "model_name": null, "model_path": null, "model_url": null, "scale": 4}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/latent-upscale-modes`: hires fix's latent upscalers.
pub async fn latent_upscale_modes() -> Json<Value> {
    let list: Vec<Value> = HIRES_UPSCALERS
        .iter()
        .filter(|u| u.starts_with("Latent"))
        .map(|name| json!({"name": name}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/loras`: the LoRA files of every image model's `lora_dir`, A1111's fields
/// (`name` is what `<lora:name:weight>` takes).
pub async fn loras(State(state): State<AppState>) -> Json<Value> {
    let mut list: Vec<Value> = Vec::new();
    let dirs = state
        .config
        .image_models()
        .filter_map(|m| m.image_options.as_ref()?.lora_dir.as_deref());
    for dir in dirs {
        for (name, path) in super::images::lora::list(dir) {
            if !list.iter().any(|e| e["name"] == name.as_str()) {
                list.push(json!({"name": name, "alias": name, "path": path.display().to_string(), "metadata": {}}));
            }
        }
    }
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/sd-vae`: the separate VAE and TAESD files of the image models.
pub async fn sd_vae(State(state): State<AppState>) -> Json<Value> {
    let mut list: Vec<Value> = Vec::new();
    for m in state.config.image_models() {
        let ModelSource::Components(c) = &m.source else {
            continue;
        };
        for path in [&c.vae, &c.taesd].into_iter().flatten() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let entry = json!({"model_name": name, "filename": path.display().to_string()});
            if !list.contains(&entry) {
                list.push(entry);
            }
        }
    }
    Json(Value::Array(list))
}

/// Lists of things vramd has none of: `sd-modules` (text encoders and VAEs chosen apart
/// from the checkpoint).
pub async fn empty_list() -> Json<Value> {
    Json(json!([]))
}

pub async fn embeddings() -> Json<Value> {
    Json(json!({"loaded": {}, "skipped": {}}))
}

/// `cmd-flags`: vramd has none of A1111's command-line flags.
pub async fn cmd_flags() -> Json<Value> {
    Json(json!({}))
}

/// `POST refresh-checkpoints`: models come from the configuration, read at start; nothing
/// to rescan.
pub async fn refresh_checkpoints() -> Json<Value> {
    Json(Value::Null)
}

/// `GET /sdapi/v1/memory`: the host's RAM from `/proc/meminfo`, and under `cuda.system`
/// the GPU memory vramd manages (the device's figures, or the budget's).
pub async fn memory(State(state): State<AppState>) -> Json<Value> {
    let m = &state.arbiter.snapshot().memory;
    let (total, free) = (m.total_bytes, m.device_free_bytes.unwrap_or(m.free_bytes));
    let ram = meminfo().map_or(
        json!({}),
        |(total, free)| json!({"total": total, "free": free, "used": total.saturating_sub(free)}),
    );
    Json(json!({
        "ram": ram,
        "cuda": {"system": {"total": total, "free": free, "used": total.saturating_sub(free)}},
        "vramd": m,
    }))
}

/// MemTotal and MemAvailable, in bytes.
fn meminfo() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_survive_a_reload_and_a_broken_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let o = A1111Options::load(&state);
        assert_eq!(o.checkpoint(), None);
        let mut update = Map::new();
        update.insert(CHECKPOINT.into(), json!("sd"));
        update.insert("some_ui_key".into(), json!([1, 2]));
        o.merge(update);
        let again = A1111Options::load(&state);
        assert_eq!(again.checkpoint().as_deref(), Some("sd"));
        assert_eq!(again.get()["some_ui_key"], json!([1, 2]));
        assert!(!state.join("a1111-options.json.tmp").exists());
        std::fs::write(state.join(FILE), "{not json").unwrap();
        assert!(A1111Options::load(&state).get().is_empty());
    }
}
