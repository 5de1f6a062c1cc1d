//! What each configured model holds and in which state it is: plain data, no I/O.
//!
//! The arbiter task owns the one [`Registry`]; everything else sees it through published
//! [`Snapshot`]s, so readers never take a lock that the arbiter might hold.

use std::time::SystemTime;

use serde::Serialize;

use crate::config::{Config, ModelConfig, ModelKind};
use crate::memory::MemoryFigures;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Unloaded,
    Loading,
    Loaded,
    /// Weights kept, KV cache and compute buffers freed.
    SoftUnloaded,
    Busy,
    Unloading,
    Failed,
}

impl ModelState {
    /// Whether the model holds device memory and so keeps the daemon from idling out.
    pub fn holds_memory(self) -> bool {
        !matches!(self, ModelState::Unloaded | ModelState::Failed)
    }

    /// Loaded and idle, neither coming nor going.
    pub fn settled(self) -> bool {
        matches!(self, ModelState::Loaded | ModelState::SoftUnloaded)
    }
}

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
    /// Memory granted to work in progress that the worker has not reported yet: a model
    /// being loaded, an image's sampling and VAE decode, a context being recreated. It counts
    /// as held, so that requests planned meanwhile leave room for it.
    pub reserved_bytes: u64,
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

    pub fn loaded_count(&self) -> usize {
        self.models.iter().filter(|m| m.state.holds_memory()).count()
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
            load_ms: None,
            context_length: None,
            failures: 0,
            page_cache: Default::default(),
            device_bytes: None,
            reserved_bytes: 0,
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
        self.device_bytes = None;
    }

    /// What it holds: the worker's own account plus what is reserved for work in progress,
    /// or NVML's figure for its process, whichever is larger (NVML also sees the CUDA context;
    /// the worker's account and the reservations cover buffers NVML has not seen yet).
    pub fn held(&self) -> u64 {
        (self.bytes.total + self.reserved_bytes).max(self.device_bytes.unwrap_or(0))
    }

    /// Takes what a worker reported.
    pub fn report(&mut self, health: &vramd_protocol::Health) {
        self.bytes = health.bytes;
        self.peak_bytes = self.peak_bytes.max(health.peak_bytes).max(health.bytes.total);
        self.pid = Some(health.pid);
        self.device = Some(health.device.clone());
    }
}

/// A consistent view of the daemon's state at one moment: what `/v1/status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub memory: MemoryFigures,
    pub models: Vec<ModelEntry>,
    /// Unix seconds when this snapshot was taken.
    pub at: u64,
}

impl Snapshot {
    pub fn new(registry: &Registry, memory: MemoryFigures, now: SystemTime) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            memory,
            models: registry.models.clone(),
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

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
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
        }
    }

    #[test]
    fn starts_unloaded_and_summarises() {
        let mut r = registry();
        assert_eq!(r.loaded_count(), 0);
        assert!(r.models().iter().all(|m| m.state == ModelState::Unloaded));
        r.get_mut("img").unwrap().fail("file not found".into());
        let s = Snapshot::new(&r, figures(), SystemTime::UNIX_EPOCH);
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
    fn held_bytes_and_loaded_count_follow_states() {
        let mut r = registry();
        let chat = r.get_mut("chat").unwrap();
        chat.state = ModelState::SoftUnloaded;
        chat.bytes = Bytes::new(100, 0, 0);
        assert_eq!(r.held_bytes(), 100);
        assert_eq!(r.loaded_count(), 1);
    }
}
