//! What one local process must not be able to do to everyone else (issue 18's probe): hold
//! connections for free (idle keep-alive, slowloris, more connections than the cap), make
//! the daemon wait for a body it will refuse anyway, or take a model away from everyone by
//! crashing its worker with its own requests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{fake_two_models, ok, Daemon, BASE_CONFIG, GIB};

fn connect(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the server closes the connection; returns what came and how long it took.
fn read_until_closed(mut s: UnixStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

#[test]
fn a_declared_body_over_max_body_is_refused_at_once_without_reading_it() {
    let d = Daemon::start(&BASE_CONFIG.replace("[daemon]\n", "[daemon]\nmax_body = \"16MiB\"\n"));
    for extra in ["", "Expect: 100-continue\r\n"] {
        let mut s = connect(&d);
        let length = if extra.is_empty() {
            "1000000000000000"
        } else {
            "17825792"
        };
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}Content-Length: {length}\r\n\r\n"
        )
        .unwrap();
        let (answer, took) = read_until_closed(s);
        assert!(answer.starts_with("HTTP/1.1 413"), "{extra:?}: {answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(answer.contains("\"code\":\"payload_too_large\""), "{answer}");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }
    // A body within the limit is still read and served.
    ok(d.get("/health"));
}

#[test]
fn idle_and_slow_connections_are_closed_after_the_header_timeout() {
    let d = Daemon::start(&BASE_CONFIG.replace(
        "[daemon]\n",
        "[daemon]\nheader_timeout = \"1s\"\nidle_timeout = \"2s\"\n",
    ));
    // Idle: connected, nothing sent.
    let (answer, took) = read_until_closed(connect(&d));
    assert!(
        took < Duration::from_secs(5),
        "an idle connection stayed {took:?}: {answer}"
    );
    // Slowloris: a header line now and then, never the end of the headers.
    let mut slow = connect(&d);
    let started = Instant::now();
    write!(slow, "GET /health HTTP/1.1\r\n").unwrap();
    let mut closed = false;
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        if write!(slow, "X-Slow-{i}: 1\r\n").is_err() {
            closed = true;
            break;
        }
    }
    let (_, _) = read_until_closed(slow);
    assert!(
        closed || started.elapsed() < Duration::from_secs(8),
        "a slowloris was kept {:?}",
        started.elapsed()
    );
    // A keep-alive connection is served, then closed once idle.
    let mut s = connect(&d);
    write!(s, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (answer, took) = read_until_closed(s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(5), "kept alive {took:?} with nothing sent");
}

#[test]
fn connections_beyond_the_cap_wait_for_a_free_one() {
    let d = Daemon::start(&BASE_CONFIG.replace(
        "[daemon]\n",
        "[daemon]\nmax_connections = 8\nheader_timeout = \"30s\"\n",
    ));
    let idle: Vec<UnixStream> = (0..8).map(|_| connect(&d)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ninth = connect(&d);
    ninth.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    write!(ninth, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    assert!(ninth.read(&mut first).is_err(), "served beyond the cap of 8");
    drop(idle);
    ninth.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (rest, _) = read_until_closed(ninth);
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
}

#[test]
fn a_worker_killed_while_serving_never_makes_the_model_failed_for_everyone() {
    let (config, _dirs) = fake_two_models(GIB / 8, "ok delay_ms=500", "");
    let d = Daemon::start(&config);
    for round in 0..4 {
        let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 20});
        let image = crate::util::post_in_background(&d.socket, "/v1/images/generations", body);
        d.wait_model("sd", Duration::from_secs(10), |m| m["state"] == "busy");
        let pid = d.model_status("sd")["pid"].as_u64().unwrap();
        // SAFETY: kill(2) on the worker process the daemon started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let r = image.join().unwrap();
        assert!(r.status >= 500, "round {round}: {}", String::from_utf8_lossy(&r.body));
        let m = d.wait_model("sd", Duration::from_secs(10), |m| m["state"] != "busy");
        assert_ne!(m["state"], "failed", "round {round}: {m}");
    }
    let body = json!({"model": "sd", "prompt": "a cat", "size": "64x64", "steps": 2});
    ok(d.post_json("/v1/images/generations", &body.to_string()));
}

/// A streamed answer whose client stays connected but stops reading is stopped after
/// `stall_timeout`: its request ends `failed` with that reason and the model serves others.
#[test]
fn a_client_that_stops_reading_its_stream_does_not_hold_the_model() {
    let (config, _dirs) = fake_two_models(GIB / 8, "ok", "stall_timeout = \"2s\"\n");
    let d = Daemon::start(&config);
    let context = {
        ok(d.post_json(
            "/v1/completions",
            &json!({"model": "chat", "prompt": "hi", "max_tokens": 1}).to_string(),
        ));
        d.model_status("chat")["context_length"].as_u64().unwrap()
    };
    // As many tokens as the context takes: far more than the socket's buffers hold.
    let body = json!({"model": "chat", "prompt": "go", "max_tokens": context - 16, "stream": true});
    let mut stream = crate::util::open_stream(&d, &body);
    assert!(crate::util::next_data(&mut stream).is_some(), "the stream started");
    // Not reading any more, still connected.
    let m = d.wait_model("chat", Duration::from_secs(60), |m| m["in_flight"] == 0);
    assert_eq!(m["state"], "loaded", "{m}");
    let finished: Vec<_> = crate::util::events(&d)
        .into_iter()
        .filter(|e| e["type"] == "request_finished" && e["model"] == "chat")
        .collect();
    assert_eq!(finished.len(), 2, "{finished:?}");
    assert_eq!(finished[1]["outcome"], "failed", "{finished:?}");
    let error = finished[1]["error"].as_str().unwrap();
    assert!(error.contains("stopped reading the stream for 2s"), "{error}");
    let chat = json!({"model": "chat", "prompt": "hi", "max_tokens": 2});
    ok(d.post_json("/v1/completions", &chat.to_string()));
    drop(stream);
}
