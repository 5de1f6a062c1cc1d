//! Supervision through the real daemon and the fake worker (`examples/fake-worker.rs`):
//! loading on demand, bytes in the registry, soft and hard unload, crashes, failure
//! limits, cancellation, concurrency and validation. Inference itself is tested against
//! the real llama.cpp worker in `llm.rs`.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::{fake_worker_dir, http, next_data, pid_alive, sse_data, Daemon, BASE_CONFIG};

struct Setup {
    d: Daemon,
    _workers: tempfile::TempDir,
    models: tempfile::TempDir,
}

/// A daemon whose LLM worker is the fake one, with models `name → first line of its file`.
fn setup(models: &[(&str, &str)], extra: &str) -> Setup {
    let workers = fake_worker_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut config = BASE_CONFIG.replace(
        "[daemon]\n",
        &format!(
            "[daemon]\nworker_dir = \"{}\"\nworker_start_timeout = \"10s\"\n",
            workers.path().display()
        ),
    );
    for (name, behaviour) in models {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, format!("{behaviour}\n")).unwrap();
        config.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nkind = \"llm\"\npath = \"{}\"\n{extra}",
            path.display()
        ));
    }
    config.push_str("[[models]]\nname = \"sd\"\nkind = \"image\"\npath = \"/dev/null\"\n");
    Setup {
        d: Daemon::start(&config),
        _workers: workers,
        models: dir,
    }
}

fn complete(d: &Daemon, model: &str, max_tokens: u32) -> crate::util::Response {
    d.post_json(
        "/v1/completions",
        &json!({"model": model, "prompt": "a b c", "max_tokens": max_tokens}).to_string(),
    )
}

#[test]
fn loads_on_demand_reports_bytes_and_unloads_soft_then_hard() {
    let s = setup(&[("chat", "ok")], "");
    assert_eq!(s.d.model_status("chat")["state"], "unloaded");
    let r = complete(&s.d, "chat", 3);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "t0 t1 t2 ");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
               "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert!(
        v["vramd"]["load_ms"].is_u64(),
        "the first request says how long loading took: {v}"
    );

    let m = s.d.model_status("chat");
    assert_eq!(m["state"], "loaded");
    assert_eq!(
        m["bytes"],
        json!({"weights": 3, "context": 1000, "compute": 500, "total": 1503, "host": 0})
    );
    assert!(m["last_used"].is_u64());
    let pid = m["pid"].as_u64().unwrap();
    assert!(pid_alive(pid));
    assert_eq!(s.d.get("/v1/status").json()["memory"]["used_bytes"], 1503);

    // Already loaded: no load time this time.
    assert_eq!(
        complete(&s.d, "chat", 1).json()["vramd"]["load_ms"],
        serde_json::Value::Null
    );

    let soft = s.d.post_json("/v1/models/chat/unload", r#"{"mode":"soft"}"#).json();
    assert_eq!(
        soft,
        json!({"model": "chat", "mode": "soft", "state": "soft_unloaded", "freed_bytes": 1500})
    );
    assert_eq!(s.d.model_status("chat")["bytes"]["total"], 3);
    assert_eq!(
        complete(&s.d, "chat", 2).status,
        200,
        "a soft-unloaded model serves again"
    );
    assert_eq!(s.d.model_status("chat")["state"], "loaded");

    let hard = s.d.post_json("/v1/models/chat/unload", r#"{"mode":"hard"}"#).json();
    assert_eq!(hard["state"], "unloaded");
    assert_eq!(hard["freed_bytes"], 1503);
    let m = s.d.model_status("chat");
    assert_eq!(m["bytes"]["total"], 0);
    assert_eq!(m["pid"], serde_json::Value::Null);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "hard unload must end the worker process");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And it reloads on the next request.
    assert_eq!(complete(&s.d, "chat", 1).status, 200);
}

#[test]
fn explicit_load_reports_time_and_bytes() {
    let s = setup(&[("chat", "ok")], "");
    let v = s.d.post_json("/v1/models/chat/load", "").json();
    assert_eq!(v["state"], "loaded");
    assert!(v["load_ms"].is_u64());
    assert_eq!(v["bytes"]["total"], 1503);
    let again = s.d.post_json("/v1/models/chat/load", "").json();
    assert_eq!(again["load_ms"], serde_json::Value::Null, "already loaded");
}

#[test]
fn streaming_chat_uses_openai_chunks() {
    let s = setup(&[("chat", "ok")], "");
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4, "stream": true});
    let r = s.d.post_json("/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let data = sse_data(&r.body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "t0 t1 t2 t3 ");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(last["usage"]["prompt_tokens"], 2);
}

fn open_stream(d: &Daemon, model: &str, max_tokens: u32) -> BufReader<UnixStream> {
    let body = json!({"model": model, "prompt": "go", "max_tokens": max_tokens, "stream": true});
    crate::util::open_stream(d, &body)
}

#[test]
fn killed_worker_mid_stream_errors_the_client_and_restarts() {
    let s = setup(&[("chat", "ok delay_ms=30")], "");
    let mut stream = open_stream(&s.d, "chat", 200);
    let first: serde_json::Value = serde_json::from_str(&next_data(&mut stream).unwrap()).unwrap();
    assert_eq!(first["choices"][0]["text"], "t0 ");
    let pid = s.d.model_status("chat")["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the worker process the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut rest = Vec::new();
    while let Some(d) = next_data(&mut stream) {
        rest.push(d);
    }
    let last: serde_json::Value = serde_json::from_str(rest.last().expect("an error event")).unwrap();
    assert_eq!(last["error"]["code"], "worker_failed", "{rest:?}");
    assert!(!rest.iter().any(|d| d == "[DONE]"));

    let m =
        s.d.wait_model("chat", Duration::from_secs(5), |m| m["state"] == "unloaded");
    // A worker that dies after its load is not a failed start: it never counts towards
    // `failed`, which would take the model from everyone.
    assert_eq!(m["failures"], 0);
    assert!(m["error"].as_str().unwrap().contains("killed by signal 9"), "{m}");
    assert_eq!(s.d.get("/health").status, 200, "the daemon stays up");

    let r = complete(&s.d, "chat", 2);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = s.d.model_status("chat");
    assert_ne!(m["pid"].as_u64().unwrap(), pid, "served by a restarted worker");
}

#[test]
fn a_model_that_crashes_its_worker_every_time_ends_failed() {
    let s = setup(&[("chat", "crash-on-load"), ("other", "ok")], "");
    for attempt in 1..=3 {
        let e = complete(&s.d, "chat", 1).error(502);
        assert_eq!(e["code"], "worker_failed", "attempt {attempt}: {e}");
    }
    let m = s.d.model_status("chat");
    assert_eq!(m["state"], "failed");
    let reason = m["error"].as_str().unwrap();
    assert!(
        reason.contains("3 times") && reason.contains("crashing while loading"),
        "{reason}"
    );
    // No more attempts: a clear 503 until someone asks to load it again.
    let e = complete(&s.d, "chat", 1).error(503);
    assert_eq!(e["code"], "model_failed");
    assert!(e["message"].as_str().unwrap().contains("crashing while loading"));
    assert_eq!(complete(&s.d, "other", 1).status, 200, "other models keep working");
    let e = s.d.post_json("/v1/models/chat/load", "").error(502);
    assert_eq!(e["code"], "worker_failed", "an explicit load tries again");
}

#[test]
fn corrupt_model_fails_with_the_reason_and_others_keep_working() {
    let s = setup(&[("broken", "bad"), ("chat", "ok")], "");
    let e = complete(&s.d, "broken", 1).error(503);
    assert!(
        e["message"].as_str().unwrap().contains("fake: corrupt model file"),
        "{e}"
    );
    let m = s.d.model_status("broken");
    assert_eq!(m["state"], "failed");
    assert_eq!(m["error"], "fake: corrupt model file");
    assert_eq!(complete(&s.d, "chat", 1).status, 200);
}

#[test]
fn client_disconnect_cancels_the_generation() {
    let s = setup(&[("chat", "ok delay_ms=20")], "");
    let mut stream = open_stream(&s.d, "chat", 500);
    assert!(next_data(&mut stream).is_some());
    drop(stream);
    let log = s.models.path().join("chat.gguf.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(n) = text.lines().find_map(|l| l.strip_prefix("cancelled ")) {
            assert!(n.parse::<u32>().unwrap() < 500);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker never noticed the disconnect: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = s.d.wait_model("chat", Duration::from_secs(5), |m| m["in_flight"] == 0);
    assert_eq!(m["state"], "loaded");
}

#[test]
fn sixteen_concurrent_clients_all_complete() {
    let s = setup(&[("chat", "ok delay_ms=2")], "");
    let socket = s.d.socket.clone();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let body = json!({"model": "chat", "prompt": format!("client {i}"), "max_tokens": 5}).to_string();
                http(
                    &socket,
                    "POST",
                    "/v1/completions",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                )
            })
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["usage"]["completion_tokens"], 5);
    }
    let m = s.d.model_status("chat");
    assert_eq!(
        (m["in_flight"].as_u64(), m["state"].as_str()),
        (Some(0), Some("loaded"))
    );
}

#[test]
fn bad_requests_name_the_field() {
    let s = setup(&[("chat", "ok")], "context_length = 64\n");
    let post = |path: &str, body: serde_json::Value| s.d.post_json(path, &body.to_string());
    let e = post(
        "/v1/chat/completions",
        json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    )
    .error(404);
    assert_eq!(e["param"], "model");
    let e = post(
        "/v1/chat/completions",
        json!({"model": "sd", "messages": [{"role": "user", "content": "x"}]}),
    )
    .error(400);
    assert_eq!(e["param"], "model");
    assert!(e["message"].as_str().unwrap().contains("image model"));
    let e = post("/v1/chat/completions", json!({"model": "chat", "messages": []})).error(400);
    assert_eq!(e["param"], "messages");
    let e = post(
        "/v1/completions",
        json!({"model": "chat", "prompt": "x", "max_tokens": 100}),
    )
    .error(400);
    assert_eq!(e["param"], "max_tokens");
    assert!(e["message"].as_str().unwrap().contains("64"));
    let e = post(
        "/v1/completions",
        json!({"model": "chat", "prompt": "x", "temperature": -1}),
    )
    .error(400);
    assert_eq!(e["param"], "temperature");
    let e = post("/v1/completions", json!({"prompt": "x"})).error(400);
    assert!(e["message"].as_str().unwrap().contains("model"), "{e}");
    assert_eq!(
        s.d.model_status("chat")["state"],
        "unloaded",
        "nothing was loaded for bad requests"
    );
}

#[test]
fn missing_worker_binary_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    std::fs::write(&model, "ok\n").unwrap();
    let config = BASE_CONFIG.replace(
        "[daemon]\n",
        &format!("[daemon]\nworker_dir = \"{}\"\n", dir.path().display()),
    ) + &format!(
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\n",
        model.display()
    );
    let d = Daemon::start(&config);
    let e = complete(&d, "chat", 1).error(502);
    assert!(
        e["message"].as_str().unwrap().contains("vramd-llm-worker not found"),
        "{e}"
    );
    assert_eq!(d.get("/health").status, 200);
}

#[test]
fn workers_die_with_the_daemon() {
    let mut s = setup(&[("chat", "ok")], "");
    assert_eq!(complete(&s.d, "chat", 1).status, 200);
    let pid = s.d.model_status("chat")["pid"].as_u64().unwrap();
    s.d.signal(libc::SIGKILL);
    let _ = s.d.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "worker {pid} outlived the daemon");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A worker's socket goes with it, and the daemon removes the socket folder it made for
/// itself (`/tmp/vramd-UID-PID`, when neither `runtime_dir`, systemd's `RUNTIME_DIRECTORY`
/// nor `XDG_RUNTIME_DIR` names one) when it exits.
#[test]
fn worker_sockets_and_the_private_socket_folder_are_removed() {
    let workers = fake_worker_dir();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("chat.gguf");
    std::fs::write(&model, "ok\n").unwrap();
    let config = format!(
        "[daemon]\n# runtime_dir: not set, the fallback is tested\nidle_exit = \"0\"\nworker_dir = \"{}\"\n\
         [memory]\nbackend = \"budget\"\nbudget = \"8GiB\"\n\
         [[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\n",
        workers.path().display(),
        model.display()
    );
    let mut d = Daemon::start_with(&config, |c| {
        c.env_remove("XDG_RUNTIME_DIR").env_remove("RUNTIME_DIRECTORY");
    });
    let run = std::path::PathBuf::from(format!("/tmp/vramd-{}-{}", unsafe { libc::getuid() }, d.child.id()));
    assert_eq!(complete(&d, "chat", 1).status, 200);
    let socket = run.join("w1.sock");
    assert!(socket.exists(), "the worker's socket is in {}", run.display());
    let hard = d.post_json("/v1/models/chat/unload", r#"{"mode":"hard"}"#).json();
    assert_eq!(hard["state"], "unloaded");
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(Instant::now() < deadline, "{} left behind", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(complete(&d, "chat", 1).status, 200, "a second worker, a second socket");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert!(!run.exists(), "{} left behind", run.display());
}

/// Packages install an image worker per x86-64 level (`vramd-sd-worker` for the baseline,
/// `vramd-sd-worker.x86-64-v3` …); the daemon starts the best one this CPU runs. The fake
/// worker tells the name it was started as.
#[test]
fn the_image_worker_built_for_this_cpus_level_is_started() {
    let (config, dirs) = crate::util::fake_two_models(1 << 20, "ok", "");
    let workers = dirs[0].path();
    for level in ["x86-64-v2", "x86-64-v3"] {
        std::os::unix::fs::symlink(
            workers.join("vramd-llm-worker"),
            workers.join(format!("vramd-sd-worker.{level}")),
        )
        .unwrap();
    }
    let d = Daemon::start(&config);
    let loaded = d.post_json("/v1/models/sd/load", "");
    assert_eq!(loaded.status, 200, "{}", String::from_utf8_lossy(&loaded.body));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let expected = match vramd_protocol::cpu::cpuinfo_level(&cpuinfo) {
        Some("x86-64-v3" | "x86-64-v4") => "vramd-sd-worker.x86-64-v3",
        Some("x86-64-v2") => "vramd-sd-worker.x86-64-v2",
        _ => "vramd-sd-worker",
    };
    let m = d.model_status("sd");
    assert_eq!(m["cpu"], format!("fake worker started as {expected}"), "{m}");
}
