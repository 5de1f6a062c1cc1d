//! Server-Sent Events: the one place a streamed response gets its SSE headers and its
//! frames their shape (`GET /v1/events`, and streamed completions).

use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::BoxError;
use serde::Serialize;

/// A response that streams `frames` as `text/event-stream`, never cached.
pub fn response<S>(frames: S) -> Response
where
    S: futures_util::TryStream + Send + 'static,
    S::Ok: Into<Bytes>,
    S::Error: Into<BoxError>,
{
    let mut resp = Body::from_stream(frames).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// An unnamed event: `data: <json>` and the blank line that ends it.
pub fn frame(data: &impl Serialize) -> Vec<u8> {
    format!("data: {}\n\n", json(data)).into_bytes()
}

/// A named event, with an `id:` line when the stream numbers its events.
pub fn event_frame(id: Option<u64>, event: &str, data: &impl Serialize) -> Vec<u8> {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    format!("{id}event: {event}\ndata: {}\n\n", json(data)).into_bytes()
}

fn json(data: &impl Serialize) -> String {
    serde_json::to_string(data).expect("SSE data serialises")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn frames() {
        let v = json!({"a": 1, "b": "x"});
        assert_eq!(frame(&v), format!("data: {v}\n\n").into_bytes());
        assert_eq!(frame(&v), b"data: {\"a\":1,\"b\":\"x\"}\n\n");
        assert_eq!(
            event_frame(Some(7), "model_loaded", &v),
            b"id: 7\nevent: model_loaded\ndata: {\"a\":1,\"b\":\"x\"}\n\n"
        );
        assert_eq!(
            event_frame(None, "lagged", &json!({"missed": 3})),
            b"event: lagged\ndata: {\"missed\":3}\n\n"
        );
    }

    #[test]
    fn headers() {
        let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(frame(&1))]);
        let resp = response(frames);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    }
}
