//! The wire translation, field by field, on bodies shaped as Ollama's `api/types.go` and the
//! official Python client (`ollama/_types.py`) make them.

use super::*;

fn param_of(e: ApiError) -> String {
    match e {
        ApiError::InvalidRequest { param, .. } => param.unwrap(),
        other => panic!("not an invalid request: {other:?}"),
    }
}

fn chat(v: Value) -> ChatRequest {
    serde_json::from_value(v).unwrap()
}

fn common(v: Value) -> Common {
    serde_json::from_value(v).unwrap()
}

fn secs(s: u64) -> Option<Wish> {
    Some(Wish::Idle(Timeout(Some(Duration::from_secs(s)))))
}

#[test]
fn keep_alive_reads_numbers_and_go_durations() {
    let k = |v: Value| keep_alive(Some(&v)).unwrap();
    assert_eq!(keep_alive(None).unwrap(), None);
    assert_eq!(k(Value::Null), None);
    assert_eq!(k(json!(0)), Some(Wish::Unload));
    assert_eq!(k(json!("0")), Some(Wish::Unload));
    assert_eq!(k(json!("0s")), Some(Wish::Unload));
    assert_eq!(k(json!(-1)), Some(Wish::Idle(Timeout::NEVER)));
    assert_eq!(k(json!("-1m")), Some(Wish::Idle(Timeout::NEVER)));
    assert_eq!(
        k(json!("-1")),
        Some(Wish::Idle(Timeout::NEVER)),
        "a number in a string is seconds"
    );
    assert_eq!(k(json!("300")), secs(300));
    assert_eq!(k(json!(30)), secs(30));
    assert_eq!(k(json!("5m")), secs(300));
    assert_eq!(k(json!("1h30m")), secs(5400));
    assert_eq!(k(json!("1.5h")), secs(5400));
    assert_eq!(k(json!("+10s")), secs(10));
    assert_eq!(
        k(json!("300ms")),
        Some(Wish::Idle(Timeout(Some(Duration::from_millis(300)))))
    );
    assert_eq!(
        k(json!(1.5)),
        Some(Wish::Idle(Timeout(Some(Duration::from_millis(1500)))))
    );
    assert_eq!(k(json!(1e300)), Some(Wish::Idle(Timeout::NEVER)), "too long is forever");
    for bad in [
        json!("5 minutes"),
        json!(""),
        json!("m"),
        json!("1x"),
        json!("inf"),
        json!(true),
        json!([1]),
    ] {
        assert_eq!(param_of(keep_alive(Some(&bad)).unwrap_err()), "keep_alive", "{bad}");
    }
}

#[test]
fn format_is_nothing_json_or_a_schema() {
    let f = |v: Value| format(Some(&v));
    assert_eq!(format(None).unwrap(), OutputFormat::Text);
    assert_eq!(f(json!("")).unwrap(), OutputFormat::Text);
    assert_eq!(f(json!("json")).unwrap(), OutputFormat::JsonObject);
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    assert_eq!(f(schema.clone()).unwrap(), OutputFormat::JsonSchema(schema));
    assert_eq!(param_of(f(json!("yaml")).unwrap_err()), "format");
    assert_eq!(param_of(f(json!(5)).unwrap_err()), "format");
}

/// The request the Python client sends for `chat(model, messages, tools=[fn], format=…,
/// options=…, keep_alive=…)` (`model_dump(exclude_none=True)`).
#[test]
fn a_python_client_chat_request_reads_field_by_field() {
    let req = chat(json!({
        "model": "chat:latest", "stream": false, "format": "json", "keep_alive": "5m",
        "options": {"temperature": 0, "num_predict": 8, "seed": 3, "stop": ["\n\n"], "num_ctx": 2048},
        "messages": [{"role": "System", "content": "be brief"}, {"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "forecast",
            "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}],
        "think": false, "unknown_field": 1,
    }));
    assert_eq!(req.model, "chat:latest");
    assert_eq!(req.common.stream, Some(false));
    let Prompt::Chat {
        messages,
        tools,
        choice,
        parallel,
    } = req.prompt().unwrap()
    else {
        panic!()
    };
    assert_eq!(messages[0].role, "system", "roles are lowercased, as Ollama does");
    assert_eq!(messages[1].content.as_deref(), Some("weather?"));
    assert_eq!(tools[0].name, "get_weather");
    assert_eq!(tools[0].description.as_deref(), Some("forecast"));
    assert_eq!(tools[0].parameters["required"], json!(["city"]));
    assert_eq!(
        (choice, parallel),
        (ToolChoice::Auto, true),
        "Ollama has no tool_choice"
    );
    let p = params(&req.common, 4096, Some(100)).unwrap();
    assert_eq!(
        (p.temperature, p.max_tokens, p.seed, p.stop.clone()),
        (0.0, Some(8), Some(3), vec!["\n\n".to_owned()])
    );
    assert_eq!(keep_alive(req.common.keep_alive.as_ref()).unwrap(), secs(300));
    assert_eq!(format(req.common.format.as_ref()).unwrap(), OutputFormat::JsonObject);
}

#[test]
fn tool_calls_come_back_without_ids_and_results_name_the_function() {
    let req = chat(json!({"model": "m", "messages": [
        {"role": "user", "content": "weather and time?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"function": {"name": "get_time", "arguments": {}}}]},
        {"role": "tool", "content": "12:00", "tool_name": "get_time"},
        {"role": "tool", "content": "sunny"},
    ]}));
    let m = messages(&req.messages).unwrap();
    assert_eq!(m[1].content, None, "no content beside calls");
    assert_eq!(m[1].tool_calls[0].id, "call_1_0");
    assert_eq!(m[1].tool_calls[0].arguments, r#"{"city":"Paris"}"#);
    assert_eq!(
        m[2].tool_call_id.as_deref(),
        Some("call_1_1"),
        "answers the call of its function"
    );
    assert_eq!(m[2].name.as_deref(), Some("get_time"));
    assert_eq!(
        m[3].tool_call_id.as_deref(),
        Some("call_1_0"),
        "then the earliest unanswered one"
    );
    crate::chat::tools::validate_history(&m).unwrap();
    // Ids the client kept are used, and a string of arguments is taken as is.
    let req = chat(json!({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "abc", "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
        {"role": "tool", "content": "1", "tool_call_id": "abc"}]}));
    let m = messages(&req.messages).unwrap();
    assert_eq!(
        (m[0].tool_calls[0].id.as_str(), m[0].tool_calls[0].arguments.as_str()),
        ("abc", "{\"x\":1}")
    );
    assert_eq!(m[1].tool_call_id.as_deref(), Some("abc"));
}

#[test]
fn bad_messages_and_tools_name_the_field() {
    let e = |v: Value| param_of(chat(v).prompt().unwrap_err());
    assert_eq!(
        e(json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})),
        "messages[0].role"
    );
    assert_eq!(
        e(json!({"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]})),
        "messages[0].images"
    );
    assert_eq!(
        e(json!({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "tool", "content": "1"}]})),
        "messages[1]"
    );
    assert_eq!(
        e(json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            {"role": "tool", "content": "1", "tool_name": "g"}]})),
        "messages[1]"
    );
    let user = json!([{"role": "user", "content": "x"}]);
    assert_eq!(
        e(json!({"model": "m", "messages": user, "tools": [{"type": "retrieval"}]})),
        "tools[0]"
    );
    assert_eq!(
        e(json!({"model": "m", "messages": user, "tools": [{"type": "function", "function": {"description": "d"}}]})),
        "tools[0].function.name"
    );
    // A tool without parameters gets an empty object schema; without `type`, it is a function.
    let r = chat(json!({"model": "m", "messages": user, "tools": [{"function": {"name": "now"}}]}));
    let Prompt::Chat { tools, .. } = r.prompt().unwrap() else {
        panic!()
    };
    assert_eq!(tools[0].parameters, json!({"type": "object", "properties": {}}));
}

fn generate(v: Value) -> GenerateRequest {
    serde_json::from_value(v).unwrap()
}

#[test]
fn generate_prompts_are_raw_text_or_a_one_turn_chat() {
    let r = generate(json!({"model": "m", "prompt": "Why is the sky blue?", "system": "be brief"}));
    let Prompt::Chat {
        messages,
        tools,
        choice,
        ..
    } = r.prompt(true).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (messages[0].role.as_str(), messages[0].content.as_deref()),
        ("system", Some("be brief"))
    );
    assert_eq!(
        (messages[1].role.as_str(), messages[1].content.as_deref()),
        ("user", Some("Why is the sky blue?"))
    );
    assert!(tools.is_empty() && choice == ToolChoice::None);
    let raw = generate(json!({"model": "m", "prompt": "[INST] hi [/INST]", "raw": true}));
    assert!(matches!(raw.prompt(true).unwrap(), Prompt::Text(t) if t == "[INST] hi [/INST]"));
    // A model without a chat template: the prompt as is, as Ollama's default template gives it.
    assert!(matches!(r.prompt(false).unwrap(), Prompt::Text(t) if t == "be brief\n\nWhy is the sky blue?"));
    let e = |v: Value| param_of(generate(v).prompt(true).unwrap_err());
    assert_eq!(
        e(json!({"model": "m", "prompt": "x", "raw": true, "system": "s"})),
        "raw"
    );
    assert_eq!(e(json!({"model": "m", "prompt": "x", "images": ["aGk="]})), "images");
    assert_eq!(
        e(json!({"model": "m", "prompt": "def f(", "suffix": "return 1"})),
        "suffix"
    );
}

#[test]
fn options_map_to_sampling_and_bad_ones_name_the_option() {
    let p = |v: Value| params(&common(json!({ "options": v })), 4096, None);
    let d = p(json!({})).unwrap();
    assert_eq!(d, SamplingParams::default(), "no options: vramd's defaults");
    let all = p(
        json!({"temperature": 0.2, "top_p": 0.5, "top_k": 7, "min_p": 0.1, "seed": 9,
        "repeat_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
        "stop": ["a", "b", "c", "d", "e"], "mirostat": 0, "num_gpu": 99, "use_mmap": true, "whatever": "x"}),
    )
    .unwrap();
    assert_eq!((all.temperature, all.top_p, all.top_k, all.min_p), (0.2, 0.5, 7, 0.1));
    assert_eq!(all.seed, Some(9));
    assert_eq!(
        (all.repeat_penalty, all.presence_penalty, all.frequency_penalty),
        (1.2, 0.5, -0.5)
    );
    assert_eq!(all.stop.len(), 5, "Ollama takes more than OpenAI's four stops");
    assert_eq!(p(json!({"stop": "END"})).unwrap().stop, vec!["END"]);
    assert_eq!(p(json!({"seed": -1})).unwrap().seed, None, "-1 is Ollama's random seed");
    assert_eq!(
        p(json!({"temperature": null})).unwrap().temperature,
        d.temperature,
        "null is absent"
    );
    let bad = [
        (json!({"temperature": "hot"}), "options.temperature"),
        (json!({"temperature": 3}), "options.temperature"),
        (json!({"top_k": -1}), "options.top_k"),
        (json!({"stop": [1]}), "options.stop"),
        (json!({"num_ctx": "big"}), "options.num_ctx"),
        (json!({"use_mmap": 1}), "options.use_mmap"),
    ];
    for (v, field) in bad {
        assert_eq!(param_of(p(v.clone()).unwrap_err()), field, "{v}");
    }
}

#[test]
fn num_predict_limits_and_its_special_values() {
    let max = |n: Value, context: u32| {
        params(&common(json!({"options": {"num_predict": n}})), context, Some(300))
            .unwrap()
            .max_tokens
    };
    assert_eq!(max(json!(64), 4096), Some(64));
    assert_eq!(
        max(json!(-1), 4096),
        Some(300),
        "no limit of its own: the configured cap"
    );
    assert_eq!(max(json!(-2), 4096), Some(300));
    assert_eq!(max(json!(0), 4096), Some(300));
    assert_eq!(max(json!(100_000), 4096), Some(4095), "cut to the context, not refused");
    assert_eq!(max(json!(100_000), 0), Some(100_000), "context not known yet");
    assert_eq!(params(&common(json!({})), 4096, None).unwrap().max_tokens, None);
    // num_ctx cannot change the model's context: accepted, never an error.
    assert!(params(&common(json!({"options": {"num_ctx": 131072}})), 4096, None).is_ok());
}

#[test]
fn logprobs_are_asked_at_the_top_level() {
    let p = params(&common(json!({"logprobs": true, "top_logprobs": 3})), 4096, None).unwrap();
    assert_eq!(p.logprobs, Some(3));
    assert_eq!(
        params(&common(json!({"top_logprobs": 3})), 4096, None)
            .unwrap()
            .logprobs,
        None
    );
    let e = params(&common(json!({"logprobs": true, "top_logprobs": 21})), 4096, None).unwrap_err();
    assert_eq!(param_of(e), "top_logprobs");
}

#[test]
fn embed_inputs_and_dimensions() {
    let i = |v: Value| embed_inputs(Some(&v));
    assert_eq!(i(json!("hello")).unwrap(), vec!["hello"]);
    assert_eq!(i(json!(["a", "b"])).unwrap(), vec!["a", "b"]);
    assert!(i(json!("")).unwrap().is_empty(), "an empty input loads the model");
    assert!(embed_inputs(None).unwrap().is_empty());
    assert_eq!(param_of(i(json!([1, 2])).unwrap_err()), "input");
    assert_eq!(param_of(i(json!({"a": 1})).unwrap_err()), "input");
    let mut v = vec![vec![0.6, 0.0, 0.8], vec![0.0, 1.0, 0.0]];
    shorten(&mut v, Some(5));
    assert_eq!(v[0].len(), 3, "wider than the model: whole");
    shorten(&mut v, Some(2));
    assert_eq!(v, vec![vec![1.0, 0.0], vec![0.0, 1.0]], "cut and unit length again");
    shorten(&mut v, Some(0));
    assert_eq!(v[0].len(), 2);
}

fn usage(finish_reason: &'static str) -> Usage {
    Usage {
        finish_reason,
        prompt_tokens: 11,
        cached_tokens: 4,
        completion_tokens: 7,
    }
}

#[test]
fn response_objects_are_ollamas() {
    let call = ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris","days":2}"#.into(),
    };
    let c = object(Flavor::Chat, "chat:latest", "T", "", vec![tool_call(0, &call)], false);
    assert_eq!(
        c,
        json!({"model": "chat:latest", "created_at": "T", "done": false,
            "message": {"role": "assistant", "content": "",
                "tool_calls": [{"id": "call_1", "function": {"index": 0, "name": "get_weather",
                    "arguments": {"city": "Paris", "days": 2}}}]}})
    );
    let g = object(Flavor::Generate, "m", "T", "Hi", Vec::new(), false);
    assert_eq!(
        g,
        json!({"model": "m", "created_at": "T", "response": "Hi", "done": false})
    );
    let bad = ToolCall {
        arguments: "not json".into(),
        ..call
    };
    assert_eq!(
        tool_call(1, &bad)["function"]["arguments"],
        json!({}),
        "always an object"
    );
    assert_eq!(
        lifecycle(Flavor::Chat, "m", "T", "unload"),
        json!({"model": "m", "created_at": "T", "done": true, "done_reason": "unload",
               "message": {"role": "assistant", "content": ""}})
    );
}

#[test]
fn the_last_object_carries_ollamas_metrics_in_nanoseconds() {
    let t = Timings {
        total: Duration::from_millis(1500),
        load: Duration::from_millis(500),
        prompt_eval: Duration::from_micros(250),
        eval: Duration::ZERO,
    };
    let m = Value::Object(metrics(&usage("length"), &t));
    assert_eq!(
        m,
        json!({"done_reason": "length", "total_duration": 1_500_000_000u64, "load_duration": 500_000_000u64,
               "prompt_eval_count": 11, "prompt_eval_duration": 250_000, "eval_count": 7, "eval_duration": 1})
    );
    assert_eq!(done_reason(&usage("stop")), "stop");
    assert_eq!(
        done_reason(&usage("tool_calls")),
        "stop",
        "Ollama ends a turn of calls with stop"
    );
}

#[test]
fn logprobs_entries() {
    let l: vramd_protocol::TokenLogprob =
        serde_json::from_value(json!({"token": "Hi", "logprob": -0.5, "bytes": [72, 105],
        "top": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}))
        .unwrap();
    let v = crate::api::chat::logprob_entry(&l);
    assert_eq!((v["token"].clone(), v["logprob"].clone()), (json!("Hi"), json!(-0.5)));
    assert_eq!(v["top_logprobs"][0]["token"], "Hi");
}

#[test]
fn named_requests_take_model_or_the_older_name() {
    let n = |v: Value| serde_json::from_value::<NamedRequest>(v).unwrap();
    assert_eq!(n(json!({"model": "a"})).model().unwrap(), "a");
    assert_eq!(n(json!({"name": "b"})).model().unwrap(), "b");
    assert_eq!(param_of(n(json!({})).model().unwrap_err()), "model");
}

#[test]
fn null_is_absent_as_in_go() {
    let r = chat(json!({"model": "m", "messages": null, "tools": null, "format": null, "options": null}));
    assert!(r.messages.is_empty() && r.tools.is_empty());
    let m = chat(
        json!({"model": "m", "messages": [{"role": "user", "content": null, "images": null, "tool_calls": null}]}),
    );
    assert_eq!(messages(&m.messages).unwrap()[0].content.as_deref(), Some(""));
    let g = generate(json!({"model": "m", "prompt": "hi", "system": null, "images": null, "context": null}));
    assert!(matches!(g.prompt(true).unwrap(), Prompt::Chat { messages, .. } if messages.len() == 1));
}
