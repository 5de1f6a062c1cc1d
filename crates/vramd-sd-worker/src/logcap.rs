//! stable-diffusion.cpp's log and progress callbacks: into tracing, and the facts only they
//! carry.
//!
//! Both callbacks are process-wide C function pointers, installed once by the engine thread
//! (the only caller of the library). [`on_log`] forwards every line to tracing (target
//! [`TARGET`]) and reads from it, into one process-wide [`State`]:
//!
//! - at context creation, the weights per component, from the line
//!   `total params memory size = … : text_encoders X MB(RAM), diffusion_model X MB(VRAM),
//!   vae X MB(…), controlnet …, extensions …`, whether the VAE is TAESD (`using TAE for
//!   encoding / decoding`), and the warning and error lines (`… tensor 'X' not in model
//!   metadata`, `… has wrong shape …`, `loading … from '…' failed`) a failed load leaves;
//! - during a generation, the phase it is in, from the lines stable-diffusion.cpp logs as it
//!   goes: `generating image: i/N - seed S` (image i is sampled), `sampling completed`,
//!   `decoding N latents` (the VAE decode starts), and `loading N/M tensors from …` …
//!   `loading tensors completed` (weights read lazily, at first use); and the compute buffers
//!   (`<runner> compute buffer size: X MB(RAM|VRAM)`), whose largest per phase and per memory
//!   (RAM, VRAM) is the phase's peak there: before the decode (text encoders, diffusion) it is
//!   sampling, after it the VAE.
//!
//! [`on_progress`] is called for sampling steps, but also for VAE tiles and for tensors
//! loaded; only the calls made while an image is being sampled, outside a tensor load, become
//! [`ImageEvent::Progress`], numbered over the whole batch and strictly increasing, sent to
//! the channel of the generation that [`begin_generation`] registered.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::time::Instant;

use diffusion_rs_sys::sd_log_level_t;
use tokio::sync::mpsc;
use vramd_protocol::{ComponentBytes, ImageEvent};
use vramd_worker_kit::Out;

/// The tracing target of stable-diffusion.cpp's log lines.
pub const TARGET: &str = "sd";

/// Error lines kept for a failure message.
const MAX_ERRORS: usize = 6;

/// What a context creation logged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadFacts {
    /// Weights per component, as the library sized them (zero-sized ones left out).
    pub components: Vec<ComponentBytes>,
    /// The last warning and error lines, oldest first.
    pub errors: Vec<String>,
}

/// What a generation logged.
#[derive(Debug, Default, Clone)]
pub struct GenFacts {
    /// Largest compute buffers while encoding text and sampling.
    pub sampling: PhasePeak,
    /// Largest compute buffers while decoding with the VAE.
    pub decode: PhasePeak,
    /// When `decoding N latents` was logged: the end of sampling, the start of the decode.
    pub decode_started: Option<Instant>,
    pub errors: Vec<String>,
}

/// A compute buffer: its size and whether it is host memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    pub bytes: u64,
    pub host: bool,
}

/// The largest compute buffers of one phase, by the memory the library put them in: a text
/// encoder or a VAE may run on the CPU while the diffusion model is on a GPU, and only the
/// engine knows which of the two counts as the device (see `engine::split`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PhasePeak {
    /// In host RAM (`MB(RAM)`): every buffer of a CPU-only build.
    pub ram: u64,
    /// In device memory (`MB(VRAM)`).
    pub vram: u64,
}

impl PhasePeak {
    /// The phase's peak wherever it was.
    pub fn largest(&self) -> u64 {
        self.ram.max(self.vram)
    }

    /// The peak in host RAM (`true`) or in device memory.
    pub fn on(&self, host: bool) -> u64 {
        if host {
            self.ram
        } else {
            self.vram
        }
    }

    fn add(&mut self, b: Buffer) {
        let peak = if b.host { &mut self.ram } else { &mut self.vram };
        *peak = (*peak).max(b.bytes);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Text encoding, before the first image is sampled.
    Prepare,
    /// Sampling image `index` (from 0).
    Sampling {
        index: u32,
    },
    /// Between two images, or after the last one, before the decode.
    Between,
    Decode,
}

struct Generation {
    phase: Phase,
    /// Inside `loading N/M tensors` … `loading tensors completed`.
    loading: bool,
    batch: u32,
    /// The last step sent, over the whole batch.
    last_step: u32,
    /// When the last preview was sent.
    last_preview: Option<Instant>,
    sink: Option<mpsc::Sender<Out<ImageEvent>>>,
    facts: GenFacts,
}

#[derive(Default)]
struct State {
    components: Vec<ComponentBytes>,
    tae: bool,
    errors: VecDeque<String>,
    generation: Option<Generation>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// Starts capturing a context creation.
pub fn begin_load() {
    with_state(|s| {
        s.components.clear();
        s.tae = false;
        s.errors.clear();
    });
}

/// Ends it: the components it sized and the errors it logged.
pub fn end_load() -> LoadFacts {
    with_state(|s| {
        let mut components = std::mem::take(&mut s.components);
        if s.tae {
            for c in &mut components {
                if c.name == "vae" {
                    c.name = "taesd".into();
                }
            }
        }
        LoadFacts {
            components,
            errors: s.errors.drain(..).collect(),
        }
    })
}

/// Starts capturing a generation of `batch` images; progress goes to `sink`.
pub fn begin_generation(sink: Option<mpsc::Sender<Out<ImageEvent>>>, batch: u32) {
    with_state(|s| {
        s.errors.clear();
        s.generation = Some(Generation {
            phase: Phase::Prepare,
            loading: false,
            batch: batch.max(1),
            last_step: 0,
            last_preview: None,
            sink,
            facts: GenFacts::default(),
        });
    });
}

/// Ends the capture (and progress routing) of the generation.
pub fn end_generation() -> GenFacts {
    with_state(|s| {
        let mut facts = s.generation.take().map(|g| g.facts).unwrap_or_default();
        facts.errors = s.errors.drain(..).collect();
        facts
    })
}

/// The log callback: into tracing, and into the capture.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string (stable-diffusion.cpp's contract).
pub unsafe extern "C" fn on_log(level: sd_log_level_t, text: *const c_char, _data: *mut c_void) {
    // SAFETY: the caller's contract.
    let Some(line) = (unsafe { crate::sd::c_str(text) }) else {
        return;
    };
    let message = strip_location(line.trim_end());
    match level {
        sd_log_level_t::SD_LOG_DEBUG => tracing::debug!(target: TARGET, "{message}"),
        sd_log_level_t::SD_LOG_INFO => tracing::info!(target: TARGET, "{message}"),
        sd_log_level_t::SD_LOG_WARN => tracing::warn!(target: TARGET, "{message}"),
        _ => tracing::error!(target: TARGET, "{message}"),
    }
    // Warnings too: a component file that cannot be read is a warning (`loading diffusion
    // model from '…' failed`), and it is the reason a load then fails.
    let problem = matches!(level, sd_log_level_t::SD_LOG_WARN | sd_log_level_t::SD_LOG_ERROR);
    with_state(|s| observe(s, message, problem, Instant::now()));
}

/// The progress callback: sampling steps of the current generation become progress events.
pub extern "C" fn on_progress(step: i32, steps: i32, _time: f32, _data: *mut c_void) {
    if let Some((sink, event)) = with_state(|s| route_progress(s, step, steps)) {
        // A client that left makes this fail; the generation goes on (there is no cancel).
        let _ = sink.blocking_send(Out::Event(event));
    }
}

/// Least time between two previews: each is a PNG on the stream, and a WebUI polls
/// `progress` about once a second.
const PREVIEW_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// The preview callback: the latent of the image being sampled, projected to RGB by
/// stable-diffusion.cpp (`PREVIEW_PROJ`, no VAE run), becomes a `preview` event: the first
/// of each generation, then at most one per [`PREVIEW_EVERY`]; dropped when the stream is
/// full rather than slowing the sampling down.
///
/// # Safety
/// Called by stable-diffusion.cpp with `frame_count` images of `width·height·channel` bytes,
/// alive for the call.
pub unsafe extern "C" fn on_preview(
    step: i32,
    frame_count: i32,
    frames: *mut diffusion_rs_sys::sd_image_t,
    _is_noisy: bool,
    _data: *mut c_void,
) {
    if frames.is_null() || frame_count < 1 {
        return;
    }
    let Some(sink) = with_state(|s| preview_due(s, Instant::now())) else {
        return;
    };
    // SAFETY: the caller's contract; the first frame is copied before the call returns.
    let Some(img) = (unsafe { crate::sd::RgbImage::copy_from(&*frames) }) else {
        return;
    };
    if let Ok(png) = crate::png::encode(&img, &[]) {
        let event = ImageEvent::Preview {
            step: u32::try_from(step.max(0)).unwrap_or(0),
            png_base64: crate::png::base64(&png),
        };
        let _ = sink.try_send(Out::Event(event));
    }
}

/// Where a preview goes now, if one is due (sampling, outside a tensor load, the first or
/// [`PREVIEW_EVERY`] after the last).
fn preview_due(s: &mut State, now: Instant) -> Option<mpsc::Sender<Out<ImageEvent>>> {
    let g = s.generation.as_mut()?;
    if !matches!(g.phase, Phase::Sampling { .. }) || g.loading {
        return None;
    }
    if g.last_preview.is_some_and(|t| now.duration_since(t) < PREVIEW_EVERY) {
        return None;
    }
    g.last_preview = Some(now);
    g.sink.clone()
}

/// The progress event a callback makes, and where it goes: only sampling steps, outside a
/// tensor load, numbered over the batch and strictly increasing.
fn route_progress(s: &mut State, step: i32, steps: i32) -> Option<(mpsc::Sender<Out<ImageEvent>>, ImageEvent)> {
    let g = s.generation.as_mut()?;
    let Phase::Sampling { index } = g.phase else {
        return None;
    };
    if g.loading || step < 1 || steps < 1 || step > steps {
        return None;
    }
    let (step, steps) = (step as u32, steps as u32);
    let global = index * steps + step;
    if global <= g.last_step {
        return None;
    }
    g.last_step = global;
    let event = ImageEvent::Progress {
        step: global,
        steps: steps * g.batch,
    };
    Some((g.sink.clone()?, event))
}

/// Reads one log line into the state.
fn observe(s: &mut State, message: &str, problem: bool, now: Instant) {
    if problem {
        if s.errors.len() == MAX_ERRORS {
            s.errors.pop_front();
        }
        s.errors.push_back(message.to_string());
    }
    if let Some(components) = parse_params_line(message) {
        s.components = components;
        return;
    }
    if message.starts_with("using TAE for encoding / decoding") {
        s.tae = true;
        return;
    }
    let Some(g) = s.generation.as_mut() else {
        return;
    };
    if let Some(buffer) = parse_compute_line(message) {
        let peak = if g.phase == Phase::Decode {
            &mut g.facts.decode
        } else {
            &mut g.facts.sampling
        };
        peak.add(buffer);
    } else if let Some(index) = parse_image_start(message) {
        g.phase = Phase::Sampling { index };
    } else if message.starts_with("sampling completed") {
        g.phase = Phase::Between;
    } else if message.starts_with("decoding ") && message.ends_with(" latents") {
        g.phase = Phase::Decode;
        g.facts.decode_started = Some(now);
    } else if message.starts_with("loading ") && message.contains(" tensors from ") {
        g.loading = true;
    } else if message.starts_with("loading tensors completed") {
        g.loading = false;
    }
}

/// `file.cpp:123  - message` → `message`.
fn strip_location(line: &str) -> &str {
    match line.split_once(" - ") {
        Some((location, message)) if is_location(location.trim_end()) => message,
        _ => line,
    }
}

fn is_location(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(file, line)| {
        !file.is_empty() && !file.contains(' ') && !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())
    })
}

/// `12.34MB(VRAM)` → bytes and device (`gpu`/`cpu`; `None` for `N/A`).
fn parse_mb(s: &str) -> Option<(u64, Option<&'static str>)> {
    let (number, rest) = s.trim().split_once("MB")?;
    let mib: f64 = number.trim().parse().ok()?;
    let place = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    let device = match place {
        "VRAM" => Some("gpu"),
        "RAM" => Some("cpu"),
        _ => None,
    };
    Some(((mib * 1024.0 * 1024.0).round() as u64, device))
}

/// The components of `total params memory size = … : name X MB(RAM), …`.
fn parse_params_line(message: &str) -> Option<Vec<ComponentBytes>> {
    let rest = message.strip_prefix("total params memory size = ")?;
    let (_, parts) = rest.split_once("): ")?;
    let mut out = Vec::new();
    for part in parts.split(", ") {
        let (name, size) = part.trim().split_once(' ')?;
        let (bytes, device) = parse_mb(size)?;
        if bytes == 0 {
            continue;
        }
        let name = match name {
            "controlnet" => "control_net",
            other => other,
        };
        out.push(ComponentBytes {
            name: name.to_string(),
            bytes,
            device: device.unwrap_or("cpu").to_string(),
        });
    }
    Some(out)
}

/// `<runner> compute buffer size: X MB(RAM|VRAM)`.
fn parse_compute_line(message: &str) -> Option<Buffer> {
    let (_, size) = message.split_once(" compute buffer size: ")?;
    let (bytes, device) = parse_mb(size)?;
    Some(Buffer {
        bytes,
        host: device != Some("gpu"),
    })
}

/// `generating image: 2/3 - seed 43` → 1 (the index from 0).
fn parse_image_start(message: &str) -> Option<u32> {
    let rest = message.strip_prefix("generating image: ")?;
    let (i, _) = rest.split_once('/')?;
    i.trim().parse::<u32>().ok()?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_stripped() {
        assert_eq!(
            strip_location("stable-diffusion.cpp:345  - loading model"),
            "loading model"
        );
        assert_eq!(strip_location("util.cpp:12   - a - b"), "a - b");
        assert_eq!(strip_location("no location - here"), "no location - here");
    }

    #[test]
    fn params_line_gives_components() {
        let line = "total params memory size = 35.50MB (VRAM 30.00MB, RAM 5.50MB): text_encoders 20.00MB(VRAM), \
                    diffusion_model 10.00MB(VRAM), vae 5.50MB(RAM), controlnet 0.00MB(N/A), extensions 0.00MB(N/A)";
        let c = parse_params_line(line).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].name, "text_encoders");
        assert_eq!(c[0].bytes, 20 << 20);
        assert_eq!(c[0].device, "gpu");
        assert_eq!(c[2].name, "vae");
        assert_eq!(c[2].bytes, (5.5 * 1048576.0) as u64);
        assert_eq!(c[2].device, "cpu");
        assert!(parse_params_line("total params: nothing").is_none());
    }

    #[test]
    fn compute_lines_and_markers() {
        assert_eq!(
            parse_compute_line("unet compute buffer size: 1.50 MB(VRAM)"),
            Some(Buffer {
                bytes: 1_572_864,
                host: false
            })
        );
        assert_eq!(
            parse_compute_line("vae compute buffer size: 2.00 MB(RAM)")
                .unwrap()
                .bytes,
            2 << 20
        );
        assert_eq!(parse_compute_line("cache backend buffer size =  1.00 MB(RAM)"), None);
        assert_eq!(parse_image_start("generating image: 2/3 - seed 43"), Some(1));
        assert_eq!(parse_image_start("generating image: 0/3 - seed 43"), None);
    }

    #[test]
    fn a_phase_keeps_its_ram_and_vram_peaks_apart() {
        let mut p = PhasePeak::default();
        for line in [
            "clip compute buffer size: 3.00 MB(RAM)",
            "unet compute buffer size: 2.00 MB(VRAM)",
            "unet compute buffer size: 1.00 MB(VRAM)",
        ] {
            p.add(parse_compute_line(line).unwrap());
        }
        assert_eq!(
            p,
            PhasePeak {
                ram: 3 << 20,
                vram: 2 << 20
            }
        );
        assert_eq!((p.largest(), p.on(true), p.on(false)), (3 << 20, 3 << 20, 2 << 20));
    }

    #[test]
    fn phases_split_the_peaks_and_tae_renames_the_vae() {
        let mut s = State::default();
        let t = Instant::now();
        observe(&mut s, "total params memory size = 1.00MB (VRAM 0.00MB, RAM 1.00MB): text_encoders 0.50MB(RAM), diffusion_model 0.25MB(RAM), vae 0.25MB(RAM), controlnet 0.00MB(N/A), extensions 0.00MB(N/A)", false, t);
        observe(&mut s, "using TAE for encoding / decoding", false, t);
        observe(&mut s, "tensor 'x' not in model metadata", true, t);
        s.generation = Some(Generation {
            phase: Phase::Prepare,
            loading: false,
            batch: 1,
            last_step: 0,
            last_preview: None,
            sink: None,
            facts: GenFacts::default(),
        });
        let lines = [
            "qwen3 compute buffer size: 3.00 MB(RAM)",
            "generating image: 1/1 - seed 42",
            "loading 10/10 tensors from x.gguf",
            "loading tensors completed, taking 0.01s",
            "z_image compute buffer size: 2.00 MB(RAM)",
            "sampling completed, taking 0.10s",
            "decoding 1 latents",
            "taesd compute buffer size: 1.00 MB(RAM)",
        ];
        for l in lines {
            observe(&mut s, l, false, t);
        }
        let g = s.generation.as_ref().unwrap();
        assert_eq!(g.facts.sampling, PhasePeak { ram: 3 << 20, vram: 0 });
        assert_eq!(g.facts.decode.largest(), 1 << 20);
        assert!(g.facts.decode_started.is_some());
        assert_eq!(g.phase, Phase::Decode);
        assert!(!g.loading);
        *STATE.lock().unwrap() = Some(s);
        let facts = end_load();
        assert_eq!(facts.components.len(), 3);
        assert_eq!(facts.components[2].name, "taesd");
        assert_eq!(facts.errors, vec!["tensor 'x' not in model metadata".to_string()]);
    }

    /// A generation of `batch` images about to start, its events going to the receiver.
    fn generating(batch: u32) -> (State, mpsc::Receiver<Out<ImageEvent>>) {
        let (tx, rx) = mpsc::channel(8);
        let s = State {
            generation: Some(Generation {
                phase: Phase::Prepare,
                loading: false,
                batch,
                last_step: 0,
                last_preview: None,
                sink: Some(tx),
                facts: GenFacts::default(),
            }),
            ..State::default()
        };
        (s, rx)
    }

    #[test]
    fn previews_go_out_while_sampling_at_most_every_quarter_second() {
        let (mut s, _rx) = generating(1);
        let t = Instant::now();
        assert!(preview_due(&mut s, t).is_none(), "not sampling yet");
        s.generation.as_mut().unwrap().phase = Phase::Sampling { index: 0 };
        assert!(preview_due(&mut s, t).is_some(), "the first");
        assert!(preview_due(&mut s, t + PREVIEW_EVERY / 2).is_none());
        assert!(preview_due(&mut s, t + PREVIEW_EVERY).is_some());
        s.generation.as_mut().unwrap().loading = true;
        assert!(
            preview_due(&mut s, t + PREVIEW_EVERY * 3).is_none(),
            "not while tensors load"
        );
    }

    #[test]
    fn only_sampling_steps_become_progress() {
        let (mut s, _rx) = generating(2);
        let t = Instant::now();
        let mut seen = Vec::new();
        let mut call = |s: &mut State, step, steps| {
            if let Some((_, ImageEvent::Progress { step, steps })) = route_progress(s, step, steps) {
                seen.push((step, steps));
            }
        };
        call(&mut s, 1, 3); // text encoding: not sampling yet
        observe(&mut s, "generating image: 1/2 - seed 7", false, t);
        call(&mut s, 0, 3); // the sampler's "starting" call
        observe(&mut s, "loading 2/2 tensors from m.gguf", false, t);
        call(&mut s, 2, 2); // tensors loaded, not steps
        observe(&mut s, "loading tensors completed, taking 0.00s", false, t);
        call(&mut s, 1, 3);
        call(&mut s, 1, 3); // repeated
        call(&mut s, 2, 3);
        call(&mut s, 3, 3);
        observe(&mut s, "sampling completed, taking 0.10s", false, t);
        call(&mut s, 1, 1);
        observe(&mut s, "generating image: 2/2 - seed 8", false, t);
        call(&mut s, 1, 3);
        call(&mut s, 2, 3);
        call(&mut s, 3, 3);
        observe(&mut s, "decoding 2 latents", false, t);
        call(&mut s, 1, 4); // VAE tiles
        assert_eq!(seen, vec![(1, 6), (2, 6), (3, 6), (4, 6), (5, 6), (6, 6)]);
    }
}
