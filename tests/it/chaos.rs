//! Chaos and soak, on fake workers (`a1111::serve`: `chat` and two image models in a 3 GiB
//! budget, so images and chats evict each other):
//! - a worker stopped with SIGSTOP is found by its health deadline and replaced;
//! - 8 clients of mixed chats and images while workers are killed (`kill -9`) and stopped
//!   (SIGSTOP) at random: every request answered or refused with a JSON error, none lost or
//!   hung, the daemon never restarts, and the accounting comes back to nothing held;
//! - 2,000 mixed requests: the daemon's file descriptors do not grow, no worker socket is
//!   left behind, and its RSS is reported (RELIABILITY.md keeps the figures).
//!
//! Bounds: `VRAMD_CHAOS_SECS` (default 15), `VRAMD_SOAK_REQUESTS` (default 2000).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::a1111::{serve, Served};
use crate::util::{events, http, Response};

/// One request of client `c`, number `i`: chats (some streamed) and images, mixed.
fn request(c: u32, i: u32) -> (&'static str, Value) {
    match (c + i) % 4 {
        0 => (
            "/v1/chat/completions",
            json!({"model": "chat", "messages": [{"role": "user", "content": format!("hi {i}")}], "max_tokens": 6}),
        ),
        1 => (
            "/v1/chat/completions",
            json!({"model": "chat", "messages": [{"role": "user", "content": "go"}], "max_tokens": 6, "stream": true}),
        ),
        2 => (
            "/sdapi/v1/txt2img",
            json!({"prompt": format!("cat {i}"), "width": 64, "height": 64, "steps": 4}),
        ),
        _ => (
            "/v1/images/generations",
            json!({"model": "sd2", "prompt": "fox", "size": "64x64", "steps": 3}),
        ),
    }
}

/// Answered (200 with a whole body, or an error that is JSON), or not: what a client got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Got {
    Answer,
    CleanError,
}

fn judge(path: &str, r: &Response) -> Result<Got, String> {
    let body = String::from_utf8_lossy(&r.body);
    if r.status == 200 {
        // A stream that broke ends with an error event rather than [DONE]: clean too.
        if body.contains("data: {\"error\"") {
            return Ok(Got::CleanError);
        }
        if path.ends_with("/completions") && body.starts_with("data:") && !body.contains("[DONE]") {
            return Err(format!("a stream ended without [DONE] or an error: {body}"));
        }
        return Ok(Got::Answer);
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|_| format!("{} not JSON: {body}", r.status))?;
    if v["error"]["message"].is_string() {
        Ok(Got::CleanError)
    } else {
        Err(format!("{} without the error shape: {body}", r.status))
    }
}

/// A JSON POST on the daemon's socket.
fn post(s: &Served, path: &str, body: &Value) -> Response {
    let headers = [("Content-Type", "application/json")];
    http(&s.d.socket, "POST", path, &headers, body.to_string().as_bytes())
}

fn pids(s: &Served) -> Vec<u64> {
    let status = s.d.get("/v1/status").json();
    status["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["pid"].as_u64())
        .collect()
}

fn signal(pid: u64, sig: i32) {
    // SAFETY: kill(2) on a worker process of the daemon under test.
    unsafe { libc::kill(pid as i32, sig) };
}

#[test]
fn a_stopped_worker_is_found_by_its_health_deadline_and_replaced() {
    let s = serve("worker_health_timeout = \"1s\"\n");
    let chat = json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    assert_eq!(post(&s, "/v1/chat/completions", &chat).status, 200);
    let pid = s.d.model_status("chat")["pid"].as_u64().unwrap();
    signal(pid, libc::SIGSTOP);
    // A request sent to the stopped worker fails cleanly once the deadline passes.
    let started = Instant::now();
    let r = post(&s, "/v1/chat/completions", &chat);
    let waited = started.elapsed();
    assert!(judge("/v1/chat/completions", &r).is_ok(), "{r:?}");
    eprintln!(
        "the request on the stopped worker was answered {} after {} ms",
        r.status,
        waited.as_millis()
    );
    assert!(!crate::util::pid_alive(pid), "the stopped worker was killed");
    let crashed = events(&s.d)
        .into_iter()
        .find(|e| e["type"] == "worker_crashed" && e["model"] == "chat")
        .expect("worker_crashed");
    assert!(crashed["reason"].as_str().unwrap().contains("health"), "{crashed}");
    // The next request gets a new worker.
    let r = post(&s, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_ne!(s.d.model_status("chat")["pid"].as_u64(), Some(pid));
}

#[test]
fn workers_killed_and_stopped_at_random_under_load_lose_nothing() {
    let s = Arc::new(serve("worker_health_timeout = \"2s\"\n"));
    let secs = std::env::var("VRAMD_CHAOS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let daemon_pid = s.d.child.id();
    let until = Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(AtomicBool::new(false));
    let (kills, stops) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let chaos = {
        let (s, done, kills, stops) = (s.clone(), done.clone(), kills.clone(), stops.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(300 + (n * 7919 % 500)));
                let pids = pids(&s);
                if let Some(pid) = pids.get((n as usize) % pids.len().max(1)) {
                    if n % 3 == 0 {
                        signal(*pid, libc::SIGSTOP);
                        stops.fetch_add(1, Ordering::Relaxed);
                    } else {
                        signal(*pid, libc::SIGKILL);
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        })
    };
    let clients: Vec<_> = (0..8u32)
        .map(|c| {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut tally = (0u32, 0u32, Vec::new());
                let mut i = 0;
                while Instant::now() < until {
                    let (path, body) = request(c, i);
                    let sent = Instant::now();
                    let r = post(&s, path, &body);
                    match judge(path, &r) {
                        Ok(Got::Answer) => tally.0 += 1,
                        Ok(Got::CleanError) => tally.1 += 1,
                        Err(e) => tally
                            .2
                            .push(format!("{path} after {} ms: {e}", sent.elapsed().as_millis())),
                    }
                    i += 1;
                }
                tally
            })
        })
        .collect();
    let (mut answered, mut refused, mut lost) = (0, 0, Vec::new());
    for c in clients {
        let (a, r, l) = c.join().expect("a client hung past its 30 s read timeout or panicked");
        answered += a;
        refused += r;
        lost.extend(l);
    }
    done.store(true, Ordering::Relaxed);
    chaos.join().unwrap();
    eprintln!(
        "chaos {secs} s: {answered} answered, {refused} clean errors, {} lost; {} workers killed, {} stopped",
        lost.len(),
        kills.load(Ordering::Relaxed),
        stops.load(Ordering::Relaxed)
    );
    assert!(lost.is_empty(), "{lost:#?}");
    assert!(answered > 0);
    assert_eq!(s.d.child.id(), daemon_pid);
    assert_eq!(s.d.get("/health").status, 200, "the daemon never went down");
    // Stopped workers still left are found and replaced; then everything unloads to nothing.
    for m in ["chat", "sd", "sd2"] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = s.d.post_json(&format!("/v1/models/{m}/unload"), r#"{"mode": "hard"}"#);
            let state = s.d.model_status(m)["state"].clone();
            if state == "unloaded" {
                break;
            }
            assert!(Instant::now() < deadline, "{m} never unloaded: {state} {r:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let status = s.d.get("/v1/status").json();
    for m in status["models"].as_array().unwrap() {
        assert_eq!(
            (m["reserved_bytes"].as_u64(), m["bytes"]["total"].as_u64()),
            (Some(0), Some(0)),
            "{m}"
        );
    }
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn two_thousand_mixed_requests_leak_no_descriptor_and_leave_no_socket() {
    let s = Arc::new(serve(""));
    let total: u32 = std::env::var("VRAMD_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let pid = s.d.child.id();
    let run = |n: u32| {
        let threads: Vec<_> = (0..8u32)
            .map(|c| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..n / 8 {
                        let (path, body) = request(c, i);
                        let r = post(&s, path, &body);
                        judge(path, &r).unwrap_or_else(|e| panic!("{e}"));
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
    };
    // Warm up (every model loaded once, buffers grown), then measure around the soak.
    run(80);
    let (fds_before, rss_before) = (fds(pid), rss_kib(pid));
    let started = Instant::now();
    run(total);
    let secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let (fds_after, rss_after) = (fds(pid), rss_kib(pid));
    eprintln!(
        "soak: {total} requests in {secs:.1} s; daemon fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        fds_after <= fds_before + 2,
        "descriptors grew: {fds_before} -> {fds_after}"
    );
    // Worker sockets of the workers alive, nothing else, in the runtime folder.
    let run_dir = s.d.dir.path().join("run");
    let sockets: Vec<_> = std::fs::read_dir(&run_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let alive = pids(&s).len();
    assert!(
        sockets.len() <= alive,
        "left in {}: {sockets:?} for {alive} workers",
        run_dir.display()
    );
}
