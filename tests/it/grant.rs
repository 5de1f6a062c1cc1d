//! The grant is the one door to a worker: a worker killed between two requests, or while a
//! request waits for memory, is never handed out; the next request of each kind runs on a
//! fresh worker, over every transport alike (fake workers, two models in a 3 GiB budget).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::ok;
use crate::util::{fake_two_models, http, next_data, open_stream, Daemon, Response, GIB};

fn kill(pid: u64) {
    // SAFETY: kill(2) on a worker process the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

fn pid(d: &Daemon, model: &str) -> u64 {
    d.model_status(model)["pid"].as_u64().expect("a loaded model has a pid")
}

fn chat(d: &Daemon) -> Response {
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    d.post_json("/v1/chat/completions", &body.to_string())
}

fn image(socket: &std::path::Path) -> Response {
    let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 2}).to_string();
    let headers = [("Content-Type", "application/json")];
    http(socket, "POST", "/v1/images/generations", &headers, body.as_bytes())
}

/// Right after `kill -9` (no wait: the arbiter has not heard of the exit yet), the next
/// request of each kind is answered by a new worker, five rounds in a row.
#[test]
fn a_worker_killed_between_requests_is_replaced_for_the_next_one() {
    let (config, _dirs) = fake_two_models(GIB / 8, "ok", "");
    let d = Daemon::start(&config);
    for round in 0..5 {
        ok(chat(&d));
        let before = pid(&d, "chat");
        kill(before);
        ok(chat(&d));
        assert_ne!(pid(&d, "chat"), before, "round {round}: served by a new worker");

        ok(image(&d.socket));
        let before = pid(&d, "sd");
        kill(before);
        let v = ok(image(&d.socket));
        assert_eq!(v["data"].as_array().unwrap().len(), 1, "round {round}: {v}");
        assert_ne!(pid(&d, "sd"), before, "round {round}: served by a new worker");
    }
    assert_eq!(d.model_status("chat")["failures"], 0, "each success resets the count");
}

/// Waits until the `/v1/status` entry of `model` counts a queued request.
fn wait_queued(d: &Daemon, model: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.model_status(model)["queued"] != 1 {
        assert!(Instant::now() < deadline, "nothing queued: {}", d.model_status(model));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An image waits for the memory a streaming chat holds; the chat's worker is killed: the
/// stream ends with an error, the waiting image runs, and the next chat gets a new worker.
#[test]
fn a_worker_killed_while_a_request_waits_for_its_memory() {
    let (config, _dirs) = fake_two_models(GIB + GIB / 2, "ok", "");
    let config = config.replace("ok context=", "ok delay_ms=50 context=");
    let d = Daemon::start(&config.replace("wait_timeout = \"5s\"", "wait_timeout = \"30s\""));
    let mut stream = open_stream(
        &d,
        &json!({"model": "chat", "prompt": "go", "max_tokens": 400, "stream": true}),
    );
    assert!(next_data(&mut stream).is_some(), "the chat streams");
    let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 2});
    let waiting = crate::util::post_in_background(&d.socket, "/v1/images/generations", body);
    wait_queued(&d, "sd");
    let before = pid(&d, "chat");
    kill(before);
    let mut last = String::new();
    while let Some(data) = next_data(&mut stream) {
        last = data;
    }
    assert!(last.contains("worker_failed"), "the stream ends with an error: {last}");
    let v = ok(waiting.join().unwrap());
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    ok(chat(&d));
    assert_ne!(pid(&d, "chat"), before, "the next chat runs on a new worker");
}

/// The same the other way round: a chat waits while an image holds the memory, and the
/// image worker is killed mid-generation.
#[test]
fn an_image_worker_killed_while_a_chat_waits_for_its_memory() {
    let (config, _dirs) = fake_two_models(GIB + GIB / 2, "ok delay_ms=500", "");
    let d = Daemon::start(&config.replace("wait_timeout = \"5s\"", "wait_timeout = \"30s\""));
    let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 40});
    let first = crate::util::post_in_background(&d.socket, "/v1/images/generations", body);
    d.wait_model("sd", Duration::from_secs(10), |m| m["state"] == "busy");
    let body = json!({"model": "chat", "prompt": "go", "max_tokens": 2});
    let waiting = crate::util::post_in_background(&d.socket, "/v1/completions", body);
    wait_queued(&d, "chat");
    let before = pid(&d, "sd");
    kill(before);
    let e = first.join().unwrap().error(502);
    assert_eq!(e["code"], "worker_failed", "{e}");
    ok(waiting.join().unwrap());
    let v = ok(image(&d.socket));
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    assert_ne!(pid(&d, "sd"), before, "the next image runs on a new worker");
}

/// Every request ends with exactly one `request_finished` event under its own request id:
/// chats, an image that made room (its story says what was freed for it), and a chat whose
/// client left while it was queued (`cancelled`, so a waiting notice can be taken down).
#[test]
fn every_request_ends_with_one_request_finished() {
    let (config, _dirs) = fake_two_models(GIB + GIB / 2, "ok delay_ms=1000", "");
    let d = Daemon::start(&config.replace("wait_timeout = \"5s\"", "wait_timeout = \"30s\""));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = chat(&d);
        ids.push(r.header("x-request-id").expect("an id").to_owned());
        ok(r);
    }
    let r = image(&d.socket);
    ids.push(r.header("x-request-id").expect("an id").to_owned());
    ok(r);
    // Another image holds the memory; a streamed chat queues behind it, then its client leaves.
    let busy = std::thread::spawn({
        let socket = d.socket.clone();
        move || image(&socket)
    });
    d.wait_model("sd", Duration::from_secs(10), |m| m["state"] == "busy");
    let stream = open_stream(
        &d,
        &json!({"model": "chat", "prompt": "go", "max_tokens": 2, "stream": true}),
    );
    d.wait_model("chat", Duration::from_secs(10), |m| m["queued"] == 1);
    drop(stream);
    ok(busy.join().unwrap());
    d.wait_model("chat", Duration::from_secs(10), |m| m["queued"] == 0);
    let finished: Vec<serde_json::Value> = crate::util::events(&d)
        .into_iter()
        .filter(|e| e["type"] == "request_finished")
        .collect();
    assert_eq!(finished.len(), 6, "{finished:#?}");
    for id in &ids {
        assert_eq!(
            finished.iter().filter(|e| &e["request_id"] == id).count(),
            1,
            "{id}: {finished:#?}"
        );
    }
    let mut all: Vec<&str> = finished.iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    all.dedup();
    assert_eq!(all.len(), 6, "one event per request");
    assert!(finished[..3]
        .iter()
        .all(|e| e["kind"] == "text" && e["outcome"] == "done"));
    let image = &finished[3];
    assert_eq!((&image["kind"], &image["outcome"]), (&json!("image"), &json!("done")));
    assert_eq!(image["freed"][0]["model"], "chat", "{image}");
    let left = finished
        .iter()
        .find(|e| e["outcome"] == "cancelled")
        .expect("the chat that left");
    assert_eq!(
        (&left["model"], &left["queued"]),
        (&json!("chat"), &json!(true)),
        "{left}"
    );
}
