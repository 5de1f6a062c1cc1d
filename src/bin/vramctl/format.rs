//! What vramctl prints for people: tables, the memory bar, event lines, the progress bar.
//! Pure functions of the daemon's JSON (and of "now"), so each is tested on values.

use serde_json::Value;
use vramd::units::format_size_human as size;

/// Width of the memory and progress bars, in cells.
const BAR: usize = 30;

/// A JSON number as bytes or a count; absent or `null` is 0.
pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A JSON string; absent or `null` is `-`.
pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

/// `[████████░░░░]`: `used` of `total`, `BAR` cells wide.
pub fn bar(used: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((u128::from(used.min(total)) * width as u128 + u128::from(total) / 2) / u128::from(total)) as usize
    };
    format!("[{}{}]", "█".repeat(filled), "░".repeat(width - filled))
}

/// "never", "just now", "42 s ago", "5 min ago", "3 h ago", "2 d ago".
pub fn ago(then: Option<u64>, now: u64) -> String {
    let Some(then) = then else {
        return "never".into();
    };
    match now.saturating_sub(then) {
        0..=1 => "just now".into(),
        d @ 2..=59 => format!("{d} s ago"),
        d @ 60..=3599 => format!("{} min ago", d / 60),
        d @ 3600..=86399 => format!("{} h ago", d / 3600),
        d => format!("{} d ago", d / 86400),
    }
}

/// Left-aligned columns, two spaces apart, widths from the widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The memory line of `status`; what models hold in host RAM (parts placed on the CPU)
/// follows it, never in the bar or the used figure, which are the device's.
pub fn memory_line(memory: &Value) -> String {
    let (total, used, free, reserve) = (
        u(&memory["total_bytes"]),
        u(&memory["used_bytes"]),
        u(&memory["free_bytes"]),
        u(&memory["reserve_bytes"]),
    );
    format!(
        "memory {} {} used of {} · {} free · {} reserved ({}){}",
        bar(used + reserve, total, BAR),
        size(used),
        size(total),
        size(free),
        size(reserve),
        s(&memory["backend"]),
        in_ram(u(&memory["host_bytes"])),
    )
}

/// ` + 480.2 MiB in RAM` for bytes held in host RAM, nothing when there are none.
pub fn in_ram(host: u64) -> String {
    if host == 0 {
        String::new()
    } else {
        format!(" + {} in RAM", size(host))
    }
}

/// What a model holds: its device bytes, then what it holds in host RAM, apart.
fn held(m: &Value) -> String {
    size(u(&m["bytes"]["total"])) + &in_ram(u(&m["bytes"]["host"]))
}

/// How much of a model's files the page cache holds: `512.0 MiB (50%)`, `-` for none.
pub fn page_cache(m: &Value) -> String {
    let pc = &m["page_cache"];
    let (resident, file) = (u(&pc["resident_bytes"]), u(&pc["file_bytes"]));
    if file == 0 {
        return "-".into();
    }
    let locked = if pc["locked"] == true { ", locked" } else { "" };
    format!("{} ({}%{locked})", size(resident), resident * 100 / file)
}

/// `vramctl status`: version, memory bar, one row per model, and failures spelled out.
pub fn status(v: &Value) -> String {
    let now = u(&v["at"]);
    let mut out = format!("vramd {}\n{}\n\n", s(&v["version"]), memory_line(&v["memory"]));
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        out.push_str("no models configured\n");
        return out;
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let mut state = s(&m["state"]).to_owned();
            if m["pinned"] == true {
                state.push_str(" (pinned)");
            }
            vec![
                s(&m["name"]).to_owned(),
                s(&m["kind"]).to_owned(),
                state,
                held(m),
                size(u(&m["peak_bytes"])),
                page_cache(m),
                ago(m["last_used"].as_u64(), now),
            ]
        })
        .collect();
    out.push_str(&table(
        &["MODEL", "KIND", "STATE", "HELD", "PEAK", "PAGE CACHE", "LAST USE"],
        &rows,
    ));
    for m in &models {
        if let (Some(e), "failed") = (m["error"].as_str(), s(&m["state"])) {
            out.push_str(&format!("\n{} failed: {e}\n", s(&m["name"])));
        }
    }
    out
}

/// The models that hold memory (what `ps` lists).
pub fn running(v: &Value) -> Vec<Value> {
    v["models"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| !matches!(m["state"].as_str(), Some("unloaded" | "failed")))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// `vramctl ps`: loaded models, their workers and what they do now.
pub fn ps(v: &Value) -> String {
    let models = running(v);
    if models.is_empty() {
        return "no model is loaded\n".into();
    }
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            vec![
                s(&m["name"]).to_owned(),
                s(&m["kind"]).to_owned(),
                s(&m["state"]).to_owned(),
                held(m),
                m["pid"].as_u64().map_or("-".into(), |p| p.to_string()),
                s(&m["device"]).to_owned(),
                s(&m["cpu"]).split_whitespace().next().unwrap_or("-").to_owned(),
                u(&m["in_flight"]).to_string(),
                ago(m["last_used"].as_u64(), u(&v["at"])),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "MODEL", "KIND", "STATE", "HELD", "PID", "DEVICE", "CPU CODE", "REQUESTS", "LAST USE",
        ],
        &rows,
    );
    // A build below what the CPU can run (or above it) is worth a line of its own.
    for m in &models {
        let cpu = s(&m["cpu"]);
        let mut words = cpu.split_whitespace();
        let (built, machine) = (words.next(), cpu.rsplit(' ').nth(1));
        if built.is_some() && machine.is_some() && built != machine && !cpu.contains("unknown") {
            out.push_str(&format!("{}: {cpu}\n", s(&m["name"])));
        }
    }
    out
}

/// `vramctl estimate`: the total, then its parts.
pub fn estimate(e: &Value, free_now: Option<u64>) -> String {
    let p = &e["parts"];
    let mut out = match s(&e["kind"]) {
        "image" => format!(
            "{} at {}×{}: {} at its peak\n  weights {} · sampling {} · VAE decode {} (tiled {})\n",
            s(&e["model"]),
            u(&e["width"]),
            u(&e["height"]),
            size(u(&e["total"])),
            size(u(&p["weights"])),
            size(u(&p["sampling"])),
            size(u(&p["vae_decode"]["gpu"])),
            size(u(&p["vae_decode"]["tiled"])),
        ),
        "llm" if p["context"].is_u64() => format!(
            "{} at {} tokens{}: {}\n  weights {} · KV cache {} · compute {}\n",
            s(&e["model"]),
            u(&e["context_length"]),
            match u(&e["parallel"]) {
                0 | 1 => String::new(),
                n => format!(" × {n} slots"),
            },
            size(u(&e["total"])),
            size(u(&p["weights"])),
            size(u(&p["context"])),
            size(u(&p["compute"])),
        ),
        _ => format!("{}: {}\n", s(&e["model"]), size(u(&e["total"]))),
    };
    if let Some(note) = e["note"].as_str() {
        out.push_str(&format!("  ({note})\n"));
    }
    if e["calibrated"] == true {
        out.push_str("  calibrated from earlier runs\n");
    }
    if let Some(free) = free_now {
        out.push_str(&format!("  free now: {}\n", size(free)));
    }
    out
}

/// One line for one event of `GET /v1/events`, without its time.
pub fn event(e: &Value) -> String {
    let m = s(&e["model"]);
    let why = |e: &Value| match e["reason"].as_str() {
        Some(r) if !r.is_empty() => format!(" ({r})"),
        _ => String::new(),
    };
    match s(&e["type"]) {
        "model_loading" => format!("{m} loading, {} expected{}", size(u(&e["bytes"])), why(e)),
        "model_loaded" => format!(
            "{m} loaded: {} in {:.1} s ({})",
            size(u(&e["bytes"])),
            u(&e["load_ms"]) as f64 / 1000.0,
            if e["from_page_cache"] == true {
                "from the page cache"
            } else {
                "from disk"
            }
        ),
        "model_soft_unloaded" => format!(
            "{m} soft-unloaded: {} freed, weights kept{}{}",
            size(u(&e["freed_bytes"])),
            match u(&e["kept_bytes"]) {
                0 => String::new(),
                kept => format!(", {} of KV kept in RAM", size(kept)),
            },
            why(e)
        ),
        "model_unloaded" => format!("{m} unloaded: {} freed{}", size(u(&e["freed_bytes"])), why(e)),
        "model_restored" => format!(
            "{m} context restored: {} in {} ms{}",
            size(u(&e["bytes"])),
            u(&e["context_ms"]),
            why(e)
        ),
        "vae_tiled" => format!(
            "{m} {}×{}: VAE decode in tiles{}",
            u(&e["width"]),
            u(&e["height"]),
            why(e)
        ),
        "vae_on_cpu" => format!(
            "{m} {}×{}: VAE decode on the CPU{}",
            u(&e["width"]),
            u(&e["height"]),
            why(e)
        ),
        "request_queued" => format!("{m}: request queued{}", why(e)),
        "request_rejected" => format!("{m}: request rejected with {}{}", u(&e["status"]), why(e)),
        "request_finished" => finished(e),
        "worker_crashed" => format!("{m}: worker crashed{}", why(e)),
        "worker_restarted" => format!("{m}: worker restarted (pid {})", u(&e["pid"])),
        "memory_pressure" => format!(
            "{m} needs {}, {} free{}",
            size(u(&e["need_bytes"])),
            size(u(&e["free_bytes"])),
            why(e)
        ),
        other => format!("{other}: {e}"),
    }
}

/// A `request_finished` event: how the request ended and what was done for it.
fn finished(e: &Value) -> String {
    let mut line = format!("{}: {} request {}", s(&e["model"]), s(&e["kind"]), s(&e["outcome"]));
    if let Some(error) = e["error"].as_str() {
        line.push_str(&format!(" ({error})"));
    }
    if e["queued"] == true {
        line.push_str(&format!(", waited {:.1} s", u(&e["waited_ms"]) as f64 / 1000.0));
    }
    for f in e["freed"].as_array().into_iter().flatten() {
        let mode = if f["mode"] == "soft" {
            "soft-unloaded"
        } else {
            "unloaded"
        };
        line.push_str(&format!(", {} {mode} ({})", s(&f["model"]), size(u(&f["bytes"]))));
    }
    if let Some(vae) = e["vae"].as_str().filter(|v| *v != "gpu") {
        line.push_str(&format!(", VAE decode {vae}"));
        if let Some(ms) = e["slower_ms"].as_u64() {
            line.push_str(&format!(" (+{:.1} s)", ms as f64 / 1000.0));
        }
    }
    line
}

/// `HH:MM:SS` in local time, for event lines.
pub fn clock(unix: f64) -> String {
    let t = unix as libc::time_t;
    // SAFETY: localtime_r writes into `tm`, which lives on this stack frame.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return "--:--:--".into();
    }
    format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// The image progress line: bar, percent, step, and time left when known.
pub fn progress(fraction: f64, step: u64, steps: u64, eta_secs: f64) -> String {
    let pct = (fraction.clamp(0.0, 1.0) * 100.0).round() as u64;
    let mut line = format!("{} {pct:>3}%", bar(pct, 100, BAR));
    if steps > 0 {
        line.push_str(&format!(" step {step}/{steps}"));
    }
    if eta_secs >= 0.5 {
        line.push_str(&format!(" · {} s left", eta_secs.round() as u64));
    }
    line
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bars_and_ages() {
        assert_eq!(bar(1, 2, 4), "[██░░]");
        assert_eq!(bar(0, 0, 3), "[░░░]");
        assert_eq!(bar(9, 3, 2), "[██]");
        assert_eq!(ago(None, 100), "never");
        assert_eq!(ago(Some(100), 100), "just now");
        assert_eq!(ago(Some(58), 100), "42 s ago");
        assert_eq!(ago(Some(0), 3 * 3600 + 5), "3 h ago");
        assert_eq!(ago(Some(0), 2 * 86400), "2 d ago");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    fn snapshot() -> Value {
        json!({
            "version": "0.1.0", "at": 1000,
            "memory": {"backend": "budget", "total_bytes": 3u64 << 30, "used_bytes": 2u64 << 30,
                       "free_bytes": 1u64 << 30, "reserve_bytes": 0},
            "models": [
                {"name": "chat", "kind": "llm", "state": "loaded", "bytes": {"total": 2u64 << 30},
                 "peak_bytes": 2u64 << 30, "last_used": 958, "pinned": true, "pid": 42, "device": "cpu",
                 "cpu": "x86-64-v2 build (sse3 ssse3) on a x86-64-v4 CPU", "in_flight": 0, "page_cache": {"resident_bytes": 1u64 << 29, "file_bytes": 1u64 << 30, "locked": false}},
                {"name": "sd", "kind": "image", "state": "failed", "bytes": {"total": 0}, "peak_bytes": 0,
                 "last_used": null, "pinned": false, "error": "file not found",
                 "page_cache": {"resident_bytes": 0, "file_bytes": 0, "locked": false}}
            ]
        })
    }

    #[test]
    fn status_and_ps() {
        let out = status(&snapshot());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "vramd 0.1.0");
        assert!(lines[1].starts_with("memory [████████████████████░░░░░░░░░░] 2.0 GiB used of 3.0 GiB"));
        assert!(
            lines[1].ends_with("· 1.0 GiB free · 0 B reserved (budget)"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[3],
            "MODEL  KIND   STATE            HELD     PEAK     PAGE CACHE       LAST USE"
        );
        assert_eq!(
            lines[4],
            "chat   llm    loaded (pinned)  2.0 GiB  2.0 GiB  512.0 MiB (50%)  42 s ago"
        );
        assert_eq!(
            lines[5],
            "sd     image  failed           0 B      0 B      -                never"
        );
        assert_eq!(lines[7], "sd failed: file not found");
        let ps_out = ps(&snapshot());
        assert_eq!(ps_out.lines().count(), 3, "{ps_out}");
        assert!(
            ps_out
                .lines()
                .nth(1)
                .unwrap()
                .starts_with("chat   llm   loaded  2.0 GiB  42   cpu     x86-64-v2"),
            "{ps_out}"
        );
        // A build below the CPU's level is said in a line of its own.
        assert_eq!(
            ps_out.lines().nth(2),
            Some("chat: x86-64-v2 build (sse3 ssse3) on a x86-64-v4 CPU")
        );
        assert_eq!(ps(&json!({"models": []})), "no model is loaded\n");
    }

    #[test]
    fn host_memory_is_shown_apart_from_the_device() {
        let mut v = snapshot();
        v["memory"]["used_bytes"] = json!(1u64 << 30);
        v["memory"]["host_bytes"] = json!(480u64 << 20);
        v["models"][1]["state"] = json!("loaded");
        v["models"][1]["bytes"] = json!({"total": 1u64 << 30, "host": 480u64 << 20});
        let out = status(&v);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].starts_with("memory [██████████░░░░░░░░░░░░░░░░░░░░] 1.0 GiB used of 3.0 GiB"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("(budget) + 480.0 MiB in RAM"), "{}", lines[1]);
        assert!(
            lines[5].starts_with("sd     image  loaded           1.0 GiB + 480.0 MiB in RAM  "),
            "{out}"
        );
        assert!(!lines[4].contains("RAM"), "no host bytes, nothing added: {out}");
        assert!(ps(&v).contains("1.0 GiB + 480.0 MiB in RAM"), "{}", ps(&v));
    }

    #[test]
    fn estimates() {
        let e = json!({"model": "sd", "kind": "image", "width": 1024, "height": 768, "total": 3u64 << 30,
            "parts": {"weights": 1u64 << 30, "sampling": 1u64 << 29, "vae_decode": {"gpu": 2u64 << 30, "tiled": 1u64 << 28, "cpu": 0}},
            "calibrated": false});
        assert_eq!(
            estimate(&e, Some(1 << 30)),
            "sd at 1024×768: 3.0 GiB at its peak\n  weights 1.0 GiB · sampling 512.0 MiB · VAE decode 2.0 GiB (tiled 256.0 MiB)\n  free now: 1.0 GiB\n"
        );
        let e = json!({"model": "chat", "kind": "llm", "context_length": 256, "total": 300,
            "parts": {"weights": 100, "context": 150, "compute": 50}, "calibrated": true});
        assert_eq!(
            estimate(&e, None),
            "chat at 256 tokens: 300 B\n  weights 100 B · KV cache 150 B · compute 50 B\n  calibrated from earlier runs\n"
        );
        let e = json!({"model": "chat", "kind": "llm", "context_length": 256, "parallel": 2, "total": 300,
            "parts": {"weights": 100, "context": 150, "compute": 50}, "calibrated": false});
        assert!(estimate(&e, None).starts_with("chat at 256 tokens × 2 slots: 300 B\n"));
    }

    #[test]
    fn event_lines() {
        let cases = [
            (
                json!({"type": "model_loaded", "model": "chat", "bytes": 2u64 << 30, "load_ms": 1234, "from_page_cache": true}),
                "chat loaded: 2.0 GiB in 1.2 s (from the page cache)",
            ),
            (
                json!({"type": "model_soft_unloaded", "model": "chat", "freed_bytes": 1u64 << 29, "reason": "chat is idle"}),
                "chat soft-unloaded: 512.0 MiB freed, weights kept (chat is idle)",
            ),
            (
                json!({"type": "model_soft_unloaded", "model": "chat", "freed_bytes": 1u64 << 29, "kept_bytes": 1u64 << 24, "reason": "chat is idle"}),
                "chat soft-unloaded: 512.0 MiB freed, weights kept, 16.0 MiB of KV kept in RAM (chat is idle)",
            ),
            (
                json!({"type": "model_restored", "model": "chat", "bytes": 1u64 << 29, "context_ms": 40, "reason": "memory is free again"}),
                "chat context restored: 512.0 MiB in 40 ms (memory is free again)",
            ),
            (
                json!({"type": "vae_on_cpu", "model": "sd", "width": 512, "height": 512, "reason": ""}),
                "sd 512×512: VAE decode on the CPU",
            ),
            (
                json!({"type": "worker_restarted", "model": "chat", "pid": 7}),
                "chat: worker restarted (pid 7)",
            ),
            (
                json!({"type": "request_finished", "model": "sd", "kind": "image", "outcome": "done",
                       "error": null, "queued": true, "waited_ms": 1500, "vae": "cpu", "vae_ms": 30000,
                       "slower_ms": 28000, "freed": [{"model": "chat", "mode": "soft", "bytes": 1u64 << 29}]}),
                "sd: image request done, waited 1.5 s, chat soft-unloaded (512.0 MiB), VAE decode cpu (+28.0 s)",
            ),
            (
                json!({"type": "request_finished", "model": "chat", "kind": "text", "outcome": "failed",
                       "error": "the worker crashed", "queued": false, "waited_ms": 0, "vae": null,
                       "vae_ms": null, "slower_ms": null, "freed": []}),
                "chat: text request failed (the worker crashed)",
            ),
        ];
        for (e, line) in cases {
            assert_eq!(event(&e), line);
        }
        assert_eq!(clock(f64::NAN).len(), 8);
    }

    #[test]
    fn progress_lines() {
        assert_eq!(progress(0.0, 0, 0, 0.0), format!("[{}]   0%", "░".repeat(30)));
        assert_eq!(
            progress(0.5, 10, 20, 3.4),
            format!("[{}{}]  50% step 10/20 · 3 s left", "█".repeat(15), "░".repeat(15))
        );
        assert!(progress(1.0, 20, 20, 0.0).contains("100% step 20/20"));
    }
}
