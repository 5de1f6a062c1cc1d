//! The prompt cache: a conversation's next turn decodes only its new tokens (the worker's
//! own count, `usage.prompt_tokens_details.cached_tokens`), and a soft unload keeps the KV in
//! host memory so the turn after it needs no prefill either; greedy answers are the same
//! with and without the cache.

use serde_json::{json, Value};

use crate::llm::{start, ModelFile};
use crate::util::ok;

fn chat(l: &crate::llm::Llm, messages: &Value) -> Value {
    let body = json!({"model": "chat", "temperature": 0, "seed": 3, "max_tokens": 8, "messages": messages});
    ok(l.d.post_json("/v1/chat/completions", &body.to_string()))
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap()
}

fn prompt(v: &Value) -> u64 {
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[test]
fn the_next_turn_decodes_only_its_new_tokens() {
    let Some(l) = start(
        &[("chat", ModelFile::Tiny { template: true })],
        "context_length = 512\n",
    ) else {
        return;
    };
    let mut messages = json!([{"role": "user", "content": "Tell me a story about a cat"}]);
    let first = chat(&l, &messages);
    assert_eq!(cached(&first), 0, "nothing to reuse yet: {first}");
    let answer = first["choices"][0]["message"]["content"].clone();
    messages.as_array_mut().unwrap().extend([
        json!({"role": "assistant", "content": answer}),
        json!({"role": "user", "content": "And then?"}),
    ]);
    let second = chat(&l, &messages);
    // The whole first prompt is a prefix of the second: at least that much is reused, and
    // what was decoded is the rest only.
    assert!(cached(&second) >= prompt(&first), "{first}\n{second}");
    assert!(cached(&second) < prompt(&second));

    // The same request again: all but the last prompt token come from the cache, and greedy
    // gives the same answer as when everything was decoded.
    let again = chat(&l, &messages);
    assert_eq!(cached(&again), prompt(&again) - 1, "{again}");
    assert_eq!(
        again["choices"][0]["message"]["content"],
        second["choices"][0]["message"]["content"]
    );
}

#[test]
fn a_soft_unload_keeps_the_kv_in_host_memory() {
    let Some(l) = start(
        &[("chat", ModelFile::Tiny { template: true })],
        "context_length = 512\n",
    ) else {
        return;
    };
    let messages = json!([{"role": "user", "content": "Write a poem about the sea"}]);
    let before = chat(&l, &messages);
    let r = l.d.post_json("/v1/models/chat/unload", r#"{"mode":"soft"}"#);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(l.d.model_status("chat")["state"], "soft_unloaded");
    // The event says what was kept, in bytes and in words.
    let soft = crate::util::events(&l.d)
        .into_iter()
        .find(|e| e["type"] == "model_soft_unloaded")
        .expect("a model_soft_unloaded event");
    let kept = soft["kept_bytes"].as_u64().unwrap();
    assert!(kept > 0, "{soft}");
    assert_eq!(l.d.model_status("chat")["bytes"]["host"], kept);
    assert!(
        soft["text"]
            .as_str()
            .unwrap()
            .contains("its conversations are kept in RAM"),
        "{soft}"
    );
    let after = chat(&l, &messages);
    assert_eq!(cached(&after), prompt(&after) - 1, "restored without prefill: {after}");
    assert_eq!(
        after["choices"][0]["message"]["content"],
        before["choices"][0]["message"]["content"]
    );

    // With no host memory for it, the context comes back empty.
    let Some(l) = start(
        &[("chat", ModelFile::Tiny { template: true })],
        "context_length = 512\nkv_ram = 0\n",
    ) else {
        return;
    };
    chat(&l, &messages);
    assert_eq!(
        l.d.post_json("/v1/models/chat/unload", r#"{"mode":"soft"}"#).status,
        200
    );
    assert_eq!(cached(&chat(&l, &messages)), 0);
    let soft = crate::util::events(&l.d)
        .into_iter()
        .find(|e| e["type"] == "model_soft_unloaded")
        .unwrap();
    assert_eq!(soft["kept_bytes"], 0, "{soft}");
}

/// A WebUI's background generations (not streamed) queued in the worker do not hold up a
/// person's streamed chat: it is served as soon as the running one ends, before them.
#[test]
fn a_streamed_chat_goes_before_queued_background_generations() {
    // One slot, so that the background generations queue in the worker.
    let Some(l) = start(&[("chat", ModelFile::Slow)], "context_length = 2048\nparallel = 1\n") else {
        return;
    };
    let background = |i: u32| {
        let body = json!({"model": "chat", "prompt": format!("title {i}"), "max_tokens": 400, "temperature": 0});
        crate::util::post_in_background(&l.d.socket, "/v1/completions", body)
    };
    let first = background(0);
    l.d.wait_model("chat", std::time::Duration::from_secs(20), |m| m["state"] == "busy");
    let rest: Vec<_> = (1..=3).map(background).collect();
    std::thread::sleep(std::time::Duration::from_millis(100)); // all three queued in the worker
    let started = std::time::Instant::now();
    let body = json!({"model": "chat", "prompt": "hi", "max_tokens": 4, "temperature": 0, "stream": true});
    let r = crate::util::post_in_background(&l.d.socket, "/v1/completions", body)
        .join()
        .unwrap();
    let streamed = started.elapsed();
    assert_eq!(r.status, 200);
    // It waited for the running generation only: the three queued ones are still running.
    let still = rest.iter().filter(|h| !h.is_finished()).count();
    assert!(
        still >= 2,
        "the streamed chat waited behind the queued ones ({streamed:?})"
    );
    for h in rest.into_iter().chain([first]) {
        assert_eq!(h.join().unwrap().status, 200);
    }
}
