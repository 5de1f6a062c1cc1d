//! Streamed answers: an engine thread sends [`Out`]s on a channel, the handler answers NDJSON.
//!
//! The first message decides the status: a [`Out::Refused`] before anything was streamed is an
//! error status with a [`WorkerError`] body; otherwise the answer is `200` with
//! `Content-Type: application/x-ndjson`, one JSON event per line, ending with exactly one last
//! event ([`StreamEvent::is_last`]). A refusal after the first line, or a channel that closes
//! without a last event, becomes an error event, so the client always sees an end. When the
//! client leaves, hyper drops the body, the receiver with it, and the engine's sends fail.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use vramd_protocol::{ErrorCode, GenerateEvent, ImageEvent, WorkerError};

use crate::http::{error, ApiError};

/// What an engine sends back for a streamed request.
#[derive(Debug)]
pub enum Out<E> {
    /// Refused before anything was streamed: the handler answers with an error status.
    Refused(WorkerError),
    /// The next line of the stream.
    Event(E),
}

/// An event of an NDJSON stream.
pub trait StreamEvent: Serialize + Send + 'static {
    /// Whether this event ends the stream (`done` or `error`).
    fn is_last(&self) -> bool;
    /// The `error` event carrying `error`.
    fn from_error(error: WorkerError) -> Self;
}

impl StreamEvent for GenerateEvent {
    fn is_last(&self) -> bool {
        matches!(self, GenerateEvent::Done { .. } | GenerateEvent::Error { .. })
    }

    fn from_error(error: WorkerError) -> Self {
        GenerateEvent::Error { error }
    }
}

impl StreamEvent for ImageEvent {
    fn is_last(&self) -> bool {
        matches!(self, ImageEvent::Done { .. } | ImageEvent::Error { .. })
    }

    fn from_error(error: WorkerError) -> Self {
        ImageEvent::Error { error }
    }
}

/// Waits for the engine's first message and answers with it: an error status for a refusal,
/// else the NDJSON stream. `gone` is the error when the channel closes before a first word.
pub async fn stream_response<E: StreamEvent>(
    mut rx: mpsc::Receiver<Out<E>>,
    gone: WorkerError,
) -> Result<Response, ApiError> {
    let first = match rx.recv().await {
        Some(Out::Event(e)) => e,
        Some(Out::Refused(e)) => return Err(e.into()),
        None => return Err(gone.into()),
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], ndjson_body(first, rx)).into_response())
}

/// The NDJSON body: `first`, then what the receiver yields, up to and including a last event.
pub fn ndjson_body<E: StreamEvent>(first: E, rx: mpsc::Receiver<Out<E>>) -> Body {
    let lines = Lines {
        first: Some(first),
        rx,
        ended: false,
    };
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        let line = lines.next().await?;
        Some((Ok::<_, Infallible>(line), lines))
    });
    Body::from_stream(stream)
}

struct Lines<E> {
    first: Option<E>,
    rx: mpsc::Receiver<Out<E>>,
    ended: bool,
}

impl<E: StreamEvent> Lines<E> {
    async fn next(&mut self) -> Option<String> {
        if self.ended {
            return None;
        }
        let event = match self.first.take() {
            Some(e) => e,
            None => match self.rx.recv().await {
                Some(Out::Event(e)) => e,
                Some(Out::Refused(error)) => E::from_error(error),
                // The engine dropped the stream without a last word.
                None => E::from_error(error(ErrorCode::Internal, "generation ended without a result")),
            },
        };
        self.ended = event.is_last();
        let mut line = serde_json::to_string(&event).unwrap_or_default();
        line.push('\n');
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    async fn body_text(r: Response) -> String {
        use futures_util::StreamExt;
        let mut s = r.into_body().into_data_stream();
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn streams_lines_up_to_the_last_event() {
        let (tx, rx) = mpsc::channel(8);
        tx.send(Out::Event(ImageEvent::Started { switch_ms: 0 })).await.unwrap();
        tx.send(Out::Event(ImageEvent::Progress { step: 1, steps: 2 }))
            .await
            .unwrap();
        tx.send(Out::Refused(error(ErrorCode::Internal, "boom"))).await.unwrap();
        tx.send(Out::Event(ImageEvent::Progress { step: 2, steps: 2 }))
            .await
            .unwrap();
        let r = stream_response(rx, error(ErrorCode::Internal, "gone")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/x-ndjson");
        let text = body_text(r).await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], r#"{"type":"started","switch_ms":0}"#);
        assert!(lines[2].starts_with(r#"{"type":"error""#), "{text}");
    }

    #[tokio::test]
    async fn a_refusal_first_is_an_error_status_and_silence_is_an_error_line() {
        let (tx, rx) = mpsc::channel::<Out<GenerateEvent>>(8);
        tx.send(Out::Refused(error(ErrorCode::NotLoaded, "no model")))
            .await
            .unwrap();
        let e = stream_response(rx, error(ErrorCode::Internal, "gone"))
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);

        let (tx, rx) = mpsc::channel(8);
        tx.send(Out::Event(GenerateEvent::Token {
            text: "a".into(),
            logprob: None,
        }))
        .await
        .unwrap();
        drop(tx);
        let r = stream_response(rx, error(ErrorCode::Internal, "gone")).await.unwrap();
        let text = body_text(r).await;
        assert!(
            text.ends_with("\"message\":\"generation ended without a result\"}}\n"),
            "{text}"
        );
    }
}
