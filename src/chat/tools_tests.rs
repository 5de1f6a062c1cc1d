//! Tests of `chat::tools`. The model outputs are, where marked, those llama.cpp's
//! `tests/test-chat.cpp` checks for the same format (its `special_function` tool, `arg1: 1`).

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::chat::{Message, Tool, ToolCall, ToolChoice};
use ToolFormat::*;

const ARG1: &str = r#"{"arg1":1}"#;
const SPECIAL: &[(&str, &str)] = &[("special_function", ARG1)];

fn name_args(calls: &[ToolCall]) -> Vec<(String, String)> {
    calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect()
}

/// Feeds `text` in the given chunks; also checks the deltas are well-formed.
fn stream(format: ToolFormat, chunks: &[&str]) -> Parsed {
    let mut parser = StreamParser::new(format);
    let mut deltas = Vec::new();
    for chunk in chunks {
        deltas.extend(parser.push(chunk));
    }
    deltas.extend(parser.finish());
    let mut next = 0;
    for delta in &deltas {
        match delta {
            Delta::Content(text) => assert!(!text.is_empty(), "empty content delta"),
            Delta::Call { index, .. } => {
                assert_eq!(*index, next, "call indices count from 0");
                next += 1;
            }
        }
    }
    Parsed::from_deltas(deltas)
}

fn by_chars(text: &str) -> Vec<&str> {
    let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
    bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// Parses `text` whole and streamed a character at a time; both must give `content` and `calls`.
fn check(format: ToolFormat, text: &str, content: &str, calls: &[(&str, &str)]) {
    let expected: Vec<(String, String)> = calls.iter().map(|(n, a)| (n.to_string(), a.to_string())).collect();
    let whole = parse(format, text);
    assert_eq!(whole.content, content, "{format:?} content of {text:?}");
    assert_eq!(name_args(&whole.calls), expected, "{format:?} calls of {text:?}");
    let streamed = stream(format, &by_chars(text));
    assert_eq!(streamed.content, content, "{format:?} streamed content of {text:?}");
    assert_eq!(
        name_args(&streamed.calls),
        expected,
        "{format:?} streamed calls of {text:?}"
    );
}

/// Text that must come out unchanged, with no call.
fn check_content(format: ToolFormat, text: &str) {
    check(format, text, text, &[]);
}

// ---------------------------------------------------------------------------------------------
// detect

#[test]
fn detect_follows_llama_cpp_markers() {
    let qwen25 = "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}";
    let qwen3_coder = "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + args_name + '>\\n' }}<tools><function><parameters>";
    let llama31 = "{%- if builtin_tools is defined %}{{- \"<|python_tag|>\" + tool_call.name + \".call(\" }}{%- endif %}{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' }}";
    let llama32 = "{{- 'Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name and its value}.' }}{%- elif message.role == \"tool\" or message.role == \"ipython\" %}";
    let nemo = "{%- if message.tool_calls %}{{- \"[TOOL_CALLS][\" }}";
    let ministral3 = "[SYSTEM_PROMPT]{{ system }}[/SYSTEM_PROMPT]{{ '[TOOL_CALLS]' + name + '[ARGS]' + args }}";
    let deepseek = "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name']}}";
    let functionary = "{{ '>>>all\\n' + message['content'] }}{%- if message.role == 'tool' -%}<|start_header_id|>ipython<|end_header_id|>";
    let r7b = "<|START_THINKING|>{{ tool_plan }}<|END_THINKING|><|START_ACTION|>[{% for tc in message.tool_calls %}";
    let granite = "{%- for tool_call in message.tool_calls %}<|tool_call|>{{ tool_call | tojson }}";
    let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    for (source, format) in [
        (qwen25, Hermes),
        (qwen3_coder, Hermes),
        (llama31, Llama3),
        (llama32, Llama3),
        (nemo, Mistral),
        (ministral3, Mistral),
        (deepseek, DeepSeek),
        (functionary, FunctionaryV32),
        (r7b, CommandR7B),
        (granite, Granite),
        (chatml, Generic),
        ("", Generic),
    ] {
        assert_eq!(detect(source), format, "{source}");
    }
}

// ---------------------------------------------------------------------------------------------
// Hermes, Qwen

#[test]
fn hermes_tool_call_block() {
    // test-chat.cpp: Hermes 2 Pro / Qwen 2.5 template output.
    check(
        Hermes,
        "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}\n</tool_call>",
        "",
        SPECIAL,
    );
    let python = "<tool_call>\n{\"name\": \"python\", \"arguments\": {\"code\": \"# This is a program:\\nprint('hey')\"}}\n</tool_call>";
    check(
        Hermes,
        python,
        "",
        &[("python", r##"{"code":"# This is a program:\nprint('hey')"}"##)],
    );
}

#[test]
fn hermes_look_alike_outputs_llama_cpp_accepts() {
    let call = "{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}";
    for text in [
        "<function=special_function>{\"arg1\": 1}</function>".to_string(),
        "<function name=\"special_function\">\n{\"arg1\": 1}\n</function>".to_string(),
        format!("<tool>\n  {call}\n</tool>"),
        format!("<tools>\n  {call}\n</tools>"),
        format!("<response>\n  {call}\n</response>"),
        format!("```xml\n<response>\n    {call}\n</response>\n```"),
        format!("```xml\n  {call}\n```"),
        format!("```\n  {call}\n```"),
        format!("```\n{call}\n```"),
        format!("```json\n  {call}\n```"),
        format!("```json\n\n                    <function_call> {call} \n                    </function_call> \n``` "),
        format!("<json>\n  {call}\n</json>"),
        "<xml>\n  {\n    \"name\": \"special_function\", \"arguments\": {\"arg1\": 1}\n  }\n</xml>".to_string(),
        format!("<JSON>\n  {call}\n</JSON>"),
        call.to_string(),
        "{\n  \"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}".to_string(),
    ] {
        check(Hermes, &text, "", SPECIAL);
    }
}

#[test]
fn hermes_content_then_calls() {
    check(
        Hermes,
        "Let me look that up.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "Let me look that up.\n",
        &[("get_weather", r#"{"city":"Paris"}"#)],
    );
    // QwQ: the template opens <think>, the model closes it, then calls (test-chat.cpp).
    check(
        Hermes,
        "I'm\nthinking</think>\n<tool_call>{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}</tool_call>",
        "I'm\nthinking</think>\n",
        SPECIAL,
    );
    // Text after a call is content; the whitespace around calls is not.
    check(
        Hermes,
        "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}\n</tool_call>\n\nDone.",
        "Done.",
        SPECIAL,
    );
}

#[test]
fn hermes_two_calls() {
    check(
        Hermes,
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"London\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "",
        &[
            ("get_time", r#"{"city":"London"}"#),
            ("get_weather", r#"{"city":"Paris"}"#),
        ],
    );
}

#[test]
fn hermes_malformed_or_unfinished_calls_stay_content() {
    for text in [
        "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": }}\n</tool_call>",
        "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\"",
        "<tool_call>\n{\"arguments\": {\"arg1\": 1}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {}} and then some</tool_call>",
        "<tool_call>",
        "Use <b>bold</b>, a <tool> without JSON, and ```python\nprint(1)\n```",
        "{\"name\": \"Ada\", \"born\": 1815}",
        "{\"answer\": 42}",
        "{this is not JSON}",
    ] {
        check_content(Hermes, text);
    }
    // A broken call does not hide a good one after it.
    check(
        Hermes,
        "<tool_call>{\"name\": \"f\", \"arguments\": {,}}</tool_call><tool_call>{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {,}}</tool_call>",
        SPECIAL,
    );
}

#[test]
fn hermes_missing_close_tag_at_the_end_is_forgiven() {
    check(
        Hermes,
        "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}\n</tool_",
        "",
        SPECIAL,
    );
    check(
        Hermes,
        "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}",
        "",
        SPECIAL,
    );
}

#[test]
fn unicode_and_escapes_survive() {
    check(
        Hermes,
        "Voici la météo 🌦️ :\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"東京\", \"note\": \"naïve ☃ \\\"quoted\\\"\\n\\u00e9\"}}\n</tool_call>",
        "Voici la météo 🌦️ :\n",
        &[(
            "get_weather",
            r#"{"city":"東京","note":"naïve ☃ \"quoted\"\n\u00e9"}"#,
        )],
    );
    // Key order and number spelling are the model's.
    check(
        Generic,
        "{\"name\": \"f\", \"arguments\": {\"b\": 2.50, \"a\": [1, 2e3, {\"z\": null, \"y\": true}]}}",
        "",
        &[("f", r#"{"b":2.50,"a":[1,2e3,{"z":null,"y":true}]}"#)],
    );
}

#[test]
fn qwen3_coder_xml_parameters() {
    // test-chat.cpp: Qwen3-Coder / Nemotron 3 Nano.
    check(
        Hermes,
        "<tool_call>\n<function=special_function>\n<parameter=arg1>\n1\n</parameter>\n</function>\n</tool_call>\n",
        "",
        SPECIAL,
    );
    let code = "def hello():\n    print(\"Hello, world!\")\n\nhello()";
    let text =
        format!("<tool_call>\n<function=python>\n<parameter=code>\n{code}\n</parameter>\n</function>\n</tool_call>\n");
    let expected = json!({ "code": code }).to_string();
    check(Hermes, &text, "", &[("python", &expected)]);
    check(
        Hermes,
        "<tool_call>\n<function=empty_args>\n</function>\n</tool_call>",
        "",
        &[("empty_args", "{}")],
    );
    check(
        Hermes,
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nSão Paulo\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
        "",
        &[("get_weather", r#"{"city":"São Paulo","days":3}"#)],
    );
}

// ---------------------------------------------------------------------------------------------
// Llama 3.x

#[test]
fn llama3_json_and_builtin_calls() {
    // test-chat.cpp: Llama 3.1 / 3.2 template outputs.
    check(
        Llama3,
        "{\"name\": \"special_function\", \"parameters\": {\"arg1\": 1}}",
        "",
        SPECIAL,
    );
    check(
        Llama3,
        "<|python_tag|>python.call(code=\"print('hey')\")",
        "",
        &[("python", r#"{"code":"print('hey')"}"#)],
    );
    check(
        Llama3,
        "<|python_tag|>code_interpreter.call(code=\"print('hey')\")",
        "",
        &[("code_interpreter", r#"{"code":"print('hey')"}"#)],
    );
    check(
        Llama3,
        "<|python_tag|>brave_search.call(query=\"weather in Paris\", count=3)",
        "",
        &[("brave_search", r#"{"query":"weather in Paris","count":3}"#)],
    );
    check(
        Llama3,
        "\n\n{\"type\": \"function\", \"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        "",
        &[("get_weather", r#"{"city":"Paris"}"#)],
    );
    check(
        Llama3,
        "<|python_tag|>{\"name\": \"special_function\", \"parameters\": {\"arg1\": 1}}",
        "",
        SPECIAL,
    );
}

#[test]
fn llama3_text_stays_text() {
    for text in [
        "Hello, world!\nWhat's up?",
        "\n\nHello",
        "Sure: {\"name\": \"special_function\", \"parameters\": {\"arg1\": 1}}",
        "{\"name\": \"Ada\", \"age\": 36}",
        "{\"answer\": 42}",
        "<|python_tag|>print('raw code')",
        "{\"name\": \"special_function\", \"parameters\": {\"arg1\": 1}",
    ] {
        check_content(Llama3, text);
    }
}

// ---------------------------------------------------------------------------------------------
// Mistral

#[test]
fn mistral_array_and_args_syntaxes() {
    // test-chat.cpp: Mistral Nemo.
    check(
        Mistral,
        "[TOOL_CALLS][{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}, \"id\": \"123456789\"}]",
        "",
        SPECIAL,
    );
    // test-chat.cpp: Ministral 3 / Magistral.
    check(Mistral, "[TOOL_CALLS]special_function[ARGS]{\"arg1\":1}", "", SPECIAL);
    check(
        Mistral,
        "[TOOL_CALLS]special_function[ARGS]{\"arg1\": 1}[TOOL_CALLS]special_function_with_opt[ARGS]{\"arg1\": 1, \"arg2\": 2}",
        "",
        &[
            ("special_function", ARG1),
            ("special_function_with_opt", r#"{"arg1":1,"arg2":2}"#),
        ],
    );
    check(
        Mistral,
        "[THINK]I'm\nthinking[/THINK][TOOL_CALLS]special_function[ARGS]{\"arg1\":1}",
        "[THINK]I'm\nthinking[/THINK]",
        SPECIAL,
    );
    check(
        Mistral,
        "[TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}, {\"name\": \"get_time\", \"arguments\": {}}]",
        "",
        &[("get_weather", r#"{"city":"Paris"}"#), ("get_time", "{}")],
    );
    check(
        Mistral,
        "[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Paris\"}",
        "",
        &[("get_weather", r#"{"city":"Paris"}"#)],
    );
}

#[test]
fn mistral_malformed_stays_content() {
    for text in [
        "[TOOL_CALLS][{\"name\": \"f\", \"arguments\": {]}]",
        "[TOOL_CALLS]special_function{\"arg1\": 1}",
        "[TOOL_CALLS][]",
        "Arrays look like [1, 2] and [TOOL] is not a marker.",
    ] {
        check_content(Mistral, text);
    }
}

// ---------------------------------------------------------------------------------------------
// DeepSeek

#[test]
fn deepseek_r1_and_v3_1_blocks() {
    // test-chat.cpp: DeepSeek R1 (llama.cpp's fixed template), reasoning not extracted.
    check(
        DeepSeek,
        "<think>I'm\nthinking</think>\n\n<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>special_function\n```json\n{\"arg1\": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "<think>I'm\nthinking</think>\n\n",
        SPECIAL,
    );
    check(
        DeepSeek,
        "<｜tool▁calls｜>function<｜tool▁sep｜>special_function\n```json\n{\"arg1\": 1}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "",
        SPECIAL,
    );
    // DeepSeek V3.1.
    check(
        DeepSeek,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>{\"arg1\": 1}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "",
        SPECIAL,
    );
    check(
        DeepSeek,
        "Checking both.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "Checking both.",
        &[
            ("get_time", r#"{"city":"Paris"}"#),
            ("get_weather", r#"{"city":"Paris"}"#),
        ],
    );
    // The block's end eaten by a stop at the end of the text.
    check(
        DeepSeek,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>{\"arg1\": 1}<｜tool▁call▁end｜>",
        "",
        SPECIAL,
    );
    check_content(
        DeepSeek,
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>{\"arg1\": 1}",
    );
}

// ---------------------------------------------------------------------------------------------
// Functionary v3.2, Command R7B, Granite, Generic

#[test]
fn functionary_v3_2() {
    // test-chat.cpp: meetkai functionary-medium-v3.2.
    check(
        FunctionaryV32,
        "all\nHello, world!\nnono\nWhat's up?\n>>>special_function\n{\"arg1\": 1}\n",
        "Hello, world!\nnono\nWhat's up?\n",
        SPECIAL,
    );
    check(
        FunctionaryV32,
        "python\n# This is a program:\nprint('hey')",
        "",
        &[("python", r##"{"code":"# This is a program:\nprint('hey')"}"##)],
    );
    check(
        FunctionaryV32,
        "special_function\n{\"arg1\": 1} \n                    ",
        "",
        SPECIAL,
    );
    check(
        FunctionaryV32,
        "all\nHello, world!\nWhat's up?",
        "Hello, world!\nWhat's up?",
        &[],
    );
    check(
        FunctionaryV32,
        "all\nIn a REPL, type >>> print(1)",
        "In a REPL, type >>> print(1)",
        &[],
    );
}

#[test]
fn command_r7b() {
    // test-chat.cpp: Command R7B, reasoning not extracted.
    check(
        CommandR7B,
        "<|START_THINKING|>I'm\nthinking<|END_THINKING|><|START_ACTION|>[\n    {\"tool_call_id\": \"0\", \"tool_name\": \"special_function\", \"parameters\": {\"arg1\": 1}}\n]<|END_ACTION|>",
        "<|START_THINKING|>I'm\nthinking<|END_THINKING|>",
        SPECIAL,
    );
    check(
        CommandR7B,
        "<|START_RESPONSE|>Hello, world!\nWhat's up?<|END_RESPONSE|>",
        "Hello, world!\nWhat's up?",
        &[],
    );
}

#[test]
fn granite() {
    check(
        Granite,
        "Let me check.<|tool_call|>[{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}]",
        "Let me check.",
        SPECIAL,
    );
}

#[test]
fn generic_shapes() {
    // test-chat.cpp: the generic handler's output.
    check(
        Generic,
        "{\n  \"tool_calls\": [\n    {\n      \"name\": \"special_function\",\n      \"arguments\": {\n        \"arg1\": 1\n      },\n      \"id\": \"123456789\"\n    }\n  ]\n}",
        "",
        SPECIAL,
    );
    check(
        Generic,
        "{\"tool_call\": {\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}}",
        "",
        SPECIAL,
    );
    check(
        Generic,
        "{\"type\": \"function\", \"function\": {\"name\": \"special_function\", \"arguments\": \"{\\\"arg1\\\": 1}\"}}",
        "",
        SPECIAL,
    );
    // SmolLM2 writes an array inside <tool_call>.
    check(
        Generic,
        "<tool_call>[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"get_time\", \"arguments\": {}}]</tool_call>",
        "",
        &[("get_weather", r#"{"city":"Paris"}"#), ("get_time", "{}")],
    );
    check_content(Generic, "{\n  \"response\": \"Hello, world!\\nWhat's up?\"\n}");
    check_content(Generic, "Hello, world!\nWhat's up?");
}

// ---------------------------------------------------------------------------------------------
// Streaming

fn content(text: &str) -> Delta {
    Delta::Content(text.to_string())
}

#[test]
fn content_passes_at_once_and_only_a_possible_marker_waits() {
    let mut parser = StreamParser::with_id_seed(Hermes, 7);
    assert_eq!(parser.push("Let me check"), vec![content("Let me check")]);
    assert_eq!(
        parser.push(" the <b>weather</b>. <tool_"),
        vec![content(" the <b>weather</b>. ")]
    );
    assert_eq!(parser.push("call>\n{\"name\": \"get_weather\", "), vec![]);
    assert_eq!(
        parser.push("\"arguments\": {\"city\": \"Paris\"}}\n</tool_call"),
        vec![]
    );
    let deltas = parser.push(">");
    let [Delta::Call { index: 0, call }] = deltas.as_slice() else {
        panic!("{deltas:?}");
    };
    assert_eq!(call.name, "get_weather");
    assert_eq!(call.arguments, r#"{"city":"Paris"}"#);
    assert_eq!(call.id, call_id(7, 0));
    assert_eq!(parser.push("\n"), vec![]);
    assert_eq!(parser.finish(), vec![]);
}

#[test]
fn a_leading_brace_waits_until_it_is_clear() {
    let mut parser = StreamParser::new(Llama3);
    assert_eq!(parser.push("  {\"na"), vec![]);
    assert_eq!(parser.push("me\": \"f\", \"parameters\": {\"x\": "), vec![]);
    let deltas = parser.push("1}}");
    assert!(matches!(&deltas[..], [Delta::Call { index: 0, call }] if call.name == "f"));

    let mut parser = StreamParser::new(Llama3);
    assert_eq!(parser.push("{\"a"), vec![]);
    assert_eq!(parser.push("nswer"), vec![content("{\"answer")]);
    assert_eq!(parser.push("\": 42}"), vec![content("\": 42}")]);

    let mut parser = StreamParser::new(Llama3);
    assert_eq!(parser.push("\n"), vec![]);
    assert_eq!(parser.push("Hi"), vec![content("\nHi")]);
}

#[test]
fn an_unfinished_call_is_content_at_finish() {
    let mut parser = StreamParser::new(Mistral);
    assert_eq!(parser.push("OK [TOOL_CALLS][{\"name\": \"f\""), vec![content("OK ")]);
    assert_eq!(parser.finish(), vec![content("[TOOL_CALLS][{\"name\": \"f\"")]);
    assert_eq!(parser.finish(), vec![]);
}

#[test]
fn ids_are_distinct() {
    let first = parse(
        Hermes,
        "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"b\", \"arguments\": {}}</tool_call>",
    );
    let second = parse(Hermes, "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>");
    let mut ids: Vec<&str> = first.calls.iter().chain(&second.calls).map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert!(id.len() == 9 && id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
}

/// A tool writing a file: a long argument arriving a few bytes at a time. Each push rescans the
/// pending call (cheap next to generating a token), and the call comes out whole and exact.
#[test]
fn a_long_call_streamed_in_small_chunks() {
    let code: String = (0..2000)
        .map(|i| format!("    print(\"line {i}: {{}}\", \"é\")\n"))
        .collect();
    let json_call = format!(
        "<tool_call>\n{}\n</tool_call>",
        json!({ "name": "write_file", "arguments": { "path": "a.py", "code": code } })
    );
    let xml_call = format!(
        "<tool_call>\n<function=write_file>\n<parameter=path>\na.py\n</parameter>\n<parameter=code>\n{code}\n</parameter>\n</function>\n</tool_call>"
    );
    // json! sorts keys; the parser keeps the model's order.
    let sorted = json!({ "path": "a.py", "code": code }).to_string();
    let in_order = format!("{{\"path\":\"a.py\",\"code\":{}}}", json!(code));
    for (text, expected) in [(json_call, sorted), (xml_call, in_order)] {
        let bounds: Vec<usize> = (0..text.len())
            .step_by(4)
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let chunks: Vec<&str> = bounds
            .iter()
            .zip(bounds.iter().skip(1).chain([&text.len()]))
            .map(|(&a, &b)| &text[a..b])
            .collect();
        let started = std::time::Instant::now();
        let parsed = stream(Hermes, &chunks);
        eprintln!(
            "{} bytes in {} chunks: {:?}",
            text.len(),
            chunks.len(),
            started.elapsed()
        );
        assert_eq!(parsed.content, "");
        assert_eq!(
            name_args(&parsed.calls),
            vec![("write_file".to_string(), expected.clone())]
        );
    }
}

const FORMATS: [ToolFormat; 8] = [
    Hermes,
    Llama3,
    Mistral,
    DeepSeek,
    FunctionaryV32,
    CommandR7B,
    Granite,
    Generic,
];

/// Pieces a random text is assembled from: whole calls, broken calls, bits of markup and plain
/// text, so that concatenations hit every path (marker prefixes at chunk ends included).
const COMMON_PIECES: &[&str] = &[
    "Hello, world!\n",
    "What's up? ",
    " ",
    "\n",
    "é☃🌦️ 東京 ",
    "<",
    "{",
    "}",
    "[",
    "]",
    "`",
    ">",
    "|",
    "\"",
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    "{\"name\": \"f\", \"parameters\": {\"a\": [1, \"}\"]}}",
    "{\"answer\": 42}",
    "{oops",
    "\"arguments\": {\"a\": 1}}",
];

const FORMAT_PIECES: &[(ToolFormat, &[&str])] = &[
    (
        Hermes,
        &[
            "<tool_call>\n{\"name\": \"special_function\", \"arguments\": {\"arg1\": 1}}\n</tool_call>",
            "<tool_call>",
            "</tool_call>",
            "<tool_",
            "<function=f>{\"x\": \"é\"}</function>",
            "<function=",
            "<tool_call>\n<function=g>\n<parameter=a>\n1\n</parameter>\n</function>\n</tool_call>",
            "<parameter=b>\nx\n</parameter>",
            "</function>",
            "```json\n",
            "```",
            "<response>",
        ],
    ),
    (
        Llama3,
        &[
            "<|python_tag|>python.call(code=\"print('hey')\")",
            "<|python_tag|>",
            "<|python",
            "x.call(",
            "q=1",
            ", ",
            ")",
        ],
    ),
    (
        Mistral,
        &[
            "[TOOL_CALLS]special_function[ARGS]{\"arg1\": 1}",
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {}}]",
            "[TOOL_CALLS]",
            "[TOOL_",
            "[ARGS]",
            "name",
        ],
    ),
    (
        DeepSeek,
        &[
            "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>special_function<｜tool▁sep｜>{\"arg1\": 1}<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
            "<｜tool▁calls▁begin｜>",
            "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{\"a\": 1}\n```<｜tool▁call▁end｜>",
            "<｜tool▁call▁end｜>",
            "<｜tool▁calls▁end｜>",
            "<｜tool",
        ],
    ),
    (
        FunctionaryV32,
        &[
            "all\n",
            ">>>special_function\n{\"arg1\": 1}\n",
            ">>>",
            ">>>all\n",
            "python\n",
            "f\n",
            ">>",
        ],
    ),
    (
        CommandR7B,
        &[
            "<|START_ACTION|>[{\"tool_call_id\": \"0\", \"tool_name\": \"f\", \"parameters\": {}}]<|END_ACTION|>",
            "<|START_ACTION|>",
            "<|END_ACTION|>",
            "<|START_RESPONSE|>",
            "<|END_RESPONSE|>",
            "<|START",
        ],
    ),
    (
        Granite,
        &[
            "<|tool_call|>[{\"name\": \"f\", \"arguments\": {}}]",
            "<|tool_call|>",
            "<|tool",
        ],
    ),
    (
        Generic,
        &[
            "{\"tool_calls\": [{\"name\": \"a\", \"arguments\": {}}]}",
            "{\"tool_call\": {\"name\": \"a\", \"arguments\": {}}}",
            "<tool_call>[{\"name\": \"a\", \"arguments\": {}}]</tool_call>",
            "<tool_call>",
            "</tool_call>",
        ],
    ),
];

fn pieces(format: ToolFormat) -> Vec<&'static str> {
    let own = FORMAT_PIECES
        .iter()
        .find(|(f, _)| *f == format)
        .map_or(&[][..], |(_, p)| *p);
    [COMMON_PIECES, own].concat()
}

fn split_at(text: &str, cuts: &[prop::sample::Index]) -> Vec<String> {
    let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
    let mut at: Vec<usize> = cuts.iter().map(|c| bounds[c.index(bounds.len())]).collect();
    at.push(text.len());
    at.sort_unstable();
    at.dedup();
    let mut last = 0;
    at.into_iter()
        .map(|end| {
            let chunk = text[last..end].to_string();
            last = end;
            chunk
        })
        .collect()
}

fn random_text() -> impl Strategy<Value = (ToolFormat, String, Vec<prop::sample::Index>)> {
    (0..FORMATS.len()).prop_flat_map(|f| {
        let format = FORMATS[f];
        let piece = prop_oneof![
            4 => prop::sample::select(pieces(format)).prop_map(str::to_string),
            1 => "[a-z <>{}\\[\\]|\":,\n`]{0,6}",
        ];
        (
            Just(format),
            prop::collection::vec(piece, 0..10).prop_map(|p| p.concat()),
            prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any split of any text streams to exactly what `parse` finds in the whole.
    #[test]
    fn any_split_streams_like_the_whole((format, text, cuts) in random_text()) {
        let whole = parse(format, &text);
        let chunks = split_at(&text, &cuts);
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let streamed = stream(format, &chunks);
        prop_assert_eq!(&streamed.content, &whole.content);
        prop_assert_eq!(name_args(&streamed.calls), name_args(&whole.calls));
        for call in &whole.calls {
            let arguments: Value = serde_json::from_str(&call.arguments).expect("arguments are JSON");
            prop_assert!(arguments.is_object(), "{}", call.arguments);
        }
        // Without calls nothing is lost (these two formats drop their markup headers).
        if whole.calls.is_empty() && !matches!(format, FunctionaryV32 | CommandR7B) {
            prop_assert_eq!(&whole.content, &text);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Forced calls

fn tools() -> Vec<Tool> {
    vec![
        Tool {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({
                "type": "object",
                "properties": { "city": { "type": "string" } },
                "required": ["city"],
            }),
        },
        Tool {
            name: "get_time".into(),
            description: None,
            parameters: json!({ "type": "object", "properties": {} }),
        },
    ]
}

fn call_schema_of(tool: &Tool) -> Value {
    json!({
        "type": "object",
        "properties": { "name": { "const": tool.name }, "arguments": tool.parameters },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

#[test]
fn forced_schema_shapes() {
    let tools = tools();
    assert_eq!(forced_schema(&tools, &ToolChoice::Auto, false), None);
    assert_eq!(forced_schema(&tools, &ToolChoice::None, true), None);
    assert_eq!(forced_schema(&tools, &ToolChoice::Function("nope".into()), false), None);
    assert_eq!(forced_schema(&[], &ToolChoice::Required, false), None);

    let both = json!({ "anyOf": [call_schema_of(&tools[0]), call_schema_of(&tools[1])] });
    assert_eq!(forced_schema(&tools, &ToolChoice::Required, false), Some(both.clone()));
    assert_eq!(
        forced_schema(&tools, &ToolChoice::Required, true),
        Some(json!({ "type": "array", "items": both, "minItems": 1 }))
    );
    let time = ToolChoice::Function("get_time".into());
    assert_eq!(forced_schema(&tools, &time, false), Some(call_schema_of(&tools[1])));
    assert_eq!(
        forced_schema(&tools, &time, true),
        Some(json!({ "type": "array", "items": call_schema_of(&tools[1]), "minItems": 1 }))
    );
}

#[test]
fn forced_schema_rebases_a_tools_own_refs() {
    let mut tools = tools();
    tools.push(Tool {
        name: "book".into(),
        description: None,
        parameters: json!({
            "type": "object",
            "properties": {
                "from": { "$ref": "#/$defs/Place" },
                "to": { "$ref": "#/$defs/Place" },
                "note": { "const": { "$ref": "#/not/a/ref" } },
            },
            "$defs": { "Place": { "type": "object", "properties": { "city": { "type": "string" } } } },
        }),
    });
    tools.push(Tool {
        name: "nothing".into(),
        description: None,
        parameters: Value::Null,
    });
    let schema = forced_schema(&tools, &ToolChoice::Required, true).unwrap();
    let book = &schema["items"]["anyOf"][2];
    assert_eq!(book["properties"]["arguments"], json!({ "$ref": "#/$defs/tool2" }));
    let moved = &schema["$defs"]["tool2"];
    assert_eq!(moved["properties"]["from"]["$ref"], "#/$defs/tool2/$defs/Place");
    assert_eq!(moved["properties"]["note"]["const"]["$ref"], "#/not/a/ref");
    // The pointer resolves from the root, as json_schema_to_grammar resolves it.
    let pointer = moved["properties"]["to"]["$ref"].as_str().unwrap();
    assert_eq!(
        schema.pointer(&pointer[1..]),
        Some(&json!({ "type": "object", "properties": { "city": { "type": "string" } } }))
    );
    assert_eq!(
        schema["items"]["anyOf"][3]["properties"]["arguments"],
        json!({ "type": "object" })
    );
    assert_eq!(schema["items"]["anyOf"][0], call_schema_of(&tools[0]));
}

#[test]
fn check_choice_names_the_problem() {
    let tools = tools();
    assert_eq!(check_choice(&tools, &ToolChoice::Auto), Ok(()));
    assert_eq!(check_choice(&[], &ToolChoice::None), Ok(()));
    assert_eq!(check_choice(&tools, &ToolChoice::Required), Ok(()));
    assert_eq!(check_choice(&tools, &ToolChoice::Function("get_time".into())), Ok(()));
    let err = check_choice(&tools, &ToolChoice::Function("get_stock".into())).unwrap_err();
    assert!(
        err.contains("\"get_stock\"") && err.contains("get_weather, get_time"),
        "{err}"
    );
    let err = check_choice(&[], &ToolChoice::Required).unwrap_err();
    assert!(err.contains("required"), "{err}");
    let mut bad = tools.clone();
    bad[1].parameters = json!("a string");
    let err = check_choice(&bad, &ToolChoice::Required).unwrap_err();
    assert!(err.contains("\"get_time\""), "{err}");
    assert_eq!(check_choice(&bad, &ToolChoice::Function("get_weather".into())), Ok(()));
}

#[test]
fn parse_forced_reads_one_call_or_an_array() {
    let calls = parse_forced("{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}\n").unwrap();
    assert_eq!(
        name_args(&calls),
        vec![("get_weather".to_string(), r#"{"city":"Zürich"}"#.to_string())]
    );
    let calls = parse_forced(
        " [ {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}},\n  {\"name\": \"get_time\", \"arguments\": {}} ] ",
    )
    .unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].name, "get_time");
    assert_eq!(calls[1].arguments, "{}");
    assert_ne!(calls[0].id, calls[1].id);
    for bad in [
        "",
        "not json",
        "{\"name\": \"get_time\", \"arguments\": {}} trailing",
        "{\"arguments\": {}}",
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par",
        "[]",
        "[1]",
        "{\"name\": \"get_time\", \"arguments\": 3}",
    ] {
        assert!(parse_forced(bad).is_err(), "{bad:?}");
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "\\PC{0,8}|[\\n\\t\"\\\\/]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Whatever arguments a schema allows come back as the same compact JSON, pretty-printed or not.
    #[test]
    fn parse_forced_round_trips(
        name in "[a-zA-Z_][a-zA-Z0-9_-]{0,20}",
        arguments in prop::collection::btree_map("\\PC{1,6}", arbitrary_json(), 0..5),
        pretty in any::<bool>(),
        parallel in any::<bool>(),
    ) {
        let arguments = Value::Object(arguments.into_iter().collect());
        let call = json!({ "name": name, "arguments": arguments });
        let output = if parallel { json!([call, call]) } else { call };
        let text = if pretty {
            serde_json::to_string_pretty(&output).unwrap()
        } else {
            output.to_string()
        };
        let calls = parse_forced(&text).unwrap();
        prop_assert_eq!(calls.len(), if parallel { 2 } else { 1 });
        for call in calls {
            prop_assert_eq!(&call.name, &name);
            // The model's digits, verbatim and compact (parsing them back into f64 could round).
            prop_assert_eq!(&call.arguments, &arguments.to_string());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// History

fn message(role: &str) -> Message {
    Message {
        role: role.into(),
        ..Message::default()
    }
}

fn answer(id: Option<&str>) -> Message {
    Message {
        tool_call_id: id.map(str::to_string),
        content: Some("18°C".into()),
        ..message("tool")
    }
}

#[test]
fn validate_history_matches_tool_messages_to_calls() {
    let call = ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris"}"#.into(),
    };
    let assistant = Message {
        tool_calls: vec![call],
        ..message("assistant")
    };
    let good = vec![
        message("user"),
        assistant.clone(),
        answer(Some("call_1")),
        message("user"),
    ];
    assert_eq!(validate_history(&good), Ok(()));
    assert_eq!(validate_history(&[]), Ok(()));

    let unknown = vec![message("user"), assistant.clone(), answer(Some("call_2"))];
    let err = validate_history(&unknown).unwrap_err();
    assert!(err.contains("messages[2]") && err.contains("\"call_2\""), "{err}");

    let too_early = vec![message("user"), answer(Some("call_1")), assistant];
    let err = validate_history(&too_early).unwrap_err();
    assert!(err.contains("messages[1]") && err.contains("\"call_1\""), "{err}");

    let missing = vec![message("user"), answer(None)];
    let err = validate_history(&missing).unwrap_err();
    assert!(err.contains("no tool_call_id"), "{err}");
}
