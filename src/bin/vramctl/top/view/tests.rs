//! The frame on values: no models, a failed model, names that must not steer the terminal
//! or break the table, host RAM apart from the bar, running requests, a narrow terminal.

use serde_json::{json, Value};

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const NOW: f64 = 1000.0;

fn memory(total: u64, used: u64) -> Value {
    json!({"backend": "budget", "total_bytes": total, "used_bytes": used,
           "free_bytes": total - used, "reserve_bytes": 0, "host_bytes": 0})
}

fn model(name: &str, kind: &str, state: &str) -> Value {
    json!({"name": name, "kind": kind, "state": state,
           "bytes": {"weights": 0, "context": 0, "compute": 0, "total": 0, "host": 0},
           "reserved_bytes": 0, "peak_bytes": 0, "last_used": null, "in_flight": 0, "queued": 0,
           "pinned": false, "error": null, "running": [],
           "page_cache": {"resident_bytes": 0, "file_bytes": 0, "locked": false}})
}

/// `chat` soft-unloaded (1.5 GiB of weights kept) and `sd` drawing an image, in 3 GiB.
fn two() -> Value {
    let mut chat = model("chat", "llm", "soft_unloaded");
    chat["bytes"] = json!({"weights": 3 * GIB / 2, "context": 0, "compute": 0, "total": 3 * GIB / 2});
    chat["last_used"] = json!(958);
    chat["page_cache"] = json!({"resident_bytes": 3 * GIB / 2, "file_bytes": 3 * GIB / 2, "locked": false});
    let mut sd = model("sd", "image", "busy");
    sd["bytes"] = json!({"weights": GIB, "context": 0, "compute": 0, "total": GIB, "host": 0});
    sd["reserved_bytes"] = json!(GIB / 2);
    sd["in_flight"] = json!(1);
    sd["queued"] = json!(2);
    sd["running"] = json!([{"request_id": "r1", "started_ms": 997_000, "interrupted": false,
                            "progress": {"image": 0, "images": 1, "step": 5, "steps": 20}}]);
    json!({"version": "0.1.0", "at": 1000, "memory": memory(3 * GIB, 3 * GIB), "models": [chat, sd]})
}

fn lines(v: &Value, log: &[String], width: usize) -> Vec<String> {
    let out = frame(Ok(v), log, width, NOW);
    for l in &out {
        assert!(l.chars().count() <= width.max(MIN_WIDTH), "wider than {width}: {l:?}");
        assert!(!l.chars().any(char::is_control), "{l:?}");
    }
    out
}

fn find<'a>(out: &'a [String], prefix: &str) -> &'a str {
    out.iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{}", out.join("\n")))
}

fn count(line: &str, glyph: char) -> usize {
    line.chars().filter(|&c| c == glyph).count()
}

#[test]
fn no_models() {
    let v = json!({"version": "0.1.0", "at": 1000, "memory": memory(8 * GIB, 0), "models": []});
    let out = lines(&v, &[], 80);
    assert!(out[0].starts_with("vramd 0.1.0 · budget · "), "{out:?}");
    assert_eq!(out[2], "memory budget 8.0 GiB: 0 B held by models · 8.0 GiB free");
    assert_eq!(out[3], format!("[{}]", "░".repeat(78)));
    assert_eq!(out[4], "  ░ free 8.0 GiB");
    assert!(out.contains(&"no models configured".to_owned()), "{out:?}");
    assert_eq!(out[out.len() - 2..], ["recent decisions", "  (none yet)"]);
}

#[test]
fn parts_rows_requests_and_the_log() {
    let log = ["12:00:01 chat soft-unloaded to make room for sd".to_owned()];
    let out = lines(&two(), &log, 100);
    // 1.5 GiB weights, 1 GiB weights, 0.5 GiB reserved: 49, 33 and 16 cells of 98.
    let bar = &out[3];
    assert_eq!(
        (count(bar, '█'), count(bar, '▚'), count(bar, '░')),
        (82, 16, 0),
        "{bar}"
    );
    assert!(bar.starts_with(&format!("[{}", "█".repeat(82))), "{bar}");
    assert_eq!(out[4], "  chat  █ weights 1.5 GiB");
    assert_eq!(out[5], "  sd    █ weights 1.0 GiB · ▚ reserved by requests 512.0 MiB");
    assert_eq!(out[6], "  ░ free 0 B");
    assert_eq!(
        find(&out, "MODEL"),
        "MODEL  KIND   STATE          HELD     IDLE  PAGE CACHE      REQUESTS"
    );
    assert_eq!(
        find(&out, "chat "),
        "chat   llm    soft-unloaded  1.5 GiB  42 s  1.5 GiB (100%)  -"
    );
    assert_eq!(
        find(&out, "sd "),
        "sd     image  busy           1.5 GiB  busy  -               1 running, 2 queued"
    );
    let progress = find(&out, "  └ image");
    assert!(progress.starts_with("  └ image 1/1 step 5/20 [█████"), "{progress}");
    assert!(progress.ends_with("] 25% · 3 s"), "{progress}");
    assert_eq!(out[out.len() - 2..], ["recent decisions".to_owned(), log[0].clone()]);
}

#[test]
fn a_failed_model_says_why() {
    let mut m = model("sd", "image", "failed");
    m["error"] = json!("the model file is corrupt: bad magic");
    let v = json!({"version": "0.1.0", "at": 1000, "memory": memory(GIB, 0), "models": [m]});
    let out = lines(&v, &[], 80);
    assert!(
        find(&out, "sd ").starts_with("sd     image  failed  0 B   never used"),
        "{out:?}"
    );
    assert_eq!(find(&out, "  └"), "  └ failed: the model file is corrupt: bad magic");
}

#[test]
fn names_neither_steer_the_terminal_nor_break_the_table() {
    let long = "x".repeat(100);
    let mut a = model("<b>\u{1b}[2J", "llm", "loaded");
    a["bytes"] = json!({"weights": GIB, "context": 0, "compute": 0, "total": GIB});
    let b = model(&long, "llm", "unloaded");
    let v = json!({"version": "0.1.0", "at": 1000, "memory": memory(2 * GIB, GIB), "models": [a, b]});
    let log = ["12:00:00 \u{1b}]0;owned\u{7} loaded".to_owned()];
    let out = lines(&v, &log, 80);
    let row = find(&out, "<b>");
    assert!(row.starts_with("<b>?[2J "), "{row}");
    let cut_name = format!("{}…", "x".repeat(NAME_MAX - 1));
    assert!(
        find(&out, "xxx").starts_with(&format!("{cut_name}  unloaded")),
        "{out:?}"
    );
    assert_eq!(
        find(&out, "  <b>"),
        format!("  {:<NAME_MAX$}  █ weights 1.0 GiB", "<b>?[2J")
    );
    assert_eq!(out.last().unwrap(), "12:00:00 ?]0;owned? loaded");
}

#[test]
fn host_ram_is_shown_apart_from_the_bar() {
    let mut v = two();
    v["models"][1]["bytes"]["host"] = json!(480 * MIB);
    v["memory"]["host_bytes"] = json!(480 * MIB);
    let with = lines(&v, &[], 100);
    let without = lines(&two(), &[], 100);
    assert_eq!(with[3], without[3], "the bar is the device's alone");
    assert_eq!(
        find(&with, "host RAM"),
        "host RAM, not in the bar: 480.0 MiB (sd 480.0 MiB)"
    );
    assert!(!without.iter().any(|l| l.starts_with("host RAM")));
    assert!(find(&with, "sd ").contains("1.5 GiB + 480.0 MiB in RAM"), "{with:?}");
}

#[test]
fn nvml_shows_what_is_held_outside_vramd_and_the_reserve() {
    let mut v = two();
    v["memory"] = json!({"backend": "nvml", "total_bytes": 8 * GIB, "used_bytes": 3 * GIB,
                         "reserve_bytes": GIB / 2, "free_bytes": 3 * GIB, "host_bytes": 0});
    let out = lines(&v, &[], 82);
    assert_eq!(out[2], "GPU memory 8.0 GiB: 3.0 GiB held by models · 3.0 GiB free");
    let bar = &out[3];
    // 80 cells: 30 for models, 15 outside, 5 reserve, 30 free.
    assert_eq!(
        (count(bar, '╳'), count(bar, '┄'), count(bar, '░')),
        (15, 5, 30),
        "{bar}"
    );
    assert_eq!(
        out[6],
        "  ╳ outside vramd 1.5 GiB · ┄ kept free (reserve) 512.0 MiB · ░ free 3.0 GiB"
    );
}

#[test]
fn the_daemons_figure_for_what_is_outside_vramd_wins() {
    let mut v = two();
    v["memory"] = json!({"backend": "nvml", "total_bytes": 8 * GIB, "used_bytes": 3 * GIB,
                         "reserve_bytes": 0, "free_bytes": 4 * GIB, "other_bytes": GIB, "host_bytes": 0});
    let out = lines(&v, &[], 82);
    assert_eq!((count(&out[3], '╳'), count(&out[3], '░')), (10, 40), "{}", out[3]);
    assert_eq!(out[6], "  ╳ outside vramd 1.0 GiB · ░ free 4.0 GiB");
}

#[test]
fn eviction_order_shows_when_the_daemon_gives_it() {
    let mut v = two();
    v["models"][0]["eviction_rank"] = json!(1);
    v["models"][1]["eviction_rank"] = Value::Null;
    let out = lines(&v, &[], 120);
    assert!(find(&out, "MODEL").contains("  EVICT  "), "{out:?}");
    assert!(find(&out, "chat ").contains(" 42 s  1      1.5 GiB"), "{out:?}");
    assert!(find(&out, "sd ").contains(" busy  -      -"), "{out:?}");
    assert!(!lines(&two(), &[], 120).iter().any(|l| l.contains("EVICT")));
}

#[test]
fn a_load_in_progress_and_flags() {
    let mut m = model("chat", "llm", "loading");
    m["reserved_bytes"] = json!(2 * GIB);
    m["pinned"] = json!(true);
    assert_eq!(state(&m), "loading 2.0 GiB, pinned");
    m["bytes"]["total"] = json!(GIB);
    m["reserved_bytes"] = json!(GIB);
    assert_eq!(state(&m), "loading 50% of 2.0 GiB, pinned");
    let mut text = model("chat", "llm", "busy");
    text["running"] = json!([{"request_id": "r", "started_ms": 880_000, "interrupted": true, "progress": null}]);
    assert_eq!(details(&text, 80, NOW), ["  └ text · 2 min (interrupted)"]);
}

#[test]
fn a_narrow_terminal_keeps_name_state_and_size() {
    let out = lines(
        &two(),
        &["12:00:01 a long line about what happened, cut to fit".to_owned()],
        40,
    );
    assert_eq!(find(&out, "MODEL"), "MODEL  STATE          HELD     IDLE");
    assert_eq!(find(&out, "chat "), "chat   soft-unloaded  1.5 GiB  42 s");
    assert_eq!(out[3].chars().count(), 40, "{}", out[3]);
    assert!(out.last().unwrap().ends_with('…'));
    // Narrower than anything sensible: cut at the minimum, never a panic.
    let out = frame(Ok(&two()), &[], 3, NOW);
    assert!(out.iter().all(|l| l.chars().count() <= MIN_WIDTH), "{out:?}");
}

#[test]
fn when_vramd_is_away_the_frame_says_so_and_keeps_the_log() {
    let log = ["12:00:01 chat loaded".to_owned()];
    let out = frame(Err("vramd is not reachable; retrying…"), &log, 80, NOW);
    assert_eq!(
        out,
        [
            "vramd",
            "",
            "vramd is not reachable; retrying…",
            "",
            "recent decisions",
            "12:00:01 chat loaded"
        ]
    );
}

#[test]
fn log_lines_prefer_the_daemons_words() {
    let e = json!({"type": "model_loaded", "model": "chat", "bytes": GIB, "load_ms": 1500,
                   "from_page_cache": false, "at": 0.0});
    let line = log_line("model_loaded", &e);
    assert_eq!(&line[8..], " chat loaded: 1.0 GiB in 1.5 s (from disk)");
    let mut with_text = e.clone();
    with_text["text"] = json!("chat is ready (1.0 GiB, read from disk in 1.5 s)");
    assert!(log_line("model_loaded", &with_text).ends_with(" chat is ready (1.0 GiB, read from disk in 1.5 s)"));
    assert_eq!(
        log_line("lagged", &json!({"missed": 4})),
        "(missed 4 events: vramctl was too slow)"
    );
}
