//! Restoring soft-unloaded contexts: after the heavy request that made an LLM drop its KV
//! cache and compute buffers, the arbiter gives them back in the background once they fit
//! again, so the next chat does not pay for recreating them. A context a person dropped
//! (`POST /v1/models/{name}/unload` with `soft`) stays dropped until the model is used.
//!
//! A restore runs only after the heavy request: when the queue is empty, no request holds a
//! memory reservation (an image still sampling or decoding), nothing is loading or being
//! evicted, and the arbiter has been quiet for `[policy] restore_after`. Estimates can be
//! wrong by a factor before calibration, so "it fits" is only trusted once the work that
//! made room has ended and reported what it used. The pure [`planner::restore`] picks the
//! model. While
//! it runs the model is `loading` (not evictable; a request for it waits) and its context's
//! bytes are reserved, so requests planned meanwhile leave room for it.

use std::time::Instant;

use vramd_protocol::RestoreResponse;

use super::state::Arbiter;
use super::{ArbiterError, Internal, Work};
use crate::config::ModelKind;
use crate::events::EventKind;
use crate::planner::{self, RestoreCandidate};
use crate::registry::ModelState;

impl Arbiter {
    /// Restores one soft-unloaded model whose context fits again, when the arbiter is quiet.
    pub(super) fn restore_idle(&mut self) {
        let Some(quiet) = self.config.policy.restore_after.0 else {
            return;
        };
        let working = self.registry.models().iter().any(|e| e.reservations.working());
        let moving = self
            .registry
            .models()
            .iter()
            .any(|e| matches!(e.state, ModelState::Loading | ModelState::Unloading));
        if !self.pending.is_empty()
            || self.evicting.is_some()
            || self.settling.is_some()
            || working
            || moving
            || self.last_activity.elapsed() < quiet
        {
            return;
        }
        let candidates: Vec<RestoreCandidate> = self
            .registry
            .models()
            .iter()
            .filter(|e| e.kind == ModelKind::Llm && e.state == ModelState::SoftUnloaded)
            .filter(|e| {
                self.runtime
                    .get(&e.name)
                    .is_some_and(|rt| rt.worker.is_some() && rt.restore_when_free && !rt.restore_failed)
            })
            .map(|e| RestoreCandidate {
                name: e.name.clone(),
                bytes: self.need_for(&e.name, Work::Text).load,
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let memory = self.memory();
        let views = self.views();
        let Some(chosen) = planner::restore(&views, memory, &candidates) else {
            return;
        };
        let free = planner::free_bytes(&views, memory);
        let reason = format!(
            "{} free again, its context needs {}",
            crate::units::format_size_human(free),
            crate::units::format_size_human(chosen.bytes)
        );
        let name = chosen.name.clone();
        self.start_restore(&name, reason);
    }

    /// Asks the worker to recreate the context its soft unload dropped.
    pub(super) fn start_restore(&mut self, model: &str, reason: String) {
        let bytes = self.need_for(model, Work::Text).load;
        let entry = self.registry.get_mut(model).expect("entry");
        entry.state = ModelState::Loading;
        entry.reservations.restoring = bytes;
        let events = self.reply_later();
        let rt = self.rt(model);
        rt.restore_reason = Some(reason);
        let (client, seq, name) = (
            rt.worker
                .as_ref()
                .expect("a soft-unloaded model has a worker")
                .client
                .clone(),
            rt.seq,
            model.to_owned(),
        );
        tokio::spawn(async move {
            let result = client.restore().await.map_err(|e| e.to_string());
            let _ = events.send(Internal::RestoreDone {
                model: name,
                seq,
                result,
            });
        });
    }

    pub(super) fn restore_done(&mut self, model: &str, seq: u64, result: Result<RestoreResponse, String>) {
        let rt = self.rt(model);
        let reason = rt.restore_reason.take().unwrap_or_default();
        let current = rt.seq == seq;
        let entry = self.registry.get_mut(model).expect("entry");
        entry.reservations.restoring = 0;
        // The worker crashed or was stopped meanwhile: that path has settled the model.
        if !current || entry.state != ModelState::Loading {
            return;
        }
        match result {
            Ok(r) => {
                entry.report(&r.health);
                entry.state = ModelState::Loaded;
                let bytes = r.health.bytes;
                self.rt(model).known = Some(bytes);
                tracing::info!(model, context_ms = r.context_ms, "context restored ({reason})");
                self.bus.publish(EventKind::ModelRestored {
                    model: model.to_owned(),
                    bytes: bytes.context + bytes.compute,
                    context_ms: r.context_ms,
                    reason,
                });
                for g in std::mem::take(&mut self.rt(model).waiters) {
                    self.serve(model, g);
                }
            }
            Err(e) => {
                tracing::warn!(
                    model,
                    "cannot restore the context ({e}); it comes back with the next request"
                );
                entry.state = ModelState::SoftUnloaded;
                self.rt(model).restore_failed = true;
                self.fail_waiters(model, |m| ArbiterError::WorkerFailed {
                    model: m,
                    reason: format!("restoring its context failed: {e}"),
                });
            }
        }
        self.last_activity = Instant::now();
    }
}
