//! A model's own chat template: the Jinja program in its GGUF (`tokenizer.chat_template`) that
//! turns a conversation into the exact prompt text the model was trained on.
//!
//! Why a real Jinja engine: templates are written for Hugging Face's `transformers`, which runs
//! them with Python's Jinja2; there are thousands of them, and tool calling only works when the
//! tools, calls and results are laid out the way the model saw them in training. llama.cpp's
//! server renders them with its own engine (minja); this module does the same with minijinja,
//! configured like `transformers` (`trim_blocks`, `lstrip_blocks`, loop controls) and given the
//! Python-isms templates rely on: string and dict methods (minijinja-contrib's pycompat),
//! `raise_exception`, `strftime_now` and a `tojson` that writes what Python's `json.dumps`
//! writes (`{"city": "Paris"}`, no HTML escaping), since models learnt that spacing.
//!
//! Why the values are shaped as they are: templates read OpenAI-shaped messages, but differ in
//! where they look (`tool_call.function.arguments` in Llama 3.1, `tool_call.arguments` after
//! `{% set tool_call = tool_call.function %}` in Qwen and Hermes). As in llama.cpp, arguments are
//! passed as a parsed JSON object, and a call answers both spellings while serializing as the
//! OpenAI shape only. Keys a message lacks are left out rather than set to none, because
//! templates test them with `'tool_calls' in message` and `is defined`.
//!
//! Why fuel: a template is a program from a model file. It is compiled once and runs in
//! microseconds for real conversations, but a hostile or broken one could loop or build huge
//! strings; minijinja's fuel bounds both the instructions and the memory of one render.

use std::ffi::CString;
use std::path::Path;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Serde, ValueKind};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value};
use vramd_gguf::{Gguf, GgufFile};

use super::{Message, Tool, ToolCall};

/// Longest `tokenizer.chat_template` accepted. Real templates are a few kilobytes; the longest in
/// llama.cpp's collection (gpt-oss, with built-in tool instructions) is 17 KB.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// Fuel for one render: roughly instructions executed plus bytes built / 64. A 2,000-message
/// conversation through a tool-calling template uses a few hundred thousand, so this is ample
/// headroom while bounding a runaway template to about a second and ~256 MiB.
const RENDER_FUEL: u64 = 4_000_000;

/// The name the template is registered under; it appears in error messages (`in chat_template:12`).
const TEMPLATE_NAME: &str = "chat_template";

/// Why a chat template could not be read, compiled or rendered. The messages are meant for the
/// API client: a render failure is a bad request, and `Raised` carries the template's own words
/// (e.g. "Conversation roles must alternate user/assistant/user/assistant/...").
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the chat template of {}: {source}", path.display())]
    Gguf {
        path: std::path::PathBuf,
        #[source]
        source: vramd_gguf::ReadError,
    },
    #[error("tokenizer.chat_template is not a string")]
    NotAString,
    #[error("tokenizer.chat_template is {len} bytes, over the limit of {MAX_TEMPLATE_BYTES}")]
    TooLarge { len: usize },
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("the chat template rejected the conversation: {0}")]
    Raised(String),
    #[error("the chat template failed to render: {0}")]
    Render(String),
}

/// A compiled chat template with the token texts it may insert. Cheap to share (`Send + Sync`):
/// compile once per model, render per request.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
    supports_tools: bool,
    quirks: Quirks,
}

/// What a template cannot take and the conversation is adapted for, found by test renders when
/// it is compiled, as llama.cpp does.
#[derive(Clone, Copy, Debug)]
struct Quirks {
    /// False for templates that raise on (or drop) a system message, like Gemma's; their system
    /// messages are then merged into the next user message.
    system_role: bool,
    /// True for templates that fail on a none content beside tool calls (Qwen 3 tests
    /// `'</think>' in message.content`); they get the empty string instead.
    text_content: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("supports_tools", &self.supports_tools)
            .field("quirks", &self.quirks)
            .finish()
    }
}

impl ChatTemplate {
    /// From a GGUF model file: `tokenizer.chat_template`, and the bos/eos token text from
    /// `tokenizer.ggml.bos_token_id` / `eos_token_id` looked up in `tokenizer.ggml.tokens`.
    /// `Ok(None)` when the file has no template.
    pub fn from_gguf(path: &Path) -> Result<Option<ChatTemplate>, TemplateError> {
        let file = GgufFile::open(path).map_err(|source| TemplateError::Gguf {
            path: path.to_owned(),
            source,
        })?;
        Self::from_metadata(&file)
    }

    /// Like [`from_gguf`](Self::from_gguf), for a file already parsed (the daemon reads every
    /// model's header anyway to size its VRAM).
    ///
    /// The reader has checked every length against the file; only the template is copied, and
    /// only two tokens are looked up, so a hostile file costs no more than its header. A missing
    /// or out-of-range token id gives an empty token text: many templates never use it, and the
    /// ones that do render a prompt the model still understands.
    pub fn from_metadata(gguf: &Gguf) -> Result<Option<ChatTemplate>, TemplateError> {
        let Some(value) = gguf.metadata("tokenizer.chat_template") else {
            return Ok(None);
        };
        let source = value.as_str().ok_or(TemplateError::NotAString)?;
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge { len: source.len() });
        }
        let token = |key: &str| {
            let id = gguf.get_u64(key).and_then(|id| usize::try_from(id).ok());
            let tokens = gguf.get_array("tokenizer.ggml.tokens").map(|(_, items)| items);
            match (id, tokens) {
                (Some(id), Some(tokens)) => tokens.get(id).and_then(|t| t.as_str()).unwrap_or(""),
                _ => "",
            }
        };
        let bos = token("tokenizer.ggml.bos_token_id");
        let eos = token("tokenizer.ggml.eos_token_id");
        Self::new(source, bos, eos).map(Some)
    }

    /// Compiles `source`; an invalid template is an error here, not at the first request.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge { len: source.len() });
        }
        let mut env = environment();
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| TemplateError::Compile(describe(&e)))?;
        let supports_tools = env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false);
        let mut template = ChatTemplate {
            env,
            source: source.to_owned(),
            bos: bos.to_owned(),
            eos: eos.to_owned(),
            supports_tools,
            quirks: Quirks {
                system_role: true,
                text_content: false,
            },
        };
        template.quirks.system_role = template.probe_system_role();
        template.quirks.text_content = template.probe_text_content();
        Ok(template)
    }

    /// Renders the conversation into prompt text. `tools` is left undefined when empty, as
    /// llama.cpp does, so templates that test `tools is defined` show no tool section.
    pub fn render(
        &self,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with(self.quirks, messages, tools, add_generation_prompt)
    }

    fn render_with(
        &self,
        quirks: Quirks,
        messages: &[Message],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let merged;
        let messages = if quirks.system_role {
            messages
        } else {
            merged = merge_system_messages(messages);
            &merged
        };
        let messages: Vec<Value> = messages.iter().map(|m| message_value(m, quirks.text_content)).collect();
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages.into()),
            ("add_generation_prompt", add_generation_prompt.into()),
            ("bos_token", self.bos.as_str().into()),
            ("eos_token", self.eos.as_str().into()),
        ];
        if !tools.is_empty() {
            ctx.push(("tools", tools.iter().map(tool_value).collect::<Vec<_>>().into()));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        template
            .render(Value::from_pairs(ctx))
            .map_err(|e| match raised_message(&e) {
                Some(msg) => TemplateError::Raised(msg),
                None => TemplateError::Render(describe(&e)),
            })
    }

    /// Whether the template mentions tools at all (it reads the `tools` variable). A template
    /// that does not would silently drop the tools of a request.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Whether system messages reach the template as such (else they are merged into the next
    /// user message before rendering).
    pub fn supports_system_role(&self) -> bool {
        self.quirks.system_role
    }

    /// The template's Jinja source, as found in the model.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of the beginning-of-sequence token (`bos_token`), empty when unknown. Templates
    /// that start with `{{ bos_token }}` already put it in the prompt, so whoever tokenizes the
    /// prompt must not add a second one.
    pub fn bos_token(&self) -> &str {
        &self.bos
    }

    /// The text of the end-of-sequence token (`eos_token`), empty when unknown.
    pub fn eos_token(&self) -> &str {
        &self.eos
    }

    /// llama.cpp's test: a system message whose text does not come out (or that makes the
    /// template raise) means the template has no system role.
    fn probe_system_role(&self) -> bool {
        const NEEDLE: &str = "<vramd system needle>";
        let system = Message {
            role: "system".into(),
            content: Some(NEEDLE.into()),
            ..Message::default()
        };
        let probe = [system, user_message("Hi".into())];
        let quirks = Quirks {
            system_role: true,
            ..self.quirks
        };
        self.render_with(quirks, &probe, &[], false)
            .is_ok_and(|text| text.contains(NEEDLE))
    }

    /// minja's test: the empty string is only used where a none content makes the template
    /// fail and the empty string does not.
    fn probe_text_content(&self) -> bool {
        let call = ToolCall {
            // Nine characters: Mistral's templates raise on any other id length.
            id: "call00001".into(),
            name: "probe".into(),
            arguments: "{}".into(),
        };
        let probe = [
            user_message("Hi".into()),
            Message {
                role: "assistant".into(),
                tool_calls: vec![call],
                ..Message::default()
            },
        ];
        let renders = |text_content| {
            let quirks = Quirks {
                text_content,
                ..self.quirks
            };
            self.render_with(quirks, &probe, &[], false).is_ok()
        };
        !renders(false) && renders(true)
    }
}

/// The engine, configured as `transformers` configures Jinja2 for chat templates.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    let syntax = minijinja::syntax::SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    // Prompts are plain text: no HTML escaping, whatever a template might be named.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_fuel(Some(RENDER_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env
}

/// The error `raise_exception` returns, found again in the render error to tell the client the
/// template's own words rather than an engine message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Raised(String);

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

fn raised_message(err: &Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(raised) = e.downcast_ref::<Raised>() {
            return Some(raised.0.clone());
        }
        source = e.source();
    }
    None
}

/// An engine error in one line, with where in the template it happened and its cause.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// `strftime_now(format)`: the local time, formatted by the C library as Python's
/// `time.strftime` does (Llama 3.x templates print today's date with it). The daemon never
/// calls `setlocale`, so names are in English whatever the environment says.
fn strftime_now(format: &str) -> Result<String, Error> {
    let bad = |why: &str| Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {why}"));
    let c_format = CString::new(format).map_err(|_| bad("the format contains a NUL byte"))?;
    let mut buf = [0u8; 256];
    // SAFETY: `time(NULL)` only returns; `localtime_r` writes the zeroed `tm` we own; `strftime`
    // writes at most `buf.len()` bytes into `buf` (returning how many) and reads the
    // NUL-terminated format and the initialised `tm`.
    let written = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return Err(bad("cannot read the local time"));
        }
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), c_format.as_ptr(), &tm)
    };
    if written == 0 && !format.is_empty() {
        return Err(bad("the result is empty or longer than 256 bytes"));
    }
    Ok(String::from_utf8_lossy(&buf[..written]).into_owned())
}

/// `tojson` as `transformers` defines it: `json.dumps(value, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`. minijinja's own escapes `<`, `>`, `&` and `'`
/// for HTML and drops the spaces after `,` and `:`, which would change what the model sees.
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
        None => None,
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Accepted for compatibility: output is never ASCII-escaped, as with ensure_ascii=False.
    let _ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?;
    let separators = kwargs.get::<Option<Value>>("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(seps) if !seps.is_none() => {
            let pick = |i: usize| -> Result<String, Error> { Ok(seps.get_item_by_index(i)?.to_string()) };
            (pick(0)?, pick(1)?)
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let mut writer = JsonWriter {
        out: String::new(),
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    writer.value(value, 0)?;
    Ok(Value::from_safe_string(writer.out))
}

/// Nesting `tojson` writes: serde_json's parsing limit, so any JSON a request carries fits.
/// Without it a template could nest a value (or a namespace in itself) until the stack overflows.
const MAX_JSON_DEPTH: usize = 128;

/// Writes values as Python's `json.dumps` does.
struct JsonWriter {
    out: String,
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonWriter {
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_JSON_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: value nested deeper than {MAX_JSON_DEPTH}"),
            ));
        }
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self.out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(value),
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container('[', ']', depth, items.len(), |w, i, depth| w.value(&items[i], depth))?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container('{', '}', depth, keys.len(), |w, i, depth| {
                    w.string(&keys[i].to_string());
                    w.out.push_str(&w.key_sep);
                    w.value(&value.get_item(&keys[i])?, depth)
                })?;
            }
            _ => self.string(&value.to_string()),
        }
        Ok(())
    }

    fn container<F>(&mut self, open: char, close: char, depth: usize, len: usize, mut item: F) -> Result<(), Error>
    where
        F: FnMut(&mut Self, usize, usize) -> Result<(), Error>,
    {
        self.out.push(open);
        for i in 0..len {
            if i > 0 {
                self.out.push_str(&self.item_sep);
            }
            self.newline(depth + 1);
            item(self, i, depth + 1)?;
        }
        if len > 0 {
            self.newline(depth);
        }
        self.out.push(close);
        Ok(())
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = self.indent {
            self.out.push('\n');
            self.out.push_str(&" ".repeat(indent * depth));
        }
    }

    /// Integers as they are; floats with their decimal point (`1.0`, `0.5`); non-finite ones as
    /// Python's `NaN` / `Infinity`, which `json.dumps` also writes.
    fn number(&mut self, value: &Value) {
        let text = value.to_string();
        match f64::try_from(value.clone()) {
            Ok(f) if f.is_nan() => self.out.push_str("NaN"),
            Ok(f) if f.is_infinite() => self.out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
            _ => self.out.push_str(&text),
        }
    }

    /// A JSON string without ASCII escaping (`ensure_ascii=False`): serde_json escapes exactly
    /// what Python does then (quote, backslash, control characters).
    fn string(&mut self, s: &str) {
        self.out
            .push_str(&serde_json::to_string(s).expect("a string always serializes"));
    }
}

/// A message as templates expect it: OpenAI's shape, with absent fields left out.
///
/// A missing content is none beside tool calls (where templates test `if message.content`)
/// unless `text_content` asks for the empty string; elsewhere it is the empty string, since
/// templates concatenate it (`'\n' + message.content`).
fn message_value(m: &Message, text_content: bool) -> Value {
    let content = match (&m.content, m.tool_calls.is_empty() || text_content) {
        (Some(c), _) => Value::from(c.as_str()),
        (None, false) => Value::from(()),
        (None, true) => Value::from(""),
    };
    let mut fields: Vec<(&str, Value)> = vec![("role", m.role.as_str().into()), ("content", content)];
    if !m.tool_calls.is_empty() {
        let calls: Vec<Value> = m
            .tool_calls
            .iter()
            .map(|c| Value::from_object(CallValue::new(c)))
            .collect();
        fields.push(("tool_calls", calls.into()));
    }
    if let Some(id) = &m.tool_call_id {
        fields.push(("tool_call_id", id.as_str().into()));
    }
    if let Some(name) = &m.name {
        fields.push(("name", name.as_str().into()));
    }
    Value::from_pairs(fields)
}

/// A tool as OpenAI sends it: `{type: "function", function: {name, description, parameters}}`.
/// The description is always there (empty when absent), as llama.cpp passes it, because
/// templates concatenate it.
fn tool_value(t: &Tool) -> Value {
    let function = Value::from_pairs([
        ("name", Value::from(t.name.as_str())),
        ("description", Value::from(t.description.as_deref().unwrap_or(""))),
        ("parameters", Value::from(Serde(&t.parameters))),
    ]);
    Value::from_pairs([("type", Value::from("function")), ("function", function)])
}

/// An assistant's tool call: `{id, type, function: {name, arguments}}`, which also answers
/// `name` and `arguments` directly for templates that skip `.function`, without those two
/// showing when a template dumps the call with `tojson`.
#[derive(Debug)]
struct CallValue {
    id: Value,
    function: Value,
    name: Value,
    arguments: Value,
}

impl CallValue {
    fn new(call: &ToolCall) -> CallValue {
        let name = Value::from(call.name.as_str());
        let arguments = arguments_value(&call.arguments);
        CallValue {
            id: Value::from(call.id.as_str()),
            function: Value::from_pairs([("name", name.clone()), ("arguments", arguments.clone())]),
            name,
            arguments,
        }
    }
}

impl Object for CallValue {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        Some(match key.as_str()? {
            "id" => self.id.clone(),
            "type" => Value::from("function"),
            "function" => self.function.clone(),
            "name" => self.name.clone(),
            "arguments" => self.arguments.clone(),
            _ => return None,
        })
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["id", "type", "function"])
    }
}

/// The arguments as a parsed JSON object (key order kept), as llama.cpp passes them; text that
/// is not a JSON object stays text, so a malformed call from an earlier turn still renders.
fn arguments_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if v.kind() == ValueKind::Map => v,
        _ => Value::from(text),
    }
}

/// For templates without a system role: each run of system messages is joined into the next
/// user message (`system\nuser`), or becomes a user message of its own when none follows, as
/// llama.cpp's polyfill does.
fn merge_system_messages(messages: &[Message]) -> Vec<Message> {
    let mut out = Vec::with_capacity(messages.len());
    let mut pending: Option<String> = None;
    for m in messages {
        if m.role == "system" {
            let text = m.content.as_deref().unwrap_or("");
            pending = Some(match pending.take() {
                Some(p) => format!("{p}\n{text}"),
                None => text.to_owned(),
            });
            continue;
        }
        let mut m = m.clone();
        if let Some(system) = pending.take() {
            if m.role == "user" {
                let user = m.content.as_deref().unwrap_or("");
                m.content = Some(if user.is_empty() {
                    system
                } else {
                    format!("{system}\n{user}")
                });
            } else {
                out.push(user_message(system));
            }
        }
        out.push(m);
    }
    if let Some(system) = pending {
        out.push(user_message(system));
    }
    out
}

fn user_message(content: String) -> Message {
    Message {
        role: "user".into(),
        content: Some(content),
        ..Message::default()
    }
}

#[cfg(test)]
mod tests;
