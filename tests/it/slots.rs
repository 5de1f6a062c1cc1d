//! Parallel slots (`[[models]] parallel`) in the real llama.cpp worker: streams on one model
//! run at once in one batch, a conversation keeps its KV while other requests use another
//! slot, and a soft unload keeps every slot's KV. Each test also runs `parallel = 1`, where
//! the opposite must show, so that none passes by accident.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::llm::{start, ModelFile};
use crate::util::{next_data, ok, open_stream};

/// Reads a streamed completion to its end: the instant of each token, and whether `[DONE]`
/// came.
fn read_stream(mut r: std::io::BufReader<std::os::unix::net::UnixStream>) -> (Vec<Instant>, bool) {
    let mut times = Vec::new();
    while let Some(d) = next_data(&mut r) {
        if d == "[DONE]" {
            return (times, true);
        }
        let v: Value = serde_json::from_str(&d).unwrap();
        if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
            times.push(Instant::now());
        }
    }
    (times, false)
}

/// Two streams sent one after the other; returns each one's token instants and the
/// `request_queued` events (a request that waited for a slot).
fn two_streams(parallel: u32) -> Option<(Vec<Instant>, Vec<Instant>, Vec<Value>)> {
    let l = start(
        &[("chat", ModelFile::Slow)],
        &format!("context_length = 512\nparallel = {parallel}\n"),
    )?;
    ok(l.d.post_json("/v1/models/chat/load", ""));
    let body = |prompt: &str| {
        // A bias against nothing in particular keeps greedy decoding; 40 tokens each.
        json!({"model": "chat", "prompt": prompt, "max_tokens": 40, "temperature": 0, "stream": true})
    };
    let a = open_stream(&l.d, &body("the first story"));
    let a = std::thread::spawn(move || read_stream(a));
    l.d.wait_model("chat", Duration::from_secs(20), |m| m["state"] == "busy");
    let b = read_stream(open_stream(&l.d, &body("another story")));
    let a = a.join().unwrap();
    assert!(a.1 && b.1, "both streams end with [DONE]");
    assert!(!a.0.is_empty() && !b.0.is_empty());
    let queued = crate::util::events(&l.d)
        .into_iter()
        .filter(|e| e["type"] == "request_queued")
        .collect();
    Some((a.0, b.0, queued))
}

#[test]
fn two_streams_on_one_model_run_at_once_and_interleave() {
    let Some((a, b, queued)) = two_streams(2) else { return };
    assert!(queued.is_empty(), "the second stream took the free slot: {queued:?}");
    let (b_first, a_last) = (b[0], *a.last().unwrap());
    assert!(b_first < a_last, "the second stream started while the first ran");
    let a_after = a.iter().filter(|t| **t > b_first).count();
    assert!(
        a_after >= 2,
        "the first stream went on alongside: {a_after} tokens after"
    );

    // With one slot the second stream waits for the first to end: the worker queues it. (Not
    // the token instants: two client threads can read their sockets late, out of order.)
    let Some((_, _, queued)) = two_streams(1) else { return };
    assert_eq!(queued.len(), 1, "one slot serves one stream at a time: {queued:?}");
    assert!(
        queued[0]["reason"].as_str().unwrap().contains("every slot busy (1)"),
        "{queued:?}"
    );
}

fn chat(l: &crate::llm::Llm, messages: &Value) -> Value {
    let body = json!({"model": "chat", "temperature": 0, "max_tokens": 8, "messages": messages});
    ok(l.d.post_json("/v1/chat/completions", &body.to_string()))
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

fn prompt(v: &Value) -> u64 {
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

/// A conversation's turn, a background request (a title, as a WebUI sends), the next turn:
/// the cached tokens of that turn and of the background request sent again.
fn turn_after_background(parallel: u32, soft_unload: bool) -> Option<(Value, Value, Value, Value)> {
    let l = start(
        &[("chat", ModelFile::Tiny { template: true })],
        &format!("context_length = 512\nparallel = {parallel}\n"),
    )?;
    let mut messages = json!([{"role": "user", "content": "Tell me a story about a cat"}]);
    let first = chat(&l, &messages);
    let title = json!([{"role": "system", "content": "Generate a concise title."}, {"role": "user", "content": "### Task: a title for the chat about a cat"}]);
    chat(&l, &title);
    if soft_unload {
        ok(l.d.post_json("/v1/models/chat/unload", r#"{"mode":"soft"}"#));
        assert_eq!(l.d.model_status("chat")["state"], "soft_unloaded");
    }
    let answer = first["choices"][0]["message"]["content"].clone();
    messages.as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": answer}),
        json!({"role": "user", "content": "And then?"}),
    ]);
    let second = chat(&l, &messages);
    let title_again = chat(&l, &title);
    Some((first, second, title_again, l.d.model_status("chat")))
}

#[test]
fn a_conversation_keeps_its_kv_while_a_background_request_uses_another_slot() {
    let Some((first, second, title, m)) = turn_after_background(2, false) else {
        return;
    };
    assert!(cached(&second) >= prompt(&first), "{first}\n{second}");
    assert_eq!(
        cached(&title),
        prompt(&title) - 1,
        "the title's slot kept it too: {title}"
    );
    assert_eq!(m["context_length"], 512, "each slot has the configured context: {m}");

    // One slot: the background request took the conversation's KV.
    let Some((first, second, _, _)) = turn_after_background(1, false) else {
        return;
    };
    assert!(cached(&second) < prompt(&first), "{first}\n{second}");
}

#[test]
fn a_soft_unload_keeps_every_slots_kv_in_host_memory() {
    let Some((first, second, title, _)) = turn_after_background(2, true) else {
        return;
    };
    assert!(cached(&second) >= prompt(&first), "restored: {first}\n{second}");
    assert_eq!(cached(&title), prompt(&title) - 1, "restored: {title}");
}

/// A streamed request that finds every slot taken gets its headers at once and is told to be
/// waiting for a slot (`request_queued`), then runs when the slot frees.
#[test]
fn a_stream_that_waits_for_a_slot_gets_headers_at_once_and_is_told_why() {
    let Some(l) = start(&[("chat", ModelFile::Slow)], "context_length = 512\nparallel = 1\n") else {
        return;
    };
    ok(l.d.post_json("/v1/models/chat/load", ""));
    let body = |prompt: &str, n: u32| json!({"model": "chat", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": true});
    // Long enough to be running still when the second asks, on a loaded machine too.
    let first = open_stream(&l.d, &body("the first story", 400));
    let first = std::thread::spawn(move || read_stream(first));
    l.d.wait_model("chat", Duration::from_secs(20), |m| m["state"] == "busy");
    let asked = Instant::now();
    let mut second = open_stream(&l.d, &body("another story", 8));
    let mut status = String::new();
    std::io::BufRead::read_line(&mut second, &mut status).unwrap();
    let headers_after = asked.elapsed();
    assert!(status.contains("200"), "{status}");
    let (second_times, done) = read_stream(second);
    let (first_times, _) = first.join().unwrap();
    assert!(done && !second_times.is_empty());
    assert!(
        asked + headers_after < *first_times.last().unwrap(),
        "the headers came while the first stream still ran ({headers_after:?})"
    );
    let queued: Vec<_> = crate::util::events(&l.d)
        .into_iter()
        .filter(|e| e["type"] == "request_queued")
        .collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["position"], 1);
    assert!(
        queued[0]["reason"].as_str().unwrap().contains("every slot busy (1)"),
        "{queued:?}"
    );
    let finished: Vec<_> = crate::util::events(&l.d)
        .into_iter()
        .filter(|e| e["type"] == "request_finished" && e["request_id"] == queued[0]["request_id"])
        .collect();
    assert_eq!(finished.len(), 1, "its story ends once: {finished:?}");
    assert_eq!(finished[0]["queued"], true);
}
