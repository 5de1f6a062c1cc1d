//! What one frame of `vramctl top` shows: a pure function from what the daemon said (its
//! `/v1/status` JSON, or why there is none), the recent log lines, the terminal's width and
//! the time, to the lines to print. No I/O and no escape sequences, so every case is tested
//! on values, and the same lines serve a terminal, a pipe and `--once`.
//!
//! The frame: a header; the memory bar for the GPU (NVML) or the budget, every model's part
//! of it split into weights, KV cache and compute, then what running requests reserve, what
//! is held outside vramd (NVML only), the configured headroom and what is free; host RAM on
//! its own line, never in the bar; a row per model; and the last decisions, oldest first.

use serde_json::Value;
use vramd::units::format_size_human as size;

use crate::format::{self, s, u};

/// The bar's glyphs, one per kind of memory (the lines under the bar name them).
const WEIGHTS: char = '█';
const KV: char = '▓';
const COMPUTE: char = '▒';
const RESERVED: char = '▚';
const OUTSIDE: char = '╳';
const HEADROOM: char = '┄';
const FREE: char = '░';

/// Longest model name shown whole; a longer one is cut so the table keeps its shape.
const NAME_MAX: usize = 24;
/// Narrowest frame drawn: below this, lines are cut at this width all the same.
const MIN_WIDTH: usize = 20;
/// The widest bar, so a wide terminal does not get a bar too long to read at a glance.
const BAR_MAX: usize = 100;

/// One frame: `status` is `/v1/status` or the sentence to show in its place; `log` is
/// "HH:MM:SS what happened", oldest first; `now` is Unix seconds (idle times and request
/// ages are counted to it). Every line is at most `width` characters.
pub fn frame(status: Result<&Value, &str>, log: &[String], width: usize, now: f64) -> Vec<String> {
    let width = width.max(MIN_WIDTH);
    let mut lines = match status {
        Ok(v) => daemon_lines(v, width, now),
        Err(why) => vec!["vramd".to_owned(), String::new(), why.to_owned()],
    };
    lines.push(String::new());
    lines.push("recent decisions".to_owned());
    if log.is_empty() {
        lines.push("  (none yet)".to_owned());
    }
    lines.extend(log.iter().cloned());
    lines.iter().map(|l| cut(&printable(l), width)).collect()
}

/// One log line for an event of `/v1/events`: its time, then the daemon's own `text` when
/// it sends one (so the status page, `vramctl events` and this say the same), else
/// vramctl's wording ([`format::event`]).
pub fn log_line(event: &str, v: &Value) -> String {
    if event == "lagged" {
        return format!("(missed {} events: vramctl was too slow)", u(&v["missed"]));
    }
    let text = match v["text"].as_str() {
        Some(t) if !t.trim().is_empty() => t.to_owned(),
        _ => format::event(v),
    };
    format!("{} {text}", format::clock(v["at"].as_f64().unwrap_or(0.0)))
}

/// Header, memory and models, for a daemon that answered.
fn daemon_lines(v: &Value, width: usize, now: f64) -> Vec<String> {
    let models = v["models"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut lines = vec![format!(
        "vramd {} · {} · {}",
        s(&v["version"]),
        s(&v["memory"]["backend"]),
        format::clock(now)
    )];
    lines.push(String::new());
    lines.extend(memory_lines(&v["memory"], models, width));
    lines.push(String::new());
    if models.is_empty() {
        lines.push("no models configured".to_owned());
    } else {
        lines.extend(model_lines(models, width, now));
    }
    lines
}

/// A part of the bar: its glyph, what it is, and its bytes.
type Part = (char, &'static str, u64);

/// What a model holds on the device, part by part. Compute also takes what NVML sees beyond
/// the worker's own account (its CUDA context), so the parts add up to what is counted.
fn model_parts(m: &Value) -> [Part; 4] {
    let b = &m["bytes"];
    let (weights, kv, reserved) = (u(&b["weights"]), u(&b["context"]), u(&m["reserved_bytes"]));
    let held = (u(&b["total"]) + reserved).max(u(&m["device_bytes"]));
    let compute = held.saturating_sub(weights + kv + reserved);
    [
        (WEIGHTS, "weights", weights),
        (KV, "KV cache", kv),
        (COMPUTE, "compute", compute),
        (RESERVED, "reserved by requests", reserved),
    ]
}

/// What is not any model's: held outside vramd (other processes, seen by NVML only), the
/// configured headroom, and what is free.
fn rest_parts(mem: &Value) -> [Part; 3] {
    let (total, used, reserve, free) = (
        u(&mem["total_bytes"]),
        u(&mem["used_bytes"]),
        u(&mem["reserve_bytes"]),
        u(&mem["free_bytes"]),
    );
    // The daemon's own figure when it gives one (`other_bytes`), else what the device's
    // total leaves beyond vramd's figures.
    let outside = match (mem["other_bytes"].as_u64(), s(&mem["backend"])) {
        (Some(other), _) => other,
        (None, "nvml") => total.saturating_sub(used + reserve + free),
        (None, _) => 0,
    };
    [
        (OUTSIDE, "outside vramd", outside),
        (HEADROOM, "kept free (reserve)", reserve),
        (FREE, "free", free),
    ]
}

/// The summary line, the bar, what each glyph stands for, and host RAM apart.
fn memory_lines(mem: &Value, models: &[Value], width: usize) -> Vec<String> {
    let total = u(&mem["total_bytes"]);
    let what = match s(&mem["backend"]) {
        "nvml" => "GPU memory",
        _ => "memory budget",
    };
    let mut lines = vec![format!(
        "{what} {}: {} held by models · {} free",
        size(total),
        size(u(&mem["used_bytes"])),
        size(u(&mem["free_bytes"]))
    )];
    let mut parts: Vec<(char, u64)> = models
        .iter()
        .flat_map(|m| model_parts(m).map(|(g, _, b)| (g, b)))
        .collect();
    let rest = rest_parts(mem);
    parts.extend(rest.iter().map(|&(g, _, b)| (g, b)));
    let cells = width.saturating_sub(2).min(BAR_MAX);
    lines.push(format!("[{}]", bar(&parts, total, cells)));
    let names = name_width(models);
    for m in models {
        let shown: Vec<String> = legend(&model_parts(m));
        if !shown.is_empty() {
            lines.push(format!("  {:<names$}  {}", name(m), shown.join(" · ")));
        }
    }
    // What is free is always said, even when it is nothing.
    let mut tail = legend(&rest[..2]);
    tail.push(format!("{FREE} free {}", size(rest[2].2)));
    lines.push(format!("  {}", tail.join(" · ")));
    lines.extend(host_line(mem, models));
    lines
}

/// `█ weights 1.5 GiB` for each part that holds something.
fn legend(parts: &[Part]) -> Vec<String> {
    parts
        .iter()
        .filter(|(_, _, b)| *b > 0)
        .map(|(g, what, b)| format!("{g} {what} {}", size(*b)))
        .collect()
}

/// Host RAM that models hold for parts placed on the CPU: named apart, since it is not the
/// device's and the bar is.
fn host_line(mem: &Value, models: &[Value]) -> Option<String> {
    let host = u(&mem["host_bytes"]);
    let by_model: Vec<String> = models
        .iter()
        .filter(|m| u(&m["bytes"]["host"]) > 0)
        .map(|m| format!("{} {}", name(m), size(u(&m["bytes"]["host"]))))
        .collect();
    if host == 0 && by_model.is_empty() {
        return None;
    }
    Some(format!(
        "host RAM, not in the bar: {} ({})",
        size(host),
        by_model.join(", ")
    ))
}

/// `cells` glyphs for `parts`, each as wide as its share of `total` (or of their sum when
/// they add up to more). Boundaries are rounded where the parts accumulate, so the bar is
/// always exactly `cells` wide; a sliver may get no cell, the lines below still name it.
fn bar(parts: &[(char, u64)], total: u64, cells: usize) -> String {
    let sum: u64 = parts.iter().map(|p| p.1).sum();
    let denom = u128::from(total.max(sum).max(1));
    let at = |bytes: u64| ((u128::from(bytes) * cells as u128 + denom / 2) / denom) as usize;
    let (mut out, mut acc, mut drawn) = (String::new(), 0u64, 0usize);
    for &(glyph, bytes) in parts {
        acc += bytes;
        let end = at(acc);
        out.extend(std::iter::repeat(glyph).take(end - drawn));
        drawn = end;
    }
    out.push_str(&" ".repeat(cells - drawn));
    out
}

/// The model table, each row followed by its running requests and, when failed, why.
fn model_lines(models: &[Value], width: usize, now: f64) -> Vec<String> {
    let ranked = models.iter().any(|m| m.get("eviction_rank").is_some());
    let mut columns = vec![
        Col::Model,
        Col::Kind,
        Col::State,
        Col::Held,
        Col::Idle,
        Col::Evict,
        Col::PageCache,
        Col::Requests,
    ];
    columns.retain(|c| ranked || *c != Col::Evict);
    let mut table = render_table(models, &columns, now);
    // A narrow terminal loses the columns it can best do without, in this order.
    for drop in [Col::Kind, Col::PageCache, Col::Evict, Col::Requests, Col::Idle] {
        if table.iter().all(|l| l.chars().count() <= width) {
            break;
        }
        columns.retain(|c| *c != drop);
        table = render_table(models, &columns, now);
    }
    let mut lines = vec![table[0].clone()];
    for (m, row) in models.iter().zip(&table[1..]) {
        lines.push(row.clone());
        lines.extend(details(m, width, now));
    }
    lines
}

#[derive(Clone, Copy, PartialEq)]
enum Col {
    Model,
    Kind,
    State,
    Held,
    Idle,
    Evict,
    PageCache,
    Requests,
}

impl Col {
    fn head(self) -> &'static str {
        match self {
            Col::Model => "MODEL",
            Col::Kind => "KIND",
            Col::State => "STATE",
            Col::Held => "HELD",
            Col::Idle => "IDLE",
            Col::Evict => "EVICT",
            Col::PageCache => "PAGE CACHE",
            Col::Requests => "REQUESTS",
        }
    }

    fn cell(self, m: &Value, now: f64) -> String {
        match self {
            Col::Model => name(m),
            Col::Kind => s(&m["kind"]).to_owned(),
            Col::State => state(m),
            Col::Held => size(held(m)) + &format::in_ram(u(&m["bytes"]["host"])),
            Col::Idle => idle(m, now),
            Col::Evict => m["eviction_rank"].as_u64().map_or("-".into(), |r| r.to_string()),
            Col::PageCache => format::page_cache(m),
            Col::Requests => requests(m),
        }
    }
}

/// The header and one row per model, as lines.
fn render_table(models: &[Value], columns: &[Col], now: f64) -> Vec<String> {
    let head: Vec<&str> = columns.iter().map(|c| c.head()).collect();
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| columns.iter().map(|c| c.cell(m, now)).collect())
        .collect();
    format::table(&head, &rows).lines().map(str::to_owned).collect()
}

/// What a model holds against the device, as vramd counts it.
fn held(m: &Value) -> u64 {
    (u(&m["bytes"]["total"]) + u(&m["reserved_bytes"])).max(u(&m["device_bytes"]))
}

/// Its name, cut to [`NAME_MAX`].
fn name(m: &Value) -> String {
    cut(s(&m["name"]), NAME_MAX)
}

fn name_width(models: &[Value]) -> usize {
    models.iter().map(|m| name(m).chars().count()).max().unwrap_or(0)
}

/// The state in words, a load's progress, and whether eviction passes it by.
fn state(m: &Value) -> String {
    let mut out = s(&m["state"]).replace('_', "-");
    if out == "loading" {
        out = loading(m);
    }
    if m["pinned"] == true {
        out.push_str(", pinned");
    }
    if m["evict_first"] == true {
        out.push_str(", evict first");
    }
    out
}

/// `loading 2.0 GiB`, or `loading 40% of 2.0 GiB` once the worker has reported some of it:
/// what is reserved for a load is what it is expected to take.
fn loading(m: &Value) -> String {
    let (got, reserved) = (u(&m["bytes"]["total"]), u(&m["reserved_bytes"]));
    match (got, got + reserved) {
        (_, 0) => "loading".into(),
        (0, expected) => format!("loading {}", size(expected)),
        (got, expected) => format!("loading {}% of {}", got * 100 / expected, size(expected)),
    }
}

/// How long it has been idle: `busy` while requests run on it, `never used`, or a span.
fn idle(m: &Value, now: f64) -> String {
    if u(&m["in_flight"]) > 0 || m["running"].as_array().is_some_and(|r| !r.is_empty()) {
        return "busy".into();
    }
    match m["last_used"].as_u64() {
        None => "never used".into(),
        Some(t) => span(now - t as f64),
    }
}

/// `3 s`, `5 min`, `2 h`, `3 d`.
fn span(secs: f64) -> String {
    match secs.max(0.0) as u64 {
        d @ 0..=59 => format!("{d} s"),
        d @ 60..=3599 => format!("{} min", d / 60),
        d @ 3600..=86399 => format!("{} h", d / 3600),
        d => format!("{} d", d / 86400),
    }
}

/// `1 running, 2 queued`, or `-`.
fn requests(m: &Value) -> String {
    let running = m["running"].as_array().map_or(0, Vec::len);
    let queued = u(&m["queued"]);
    match (running, queued) {
        (0, 0) => "-".into(),
        (r, 0) => format!("{r} running"),
        (0, q) => format!("{q} queued"),
        (r, q) => format!("{r} running, {q} queued"),
    }
}

/// The lines under a model's row: each running request, and why it failed.
fn details(m: &Value, width: usize, now: f64) -> Vec<String> {
    let mut lines: Vec<String> = m["running"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("  └ {}", running(m, r, width, now)))
        .collect();
    if let (Some(e), "failed") = (m["error"].as_str(), s(&m["state"])) {
        lines.push(format!("  └ failed: {e}"));
    }
    lines
}

/// One running request: an image's progress with a bar, or a text request's age.
fn running(m: &Value, r: &Value, width: usize, now: f64) -> String {
    let age = span(now - u(&r["started_ms"]) as f64 / 1000.0);
    let stopped = if r["interrupted"] == true { " (interrupted)" } else { "" };
    let p = &r["progress"];
    let line = if p.is_object() {
        let (image, images) = (u(&p["image"]), u(&p["images"]).max(1));
        let (step, steps) = (u(&p["step"]), u(&p["steps"]).max(1));
        let done = (image * steps + step) as f64 / (images * steps) as f64;
        let cells = (width / 4).clamp(5, 20);
        let pct = (done.clamp(0.0, 1.0) * 100.0).round() as u64;
        format!(
            "image {}/{images} step {step}/{steps} {} {pct}% · {age}",
            image + 1,
            format::bar(pct, 100, cells)
        )
    } else if s(&m["kind"]) == "image" {
        format!("image, starting · {age}")
    } else {
        format!("text · {age}")
    };
    line + stopped
}

/// Control characters (an escape sequence in a model name or an error) would steer the
/// terminal: they are shown as `?`.
fn printable(line: &str) -> String {
    line.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// At most `width` characters, the last one `…` when something was cut.
fn cut(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_owned();
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests;
