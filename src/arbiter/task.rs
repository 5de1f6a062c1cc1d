//! The arbiter's state machine: model lifecycles driven by commands and events.
//!
//! `unloaded → loading → loaded ⇄ busy`, `loaded → unloading → soft_unloaded | unloaded`,
//! and `failed` when a model cannot work (a load error, or [`MAX_FAILURES`] worker crashes
//! in a row). Requests that arrive while a model loads or unloads wait in arrival order and
//! are served when it settles, never in the middle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use vramd_protocol::{Health, LoadOptions, LoadRequest, LoadResponse, UnloadMode, UnloadRequest};

use super::{ArbiterError, Command, Event, Lease, LoadOutcome, UnloadOutcome};
use crate::config::{Config, GpuLayers, MemoryConfig, ModelConfig, ModelSource};
use crate::memory::{MemoryFigures, MemorySource};
use crate::registry::{unix_secs, ModelState, Registry, Snapshot};
use crate::worker::client::CallError;
use crate::worker::process::{self, Worker};
use crate::worker::WorkerPaths;

/// Worker crashes or failed starts in a row before a model is marked `failed`.
pub const MAX_FAILURES: u32 = 3;

pub(crate) type LoadResult = Result<(Worker, LoadResponse, u64), LoadFailure>;

#[derive(Debug)]
pub(crate) enum LoadFailure {
    /// The model itself is bad (the worker said so): retrying will not help.
    Model(String),
    /// The worker could not start or died while loading.
    Worker(String),
}

enum Waiter {
    Acquire(oneshot::Sender<Result<Lease, ArbiterError>>),
    Load(oneshot::Sender<Result<LoadOutcome, ArbiterError>>),
}

/// An unload request waiting for the model to settle: its mode, the bytes held when it
/// was asked, and where to answer.
type UnloadWaiter = (UnloadMode, u64, oneshot::Sender<Result<UnloadOutcome, ArbiterError>>);

/// What the arbiter keeps per model beside its registry entry.
#[derive(Default)]
struct Runtime {
    worker: Option<Worker>,
    /// Bumped for every worker, so late events from an old one are recognised.
    seq: u64,
    waiters: Vec<Waiter>,
    unload_waiters: Vec<UnloadWaiter>,
    last_failure: Option<Instant>,
    /// Whether the next lease should report the load time (it waited for a load).
    just_loaded_ms: Option<u64>,
}

pub(crate) struct Arbiter {
    config: Arc<Config>,
    registry: Registry,
    runtime: HashMap<String, Runtime>,
    source: Box<dyn MemorySource>,
    paths: WorkerPaths,
    publish: watch::Sender<Arc<Snapshot>>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    next_seq: u64,
}

impl Arbiter {
    pub fn new(
        config: Arc<Config>,
        mut source: Box<dyn MemorySource>,
        paths: WorkerPaths,
    ) -> (watch::Receiver<Arc<Snapshot>>, Arbiter) {
        let mut registry = Registry::new(&config);
        for m in &config.models {
            if let Some((role, path)) = m.source.files().into_iter().find(|(_, p)| !Path::new(p).exists()) {
                let what = if role == "path" { "model" } else { role };
                let reason = format!("{what} file not found: {}", path.display());
                tracing::warn!(model = %m.name, "{reason}");
                registry.get_mut(&m.name).expect("configured").fail(reason);
            }
        }
        let first = take_snapshot(&registry, &config.memory, source.as_mut());
        let (publish, snapshot) = watch::channel(first);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let arbiter = Arbiter {
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
        };
        (snapshot, arbiter)
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
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
            }
            let snapshot = take_snapshot(&self.registry, &self.config.memory, self.source.as_mut());
            self.publish.send_replace(snapshot);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire { model, reply } => self.request(&model, Waiter::Acquire(reply)),
            Command::Load { model, reply } => {
                // An explicit load is a person asking to try again: forget past failures.
                if let Some(e) = self.registry.get_mut(&model).filter(|e| e.state == ModelState::Failed) {
                    e.state = ModelState::Unloaded;
                    e.failures = 0;
                }
                self.request(&model, Waiter::Load(reply))
            }
            Command::Unload { model, mode, reply } => self.unload(&model, mode, reply),
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Release { model, seq, report } => self.release(&model, seq, report),
            Event::LoadDone { model, seq, result } => self.load_done(&model, seq, result),
            Event::SoftUnloadDone { model, seq, result } => self.soft_unload_done(&model, seq, result),
            Event::WorkerExit { model, seq, exit } => self.worker_exit(&model, seq, exit),
        }
    }

    fn request(&mut self, model: &str, waiter: Waiter) {
        let Some(entry) = self.registry.get(model) else {
            return reject(waiter, ArbiterError::UnknownModel(model.to_owned()));
        };
        match entry.state {
            ModelState::Failed => {
                let reason = entry.error.clone().unwrap_or_default();
                reject(
                    waiter,
                    ArbiterError::ModelFailed {
                        model: model.to_owned(),
                        reason,
                    },
                )
            }
            ModelState::Loaded | ModelState::SoftUnloaded | ModelState::Busy => {
                // A worker that died a moment ago may not have been reported yet: never hand
                // out a dead one.
                let dead = self.rt(model).worker.as_ref().and_then(Worker::exit);
                match dead {
                    Some(exit) => {
                        let seq = self.rt(model).seq;
                        self.worker_exit(model, seq, exit);
                        self.request(model, waiter)
                    }
                    None => self.serve(model, waiter),
                }
            }
            ModelState::Loading | ModelState::Unloading => self.rt(model).waiters.push(waiter),
            ModelState::Unloaded => {
                self.rt(model).waiters.push(waiter);
                self.start_load(model);
            }
        }
    }

    /// Answers a waiter on a model whose worker is up.
    fn serve(&mut self, model: &str, waiter: Waiter) {
        let (seq, load_ms, client) = {
            let rt = self.runtime.get_mut(model).expect("runtime");
            let client = rt.worker.as_ref().expect("serving needs a worker").client.clone();
            (rt.seq, rt.just_loaded_ms, client)
        };
        let entry = self.registry.get_mut(model).expect("entry");
        match waiter {
            Waiter::Acquire(reply) => {
                entry.in_flight += 1;
                entry.state = ModelState::Busy;
                entry.last_used = Some(unix_secs(SystemTime::now()));
                let lease = Lease {
                    model: model.to_owned(),
                    client,
                    load_ms,
                    context_length: entry.context_length.unwrap_or(0),
                    seq,
                    report: None,
                    events: self.events_tx.clone(),
                };
                if let Err(Ok(lease)) = reply.send(Ok(lease)) {
                    drop(lease); // the requester went away; its drop releases the model
                }
            }
            Waiter::Load(reply) => {
                let _ = reply.send(Ok(LoadOutcome {
                    model: model.to_owned(),
                    state: entry.state,
                    load_ms,
                    bytes: entry.bytes,
                }));
            }
        }
    }

    fn start_load(&mut self, model: &str) {
        let cfg = self.config.model(model).expect("configured").clone();
        let entry = self.registry.get_mut(model).expect("entry");
        entry.state = ModelState::Loading;
        let backoff = backoff(entry.failures);
        let seq = self.next_seq;
        self.next_seq += 1;
        let rt = self.runtime.get_mut(model).expect("runtime");
        rt.seq = seq;
        let wait = rt
            .last_failure
            .map_or(Duration::ZERO, |t| backoff.saturating_sub(t.elapsed()));
        tracing::info!(model, seq, wait_ms = wait.as_millis() as u64, "model_loading");
        let binary = self.paths.binary(cfg.kind);
        let socket = self.paths.socket(seq);
        let ready_within = self
            .config
            .daemon
            .worker_start_timeout
            .0
            .unwrap_or(Duration::from_secs(3600));
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let name = cfg.name.clone();
            let result = load(&cfg, &binary, socket, seq, ready_within, events.clone()).await;
            let _ = events.send(Event::LoadDone {
                model: name,
                seq,
                result,
            });
        });
    }

    fn load_done(&mut self, model: &str, seq: u64, result: LoadResult) {
        if self.rt(model).seq != seq {
            if let Ok((mut stale, _, _)) = result {
                stale.stop();
            }
            return;
        }
        let entry = self.registry.get_mut(model).expect("entry");
        match result {
            Ok((worker, resp, ms)) => {
                tracing::info!(
                    model,
                    pid = worker.pid,
                    load_ms = ms,
                    bytes = resp.health.bytes.total,
                    "model_loaded"
                );
                entry.state = ModelState::Loaded;
                entry.report(&resp.health);
                entry.load_ms = Some(ms);
                entry.context_length = Some(resp.context_length);
                entry.error = None;
                let rt = self.rt(model);
                rt.worker = Some(worker);
                rt.just_loaded_ms = Some(ms);
                for w in std::mem::take(&mut rt.waiters) {
                    self.serve(model, w);
                }
                self.rt(model).just_loaded_ms = None;
            }
            Err(LoadFailure::Model(reason)) => {
                tracing::warn!(model, "load failed: {reason}");
                entry.fail(reason.clone());
                entry.failures += 1;
                self.fail_waiters(model, |m| ArbiterError::ModelFailed {
                    model: m,
                    reason: reason.clone(),
                });
            }
            Err(LoadFailure::Worker(reason)) => {
                tracing::warn!(model, "worker failed while loading: {reason}");
                self.count_failure(model, reason.clone());
                self.fail_waiters(model, |m| ArbiterError::WorkerFailed {
                    model: m,
                    reason: reason.clone(),
                });
            }
        }
    }

    fn release(&mut self, model: &str, seq: u64, report: Option<Health>) {
        let current = self.rt(model).seq == seq && self.rt(model).worker.is_some();
        let entry = self.registry.get_mut(model).expect("entry");
        entry.in_flight = entry.in_flight.saturating_sub(1);
        entry.last_used = Some(unix_secs(SystemTime::now()));
        if !current {
            return;
        }
        let worked = report.is_some();
        if let Some(h) = report {
            entry.report(&h);
            // A completed request proves the worker works.
            entry.failures = 0;
        }
        if entry.in_flight == 0 && entry.state == ModelState::Busy {
            entry.state = ModelState::Loaded;
        }
        if worked {
            self.rt(model).last_failure = None;
        }
    }

    fn unload(&mut self, model: &str, mode: UnloadMode, reply: oneshot::Sender<Result<UnloadOutcome, ArbiterError>>) {
        let Some(entry) = self.registry.get_mut(model) else {
            let _ = reply.send(Err(ArbiterError::UnknownModel(model.to_owned())));
            return;
        };
        let busy = |reason: &str| ArbiterError::Busy {
            model: model.to_owned(),
            reason: reason.to_owned(),
        };
        let done = |state| UnloadOutcome {
            model: model.to_owned(),
            mode,
            state,
            freed_bytes: 0,
        };
        match entry.state {
            ModelState::Unloaded | ModelState::Failed => {
                let _ = reply.send(Ok(done(entry.state)));
            }
            ModelState::SoftUnloaded if mode == UnloadMode::Soft => {
                let _ = reply.send(Ok(done(entry.state)));
            }
            ModelState::Loading => {
                let _ = reply.send(Err(busy("it is loading")));
            }
            ModelState::Busy => {
                let _ = reply.send(Err(busy(&format!("{} request(s) in flight", entry.in_flight))));
            }
            ModelState::Unloading => {
                let before = entry.bytes.total;
                self.rt(model).unload_waiters.push((mode, before, reply));
            }
            ModelState::Loaded | ModelState::SoftUnloaded => {
                let before = entry.bytes.total;
                entry.state = ModelState::Unloading;
                let rt = self.rt(model);
                rt.unload_waiters.push((mode, before, reply));
                let worker = rt.worker.as_mut().expect("loaded models have a worker");
                match mode {
                    UnloadMode::Hard => worker.stop(),
                    UnloadMode::Soft => {
                        let (client, seq, events, name) =
                            (worker.client.clone(), rt.seq, self.events_tx.clone(), model.to_owned());
                        tokio::spawn(async move {
                            let req = UnloadRequest { mode: UnloadMode::Soft };
                            let result = client
                                .post::<_, Health>(vramd_protocol::UNLOAD, &req)
                                .await
                                .map_err(|e| e.to_string());
                            let _ = events.send(Event::SoftUnloadDone {
                                model: name,
                                seq,
                                result,
                            });
                        });
                    }
                }
            }
        }
    }

    fn soft_unload_done(&mut self, model: &str, seq: u64, result: Result<Health, String>) {
        if self.rt(model).seq != seq {
            return;
        }
        match result {
            Ok(health) => {
                let entry = self.registry.get_mut(model).expect("entry");
                entry.report(&health);
                entry.state = ModelState::SoftUnloaded;
                tracing::info!(model, bytes = health.bytes.total, "model_soft_unloaded");
                self.settle_unload(model);
            }
            // The worker is in trouble; its exit event (if it died) settles the rest.
            Err(reason) => {
                tracing::warn!(model, "soft unload failed: {reason}");
                let entry = self.registry.get_mut(model).expect("entry");
                if entry.state == ModelState::Unloading {
                    entry.state = ModelState::Loaded;
                }
                self.settle_unload(model);
            }
        }
    }

    fn worker_exit(&mut self, model: &str, seq: u64, exit: process::Exit) {
        let rt = self.rt(model);
        if rt.seq != seq || rt.worker.is_none() {
            return; // an old worker, or one whose failed load was already handled
        }
        rt.worker = None;
        let entry = self.registry.get_mut(model).expect("entry");
        entry.clear_worker();
        if exit.requested {
            tracing::info!(model, pid = exit.pid, "model_unloaded");
            entry.state = ModelState::Unloaded;
        } else {
            let reason = exit.reason();
            tracing::warn!(model, pid = exit.pid, "worker_crashed: {reason}");
            self.count_failure(model, reason);
        }
        self.settle_unload(model);
    }

    /// Answers unload waiters once the model left `unloading`, then serves requests that
    /// queued behind the unload.
    fn settle_unload(&mut self, model: &str) {
        let entry = self.registry.get(model).expect("entry");
        let (state, now) = (entry.state, entry.bytes.total);
        for (mode, before, reply) in std::mem::take(&mut self.rt(model).unload_waiters) {
            let _ = reply.send(Ok(UnloadOutcome {
                model: model.to_owned(),
                mode,
                state,
                freed_bytes: before.saturating_sub(now),
            }));
        }
        if self.rt(model).waiters.is_empty() {
            return;
        }
        match state {
            ModelState::Loaded | ModelState::SoftUnloaded => {
                for w in std::mem::take(&mut self.rt(model).waiters) {
                    self.serve(model, w);
                }
            }
            ModelState::Unloaded => self.start_load(model),
            ModelState::Failed => {
                let reason = self
                    .registry
                    .get(model)
                    .and_then(|e| e.error.clone())
                    .unwrap_or_default();
                self.fail_waiters(model, |m| ArbiterError::ModelFailed {
                    model: m,
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
    }

    fn count_failure(&mut self, model: &str, reason: String) {
        let rt = self.rt(model);
        rt.worker = None;
        rt.last_failure = Some(Instant::now());
        let entry = self.registry.get_mut(model).expect("entry");
        entry.failures += 1;
        if entry.failures >= MAX_FAILURES {
            let n = entry.failures;
            entry.fail(format!("worker failed {n} times in a row; last: {reason}"));
        } else {
            entry.clear_worker();
            entry.state = ModelState::Unloaded;
            entry.error = Some(reason);
        }
    }

    fn fail_waiters(&mut self, model: &str, err: impl Fn(String) -> ArbiterError) {
        for w in std::mem::take(&mut self.rt(model).waiters) {
            reject(w, err(model.to_owned()));
        }
    }

    fn rt(&mut self, model: &str) -> &mut Runtime {
        self.runtime
            .get_mut(model)
            .expect("every configured model has a runtime")
    }
}

fn reject(waiter: Waiter, err: ArbiterError) {
    match waiter {
        Waiter::Acquire(r) => drop(r.send(Err(err))),
        Waiter::Load(r) => drop(r.send(Err(err))),
    }
}

/// Restart delay after `failures` crashes in a row: 0.5 s, 1 s, 2 s, … at most 30 s.
pub fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => Duration::from_millis(500u64.saturating_mul(1 << (n - 1).min(6))).min(Duration::from_secs(30)),
    }
}

async fn load(
    cfg: &ModelConfig,
    binary: &Path,
    socket: std::path::PathBuf,
    seq: u64,
    ready_within: Duration,
    events: mpsc::UnboundedSender<Event>,
) -> LoadResult {
    let started = Instant::now();
    let name = cfg.name.clone();
    let on_exit = move |exit| {
        let _ = events.send(Event::WorkerExit { model: name, seq, exit });
    };
    let mut worker = process::spawn(binary, socket, &cfg.name, ready_within, on_exit)
        .await
        .map_err(|e| LoadFailure::Worker(e.to_string()))?;
    let (ModelSource::File { path }, Some(llm)) = (&cfg.source, &cfg.llm_options) else {
        worker.stop();
        return Err(LoadFailure::Model(
            "component image models are loaded by the image worker".into(),
        ));
    };
    let req = LoadRequest {
        model: cfg.name.clone(),
        path: path.clone(),
        options: LoadOptions {
            context_length: llm.context_length,
            gpu_layers: match llm.gpu_layers {
                GpuLayers::All => u32::MAX,
                GpuLayers::Count(n) => n,
            },
            threads: llm.threads,
            mmap: llm.mmap,
            batch: llm.batch,
        },
    };
    match worker.client.post::<_, LoadResponse>(vramd_protocol::LOAD, &req).await {
        Ok(resp) => Ok((worker, resp, started.elapsed().as_millis() as u64)),
        Err(CallError::Worker(e, _)) => {
            worker.stop();
            Err(LoadFailure::Model(e.message))
        }
        Err(e) => {
            let reason = match worker.exited(Duration::from_secs(2)).await {
                Some(exit) => exit.reason(),
                None => e.to_string(),
            };
            worker.stop();
            Err(LoadFailure::Worker(reason))
        }
    }
}

fn take_snapshot(registry: &Registry, memory: &MemoryConfig, source: &mut dyn MemorySource) -> Arc<Snapshot> {
    let reading = source.read();
    let figures = MemoryFigures::compute(memory, source.name(), reading, registry.held_bytes());
    Arc::new(Snapshot::new(registry, figures, SystemTime::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
