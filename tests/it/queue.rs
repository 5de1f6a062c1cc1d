//! While a request waits: a streamed chat that has to queue gets its response headers at
//! once and SSE comments as keep-alives, the queue says where it stands (`request_queued`
//! with its position, `queued` in `/v1/status`), and a client that disconnects while queued
//! leaves the queue (fake workers, two models in a 3 GiB budget).

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{events, fake_two_models, open_stream, Daemon, GIB};

/// An image (1.5 GiB model, 2 steps of 3 s) holds the memory the chat needs.
fn busy_image(d: &Daemon) -> std::thread::JoinHandle<crate::util::Response> {
    let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 2});
    let image = crate::util::post_in_background(&d.socket, "/v1/images/generations", body);
    d.wait_model("sd", Duration::from_secs(10), |m| m["state"] == "busy");
    image
}

/// Reads the status line and headers of a response on `r`.
fn headers(r: &mut BufReader<std::os::unix::net::UnixStream>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            return lines;
        }
        lines.push(line.trim().to_owned());
    }
}

#[test]
fn a_queued_stream_gets_its_headers_at_once_and_keep_alives() {
    let (config, _dirs) = fake_two_models(GIB + GIB / 2, "ok delay_ms=3000", "");
    let d = Daemon::start(&config.replace("wait_timeout = \"5s\"", "wait_timeout = \"30s\""));
    let image = busy_image(&d);
    let asked = Instant::now();
    let mut stream = open_stream(
        &d,
        &json!({"model": "chat", "prompt": "go", "max_tokens": 2, "stream": true}),
    );
    let head = headers(&mut stream);
    let waited = asked.elapsed();
    assert!(head[0].contains("200"), "{head:?}");
    assert!(
        head.iter()
            .any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream")),
        "{head:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "headers after {waited:?}, while the image runs"
    );
    assert_eq!(d.model_status("chat")["queued"], 1);
    let queued: Vec<_> = events(&d)
        .into_iter()
        .filter(|e| e["type"] == "request_queued")
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(
        (queued[0]["model"].clone(), queued[0]["position"].clone()),
        (json!("chat"), json!(1))
    );
    // A keep-alive comment comes while it waits, then the answer once the image is done.
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    // (The body is chunked: look for the events, in order.)
    let comment = rest.find(": waiting for the model\n\n").expect("a keep-alive comment");
    let data = rest.find("data: ").expect("the answer");
    assert!(comment < data, "{rest:?}");
    assert!(
        rest.contains("\"finish_reason\":\"length\"") && rest.contains("data: [DONE]\n\n"),
        "{rest}"
    );
    assert_eq!(image.join().unwrap().status, 200);
}

#[test]
fn a_client_that_leaves_while_queued_leaves_the_queue() {
    let (config, dirs) = fake_two_models(GIB + GIB / 2, "ok delay_ms=2000", "");
    let d = Daemon::start(&config.replace("wait_timeout = \"5s\"", "wait_timeout = \"30s\""));
    let image = busy_image(&d);
    let mut stream = open_stream(
        &d,
        &json!({"model": "chat", "prompt": "go", "max_tokens": 2, "stream": true}),
    );
    assert!(headers(&mut stream)[0].contains("200"));
    assert_eq!(d.model_status("chat")["queued"], 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(3);
    while d.model_status("chat")["queued"] != 0 {
        assert!(Instant::now() < deadline, "still queued: {}", d.model_status("chat"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        d.model_status("sd")["state"],
        "busy",
        "it left before the image was done"
    );
    assert_eq!(image.join().unwrap().status, 200);
    // Nothing was generated for it: the chat model was never loaded again after the image.
    std::thread::sleep(Duration::from_millis(600));
    let log = std::fs::read_to_string(dirs[1].path().join("chat.bin.log")).unwrap_or_default();
    assert!(!log.contains("generate"), "{log}");
    // A stream whose grant comes at once still gets a real HTTP error when refused.
    let bad = json!({"model": "chat", "prompt": "go", "stream": true, "temperature": 9});
    let e = d.post_json("/v1/completions", &bad.to_string()).error(400);
    assert_eq!(e["param"], "temperature");
}

/// A worker serves one generation at a time; a request granted while another runs waits in
/// its backlog for its turn, and `[policy] wait_timeout` bounds that wait too: a 503 with
/// `Retry-After`, and the worker drops the request rather than running it for nobody.
#[test]
fn a_request_waiting_for_its_turn_on_a_busy_worker_past_wait_timeout_gets_a_503() {
    let (config, dirs) = fake_two_models(GIB, "ok delay_ms=1", "");
    let chat_line = format!("ok context={} compute=0 delay_ms=20 serial=1", GIB / 2);
    crate::util::model_file(dirs[1].path(), "chat", &chat_line, GIB + GIB / 2);
    let d = Daemon::start(&config.replace("wait_timeout = \"5s\"", "wait_timeout = \"1s\""));
    let long = json!({"model": "chat", "prompt": "long", "max_tokens": 200});
    let first = crate::util::post_in_background(&d.socket, "/v1/completions", long);
    d.wait_model("chat", Duration::from_secs(10), |m| m["state"] == "busy");
    let second = d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "short", "max_tokens": 2}).to_string(),
    );
    assert!(
        !first.is_finished(),
        "the first (4 s) still runs when the second is refused"
    );
    let e = second.error(503);
    assert_eq!(e["code"], "model_busy", "{e}");
    assert!(e["message"].as_str().unwrap().contains("waited 1s for its turn"), "{e}");
    assert_eq!(second.header("retry-after"), Some("7"));
    assert_eq!(first.join().unwrap().status, 200);
    let log = std::fs::read_to_string(dirs[1].path().join("chat.bin.log")).unwrap();
    assert!(log.contains("left before its turn"), "{log}");
    let finished: Vec<_> = events(&d)
        .into_iter()
        .filter(|e| e["type"] == "request_finished" && e["model"] == "chat")
        .collect();
    assert!(
        finished
            .iter()
            .any(|e| e["outcome"] == "failed" && e["error"].as_str().is_some_and(|m| m.contains("its turn"))),
        "{finished:#?}"
    );
}
