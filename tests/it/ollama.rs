//! Ollama's API (`/api/…`) end to end: through the real daemon and the real llama.cpp
//! worker on tiny random-weight models (chat and generation streamed and not, listings
//! that match `/v1/status`, embeddings, `keep_alive: 0` unloading, errors in Ollama's
//! shape, the official `ollama` Python client over the Unix socket and over TCP), and
//! through fake workers for what `keep_alive` asks of the arbiter (an idle policy, "evict
//! first" from a caller who may not unload).
//!
//! Every daemon here also listens on a loopback TCP port (`--tcp`), where nobody may change
//! state: that is how the tests play an unprivileged client while running as root.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec, CHATML_TEMPLATE};

use crate::util::ok;
use crate::util::{model_file, read_response, send_request, Daemon, Response, BASE_CONFIG, GIB};

struct Served {
    d: Daemon,
    port: u16,
    _dirs: Vec<tempfile::TempDir>,
}

/// Starts the daemon on its Unix socket and on a free loopback TCP port.
fn start_with_tcp(config: &str, dirs: Vec<tempfile::TempDir>) -> Served {
    let port = crate::util::free_port();
    let d = Daemon::start_with(config, |c| {
        c.arg("--tcp").arg(format!("127.0.0.1:{port}")).env("RUST_LOG", "info");
    });
    Served { d, port, _dirs: dirs }
}

/// Tiny llama models for the real worker: (name, chat template, extra configuration lines).
fn real(models: &[(&str, Option<&str>, &str)]) -> Option<Served> {
    let mut config = crate::llm::worker_config()?;
    let dir = tempfile::tempdir().unwrap();
    for (name, template, extra) in models {
        let path = dir.path().join(format!("{name}.gguf"));
        // Trained for 2048 tokens, so that a template with tools fits a configured context.
        let spec = TinyLlamaSpec {
            chat_template: template.map(str::to_owned),
            n_ctx_train: 2048,
            ..Default::default()
        };
        write_tiny_llama(&path, &spec).unwrap();
        config.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nkind = \"llm\"\npath = \"{}\"\n{extra}",
            path.display()
        ));
    }
    Some(start_with_tcp(&config, vec![dir]))
}

/// The usual pair: `chat` (ChatML template) and `embed` (an embedding model).
fn chat_and_embed() -> Option<Served> {
    real(&[
        ("chat", Some(CHATML_TEMPLATE), "context_length = 256\n"),
        ("embed", None, "embeddings = true\ncontext_length = 128\n"),
    ])
}

impl Served {
    fn post(&self, path: &str, body: &Value) -> Response {
        self.d.post_json(path, &body.to_string())
    }

    /// The same request over the loopback TCP listener (an unprivileged caller).
    fn tcp(&self, method: &str, path: &str, body: &Value) -> Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.to_string();
        send_request(
            &mut s,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        read_response(&mut s)
    }
}

/// An Ollama error: the status, `{"error": "…"}` and nothing else; returns the message.
fn ollama_error(r: &Response, status: u16) -> String {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let message = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not Ollama's error shape: {v}"));
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    message.to_owned()
}

/// The lines of an NDJSON stream.
fn lines(r: &Response) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    assert!(text.ends_with('\n'), "every line ends: {text:?}");
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn greedy(body: Value) -> Value {
    let mut body = body;
    body["options"] = json!({"temperature": 0, "seed": 42, "num_predict": 8});
    body
}

/// The last object of a chat or generation: done, a reason, Ollama's metrics.
fn check_last(v: &Value) {
    assert_eq!(v["done"], true, "{v}");
    let eval = v["eval_count"].as_u64().unwrap();
    assert!((1..=8).contains(&eval), "{v}");
    assert_eq!(v["done_reason"], if eval == 8 { "length" } else { "stop" }, "{v}");
    assert!(v["prompt_eval_count"].as_u64().unwrap() > 0, "{v}");
    for k in [
        "total_duration",
        "load_duration",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(v[k].as_u64().is_some_and(|ns| ns > 0), "{k}: {v}");
    }
    assert!(v["total_duration"].as_u64() >= v["load_duration"].as_u64(), "{v}");
    assert!(v["created_at"].as_str().unwrap().ends_with('Z'), "{v}");
}

#[test]
fn chat_streams_ndjson_that_matches_the_whole_answer() {
    let Some(s) = chat_and_embed() else { return };
    let chat =
        greedy(json!({"model": "chat", "messages": [{"role": "user", "content": "Hello there"}], "stream": false}));
    let full = ok(s.post("/api/chat", &chat));
    assert_eq!(
        (full["model"].clone(), full["message"]["role"].clone()),
        (json!("chat"), json!("assistant"))
    );
    check_last(&full);
    assert!(
        full["prompt_eval_count"].as_u64().unwrap() > 3,
        "the template adds tokens: {full}"
    );

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["model"] = json!("chat:latest");
    let chunks = lines(&s.post("/api/chat", &streamed));
    let (last, pieces) = chunks.split_last().unwrap();
    assert!(
        pieces.iter().all(|c| c["done"] == false && c["model"] == "chat:latest"),
        "{chunks:?}"
    );
    let text: String = pieces
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        text,
        full["message"]["content"].as_str().unwrap(),
        "greedy: the same answer"
    );
    check_last(last);
    assert_eq!(
        (last["message"]["content"].clone(), last["eval_count"].clone()),
        (json!(""), full["eval_count"].clone())
    );
}

#[test]
fn generate_streams_ndjson_and_raw_skips_the_template() {
    let Some(s) = chat_and_embed() else { return };
    let gen = greedy(json!({"model": "chat", "prompt": "Once upon a time", "stream": false}));
    let whole = ok(s.post("/api/generate", &gen));
    check_last(&whole);
    assert!(
        whole["response"].is_string() && whole.get("message").is_none(),
        "{whole}"
    );
    let mut streamed = gen.clone();
    streamed.as_object_mut().unwrap().remove("stream"); // streaming is the default
    let chunks = lines(&s.post("/api/generate", &streamed));
    let text: String = chunks.iter().map(|c| c["response"].as_str().unwrap()).collect();
    assert_eq!(text, whole["response"].as_str().unwrap());
    check_last(chunks.last().unwrap());
    // Raw: the prompt as is, without the template; fewer prompt tokens.
    let mut raw = gen.clone();
    raw["raw"] = json!(true);
    let raw = ok(s.post("/api/generate", &raw));
    assert!(
        raw["prompt_eval_count"].as_u64() < whole["prompt_eval_count"].as_u64(),
        "{raw} {whole}"
    );
}

#[test]
fn a_format_schema_makes_the_answer_parse() {
    let Some(s) = chat_and_embed() else { return };
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["answer", "n"],
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "n": {"type": "integer", "minimum": 1, "maximum": 9}}});
    let body = json!({"model": "chat", "stream": false, "format": schema,
        "options": {"temperature": 0, "seed": 1, "num_predict": 64},
        "messages": [{"role": "user", "content": "Yes or no?"}]});
    let v = ok(s.post("/api/chat", &body));
    let answer: Value = serde_json::from_str(v["message"]["content"].as_str().unwrap()).unwrap();
    assert!(["yes", "no"].contains(&answer["answer"].as_str().unwrap()), "{answer}");
    assert!((1..=9).contains(&answer["n"].as_i64().unwrap()), "{answer}");
    let mut gen = json!({"model": "chat", "prompt": "JSON please", "stream": false, "format": "json",
        "options": {"temperature": 0, "seed": 1, "num_predict": 200}});
    let v = ok(s.post("/api/generate", &gen));
    if v["done_reason"] == "stop" {
        assert!(
            serde_json::from_str::<Value>(v["response"].as_str().unwrap())
                .unwrap()
                .is_object(),
            "{v}"
        );
    }
    gen["format"] = json!("yaml");
    assert!(ollama_error(&s.post("/api/generate", &gen), 400).contains("format"));
}

#[test]
fn the_root_and_the_version_answer_as_ollama_does() {
    let Some(s) = chat_and_embed() else { return };
    let r = s.d.get("/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"Ollama is running"[..]));
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(crate::util::http(&s.d.socket, "HEAD", "/", &[], b"").status, 200);
    let v = ok(s.d.get("/api/version"));
    let parts: Vec<u32> = v["version"]
        .as_str()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(parts.len() == 3 && parts[..2] >= [0, 6][..], "{v}");
    assert_eq!(v["vramd_version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn tags_and_show_describe_the_models_from_their_files() {
    let Some(s) = chat_and_embed() else { return };
    let tags = ok(s.d.get("/api/tags"));
    let models = tags["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["chat:latest", "embed:latest"]);
    let chat = &models[0];
    assert_eq!(chat["model"], "chat:latest");
    let details = &chat["details"];
    assert_eq!(
        (details["format"].clone(), details["family"].clone()),
        (json!("gguf"), json!("llama"))
    );
    assert_eq!(
        (details["families"].clone(), details["quantization_level"].clone()),
        (json!(["llama"]), json!("F32"))
    );
    assert!(!details["parameter_size"].as_str().unwrap().is_empty(), "{chat}");
    assert_eq!(chat["digest"].as_str().unwrap().len(), 64);
    assert!(chat["size"].as_u64().unwrap() > 100_000, "the file's size: {chat}");
    assert!(chat["modified_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(chat["capabilities"], json!(["completion"]));
    assert_eq!(models[1]["capabilities"], json!(["embedding"]));

    let show = ok(s.post("/api/show", &json!({"model": "chat:latest"})));
    assert_eq!(show["template"], CHATML_TEMPLATE);
    assert_eq!(show["details"], *details);
    assert_eq!(show["capabilities"], json!(["completion"]));
    let info = &show["model_info"];
    assert_eq!(
        (
            info["general.architecture"].clone(),
            info["llama.context_length"].clone()
        ),
        (json!("llama"), json!(2048))
    );
    assert!(show["parameters"].as_str().unwrap().contains("num_ctx"), "{show}");
    assert_eq!(
        ok(s.post("/api/show", &json!({"name": "embed"})))["capabilities"],
        json!(["embedding"])
    );
}

#[test]
fn ps_shows_what_status_shows() {
    let Some(s) = chat_and_embed() else { return };
    let details = ok(s.d.get("/api/tags"))["models"][0]["details"].clone();
    assert_eq!(ok(s.d.get("/api/ps"))["models"], json!([]), "nothing loaded yet");
    let body = greedy(json!({"model": "chat", "prompt": "hi", "stream": false, "keep_alive": "10m"}));
    ok(s.post("/api/generate", &body));
    let ps = ok(s.d.get("/api/ps"));
    let status = s.d.model_status("chat");
    let entry = &ps["models"].as_array().unwrap()[0];
    let held = (status["bytes"]["total"].as_u64().unwrap() + status["reserved_bytes"].as_u64().unwrap())
        .max(status["device_bytes"].as_u64().unwrap_or(0));
    assert!(held > 0, "{status}");
    assert_eq!(
        (entry["size_vram"].as_u64(), entry["size"].as_u64()),
        (Some(held), Some(held)),
        "{entry} {status}"
    );
    assert_eq!(entry["context_length"], status["context_length"]);
    assert_eq!(
        (entry["name"].clone(), entry["details"].clone()),
        (json!("chat:latest"), details)
    );
    assert_eq!(
        status["keep_alive_override"], "10m",
        "the wish is the arbiter's: {status}"
    );
    let expires = entry["expires_at"].as_str().unwrap();
    let last_used = status["last_used"].as_u64().unwrap();
    assert_eq!(
        &expires[..19],
        &rfc3339_secs(last_used + 600)[..19],
        "last use + 10m: {entry}"
    );
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS` (what the test compares of `expires_at`).
fn rfc3339_secs(secs: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn keep_alive_zero_from_a_privileged_caller_unloads_once_answered() {
    let Some(s) = chat_and_embed() else { return };
    if !root() {
        eprintln!("skipped: not root, so not allowed to unload over the Unix socket");
        return;
    }
    let mut body = greedy(json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}],
        "stream": false, "keep_alive": 0}));
    check_last(&ok(s.post("/api/chat", &body)));
    assert_eq!(
        s.d.model_status("chat")["state"],
        "unloaded",
        "unloaded before the answer ended"
    );
    body["stream"] = json!(true);
    let chunks = lines(&s.post("/api/chat", &body));
    check_last(chunks.last().unwrap());
    assert_eq!(
        s.d.model_status("chat")["state"],
        "unloaded",
        "unloaded before the stream ended"
    );

    // No messages: Ollama's "load" and, with keep_alive 0, "unload" requests.
    let v = ok(s.post("/api/chat", &json!({"model": "chat", "messages": []})));
    assert_eq!(
        (v["done"].clone(), v["done_reason"].clone()),
        (json!(true), json!("load"))
    );
    assert_eq!(s.d.model_status("chat")["state"], "loaded");
    let v = ok(s.post("/api/generate", &json!({"model": "chat:latest", "keep_alive": 0})));
    assert_eq!(
        (v["done_reason"].clone(), v["response"].clone()),
        (json!("unload"), json!(""))
    );
    assert_eq!(s.d.model_status("chat")["state"], "unloaded");
    assert_eq!(ok(s.d.get("/api/ps"))["models"], json!([]));
}

#[test]
fn embeddings_are_unit_vectors_of_the_models_width() {
    let Some(s) = chat_and_embed() else { return };
    let v = ok(s.post("/api/embed", &json!({"model": "embed", "input": ["hello", "world"]})));
    assert_eq!(v["model"], "embed");
    let vectors = v["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    let width = TinyLlamaSpec::default().n_embd as usize;
    for e in vectors {
        let e: Vec<f64> = e.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(e.len(), width);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    }
    assert_ne!(vectors[0], vectors[1]);
    assert!(v["prompt_eval_count"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["total_duration"].as_u64().unwrap() >= v["load_duration"].as_u64().unwrap());
    let short = ok(s.post(
        "/api/embed",
        &json!({"model": "embed:latest", "input": "hello", "dimensions": 16}),
    ));
    let e: Vec<f64> = short["embeddings"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(e.len(), 16);
    assert!((e.iter().map(|x| x * x).sum::<f64>().sqrt() - 1.0).abs() < 1e-3);
    let legacy = ok(s.post("/api/embeddings", &json!({"model": "embed", "prompt": "hello"})));
    assert_eq!(legacy["embedding"].as_array().unwrap().len(), width);
    let loaded = ok(s.post("/api/embed", &json!({"model": "embed", "input": []})));
    assert_eq!(loaded["embeddings"], json!([]));
    let e = ollama_error(&s.post("/api/embed", &json!({"model": "chat", "input": "x"})), 400);
    assert!(e.contains("not an embedding model"), "{e}");
    let e = ollama_error(
        &s.post(
            "/api/chat",
            &json!({"model": "embed", "messages": [{"role": "user", "content": "x"}]}),
        ),
        400,
    );
    assert!(e.contains("embedding model"), "{e}");
}

#[test]
fn errors_are_in_ollamas_shape_and_nothing_breaks() {
    let Some(s) = chat_and_embed() else { return };
    let hi = json!([{"role": "user", "content": "hi"}]);
    let e = ollama_error(&s.post("/api/chat", &json!({"model": "nope", "messages": hi})), 404);
    assert!(e.contains("'nope' not found"), "{e}");
    let bad_json = s.d.post_json("/api/chat", "{\"model\": ");
    ollama_error(&bad_json, 400);
    ollama_error(&s.d.post_json("/api/chat", ""), 400);
    assert!(ollama_error(&s.d.post_json("/api/chat", "{}"), 400).contains("model"));
    // As `curl -d` sends it (a form's content type), the body is still JSON to Ollama.
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let body = json!({"model": "chat", "prompt": "hi", "stream": false, "options": {"num_predict": 2}});
    let r = crate::util::http(&s.d.socket, "POST", "/api/generate", &form, body.to_string().as_bytes());
    assert_eq!(ok(r)["done"], true);
    let e = ollama_error(
        &s.post(
            "/api/chat",
            &json!({"model": "chat", "messages": hi, "options": {"temperature": "hot"}}),
        ),
        400,
    );
    assert!(e.contains("temperature"), "{e}");
    let images = json!([{"role": "user", "content": "what is this?", "images": ["aGk="]}]);
    assert!(ollama_error(&s.post("/api/chat", &json!({"model": "chat", "messages": images})), 400).contains("images"));
    assert!(ollama_error(
        &s.post(
            "/api/chat",
            &json!({"model": "chat", "messages": hi, "keep_alive": "soon"})
        ),
        400
    )
    .contains("duration"));
    let too_long = json!([{"role": "user", "content": "word ".repeat(700)}]);
    ollama_error(
        &s.post(
            "/api/chat",
            &json!({"model": "chat", "messages": too_long, "stream": false}),
        ),
        400,
    );
    ollama_error(&crate::util::http(&s.d.socket, "GET", "/api/chat", &[], b""), 405);
    // The daemon and the model still serve.
    ok(s.post(
        "/api/chat",
        &greedy(json!({"model": "chat", "messages": hi, "stream": false})),
    ));
}

#[test]
fn model_management_is_not_supported_and_pull_succeeds_for_a_configured_model() {
    let Some(s) = chat_and_embed() else { return };
    for (method, path) in [
        ("POST", "/api/create"),
        ("POST", "/api/copy"),
        ("POST", "/api/push"),
        ("DELETE", "/api/delete"),
    ] {
        let r = crate::util::http(
            &s.d.socket,
            method,
            path,
            &[("Content-Type", "application/json")],
            b"{\"model\":\"chat\"}",
        );
        assert_eq!(
            ollama_error(&r, 501),
            "not supported: models are configured in models.d"
        );
    }
    let e = ollama_error(&s.post("/api/pull", &json!({"model": "llama3.2"})), 404);
    assert!(e.starts_with("not supported: models are configured in models.d"), "{e}");
    let pulled = lines(&s.post("/api/pull", &json!({"model": "chat:latest"})));
    assert_eq!(pulled.last().unwrap(), &json!({"status": "success"}));
    assert_eq!(
        ok(s.post("/api/pull", &json!({"name": "chat", "stream": false}))),
        json!({"status": "success"})
    );
}

/// The official `ollama` Python client (tests/python/ollama_client.py), over the Unix socket
/// and over the loopback TCP listener (`OLLAMA_HOST`-style), streamed and not.
#[test]
fn the_ollama_python_client_works_over_the_socket_and_tcp() {
    if !crate::util::python_has("ollama, httpx") {
        return;
    }
    let Some(s) = chat_and_embed() else { return };
    let socket = format!("unix:{}", s.d.socket.display());
    for host in [socket, format!("http://127.0.0.1:{}", s.port)] {
        let v = crate::util::run_python(&s.d, "ollama_client.py", &[&host, "chat", "embed"]);
        check_python(&v, &host);
    }
}

fn check_python(v: &Value, host: &str) {
    assert_eq!(v["models"], json!(["chat:latest", "embed:latest"]), "{host}: {v}");
    assert_eq!(v["family"], "llama", "{v}");
    assert_eq!(
        (v["show_arch"].clone(), v["show_caps"].clone()),
        (json!("llama"), json!(["completion"])),
        "{v}"
    );
    assert_eq!(v["content"], v["streamed"], "{host}: {v}");
    assert!(v["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    assert_eq!(
        (v["stream_done"].clone(), v["done_reason"].clone()),
        (json!(true), v["stream_reason"].clone())
    );
    assert!((1..=8).contains(&v["eval_count"].as_u64().unwrap()), "{v}");
    assert_eq!(v["generated"], v["gen_streamed"], "{v}");
    assert_eq!(v["json_ok"], true, "{v}");
    assert!(
        v["ps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["model"] == "chat:latest" && m["size_vram"].as_u64() > Some(0)),
        "{v}"
    );
    assert_eq!(
        (v["embed_count"].clone(), v["embed_width"].clone()),
        (json!(2), json!(64)),
        "{v}"
    );
    assert!(
        v["embed_norms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| (n.as_f64().unwrap() - 1.0).abs() < 1e-3),
        "{v}"
    );
    assert_eq!(v["legacy_width"], 64);
    assert_eq!(v["pull"], "success");
    assert_eq!(v["missing"][0], 404, "{v}");
    assert_eq!(
        v["delete"],
        json!([501, "not supported: models are configured in models.d"]),
        "{v}"
    );
}

/// Fake workers (fast, deterministic) for the arbiter's side of `keep_alive`: `a` and `b`
/// of 1 GiB and `c` of 1.5 GiB in a 3 GiB budget, so that `c` needs one of the others gone;
/// `extra` goes into each model's section.
fn three_fakes(extra: &str) -> Served {
    let workers = crate::util::fake_worker_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[daemon]\nidle_exit = \"0\"\nworker_dir = \"{}\"\n[memory]\nbackend = \"budget\"\nbudget = \"3GiB\"\nreserve = 0\n\
         [policy]\nrestore_after = \"0\"\n",
        workers.path().display()
    );
    for (name, size) in [("a", GIB), ("b", GIB), ("c", GIB + GIB / 2)] {
        let path = model_file(dir.path(), name, "ok context=0 compute=0", size);
        config.push_str(&format!(
            "[[models]]\nname = \"{name}\"\nkind = \"llm\"\npath = \"{}\"\n{extra}",
            path.display()
        ));
    }
    start_with_tcp(&config, vec![workers, dir])
}

fn generate_on(s: &Served, model: &str, keep_alive: Value, over_tcp: bool) -> Value {
    let body = json!({"model": model, "prompt": "hi", "stream": false, "keep_alive": keep_alive,
        "options": {"num_predict": 2}});
    ok(if over_tcp {
        s.tcp("POST", "/api/generate", &body)
    } else {
        s.post("/api/generate", &body)
    })
}

#[test]
fn keep_alive_zero_from_anyone_else_makes_the_model_go_first() {
    let s = three_fakes("");
    generate_on(&s, "a", Value::Null, true);
    // `b` is the most recently used, so plain LRU would evict `a` for `c`; but over TCP
    // (nobody may change state there) its client said it is done with it.
    let v = generate_on(&s, "b", json!(0), true);
    assert_eq!(v["done"], true, "never an error: {v}");
    let b = s.d.model_status("b");
    assert_eq!(
        (b["state"].clone(), b["evict_first"].clone()),
        (json!("loaded"), json!(true)),
        "{b}"
    );
    generate_on(&s, "c", Value::Null, true);
    assert_eq!(s.d.model_status("b")["state"], "unloaded", "{}", s.d.model_status("b"));
    assert_eq!(s.d.model_status("a")["state"], "loaded");
    // Used again, it is an ordinary model again.
    let r = s.tcp("POST", "/api/generate", &json!({"model": "b", "keep_alive": 0}));
    assert_eq!(
        ok(r)["done_reason"],
        "unload",
        "Ollama's answer, though only a wish here"
    );
    generate_on(&s, "b", Value::Null, true);
    assert_eq!(s.d.model_status("b")["evict_first"], false);
}

#[test]
fn a_keep_alive_duration_sets_the_idle_policy_until_the_unload() {
    // Configured: unload after 2 s unused. `a`'s client wants it forever, `b`'s for 1 s,
    // `c`'s says nothing.
    let s = three_fakes("keep_alive = \"2s\"\n");
    generate_on(&s, "a", json!("-1"), true);
    let a = s.d.model_status("a");
    assert_eq!(a["keep_alive_override"], "0", "forever, as vramd writes it: {a}");
    let ps = ok(s.d.get("/api/ps"));
    assert!(
        ps["models"][0]["expires_at"].as_str().unwrap().starts_with("23"),
        "{ps}"
    );
    generate_on(&s, "b", json!(1), false);
    assert_eq!(s.d.model_status("b")["keep_alive_override"], "1s");
    let b =
        s.d.wait_model("b", Duration::from_secs(10), |m| m["state"] == "unloaded");
    assert_eq!(
        b["keep_alive_override"],
        Value::Null,
        "the wish ends with the load: {b}"
    );
    generate_on(&s, "c", Value::Null, false); // fits beside `a` now that `b` is gone
    s.d.wait_model("c", Duration::from_secs(10), |m| m["state"] == "unloaded");
    let reason = |model: &str| {
        crate::util::events(&s.d)
            .into_iter()
            .find(|e| e["type"] == "model_unloaded" && e["model"] == model)
            .and_then(|e| e["reason"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    assert!(reason("b").contains("1s a client asked for"), "{}", reason("b"));
    assert!(reason("c").contains("its keep_alive of 2s"), "{}", reason("c"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            s.d.model_status("a")["state"],
            "loaded",
            "`a` stays: its client said forever"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A model whose GGUF carries a template with tool support (Qwen 2.5's): `tools` in
/// `capabilities`, and a history as Ollama's clients send it back (calls without ids,
/// arguments as objects, results naming the function) renders through it.
#[test]
fn tools_and_a_tool_history_go_through_a_real_template() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    let template = std::fs::read_to_string(path).unwrap();
    let Some(s) = real(&[("qwen", Some(template.as_str()), "context_length = 2048\n")]) else {
        return;
    };
    let show = ok(s.post("/api/show", &json!({"model": "qwen"})));
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    assert_eq!(show["template"], template.as_str());
    let weather = json!({"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}});
    let history = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny, 21 °C", "tool_name": "get_weather"},
    ]);
    let body = greedy(json!({"model": "qwen", "messages": history, "tools": [weather], "stream": false}));
    let v = ok(s.post("/api/chat", &body));
    assert_eq!(v["done"], true, "{v}");
    for call in v["message"]["tool_calls"].as_array().into_iter().flatten() {
        assert!(
            call["function"]["arguments"].is_object(),
            "arguments are an object: {call}"
        );
    }
    let orphan = json!([{"role": "user", "content": "hi"}, {"role": "tool", "content": "sunny"}]);
    let e = ollama_error(
        &s.post(
            "/api/chat",
            &json!({"model": "qwen", "messages": orphan, "tools": [weather]}),
        ),
        400,
    );
    assert!(e.contains("tool call"), "{e}");
}

/// SmolLM2-135M-Instruct (scripts/fetch-smollm), whose GGUF carries its own template, answers
/// through the Ollama API. Skipped when the file is absent.
#[test]
fn smollm_answers_through_the_ollama_api() {
    let path = std::env::var_os("VRAMD_SMOLLM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/vramd/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !path.is_file() {
        eprintln!("skipped: {} not found (scripts/fetch-smollm)", path.display());
        return;
    }
    let Some(workers) = crate::llm::worker_dir() else {
        return;
    };
    let config = BASE_CONFIG.replace(
        "[daemon]\n",
        &format!("[daemon]\nworker_dir = \"{}\"\n", workers.display()),
    ) + &format!(
        "[[models]]\nname = \"smol\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 1024\n",
        path.display()
    );
    let s = start_with_tcp(&config, Vec::new());
    let body = json!({"model": "smol", "stream": false, "options": {"temperature": 0, "num_predict": 24},
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let v = ok(s.tcp("POST", "/api/chat", &body));
    let answer = v["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
    let tags = ok(s.tcp("GET", "/api/tags", &Value::Null));
    assert_eq!(tags["models"][0]["details"]["quantization_level"], "Q4_1");
    assert_eq!(tags["models"][0]["details"]["parameter_size"], "134.52M");
}

/// A worker killed in the middle of a stream: the client gets Ollama's `{"error": …}` line
/// (which its clients raise on), and the next request starts a new worker.
#[test]
fn a_worker_dying_mid_stream_ends_it_with_an_error_line() {
    use std::io::{BufRead, Write};
    let Some(workers) = crate::llm::worker_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.gguf");
    let spec = TinyLlamaSpec {
        n_embd: 256,
        n_layer: 8,
        n_ff: 768,
        n_ctx_train: 2048,
        ..Default::default()
    };
    write_tiny_llama(&path, &spec).unwrap();
    let config = BASE_CONFIG.replace(
        "[daemon]\n",
        &format!("[daemon]\nworker_dir = \"{}\"\n", workers.display()),
    ) + &format!(
        "[[models]]\nname = \"slow\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 2048\n",
        path.display()
    );
    let s = start_with_tcp(&config, vec![dir]);
    let body =
        json!({"model": "slow", "prompt": "go", "options": {"num_predict": 2000, "temperature": 0.9, "seed": 1}})
            .to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(&s.d.socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "POST /api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // The body is chunked: of its lines, the JSON ones are the NDJSON objects.
    let mut objects = std::io::BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<Value>(&l).unwrap());
    assert_eq!(objects.next().unwrap()["done"], false);
    let pid = s.d.model_status("slow")["pid"].as_u64().unwrap();
    // SAFETY: kill(2) on the worker the daemon started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let last = objects.last().unwrap();
    assert!(last["error"].as_str().is_some_and(|e| e.contains("worker")), "{last}");
    let again = json!({"model": "slow", "prompt": "again", "stream": false, "options": {"num_predict": 2}});
    assert_eq!(ok(s.post("/api/generate", &again))["done"], true);
}
