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
//! `compute=BYTES`. An image model is loaded from `files.model` or `files.diffusion_model`.
//! Every generation appends one line to `<model file>.log` (`generate N` / `cancelled N` /
//! `done N`), and `restore` is logged the same way, so tests can see what the worker did
//! after the client left and whether the daemon restored a soft-unloaded context.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use vramd_protocol::*;

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
        image: m.as_ref().and_then(|m| m.image.clone()),
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = WorkerError {
        code,
        message: message.into(),
    };
    (status, Json(body)).into_response()
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
        "bad" => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::LoadFailed,
                "fake: corrupt model file",
            )
        }
        "crash-on-load" => {
            eprintln!("ERROR fake worker: crashing while loading {}", path.display());
            std::process::abort();
        }
        _ => {}
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
            return error(StatusCode::CONFLICT, ErrorCode::NotLoaded, "no model");
        };
        (m.delay, m.path.clone())
    };
    note(&path, &format!("image {}x{} vae={:?}", req.width, req.height, req.vae));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    tokio::spawn(async move {
        let line = |e: &ImageEvent| {
            let mut v = serde_json::to_vec(e).unwrap();
            v.push(b'\n');
            v
        };
        let _ = tx.send(line(&ImageEvent::Started { switch_ms: 0 })).await;
        for step in 1..=req.steps {
            tokio::time::sleep(delay).await;
            if tx
                .send(line(&ImageEvent::Progress { step, steps: req.steps }))
                .await
                .is_err()
            {
                return;
            }
        }
        let seed = req.seed.unwrap_or(0);
        let _ = tx
            .send(line(&ImageEvent::Image {
                index: 0,
                seed,
                png_base64: PNG_1X1.into(),
            }))
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
        let _ = tx.send(line(&done)).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap()
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
        return error(StatusCode::CONFLICT, ErrorCode::NotLoaded, "no model");
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
    let (delay, path) = {
        let mut guard = s.lock().unwrap();
        let Some(m) = guard.as_mut() else {
            return error(StatusCode::CONFLICT, ErrorCode::NotLoaded, "no model");
        };
        m.soft = false;
        (m.delay, m.path.clone())
    };
    let max = req.params.max_tokens;
    note(&path, &format!("generate {max}"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    tokio::spawn(async move {
        let line = |e: &GenerateEvent| {
            let mut v = serde_json::to_vec(e).unwrap();
            v.push(b'\n');
            v
        };
        let prompt_tokens = match &req.input {
            Input::Text { prompt } => prompt.split_whitespace().count() as u32,
            Input::Chat { messages } => messages
                .iter()
                .map(|m| m.content.split_whitespace().count() as u32)
                .sum(),
        };
        if tx
            .send(line(&GenerateEvent::Started {
                prompt_tokens,
                context_ms: 0,
            }))
            .await
            .is_err()
        {
            return;
        }
        for i in 0..max {
            tokio::time::sleep(delay).await;
            if tx
                .send(line(&GenerateEvent::Token { text: format!("t{i} ") }))
                .await
                .is_err()
            {
                note(&path, &format!("cancelled {i}"));
                return;
            }
        }
        note(&path, &format!("done {max}"));
        let done = GenerateEvent::Done {
            finish_reason: FinishReason::Length,
            prompt_tokens,
            completion_tokens: max,
            health: health(&s.lock().unwrap()),
        };
        let _ = tx.send(line(&done)).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let socket = args
        .iter()
        .position(|a| a == "--socket")
        .and_then(|i| args.get(i + 1))
        .expect("--socket PATH");
    // Exit when the daemon goes away (stdin closes), as real workers do.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).expect("bind");
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
    eprintln!("fake worker {} listening on {socket}", std::process::id());
    axum::serve(listener, app).await.expect("serve");
}
