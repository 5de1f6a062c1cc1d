//! Requests in progress: granting a live worker, following an image's progress, stopping
//! images on `interrupt`, and taking what a finished request measured.
//!
//! The running requests are part of the registry entry of their model, so every reader
//! (A1111's `progress`, `/v1/status`, D-Bus) sees one truth, published with each snapshot.

use tokio::sync::oneshot;
use vramd_protocol::{Health, VaePlacement};

use super::grant::{Decided, Grant};
use super::state::{Arbiter, Granted, Story, Waiter};
use super::{LoadOutcome, Released, Report, Work};
use crate::config::ModelKind;
use crate::estimate::{self, Phase, Shape};
use crate::events::{Cause, Ending, EventKind, RequestKind};
use crate::registry::{ImageProgress, ModelState, Running};

impl Arbiter {
    /// Answers a granted request on a model whose worker is up. A worker found dead here
    /// (its exit not reported yet) is never handed out: the request waits for the
    /// replacement the exit starts, or gets the model's failure.
    pub(super) fn serve(&mut self, model: &str, granted: Granted) {
        let rt = self.rt(model);
        if !rt.worker.as_ref().is_some_and(|w| w.alive()) {
            tracing::info!(model, "its worker has just ended; the request waits for a new one");
            rt.waiters.push(granted);
            return;
        }
        rt.restore_failed = false;
        rt.restore_when_free = false;
        let load_ms = rt.just_loaded_ms;
        match granted.waiter {
            // An explicit load runs nothing on the model.
            Waiter::Load(reply) => {
                let entry = self.registry.get_mut(model).expect("entry");
                entry.reservations.release(granted.ticket);
                let _ = reply.send(Ok(LoadOutcome {
                    model: model.to_owned(),
                    state: entry.state,
                    load_ms,
                    bytes: entry.bytes,
                    actions: granted.actions,
                }));
            }
            Waiter::Acquire { reply, request_id } => {
                let grant = self.grant_for(
                    model,
                    request_id,
                    granted.work,
                    granted.vae,
                    granted.ticket,
                    granted.actions,
                );
                if let Err(Ok(grant)) = reply.send(Ok(grant)) {
                    drop(grant); // the requester went away; its drop releases the model
                }
            }
        }
    }

    /// Marks the model busy with one more request and makes its grant.
    fn grant_for(
        &mut self,
        model: &str,
        request_id: String,
        work: Work,
        vae: VaePlacement,
        ticket: u64,
        actions: Vec<super::Action>,
    ) -> Grant {
        let internal = self.reply_later();
        let (interrupt_tx, interrupt) = oneshot::channel();
        let rt = self.rt(model);
        rt.interrupts.insert(ticket, interrupt_tx);
        let (seq, load_ms) = (rt.seq, rt.just_loaded_ms);
        let worker = rt.worker.as_ref().expect("serving needs a worker");
        let (client, exit) = (worker.client.clone(), worker.exit_watch());
        let entry = self.registry.get_mut(model).expect("entry");
        entry.reservations.start(ticket, entry.bytes.total);
        entry.in_flight += 1;
        entry.state = ModelState::Busy;
        entry.last_used = Some(crate::clock::now_unix());
        // Used again: a client's earlier "done with it" (`evict_first`) no longer holds.
        entry.evict_first = false;
        entry.running.push(Running {
            request_id,
            ticket,
            started_ms: crate::clock::wall_ms(),
            progress: match work {
                Work::Image { count, .. } => Some(ImageProgress {
                    images: count,
                    ..Default::default()
                }),
                Work::Text => None,
            },
            interrupted: false,
        });
        Grant::new(Decided {
            model: model.to_owned(),
            client,
            exit,
            load_ms,
            context_length: entry.context_length.unwrap_or(0),
            vae,
            actions,
            work,
            seq,
            ticket,
            interrupt,
            turn: self.config.policy.wait_timeout.0,
            retry_after: self.config.policy.retry_after.0.map_or(5, |d| d.as_secs().max(1)),
            internal,
        })
    }

    pub(super) fn progress(&mut self, model: &str, ticket: u64, image: u32, step: u32, steps: u32) {
        let Some(entry) = self.registry.get_mut(model) else {
            return;
        };
        if let Some(p) = entry
            .running
            .iter_mut()
            .find(|r| r.ticket == ticket)
            .and_then(|r| r.progress.as_mut())
        {
            (p.image, p.step, p.steps) = (image, step, steps);
        }
    }

    /// Stops the image generations running on `model` (or on any image model): the worker
    /// is stopped, as stable-diffusion.cpp cannot cancel, and their grants are told.
    pub(super) fn interrupt(&mut self, model: Option<&str>) -> Option<String> {
        let target = self
            .registry
            .models()
            .iter()
            .filter(|e| e.kind == ModelKind::Image && model.map_or(true, |m| m == e.name))
            .filter(|e| matches!(e.state, ModelState::Loaded | ModelState::Busy))
            .find(|e| !e.running.is_empty() && self.runtime.get(&e.name).is_some_and(|rt| rt.worker.is_some()))
            .map(|e| e.name.clone())?;
        let entry = self.registry.get_mut(&target).expect("entry");
        for r in &mut entry.running {
            r.interrupted = true;
        }
        for (_, tx) in self.rt(&target).interrupts.drain() {
            let _ = tx.send(());
        }
        self.evict_hard(&target, "interrupted".into(), Cause::Interrupted);
        Some(target)
    }

    pub(super) fn release(&mut self, released: Released) {
        let Released {
            model,
            seq,
            work,
            ticket,
            report,
            ended,
            end,
            abandoned,
        } = released;
        let model = model.as_str();
        self.last_activity = std::time::Instant::now();
        let current = self.rt(model).seq == seq && self.rt(model).worker.is_some();
        self.rt(model).interrupts.remove(&ticket);
        let story = self.rt(model).stories.remove(&ticket);
        if let (Some(story), Some((outcome, error))) = (story, end) {
            let finished = self.finished(model, work, story, outcome, error, report.as_ref());
            self.bus.publish(finished);
        }
        let entry = self.registry.get_mut(model).expect("entry");
        entry.reservations.release(ticket);
        entry.running.retain(|r| r.ticket != ticket);
        entry.last_used = Some(entry.last_used.map_or(ended, |t| t.max(ended)));
        if !current {
            // Its worker is gone, and with it the request's count (see `worker_exit`).
            return;
        }
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if entry.in_flight == 0 && entry.state == ModelState::Busy {
            entry.state = ModelState::Loaded;
        }
        if abandoned && entry.running.is_empty() {
            // stable-diffusion.cpp cannot cancel: stopping the worker is the only way to stop
            // an image nobody waits for, so the next request does not wait behind it (it
            // reloads from the page cache). With other requests on the worker it finishes.
            tracing::info!(model, "the client left mid-generation; stopping its image");
            self.evict_hard(model, "the client left mid-generation".into(), Cause::Interrupted);
            return;
        }
        let Some(report) = report else { return };
        entry.report(&report.health);
        // A completed request proves the worker works.
        entry.failures = 0;
        let context_length = entry.context_length.unwrap_or(0);
        let bytes = report.health.bytes;
        let image = entry.kind == ModelKind::Image;
        let rt = self.rt(model);
        rt.last_failure = None;
        if bytes.context > 0 || image {
            rt.known = Some(bytes);
        }
        self.calibrate(model, work, &report.health, context_length);
    }

    /// The `request_finished` event of a request that ran: its story, and for an image where
    /// its VAE decode ran, how long that took and how much slower it was than a whole
    /// decode on the device would have been (from this model's decode times; `None` until
    /// one was measured).
    pub(super) fn finished(
        &self,
        model: &str,
        work: Work,
        story: Story,
        outcome: Ending,
        error: Option<String>,
        report: Option<&Report>,
    ) -> EventKind {
        let last = report.and_then(|r| r.health.image.as_ref()?.last.as_ref());
        let (kind, vae, vae_ms, slower_ms) = match (work, last) {
            (Work::Image { .. }, Some(last)) if last.vae == story.vae => {
                let pixels = u64::from(last.width) * u64::from(last.height);
                let slower = match last.vae {
                    VaePlacement::Gpu => Some(0),
                    _ => self
                        .calibration
                        .decode_ms(model, VaePlacement::Gpu, pixels)
                        .map(|device| last.vae_decode_ms.saturating_sub(device)),
                };
                (RequestKind::Image, Some(last.vae), Some(last.vae_decode_ms), slower)
            }
            // Nothing measured (a worker that does not report its phases, an image not made).
            (Work::Image { .. }, _) => (RequestKind::Image, Some(story.vae), None, None),
            (Work::Text, _) => (RequestKind::Text, None, None, None),
        };
        EventKind::RequestFinished {
            model: model.to_owned(),
            request_id: story.request_id,
            kind,
            outcome,
            error,
            queued: story.queued,
            waited_ms: story.waited_ms,
            vae,
            vae_ms,
            slower_ms,
            freed: story.freed,
        }
    }

    /// Teaches the estimator what this request measured: device peaks only, since the
    /// estimates plan device memory. The worker's `sampling_bytes` are the device's (a
    /// buffer in host RAM is left out), and a VAE decode placed on the CPU is host memory,
    /// so there is nothing of it to learn.
    fn calibrate(&mut self, model: &str, work: Work, health: &Health, context_length: u32) {
        let before = self.calibration.clone();
        match (self.shapes.get(model), work) {
            (Some(Shape::Llm(s)), Work::Text) if health.bytes.compute > 0 => {
                let raw = estimate::llm(s, context_length, 1, None, model).compute;
                self.calibration
                    .observe(model, Phase::LlmCompute, health.bytes.compute, raw);
            }
            (Some(Shape::Image(w)), Work::Image { .. }) => {
                if let Some(last) = health.image.as_ref().and_then(|i| i.last.as_ref()) {
                    let raw = |p| estimate::raw_image_phase(w, last.width, last.height, p);
                    self.calibration
                        .observe(model, Phase::Sampling, last.sampling_bytes, raw(Phase::Sampling));
                    let phase = match last.vae {
                        VaePlacement::Gpu => Some(Phase::VaeDecode),
                        VaePlacement::Tiled => Some(Phase::VaeTiled),
                        VaePlacement::Cpu => None, // nothing on the device to learn from
                    };
                    if let Some(phase) = phase {
                        self.calibration
                            .observe(model, phase, last.vae_decode_bytes, raw(phase));
                    }
                    let pixels = u64::from(last.width) * u64::from(last.height);
                    self.calibration
                        .observe_decode(model, last.vae, pixels, last.vae_decode_ms);
                }
            }
            _ => {}
        }
        if self.calibration != before {
            self.host.save_calibration(&self.calibration);
        }
    }
}
