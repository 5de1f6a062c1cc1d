//! Real templates from llama.cpp's `models/templates/` (tests/fixtures/templates), rendered with
//! the conversation every tool-calling client sends: system, user, an assistant tool call, the
//! tool's answer, then the generation prompt.

use std::path::PathBuf;

use serde_json::json;
use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec, CHATML_TEMPLATE};

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/templates/",
            $name,
            ".jinja"
        ))
    };
}

const QWEN25: &str = fixture!("Qwen-Qwen2.5-7B-Instruct");
const QWEN3: &str = fixture!("Qwen-Qwen3-0.6B");
const LLAMA31: &str = fixture!("meta-llama-Llama-3.1-8B-Instruct");
const LLAMA32: &str = fixture!("meta-llama-Llama-3.2-3B-Instruct");
const NEMO: &str = fixture!("mistralai-Mistral-Nemo-Instruct-2407");
const HERMES3: &str = fixture!("NousResearch-Hermes-3-Llama-3.1-8B-tool_use");
const GEMMA2: &str = fixture!("google-gemma-2-2b-it");

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: Some(content.into()),
        ..Message::default()
    }
}

/// Keys in sorted order, so the expected text holds whether or not serde_json keeps insertion
/// order.
fn weather_tool() -> Tool {
    Tool {
        name: "get_weather".into(),
        description: Some("Get the current weather in a city".into()),
        parameters: json!({
            "properties": {"city": {"description": "The city name", "type": "string"}},
            "required": ["city"],
            "type": "object"
        }),
    }
}

/// The tool as every OpenAI-shaped template dumps it with `tojson`.
const WEATHER_TOOL_JSON: &str = r#"{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city", "parameters": {"properties": {"city": {"description": "The city name", "type": "string"}}, "required": ["city"], "type": "object"}}}"#;

/// System, user, an assistant call (id of nine characters, as Mistral's templates demand), the
/// tool's answer.
fn tool_conversation() -> Vec<Message> {
    vec![
        msg("system", "You are a weather bot."),
        msg("user", "What is the weather in Paris?"),
        Message {
            role: "assistant".into(),
            content: None,
            tool_calls: vec![ToolCall {
                id: "call00001".into(),
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into(),
            }],
            ..Message::default()
        },
        Message {
            role: "tool".into(),
            content: Some(r#"{"temperature": 21}"#.into()),
            tool_call_id: Some("call00001".into()),
            name: Some("get_weather".into()),
            ..Message::default()
        },
    ]
}

fn plain_conversation() -> Vec<Message> {
    vec![
        msg("user", "Hello!"),
        msg("assistant", "Hi, how can I help?"),
        msg("user", "Tell me a joke."),
    ]
}

fn compile(source: &str, bos: &str, eos: &str) -> ChatTemplate {
    ChatTemplate::new(source, bos, eos).unwrap_or_else(|e| panic!("{e}"))
}

fn render_tools(t: &ChatTemplate) -> String {
    t.render(&tool_conversation(), &[weather_tool()], true)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn render_plain(t: &ChatTemplate) -> String {
    t.render(&plain_conversation(), &[], true)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn qwen25_renders_tools_calls_and_responses() {
    let t = compile(QWEN25, "", "<|im_end|>");
    assert!(t.supports_tools());
    let out = render_tools(&t);
    let expected = [
        "<|im_start|>system\nYou are a weather bot.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n",
        WEATHER_TOOL_JSON,
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n",
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n",
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n",
        "<|im_start|>user\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>\n",
        "<|im_start|>assistant\n",
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn qwen25_plain_chat_gets_the_default_system_prompt() {
    let out = render_plain(&compile(QWEN25, "", "<|im_end|>"));
    assert_eq!(
        out,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\nHi, how can I help?<|im_end|>\n\
         <|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn qwen3_needs_text_content_beside_tool_calls() {
    let t = compile(QWEN3, "", "<|im_end|>");
    assert!(t.quirks.text_content, "Qwen 3 tests '</think>' in message.content");
    let out = render_tools(&t);
    assert!(
        out.contains(&format!("<tools>\n{WEATHER_TOOL_JSON}\n</tools>")),
        "{out}"
    );
    assert!(
        out.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"),
        "{out}"
    );
    assert!(
        out.contains("<tool_response>\n{\"temperature\": 21}\n</tool_response>"),
        "{out}"
    );
    assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
    let plain = render_plain(&t);
    assert!(
        plain.ends_with("<|im_start|>user\nTell me a joke.<|im_end|>\n<|im_start|>assistant\n"),
        "{plain}"
    );
}

#[test]
fn hermes3_renders_tools_calls_and_responses() {
    let t = compile(HERMES3, "<|begin_of_text|>", "<|im_end|>");
    assert!(t.supports_tools());
    let out = render_tools(&t);
    assert!(
        out.starts_with("<|begin_of_text|><|im_start|>system\nYou are a function calling AI model."),
        "{out}"
    );
    // Hermes writes its own function description from the schema (json_to_python_type).
    assert!(out.contains(
        r#"<tools> {"type": "function", "function": {"name": "get_weather", "description": "get_weather(city: str) - Get the current weather in a city"#
    ), "{out}");
    assert!(
        out.contains("    Args:\n        city(str): The city name\", \"parameters\": {\"properties\": "),
        "{out}"
    );
    assert!(
        out.contains("<|im_start|>system\nYou are a weather bot.<|im_end|>\n"),
        "{out}"
    );
    assert!(out.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n"), "{out}");
    assert!(
        out.contains("<|im_start|>tool\n<tool_response>\n{\"temperature\": 21}\n</tool_response><|im_end|>"),
        "{out}"
    );
    assert!(out.ends_with("<|im_start|>assistant\n"), "{out}");
}

#[test]
fn llama31_puts_tools_in_the_first_user_message() {
    let t = compile(LLAMA31, "<|begin_of_text|>", "<|eot_id|>");
    assert!(t.supports_tools());
    let out = render_tools(&t);
    let tool_pretty = r#"{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "properties": {
                "city": {
                    "description": "The city name",
                    "type": "string"
                }
            },
            "required": [
                "city"
            ],
            "type": "object"
        }
    }
}"#;
    let expected = [
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n",
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
        "You are a weather bot.<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n",
        "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.Do not use variables.\n\n",
        tool_pretty,
        "\n\nWhat is the weather in Paris?<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>",
        // A string `is iterable` in Jinja, so this template JSON-encodes the tool's text, as
        // it does under transformers.
        "<|start_header_id|>ipython<|end_header_id|>\n\n\"{\\\"temperature\\\": 21}\"<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn llama31_plain_chat() {
    let out = render_plain(&compile(LLAMA31, "<|begin_of_text|>", "<|eot_id|>"));
    assert_eq!(
        out,
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHi, how can I help?<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn llama31_raises_on_parallel_calls() {
    let t = compile(LLAMA31, "<|begin_of_text|>", "<|eot_id|>");
    let mut conv = tool_conversation();
    let call = conv[2].tool_calls[0].clone();
    conv[2].tool_calls.push(call);
    let err = t.render(&conv, &[weather_tool()], true).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Raised(m) if m == "This model only supports single tool-calls at once!"),
        "{err:?}"
    );
}

/// Llama 3.2 prints today's date with `strftime_now("%d %b %Y")`.
#[test]
fn llama32_prints_todays_date() {
    let out = render_tools(&compile(LLAMA32, "<|begin_of_text|>", "<|eot_id|>"));
    let today = strftime_now("%d %b %Y").unwrap();
    assert!(
        out.contains(&format!(
            "Cutting Knowledge Date: December 2023\nToday Date: {today}\n\n"
        )),
        "{out}"
    );
    let (day, rest) = today.split_once(' ').unwrap();
    let (month, year) = rest.split_once(' ').unwrap();
    assert!(day.len() == 2 && day.chars().all(|c| c.is_ascii_digit()), "{today}");
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(months.contains(&month), "{today}");
    assert!(year.len() == 4 && year.starts_with('2'), "{today}");
    assert!(out.contains("<|start_header_id|>ipython<|end_header_id|>\n\n"), "{out}");
}

#[test]
fn mistral_nemo_renders_available_tools_and_calls() {
    let t = compile(NEMO, "<s>", "</s>");
    assert!(t.supports_tools());
    let out = render_tools(&t);
    let expected = [
        "<s>[AVAILABLE_TOOLS][",
        WEATHER_TOOL_JSON,
        "][/AVAILABLE_TOOLS][INST]What is the weather in Paris?[/INST]",
        "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"call00001\"}]</s>",
        "[TOOL_RESULTS]{\"content\": {\"temperature\": 21}, \"call_id\": \"call00001\"}[/TOOL_RESULTS]",
    ]
    .concat();
    assert_eq!(out, expected);
}

#[test]
fn mistral_nemo_plain_chat_puts_the_system_prompt_in_the_last_user_message() {
    let t = compile(NEMO, "<s>", "</s>");
    let mut conv = plain_conversation();
    conv.insert(0, msg("system", "Be brief."));
    let out = t.render(&conv, &[], true).unwrap();
    assert_eq!(
        out,
        "<s>[INST]Hello![/INST]Hi, how can I help?</s>[INST]Be brief.\n\nTell me a joke.[/INST]"
    );
}

#[test]
fn mistral_nemo_raise_exception_reaches_the_caller() {
    let t = compile(NEMO, "<s>", "</s>");
    let conv = vec![msg("user", "one"), msg("user", "two")];
    let err = t.render(&conv, &[], true).unwrap_err();
    let expected =
        "After the optional system message, conversation roles must alternate user/assistant/user/assistant/...";
    assert!(matches!(&err, TemplateError::Raised(m) if m == expected), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("the chat template rejected the conversation: {expected}")
    );

    let mut conv = tool_conversation();
    conv[2].tool_calls[0].id = "call_123".into();
    let err = t.render(&conv, &[weather_tool()], true).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Raised(m) if m.contains("length 9")),
        "{err:?}"
    );
}

#[test]
fn gemma2_has_no_system_role_so_it_is_merged_into_the_user_turn() {
    let t = compile(GEMMA2, "<bos>", "<eos>");
    assert!(!t.supports_tools());
    assert!(!t.supports_system_role());
    assert_eq!(
        render_plain(&t),
        "<bos><start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\nHi, how can I help?<end_of_turn>\n\
         <start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n"
    );
    let conv = vec![msg("system", "Be brief."), msg("user", "Hello!")];
    assert_eq!(
        t.render(&conv, &[], true).unwrap(),
        "<bos><start_of_turn>user\nBe brief.\nHello!<end_of_turn>\n<start_of_turn>model\n"
    );
    let err = t.render(&[msg("user", "a"), msg("user", "b")], &[], true).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Raised(m) if m.starts_with("Conversation roles must alternate")),
        "{err:?}"
    );
}

#[test]
fn merge_system_messages_joins_runs_and_keeps_a_trailing_one() {
    let merged = merge_system_messages(&[
        msg("system", "a"),
        msg("system", "b"),
        msg("user", "u"),
        msg("assistant", "x"),
        msg("system", "c"),
        msg("assistant", "y"),
        msg("system", "d"),
    ]);
    let shape: Vec<(&str, &str)> = merged
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_deref().unwrap()))
        .collect();
    assert_eq!(
        shape,
        [
            ("user", "a\nb\nu"),
            ("assistant", "x"),
            ("user", "c"),
            ("assistant", "y"),
            ("user", "d")
        ]
    );
}

#[test]
fn chatml_without_tools_and_generation_prompt_flag() {
    let t = compile(CHATML_TEMPLATE, "<s>", "</s>");
    assert!(!t.supports_tools());
    assert!(t.supports_system_role());
    let conv = [msg("user", "Hi")];
    assert_eq!(
        t.render(&conv, &[], true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(t.render(&conv, &[], false).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
}

#[test]
fn tools_are_undefined_when_none_are_given() {
    let t = compile("{{ tools is defined }}|{{ bos_token }}|{{ eos_token }}", "<s>", "</s>");
    assert!(t.supports_tools());
    assert_eq!(t.render(&[], &[], false).unwrap(), "False|<s>|</s>");
    assert_eq!(t.render(&[], &[weather_tool()], false).unwrap(), "True|<s>|</s>");
}

#[test]
fn messages_leave_out_absent_fields() {
    let t = compile(
        "{% for m in messages %}{{ m.role }}{% if m.content %}[{{ m.content }}]{% endif %}:{{ 'tool_calls' in m }},{{ m.tool_call_id is defined }},{{ m.name is defined }},{{ m.content is none }};{% endfor %}",
        "",
        "",
    );
    let out = t.render(&tool_conversation(), &[], false).unwrap();
    assert_eq!(
        out,
        "system[You are a weather bot.]:False,False,False,False;\
         user[What is the weather in Paris?]:False,False,False,False;\
         assistant:True,False,False,True;\
         tool[{\"temperature\": 21}]:False,True,True,False;"
    );
}

#[test]
fn tool_calls_answer_both_shapes_but_serialize_as_openai() {
    let t = compile(
        "{% set c = messages[0].tool_calls[0] %}{{ c.function.arguments.city }}|{{ c.arguments.city }}|{{ c.name }}|{{ c | tojson }}|{{ c.function.arguments is mapping }}",
        "",
        "",
    );
    let conv = [Message {
        role: "assistant".into(),
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "f".into(),
            arguments: r#"{"city": "Paris", "a": [1, 2.5, true, null]}"#.into(),
        }],
        ..Message::default()
    }];
    assert_eq!(
        t.render(&conv, &[], false).unwrap(),
        r#"Paris|Paris|f|{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"city": "Paris", "a": [1, 2.5, true, null]}}}|True"#
    );
}

#[test]
fn malformed_arguments_stay_text() {
    let t = compile("{{ messages[0].tool_calls[0].function.arguments }}", "", "");
    let conv = [Message {
        role: "assistant".into(),
        tool_calls: vec![ToolCall {
            id: "c1".into(),
            name: "f".into(),
            arguments: "{not json".into(),
        }],
        ..Message::default()
    }];
    assert_eq!(t.render(&conv, &[], false).unwrap(), "{not json");
}

#[test]
fn tojson_writes_what_python_json_dumps_writes() {
    let t = compile(
        r#"{{ {"a": "<b>&'x'", "é": [1, 2.0, none, true], "n": {}} | tojson }}|{{ [] | tojson(indent=2) }}|{{ {"z": 1, "a": [1]} | tojson(indent=2, sort_keys=true) }}|{{ [1, 2] | tojson(separators=(",", ":")) }}|{{ "q\"\n" | tojson }}"#,
        "",
        "",
    );
    assert_eq!(
        t.render(&[], &[], false).unwrap(),
        "{\"a\": \"<b>&'x'\", \"é\": [1, 2.0, null, true], \"n\": {}}|[]|{\n  \"a\": [\n    1\n  ],\n  \"z\": 1\n}|[1,2]|\"q\\\"\\n\""
    );
}

#[test]
fn tojson_refuses_values_nested_without_end() {
    let t = compile(
        "{% set ns = namespace() %}{% set ns.me = ns %}{{ ns | tojson }}",
        "",
        "",
    );
    let err = t.render(&[], &[], false).unwrap_err();
    assert!(err.to_string().contains("nested deeper than 128"), "{err}");
}

#[test]
fn python_string_methods_and_loop_controls_work() {
    let t = compile(
        "{{ '  x  '.strip() }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'abc'.startswith('ab') }}|{% for k, v in {'k': 1}.items() %}{{ k }}={{ v }}{% endfor %}|{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}|{{ [1, 2, 3][::-1] | join }}",
        "",
        "",
    );
    assert_eq!(t.render(&[], &[], false).unwrap(), "x|a+b|True|k=1|1|321");
}

#[test]
fn invalid_templates_fail_at_compile_time() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.role }}", "", "").unwrap_err();
    assert!(matches!(err, TemplateError::Compile(_)), "{err:?}");
    assert!(
        err.to_string().starts_with("the chat template does not compile: "),
        "{err}"
    );
    assert!(err.to_string().contains("chat_template:1"), "{err}");
}

#[test]
fn engine_errors_are_render_errors_naming_the_line() {
    let t = compile("line one\n{{ messages[0].content + 1 }}", "", "");
    let err = t.render(&[msg("user", "x")], &[], false).unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
    assert!(err.to_string().contains("chat_template:2"), "{err}");
}

#[test]
fn a_runaway_template_runs_out_of_fuel() {
    let t = compile(
        "{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
        "",
        "",
    );
    let err = t.render(&[], &[], false).unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
    let err = compile(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "",
        "",
    )
    .render(&[], &[], false)
    .unwrap_err();
    assert!(err.to_string().contains("fuel"), "{err}");
}

#[test]
fn a_long_conversation_fits_in_the_fuel() {
    let t = compile(QWEN25, "", "<|im_end|>");
    let mut conv = vec![msg("system", "You are a weather bot.")];
    for _ in 0..500 {
        conv.extend(tool_conversation().into_iter().skip(1));
        conv.push(msg("assistant", &"It is sunny in Paris. ".repeat(50)));
    }
    let out = t.render(&conv, &vec![weather_tool(); 20], true).unwrap();
    assert!(out.len() > 500_000, "{}", out.len());
}

#[test]
fn oversized_templates_are_refused() {
    let big = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    assert!(matches!(
        ChatTemplate::new(&big, "", ""),
        Err(TemplateError::TooLarge { .. })
    ));
}

#[test]
fn chat_templates_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

#[test]
fn from_gguf_reads_the_template_and_token_texts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_tiny_llama(&path, &TinyLlamaSpec::default()).unwrap();
    let t = ChatTemplate::from_gguf(&path)
        .unwrap()
        .expect("the tiny model carries ChatML");
    assert_eq!(t.source(), CHATML_TEMPLATE);
    assert_eq!((t.bos_token(), t.eos_token()), ("<s>", "</s>"));
    assert_eq!(
        t.render(&[msg("user", "Hi")], &[], true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );

    let spec = TinyLlamaSpec {
        chat_template: Some(QWEN25.into()),
        ..TinyLlamaSpec::default()
    };
    write_tiny_llama(&path, &spec).unwrap();
    let t = ChatTemplate::from_gguf(&path).unwrap().unwrap();
    assert!(t.supports_tools());
    assert!(render_tools(&t).contains("<tool_call>\n{\"name\": \"get_weather\""));
}

#[test]
fn from_gguf_without_a_template_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.gguf");
    let spec = TinyLlamaSpec {
        chat_template: None,
        ..TinyLlamaSpec::default()
    };
    write_tiny_llama(&path, &spec).unwrap();
    assert!(ChatTemplate::from_gguf(&path).unwrap().is_none());
}

#[test]
fn from_gguf_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.gguf");
    std::fs::write(&path, b"not a model").unwrap();
    let err = ChatTemplate::from_gguf(&path).unwrap_err();
    assert!(matches!(err, TemplateError::Gguf { .. }), "{err:?}");
    assert!(err.to_string().contains("junk.gguf"), "{err}");

    let mut w = vramd_gguf::GgufWriter::new();
    w.add_kv("tokenizer.chat_template", 7u32.into()).unwrap();
    w.write_to(&path).unwrap();
    assert!(matches!(ChatTemplate::from_gguf(&path), Err(TemplateError::NotAString)));
}

/// SmolLM2-135M-Instruct (scripts/fetch-smollm): a real GGUF's template and tokens.
#[test]
fn from_gguf_on_smollm2() {
    let path = std::env::var_os("VRAMD_SMOLLM").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/vramd/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if !path.exists() {
        eprintln!("skipped: {} not found (scripts/fetch-smollm)", path.display());
        return;
    }
    let t = ChatTemplate::from_gguf(&path)
        .unwrap()
        .expect("SmolLM2 carries a chat template");
    assert_eq!((t.bos_token(), t.eos_token()), ("<|im_start|>", "<|im_end|>"));
    assert!(!t.supports_tools());
    let out = t.render(&[msg("user", "Hi")], &[], true).unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}
