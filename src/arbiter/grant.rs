//! The grant: the one way a request reaches a worker.
//!
//! The arbiter hands a [`Grant`] out only for a worker it has just found alive, with
//! everything it decided for the request inside (the worker, the VAE placement, the memory
//! reservation); the grant's typed calls apply those decisions, so no handler carries them
//! to the worker itself. While a grant lives its model is busy and cannot be evicted;
//! dropping it returns the reservation and tells the arbiter what the worker reported.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use vramd_protocol::{
    EmbedRequest, EmbedResponse, GenerateEvent, GenerateRequest, Health, ImageEvent, ImageRequest, VaePlacement,
};

use super::{ArbiterError, Internal, Released, Report, Work};
use crate::events::Ending;
use crate::planner::Action;
use crate::worker::client::{CallError, EventStream, WorkerClient};
use crate::worker::process::Exit;

/// How many times a request is sent again when its worker died before taking it.
const ATTEMPTS: u32 = 3;
/// How long a request whose worker broke the connection waits for the process to be seen
/// ending: a killed process closes its socket a moment before the kernel reports its exit.
const EXIT_SEEN_WITHIN: Duration = Duration::from_secs(2);

/// Why a granted request could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Arbiter(#[from] ArbiterError),
    #[error(transparent)]
    Worker(#[from] CallError),
}

/// The right to use one loaded model's worker for one request.
pub struct Grant {
    pub model: String,
    /// How long this request waited for the model to load, when it had to.
    pub load_ms: Option<u64>,
    pub context_length: u32,
    /// What the arbiter did to make room for this request, in order.
    pub actions: Vec<Action>,
    /// Prompt tokens the worker's context already held (its prompt cache).
    pub cached_tokens: u32,
    client: WorkerClient,
    exit: watch::Receiver<Option<Exit>>,
    vae: VaePlacement,
    work: Work,
    seq: u64,
    ticket: u64,
    /// Images of this grant sent to the worker so far (A1111's `job_no`).
    images: u32,
    report: Option<Report>,
    interrupt: oneshot::Receiver<()>,
    interrupted: bool,
    /// Why its work failed, as its handler said ([`Grant::fail`]).
    failure: Option<String>,
    /// Images the worker finished for it.
    images_done: u32,
    /// Dropped only to be sent again to a new worker: its story goes on in the next grant.
    resent: bool,
    /// How long the work may wait for its turn on the worker (`[policy] wait_timeout`: a
    /// worker serves one generation at a time, the others wait in its backlog), and the
    /// `Retry-After` of the refusal when it waited that long.
    turn: Option<Duration>,
    retry_after: u64,
    internal: mpsc::UnboundedSender<Internal>,
}

/// What the arbiter fills in when it grants.
pub(super) struct Decided {
    pub model: String,
    pub client: WorkerClient,
    pub exit: watch::Receiver<Option<Exit>>,
    pub load_ms: Option<u64>,
    pub context_length: u32,
    pub vae: VaePlacement,
    pub actions: Vec<Action>,
    pub work: Work,
    pub seq: u64,
    pub ticket: u64,
    pub interrupt: oneshot::Receiver<()>,
    pub turn: Option<Duration>,
    pub retry_after: u64,
    pub internal: mpsc::UnboundedSender<Internal>,
}

impl Grant {
    pub(super) fn new(d: Decided) -> Grant {
        Grant {
            model: d.model,
            load_ms: d.load_ms,
            context_length: d.context_length,
            actions: d.actions,
            cached_tokens: 0,
            client: d.client,
            exit: d.exit,
            vae: d.vae,
            work: d.work,
            seq: d.seq,
            ticket: d.ticket,
            images: 0,
            report: None,
            interrupt: d.interrupt,
            interrupted: false,
            failure: None,
            images_done: 0,
            resent: false,
            turn: d.turn,
            retry_after: d.retry_after,
            internal: d.internal,
        }
    }

    /// Records that the request failed and why (told in its `request_finished` event).
    pub fn fail(&mut self, why: &dyn std::fmt::Display) {
        self.failure = Some(why.to_string());
    }

    /// How the request ended, from what its handler and the worker said.
    fn ending(&mut self) -> (Ending, Option<String>) {
        if self.interrupted() {
            return (Ending::Interrupted, None);
        }
        if let Some(why) = self.failure.take() {
            return (Ending::Failed, Some(why));
        }
        match self.work {
            Work::Image { count, .. } if self.images_done < count => (Ending::Cancelled, None),
            _ => (Ending::Done, None),
        }
    }

    /// Where this request's VAE decodes run (images), as the arbiter decided.
    pub fn vae(&self) -> VaePlacement {
        self.vae
    }

    /// Records what the worker reported at the end of the request.
    pub fn report(&mut self, health: Health) {
        self.report = Some(Report { health });
    }

    /// Records that one image of the request is done, with what the worker reported then.
    pub fn image_done(&mut self, health: Health) {
        self.images_done += 1;
        self.report(health);
    }

    /// Whether the arbiter stopped this request's work (A1111 `interrupt`), so a broken
    /// stream is answered as an interruption, not as a crash.
    pub fn interrupted(&mut self) -> bool {
        self.interrupted |= self.interrupt.try_recv().is_ok();
        self.interrupted
    }

    /// Starts a text generation; the stream's first event (`started`) has been read.
    pub(super) async fn generate(&mut self, req: &GenerateRequest) -> Result<EventStream<GenerateEvent>, Attempt> {
        let client = self.client.clone();
        let (events, first) = self
            .its_turn(async move {
                let mut events = client.generate(req).await.map_err(Attempt::from_open)?;
                let first = events.next().await;
                Ok::<_, Attempt>((events, first))
            })
            .await??;
        match first {
            Ok(Some(GenerateEvent::Started {
                cached_tokens, health, ..
            })) => {
                self.cached_tokens = cached_tokens;
                // Counted even if the request never reaches `done` (a client that left).
                if let Some(h) = health {
                    self.report(h);
                }
                Ok(events)
            }
            Ok(Some(GenerateEvent::Error { error })) => {
                Err(Attempt::Failed(CallError::Worker(error, Default::default())))
            }
            Ok(None) => Err(Attempt::Broke(CallError::Transport(
                "the worker ended the stream before it started".into(),
            ))),
            Ok(Some(other)) => Err(Attempt::Failed(CallError::Protocol(format!(
                "expected `started`, got {other:?}"
            )))),
            Err(e @ CallError::Transport(_)) => Err(Attempt::Broke(e)),
            Err(e) => Err(Attempt::Failed(e)),
        }
    }

    /// The worker's answer and first event, waited for at most the grant's `turn` (a worker
    /// answers a generation once it starts it): past it, the call is dropped (the worker
    /// takes the request out of its backlog, since its client left) and the request is
    /// refused as waiting too long, with `Retry-After`.
    async fn its_turn<T>(&self, first: impl Future<Output = T>) -> Result<T, Attempt> {
        match self.turn {
            None => Ok(first.await),
            Some(limit) => tokio::time::timeout(limit, first).await.map_err(|_| Attempt::TimedOut {
                model: self.model.clone(),
                waited: limit,
                retry_after: self.retry_after,
            }),
        }
    }

    /// Computes embeddings; what the worker reports is recorded as the request's report.
    pub(super) async fn embed(&mut self, req: &EmbedRequest) -> Result<EmbedResponse, Attempt> {
        let response = self.client.embed(req).await.map_err(Attempt::from_open)?;
        self.report(response.health.clone());
        Ok(response)
    }

    /// Starts one image (a batch is one call per image) with the VAE placement the arbiter
    /// chose; progress goes to the arbiter as the worker reports it.
    pub async fn image(&mut self, mut req: ImageRequest) -> Result<ImageRun, Attempt> {
        req.vae = self.vae;
        let client = self.client.clone();
        let (events, first) = self
            .its_turn(async move {
                let mut events = client.image(&req).await.map_err(Attempt::from_open)?;
                let first = events.next().await;
                Ok::<_, Attempt>((events, first))
            })
            .await??;
        let switch_ms = match first {
            Ok(Some(ImageEvent::Started { switch_ms })) => switch_ms,
            Ok(Some(ImageEvent::Error { error })) => {
                return Err(Attempt::Failed(CallError::Worker(error, Default::default())))
            }
            Ok(None) => {
                return Err(Attempt::Broke(CallError::Transport(
                    "the worker ended the stream before it started".into(),
                )))
            }
            Err(e @ CallError::Transport(_)) => return Err(Attempt::Broke(e)),
            Ok(Some(other)) => {
                return Err(Attempt::Failed(CallError::Protocol(format!(
                    "expected `started`, got {other:?}"
                ))))
            }
            Err(e) => return Err(Attempt::Failed(e)),
        };
        let image = self.images;
        self.images += 1;
        Ok(ImageRun {
            events,
            switch_ms,
            image,
            model: self.model.clone(),
            ticket: self.ticket,
            internal: self.internal.clone(),
        })
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        let end = (!self.resent).then(|| self.ending());
        let abandoned = !self.resent && self.images > self.images_done && matches!(end, Some((Ending::Cancelled, _)));
        let _ = self.internal.send(Internal::Release(Released {
            model: std::mem::take(&mut self.model),
            seq: self.seq,
            work: self.work,
            ticket: self.ticket,
            report: self.report.take(),
            ended: crate::clock::now_unix(),
            end,
            abandoned,
        }));
    }
}

/// One image's event stream; `started` has been read, `progress` is passed on to the
/// arbiter (and to the caller).
pub struct ImageRun {
    events: EventStream<ImageEvent>,
    /// Time the worker spent re-creating its context for this image's VAE placement.
    pub switch_ms: u64,
    image: u32,
    model: String,
    ticket: u64,
    internal: mpsc::UnboundedSender<Internal>,
}

impl ImageRun {
    pub async fn next(&mut self) -> Result<Option<ImageEvent>, CallError> {
        let event = self.events.next().await?;
        if let Some(ImageEvent::Progress { step, steps }) = &event {
            let _ = self.internal.send(Internal::Progress {
                model: self.model.clone(),
                ticket: self.ticket,
                image: self.image,
                step: *step,
                steps: *steps,
            });
        }
        Ok(event)
    }
}

/// How an attempt to start work on a granted worker ended, when it did not start.
#[derive(Debug)]
pub enum Attempt {
    /// Nothing listened on the worker's socket: the request never reached it, so sending it
    /// again to the replacement is safe. (A request that reached the worker is never sent
    /// again: if it made the worker crash, resending would crash the next one too.)
    WorkerGone,
    /// The worker broke the connection before it started the work: sent again only if it
    /// was killed from outside (see [`Exit::killed_from_outside`]).
    Broke(CallError),
    Failed(CallError),
    /// The worker did not start it within the grant's turn (`[policy] wait_timeout`).
    TimedOut {
        model: String,
        waited: Duration,
        retry_after: u64,
    },
}

impl Attempt {
    fn from_open(e: CallError) -> Attempt {
        match e {
            CallError::Unreachable(_) => Attempt::WorkerGone,
            e @ CallError::Transport(_) => Attempt::Broke(e),
            other => Attempt::Failed(other),
        }
    }
}

impl From<Attempt> for CallError {
    fn from(a: Attempt) -> CallError {
        match a {
            Attempt::WorkerGone => CallError::Transport("the model's worker ended before it took the request".into()),
            Attempt::Broke(e) | Attempt::Failed(e) => e,
            Attempt::TimedOut { waited, .. } => CallError::Transport(format!(
                "the worker did not start the request within {}",
                crate::units::format_duration(waited)
            )),
        }
    }
}

/// Runs `attempt` (grant, then start the work) until the work starts on a live worker, at
/// most [`ATTEMPTS`] times. The arbiter checks a worker's life before it grants, so a retry
/// waits for the replacement worker (or gets the model's failure, a clear 503).
pub(super) async fn retrying<S, F, Fut>(mut attempt: F) -> Result<(Grant, S), RunError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(Grant, Result<S, Attempt>), ArbiterError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        let (grant, started) = attempt().await?;
        let failure = match started {
            Ok(s) => return Ok((grant, s)),
            Err(failure) => failure,
        };
        let mut grant = grant;
        let mut exit = grant.exit.clone();
        let resend = match &failure {
            Attempt::WorkerGone => true,
            // Wait to learn how it ended: a worker this request made crash is not fed it again.
            Attempt::Broke(_) => {
                let _ = tokio::time::timeout(EXIT_SEEN_WITHIN, exit.wait_for(Option::is_some)).await;
                let ended = exit.borrow().clone();
                ended.is_some_and(|e| e.killed_from_outside())
            }
            Attempt::Failed(_) => false,
            Attempt::TimedOut {
                model,
                waited,
                retry_after,
            } => {
                let e = ArbiterError::Busy {
                    model: model.clone(),
                    reason: format!(
                        "waited {} for its turn behind the requests it is serving",
                        crate::units::format_duration(*waited)
                    ),
                    retry_after: *retry_after,
                };
                grant.fail(&e);
                return Err(RunError::Arbiter(e));
            }
        };
        if !resend || tries >= ATTEMPTS {
            let e = CallError::from(failure);
            grant.fail(&e);
            drop(grant);
            return Err(RunError::Worker(e));
        }
        // Its story goes on in the grant of the next attempt.
        grant.resent = true;
        drop(grant);
        tracing::warn!("the worker ended before it took the request; sending it again");
        let _ = tokio::time::timeout(EXIT_SEEN_WITHIN, exit.wait_for(Option::is_some)).await;
    }
}
