//! A fake worker that speaks the worker protocol without any inference library, so the
//! daemon's supervision can be tested deterministically and fast (`cargo test` builds it).
//!
//! Its behaviour comes from the first line of the "model file" it is asked to load:
//! - `ok` (or anything else): loads; weights = file size (tests make big sparse files),
//!   context = 1000, compute = 500; each generated token is `tN ` (N counting from 0), one
//!   every `delay_ms`; an image (for an image model) is a 1×1 PNG after `steps` progress
//!   events, one every `delay_ms`.
//! - `bad`: the load fails with `load_failed` (a corrupt model).
//! - `crash-on-load`: the process aborts while loading.
//!
//! Options as `key=value` words on the same line: `delay_ms=20`, `context=BYTES`,
//! `compute=BYTES`, `load_ms=N` (a load that takes N ms), `serial=1` (one generation at a time, the others waiting for their turn
//! before `started`, as in the real LLM worker's backlog; one that leaves while it waits
//! is logged `left before its turn`). An image model is loaded from `files.model` or `files.diffusion_model`.
//! Every generation appends one line to `<model file>.log` (`generate N` / `cancelled N` /
//! `done N`), and `restore` is logged the same way, so tests can see what the worker did
//! after the client left and whether the daemon restored a soft-unloaded context.
//!
//! What is not about inference comes from `vramd-worker-kit`, as in the real workers: the
//! command line, the stdin lifeline, the socket binding, the JSON errors and the NDJSON
//! framing of streams.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;
use vramd_protocol::*;
use vramd_worker_kit::{error, stream_response, ApiError, Cli, Out, StreamEvent};

#[derive(Default)]
struct Model {
    name: String,
    path: PathBuf,
    delay: Duration,
    weights: u64,
    context: u64,
    compute: u64,
    soft: bool,
    image: Option<ImageHealth>,
    /// `serial=1`: held by the generation that runs.
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
}

type Shared = Arc<Mutex<Option<Model>>>;

fn health(m: &Option<Model>) -> Health {
    let (state, model, bytes) = match m {
        None => (WorkerState::Empty, None, Bytes::default()),
        Some(m) if m.soft => (
            WorkerState::SoftUnloaded,
            Some(m.name.clone()),
            Bytes::new(m.weights, 0, 0),
        ),
        Some(m) => (
            WorkerState::Loaded,
            Some(m.name.clone()),
            Bytes::new(m.weights, m.context, m.compute),
        ),
    };
    Health {
        state,
        model,
        bytes,
        peak_bytes: bytes.total,
        pid: std::process::id(),
        device: "cpu".into(),
        // No engine, no CPU code to tell: the name it was started as instead, which shows
        // which build of the image worker the daemon chose (`vramd-sd-worker.x86-64-v3`).
        cpu: std::env::args()
            .next()
            .and_then(|a| a.rsplit('/').next().map(|n| format!("fake worker started as {n}"))),
        image: m.as_ref().and_then(|m| m.image.clone()),
    }
}

/// The protocol's error answer, with the workers' own status mapping (`not_loaded` is 409,
/// `load_failed` 422).
fn error_response(code: ErrorCode, message: &str) -> Response {
    ApiError::from(error(code, message)).into_response()
}

/// A stream's channel holds one event, so that a generation notices a client that left
/// within an event or two (its `cancelled N` line).
fn stream_channel<E>() -> (mpsc::Sender<Out<E>>, mpsc::Receiver<Out<E>>) {
    mpsc::channel(1)
}

/// Answers with the NDJSON stream of what the generation task sends (the workers' framing).
async fn ndjson<E: StreamEvent>(rx: mpsc::Receiver<Out<E>>) -> Response {
    let gone = error(ErrorCode::Internal, "fake: the generation task ended");
    stream_response(rx, gone).await.into_response()
}

/// The first line of the model file: behaviour and `key=value` options.
fn behaviour(path: &std::path::Path) -> (String, std::collections::HashMap<String, u64>) {
    let mut first = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = std::io::BufRead::read_until(&mut std::io::BufReader::new(f), b'\n', &mut first);
    }
    let first = String::from_utf8_lossy(&first).into_owned();
    let mut words = first.split_whitespace();
    let name = words.next().unwrap_or("ok").to_owned();
    let opts = words
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect();
    (name, opts)
}

async fn load(State(s): State<Shared>, Json(req): Json<serde_json::Value>) -> Response {
    let name = req["model"].as_str().unwrap_or_default().to_owned();
    let (path, image) = match req.get("files") {
        Some(files) => {
            let f = files["model"]
                .as_str()
                .or(files["diffusion_model"].as_str())
                .unwrap_or_default();
            (PathBuf::from(f), true)
        }
        None => (PathBuf::from(req["path"].as_str().unwrap_or_default()), false),
    };
    let (behaviour, opts) = behaviour(&path);
    match behaviour.as_str() {
        "bad" => return error_response(ErrorCode::LoadFailed, "fake: corrupt model file"),
        "crash-on-load" => {
            eprintln!("ERROR fake worker: crashing while loading {}", path.display());
            std::process::abort();
        }
        _ => {}
    }
    if let Some(ms) = opts.get("load_ms") {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
    let weights = std::fs::metadata(&path).map_or(0, |m| m.len());
    let mut guard = s.lock().unwrap();
    *guard = Some(Model {
        name,
        path,
        delay: Duration::from_millis(opts.get("delay_ms").copied().unwrap_or(0)),
        weights,
        context: if image {
            0
        } else {
            opts.get("context").copied().unwrap_or(1000)
        },
        compute: if image {
            0
        } else {
            opts.get("compute").copied().unwrap_or(500)
        },
        soft: false,
        turn: (opts.get("serial").copied().unwrap_or(0) == 1).then(Arc::default),
        image: image.then(|| ImageHealth {
            components: vec![ComponentBytes {
                name: "diffusion_model".into(),
                bytes: weights,
                device: "cpu".into(),
            }],
            vae_backend: VaePlacement::Gpu,
            last: None,
        }),
    });
    let health = health(&guard);
    if image {
        return Json(ImageLoadResponse { health, load_ms: 1 }).into_response();
    }
    let ctx = req["options"]["context_length"].as_u64().unwrap_or(0) as u32;
    Json(LoadResponse {
        health,
        load_ms: 1,
        context_length: if ctx == 0 { 512 } else { ctx },
        train_context_length: 512,
        has_chat_template: true,
    })
    .into_response()
}

/// A 1×1 PNG: enough for the daemon, which passes images through.
const PNG_1X1: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";

async fn images(State(s): State<Shared>, Json(req): Json<ImageRequest>) -> Response {
    let (delay, path) = {
        let guard = s.lock().unwrap();
        let Some(m) = guard.as_ref() else {
            return error_response(ErrorCode::NotLoaded, "no model");
        };
        (m.delay, m.path.clone())
    };
    note(&path, &format!("image {}x{} vae={:?}", req.width, req.height, req.vae));
    if req.source.is_some() || req.hires.is_some() || !req.loras.is_empty() {
        // What img2img, hires fix and LoRAs reached the worker as, for the tests to read.
        let hires = req
            .hires
            .as_ref()
            .map(|h| format!("{}@{}x{}+{}", h.upscaler, h.width, h.height, h.steps));
        let source = req.source.as_ref().map(|s| {
            let mask = s
                .mask
                .as_ref()
                .map(|m| format!("{}x{}/{}", m.width, m.height, m.channels));
            format!(
                "{}x{}/{} mask={mask:?} strength={}",
                s.image.width, s.image.height, s.image.channels, s.strength
            )
        });
        let loras: Vec<String> = req
            .loras
            .iter()
            .map(|l| format!("{}:{}", l.path.display(), l.multiplier))
            .collect();
        note(
            &path,
            &format!(
                "extras prompt={:?} hires={hires:?} source={source:?} loras={loras:?}",
                req.prompt
            ),
        );
    }
    let (tx, rx) = stream_channel();
    tokio::spawn(async move {
        let send = |e: ImageEvent| tx.send(Out::Event(e));
        let _ = send(ImageEvent::Started { switch_ms: 0 }).await;
        for step in 1..=req.steps {
            tokio::time::sleep(delay).await;
            if send(ImageEvent::Progress { step, steps: req.steps }).await.is_err() {
                return;
            }
            if step == 1 {
                let _ = send(ImageEvent::Preview {
                    step,
                    png_base64: PNG_1X1.into(),
                })
                .await;
            }
        }
        let seed = req.seed.unwrap_or(0);
        let _ = send(ImageEvent::Image {
            index: 0,
            seed,
            png_base64: PNG_1X1.into(),
        })
        .await;
        let peaks = GenerationPeaks {
            width: req.width,
            height: req.height,
            sampling_bytes: 0,
            vae_decode_bytes: 0,
            vae: req.vae,
            sampling_ms: 0,
            vae_decode_ms: 0,
        };
        let done = ImageEvent::Done {
            health: health(&s.lock().unwrap()),
            peaks,
        };
        let _ = send(done).await;
    });
    ndjson(rx).await
}

async fn unload(State(s): State<Shared>, Json(req): Json<UnloadRequest>) -> Json<Health> {
    let mut guard = s.lock().unwrap();
    match req.mode {
        UnloadMode::Soft => {
            if let Some(m) = guard.as_mut() {
                m.soft = true;
            }
        }
        UnloadMode::Hard => *guard = None,
    }
    Json(health(&guard))
}

async fn restore(State(s): State<Shared>) -> Response {
    let mut guard = s.lock().unwrap();
    let Some(m) = guard.as_mut() else {
        return error_response(ErrorCode::NotLoaded, "no model");
    };
    let context_ms = u64::from(m.soft);
    m.soft = false;
    note(&m.path, "restore");
    Json(RestoreResponse {
        health: health(&guard),
        context_ms,
    })
    .into_response()
}

fn note(path: &std::path::Path, line: &str) {
    let mut log = path.as_os_str().to_owned();
    log.push(".log");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{line}");
    }
}

async fn generate(State(s): State<Shared>, Json(req): Json<GenerateRequest>) -> Response {
    let (delay, path, turn) = {
        let mut guard = s.lock().unwrap();
        let Some(m) = guard.as_mut() else {
            return error_response(ErrorCode::NotLoaded, "no model");
        };
        m.soft = false;
        (m.delay, m.path.clone(), m.turn.clone())
    };
    // Without a limit the fake "model" ends its turn after this many tokens.
    const TURN: u32 = 16;
    let (max, finish_reason) = match req.params.max_tokens {
        Some(n) => (n, FinishReason::Length),
        None => (TURN, FinishReason::Stop),
    };
    note(&path, &format!("generate {max}"));
    let (tx, rx) = stream_channel();
    tokio::spawn(async move {
        let _turn = match turn {
            Some(t) => tokio::select! {
                held = t.lock_owned() => Some(held),
                () = tx.closed() => {
                    note(&path, "left before its turn");
                    return;
                }
            },
            None => None,
        };
        let send = |e: GenerateEvent| tx.send(Out::Event(e));
        let prompt_tokens = match &req.input {
            Input::Text { prompt } => prompt.split_whitespace().count() as u32,
            Input::Chat { messages } => messages
                .iter()
                .map(|m| m.content.split_whitespace().count() as u32)
                .sum(),
        };
        let started = GenerateEvent::Started {
            prompt_tokens,
            context_ms: 0,
            cached_tokens: 0,
            health: None,
        };
        if send(started).await.is_err() {
            return;
        }
        for i in 0..max {
            tokio::time::sleep(delay).await;
            let token = GenerateEvent::Token {
                text: format!("t{i} "),
                logprob: None,
            };
            if send(token).await.is_err() {
                note(&path, &format!("cancelled {i}"));
                return;
            }
        }
        note(&path, &format!("done {max}"));
        let done = GenerateEvent::Done {
            finish_reason,
            prompt_tokens,
            completion_tokens: max,
            health: health(&s.lock().unwrap()),
        };
        let _ = send(done).await;
    });
    ndjson(rx).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse_as("fake-worker", "A vramd worker without inference, for tests");
    let socket = &cli.socket;
    // Exit when the daemon goes away (stdin closes), as real workers do.
    vramd_worker_kit::on_stdin_eof(|| std::process::exit(0));
    let listener = vramd_worker_kit::bind(socket).expect("bind");
    let state: Shared = Arc::default();
    let app = Router::new()
        .route(
            HEALTH,
            get(|State(s): State<Shared>| async move { Json(health(&s.lock().unwrap())) }),
        )
        .route(LOAD, post(load))
        .route(UNLOAD, post(unload))
        .route(RESTORE, post(restore))
        .route(GENERATE, post(generate))
        .route(IMAGES, post(images))
        .with_state(state);
    eprintln!("fake worker {} listening on {}", std::process::id(), socket.display());
    axum::serve(listener, app).await.expect("serve");
}
