//! Tool calls in what a model wrote, found while it streams, and the JSON Schema that forces a
//! valid call.
//!
//! Models announce a call in the syntax they were trained on, and the chat template in their GGUF
//! is what tells which ([`detect`]). The syntaxes follow llama.cpp's `common/chat.cpp` (its
//! per-format handlers: Hermes 2 Pro, Llama 3.x, Mistral Nemo, Magistral/Ministral 3, DeepSeek
//! R1/V3.1, Functionary v3.2, Command R7B, Granite, Generic) and the outputs its
//! `tests/test-chat.cpp` checks; this module's tests reuse those outputs.
//!
//! Why one engine for [`parse`] and [`StreamParser`]: `parse` is the streaming parser fed the whole
//! text at once. The engine decides about the start of its buffer only when no continuation could
//! change that decision (text that cannot begin a call is content; a call is taken when its end
//! is seen; a malformed one is content), so every split of a text into chunks yields the same
//! content and calls. A property test checks exactly that.
//!
//! Why calls that do not parse stay content: a model that meant to call and wrote broken JSON
//! should show the user what it wrote rather than lose it; the text is never dropped, except the
//! markup that was consumed as a call and the whitespace around calls.
//!
//! Forced calls (`tool_choice` `required` or a named function) do not go through the formats: the
//! worker constrains generation with a grammar made from [`forced_schema`], so the output is one
//! plain JSON call (or an array of them), read by [`parse_forced`].

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::IgnoredAny;
use serde_json::{json, Map, Value};

use super::{Message, Tool, ToolCall, ToolChoice};

/// The tool-call syntax of a model family, as it appears in the generated text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ToolFormat {
    /// Hermes 2/3 Pro, Qwen 2.5/3, QwQ, SmolLM3 and other ChatML tool models:
    /// `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, one block per call. Also read, as
    /// llama.cpp does: a bare `{"name": …, "arguments": …}` at the start, `<function=NAME>{…}</function>`,
    /// `<function name="NAME">…`, the same object in `<function_call>`, `<tools>`, `<tool>`,
    /// `<response>`, `<json>`, `<xml>` or `<JSON>` tags, any of these in a code fence, and
    /// Qwen3-Coder's XML body
    /// `<tool_call><function=NAME><parameter=KEY>VALUE</parameter>…</function></tool_call>`.
    Hermes,
    /// Llama 3.1/3.2/3.3: a bare `{"name": …, "parameters": {…}}` at the start of the message, or
    /// `<|python_tag|>NAME.call(key=VALUE, …)` for built-in tools (or a JSON call after the tag).
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": …, "arguments": {…}, "id": …}]` (Nemo, Small, 7B v0.3) and
    /// `[TOOL_CALLS]NAME[ARGS]{…}` (Magistral, Devstral, Ministral 3; `[CALL_ID]id` allowed
    /// before `[ARGS]`), one `[TOOL_CALLS]` per call.
    Mistral,
    /// DeepSeek R1 and V3: a `<｜tool▁calls▁begin｜>` … `<｜tool▁calls▁end｜>` block of calls
    /// `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`, a newline, the arguments in a JSON code
    /// fence, `<｜tool▁call▁end｜>`; V3.1 writes each call as
    /// `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>` in the same block.
    DeepSeek,
    /// Functionary v3.2: `>>>NAME\n{…}`, the first call without `>>>`; `all\n` (the recipient
    /// for the user) introduces plain text, `python\n` may be followed by raw code.
    FunctionaryV32,
    /// Command R7B: `<|START_ACTION|>[{"tool_call_id": …, "tool_name": …, "parameters": {…}}]<|END_ACTION|>`.
    CommandR7B,
    /// IBM Granite 3.x: `<|tool_call|>[{"name": …, "arguments": {…}}]`.
    Granite,
    /// Any other model: a bare JSON object at the start of the message (`{"name": …,
    /// "arguments": …}`, `{"tool_call": {…}}` or `{"tool_calls": […]}`, llama.cpp's generic
    /// shape), or `<tool_call>` blocks holding an object or an array (SmolLM2's habit).
    Generic,
}

/// Hermes-family call openers: the tags, then the code fences small models put around a
/// call (llama.cpp accepts both).
const HERMES_MARKERS: &[&str] = &[
    "<tool_call>",
    "<function_call>",
    "<function=",
    "<function name=\"",
    "<tools>",
    "<tool>",
    "<response>",
    "<json>",
    "<xml>",
    "<JSON>",
    "```json\n",
    "```xml\n",
    "```\n",
];
const HERMES_TAGS: &[&str] = HERMES_MARKERS.split_at(10).0;
/// Code fences small models put around a call (llama.cpp accepts them for Hermes).
const FENCES: &[&str] = HERMES_MARKERS.split_at(10).1;
const GENERIC_TAGS: &[&str] = &["<tool_call>"];
const COMMAND_R7B_MARKERS: &[&str] = &["<|START_ACTION|>", "<|START_RESPONSE|>", "<|END_RESPONSE|>"];
/// DeepSeek's block opener, with the misspellings of the R1 distills that llama.cpp accepts.
const DEEPSEEK_BEGIN: &[&str] = &[
    "<｜tool▁calls▁begin｜>",
    "<｜tool_calls_begin｜>",
    "<｜tool calls begin｜>",
    "<｜tool\\_calls\\_begin｜>",
    "<｜tool▁calls｜>",
];
const DEEPSEEK_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DEEPSEEK_SEP: &str = "<｜tool▁sep｜>";
const DEEPSEEK_CALL_END: &str = "<｜tool▁call▁end｜>";
const DEEPSEEK_END: &str = "<｜tool▁calls▁end｜>";

/// Chooses the format from the chat template's source, following the tests and their order in
/// llama.cpp's `common_chat_templates_apply_jinja` (the most specific markers first: DeepSeek
/// and Command R7B templates also mention other syntaxes). Qwen3-Coder and Nemotron 3
/// templates contain `<tool_call>` and get [`ToolFormat::Hermes`], which reads their XML body.
pub fn detect(template_source: &str) -> ToolFormat {
    let has = |s: &str| template_source.contains(s);
    if has("<｜tool▁calls▁begin｜>") {
        ToolFormat::DeepSeek
    } else if has("<|START_ACTION|>") {
        ToolFormat::CommandR7B
    } else if has("<|tool_call|>") {
        ToolFormat::Granite
    } else if has("<tool_call>") {
        ToolFormat::Hermes
    } else if has(">>>all") {
        ToolFormat::FunctionaryV32
    } else if has("<|python_tag|>")
        || has("<|start_header_id|>ipython<|end_header_id|>")
        || (has("ipython") && has("\"parameters\""))
    {
        ToolFormat::Llama3
    } else if has("[TOOL_CALLS]") {
        ToolFormat::Mistral
    } else {
        ToolFormat::Generic
    }
}

impl ToolFormat {
    /// A short name, for logs and diagnostics.
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "hermes",
            ToolFormat::Llama3 => "llama3",
            ToolFormat::Mistral => "mistral",
            ToolFormat::DeepSeek => "deepseek",
            ToolFormat::FunctionaryV32 => "functionary-v3.2",
            ToolFormat::CommandR7B => "command-r7b",
            ToolFormat::Granite => "granite",
            ToolFormat::Generic => "generic",
        }
    }

    /// The texts that open a call anywhere in a message (and, for Command R7B, the response tags
    /// the parser removes). Many are special tokens: the worker must detokenize them as text, or
    /// the parser never sees a call. They are also the words a lazy grammar would trigger on.
    /// (Hermes, Llama 3 and Generic also take a bare JSON call at the start of the message, and
    /// Functionary a `NAME\n` there; those have no marker.)
    pub fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::Hermes => HERMES_MARKERS,
            ToolFormat::Generic => GENERIC_TAGS,
            ToolFormat::Llama3 => &["<|python_tag|>"],
            ToolFormat::Mistral => &["[TOOL_CALLS]"],
            ToolFormat::DeepSeek => DEEPSEEK_BEGIN,
            ToolFormat::FunctionaryV32 => &[">>>"],
            ToolFormat::CommandR7B => COMMAND_R7B_MARKERS,
            ToolFormat::Granite => &["<|tool_call|>"],
        }
    }

    /// Whether a JSON object standing where a call may begin (the start of the message, or right
    /// after a call) is read as a call.
    fn bare_json(self) -> bool {
        matches!(self, ToolFormat::Hermes | ToolFormat::Llama3 | ToolFormat::Generic)
    }

    /// Reads a call at the start of `c`, which begins with (a prefix of) one of the markers.
    fn at_marker(self, c: &mut Cur) -> Read<Found> {
        match self {
            ToolFormat::Hermes if c.rest().starts_with('`') => fenced(c).map(Found::Calls),
            ToolFormat::Hermes => hermes_tag(c, HERMES_TAGS).map(Found::Calls),
            ToolFormat::Generic => hermes_tag(c, GENERIC_TAGS).map(Found::Calls),
            ToolFormat::Llama3 => python_tag(c).map(Found::Calls),
            ToolFormat::Mistral => mistral(c).map(Found::Calls),
            ToolFormat::DeepSeek => deepseek_block(c).map(Found::Calls),
            ToolFormat::FunctionaryV32 => {
                c.lit(">>>")?;
                recipient(c)
            }
            ToolFormat::CommandR7B => {
                if c.one_of(COMMAND_R7B_MARKERS)? > 0 {
                    // The response wrapper: markup, not text for the user (llama.cpp drops it too).
                    return Ok(Found::Skip);
                }
                let calls = json_calls(c)?;
                c.close("<|END_ACTION|>")?;
                Ok(Found::Calls(calls))
            }
            ToolFormat::Granite => {
                c.lit("<|tool_call|>")?;
                json_calls(c).map(Found::Calls)
            }
        }
    }

    /// Reads a call where one may begin without a marker too (start of message, after a call).
    fn at_position(self, c: &mut Cur, at_start: bool) -> Read<Found> {
        let rest = c.rest();
        let markers = self.markers();
        if markers.iter().any(|m| rest.starts_with(m) || m.starts_with(rest)) {
            return self.at_marker(c);
        }
        if self.bare_json() && rest.starts_with('{') {
            first_key_ok(rest, c.fin)?;
            let raw = c.json()?;
            return self.calls_from_bare(raw).map(Found::Calls).ok_or(Miss::Bad);
        }
        if at_start && self == ToolFormat::FunctionaryV32 {
            return recipient(c);
        }
        Err(Miss::Bad)
    }

    fn calls_from_bare(self, raw: &str) -> Option<Vec<RawCall>> {
        let members = members(raw);
        if let (ToolFormat::Generic, [(key, value)]) = (self, members.as_slice()) {
            match key.as_str() {
                "tool_calls" if value.starts_with('[') => return calls_from_array(value),
                "tool_call" if value.starts_with('{') => return call_from_object(value, false).map(|call| vec![call]),
                _ => {}
            }
        }
        call_from_object(raw, true).map(|call| vec![call])
    }
}

/// What a model wrote, split into its text and its calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

impl Parsed {
    /// Accumulates streamed deltas into the whole message.
    pub fn from_deltas(deltas: impl IntoIterator<Item = Delta>) -> Parsed {
        let mut parsed = Parsed::default();
        for delta in deltas {
            match delta {
                Delta::Content(text) => parsed.content.push_str(&text),
                Delta::Call { call, .. } => parsed.calls.push(call),
            }
        }
        parsed
    }
}

/// Splits a whole model output into content and calls.
pub fn parse(format: ToolFormat, text: &str) -> Parsed {
    let mut parser = StreamParser::new(format);
    let mut deltas = parser.push(text);
    deltas.extend(parser.finish());
    Parsed::from_deltas(deltas)
}

/// A piece of a streamed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// Text for the user, to pass on at once.
    Content(String),
    /// A whole call; `index` counts the message's calls from 0 (OpenAI's `tool_calls[].index`).
    Call { index: usize, call: ToolCall },
}

/// Finds calls in a model's output as it arrives, token by token.
///
/// Content is handed back as soon as it cannot be the start of a call; what might be (a suffix
/// that begins a marker such as `<tool_`, or a `{` where a bare JSON call may stand) is held until
/// the following text settles it. A call comes out whole once its end is seen, or at
/// [`finish`](Self::finish).
#[derive(Debug)]
pub struct StreamParser {
    format: ToolFormat,
    /// Text received and not yet decided about.
    buf: String,
    pos: Pos,
    calls: usize,
    seed: u64,
    /// The bracket scan of a JSON value still open in `buf` (its offset there, how far it went):
    /// a long call arriving in many chunks is scanned once in all, not once per chunk. Reset
    /// whenever the front of `buf` is consumed, which moves the offsets.
    memo: Cell<Option<(usize, Scan)>>,
}

/// Where the start of the buffer stands in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pos {
    /// Nothing but whitespace yet: a bare call may come, and whitespace before a call is dropped.
    Start,
    /// Right after a call: whitespace is dropped, and another call may follow without a marker.
    AfterCall,
    /// In text: only a marker opens a call.
    Mid,
}

/// The engine's decision about the start of the buffer.
enum Step {
    /// The first bytes are content.
    Content(usize),
    /// The first bytes are dropped (whitespace around calls, Functionary's `all\n`).
    Drop(usize, Pos),
    /// The first bytes are these calls.
    Calls(usize, Vec<RawCall>),
    /// Nothing is consumed, the position changes.
    Go(Pos),
    /// Undecidable until more text arrives.
    Wait,
}

impl StreamParser {
    /// A parser whose call ids are unique in this process (and very likely across restarts).
    pub fn new(format: ToolFormat) -> StreamParser {
        StreamParser::with_id_seed(format, fresh_seed())
    }

    /// A parser whose call ids derive from `seed` only, for reproducible tests.
    pub fn with_id_seed(format: ToolFormat, seed: u64) -> StreamParser {
        StreamParser {
            format,
            buf: String::new(),
            pos: Pos::Start,
            calls: 0,
            seed,
            memo: Cell::new(None),
        }
    }

    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// Takes the next piece of generated text; returns what is now settled.
    pub fn push(&mut self, text: &str) -> Vec<Delta> {
        self.buf.push_str(text);
        self.run(false)
    }

    /// The generation ended: everything still held is settled (an unfinished call is content).
    pub fn finish(&mut self) -> Vec<Delta> {
        self.run(true)
    }

    fn run(&mut self, fin: bool) -> Vec<Delta> {
        let mut out = Vec::new();
        while !self.buf.is_empty() {
            let step = self.step(fin);
            if !matches!(step, Step::Wait | Step::Go(_)) {
                self.memo.set(None);
            }
            match step {
                Step::Wait if !fin => break,
                // Not produced at the end; if it were, the text still must not be lost.
                Step::Wait => push_content(&mut out, &std::mem::take(&mut self.buf)),
                Step::Content(n) => {
                    push_content(&mut out, &self.buf[..n]);
                    self.buf.drain(..n);
                }
                Step::Drop(n, pos) => {
                    self.buf.drain(..n);
                    self.pos = pos;
                }
                Step::Go(pos) => self.pos = pos,
                Step::Calls(n, calls) => {
                    self.buf.drain(..n);
                    self.pos = Pos::AfterCall;
                    for raw in calls {
                        out.push(self.emit(raw));
                    }
                }
            }
        }
        out
    }

    fn emit(&mut self, raw: RawCall) -> Delta {
        let index = self.calls;
        self.calls += 1;
        let call = ToolCall {
            id: call_id(self.seed, index),
            name: raw.name,
            arguments: raw.arguments,
        };
        Delta::Call { index, call }
    }

    fn step(&self, fin: bool) -> Step {
        match self.pos {
            Pos::Start => self.step_position(fin, true),
            Pos::AfterCall => self.step_position(fin, false),
            Pos::Mid => self.step_mid(fin),
        }
    }

    fn step_position(&self, fin: bool, at_start: bool) -> Step {
        let buf = self.buf.as_str();
        let ws = buf.len() - buf.trim_start().len();
        if !at_start && ws > 0 {
            return Step::Drop(ws, Pos::AfterCall);
        }
        let rest = &buf[ws..];
        if rest.is_empty() {
            return if fin { Step::Content(ws) } else { Step::Wait };
        }
        let mut c = Cur::in_buffer(rest, ws, fin, &self.memo);
        match self.format.at_position(&mut c, at_start) {
            Ok(Found::Calls(calls)) => Step::Calls(ws + c.i, calls),
            Ok(Found::Skip) => Step::Drop(ws + c.i, Pos::Mid),
            Err(Miss::More) if !fin => Step::Wait,
            Err(_) => Step::Go(Pos::Mid),
        }
    }

    fn step_mid(&self, fin: bool) -> Step {
        let buf = self.buf.as_str();
        let markers = self.format.markers();
        if let Some(marker) = markers.iter().find(|m| buf.starts_with(*m)) {
            let mut c = Cur::in_buffer(buf, 0, fin, &self.memo);
            return match self.format.at_marker(&mut c) {
                Ok(Found::Calls(calls)) => Step::Calls(c.i, calls),
                Ok(Found::Skip) => Step::Drop(c.i, Pos::Mid),
                Err(Miss::More) if !fin => Step::Wait,
                Err(_) => Step::Content(marker.len()),
            };
        }
        match content_cut(buf, markers) {
            0 if fin => Step::Content(buf.len()),
            0 => Step::Wait,
            n => Step::Content(n),
        }
    }
}

fn push_content(out: &mut Vec<Delta>, text: &str) {
    if let Some(Delta::Content(last)) = out.last_mut() {
        last.push_str(text);
    } else {
        out.push(Delta::Content(text.to_string()));
    }
}

/// How much of `buf` (which does not start with a marker) is surely content: everything before
/// the first marker, and before a suffix that could still grow into one.
fn content_cut(buf: &str, markers: &[&str]) -> usize {
    let full = markers.iter().filter_map(|m| buf.find(m)).min().unwrap_or(buf.len());
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    let partial = (buf.len().saturating_sub(longest)..buf.len())
        .filter(|&i| buf.is_char_boundary(i))
        .find(|&i| {
            let tail = &buf[i..];
            markers.iter().any(|m| m.len() > tail.len() && m.starts_with(tail))
        })
        .unwrap_or(buf.len());
    full.min(partial)
}

// ---------------------------------------------------------------------------------------------
// Reading the formats.

/// A call as read, before it gets its id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawCall {
    name: String,
    arguments: String,
}

/// What a marker introduced.
enum Found {
    Calls(Vec<RawCall>),
    /// A header to drop, after which text follows (Functionary's `all\n`).
    Skip,
}

/// Why a structure could not be read (yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Miss {
    /// The text ends inside it: more text may complete it.
    More,
    /// It is not (or, at the end of the text, did not become) what was expected.
    Bad,
}

type Read<T> = Result<T, Miss>;

/// A reading position in a text that may be only the beginning of the final one. Every read
/// answers `More` rather than `Bad` when the text ends before the answer is certain, unless `fin`
/// says no more text will come: that is what keeps decisions independent of chunk boundaries.
struct Cur<'a> {
    s: &'a str,
    i: usize,
    fin: bool,
    /// Where `s` starts in the parser's buffer, and the parser's scan memo.
    base: usize,
    memo: Option<&'a Cell<Option<(usize, Scan)>>>,
}

impl<'a> Cur<'a> {
    fn new(s: &'a str, fin: bool) -> Cur<'a> {
        Cur {
            s,
            i: 0,
            fin,
            base: 0,
            memo: None,
        }
    }

    fn in_buffer(s: &'a str, base: usize, fin: bool, memo: &'a Cell<Option<(usize, Scan)>>) -> Cur<'a> {
        Cur {
            base,
            memo: Some(memo),
            ..Cur::new(s, fin)
        }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    fn more(&self) -> Miss {
        if self.fin {
            Miss::Bad
        } else {
            Miss::More
        }
    }

    fn ws(&mut self) {
        let rest = self.rest();
        self.i += rest.len() - rest.trim_start().len();
    }

    fn peek(&self) -> Read<char> {
        self.rest().chars().next().ok_or(self.more())
    }

    fn lit(&mut self, lit: &str) -> Read<()> {
        let rest = self.rest();
        if rest.starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            Err(self.more())
        } else {
            Err(Miss::Bad)
        }
    }

    /// An optional literal: whether it was there.
    fn opt(&mut self, lit: &str) -> Read<bool> {
        let rest = self.rest();
        if rest.starts_with(lit) {
            self.i += lit.len();
            Ok(true)
        } else if !self.fin && lit.starts_with(rest) {
            Err(Miss::More)
        } else {
            Ok(false)
        }
    }

    /// The longest of several literals; waits while a longer one could still match.
    fn one_of(&mut self, alternatives: &[&str]) -> Read<usize> {
        let rest = self.rest();
        if !self.fin && alternatives.iter().any(|a| a.len() > rest.len() && a.starts_with(rest)) {
            return Err(Miss::More);
        }
        let (k, lit) = alternatives
            .iter()
            .enumerate()
            .filter(|(_, a)| rest.starts_with(**a))
            .max_by_key(|(_, a)| a.len())
            .ok_or(Miss::Bad)?;
        self.i += lit.len();
        Ok(k)
    }

    /// Characters while `keep` holds; the text must go on after them.
    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> Read<&'a str> {
        let rest = self.rest();
        let n = rest.find(|ch| !keep(ch)).ok_or(self.more())?;
        self.i += n;
        Ok(&rest[..n])
    }

    /// The text up to `stop`, consuming `stop`.
    fn until(&mut self, stop: &str) -> Read<&'a str> {
        let rest = self.rest();
        let n = rest.find(stop).ok_or(self.more())?;
        self.i += n + stop.len();
        Ok(&rest[..n])
    }

    /// A JSON object or array.
    fn json(&mut self) -> Read<&'a str> {
        let rest = self.rest();
        let at = self.base + self.i;
        let mut scan = match self.memo.and_then(Cell::get) {
            Some((start, scan)) if start == at => scan,
            _ => Scan::default(),
        };
        let end = json_end_from(rest, &mut scan);
        if let (Err(Miss::More), Some(memo)) = (end, self.memo) {
            memo.set(Some((at, scan)));
        }
        match end {
            Ok(n) => {
                self.i += n;
                Ok(&rest[..n])
            }
            Err(Miss::More) => Err(self.more()),
            Err(Miss::Bad) => Err(Miss::Bad),
        }
    }

    /// Any JSON value (a scalar must be followed by something, or it could still grow).
    fn json_value(&mut self) -> Read<&'a str> {
        let rest = self.rest();
        let n = match rest.chars().next() {
            None => return Err(self.more()),
            Some('{' | '[') => return self.json(),
            Some('"') => string_end(rest).ok_or(self.more())?,
            Some(_) => rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || "+-.".contains(ch)))
                .ok_or(self.more())?,
        };
        if n == 0 || serde_json::from_str::<IgnoredAny>(&rest[..n]).is_err() {
            return Err(Miss::Bad);
        }
        self.i += n;
        Ok(&rest[..n])
    }

    /// A closing tag. At the very end of the text a missing or cut-off one is forgiven: stop
    /// strings and token limits often eat it, and what came before is complete.
    fn close(&mut self, tag: &str) -> Read<()> {
        self.ws();
        if self.fin && tag.starts_with(self.rest()) {
            self.i = self.s.len();
            return Ok(());
        }
        self.lit(tag)
    }
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_' || ch == '-'
}

/// Hermes-style tags: `<tool_call>` (and its look-alikes) around JSON, or `<function…>`.
fn hermes_tag(c: &mut Cur, tags: &[&str]) -> Read<Vec<RawCall>> {
    let tag = tags[c.one_of(tags)?];
    match tag {
        "<function=" => return Ok(vec![function_body(c, ">")?]),
        "<function name=\"" => return Ok(vec![function_body(c, "\">")?]),
        _ => {}
    }
    c.ws();
    let calls = if c.peek()? == '<' {
        c.lit("<function=")?;
        vec![function_body(c, ">")?]
    } else {
        json_calls(c)?
    };
    c.close(&format!("</{}", &tag[1..]))?;
    Ok(calls)
}

/// A fenced call: the fence, a tagged call or a bare JSON one, the closing fence.
fn fenced(c: &mut Cur) -> Read<Vec<RawCall>> {
    c.one_of(FENCES)?;
    c.ws();
    let calls = if c.peek()? == '{' {
        first_key_ok(c.rest(), c.fin)?;
        let call = call_from_object(c.json()?, true).ok_or(Miss::Bad)?;
        vec![call]
    } else {
        hermes_tag(c, HERMES_TAGS)?
    };
    c.close("```")?;
    Ok(calls)
}

/// After `<function=` or `<function name="`: `NAME>`, then JSON arguments or Qwen3-Coder's
/// `<parameter=KEY>` elements, then `</function>`.
fn function_body(c: &mut Cur, head_end: &str) -> Read<RawCall> {
    let name = c.take_while(|ch| !matches!(ch, '>' | '"' | '<' | '\n'))?;
    if name.trim().is_empty() {
        return Err(Miss::Bad);
    }
    c.lit(head_end)?;
    c.ws();
    let arguments = if c.peek()? == '{' {
        let arguments = arguments_text(c.json()?).ok_or(Miss::Bad)?;
        c.close("</function>")?;
        arguments
    } else {
        xml_parameters(c)?
    };
    Ok(RawCall {
        name: name.trim().to_string(),
        arguments,
    })
}

/// Qwen3-Coder's `<parameter=KEY>\nVALUE\n</parameter>`… up to `</function>`, as a JSON object.
/// A value that is valid JSON (a number, `true`, an object…) is taken as that; anything else
/// is a string. Without the tool's schema this is a guess: a string parameter holding `42` comes
/// out as a number.
fn xml_parameters(c: &mut Cur) -> Read<String> {
    let mut members = Vec::new();
    loop {
        c.ws();
        if c.fin && "</function>".starts_with(c.rest()) {
            c.i = c.s.len();
            break;
        }
        if c.one_of(&["<parameter=", "</function>"])? == 1 {
            break;
        }
        let key = c.take_while(|ch| !matches!(ch, '>' | '<' | '\n'))?;
        if key.trim().is_empty() {
            return Err(Miss::Bad);
        }
        c.lit(">")?;
        let value = c.until("</parameter>")?;
        members.push(format!("{}:{}", json_string(key.trim()), xml_value(value)));
    }
    Ok(format!("{{{}}}", members.join(",")))
}

fn xml_value(raw: &str) -> String {
    let value = raw.strip_prefix('\n').unwrap_or(raw);
    let value = value.strip_suffix('\n').unwrap_or(value);
    let trimmed = value.trim();
    if !trimmed.is_empty() && serde_json::from_str::<IgnoredAny>(trimmed).is_ok() {
        minify(trimmed)
    } else {
        json_string(value)
    }
}

/// A JSON call object, or an array of them.
fn json_calls(c: &mut Cur) -> Read<Vec<RawCall>> {
    c.ws();
    match c.peek()? {
        '[' => calls_from_array(c.json()?).ok_or(Miss::Bad),
        '{' => call_from_object(c.json()?, false)
            .map(|call| vec![call])
            .ok_or(Miss::Bad),
        _ => Err(Miss::Bad),
    }
}

/// Llama 3.x `<|python_tag|>`: `NAME.call(key=VALUE, …)` (built-in tools) or a JSON call.
fn python_tag(c: &mut Cur) -> Read<Vec<RawCall>> {
    c.lit("<|python_tag|>")?;
    c.ws();
    if c.peek()? == '{' {
        return json_calls(c);
    }
    let name = c.take_while(is_ident)?;
    if name.is_empty() {
        return Err(Miss::Bad);
    }
    c.lit(".call(")?;
    let mut members = Vec::new();
    loop {
        c.ws();
        if members.is_empty() && c.opt(")")? {
            break;
        }
        let key = c.take_while(is_ident)?;
        if key.is_empty() {
            return Err(Miss::Bad);
        }
        c.ws();
        c.lit("=")?;
        c.ws();
        let value = c.json_value()?;
        members.push(format!("{}:{}", json_string(key), minify(value)));
        c.ws();
        if c.one_of(&[",", ")"])? == 1 {
            break;
        }
    }
    let arguments = format!("{{{}}}", members.join(","));
    Ok(vec![RawCall {
        name: name.to_string(),
        arguments,
    }])
}

/// `[TOOL_CALLS]` then a JSON array of calls, or `NAME[ARGS]{…}` (optionally `NAME[CALL_ID]id[ARGS]{…}`).
fn mistral(c: &mut Cur) -> Read<Vec<RawCall>> {
    c.lit("[TOOL_CALLS]")?;
    c.ws();
    if matches!(c.peek()?, '[' | '{') {
        return json_calls(c);
    }
    let name = c.take_while(|ch| !(ch == '[' || ch == '{' || ch.is_whitespace()))?;
    if name.is_empty() {
        return Err(Miss::Bad);
    }
    if c.opt("[CALL_ID]")? {
        c.take_while(|ch| ch != '[')?;
    }
    c.lit("[ARGS]")?;
    c.ws();
    let arguments = arguments_text(c.json()?).ok_or(Miss::Bad)?;
    Ok(vec![RawCall {
        name: name.to_string(),
        arguments,
    }])
}

/// A DeepSeek block: the opener, one or more calls, `<｜tool▁calls▁end｜>` (forgiven at the end
/// of the text once a call was read).
fn deepseek_block(c: &mut Cur) -> Read<Vec<RawCall>> {
    c.one_of(DEEPSEEK_BEGIN)?;
    let mut calls = Vec::new();
    loop {
        c.ws();
        if !calls.is_empty() {
            if c.fin && DEEPSEEK_END.starts_with(c.rest()) {
                c.i = c.s.len();
                break;
            }
            if c.opt(DEEPSEEK_END)? {
                break;
            }
        }
        c.opt(DEEPSEEK_CALL_BEGIN)?;
        calls.push(deepseek_call(c)?);
    }
    Ok(calls)
}

/// R1/V3 `function<｜tool▁sep｜>NAME` + "\n```json\n{…}\n```" + `<｜tool▁call▁end｜>`, or V3.1
/// `NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>`.
fn deepseek_call(c: &mut Cur) -> Read<RawCall> {
    let head = c.take_while(|ch| ch != '<' && ch != '\n')?;
    c.lit(DEEPSEEK_SEP)?;
    let fenced = head.trim() == "function" && c.peek()? != '{';
    let name = if fenced {
        let name = c.take_while(|ch| ch != '\n')?;
        c.lit("\n")?;
        c.one_of(&["```json", "```"])?;
        name
    } else {
        head
    };
    if name.trim().is_empty() {
        return Err(Miss::Bad);
    }
    c.ws();
    let arguments = arguments_text(c.json()?).ok_or(Miss::Bad)?;
    c.ws();
    if fenced {
        c.lit("```")?;
        c.ws();
    }
    c.lit(DEEPSEEK_CALL_END)?;
    Ok(RawCall {
        name: name.trim().to_string(),
        arguments,
    })
}

/// Functionary v3.2 after `>>>` (or at the start): `NAME\n{…}`, `all\n` (text follows), or
/// `python\n` with raw code up to the end of the message (llama.cpp's `allow_raw_python`).
fn recipient(c: &mut Cur) -> Read<Found> {
    let name = c.take_while(is_ident)?;
    if name.is_empty() {
        return Err(Miss::Bad);
    }
    c.lit("\n")?;
    if name == "all" {
        return Ok(Found::Skip);
    }
    let call = |arguments| {
        Ok(Found::Calls(vec![RawCall {
            name: name.to_string(),
            arguments,
        }]))
    };
    if name != "python" {
        if c.peek()? != '{' {
            return Err(Miss::Bad);
        }
        return call(arguments_text(c.json()?).ok_or(Miss::Bad)?);
    }
    if c.peek()? == '{' {
        match c.json() {
            Ok(raw) => return call(arguments_text(raw).ok_or(Miss::Bad)?),
            Err(Miss::More) => return Err(Miss::More),
            Err(Miss::Bad) => {}
        }
    }
    if !c.fin {
        return Err(Miss::More);
    }
    let code = c.rest();
    c.i = c.s.len();
    call(json!({ "code": code }).to_string())
}

/// Keys a bare JSON call may start with. Checking the first key early lets content that merely
/// starts with `{` (a JSON answer, `{x}`) through without waiting for the end of the object.
const BARE_FIRST_KEYS: &[&str] = &[
    "name",
    "type",
    "function",
    "arguments",
    "parameters",
    "tool_call",
    "tool_calls",
    "id",
];

fn first_key_ok(s: &str, fin: bool) -> Read<()> {
    let more = if fin { Miss::Bad } else { Miss::More };
    let body = s[1..].trim_start();
    let Some(key) = body.strip_prefix('"') else {
        return Err(if body.is_empty() { more } else { Miss::Bad });
    };
    match key.find('"') {
        Some(n) if BARE_FIRST_KEYS.contains(&&key[..n]) => Ok(()),
        Some(_) => Err(Miss::Bad),
        None if BARE_FIRST_KEYS.iter().any(|k| k.starts_with(key)) => Err(more),
        None => Err(Miss::Bad),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON text. Arguments are kept as the model wrote them, minus insignificant whitespace: key
// order and number spelling survive (serde_json's `Value` would sort keys and respell numbers).

const NAME_KEYS: &[&str] = &["name", "tool_name"];
const ARGUMENT_KEYS: &[&str] = &["arguments", "parameters"];
const OTHER_KEYS: &[&str] = &["type", "id", "tool_call_id"];

/// A call from a JSON object. `strict` when no marker announced it: then it must have its
/// arguments and nothing but call keys, so that a JSON answer such as `{"name": "Ada"}` stays
/// content.
fn call_from_object(raw: &str, strict: bool) -> Option<RawCall> {
    let members = members(raw);
    let find = |keys: &[&str]| {
        members
            .iter()
            .find(|(k, _)| keys.contains(&k.as_str()))
            .map(|(_, v)| *v)
    };
    let Some(name) = find(NAME_KEYS) else {
        // OpenAI's own shape: {"type": "function", "function": {"name": …, "arguments": …}}
        let inner = find(&["function"]).filter(|v| v.starts_with('{'))?;
        return call_from_object(inner, strict);
    };
    let name: String = serde_json::from_str(name).ok()?;
    if name.trim().is_empty() {
        return None;
    }
    let arguments = match find(ARGUMENT_KEYS) {
        Some(value) => arguments_text(value)?,
        None if strict => return None,
        None => "{}".to_string(),
    };
    let known = |k: &str| NAME_KEYS.contains(&k) || ARGUMENT_KEYS.contains(&k) || OTHER_KEYS.contains(&k);
    if strict && !members.iter().all(|(k, _)| known(k)) {
        return None;
    }
    Some(RawCall {
        name: name.trim().to_string(),
        arguments,
    })
}

fn calls_from_array(raw: &str) -> Option<Vec<RawCall>> {
    let calls = elements(raw)
        .into_iter()
        .map(|e| call_from_object(e, false).filter(|_| e.starts_with('{')))
        .collect::<Option<Vec<_>>>()?;
    (!calls.is_empty()).then_some(calls)
}

/// Compact arguments text from an arguments value: an object, a string holding one (OpenAI's
/// own convention, which some models copy), or null (no arguments).
fn arguments_text(value: &str) -> Option<String> {
    match value.as_bytes().first()? {
        b'{' => Some(minify(value)),
        b'"' => {
            let inner: String = serde_json::from_str(value).ok()?;
            let inner = inner.trim();
            if inner.is_empty() {
                return Some("{}".to_string());
            }
            let object = inner.starts_with('{') && json_end(inner) == Ok(inner.len());
            object.then(|| minify(inner))
        }
        b'n' => Some("{}".to_string()),
        _ => None,
    }
}

fn json_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn json_end(s: &str) -> Read<usize> {
    json_end_from(s, &mut Scan::default())
}

/// The length of the JSON object or array `s` starts with, continuing `scan`. The brackets are
/// matched first and the text validated only once they close, so a call being streamed costs a
/// scan of the new bytes per chunk, and a malformed one is judged when complete (or at the end).
fn json_end_from(s: &str, scan: &mut Scan) -> Read<usize> {
    match s.as_bytes().first() {
        None => return Err(Miss::More),
        Some(b'{' | b'[') => {}
        Some(_) => return Err(Miss::Bad),
    }
    let end = scan.run(s).ok_or(Miss::More)?;
    if serde_json::from_str::<IgnoredAny>(&s[..end]).is_ok() {
        Ok(end)
    } else {
        Err(Miss::Bad)
    }
}

/// Where the bracket `s` starts with is closed, skipping strings.
fn bracket_end(s: &str) -> Option<usize> {
    Scan::default().run(s)
}

/// A bracket-matching scan that can stop at the end of the text and resume when it grows.
#[derive(Clone, Copy, Debug, Default)]
struct Scan {
    done: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// Scans `s` (the text scanned so far, extended) from where it stopped; where the first
    /// bracket closes.
    fn run(&mut self, s: &str) -> Option<usize> {
        for (i, b) in s.bytes().enumerate().skip(self.done) {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        self.done = s.len();
        None
    }
}

/// Where the JSON string `s` starts with ends.
fn string_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, b) in s.bytes().enumerate().skip(1) {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            return Some(i + 1);
        }
    }
    None
}

/// The length of the (valid) JSON value `s` starts with.
fn value_end(s: &str) -> usize {
    match s.as_bytes().first() {
        Some(b'"') => string_end(s),
        Some(b'{' | b'[') => bracket_end(s),
        _ => s.find([',', '}', ']', ' ', '\t', '\n', '\r']),
    }
    .unwrap_or(s.len())
}

/// The members of a valid JSON object, in order, values as raw text.
fn members(object: &str) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let mut rest = object.get(1..).unwrap_or("").trim_start();
    while rest.starts_with('"') {
        let k = value_end(rest);
        let key = serde_json::from_str(&rest[..k]).unwrap_or_default();
        rest = rest[k..].trim_start();
        rest = rest.strip_prefix(':').unwrap_or(rest).trim_start();
        let v = value_end(rest);
        out.push((key, &rest[..v]));
        rest = rest[v..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    out
}

/// The elements of a valid JSON array, as raw text.
fn elements(array: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = array.get(1..).unwrap_or("").trim_start();
    while !rest.is_empty() && !rest.starts_with(']') {
        let v = value_end(rest);
        if v == 0 {
            break;
        }
        out.push(&rest[..v]);
        rest = rest[v..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    out
}

/// Valid JSON without the whitespace between tokens.
fn minify(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for ch in json.chars() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
        } else if !matches!(ch, ' ' | '\t' | '\n' | '\r') {
            in_string = ch == '"';
            out.push(ch);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Call ids.

/// A seed no other parser in this process gets. Why not a plain counter: clients key tool
/// results by id across the turns of a conversation and across daemon restarts, so ids should
/// not repeat between responses either; the start time makes a restart's ids differ.
fn fresh_seed() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 40)
    });
    base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed) << 16)
}

/// Nine letters and digits from splitmix64 of (seed, index): Mistral's templates refuse any
/// other id when a client sends a call back in the history (llama.cpp makes the same kind),
/// and OpenAI clients take any string. Distinct inputs collide with odds of about 10^-16.
fn call_id(seed: u64, index: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut z = seed.wrapping_add(index as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (0..9)
        .map(|_| {
            let c = ALPHABET[(z % ALPHABET.len() as u64) as usize] as char;
            z /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Forced calls.

/// Checks `tool_choice` against the tools before anything is rendered: the caller answers an
/// error with 400. A named function must be offered; `required` needs tools; a forced tool's
/// `parameters` must be a schema object (or absent), since it becomes part of the grammar.
pub fn check_choice(tools: &[Tool], choice: &ToolChoice) -> Result<(), String> {
    let forced: Vec<&Tool> = match choice {
        ToolChoice::Auto | ToolChoice::None => return Ok(()),
        ToolChoice::Required if tools.is_empty() => {
            return Err("tool_choice is \"required\" but the request offers no tools".to_string())
        }
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => match tools.iter().find(|t| &t.name == name) {
            Some(tool) => vec![tool],
            None => {
                let offered: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                return Err(format!(
                    "tool_choice names the function \"{name}\", which is not among the request's tools ({})",
                    if offered.is_empty() {
                        "none".to_string()
                    } else {
                        offered.join(", ")
                    }
                ));
            }
        },
    };
    for tool in forced {
        if !(tool.parameters.is_object() || tool.parameters.is_null()) {
            return Err(format!(
                "the parameters of tool \"{}\" must be a JSON Schema object",
                tool.name
            ));
        }
    }
    Ok(())
}

/// The JSON Schema the output is constrained to when a call is forced (`required`, or a named
/// function): `{"name": NAME, "arguments": {…}}` for one of the allowed tools (`anyOf` when more
/// than one), or with `parallel` a non-empty array of those. `None` for `auto` and `none`, and
/// when nothing is allowed (no tools, an unknown name: see [`check_choice`]).
///
/// Only schema features llama.cpp's `json_schema_to_grammar` supports are used. A tool schema's
/// own `$ref`s (`#/$defs/…`) point into that schema; the converter resolves them against the
/// whole document, so such a schema is moved under the root's `$defs` and its references rebased.
pub fn forced_schema(tools: &[Tool], choice: &ToolChoice, parallel: bool) -> Option<Value> {
    let allowed: Vec<(usize, &Tool)> = match choice {
        ToolChoice::Auto | ToolChoice::None => return None,
        ToolChoice::Required => tools.iter().enumerate().collect(),
        ToolChoice::Function(name) => tools
            .iter()
            .enumerate()
            .filter(|(_, t)| &t.name == name)
            .take(1)
            .collect(),
    };
    let mut defs = Map::new();
    let mut alternatives: Vec<Value> = allowed
        .into_iter()
        .map(|(i, tool)| call_schema(i, tool, &mut defs))
        .collect();
    let one = match alternatives.len() {
        0 => return None,
        1 => alternatives.remove(0),
        _ => json!({ "anyOf": alternatives }),
    };
    let mut schema = if parallel {
        json!({ "type": "array", "items": one, "minItems": 1 })
    } else {
        one
    };
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    Some(schema)
}

fn call_schema(index: usize, tool: &Tool, defs: &mut Map<String, Value>) -> Value {
    let mut parameters = match &tool.parameters {
        Value::Null => json!({ "type": "object" }),
        other => other.clone(),
    };
    if has_local_refs(&parameters) {
        let key = format!("tool{index}");
        let base = format!("#/$defs/{key}");
        rebase_refs(&mut parameters, &base);
        defs.insert(key, parameters);
        parameters = json!({ "$ref": base });
    }
    json!({
        "type": "object",
        "properties": {
            "name": { "const": tool.name },
            "arguments": parameters,
        },
        "required": ["name", "arguments"],
        "additionalProperties": false,
    })
}

/// Keys whose values are data, not schemas: a `$ref` inside them is not a reference.
const DATA_KEYS: &[&str] = &["const", "enum", "default", "examples"];

fn is_local_ref(key: &str, value: &Value) -> bool {
    key == "$ref" && value.as_str().is_some_and(|r| r == "#" || r.starts_with("#/"))
}

fn has_local_refs(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| is_local_ref(k, v) || (!DATA_KEYS.contains(&k.as_str()) && has_local_refs(v))),
        Value::Array(items) => items.iter().any(has_local_refs),
        _ => false,
    }
}

fn rebase_refs(schema: &mut Value, base: &str) {
    match schema {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_local_ref(k, v) {
                    let pointer = &v.as_str().unwrap_or("#")[1..];
                    *v = Value::String(format!("{base}{pointer}"));
                } else if !DATA_KEYS.contains(&k.as_str()) {
                    rebase_refs(v, base);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rebase_refs(v, base)),
        _ => {}
    }
}

/// Reads the output of a generation constrained by [`forced_schema`]: one call object or an
/// array of them. The grammar makes this valid; an error means the output was cut short (token
/// limit, stop string) or the schema was not applied.
pub fn parse_forced(text: &str) -> Result<Vec<ToolCall>, String> {
    let text = text.trim();
    let shown: String = text.chars().take(80).collect();
    let end = json_end(text).map_err(|_| format!("the forced tool call is not complete JSON: {shown:?}"))?;
    if end != text.len() {
        return Err(format!("text follows the forced tool call: {shown:?}"));
    }
    let raws = if text.starts_with('[') {
        calls_from_array(text)
    } else {
        call_from_object(text, false).map(|call| vec![call])
    };
    let raws = raws.ok_or_else(|| format!("the forced output is not a {{\"name\", \"arguments\"}} call: {shown:?}"))?;
    let seed = fresh_seed();
    Ok(raws
        .into_iter()
        .enumerate()
        .map(|(index, raw)| ToolCall {
            id: call_id(seed, index),
            name: raw.name,
            arguments: raw.arguments,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// History.

/// Checks that every `tool` message answers a call an earlier assistant message made, so that a
/// client's mistake is a 400 naming the id rather than a template error or a confused model.
pub fn validate_history(messages: &[Message]) -> Result<(), String> {
    let mut made: Vec<&str> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        match message.role.as_str() {
            "assistant" => made.extend(message.tool_calls.iter().map(|c| c.id.as_str())),
            "tool" => match message.tool_call_id.as_deref() {
                None => {
                    return Err(format!(
                        "messages[{i}] has role \"tool\" but no tool_call_id"
                    ))
                }
                Some(id) if !made.contains(&id) => {
                    return Err(format!(
                        "messages[{i}] answers tool_call_id \"{id}\", which no earlier assistant message's tool_calls contains"
                    ))
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
