//! The public HTTP API served on the daemon's socket(s).
//!
//! Routes are listed in [`router`]; the README's API reference documents them. Handlers only
//! validate input and talk to the arbiter through its handle; they never block.

mod a1111;
mod chat;
mod completions;
mod embeddings;
mod error;
mod events;
pub mod images;
mod models;
mod ollama;
mod openai;
mod privileged;
mod sse;
mod stall;
mod ui;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tracing::Instrument;

use crate::activity::Activity;
use crate::arbiter::ArbiterHandle;
use crate::config::Config;
use crate::server::Peer;

pub use error::{ApiError, ApiJson};
pub use privileged::Privileged;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub arbiter: ArbiterHandle,
    pub activity: Activity,
    /// The LLMs' own chat templates.
    pub templates: Arc<crate::chat::Templates>,
    /// AUTOMATIC1111's settings as clients set them (the current checkpoint among them).
    pub a1111: Arc<a1111::A1111Options>,
    /// The latest preview of each image being made (A1111's `current_image`).
    pub previews: Arc<images::Previews>,
    /// The API keys (`[daemon] keys_file`), read again when the file changes.
    pub keys: Arc<crate::keys::KeyStore>,
}

impl AppState {
    /// The state for `config`; reads the A1111 options kept in its `state_dir`.
    pub fn new(
        config: Arc<Config>,
        arbiter: ArbiterHandle,
        activity: Activity,
        templates: Arc<crate::chat::Templates>,
    ) -> AppState {
        let a1111 = Arc::new(a1111::A1111Options::load(&config.daemon.state_dir));
        let keys = Arc::new(crate::keys::KeyStore::new(config.daemon.keys_file.clone()));
        AppState {
            config,
            arbiter,
            activity,
            templates,
            a1111,
            previews: Arc::default(),
            keys,
        }
    }
}

pub fn router(state: AppState) -> Router {
    let max_body = usize::try_from(state.config.daemon.max_body.0).unwrap_or(usize::MAX);
    Router::new()
        .route("/health", get(models::health))
        .route("/v1/status", get(models::status))
        .route("/v1/models", get(models::models))
        .route("/v1/models/{name}/load", post(models::load))
        .route("/v1/models/{name}/pin", post(models::pin))
        .route("/v1/models/{name}/unpin", post(models::unpin))
        .route("/v1/estimate", get(models::estimate))
        .route("/v1/events", get(events::stream))
        .route("/v1/me", get(privileged::me))
        // The status page (ui/): read-only data for everyone, controls for who may use them.
        .route("/ui", get(ui::index))
        .route("/ui/", get(ui::index))
        .route("/ui/ui.css", get(ui::css))
        .route("/ui/ui.js", get(ui::js))
        .route("/v1/models/{name}/unload", post(models::unload))
        .route("/v1/chat/completions", post(completions::chat))
        .route("/v1/images/generations", post(images::openai))
        .route("/sdapi/v1/txt2img", post(images::txt2img))
        .route("/sdapi/v1/img2img", post(images::edit::img2img))
        .route("/v1/images/edits", post(images::edit::openai_edits))
        .route("/v1/images/files/{name}", get(images::files::serve))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/progress", get(images::progress))
        // Interrupt and skip are generation rights, open to TCP clients; skip stops the
        // whole request, as interrupt does (see `images::interrupt`).
        .route("/sdapi/v1/interrupt", post(images::interrupt))
        .route("/sdapi/v1/skip", post(images::interrupt))
        .route("/sdapi/v1/options", get(a1111::get_options).post(a1111::post_options))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/upscalers", get(a1111::upscalers))
        .route("/sdapi/v1/latent-upscale-modes", get(a1111::latent_upscale_modes))
        .route("/sdapi/v1/sd-vae", get(a1111::sd_vae))
        .route("/sdapi/v1/sd-modules", get(a1111::empty_list))
        .route("/sdapi/v1/loras", get(a1111::loras))
        .route("/sdapi/v1/embeddings", get(a1111::embeddings))
        .route("/sdapi/v1/refresh-checkpoints", post(a1111::refresh_checkpoints))
        .route("/sdapi/v1/memory", get(a1111::memory))
        .route("/sdapi/v1/cmd-flags", get(a1111::cmd_flags))
        .route("/v1/completions", post(completions::completion))
        .route("/v1/embeddings", post(embeddings::openai))
        // Ollama's API (ollama/mod.rs): the routes its clients use.
        .route("/", get(ollama::root))
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/ps", get(ollama::ps))
        .route("/api/show", post(ollama::show))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/pull", post(ollama::pull))
        .route("/api/create", post(ollama::unsupported))
        .route("/api/copy", post(ollama::unsupported))
        .route("/api/push", post(ollama::unsupported))
        .route("/api/delete", delete(ollama::unsupported))
        .route("/api/blobs/{digest}", post(ollama::unsupported))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(move |req, next| declared_body(max_body, req, next)))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), request_scope))
        .with_state(state)
}

/// Refuses at once (413, and the connection closed) a request whose declared body is larger
/// than `max_body`, before a byte of it is read: waiting for it would hold the connection
/// (`Content-Length: 10^15` with nothing sent), and with `Expect: 100-continue` the client
/// would be told to send it. A body that is really larger is stopped by `DefaultBodyLimit`.
async fn declared_body(max_body: usize, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        let mut resp = StatusCode::PAYLOAD_TOO_LARGE.into_response();
        resp.headers_mut()
            .insert(axum::http::header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    next.run(req).await
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownRoute {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Gives each request a `request_id` (the caller's `X-Request-Id` when it sends a sane one),
/// a tracing span carrying it, an `X-Request-Id` response header and an activity guard.
async fn request_scope(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let _guard = state.activity.request();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:x}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed)));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    req.extensions_mut().insert(RequestId(id.clone()));
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "served"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// The role of the valid API key a request presented (see `keys`), for the access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRole(pub crate::keys::Role);

/// API keys at the door: a request that presents a valid key gets its [`KeyRole`]. Once the
/// keys file lists keys, a TCP request without a valid one is a 401 (`/health` excepted: it
/// tells nothing and monitors probe it), and a broken keys file refuses TCP altogether
/// (failing closed). The Unix socket's own permissions decide who reaches it, so a key that
/// is wrong or missing there only means no key role. The key itself is never logged; its
/// name is, at debug level.
async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    use crate::keys::{presented, Loaded};
    let tcp = !matches!(req.extensions().get::<Peer>(), Some(Peer::Unix { .. }));
    let presented = presented(req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
    let needed = tcp && req.uri().path() != "/health";
    match state.keys.current() {
        Loaded::Keys(file) => {
            let found = presented.as_deref().and_then(|k| file.find(k));
            if let Some(entry) = found {
                tracing::debug!(key = %entry.name, role = %entry.role, "API key");
                req.extensions_mut().insert(KeyRole(entry.role));
            } else if needed && !file.keys.is_empty() {
                let what = if presented.is_some() {
                    "this API key is not valid"
                } else {
                    "an API key is required over TCP"
                };
                return Err(ApiError::Unauthorized(format!(
                    "{what}: send `Authorization: Bearer KEY`, or the key as the password of HTTP Basic auth (`vramctl keys create` makes one)"
                )));
            }
        }
        Loaded::Broken(_) if needed => {
            return Err(ApiError::Unauthorized(
                "vramd's API keys file cannot be read (see its log): TCP requests are refused until it is fixed".into(),
            ))
        }
        Loaded::Broken(_) => {}
    }
    Ok(next.run(req).await)
}

/// The id of the request being served, for handlers that pass it on (to workers).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);
