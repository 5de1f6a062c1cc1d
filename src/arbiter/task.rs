//! The arbiter's state and main loop: commands from handlers, events from its own tasks,
//! and a periodic tick (wait timeouts, `keep_alive`, page-cache residency).
//!
//! Model lifecycles are in [`super::lifecycle`]; the queue of requests waiting for memory
//! and the execution of plans in [`super::queue`].

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use super::host::Host;
use super::state::{Arbiter, Runtime, Waiter};
use super::{ArbiterError, Command, Internal, KeepAlive, Work};
use crate::config::Config;
use crate::estimate::{self, Estimate, EstimateQuery, Shape};
use crate::events::{Cause, EventBus, EventFeed};
use crate::memory::{MemoryFigures, MemorySource};
use crate::registry::{Registry, Snapshot};
use crate::worker::WorkerPaths;

const TICK: Duration = Duration::from_millis(500);
/// How often page-cache residency is refreshed for `/v1/status`.
const RESIDENCY_EVERY: Duration = Duration::from_secs(5);

impl Arbiter {
    pub fn new(
        config: Arc<Config>,
        source: Box<dyn MemorySource>,
        paths: WorkerPaths,
    ) -> (watch::Receiver<Arc<Snapshot>>, EventFeed, Arbiter) {
        let mut registry = Registry::new(&config);
        let mut shapes = HashMap::new();
        for m in &config.models {
            let entry = registry.get_mut(&m.name).expect("configured");
            if let Some((role, path)) = m.source.files().into_iter().find(|(_, p)| !Path::new(p).exists()) {
                let what = if role == "path" { "model" } else { role };
                let reason = format!("{what} file not found: {}", path.display());
                tracing::warn!(model = %m.name, "{reason}");
                entry.fail(reason);
            }
            let shape = Shape::read(m.kind, &m.source.files());
            if m.kind == crate::config::ModelKind::Llm {
                // Until a worker reports the one in effect.
                entry.context_length = Some(estimate::context_length(m, &shape));
            }
            shapes.insert(m.name.clone(), shape);
        }
        let mut host = Host::new(&config, source);
        let calibration = host.load_calibration();
        let first = take_snapshot(&registry, &config, host.source());
        let (publish, snapshot) = watch::channel(first);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
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
            host,
            paths,
            publish,
            internal_tx,
            internal_rx,
            next_seq: 1,
            next_ticket: 1,
            last_activity: Instant::now(),
            bus,
            pending: VecDeque::new(),
            evicting: None,
            shapes,
            calibration,
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
            // Events first: a grant dropped before its response was sent must be seen
            // before any command the client sends after reading that response.
            tokio::select! {
                biased;
                Some(ev) = self.internal_rx.recv() => self.internal(ev),
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                _ = tick.tick() => self.tick(),
            }
            self.drive();
            self.restore_idle();
            self.count_queued();
            let snapshot = take_snapshot(&self.registry, &self.config, self.host.source());
            self.publish.send_replace(snapshot);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire {
                model,
                work,
                request_id,
                reply,
            } => self.enqueue(model, work, Waiter::Acquire { reply, request_id }),
            Command::Load { model, reply } => {
                // An explicit load is a person asking to try again: forget past failures.
                if let Some(e) = self.registry.get_mut(&model) {
                    if e.state == crate::registry::ModelState::Failed {
                        e.state = crate::registry::ModelState::Unloaded;
                        e.failures = 0;
                        e.error = None;
                    }
                }
                self.enqueue(model, Work::Text, Waiter::Load(reply))
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
            Command::KeepAlive { model, wish, reply } => {
                let _ = reply.send(self.keep_alive_wish(&model, wish));
            }
            Command::Estimate { model, query, reply } => {
                let _ = reply.send(self.estimate(&model, query));
            }
            Command::Snapshot { reply } => {
                self.count_queued();
                let _ = reply.send(Ok(take_snapshot(&self.registry, &self.config, self.host.source())));
            }
            Command::Interrupt { model, reply } => {
                let _ = reply.send(Ok(self.interrupt(model.as_deref())));
            }
        }
    }

    fn internal(&mut self, ev: Internal) {
        match ev {
            Internal::Release(released) => self.release(released),
            Internal::Progress {
                model,
                ticket,
                image,
                step,
                steps,
            } => self.progress(&model, ticket, image, step, steps),
            Internal::LoadDone { model, seq, result } => self.load_done(&model, seq, result),
            Internal::SoftUnloadDone { model, seq, result } => self.soft_unload_done(&model, seq, result),
            Internal::RestoreDone { model, seq, result } => self.restore_done(&model, seq, result),
            Internal::WorkerExit { model, seq, exit } => self.worker_exit(&model, seq, exit),
        }
    }

    /// How many requests wait in the queue for each model, for `/v1/status`.
    fn count_queued(&mut self) {
        for e in self.registry.models_mut() {
            e.queued = self.pending.iter().filter(|p| p.model == e.name).count() as u32;
        }
    }

    fn tick(&mut self) {
        self.measure_processes();
        self.drop_abandoned();
        self.expire_waits();
        self.keep_alive();
        if self.residency_at.elapsed() >= RESIDENCY_EVERY {
            self.refresh_residency();
        }
    }

    /// NVML's per-process figures into the registry (no-op on the budget backend).
    fn measure_processes(&mut self) {
        let used = self.host.per_process();
        if used.is_empty() && self.host.backend() == crate::memory::BackendName::Budget {
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
        for e in self.registry.models_mut() {
            e.page_cache = self.host.residency(&e.name);
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
                let e = self.registry.get(&m.name)?;
                let limit = e.keep_alive_override.unwrap_or(m.keep_alive).0?.as_secs();
                let idle = now.saturating_sub(e.last_used?);
                (e.in_flight == 0 && e.state.holds_memory() && !e.pinned && idle >= limit && e.state.settled())
                    .then(|| m.name.clone())
            })
            .collect();
        for name in expired {
            let configured = self.config.model(&name).expect("configured").keep_alive;
            let wished = self.registry.get(&name).and_then(|e| e.keep_alive_override);
            let reason = match wished {
                Some(t) => format!("unused for the keep_alive of {t} a client asked for"),
                None => format!("unused for its keep_alive of {configured}"),
            };
            self.evict_hard(&name, reason, Cause::Idle);
        }
    }

    /// A client's `keep_alive` wish: an idle policy for this model until it is unloaded, or
    /// "evict first" until it is used again (`views` in `queue.rs` ranks it last).
    fn keep_alive_wish(&mut self, model: &str, wish: KeepAlive) -> Result<(), ArbiterError> {
        let e = self
            .registry
            .get_mut(model)
            .ok_or_else(|| ArbiterError::UnknownModel(model.to_owned()))?;
        match wish {
            KeepAlive::Idle(t) => {
                e.keep_alive_override = Some(t);
                e.evict_first = false;
            }
            KeepAlive::EvictFirst => e.evict_first = true,
        }
        tracing::debug!(model, ?wish, "keep_alive wish recorded");
        Ok(())
    }

    pub(super) fn estimate(&self, model: &str, query: EstimateQuery) -> Result<Estimate, ArbiterError> {
        let cfg = self
            .config
            .model(model)
            .ok_or_else(|| ArbiterError::UnknownModel(model.to_owned()))?;
        let shape = self.shapes.get(model).expect("every model has a shape");
        Ok(estimate::report(cfg, shape, query, &self.calibration))
    }
}

pub(super) fn take_snapshot(registry: &Registry, config: &Config, source: &mut dyn MemorySource) -> Arc<Snapshot> {
    let reading = source.read();
    let figures = MemoryFigures::compute(&config.memory, source.name(), reading, registry.held_bytes())
        .with_host(registry.host_bytes())
        .with_other(registry.worker_bytes());
    Arc::new(Snapshot::new(
        registry,
        figures,
        SystemTime::now(),
        &config.policy.planner(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Timeout;

    /// An arbiter on the budget backend with two LLMs, `a` (priority 5) and `b`.
    fn arbiter(dir: &Path) -> Arbiter {
        let text = format!(
            "[daemon]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n\
             [memory]\nbackend = \"budget\"\nbudget = \"8GiB\"\n\
             [[models]]\nname = \"a\"\nkind = \"llm\"\npath = \"{0}/a.gguf\"\npriority = 5\n\
             [[models]]\nname = \"b\"\nkind = \"llm\"\npath = \"{0}/b.gguf\"\n",
            dir.display()
        );
        let main = crate::config::parse_main(&dir.join("vramd.toml"), &text).unwrap();
        let config = Config::assemble(main, vec![]).unwrap();
        let source = crate::memory::open_source(&config.memory).unwrap();
        let paths = WorkerPaths {
            dir: dir.to_owned(),
            sd_worker: crate::worker::SD_WORKER.to_owned(),
            runtime_dir: dir.join("run"),
            private: false,
        };
        Arbiter::new(Arc::new(config), source, paths).2
    }

    fn view(a: &Arbiter, name: &str) -> crate::planner::ModelView {
        a.views().into_iter().find(|v| v.name == name).unwrap()
    }

    #[test]
    fn keep_alive_wishes_are_recorded_and_evict_first_ranks_the_model_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = arbiter(dir.path());
        a.registry.get_mut("a").unwrap().last_used = Some(1_000);
        let five_minutes = Timeout(Some(Duration::from_secs(300)));
        a.keep_alive_wish("a", KeepAlive::Idle(five_minutes)).unwrap();
        let e = a.registry.get("a").unwrap();
        assert_eq!((e.keep_alive_override, e.evict_first), (Some(five_minutes), false));
        assert_eq!((view(&a, "a").priority, view(&a, "a").last_used), (5, Some(1_000)));

        // "Done with it": the lowest priority and as if never used, so every rung of the
        // planner's ladder takes it first; the configured priority itself is kept.
        a.keep_alive_wish("a", KeepAlive::EvictFirst).unwrap();
        assert!(a.registry.get("a").unwrap().evict_first);
        assert_eq!((view(&a, "a").priority, view(&a, "a").last_used), (i32::MIN, None));
        assert_eq!(a.registry.get("a").unwrap().priority, 5);
        assert_eq!(view(&a, "b").priority, 0, "only the model it was said of");

        // A later duration means the client wants it again.
        a.keep_alive_wish("a", KeepAlive::Idle(Timeout::NEVER)).unwrap();
        let e = a.registry.get("a").unwrap();
        assert_eq!((e.keep_alive_override, e.evict_first), (Some(Timeout::NEVER), false));
        assert_eq!(
            a.keep_alive_wish("nope", KeepAlive::EvictFirst),
            Err(ArbiterError::UnknownModel("nope".into()))
        );
    }
}
