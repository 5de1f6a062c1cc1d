//! The words the core shares about a model: its kind and its state.
//!
//! A leaf: it imports nothing from the crate, so the configuration, the registry and the
//! planner can all speak of models without importing one another. The old paths
//! (`config::ModelKind`, `registry::ModelState`) re-export these.

use serde::Serialize;

/// What a model is for, and so which worker serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Llm,
    Image,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Llm => "llm",
            ModelKind::Image => "image",
        }
    }
}

/// Where a model is in its life: the states of the arbiter's state machine.
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
