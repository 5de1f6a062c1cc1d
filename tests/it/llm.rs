//! End to end through the daemon binary and the real llama.cpp worker, on random-weight
//! GGUF models the tests write themselves (`vramd-gguf`). Random weights emit arbitrary
//! bytes and rarely an end token, so these tests check structure, counts, determinism under
//! greedy sampling, streaming order and memory, not the words.
//!
//! The worker binary is built by `cargo build --workspace` (scripts/test does it). Without it
//! these tests say so and pass, unless `VRAMD_REQUIRE_WORKERS=1` (set by scripts/test), which
//! makes a missing worker a failure.

use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec, CHATML_TEMPLATE};

use crate::util::ok;
use crate::util::{next_data, open_stream, pid_alive, sse_data, Daemon, BASE_CONFIG, VRAMD};

/// The real worker's folder, or `None` (after saying so) when it has not been built.
pub fn worker_dir() -> Option<PathBuf> {
    let dir = Path::new(VRAMD).parent().unwrap().to_owned();
    if dir.join("vramd-llm-worker").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("VRAMD_REQUIRE_WORKERS").is_none(),
        "vramd-llm-worker is not built next to {VRAMD}: run `cargo build --workspace`"
    );
    eprintln!("skipped: vramd-llm-worker is not built (cargo build --workspace)");
    None
}

/// The base configuration with the real workers' folder, or `None` when they are not built.
pub fn worker_config() -> Option<String> {
    let workers = worker_dir()?;
    Some(BASE_CONFIG.replace(
        "[daemon]\n",
        &format!(
            "[daemon]\nworker_dir = \"{}\"\nworker_start_timeout = \"20s\"\n",
            workers.display()
        ),
    ))
}

pub enum ModelFile {
    Tiny {
        template: bool,
    },
    /// The tiny model with this chat template in its GGUF.
    TinyWith(String),
    /// Bigger and slower, for tests that must catch a generation in the middle.
    Slow,
    Truncated,
    Existing(PathBuf),
}

pub struct Llm {
    pub d: Daemon,
    _models: tempfile::TempDir,
}

pub fn start(models: &[(&str, ModelFile)], extra: &str) -> Option<Llm> {
    start_with_args(models, extra, &[])
}

/// [`start`], with more arguments on the daemon's command line (`--tcp ADDR`).
pub fn start_with_args(models: &[(&str, ModelFile)], extra: &str, args: &[&str]) -> Option<Llm> {
    let mut config = worker_config()?;
    let dir = tempfile::tempdir().unwrap();
    for (name, file) in models {
        let path = match file {
            ModelFile::Existing(p) => p.clone(),
            other => {
                let path = dir.path().join(format!("{name}.gguf"));
                write_model(&path, other);
                path
            }
        };
        config.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nkind = \"llm\"\npath = \"{}\"\n{extra}",
            path.display()
        ));
    }
    Some(Llm {
        d: Daemon::start_with(&config, |c| {
            c.env("RUST_LOG", "info").args(args);
        }),
        _models: dir,
    })
}

fn write_model(path: &Path, file: &ModelFile) {
    let mut spec = TinyLlamaSpec::default();
    match file {
        ModelFile::Tiny { template } => {
            spec.chat_template = template.then(|| CHATML_TEMPLATE.to_owned());
        }
        ModelFile::TinyWith(template) => {
            // Byte-level tokens make real templates' prompts long.
            spec.n_ctx_train = 4096;
            spec.chat_template = Some(template.clone());
        }
        ModelFile::Slow => {
            spec.n_embd = 256;
            spec.n_layer = 8;
            spec.n_ff = 768;
            spec.n_ctx_train = 2048;
        }
        ModelFile::Truncated => {
            write_tiny_llama(path, &spec).unwrap();
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
            return;
        }
        ModelFile::Existing(_) => unreachable!(),
    }
    write_tiny_llama(path, &spec).unwrap();
}

fn greedy(extra: Value) -> Value {
    let mut v = json!({"temperature": 0, "seed": 42});
    v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    v
}

#[test]
fn chat_and_completion_give_real_tokens_deterministically() {
    let Some(l) = start(
        &[("chat", ModelFile::Tiny { template: true })],
        "context_length = 256\n",
    ) else {
        return;
    };
    let req =
        greedy(json!({"model": "chat", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12}));
    let a = ok(l.d.post_json("/v1/chat/completions", &req.to_string()));
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    let usage = &a["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{a}");
    assert!(
        usage["prompt_tokens"].as_u64().unwrap() > 3,
        "the chat template adds tokens: {a}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    let finish = a["choices"][0]["finish_reason"].as_str().unwrap();
    assert_eq!(finish, if completion == 12 { "length" } else { "stop" });
    assert!(a["vramd"]["load_ms"].is_u64());
    let b = ok(l.d.post_json("/v1/chat/completions", &req.to_string()));
    assert_eq!(
        a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
        "greedy + seed is deterministic"
    );

    let req = greedy(json!({"model": "chat", "prompt": "Once upon a time", "max_tokens": 10}));
    let c = ok(l.d.post_json("/v1/completions", &req.to_string()));
    assert_eq!(c["object"], "text_completion");
    assert!(c["choices"][0]["text"].is_string());
    assert!(c["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn streaming_matches_the_non_streamed_answer() {
    let Some(l) = start(&[("chat", ModelFile::Tiny { template: true })], "") else {
        return;
    };
    let req = greedy(json!({"model": "chat", "prompt": "The quick brown fox", "max_tokens": 16}));
    let full = ok(l.d.post_json("/v1/completions", &req.to_string()));
    let mut stream_req = req.clone();
    stream_req["stream"] = json!(true);
    let r = l.d.post_json("/v1/completions", &stream_req.to_string());
    assert_eq!(r.status, 200);
    let data = sse_data(&r.body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, full["choices"][0]["text"].as_str().unwrap());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], full["choices"][0]["finish_reason"]);
    // The same counts; only how much of the prompt the cache held differs (the second
    // request reuses the first one's).
    for key in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(last["usage"][key], full["usage"][key], "{key}");
    }
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
}

#[test]
fn stop_sequences_cut_the_text() {
    let Some(l) = start(&[("chat", ModelFile::Tiny { template: true })], "") else {
        return;
    };
    let req = greedy(json!({"model": "chat", "prompt": "Tell me", "max_tokens": 24}));
    let text = ok(l.d.post_json("/v1/completions", &req.to_string()))["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "need some text to cut: {text:?}");
    // A stop string taken from the middle of the greedy answer.
    let stop: String = chars[3..5].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let mut req = req.clone();
    req["stop"] = json!([stop]);
    let v = ok(l.d.post_json("/v1/completions", &req.to_string()));
    assert_eq!(
        v["choices"][0]["text"].as_str().unwrap(),
        cut,
        "stop {stop:?} in {text:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn soft_and_hard_unload_free_the_reported_bytes_and_reload() {
    let Some(l) = start(
        &[("chat", ModelFile::Tiny { template: true })],
        "context_length = 512\n",
    ) else {
        return;
    };
    let v = ok(l.d.post_json("/v1/models/chat/load", ""));
    assert!(v["load_ms"].is_u64());
    let m = l.d.model_status("chat");
    assert_eq!(m["state"], "loaded");
    let (weights, context, compute) = (
        m["bytes"]["weights"].as_u64().unwrap(),
        m["bytes"]["context"].as_u64().unwrap(),
        m["bytes"]["compute"].as_u64().unwrap(),
    );
    assert!(weights > 100_000, "{m}");
    // KV = 2 · layers · context · n_embd_kv · 2 bytes (f16) for the tiny model: 2·2·512·64·2,
    // once per slot (two by default).
    assert_eq!(context, 2 * (2 * 2 * 512 * 64 * 2), "{m}");
    assert_eq!(m["context_length"], 512);
    let soft = ok(l.d.post_json("/v1/models/chat/unload", r#"{"mode":"soft"}"#));
    assert_eq!(soft["state"], "soft_unloaded");
    assert_eq!(soft["freed_bytes"].as_u64().unwrap(), context + compute);
    let m = l.d.model_status("chat");
    assert_eq!(
        (m["bytes"]["context"].as_u64(), m["bytes"]["weights"].as_u64()),
        (Some(0), Some(weights))
    );

    let req = greedy(json!({"model": "chat", "prompt": "again", "max_tokens": 3}));
    ok(l.d.post_json("/v1/completions", &req.to_string()));
    assert_eq!(
        l.d.model_status("chat")["bytes"]["context"].as_u64(),
        Some(context),
        "context recreated"
    );

    let pid = l.d.model_status("chat")["pid"].as_u64().unwrap();
    let hard = ok(l.d.post_json("/v1/models/chat/unload", r#"{"mode":"hard"}"#));
    assert_eq!(hard["state"], "unloaded");
    assert_eq!(hard["freed_bytes"].as_u64().unwrap(), weights + context + compute);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) {
        assert!(Instant::now() < deadline, "worker still running after a hard unload");
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(l.d.post_json("/v1/completions", &req.to_string()));
    assert_eq!(l.d.model_status("chat")["state"], "loaded", "reloaded on demand");
}

/// The slow model, mid-way through a long streamed generation (its first event read).
fn slow_stream() -> Option<(Llm, BufReader<UnixStream>)> {
    let l = start(&[("chat", ModelFile::Slow)], "context_length = 2048\n")?;
    let body =
        json!({"model": "chat", "prompt": "go", "max_tokens": 2000, "temperature": 0.9, "seed": 1, "stream": true});
    let mut stream = open_stream(&l.d, &body);
    assert!(next_data(&mut stream).is_some());
    Some((l, stream))
}

#[test]
fn kill_9_mid_stream_errors_the_client_and_the_next_request_restarts() {
    let Some((l, mut stream)) = slow_stream() else { return };
    let pid = l.d.model_status("chat")["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the worker the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let mut rest = Vec::new();
    while let Some(d) = next_data(&mut stream) {
        rest.push(d);
    }
    let last: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "worker_failed", "{:?}", rest.last());
    assert_eq!(l.d.get("/health").status, 200);
    let req = json!({"model": "chat", "prompt": "again", "max_tokens": 2, "temperature": 0});
    ok(l.d.post_json("/v1/completions", &req.to_string()));
    assert_ne!(l.d.model_status("chat")["pid"].as_u64().unwrap(), pid);
}

#[test]
fn disconnecting_cancels_generation_in_the_worker() {
    let Some((l, stream)) = slow_stream() else { return };
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !l.d.log().contains("generation cancelled") {
        assert!(
            Instant::now() < deadline,
            "the worker never logged a cancellation:\n{}",
            l.d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = l.d.wait_model("chat", Duration::from_secs(10), |m| m["in_flight"] == 0);
    assert_eq!(m["state"], "loaded");
}

#[test]
fn bad_models_and_prompts_give_clear_errors() {
    let models = [
        ("chat", ModelFile::Tiny { template: true }),
        ("plain", ModelFile::Tiny { template: false }),
        ("broken", ModelFile::Truncated),
    ];
    let Some(l) = start(&models, "context_length = 64\n") else {
        return;
    };
    let e =
        l.d.post_json(
            "/v1/completions",
            &json!({"model": "broken", "prompt": "x", "max_tokens": 2}).to_string(),
        )
        .error(503);
    assert_eq!(e["code"], "model_failed");
    let m = l.d.model_status("broken");
    assert_eq!(m["state"], "failed");
    assert!(!m["error"].as_str().unwrap().is_empty());

    let long = "word ".repeat(700); // over the 256-token context llama.cpp rounds 64 up to
    let e =
        l.d.post_json(
            "/v1/completions",
            &json!({"model": "chat", "prompt": long, "max_tokens": 2}).to_string(),
        )
        .error(400);
    assert_eq!(e["param"], "prompt", "{e}");
    let e =
        l.d.post_json(
            "/v1/chat/completions",
            &json!({"model": "chat", "messages": [{"role": "user", "content": long}], "max_tokens": 2}).to_string(),
        )
        .error(400);
    assert_eq!(e["param"], "messages", "{e}");

    let e =
        l.d.post_json(
            "/v1/chat/completions",
            &json!({"model": "plain", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string(),
        )
        .error(400);
    assert!(e["message"].as_str().unwrap().contains("template"), "{e}");
    ok(l.d.post_json(
        "/v1/completions",
        &json!({"model": "plain", "prompt": "hi", "max_tokens": 2}).to_string(),
    ));
}

#[test]
fn sixteen_concurrent_clients_on_one_model_all_complete() {
    let Some(l) = start(&[("chat", ModelFile::Tiny { template: true })], "") else {
        return;
    };
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let body = json!({"model": "chat", "prompt": format!("client {i}"), "max_tokens": 6, "temperature": 0});
            crate::util::post_in_background(&l.d.socket, "/v1/completions", body)
        })
        .collect();
    for t in threads {
        let v = ok(t.join().unwrap());
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    assert_eq!(l.d.model_status("chat")["in_flight"], 0);
}

/// SmolLM2-135M-Instruct (scripts/fetch-smollm): a real model gives a sensible answer.
/// Skipped when the file is absent; `.ci/run` fetches it.
#[test]
fn smollm_knows_the_capital_of_france() {
    let path = std::env::var_os("VRAMD_SMOLLM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vramd/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !path.is_file() {
        eprintln!("skipped: {} not found (scripts/fetch-smollm)", path.display());
        return;
    }
    let Some(l) = start(&[("smol", ModelFile::Existing(path))], "context_length = 1024\n") else {
        return;
    };
    let req = json!({"model": "smol", "temperature": 0, "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let v = ok(l.d.post_json("/v1/chat/completions", &req.to_string()));
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
    // Its own template (ChatML, from the GGUF, rendered by the Jinja engine) and a grammar:
    // a real model's structured answer parses and matches the schema.
    let schema = json!({"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}},
        "required": ["capital"], "additionalProperties": false});
    let req = json!({"model": "smol", "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}});
    let v = ok(l.d.post_json("/v1/chat/completions", &req.to_string()));
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
    assert!(parsed["capital"].as_str().unwrap().contains("Paris"), "{parsed}");
}

/// The official `openai` Python client works over the socket and over TCP, streamed and not.
#[test]
fn the_openai_python_client_works() {
    if !crate::util::python_has("openai, httpx") {
        return;
    }
    let port = crate::util::free_port();
    let tcp = format!("127.0.0.1:{port}");
    let Some(l) = start_with_args(&[("chat", ModelFile::Tiny { template: true })], "", &["--tcp", &tcp]) else {
        return;
    };
    let socket = l.d.socket.display().to_string();
    let url = format!("http://{tcp}/v1");
    for v in [&socket, &url].map(|w| crate::util::run_python(&l.d, "openai_client.py", &[w, "chat"])) {
        check_openai_client(&v);
    }
}

fn check_openai_client(v: &Value) {
    assert_eq!(v["content"], v["streamed"], "{v}");
    assert_eq!(v["finish_reason"], v["stream_finish"]);
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(v["completion_text"].is_string());
    assert_eq!(v["missing_model_status"], 404);
}

/// llama.cpp's CPU code is a module per x86-64 level (`dynamic-backends`, as the packages
/// ship it); the worker loads the one for this CPU's level and says which in `/v1/status`.
#[test]
fn the_worker_runs_llama_cpps_cpu_module_for_this_cpus_level() {
    let Some(l) = start(&[("chat", ModelFile::Tiny { template: false })], "") else {
        return;
    };
    ok(l.d.post_json("/v1/models/chat/load", ""));
    let m = l.d.model_status("chat");
    let cpu = m["cpu"].as_str().unwrap_or_default();
    let module = cpu
        .split("; ggml-cpu-")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no CPU module named: {m}"));
    // ggml's variants by the x86-64 level they need (ggml/src/CMakeLists.txt).
    let level = match module {
        "x64" => "x86-64",
        "sse42" | "sandybridge" | "ivybridge" | "piledriver" => "x86-64-v2",
        "haswell" | "alderlake" => "x86-64-v3",
        _ => "x86-64-v4",
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    assert_eq!(Some(level), vramd_protocol::cpu::cpuinfo_level(&cpuinfo), "{cpu}");
    assert!(cpu.starts_with(&format!("{level} build")), "{cpu}");
}
