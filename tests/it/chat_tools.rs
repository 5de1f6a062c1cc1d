//! Chat for real clients, end to end through the daemon and the real llama.cpp worker on the
//! tiny random-weight model: no hidden `max_tokens`, the model's own Jinja template (a real
//! one, Qwen 2.5's, carried in the GGUF), forced tool calls and structured output held by a
//! grammar, logprobs, logit bias, embeddings, and the errors of bad input.
//!
//! Random weights write nonsense, so every constrained output here is bounded by its schema
//! (enums, integer ranges): the grammar makes it valid; the schema makes it end.

use std::path::Path;

use serde_json::{json, Value};

use crate::llm::{start, Llm, ModelFile};
use crate::util::ok;

fn qwen_template() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    std::fs::read_to_string(path).unwrap()
}

fn tool_model(extra: &str) -> Option<Llm> {
    start(&[("qwen", ModelFile::TinyWith(qwen_template()))], extra)
}

/// A weather tool whose arguments are bounded: a city from a list and 1 to 7 days.
fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city",
        "parameters": {"type": "object", "additionalProperties": false,
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"]}}})
}

fn time_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}}})
}

fn ask(extra: Value) -> String {
    let mut body = json!({"model": "qwen", "temperature": 0, "seed": 1,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

/// The arguments of a call, checked against the weather tool's schema by hand.
fn check_weather_args(call: &Value) {
    assert_eq!(call["type"], "function", "{call}");
    assert_eq!(call["function"]["name"], "get_weather", "{call}");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{call}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let city = args["city"].as_str().unwrap();
    assert!(["Paris", "Oslo", "Lima"].contains(&city), "{args}");
    let days = args["days"].as_i64().unwrap();
    assert!((1..=7).contains(&days), "{args}");
    assert_eq!(args.as_object().unwrap().len(), 2, "no other keys: {args}");
}

#[test]
fn without_max_tokens_a_chat_runs_until_the_context_is_full() {
    let Some(l) = start(
        &[("chat", ModelFile::Tiny { template: true })],
        "context_length = 400\n",
    ) else {
        return;
    };
    let body = json!({"model": "chat", "temperature": 0, "seed": 1,
        "messages": [{"role": "user", "content": "Hi"}]});
    let v = ok(l.d.post_json("/v1/chat/completions", &body.to_string()));
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap();
    let prompt = v["usage"]["prompt_tokens"].as_u64().unwrap();
    // Random weights rarely emit an end token: the answer runs to the end of the context,
    // far past the 256 tokens an old hidden default stopped at.
    if v["choices"][0]["finish_reason"] == "length" {
        assert!(prompt + completion >= 399, "{v}");
        assert!(completion > 256, "{v}");
    }
}

#[test]
fn a_named_tool_choice_forces_a_valid_call() {
    let Some(l) = tool_model("context_length = 2048\n") else {
        return;
    };
    let body = ask(json!({"tools": [weather_tool(), time_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
    let v = ok(l.d.post_json("/v1/chat/completions", &body));
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"]["content"].is_null(), "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert!(!calls.is_empty());
    calls.iter().for_each(check_weather_args);

    // `required` without parallel calls: exactly one call, of either tool.
    let body = ask(
        json!({"tools": [weather_tool(), time_tool()], "tool_choice": "required",
        "parallel_tool_calls": false}),
    );
    let v = ok(l.d.post_json("/v1/chat/completions", &body));
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "{v}");
    let name = calls[0]["function"]["name"].as_str().unwrap();
    assert!(["get_weather", "get_time"].contains(&name), "{v}");
}

#[test]
fn a_forced_call_streams_as_openai_streams_it() {
    let Some(l) = tool_model("context_length = 2048\n") else {
        return;
    };
    let body = ask(json!({"stream": true, "tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "stream_options": {"include_usage": true}}));
    let r = l.d.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    let events = crate::util::sse_data(&r.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0]["index"], 0);
    check_weather_args(calls[0]);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).map(|c| &c["finish_reason"]))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"],
        json!([]),
        "include_usage: a last chunk without choices"
    );
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
}

/// With `tool_choice: auto` the model decides; here a GBNF grammar (llama.cpp's `grammar`
/// extension) makes the random model write text and then a call in Qwen's own syntax, which
/// the daemon finds in the stream: the text stays content, the call becomes `tool_calls`.
#[test]
fn a_call_the_model_writes_in_its_own_syntax_becomes_tool_calls() {
    let Some(l) = tool_model("context_length = 2048\n") else {
        return;
    };
    let gbnf = r#"root ::= "Let me check." "\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"days\": 3}}\n</tool_call>""#;
    for stream in [false, true] {
        let body = ask(json!({"tools": [weather_tool()], "grammar": gbnf, "stream": stream}));
        let r = l.d.post_json("/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let (content, calls, finish) = if stream {
            let events = crate::util::sse_data(&r.body);
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let content: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            let calls: Vec<Value> = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
                .collect();
            let finish = chunks
                .iter()
                .rev()
                .find_map(|c| c["choices"][0]["finish_reason"].as_str().map(str::to_owned));
            (content, calls, finish.unwrap())
        } else {
            let v = r.json();
            let m = &v["choices"][0]["message"];
            let calls = m["tool_calls"].as_array().cloned().unwrap_or_default();
            let finish = v["choices"][0]["finish_reason"].as_str().unwrap().to_owned();
            (m["content"].as_str().unwrap_or("").to_owned(), calls, finish)
        };
        assert_eq!(content.trim(), "Let me check.", "stream {stream}");
        assert_eq!(calls.len(), 1, "stream {stream}: {calls:?}");
        check_weather_args(&calls[0]);
        assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Oslo","days":3}"#);
        assert_eq!(finish, "tool_calls");
    }
    // A grammar and a forced call cannot both hold the output.
    let both = ask(json!({"tools": [weather_tool()], "grammar": gbnf, "tool_choice": "required"}));
    let e = l.d.post_json("/v1/chat/completions", &both).error(400);
    assert_eq!(e["param"], "grammar", "{e}");
}

#[test]
fn structured_output_always_parses_and_matches_the_schema() {
    let Some(l) = tool_model("context_length = 2048\n") else {
        return;
    };
    let schema = json!({"type": "object", "additionalProperties": false,
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]},
                       "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
                       "sure": {"type": "boolean"}},
        "required": ["answer", "confidence", "sure"]});
    for seed in [1, 2, 3] {
        let body = ask(
            json!({"seed": seed, "temperature": 0.8, "response_format": {"type": "json_schema",
            "json_schema": {"name": "verdict", "strict": true, "schema": schema}}}),
        );
        let v = ok(l.d.post_json("/v1/chat/completions", &body));
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
        assert!(["yes", "no"].contains(&parsed["answer"].as_str().unwrap()), "{parsed}");
        assert!((0..=100).contains(&parsed["confidence"].as_i64().unwrap()), "{parsed}");
        assert!(parsed["sure"].is_boolean(), "{parsed}");
    }
    // json_object: some JSON object (bounded here by max_tokens, so only the start is
    // checked when it is cut).
    let body = ask(json!({"response_format": {"type": "json_object"}, "max_tokens": 40}));
    let v = ok(l.d.post_json("/v1/chat/completions", &body));
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(content.trim_start().starts_with('{'), "{content:?}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(content).unwrap().is_object());
    }
}

#[test]
fn logprobs_and_logit_bias() {
    let Some(l) = tool_model("context_length = 2048\n") else {
        return;
    };
    let body = ask(json!({"max_tokens": 6, "logprobs": true, "top_logprobs": 2}));
    let v = ok(l.d.post_json("/v1/chat/completions", &body));
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    // One entry per generated token, held-back text (a partial character) included.
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        "{v}"
    );
    for entry in content {
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0, "{entry}");
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2, "{entry}");
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64(), "{entry}");
    }
    // Legacy completions: `logprobs: N` and the old shape.
    let body = json!({"model": "qwen", "prompt": "Once", "max_tokens": 4, "temperature": 0, "logprobs": 2});
    let c = ok(l.d.post_json("/v1/completions", &body.to_string()));
    let lp = &c["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty(), "{c}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), tokens.len());
    assert_eq!(lp["text_offset"][0], 0);
    assert!(
        lp["top_logprobs"][0]
            .as_object()
            .is_some_and(|o| !o.is_empty() && o.len() <= 2),
        "{c}"
    );
    // The tiny vocabulary has byte `b` as token 5 + b: a +100 bias on `Z` makes every
    // greedy pick a `Z`.
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(!text.starts_with("ZZZ"), "{text:?}");
    let z = 5 + u32::from(b'Z');
    let body = ask(json!({"max_tokens": 6, "logit_bias": {z.to_string(): 100}}));
    let v = ok(l.d.post_json("/v1/chat/completions", &body));
    assert_eq!(v["choices"][0]["message"]["content"], "ZZZZZZ", "{v}");
}

#[test]
fn bad_chat_input_is_a_400_naming_the_problem_and_nothing_breaks() {
    let Some(l) = tool_model("context_length = 2048\n") else {
        return;
    };
    let orphan = json!({"model": "qwen", "messages": [
        {"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_9", "content": "42"}]});
    let e = l.d.post_json("/v1/chat/completions", &orphan.to_string()).error(400);
    assert_eq!(e["param"], "messages", "{e}");
    assert!(e["message"].as_str().unwrap().contains("call_9"), "{e}");
    let unknown = ask(json!({"tools": [weather_tool()],
        "tool_choice": {"type": "function", "function": {"name": "launch"}}}));
    let e = l.d.post_json("/v1/chat/completions", &unknown).error(400);
    assert_eq!(e["param"], "tool_choice", "{e}");
    let not_schema = ask(json!({"response_format": {"type": "json_schema", "json_schema": {"schema": [1, 2]}}}));
    let e = l.d.post_json("/v1/chat/completions", &not_schema).error(400);
    assert_eq!(e["param"], "response_format", "{e}");
    let bad_ref = ask(
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema":
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}}}}),
    );
    let e = l.d.post_json("/v1/chat/completions", &bad_ref).error(400);
    assert!(e["message"].as_str().unwrap().contains("grammar"), "{e}");
    // The worker and the daemon are fine.
    let v = ok(l.d.post_json("/v1/chat/completions", &ask(json!({"max_tokens": 3}))));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
}

#[test]
fn a_template_that_raises_is_a_400_with_its_message() {
    let raising = "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m.content }}{% endfor %}";
    let Some(l) = start(
        &[("strict", ModelFile::TinyWith(raising.into()))],
        "context_length = 256\n",
    ) else {
        return;
    };
    let body = json!({"model": "strict", "max_tokens": 2, "messages": [
        {"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]});
    let e = l.d.post_json("/v1/chat/completions", &body.to_string()).error(400);
    assert!(e["message"].as_str().unwrap().contains("roles must alternate"), "{e}");
    let body = json!({"model": "strict", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
    ok(l.d.post_json("/v1/chat/completions", &body.to_string()));
}

#[test]
fn embeddings_are_pooled_unit_vectors_from_an_embedding_model() {
    let Some(l) = start(
        &[("embed", ModelFile::Tiny { template: false })],
        "embeddings = true\ncontext_length = 128\n",
    ) else {
        return;
    };
    let body = json!({"model": "embed", "input": ["a cat", "a dog on a mat"]});
    let v = ok(l.d.post_json("/v1/embeddings", &body.to_string()));
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let width = data[0]["embedding"].as_array().unwrap().len();
    assert!(width > 0);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        let e: Vec<f64> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(e.len(), width);
        let norm: f64 = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit length, got {norm}");
    }
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 2);
    let b64 = json!({"model": "embed", "input": "a cat", "encoding_format": "base64"});
    let v = ok(l.d.post_json("/v1/embeddings", &b64.to_string()));
    assert!(v["data"][0]["embedding"].is_string());
    let e =
        l.d.post_json(
            "/v1/chat/completions",
            &json!({"model": "embed", "messages": [{"role": "user", "content": "x"}]}).to_string(),
        )
        .error(400);
    assert_eq!(e["param"], "model");
    assert_eq!(l.d.model_status("embed")["state"], "loaded", "counted like any model");
}

/// The official `openai` client, over the Unix socket and over the loopback TCP listener:
/// a forced call (also streamed, and sent back in the history with its tool answer) whose
/// arguments validate, and a `json_schema` answer that parses and validates.
#[test]
fn the_openai_python_client_gets_tool_calls_and_structured_output() {
    if !crate::util::python_has("openai, httpx") {
        return;
    }
    let port = crate::util::free_port();
    let Some(l) = crate::llm::start_with_args(
        &[("qwen", ModelFile::TinyWith(qwen_template()))],
        "context_length = 2048\n",
        &["--tcp", &format!("127.0.0.1:{port}")],
    ) else {
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_tools.py");
    let socket = l.d.socket.display().to_string();
    let url = format!("http://127.0.0.1:{port}/v1");
    for (kind, where_) in [("--uds", socket.as_str()), ("--url", url.as_str())] {
        let out = std::process::Command::new("python3")
            .args([script.to_str().unwrap(), kind, where_, "qwen"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{kind}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            l.d.log()
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["finish_reason"], "tool_calls", "{kind}: {v}");
        for (name, args) in [("name", "arguments"), ("streamed_name", "streamed_arguments")] {
            let call = json!({"type": "function", "id": "x",
                "function": {"name": v[name], "arguments": v[args].to_string()}});
            check_weather_args(&call);
        }
        assert_eq!(v["follow_up_role"], "assistant");
        let s = &v["structured"];
        assert!(["yes", "no"].contains(&s["answer"].as_str().unwrap()), "{kind}: {v}");
        assert!((0..=100).contains(&s["confidence"].as_i64().unwrap()), "{kind}: {v}");
    }
}
