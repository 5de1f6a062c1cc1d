//! End to end: the real worker binary, a tiny random-weight llama model, the wire protocol.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{load_request, model_with, tiny_model, Worker};
use vramd_gguf::llama::TinyLlamaSpec;
use vramd_protocol::{
    ChatMessage, ErrorCode, FinishReason, GenerateEvent, GenerateRequest, Health, Input, LoadResponse, RestoreResponse,
    SamplingParams, UnloadMode, WorkerState, GENERATE, LOAD, RESTORE, UNLOAD,
};

fn greedy(max_tokens: u32) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(max_tokens),
        temperature: 0.0,
        seed: Some(42),
        ..SamplingParams::default()
    }
}

fn text(prompt: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: "test".into(),
        input: Input::Text { prompt: prompt.into() },
        params,
        interactive: false,
    }
}

fn chat(content: &str, params: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        request_id: "test-chat".into(),
        input: Input::Chat {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: content.into(),
            }],
        },
        params,
        interactive: false,
    }
}

/// What a finished generation streamed.
#[derive(Debug)]
struct Run {
    prompt_tokens: u32,
    context_ms: u64,
    text: String,
    tokens: usize,
    finish: FinishReason,
    completion_tokens: u32,
    health: Health,
}

/// Runs a generation to its end, checking the stream's shape: `started`, `token`s, `done`.
fn generate(w: &Worker, req: &GenerateRequest) -> Run {
    let (status, events) = w.stream(req);
    assert_eq!(status, 200, "{}", w.log());
    let events = events.collect();
    let Some(GenerateEvent::Started {
        prompt_tokens,
        context_ms,
        ..
    }) = events.first().cloned()
    else {
        panic!("first event is not started: {events:?}");
    };
    let Some(GenerateEvent::Done {
        finish_reason,
        prompt_tokens: p2,
        completion_tokens,
        health,
    }) = events.last().cloned()
    else {
        panic!("last event is not done: {events:?}\n{}", w.log());
    };
    assert_eq!(prompt_tokens, p2);
    let mut out = String::new();
    let middle = &events[1..events.len() - 1];
    for e in middle {
        match e {
            GenerateEvent::Token { text, .. } => {
                assert!(!text.is_empty(), "empty token event");
                out.push_str(text);
            }
            other => panic!("unexpected event in the middle: {other:?}"),
        }
    }
    Run {
        prompt_tokens,
        context_ms,
        text: out,
        tokens: middle.len(),
        finish: finish_reason,
        completion_tokens,
        health,
    }
}

/// The whole life of a loaded model, in the order the daemon drives one: each step starts
/// from the state the one before left (loaded, soft-unloaded, what greedy decoding says).
#[test]
fn load_generate_unload() {
    let w = Worker::start();
    let model = tiny_model(w.dir.path(), "tiny.gguf", true);
    let h = tiny_loads(&w, &model);
    let req = text("hello world, the model", greedy(24));
    let a = greedy_is_deterministic(&w, &req, &h);
    max_tokens_and_stop_sequences_end_the_text(&w, &a);
    seeds_and_chat_templates(&w);
    soft_unload_and_restore_recreate_the_context(&w, &req, &a, &h);
    hard_unload_frees_everything(&w, &req, &model);
}

/// An empty worker, then the tiny model: the load reports the context in effect and health
/// the bytes by part (weights, the KV cache by its formula, compute from llama.cpp's log).
/// Returns the health after the load.
fn tiny_loads(w: &Worker, model: &Path) -> Health {
    let h = w.health();
    assert_eq!(h.state, WorkerState::Empty);
    assert_eq!(h.bytes.total, 0);
    assert_eq!(h.pid, w.child.id());

    let r = w.post(LOAD, &load_request("tiny", model, 0));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), w.log());
    let loaded: LoadResponse = r.json();
    eprintln!("load: {loaded:?}");
    // Which CPU code llama.cpp runs (its default build: AVX2 where the build machine has
    // it), and this CPU's level.
    let cpu = loaded.health.cpu.clone().expect("the CPU code");
    assert!(
        cpu.starts_with("x86-64") && cpu.contains(" build (") && cpu.contains(" CPU"),
        "{cpu}"
    );
    assert_eq!(loaded.train_context_length, 512);
    assert_eq!(loaded.context_length, 512, "0 means the training context");
    assert!(loaded.has_chat_template);
    let h = loaded.health.clone();
    assert_eq!(h.state, WorkerState::Loaded);
    assert_eq!(h.model.as_deref(), Some("tiny"));
    assert_eq!(h.device, "cpu");
    assert!(h.bytes.weights > 0);
    // 2 (K, V) · 2 layers · 512 cells · 64 wide · 2 bytes (f16).
    assert_eq!(h.bytes.context, 2 * 2 * 512 * 64 * 2);
    assert!(h.bytes.compute > 0, "compute buffers come from llama.cpp's log: {h:?}");
    assert_eq!(h.bytes.total, h.bytes.weights + h.bytes.context + h.bytes.compute);
    assert_eq!(h.peak_bytes, h.bytes.total);
    assert_eq!(w.health(), h);
    h
}

/// Greedy is deterministic, and the stream's counts agree with what it carried. Returns the
/// greedy run of `req`, which later steps compare with.
fn greedy_is_deterministic(w: &Worker, req: &GenerateRequest, h: &Health) -> Run {
    let t = Instant::now();
    let a = generate(w, req);
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "generation: {:?} ({} tokens in {secs:.3}s, {:.0} tokens/s end to end)",
        a,
        a.completion_tokens,
        f64::from(a.completion_tokens) / secs
    );
    let b = generate(w, req);
    assert_eq!(a.text, b.text);
    assert_eq!(a.completion_tokens, b.completion_tokens);
    assert!(a.prompt_tokens > 1);
    assert_eq!(a.context_ms, 0, "the context was there");
    assert!(a.tokens as u32 <= a.completion_tokens);
    assert_eq!(a.health.state, WorkerState::Loaded);
    assert_eq!(a.health.bytes, h.bytes);
    if a.finish == FinishReason::Length {
        assert_eq!(a.completion_tokens, 24);
    }
    a
}

/// `max_tokens` ends with `length`; a stop sequence cuts the text before it and is not
/// emitted. Both are checked against the greedy text `a` of the same prompt.
fn max_tokens_and_stop_sequences_end_the_text(w: &Worker, a: &Run) {
    let short = generate(w, &text("hello world, the model", greedy(3)));
    assert_eq!(short.finish, FinishReason::Length, "{short:?}");
    assert_eq!(short.completion_tokens, 3);
    assert!(a.text.starts_with(&short.text), "{a:?} / {short:?}");

    let chars: Vec<char> = a.text.chars().collect();
    if chars.len() >= 8 {
        let stop: String = chars[4..7].iter().collect();
        let cut = &a.text[..a.text.find(&stop).unwrap()];
        let mut p = greedy(24);
        p.stop = vec![stop.clone()];
        let s = generate(w, &text("hello world, the model", p));
        assert_eq!(s.finish, FinishReason::Stop, "{s:?}");
        assert_eq!(s.text, cut, "stop {stop:?}");
    } else {
        eprintln!("greedy text too short for the stop check: {:?}", a.text);
    }
}

/// Sampling with a seed is reproducible too; chat goes through the model's ChatML template,
/// and a chat without messages is refused.
fn seeds_and_chat_templates(w: &Worker) {
    let seeded = SamplingParams {
        max_tokens: Some(16),
        temperature: 0.9,
        seed: Some(7),
        repeat_penalty: 1.1,
        ..SamplingParams::default()
    };
    let s1 = generate(w, &text("the", seeded.clone()));
    let s2 = generate(w, &text("the", seeded));
    assert_eq!(s1.text, s2.text);

    let c = generate(w, &chat("hello", greedy(8)));
    assert!(c.prompt_tokens > 5, "{c:?}");
    let mut empty = chat("", greedy(8));
    empty.input = Input::Chat { messages: vec![] };
    w.post(GENERATE, &empty).expect_error(400, ErrorCode::InvalidRequest);
}

/// Soft unload frees the context, keeps the weights; the next generation recreates it, at
/// the same size. Restore recreates a dropped context ahead of the next request (which then
/// finds it), and is a no-op otherwise.
fn soft_unload_and_restore_recreate_the_context(w: &Worker, req: &GenerateRequest, a: &Run, h: &Health) {
    let s = w.unload(UnloadMode::Soft);
    assert_eq!(s.state, WorkerState::SoftUnloaded);
    assert_eq!(s.bytes.weights, h.bytes.weights);
    assert_eq!((s.bytes.context, s.bytes.compute), (0, 0));
    assert_eq!(s.bytes.total, h.bytes.weights);
    assert_eq!(s.peak_bytes, h.bytes.total);
    let again = generate(w, req);
    assert_eq!(again.text, a.text);
    assert_eq!(again.health.state, WorkerState::Loaded);
    assert_eq!(again.health.bytes, h.bytes, "context recreated at the same size");
    eprintln!("context recreated in {} ms", again.context_ms);

    w.unload(UnloadMode::Soft);
    let r = w.post(RESTORE, &serde_json::json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    let restored: RestoreResponse = r.json();
    assert_eq!(restored.health.state, WorkerState::Loaded);
    assert_eq!(
        restored.health.bytes, h.bytes,
        "the same context as before the soft unload"
    );
    assert_eq!(w.health().bytes, h.bytes);
    let r = w.post(RESTORE, &serde_json::json!({}));
    assert_eq!(r.json::<RestoreResponse>().context_ms, 0, "nothing to restore");
    let after = generate(w, req);
    assert_eq!(after.context_ms, 0, "the restored context was used");
    assert_eq!(after.text, a.text);
}

/// Hard unload frees everything; generation and restore are then refused. A load after that
/// works again, with a context length clamped to the model's training context.
fn hard_unload_frees_everything(w: &Worker, req: &GenerateRequest, model: &Path) {
    let e = w.unload(UnloadMode::Hard);
    assert_eq!(e.state, WorkerState::Empty);
    assert_eq!(e.bytes.total, 0);
    assert_eq!(e.model, None);
    let r = w.post(GENERATE, req);
    r.expect_error(409, ErrorCode::NotLoaded);
    w.post(RESTORE, &serde_json::json!({}))
        .expect_error(409, ErrorCode::NotLoaded);

    let r = w.post(LOAD, &load_request("tiny", model, 100_000));
    assert_eq!(r.status, 200, "{}", r.text());
    let l: LoadResponse = r.json();
    assert_eq!(l.context_length, 512);
}

/// Files llama.cpp cannot load, bodies that are not the protocol, and requests a loaded
/// model refuses: each is the protocol's error, and the worker stays up.
#[test]
fn bad_files_and_bad_requests() {
    let w = Worker::start();
    let model = tiny_model(w.dir.path(), "tiny.gguf", false);
    bad_files_fail_the_load(&w, &model);

    // Bodies that are not the protocol.
    w.post_raw(LOAD, "{\"model\":")
        .expect_error(400, ErrorCode::InvalidRequest);
    w.post_raw(UNLOAD, "{\"mode\":\"gentle\"}")
        .expect_error(400, ErrorCode::InvalidRequest);
    assert_eq!(w.get("/internal/nothing").status, 404);
    assert_eq!(w.get(LOAD).status, 405);

    requests_the_model_cannot_serve(&w, &model);
}

/// A truncated file (llama.cpp says why), garbage and a missing file: `load_failed`, and the
/// worker stays up and empty.
fn bad_files_fail_the_load(w: &Worker, model: &Path) {
    let bytes = std::fs::read(model).unwrap();
    let truncated = w.path("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let r = w.post(LOAD, &load_request("broken", &truncated, 0));
    let e = r.expect_error(422, ErrorCode::LoadFailed);
    eprintln!("truncated: {}", e.message);
    assert!(e.message.contains("truncated.gguf"), "{e:?}");
    let h = w.health();
    assert_eq!(h.state, WorkerState::Empty);
    assert_eq!(h.bytes.total, 0);

    let garbage = w.path("garbage.gguf");
    std::fs::write(&garbage, b"GGUF this is not a model").unwrap();
    let e = w
        .post(LOAD, &load_request("g", &garbage, 0))
        .expect_error(422, ErrorCode::LoadFailed);
    eprintln!("garbage: {}", e.message);
    let missing = w.path("missing.gguf");
    w.post(LOAD, &load_request("m", &missing, 0))
        .expect_error(422, ErrorCode::LoadFailed);
    assert_eq!(w.health().state, WorkerState::Empty);
}

/// `model` (no chat template) loaded with a 256-token context: it refuses chat before
/// streaming but takes text; a prompt that does not fit is refused with both numbers in the
/// message, sampling parameters out of range are refused, and a context that fills up ends
/// with `length` before `max_tokens`.
fn requests_the_model_cannot_serve(w: &Worker, model: &Path) {
    let r = w.post(LOAD, &load_request("plain", model, 256));
    assert_eq!(r.status, 200, "{}", r.text());
    let l: LoadResponse = r.json();
    assert!(!l.has_chat_template);
    assert_eq!(l.context_length, 256);
    let e = w
        .post(GENERATE, &chat("hi", greedy(4)))
        .expect_error(400, ErrorCode::NoChatTemplate);
    eprintln!("no template: {}", e.message);
    let ok = generate(w, &text("hi", greedy(4)));
    assert!(ok.completion_tokens <= 4);

    let long = "x".repeat(600);
    let e = w
        .post(GENERATE, &text(&long, greedy(4)))
        .expect_error(400, ErrorCode::PromptTooLong);
    assert!(e.message.contains("256"), "{e:?}");
    eprintln!("too long: {}", e.message);

    let bad = SamplingParams {
        top_p: 0.0,
        ..greedy(4)
    };
    w.post(GENERATE, &text("hi", bad))
        .expect_error(400, ErrorCode::InvalidRequest);

    let prompt = "y".repeat(200);
    let full = generate(w, &text(&prompt, greedy(1000)));
    eprintln!("context full: {full:?}");
    if full.finish == FinishReason::Length {
        assert_eq!(full.prompt_tokens + full.completion_tokens, 256 + 1, "{full:?}");
    }
    assert_eq!(w.health().state, WorkerState::Loaded);
}

#[test]
fn cancellation_queueing_and_exit_on_stdin_eof() {
    let mut w = Worker::start();
    // Bigger than the default and with a long context, so that a long generation takes
    // seconds rather than milliseconds.
    let spec = TinyLlamaSpec {
        n_embd: 256,
        n_ff: 512,
        n_layer: 4,
        n_ctx_train: 4096,
        ..TinyLlamaSpec::default()
    };
    let model = model_with(w.dir.path(), "bigger.gguf", &spec);
    let r = w.post(LOAD, &load_request("bigger", &model, 0));
    assert_eq!(r.status, 200, "{}", r.text());
    let loaded: LoadResponse = r.json();
    eprintln!("bigger model: {loaded:?}");

    // How long is the greedy path, and how fast?
    let probe = generate(&w, &text("the", greedy(256)));
    eprintln!("probe: {} tokens, {:?}", probe.completion_tokens, probe.finish);

    // The client reads `started` and one token, then hangs up.
    let (status, mut events) = w.stream(&text("the", greedy(4000)));
    assert_eq!(status, 200);
    assert!(matches!(events.next_event(), Some(GenerateEvent::Started { .. })));
    // Health answers while the generation streams.
    let mid = w.health();
    assert!(matches!(mid.state, WorkerState::Busy | WorkerState::Loaded), "{mid:?}");
    eprintln!("health mid-generation: {:?}", mid.state);
    assert!(matches!(events.next_event(), Some(GenerateEvent::Token { .. })));
    drop(events);

    // The next request is served after the cancelled one.
    let after = generate(&w, &text("hello", greedy(4)));
    assert!(after.completion_tokens <= 4);
    assert_eq!(w.health().state, WorkerState::Loaded);
    let log = w.log();
    if probe.finish == FinishReason::Length {
        // The greedy path runs past 256 tokens: only the hang-up can have ended it early.
        assert!(log.contains("generation cancelled after"), "{log}");
    }

    // Two concurrent requests are served one after the other, both complete.
    let w2 = &w;
    std::thread::scope(|s| {
        let a = s.spawn(|| generate(w2, &text("one", greedy(32))));
        let b = s.spawn(|| generate(w2, &text("two", greedy(32))));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        assert!(a.completion_tokens > 0 && b.completion_tokens > 0);
    });

    // The daemon going away closes our stdin: the worker exits 0.
    w.close_stdin();
    let status = w.wait_exit(Duration::from_secs(10)).expect("worker exits on stdin EOF");
    assert!(status.success(), "{status}\n{}", w.log());
    let log = w.log();
    eprintln!("--- worker log ---\n{log}");
    assert!(log.contains("stdin closed"), "{log}");
    assert!(!w.socket.exists(), "the worker removes its socket");
}
