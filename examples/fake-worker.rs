//! A fake worker that speaks the worker protocol without any inference library, so the
//! daemon's supervision can be tested deterministically and fast (`cargo test` builds it).
//!
//! Its behaviour comes from the first line of the "model file" it is asked to load:
//! - `ok` (or anything else): loads; weights = file size, context = 1000, compute = 500;
//!   each generated token is `tN ` (N counting from 0), one every `delay_ms`.
//! - `bad`: the load fails with `load_failed` (a corrupt model).
//! - `crash-on-load`: the process aborts while loading.
//!
//! Options as `key=value` words on the same line: `delay_ms=20`.
//! Every generation appends one line to `<model file>.log` (`generate N` / `cancelled N` /
//! `done N`), so tests can see what the worker did after the client left.

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
    soft: bool,
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
            Bytes::new(m.weights, 1000, 500),
        ),
    };
    Health {
        state,
        model,
        bytes,
        peak_bytes: bytes.total,
        pid: std::process::id(),
        device: "cpu".into(),
        image: None,
    }
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = WorkerError {
        code,
        message: message.into(),
    };
    (status, Json(body)).into_response()
}

async fn load(State(s): State<Shared>, Json(req): Json<LoadRequest>) -> Response {
    let text = std::fs::read_to_string(&req.path).unwrap_or_default();
    let first = text.lines().next().unwrap_or("").to_owned();
    let mut words = first.split_whitespace();
    let behaviour = words.next().unwrap_or("ok").to_owned();
    let delay = words
        .find_map(|w| w.strip_prefix("delay_ms="))
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    match behaviour.as_str() {
        "bad" => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::LoadFailed,
                "fake: corrupt model file",
            )
        }
        "crash-on-load" => {
            eprintln!("ERROR fake worker: crashing while loading {}", req.path.display());
            std::process::abort();
        }
        _ => {}
    }
    let weights = std::fs::metadata(&req.path).map_or(0, |m| m.len());
    let mut guard = s.lock().unwrap();
    *guard = Some(Model {
        name: req.model,
        path: req.path,
        delay,
        weights,
        soft: false,
    });
    Json(LoadResponse {
        health: health(&guard),
        load_ms: 1,
        context_length: if req.options.context_length == 0 {
            512
        } else {
            req.options.context_length
        },
        train_context_length: 512,
        has_chat_template: true,
    })
    .into_response()
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
        .route(GENERATE, post(generate))
        .with_state(state);
    eprintln!("fake worker {} listening on {socket}", std::process::id());
    axum::serve(listener, app).await.expect("serve");
}
