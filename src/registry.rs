//! What each configured model holds and in which state it is: plain data, no I/O.
//!
//! The arbiter task owns the one [`Registry`]; everything else sees it through published
//! [`Snapshot`]s, so readers never take a lock that the arbiter might hold.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, ModelConfig};
use crate::memory::MemoryFigures;
use crate::model::ModelKind;
use crate::planner::{self, ModelView, Policy};
use crate::units::Timeout;

// Re-exported from the leaf modules that own them (`model`, `clock`), so that the planner
// and the clock need not import the registry.
pub use crate::clock::unix_secs;
pub use crate::model::ModelState;

pub use vramd_protocol::Bytes;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelEntry {
    pub name: String,
    pub kind: ModelKind,
    pub state: ModelState,
    pub bytes: Bytes,
    pub peak_bytes: u64,
    /// Unix seconds of the last request that used it, `null` if never.
    pub last_used: Option<u64>,
    pub in_flight: u32,
    pub pinned: bool,
    /// Among idle models, lower priority is evicted first (`[[models]] priority`).
    pub priority: i32,
    /// Why it is `failed`, or why its last worker ended.
    pub error: Option<String>,
    /// The worker process serving it.
    pub pid: Option<u32>,
    /// Where its weights live (`cpu`, `cuda:0`), as the worker says.
    pub device: Option<String>,
    /// The CPU code its engine runs, and this CPU's level (see `vramd_worker_kit::cpu`).
    pub cpu: Option<String>,
    /// How long its last load took.
    pub load_ms: Option<u64>,
    /// The context length in effect (LLMs).
    pub context_length: Option<u32>,
    /// Worker crashes and failed starts since the last success.
    pub failures: u32,
    /// How much of its files the page cache holds.
    pub page_cache: crate::pagecache::Residency,
    /// What NVML says the worker process uses on the device (CUDA context included).
    pub device_bytes: Option<u64>,
    /// Image models: what the last generation measured (its size, the sampling and VAE
    /// decode peaks, where the VAE ran, how long each took), the figures the estimator learns
    /// from; shown so that a person or scripts/device-check can compare.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_image: Option<vramd_protocol::GenerationPeaks>,
    /// Requests waiting in the arbiter's queue for it.
    pub queued: u32,
    /// A client's wish for its idle life (Ollama's `keep_alive` duration), which replaces
    /// the configured `keep_alive` until the model is unloaded; `null`: the configured one.
    pub keep_alive_override: Option<Timeout>,
    /// A client said it is done with it (Ollama's `keep_alive: 0` from a caller who may not
    /// unload): the first to go when memory is needed, until it is used again.
    pub evict_first: bool,
    /// The requests granted on it and not finished, with their progress.
    pub running: Vec<Running>,
    /// Memory granted to work in progress that the worker has not reported yet; shown as
    /// `reserved_bytes` ([`ModelStatus`]).
    #[serde(skip)]
    pub reservations: Reservations,
}

/// A request granted on a model and not finished: what progress readers (A1111's
/// `progress`, `/v1/status`) and `interrupt` need.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Running {
    pub request_id: String,
    /// The grant's number (its memory reservation's ticket).
    #[serde(skip)]
    pub ticket: u64,
    /// Unix milliseconds when it was granted.
    pub started_ms: u64,
    /// Images: how far it is (`None` for text, and for an image not yet sampling).
    pub progress: Option<ImageProgress>,
    /// `interrupt` stopped it.
    pub interrupted: bool,
}

/// An image request's progress, as its worker reports sampling steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImageProgress {
    /// The image being made (from 0) and how many the request makes.
    pub image: u32,
    pub images: u32,
    pub step: u32,
    pub steps: u32,
}

/// Memory granted to work in progress on one model that its worker has not reported yet: a
/// load, a context being restored, and requests (an image's sampling and VAE decode, an LLM
/// context recreated within a request). It counts as held, so that requests planned
/// meanwhile leave room for it. Derived on every read from the grants and what the worker
/// has reported since, so nothing has to keep a total in step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservations {
    /// The load in progress.
    pub loading: u64,
    /// The context restore in progress.
    pub restoring: u64,
    grants: Vec<Grant>,
}

/// What a granted request may use beyond what its model held when it started.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Grant {
    ticket: u64,
    extra: u64,
    /// The model's reported bytes when the request started (`None` while it waits for a
    /// load). Once the worker reports more than that, the excess is counted, not reserved,
    /// so a report that arrives before the request ends is not counted twice.
    base: Option<u64>,
}

impl Reservations {
    pub fn grant(&mut self, ticket: u64, extra: u64) {
        if extra > 0 {
            self.grants.push(Grant {
                ticket,
                extra,
                base: None,
            });
        }
    }

    /// The request `ticket` starts on the model, which reports `reported` bytes now.
    pub fn start(&mut self, ticket: u64, reported: u64) {
        if let Some(g) = self.grants.iter_mut().find(|g| g.ticket == ticket) {
            g.base = Some(reported);
        }
    }

    pub fn release(&mut self, ticket: u64) {
        self.grants.retain(|g| g.ticket != ticket);
    }

    /// The worker is gone: the requests that ran on it use nothing any more.
    pub fn worker_gone(&mut self) {
        for g in self.grants.iter_mut().filter(|g| g.base.is_some()) {
            // Not `base + 0` either: the worker's bytes are gone with it.
            g.extra = 0;
            g.base = None;
        }
    }

    /// Whether a request or a load holds memory here.
    pub fn working(&self) -> bool {
        !self.grants.is_empty() || self.loading > 0
    }

    /// The largest grant still outstanding (a worker runs one request at a time, so grants
    /// on one model do not add up), with the model reporting `reported` bytes.
    pub fn largest_grant(&self, reported: u64) -> u64 {
        let outstanding = |g: &Grant| match g.base {
            None => g.extra,
            Some(base) => (base + g.extra).saturating_sub(reported),
        };
        self.grants.iter().map(outstanding).max().unwrap_or(0)
    }

    pub fn total(&self, reported: u64) -> u64 {
        self.loading + self.restoring + self.largest_grant(reported)
    }
}

#[derive(Clone, Debug)]
pub struct Registry {
    models: Vec<ModelEntry>,
}

impl Registry {
    pub fn new(config: &Config) -> Registry {
        Registry {
            models: config.models.iter().map(ModelEntry::unloaded).collect(),
        }
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    pub fn models_mut(&mut self) -> impl Iterator<Item = &mut ModelEntry> {
        self.models.iter_mut()
    }

    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut ModelEntry> {
        self.models.iter_mut().find(|m| m.name == name)
    }

    /// Bytes held by all models together.
    pub fn held_bytes(&self) -> u64 {
        self.models.iter().map(ModelEntry::held).sum()
    }

    /// Bytes all models hold in host RAM for parts placed on the CPU ([`Bytes::host`]): never
    /// part of [`Registry::held_bytes`], so never counted against the device.
    pub fn host_bytes(&self) -> u64 {
        self.models.iter().map(|m| m.bytes.host).sum()
    }

    pub fn loaded_count(&self) -> usize {
        self.models.iter().filter(|m| m.state.holds_memory()).count()
    }

    /// What vramd's workers hold on the device by their own account or NVML's, whichever is
    /// larger, reservations aside: what [`MemoryFigures::with_other`] takes from the device's
    /// use to find what something outside vramd holds.
    pub fn worker_bytes(&self) -> u64 {
        self.models
            .iter()
            .map(|m| m.bytes.total.max(m.device_bytes.unwrap_or(0)))
            .sum()
    }

    /// The registry as the planner sees it.
    pub fn planner_views(&self) -> Vec<ModelView> {
        self.models.iter().map(ModelEntry::planner_view).collect()
    }
}

impl ModelEntry {
    fn unloaded(m: &ModelConfig) -> ModelEntry {
        ModelEntry {
            name: m.name.clone(),
            kind: m.kind,
            state: ModelState::Unloaded,
            bytes: Bytes::default(),
            peak_bytes: 0,
            last_used: None,
            in_flight: 0,
            pinned: m.pinned,
            priority: m.priority,
            error: None,
            pid: None,
            device: None,
            cpu: None,
            last_image: None,
            load_ms: None,
            context_length: None,
            failures: 0,
            page_cache: Default::default(),
            device_bytes: None,
            queued: 0,
            keep_alive_override: None,
            evict_first: false,
            running: Vec::new(),
            reservations: Reservations::default(),
        }
    }

    pub fn fail(&mut self, reason: String) {
        self.state = ModelState::Failed;
        self.error = Some(reason);
        self.clear_worker();
    }

    /// Forgets the worker: nothing is held any more.
    pub fn clear_worker(&mut self) {
        self.bytes = Bytes::default();
        self.pid = None;
        self.device = None;
        self.cpu = None;
        self.device_bytes = None;
    }

    /// What it holds: the worker's own account plus what is reserved for work in progress,
    /// or NVML's figure for its process, whichever is larger (NVML also sees the CUDA context;
    /// the worker's account and the reservations cover buffers NVML has not seen yet).
    pub fn held(&self) -> u64 {
        (self.bytes.total + self.reserved()).max(self.device_bytes.unwrap_or(0))
    }

    /// This model as the planner sees it.
    pub fn planner_view(&self) -> ModelView {
        let llm = self.kind == ModelKind::Llm;
        // NVML's excess over the worker's account (the CUDA context) goes with the weights.
        let unaccounted = self.held() - self.bytes.total;
        ModelView {
            name: self.name.clone(),
            kind: self.kind,
            state: self.state,
            weights: unaccounted + if llm { self.bytes.weights } else { self.bytes.total },
            context: if llm {
                self.bytes.context + self.bytes.compute
            } else {
                0
            },
            // A model a client is done with (`evict_first`) ranks below every other and as
            // if never used, so each rung of the ladder takes it first.
            last_used: if self.evict_first { None } else { self.last_used },
            in_flight: self.in_flight,
            pinned: self.pinned,
            priority: if self.evict_first { i32::MIN } else { self.priority },
        }
    }

    /// What is reserved for work in progress beyond what the worker has reported.
    pub fn reserved(&self) -> u64 {
        self.reservations.total(self.bytes.total)
    }

    /// Takes what a worker reported, its host bytes (`bytes.host`) included: they are kept
    /// to be shown, and stay out of `bytes.total`, which is all that [`ModelEntry::held`]
    /// counts against the device.
    pub fn report(&mut self, health: &vramd_protocol::Health) {
        self.bytes = health.bytes;
        self.peak_bytes = self.peak_bytes.max(health.peak_bytes).max(health.bytes.total);
        self.pid = Some(health.pid);
        self.device = Some(health.device.clone());
        if health.cpu.is_some() {
            self.cpu = health.cpu.clone();
        }
        if let Some(last) = health.image.as_ref().and_then(|i| i.last.as_ref()) {
            self.last_image = Some(last.clone());
        }
    }
}

/// A model in a [`Snapshot`]: its entry and what is reserved for it at that moment.
#[derive(Clone, Debug, Serialize)]
pub struct ModelStatus {
    #[serde(flatten)]
    pub entry: ModelEntry,
    pub reserved_bytes: u64,
    /// Its place in the eviction order (1: the first to go when memory is needed), by the
    /// planner's own rule ([`planner::eviction_ranks`]); `null` for a model no plan would
    /// evict now (busy, pinned, or holding nothing).
    pub eviction_rank: Option<u32>,
}

impl std::ops::Deref for ModelStatus {
    type Target = ModelEntry;
    fn deref(&self) -> &ModelEntry {
        &self.entry
    }
}

/// A consistent view of the daemon's state at one moment: what `/v1/status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub memory: MemoryFigures,
    pub models: Vec<ModelStatus>,
    /// Unix seconds when this snapshot was taken.
    pub at: u64,
}

impl Snapshot {
    /// The registry's state at `now`, eviction ranks by `policy`.
    pub fn new(registry: &Registry, memory: MemoryFigures, now: SystemTime, policy: &Policy) -> Snapshot {
        let ranks = planner::eviction_ranks(&registry.planner_views(), unix_secs(now), policy);
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            memory,
            models: registry
                .models
                .iter()
                .zip(ranks)
                .map(|(m, eviction_rank)| ModelStatus {
                    reserved_bytes: m.reserved(),
                    entry: m.clone(),
                    eviction_rank,
                })
                .collect(),
            at: unix_secs(now),
        }
    }

    pub fn loaded_count(&self) -> usize {
        self.models.iter().filter(|m| m.state.holds_memory()).count()
    }

    /// The one-line summary systemd shows in `systemctl status`.
    pub fn status_line(&self) -> String {
        use crate::units::format_size_human as h;
        let failed = self.models.iter().filter(|m| m.state == ModelState::Failed).count();
        let mut line = format!(
            "{} of {} models loaded; memory {} used of {} ({})",
            self.loaded_count(),
            self.models.len(),
            h(self.memory.used_bytes),
            h(self.memory.total_bytes),
            self.memory.backend,
        );
        if failed > 0 {
            line.push_str(&format!("; {failed} failed"));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::BackendName;

    fn registry() -> Registry {
        let text = "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"/a\"\n\
                    [[models]]\nname = \"img\"\nkind = \"image\"\npath = \"/b\"\n";
        let main = crate::config::parse_main(std::path::Path::new("/c.toml"), text).unwrap();
        Registry::new(&Config::assemble(main, vec![]).unwrap())
    }

    fn figures() -> MemoryFigures {
        MemoryFigures {
            backend: BackendName::Budget,
            configured_backend: crate::config::BackendKind::Auto,
            total_bytes: 8 << 30,
            reserve_bytes: 512 << 20,
            used_bytes: 0,
            free_bytes: (8 << 30) - (512 << 20),
            device_free_bytes: None,
            host_bytes: 0,
            other_bytes: None,
        }
    }

    #[test]
    fn starts_unloaded_and_summarises() {
        let mut r = registry();
        assert_eq!(r.loaded_count(), 0);
        assert!(r.models().iter().all(|m| m.state == ModelState::Unloaded));
        r.get_mut("img").unwrap().fail("file not found".into());
        let s = Snapshot::new(&r, figures(), SystemTime::UNIX_EPOCH, &Policy::default());
        assert_eq!(
            s.status_line(),
            "0 of 2 models loaded; memory 0 B used of 8.0 GiB (budget); 1 failed"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["models"][0]["state"], "unloaded");
        assert_eq!(json["models"][1]["state"], "failed");
        assert_eq!(json["models"][1]["error"], "file not found");
        assert_eq!(json["models"][0]["last_used"], serde_json::Value::Null);
    }

    #[test]
    fn host_bytes_are_reported_apart_and_never_held() {
        let mut r = registry();
        let img = r.get_mut("img").unwrap();
        img.state = ModelState::Loaded;
        let health = vramd_protocol::Health {
            state: vramd_protocol::WorkerState::Loaded,
            model: Some("img".into()),
            bytes: Bytes::new(300, 0, 20).with_host(500),
            peak_bytes: 320,
            pid: 7,
            device: "cpu".into(),
            cpu: None,
            image: None,
        };
        img.report(&health);
        assert_eq!((img.bytes.total, img.bytes.host, img.held()), (320, 500, 320));
        assert_eq!((r.held_bytes(), r.host_bytes()), (320, 500));
        let s = Snapshot::new(
            &r,
            figures().with_host(r.host_bytes()),
            SystemTime::UNIX_EPOCH,
            &Policy::default(),
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["models"][1]["bytes"]["host"], 500);
        assert_eq!(json["models"][1]["bytes"]["total"], 320);
        assert_eq!(json["memory"]["host_bytes"], 500);
    }

    #[test]
    fn held_bytes_and_loaded_count_follow_states() {
        let mut r = registry();
        let chat = r.get_mut("chat").unwrap();
        chat.state = ModelState::SoftUnloaded;
        chat.bytes = Bytes::new(100, 0, 0);
        assert_eq!(r.held_bytes(), 100);
        assert_eq!(r.loaded_count(), 1);
    }

    #[test]
    fn reservations_count_until_reported_and_do_not_add_up() {
        let mut r = Reservations {
            loading: 1000,
            ..Default::default()
        };
        r.grant(1, 300); // an image waiting for its model's load
        r.grant(2, 0); // nothing beyond what the model holds: not recorded
        assert_eq!(r.total(0), 1300);
        r.loading = 0;
        r.start(1, 1000); // the load reported 1000; sampling begins
        r.grant(3, 300);
        r.start(3, 1000);
        assert_eq!(r.total(1000), 300, "one worker runs one request at a time");
        // A report of 1200 arrives before the requests end: 200 of it is counted, not reserved.
        assert_eq!(r.total(1200), 100);
        assert!(r.working());
        r.release(1);
        r.release(3);
        assert_eq!(r.total(1200), 0);
        assert!(!r.working());
        // A worker that dies frees what its running requests had reserved.
        r.grant(4, 500);
        r.start(4, 1000);
        r.worker_gone();
        assert_eq!(r.total(0), 0);
    }
}
