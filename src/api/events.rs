//! `GET /v1/events`: the arbiter's events as Server-Sent Events (`event: <type>`,
//! `data: <json>`), after a replay of the last `replay` (default 20) for a client that
//! connects late. A client too slow to keep up is told how many events it missed.

use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{sse, AppState};
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
            Err(RecvError::Lagged(n)) => sse::event_frame(None, "lagged", &json!({"missed": n})),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok::<_, Infallible>(bytes), rx))
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(head)]), live);
    sse::response(stream)
}

fn frame(e: &Event) -> Vec<u8> {
    sse::event_frame(Some(e.id), e.kind.name(), e)
}
