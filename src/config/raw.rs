//! The on-disk shape of the configuration files and its conversion into [`Config`].
//!
//! Every table denies unknown keys. Model tables are kept [`Spanned`] so that a problem found
//! after parsing (a missing `path`, both `path` and components) still names its line.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{
    BackendKind, Config, ConfigError, DaemonConfig, GpuLayers, ImageComponents, LlmOptions, MemoryConfig, ModelConfig,
    ModelKind, ModelSource, MAX_PARALLEL,
};
use super::{BusKind, DbusConfig, ImageOptions, PolicyConfig};
use crate::planner::Rung;
use crate::units::{ByteSize, Timeout};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MainFile {
    #[serde(default)]
    daemon: DaemonSection,
    #[serde(default)]
    memory: MemorySection,
    #[serde(default)]
    policy: PolicySection,
    #[serde(default)]
    dbus: DbusSection,
    #[serde(default)]
    models: Vec<Spanned<ModelTable>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DbusSection {
    bus: Option<BusKind>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    ladder: Option<Vec<Rung>>,
    llm_idle_first: Option<Timeout>,
    wait_timeout: Option<Timeout>,
    retry_after: Option<Timeout>,
    restore_after: Option<Timeout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DropinFile {
    #[serde(default)]
    models: Vec<Spanned<ModelTable>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DaemonSection {
    socket: Option<PathBuf>,
    idle_exit: Option<Timeout>,
    log: Option<String>,
    max_body: Option<Spanned<ByteSize>>,
    header_timeout: Option<Spanned<Timeout>>,
    idle_timeout: Option<Spanned<Timeout>>,
    stall_timeout: Option<Spanned<Timeout>>,
    max_connections: Option<Spanned<u32>>,
    shutdown_timeout: Option<Timeout>,
    state_dir: Option<PathBuf>,
    worker_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    worker_start_timeout: Option<Timeout>,
    worker_health_timeout: Option<Timeout>,
    control_group: Option<Spanned<String>>,
    keys_file: Option<PathBuf>,
    default_image_model: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MemorySection {
    backend: Option<BackendKind>,
    budget: Option<Spanned<ByteSize>>,
    reserve: Option<Spanned<ByteSize>>,
    pin_ram: Option<ByteSize>,
    device: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelTable {
    name: String,
    kind: ModelKind,
    path: Option<PathBuf>,
    diffusion_model: Option<PathBuf>,
    vae: Option<PathBuf>,
    taesd: Option<PathBuf>,
    clip_l: Option<PathBuf>,
    clip_g: Option<PathBuf>,
    t5xxl: Option<PathBuf>,
    llm: Option<PathBuf>,
    context_length: Option<u32>,
    gpu_layers: Option<GpuLayers>,
    threads: Option<u32>,
    mmap: Option<bool>,
    batch: Option<u32>,
    embeddings: Option<bool>,
    max_tokens: Option<u32>,
    kv_ram: Option<ByteSize>,
    parallel: Option<u32>,
    pinned: Option<bool>,
    priority: Option<i32>,
    keep_alive: Option<Timeout>,
    size_multiple: Option<u32>,
    max_size: Option<u32>,
    max_batch: Option<u32>,
    lora_dir: Option<PathBuf>,
}

/// The parsed main file.
#[derive(Debug)]
pub struct RawMain {
    pub(super) config: Config,
    /// The main file, and where `default_image_model` is in it: that key is checked once
    /// the drop-ins' models are known.
    pub(super) file: PathBuf,
    pub(super) default_image_at: Option<(usize, usize)>,
}

/// The parsed models of one drop-in file.
#[derive(Debug)]
pub struct RawDropin {
    pub(super) models: Vec<ModelConfig>,
}

/// Parses the main configuration file. `file` names it in errors and anchors relative paths.
///
/// Sections are converted in a fixed order (`[daemon]`, `[memory]`, `[[models]]`, `[policy]`),
/// each by its own function, so the same file always reports the same first problem.
pub fn parse_main(file: &Path, text: &str) -> Result<RawMain, ConfigError> {
    let raw: MainFile = toml::from_str(text).map_err(|e| toml_error(file, text, e))?;
    let base = file.parent().unwrap_or(Path::new("/"));
    let default_image_at = raw
        .daemon
        .default_image_model
        .as_ref()
        .map(|s| super::line_col(text, s.span().start));
    let daemon = daemon_config(file, text, base, raw.daemon)?;
    let memory = memory_config(file, text, raw.memory)?;
    let models = convert_models(file, text, raw.models)?;
    Ok(RawMain {
        config: Config {
            daemon,
            memory,
            policy: policy_config(raw.policy),
            dbus: DbusConfig {
                bus: raw.dbus.bus.unwrap_or(DbusConfig::default().bus),
            },
            models,
        },
        file: file.to_owned(),
        default_image_at,
    })
}

/// A connection timeout (`header_timeout`, `idle_timeout`, `stall_timeout`): a duration,
/// never "0" (off), since without one a client that does nothing would be kept for ever.
fn connection_timeout(
    file: &Path,
    text: &str,
    name: &str,
    value: Option<Spanned<Timeout>>,
) -> Result<Option<Timeout>, ConfigError> {
    match value {
        Some(t) if t.get_ref().0.is_none() => Err(ConfigError::at_span(
            file,
            text,
            Some(t.span()),
            format!("{name} must be a duration: without one, a client that does nothing is kept for ever"),
        )),
        other => Ok(other.map(Spanned::into_inner)),
    }
}

/// `[daemon]`, relative paths taken from `base` (the main file's folder). Checks the values
/// a slip makes harmful: a `max_body` too small for any request, a `control_group` that no
/// group lookup could find (which would lock everyone out of changing state).
fn daemon_config(file: &Path, text: &str, base: &Path, d: DaemonSection) -> Result<DaemonConfig, ConfigError> {
    let defaults = DaemonConfig::default();
    let max_body = match d.max_body {
        Some(s) if s.get_ref().0 < 1024 => {
            return Err(ConfigError::at_span(
                file,
                text,
                Some(s.span()),
                "max_body must be at least 1KiB",
            ))
        }
        Some(s) => s.into_inner(),
        None => defaults.max_body,
    };
    let header_timeout =
        connection_timeout(file, text, "header_timeout", d.header_timeout)?.unwrap_or(defaults.header_timeout);
    let idle_timeout = connection_timeout(file, text, "idle_timeout", d.idle_timeout)?.unwrap_or(defaults.idle_timeout);
    let stall_timeout =
        connection_timeout(file, text, "stall_timeout", d.stall_timeout)?.unwrap_or(defaults.stall_timeout);
    let max_connections = match d.max_connections {
        Some(n) if *n.get_ref() < 8 => {
            return Err(ConfigError::at_span(
                file,
                text,
                Some(n.span()),
                "max_connections must be at least 8",
            ))
        }
        Some(n) => n.into_inner(),
        None => defaults.max_connections,
    };
    let control_group = match d.control_group {
        Some(g) if !valid_group_name(g.get_ref()) => {
            return Err(ConfigError::at_span(
                file,
                text,
                Some(g.span()),
                format!("control_group {:?} is not a valid group name", g.get_ref()),
            ))
        }
        Some(g) => g.into_inner(),
        None => defaults.control_group,
    };
    Ok(DaemonConfig {
        socket: d.socket.map(|p| absolute(base, p)).unwrap_or(defaults.socket),
        idle_exit: d.idle_exit.unwrap_or(defaults.idle_exit),
        log: d.log.unwrap_or(defaults.log),
        max_body,
        header_timeout,
        idle_timeout,
        stall_timeout,
        max_connections,
        shutdown_timeout: d.shutdown_timeout.unwrap_or(defaults.shutdown_timeout),
        state_dir: d.state_dir.map(|p| absolute(base, p)).unwrap_or(defaults.state_dir),
        worker_dir: d.worker_dir.map(|p| absolute(base, p)),
        runtime_dir: d.runtime_dir.map(|p| absolute(base, p)),
        worker_start_timeout: d.worker_start_timeout.unwrap_or(defaults.worker_start_timeout),
        worker_health_timeout: d.worker_health_timeout.unwrap_or(defaults.worker_health_timeout),
        control_group,
        keys_file: d.keys_file.map(|p| absolute(base, p)).unwrap_or(defaults.keys_file),
        default_image_model: d.default_image_model.map(Spanned::into_inner),
    })
}

/// `[memory]`. A zero budget, or a reserve that leaves nothing of it, could never serve a
/// request, so they are errors here rather than 507s later.
fn memory_config(file: &Path, text: &str, m: MemorySection) -> Result<MemoryConfig, ConfigError> {
    let defaults = MemoryConfig::default();
    let budget = m.budget.as_ref().map_or(defaults.budget, |s| *s.get_ref());
    let reserve = m.reserve.as_ref().map_or(defaults.reserve, |s| *s.get_ref());
    if budget.0 == 0 {
        let span = m.budget.as_ref().map(|s| s.span());
        return Err(ConfigError::at_span(
            file,
            text,
            span,
            "memory budget must be greater than 0",
        ));
    }
    if reserve >= budget {
        let span = m.reserve.as_ref().or(m.budget.as_ref()).map(|s| s.span());
        return Err(ConfigError::at_span(
            file,
            text,
            span,
            format!("memory reserve ({reserve}) must be smaller than the budget ({budget})"),
        ));
    }
    Ok(MemoryConfig {
        backend: m.backend.unwrap_or(defaults.backend),
        budget,
        reserve,
        pin_ram: m.pin_ram.unwrap_or(defaults.pin_ram),
        device: m.device.unwrap_or(defaults.device),
    })
}

/// `[policy]`: every key optional, nothing to check beyond what parsing did.
fn policy_config(p: PolicySection) -> PolicyConfig {
    let dp = PolicyConfig::default();
    PolicyConfig {
        ladder: p.ladder.unwrap_or(dp.ladder),
        llm_idle_first: p.llm_idle_first.unwrap_or(dp.llm_idle_first),
        wait_timeout: p.wait_timeout.unwrap_or(dp.wait_timeout),
        retry_after: p.retry_after.unwrap_or(dp.retry_after),
        restore_after: p.restore_after.unwrap_or(dp.restore_after),
    }
}

/// Parses a `models.d/*.toml` drop-in: only `[[models]]` tables are allowed there.
pub fn parse_dropin(file: &Path, text: &str) -> Result<RawDropin, ConfigError> {
    let raw: DropinFile = toml::from_str(text).map_err(|e| toml_error(file, text, e))?;
    Ok(RawDropin {
        models: convert_models(file, text, raw.models)?,
    })
}

/// A name `getgrnam` can look up: 1 to 32 of letters, digits, `_`, `-`, `.`, not starting
/// with `-` (what `useradd` and systemd-sysusers accept, give or take a trailing `$`).
fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    ConfigError::at_span(file, text, e.span(), e.message().trim_end())
}

fn absolute(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// Converts `[[models]]` tables, each error located at its table.
fn convert_models(file: &Path, text: &str, tables: Vec<Spanned<ModelTable>>) -> Result<Vec<ModelConfig>, ConfigError> {
    let base = file.parent().unwrap_or(Path::new("/"));
    tables
        .into_iter()
        .map(|spanned| {
            let span = spanned.span();
            let (line, _) = super::line_col(text, span.start);
            let origin = format!("{}:{line}", file.display());
            convert_model(spanned.into_inner(), base, origin)
                .map_err(|msg| ConfigError::at_span(file, text, Some(span), msg))
        })
        .collect()
}

/// One `[[models]]` table, from `origin` (`file:line`). The checks run in a fixed order
/// (name, files, image options, LLM options) so that the same table always reports the same
/// first problem; the error is the message only, located by the caller.
fn convert_model(t: ModelTable, base: &Path, origin: String) -> Result<ModelConfig, String> {
    check_model_name(&t.name)?;
    let source = model_source(&t, base)?;
    let image = image_options(&t, base)?;
    let llm = llm_options(&t)?;
    Ok(ModelConfig {
        name: t.name,
        kind: t.kind,
        source,
        llm_options: (t.kind == ModelKind::Llm).then_some(llm),
        image_options: (t.kind == ModelKind::Image).then_some(image),
        pinned: t.pinned.unwrap_or(false),
        priority: t.priority.unwrap_or(0),
        keep_alive: t.keep_alive.unwrap_or(Timeout::NEVER),
        origin,
    })
}

/// Model names go into URLs, JSON, D-Bus and log lines unquoted: keep them to a plain set.
fn check_model_name(name: &str) -> Result<(), String> {
    let valid =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-:".contains(c));
    if valid {
        return Ok(());
    }
    Err(format!(
        "model name {name:?} must be 1 to 64 characters of letters, digits, '.', '_', '-' or ':'"
    ))
}

/// Where the model is loaded from: one `path`, or (image models only) component files with
/// at least a `diffusion_model`, never both. Relative paths are taken from `base`.
fn model_source(t: &ModelTable, base: &Path) -> Result<ModelSource, String> {
    let abs = |p: &Option<PathBuf>| p.clone().map(|p| absolute(base, p));
    let components = ImageComponents {
        diffusion_model: abs(&t.diffusion_model),
        vae: abs(&t.vae),
        taesd: abs(&t.taesd),
        clip_l: abs(&t.clip_l),
        clip_g: abs(&t.clip_g),
        t5xxl: abs(&t.t5xxl),
        llm: abs(&t.llm),
    };
    let has_components = components != ImageComponents::default();
    let name = &t.name;
    match (t.kind, abs(&t.path), has_components) {
        (ModelKind::Llm, Some(path), false) => Ok(ModelSource::File { path }),
        (ModelKind::Llm, _, true) => Err(format!(
            "model {name:?}: component paths are for image models; an llm model takes only `path`"
        )),
        (_, None, false) => Err(format!("model {name:?} needs a `path`")),
        (ModelKind::Image, Some(_), true) => Err(format!(
            "model {name:?}: give either `path` or component paths, not both"
        )),
        (ModelKind::Image, Some(path), false) => Ok(ModelSource::File { path }),
        (ModelKind::Image, None, true) if components.diffusion_model.is_none() => {
            Err(format!("model {name:?}: component models need `diffusion_model`"))
        }
        (ModelKind::Image, None, true) => Ok(ModelSource::Components(components)),
    }
}

/// The image options, defaults filled in: refused on an LLM (a misplaced key is a mistake,
/// never silently ignored), and checked so that some image size is always acceptable.
fn image_options(t: &ModelTable, base: &Path) -> Result<ImageOptions, String> {
    let image_only = [
        ("size_multiple", t.size_multiple.is_some()),
        ("max_size", t.max_size.is_some()),
        ("max_batch", t.max_batch.is_some()),
        ("lora_dir", t.lora_dir.is_some()),
    ];
    if let Some((key, _)) = image_only.iter().find(|(_, set)| *set && t.kind != ModelKind::Image) {
        return Err(format!("model {:?}: `{key}` applies to image models only", t.name));
    }
    let di = ImageOptions::default();
    let image = ImageOptions {
        size_multiple: t.size_multiple.unwrap_or(di.size_multiple),
        max_size: t.max_size.unwrap_or(di.max_size),
        max_batch: t.max_batch.unwrap_or(di.max_batch),
        lora_dir: t.lora_dir.clone().map(|p| absolute(base, p)),
    };
    if image.size_multiple == 0 || image.size_multiple % 8 != 0 {
        return Err(format!("model {:?}: `size_multiple` must be a multiple of 8", t.name));
    }
    if image.max_batch == 0 || image.max_size < image.size_multiple {
        return Err(format!(
            "model {:?}: `max_batch` must be at least 1 and `max_size` at least `size_multiple`",
            t.name
        ));
    }
    Ok(image)
}

/// The LLM options, defaults filled in: refused on an image model, as above.
fn llm_options(t: &ModelTable) -> Result<LlmOptions, String> {
    let llm_only = [
        ("context_length", t.context_length.is_some()),
        ("gpu_layers", t.gpu_layers.is_some()),
        ("threads", t.threads.is_some()),
        ("batch", t.batch.is_some()),
        ("mmap", t.mmap.is_some()),
        ("embeddings", t.embeddings.is_some()),
        ("max_tokens", t.max_tokens.is_some()),
        ("kv_ram", t.kv_ram.is_some()),
        ("parallel", t.parallel.is_some()),
    ];
    if let Some((key, _)) = llm_only.iter().find(|(_, set)| *set && t.kind != ModelKind::Llm) {
        return Err(format!("model {:?}: `{key}` applies to llm models only", t.name));
    }
    let defaults = LlmOptions::default();
    let llm = LlmOptions {
        context_length: t.context_length.unwrap_or(defaults.context_length),
        gpu_layers: t.gpu_layers.unwrap_or(defaults.gpu_layers),
        threads: t.threads.unwrap_or(defaults.threads),
        mmap: t.mmap.unwrap_or(defaults.mmap),
        batch: t.batch.unwrap_or(defaults.batch),
        embeddings: t.embeddings.unwrap_or(defaults.embeddings),
        max_tokens: t.max_tokens,
        kv_ram: t.kv_ram.unwrap_or(defaults.kv_ram),
        // An embedding request is one batch on one sequence: one slot.
        parallel: match (t.parallel, t.embeddings) {
            (Some(n), _) => n,
            (None, Some(true)) => 1,
            (None, _) => defaults.parallel,
        },
    };
    if !(1..=MAX_PARALLEL).contains(&llm.parallel) {
        return Err(format!(
            "model {:?}: `parallel` must be from 1 to {MAX_PARALLEL}, not {}",
            t.name, llm.parallel
        ));
    }
    if llm.embeddings && llm.parallel > 1 {
        return Err(format!(
            "model {:?}: `parallel` must be 1 for an embedding model",
            t.name
        ));
    }
    if llm.batch == 0 {
        return Err(format!("model {:?}: `batch` must be at least 1", t.name));
    }
    if llm.max_tokens == Some(0) {
        return Err(format!("model {:?}: `max_tokens` must be at least 1", t.name));
    }
    Ok(llm)
}
