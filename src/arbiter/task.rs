//! The arbiter's state and main loop: commands from handlers, events from its own tasks,
//! and a periodic tick (wait timeouts, `keep_alive`, page-cache residency).
//!
//! Model lifecycles are in [`super::lifecycle`]; the queue of requests waiting for memory
//! and the execution of plans in [`super::queue`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::lifecycle::Runtime;
use super::queue::{Pending, Waiter};
use super::{ArbiterError, Command, EstimateJob, Event, Job};
use crate::config::{Config, ModelKind};
use crate::estimate::{self, Calibration, ImageWeights, LlmShape};
use crate::events::{EventBus, EventFeed};
use crate::memory::{MemoryFigures, MemorySource};
use crate::pagecache::{MappedFile, Residency};
use crate::registry::{Registry, Snapshot};
use crate::worker::WorkerPaths;

const TICK: Duration = Duration::from_millis(500);
/// How often page-cache residency is refreshed for `/v1/status`.
const RESIDENCY_EVERY: Duration = Duration::from_secs(5);

/// What estimates know about a model's files.
#[derive(Clone, Debug)]
pub(super) enum Shape {
    Llm(LlmShape),
    Image(ImageWeights),
    /// Not a GGUF we can read: only the files' size is known.
    Opaque(u64),
}

pub(crate) struct Arbiter {
    pub(super) config: Arc<Config>,
    pub(super) registry: Registry,
    pub(super) runtime: HashMap<String, Runtime>,
    pub(super) source: Box<dyn MemorySource>,
    pub(super) paths: WorkerPaths,
    pub(super) publish: watch::Sender<Arc<Snapshot>>,
    pub(super) events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    pub(super) next_seq: u64,
    /// Numbers the memory reservations of granted requests.
    pub(super) next_ticket: u64,
    /// When a request last arrived or finished, or an eviction last settled: background
    /// restores wait for `[policy] restore_after` of quiet after it.
    pub(super) last_activity: Instant,
    pub(super) bus: EventBus,
    pub(super) pending: VecDeque<Pending>,
    /// The model being evicted for the request at the head of `pending`.
    pub(super) evicting: Option<String>,
    pub(super) shapes: HashMap<String, Shape>,
    pub(super) calibration: Calibration,
    calibration_path: PathBuf,
    pub(super) files: HashMap<String, Vec<MappedFile>>,
    residency_at: Instant,
    /// After a hard unload on a real device: wait (until the instant) for its free memory
    /// to reach the figure, since the driver returns memory a moment after the process dies.
    pub(super) settling: Option<(Instant, u64)>,
}

impl Arbiter {
    pub fn new(
        config: Arc<Config>,
        mut source: Box<dyn MemorySource>,
        paths: WorkerPaths,
    ) -> (watch::Receiver<Arc<Snapshot>>, EventFeed, Arbiter) {
        let mut registry = Registry::new(&config);
        let mut shapes = HashMap::new();
        let mut files = HashMap::new();
        for m in &config.models {
            let entry = registry.get_mut(&m.name).expect("configured");
            if let Some((role, path)) = m.source.files().into_iter().find(|(_, p)| !Path::new(p).exists()) {
                let what = if role == "path" { "model" } else { role };
                let reason = format!("{what} file not found: {}", path.display());
                tracing::warn!(model = %m.name, "{reason}");
                entry.fail(reason);
            }
            shapes.insert(m.name.clone(), read_shape(m.kind, &m.source.files()));
            files.insert(
                m.name.clone(),
                m.source.files().iter().map(|(_, p)| MappedFile::open(p)).collect(),
            );
        }
        pin_files(&config, &mut files);
        let calibration_path = config.daemon.state_dir.join("calibration.json");
        let calibration = Calibration::load(&calibration_path).unwrap_or_else(|e| {
            tracing::warn!("ignoring the estimator calibration: {e}");
            Calibration::default()
        });
        let first = take_snapshot(&registry, &config, source.as_mut());
        let (publish, snapshot) = watch::channel(first);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let bus = EventBus::default();
        let feed = bus.feed();
        let mut arbiter = Arbiter {
            runtime: config
                .models
                .iter()
                .map(|m| (m.name.clone(), Runtime::default()))
                .collect(),
            config,
            registry,
            source,
            paths,
            publish,
            events_tx,
            events_rx,
            next_seq: 1,
            next_ticket: 1,
            last_activity: Instant::now(),
            bus,
            pending: VecDeque::new(),
            evicting: None,
            shapes,
            calibration,
            calibration_path,
            files,
            residency_at: Instant::now(),
            settling: None,
        };
        arbiter.refresh_residency();
        (snapshot, feed, arbiter)
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Events first: a lease released before its response was sent must be seen
            // before any command the client sends after reading that response.
            tokio::select! {
                biased;
                Some(ev) = self.events_rx.recv() => self.event(ev),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                _ = tick.tick() => self.tick(),
            }
            self.drive();
            self.restore_idle();
            let snapshot = take_snapshot(&self.registry, &self.config, self.source.as_mut());
            self.publish.send_replace(snapshot);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire { model, job, reply } => self.enqueue(model, job, Waiter::Acquire(reply)),
            Command::Load { model, reply } => {
                // An explicit load is a person asking to try again: forget past failures.
                if let Some(e) = self.registry.get_mut(&model) {
                    if e.state == crate::registry::ModelState::Failed {
                        e.state = crate::registry::ModelState::Unloaded;
                        e.failures = 0;
                        e.error = None;
                    }
                }
                self.enqueue(model, Job::Text, Waiter::Load(reply))
            }
            Command::Unload { model, mode, reply } => self.unload(&model, mode, reply),
            Command::SetPinned { model, pinned, reply } => {
                let r = match self.registry.get_mut(&model) {
                    Some(e) => {
                        e.pinned = pinned;
                        Ok(())
                    }
                    None => Err(ArbiterError::UnknownModel(model)),
                };
                let _ = reply.send(r);
            }
            Command::Estimate { model, job, reply } => {
                let _ = reply.send(self.estimate(&model, job));
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(Ok(take_snapshot(&self.registry, &self.config, self.source.as_mut())));
            }
            Command::Interrupt { model, reply } => {
                let running = self.runtime.get(&model).is_some_and(|rt| rt.worker.is_some())
                    && self
                        .registry
                        .get(&model)
                        .is_some_and(|e| e.state != crate::registry::ModelState::Unloading);
                if running {
                    self.evict_hard(&model, "interrupted".into());
                }
                let _ = reply.send(Ok(running));
            }
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Release {
                model,
                seq,
                job,
                ticket,
                report,
            } => self.release(&model, seq, job, ticket, report),
            Event::LoadDone { model, seq, result } => self.load_done(&model, seq, result),
            Event::SoftUnloadDone { model, seq, result } => self.soft_unload_done(&model, seq, result),
            Event::RestoreDone { model, seq, result } => self.restore_done(&model, seq, result),
            Event::WorkerExit { model, seq, exit } => self.worker_exit(&model, seq, exit),
        }
    }

    fn tick(&mut self) {
        self.measure_processes();
        self.expire_waits();
        self.keep_alive();
        if self.residency_at.elapsed() >= RESIDENCY_EVERY {
            self.refresh_residency();
        }
    }

    /// NVML's per-process figures into the registry (no-op on the budget backend).
    fn measure_processes(&mut self) {
        let used = self.source.per_process();
        if used.is_empty() && self.source.name() == crate::memory::BackendName::Budget {
            return;
        }
        for e in self.registry.models_mut() {
            e.device_bytes = e
                .pid
                .and_then(|pid| used.iter().find(|(p, _)| *p == pid).map(|(_, b)| *b));
        }
    }

    pub(super) fn refresh_residency(&mut self) {
        self.residency_at = Instant::now();
        for (name, files) in &self.files {
            let r = files
                .iter()
                .map(MappedFile::residency)
                .fold(Residency::default(), Residency::combine);
            if let Some(e) = self.registry.get_mut(name) {
                e.page_cache = r;
            }
        }
    }

    /// Unloads models unused for their `keep_alive`, when nothing else is going on.
    fn keep_alive(&mut self) {
        if self.evicting.is_some() || !self.pending.is_empty() {
            return;
        }
        let now = crate::clock::now_unix();
        let expired: Vec<String> = self
            .config
            .models
            .iter()
            .filter_map(|m| {
                let limit = m.keep_alive.0?.as_secs();
                let e = self.registry.get(&m.name)?;
                let idle = now.saturating_sub(e.last_used?);
                (e.in_flight == 0 && e.state.holds_memory() && !e.pinned && idle >= limit && e.state.settled())
                    .then(|| m.name.clone())
            })
            .collect();
        for name in expired {
            let reason = format!(
                "unused for its keep_alive of {}",
                self.config.model(&name).expect("configured").keep_alive
            );
            self.evict_hard(&name, reason);
        }
    }

    pub(super) fn estimate(&self, model: &str, job: EstimateJob) -> Result<serde_json::Value, ArbiterError> {
        let cfg = self
            .config
            .model(model)
            .ok_or_else(|| ArbiterError::UnknownModel(model.to_owned()))?;
        let shape = self.shapes.get(model).expect("every model has a shape");
        let v = match (cfg.kind, shape) {
            (ModelKind::Llm, Shape::Llm(s)) => {
                let ctx = job
                    .context
                    .unwrap_or(cfg.llm_options.as_ref().map_or(0, |o| o.context_length));
                let e = estimate::llm(s, ctx, Some(&self.calibration), model);
                serde_json::json!({"model": model, "kind": "llm", "context_length": if ctx == 0 { s.n_ctx_train } else { ctx },
                    "parts": {"weights": e.weights, "context": e.context, "compute": e.compute}, "total": e.total, "calibrated": e.calibrated})
            }
            (ModelKind::Image, Shape::Image(w)) => {
                let (width, height) = (job.width.unwrap_or(512), job.height.unwrap_or(512));
                let e = estimate::image(w, width, height, Some(&self.calibration), model);
                let components: serde_json::Map<String, serde_json::Value> =
                    w.components.iter().map(|(n, b)| (n.clone(), (*b).into())).collect();
                serde_json::json!({"model": model, "kind": "image", "width": width, "height": height,
                    "parts": {"weights": e.weights, "components": components, "sampling": e.sampling,
                              "vae_decode": {"gpu": e.vae_gpu, "tiled": e.vae_tiled, "cpu": e.vae_cpu}},
                    "total": e.total, "calibrated": e.calibrated})
            }
            (kind, Shape::Opaque(bytes)) => serde_json::json!({"model": model, "kind": kind.as_str(),
                "parts": {"weights": bytes}, "total": bytes, "calibrated": false,
                "note": "not a GGUF file vramd can read: the estimate is the file size"}),
            (kind, _) => serde_json::json!({"model": model, "kind": kind.as_str(), "total": 0, "calibrated": false}),
        };
        Ok(v)
    }

    pub(super) fn save_calibration(&self) {
        if let Err(e) = self.calibration.save(&self.calibration_path) {
            tracing::debug!("cannot save calibration to {}: {e}", self.calibration_path.display());
        }
    }

    pub(super) fn rt(&mut self, model: &str) -> &mut Runtime {
        self.runtime
            .get_mut(model)
            .expect("every configured model has a runtime")
    }

    pub(super) fn reply_later(&self) -> mpsc::UnboundedSender<Event> {
        self.events_tx.clone()
    }
}

pub(super) fn reject(waiter: Waiter, err: ArbiterError) {
    match waiter {
        Waiter::Acquire(r) => drop(r.send(Err(err))),
        Waiter::Load(r) => drop(r.send(Err(err))),
    }
}

pub(super) type UnloadReply = oneshot::Sender<Result<super::UnloadOutcome, ArbiterError>>;

fn read_shape(kind: ModelKind, files: &[(&'static str, &Path)]) -> Shape {
    let size = || {
        files
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    };
    match kind {
        ModelKind::Llm => match files.first().map(|(_, p)| estimate::llm_shape(p)) {
            Some(Ok(s)) => Shape::Llm(s),
            _ => Shape::Opaque(size()),
        },
        ModelKind::Image => match estimate::image_weights(files) {
            Ok(w) => Shape::Image(w),
            Err(_) => Shape::Opaque(size()),
        },
    }
}

/// Locks model files in RAM, in configuration order, while they fit `pin_ram`.
fn pin_files(config: &Config, files: &mut HashMap<String, Vec<MappedFile>>) {
    let mut budget = config.memory.pin_ram.0;
    if budget == 0 {
        return;
    }
    for m in &config.models {
        for f in files.get_mut(&m.name).into_iter().flatten() {
            if f.len() > budget {
                tracing::info!(file = %f.path.display(), "not locked in RAM: beyond [memory] pin_ram");
                continue;
            }
            match f.lock() {
                Ok(()) => budget -= f.len(),
                Err(e) => tracing::warn!(file = %f.path.display(), "cannot lock in RAM: {e}"),
            }
        }
    }
}

pub(super) fn take_snapshot(registry: &Registry, config: &Config, source: &mut dyn MemorySource) -> Arc<Snapshot> {
    let reading = source.read();
    let figures = MemoryFigures::compute(&config.memory, source.name(), reading, registry.held_bytes());
    Arc::new(Snapshot::new(registry, figures, SystemTime::now()))
}
