//! The arbiter task: the one owner of all VRAM state.
//!
//! HTTP (and later D-Bus) handlers never touch the [`Registry`]; they send a [`Command`]
//! and await its reply, or read the latest [`Snapshot`] from a `watch` channel. One owner
//! means no lock ordering to get wrong and one place where decisions are made.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, MemoryConfig};
use crate::memory::{MemoryFigures, MemorySource};
use crate::registry::{ModelState, Registry, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnloadMode {
    /// Free KV cache and compute buffers, keep the weights.
    Soft,
    /// Free the model.
    Hard,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UnloadOutcome {
    pub model: String,
    pub mode: UnloadMode,
    pub state: ModelState,
    pub freed_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArbiterError {
    #[error("model {0:?} is not configured")]
    UnknownModel(String),
    #[error("the arbiter has stopped")]
    Stopped,
}

pub enum Command {
    Unload {
        model: String,
        mode: UnloadMode,
        reply: oneshot::Sender<Result<UnloadOutcome, ArbiterError>>,
    },
}

/// What handlers hold: a way to send commands and to read the latest snapshot.
#[derive(Clone)]
pub struct ArbiterHandle {
    tx: mpsc::Sender<Command>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
}

impl ArbiterHandle {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// A receiver that wakes on every state change (status line, idle exit).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshot.clone()
    }

    pub async fn unload(
        &self,
        model: &str,
        mode: UnloadMode,
    ) -> Result<UnloadOutcome, ArbiterError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Unload {
            model: model.to_owned(),
            mode,
            reply,
        };
        self.tx.send(cmd).await.map_err(|_| ArbiterError::Stopped)?;
        rx.await.map_err(|_| ArbiterError::Stopped)?
    }
}

struct Arbiter {
    registry: Registry,
    memory_config: MemoryConfig,
    source: Box<dyn MemorySource>,
    publish: watch::Sender<Arc<Snapshot>>,
}

/// Starts the arbiter task. Models whose files are missing start as `failed` with the
/// reason, so `/v1/status` says why instead of the first request failing obscurely.
pub fn spawn(config: &Config, source: Box<dyn MemorySource>) -> ArbiterHandle {
    let mut registry = Registry::new(config);
    for m in &config.models {
        if let Some(missing) = m
            .source
            .files()
            .into_iter()
            .find(|(_, p)| !Path::new(p).exists())
        {
            let what = if missing.0 == "path" {
                "model"
            } else {
                missing.0
            };
            let reason = format!("{what} file not found: {}", missing.1.display());
            tracing::warn!(model = %m.name, "{reason}");
            registry.get_mut(&m.name).expect("configured").fail(reason);
        }
    }
    let memory_config = config.memory.clone();
    let mut source = source;
    let first = take_snapshot(&registry, &memory_config, source.as_mut());
    let (publish, snapshot) = watch::channel(first);
    let arbiter = Arbiter {
        registry,
        memory_config,
        source,
        publish,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(arbiter.run(rx));
    ArbiterHandle { tx, snapshot }
}

fn take_snapshot(
    registry: &Registry,
    memory: &MemoryConfig,
    source: &mut dyn MemorySource,
) -> Arc<Snapshot> {
    let reading = source.read();
    let figures = MemoryFigures::compute(memory, source.name(), reading, registry.held_bytes());
    Arc::new(Snapshot::new(registry, figures, SystemTime::now()))
}

impl Arbiter {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Unload { model, mode, reply } => {
                    let _ = reply.send(self.unload(&model, mode));
                }
            }
            let snapshot = self.snapshot();
            self.publish.send_replace(snapshot);
        }
    }

    fn snapshot(&mut self) -> Arc<Snapshot> {
        take_snapshot(&self.registry, &self.memory_config, self.source.as_mut())
    }

    /// Nothing can be loaded before workers exist, so unloading reports what the model
    /// holds (nothing) and leaves its state alone; workers make this real.
    fn unload(&mut self, model: &str, mode: UnloadMode) -> Result<UnloadOutcome, ArbiterError> {
        let entry = self
            .registry
            .get(model)
            .ok_or_else(|| ArbiterError::UnknownModel(model.to_owned()))?;
        Ok(UnloadOutcome {
            model: entry.name.clone(),
            mode,
            state: entry.state,
            freed_bytes: 0,
        })
    }
}
