//! `GET /v1/events`: the arbiter's events as Server-Sent Events (`event: <type>`,
//! `data: <json>`), after a replay of the last `replay` (default 20) for a client that
//! connects late. A client too slow to keep up is told how many events it missed.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use crate::events::Event;

#[derive(Deserialize)]
pub struct EventsQuery {
    replay: Option<usize>,
}

pub async fn stream(State(state): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let (replay, rx) = state.arbiter.events().subscribe(q.replay.unwrap_or(20));
    let first: Vec<u8> = replay.iter().flat_map(|e| frame(e)).collect();
    // An SSE comment first, so clients see the stream open even with nothing to replay.
    let mut head = b": vramd events\n\n".to_vec();
    head.extend(first);
    let live = futures_util::stream::unfold(rx, |mut rx| async move {
        let bytes = match rx.recv().await {
            Ok(e) => frame(&e),
            Err(RecvError::Lagged(n)) => format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n").into_bytes(),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(bytes), rx))
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(head)]), live);
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    resp
}

fn frame(e: &Event) -> Vec<u8> {
    let data = serde_json::to_string(e).expect("events serialise");
    format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind.name()).into_bytes()
}
