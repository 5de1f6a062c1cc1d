//! `vramctl` against a running daemon (fake workers, see `dbus_util::two_models`): every
//! subcommand's output for people and with `--json`, its exit codes, a daemon that is not
//! there, and the HTTP access rule seen by a caller of another uid.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::dbus_util::{open_socket, two_models, GIB};
use crate::util::Daemon;

const VRAMCTL: &str = env!("CARGO_BIN_EXE_vramctl");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn out(o: Output) -> Run {
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn vramctl(socket: &Path, args: &[&str]) -> Run {
    out(Command::new(VRAMCTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap())
}

/// Asserts success and returns stdout.
fn ok(socket: &Path, args: &[&str]) -> String {
    let r = vramctl(socket, args);
    assert_eq!(r.code, 0, "vramctl {args:?}: {}", r.stderr);
    r.stdout
}

fn json(socket: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(socket, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("vramctl {args:?} --json printed {text:?}: {e}"))
}

fn daemon() -> (Daemon, Vec<tempfile::TempDir>) {
    let (config, keep) = two_models("");
    (Daemon::start(&config), keep)
}

#[test]
fn status_ps_and_estimate() {
    let (d, _keep) = daemon();
    let s = &d.socket;
    let status = ok(s, &["status"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines[0], format!("vramd {}", env!("CARGO_PKG_VERSION")));
    assert!(
        lines[1].starts_with(&format!(
            "memory [{}] 0 B used of 3.0 GiB · 3.0 GiB free",
            "░".repeat(30)
        )),
        "{status}"
    );
    assert!(
        lines[3].starts_with("MODEL  KIND   STATE     HELD  PEAK  PAGE CACHE"),
        "{status}"
    );
    assert!(lines[4].starts_with("chat   llm    unloaded  0 B   0 B"), "{status}");
    assert!(lines[4].ends_with("never"), "{status}");
    assert!(lines[5].starts_with("sd     image  unloaded"), "{status}");
    let v = json(s, &["status"]);
    assert_eq!(v["models"][0]["name"], "chat");
    assert_eq!(v["memory"]["total_bytes"], 3 * GIB);

    assert_eq!(ok(s, &["ps"]), "no model is loaded\n");
    assert_eq!(json(s, &["ps"]), Value::Array(vec![]));
    ok(s, &["load", "chat"]);
    let ps = ok(s, &["ps"]);
    assert!(ps.starts_with("MODEL  KIND  STATE   HELD     PID"), "{ps}");
    assert!(
        ps.lines().nth(1).unwrap().starts_with("chat   llm   loaded  2.0 GiB"),
        "{ps}"
    );
    let v = json(s, &["ps"]);
    assert_eq!(v[0]["name"], "chat");
    assert_eq!(v.as_array().unwrap().len(), 1);
    let status = ok(s, &["status"]);
    assert!(status.contains("2.0 GiB used of 3.0 GiB · 1.0 GiB free"), "{status}");
    // A load is not a use: last use stays "never" until a request.
    assert!(status.lines().nth(4).unwrap().ends_with("never"), "{status}");
    let r = d.post_json("/v1/completions", r#"{"model":"chat","prompt":"x","max_tokens":1}"#);
    assert_eq!(r.status, 200);
    let status = ok(s, &["status"]);
    let row = status.lines().nth(4).unwrap();
    assert!(row.ends_with("just now") || row.ends_with(" s ago"), "{status}");

    let e = ok(s, &["estimate", "sd", "--size", "1024x768"]);
    let http = d.get("/v1/estimate?model=sd&width=1024&height=768").json();
    let total = vramd::units::format_size_human(http["total"].as_u64().unwrap());
    assert!(
        e.starts_with(&format!(
            "sd at 1024×768: {total} at its peak\n  weights 1.0 GiB · sampling "
        )),
        "{e}"
    );
    assert!(e.ends_with("free now: 1.0 GiB\n"), "{e}");
    let v = json(s, &["estimate", "chat", "--context", "512"]);
    assert_eq!(v["total"], GIB + GIB / 2);
    let r = vramctl(s, &["estimate", "sd", "--size", "huge"]);
    assert_eq!(r.code, 2, "a bad size is a usage error");
    assert!(r.stderr.contains("\"huge\" is not WIDTHxHEIGHT"), "{}", r.stderr);
}

#[test]
fn estimates_of_a_real_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    vramd_gguf::llama::write_tiny_llama(&path, &Default::default()).unwrap();
    let config = format!(
        "{}[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 256\n",
        crate::util::BASE_CONFIG,
        path.display()
    );
    let d = Daemon::start(&config);
    let e = ok(&d.socket, &["estimate", "chat", "--context", "512"]);
    assert!(e.starts_with("chat at 512 tokens × 2 slots: "), "{e}");
    assert!(
        e.contains(&format!(
            "KV cache {}",
            vramd::units::format_size_human(2 * (2 * 2 * 512 * 64 * 2))
        )),
        "{e}"
    );
}

#[test]
fn load_unload_pin_unpin_and_errors() {
    let (d, _keep) = daemon();
    let s = &d.socket;
    let l = ok(s, &["load", "chat"]);
    assert!(l.starts_with("chat loaded in ") && l.ends_with(" s: 2.0 GiB\n"), "{l}");
    assert_eq!(ok(s, &["load", "chat"]), "chat was already loaded\n");
    assert_eq!(json(s, &["load", "chat"])["state"], "loaded");
    assert_eq!(
        ok(s, &["pin", "chat"]),
        "chat pinned: it is never evicted to make room\n"
    );
    assert!(ok(s, &["status"]).contains("loaded (pinned)"));
    assert_eq!(json(s, &["unpin", "chat"])["pinned"], false);
    assert_eq!(ok(s, &["pin", "chat"]).lines().count(), 1);
    assert_eq!(ok(s, &["unpin", "chat"]), "chat unpinned\n");
    assert_eq!(
        ok(s, &["unload", "chat", "--soft"]),
        "chat soft-unloaded (weights kept): 512.0 MiB freed\n"
    );
    assert_eq!(d.model_status("chat")["state"], "soft_unloaded");
    assert_eq!(ok(s, &["unload", "chat"]), "chat unloaded: 1.5 GiB freed\n");
    let v = json(s, &["unload", "chat", "--hard"]);
    assert_eq!((v["mode"].as_str(), v["freed_bytes"].as_u64()), (Some("hard"), Some(0)));

    let r = vramctl(s, &["load", "nope"]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "vramctl: model \"nope\" does not exist; GET /v1/models lists the configured models (404 model_not_found)\n"
    );
    let r = vramctl(s, &["unload", "chat", "--soft", "--hard"]);
    assert_eq!(r.code, 2);
    let r = vramctl(s, &["estimate", "nope"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("(404 model_not_found)"));
}

/// Reads a child's stdout lines on a thread, so a test can wait for a line with a limit.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("no matching line within 20 s");
        if pred(&line) {
            return line;
        }
    }
}

#[test]
fn events_follow_the_stream() {
    let (d, _keep) = daemon();
    ok(&d.socket, &["load", "chat"]);
    let mut child = Command::new(VRAMCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(["events", "--replay", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    // The replay first: "HH:MM:SS <the event's text>", the daemon's sentence.
    let line = wait_line(&rx, |l| l.contains("Loaded chat"));
    let (clock, text) = line.split_once(' ').unwrap();
    assert_eq!(clock.len(), 8, "{line}");
    assert!(
        text.starts_with("Loaded chat (2 GiB) in ") && (text.ends_with(", from disk") || text.contains("page cache")),
        "{line}"
    );
    // Then live ones.
    ok(&d.socket, &["unload", "chat", "--soft"]);
    let line = wait_line(&rx, |l| l.contains("Set aside"));
    assert!(
        line.ends_with("Set aside the working memory of chat (512 MiB), as asked"),
        "{line}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = Command::new(VRAMCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(["--json", "events", "--replay", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let v: Value = serde_json::from_str(&wait_line(&rx, |_| true)).unwrap();
    assert_eq!(v["type"], "model_soft_unloaded");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn chat_streams_each_turn() {
    let (d, _keep) = daemon();
    let chat = |extra: &[&str], input: &str| {
        let mut child = Command::new(VRAMCTL)
            .arg("--socket")
            .arg(&d.socket)
            .args(extra)
            .args(["chat", "chat", "--max-tokens", "3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        out(child.wait_with_output().unwrap())
    };
    let r = chat(&[], "hello there\n\nhow are you?\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "t0 t1 t2 \nt0 t1 t2 \n");
    let r = chat(&["--json"], "hi\n");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["content"], "t0 t1 t2 ");
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // A model that cannot chat: the daemon's message, exit 1.
    let mut child = Command::new(VRAMCTL)
        .arg("--socket")
        .arg(&d.socket)
        .args(["chat", "sd"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let r = out(child.wait_with_output().unwrap());
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("is an image model") && r.stderr.contains("(400 invalid_value)"),
        "{}",
        r.stderr
    );
}

#[test]
fn image_writes_the_png_with_a_progress_bar() {
    let (d, _keep) = daemon();
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("cat.png");
    // After a chat, the image needs room: the VAE decode is tiled, and --json says so.
    let r = d.post_json("/v1/completions", r#"{"model":"chat","prompt":"x","max_tokens":1}"#);
    assert_eq!(r.status, 200);
    let r = vramctl(
        &d.socket,
        &["image", "sd", "a dog", "-o", png.to_str().unwrap(), "--steps", "2"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.ends_with(", VAE decode in tiles)\n"), "{}", r.stdout);
    let v = json(
        &d.socket,
        &[
            "image",
            "sd",
            "a dog",
            "-o",
            png.to_str().unwrap(),
            "--steps",
            "2",
            "--seed",
            "3",
        ],
    );
    assert_eq!(v["seed"], 3);
    assert_eq!(v["bytes"], std::fs::metadata(&png).unwrap().len());

    // The fake takes 4 ms a step: 150 steps is long enough to see progress.
    let r = vramctl(
        &d.socket,
        &[
            "image",
            "sd",
            "a cat",
            "-o",
            png.to_str().unwrap(),
            "--size",
            "64x64",
            "--steps",
            "150",
            "--seed",
            "7",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(
        r.stdout,
        format!("wrote {} ({} bytes, seed 7)\n", png.display(), bytes.len())
    );
    assert!(r.stderr.contains(" step "), "a partial bar was drawn: {:?}", r.stderr);
    assert!(
        r.stderr.trim_end().ends_with(&format!("[{}] 100%", "█".repeat(30))),
        "{:?}",
        r.stderr
    );

    let r = vramctl(&d.socket, &["image", "chat", "x", "-o", png.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("(400 invalid_value)"), "{}", r.stderr);
}

#[test]
fn a_daemon_that_is_not_there_exits_3_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vramd.sock");
    let png = dir.path().join("x.png");
    let commands: &[&[&str]] = &[
        &["status"],
        &["ps"],
        &["load", "chat"],
        &["unload", "chat", "--soft"],
        &["pin", "chat"],
        &["unpin", "chat"],
        &["estimate", "chat"],
        &["events"],
        &["chat", "chat"],
        &["image", "sd", "a cat", "-o", png.to_str().unwrap()],
        &["--json", "status"],
    ];
    for args in commands {
        let mut child = Command::new(VRAMCTL)
            .arg("--socket")
            .arg(&socket)
            .args(*args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"hello\n");
        let r = out(child.wait_with_output().unwrap());
        assert_eq!(r.code, 3, "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "", "{args:?}");
        assert!(
            r.stderr.starts_with(&format!(
                "vramctl: cannot reach vramd at {}: No such file or directory",
                socket.display()
            )),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("is it running?"), "{}", r.stderr);
    }
    assert!(!png.exists());
}

/// Runs vramctl as uid/gid 65534 (nobody/nogroup), without supplementary groups.
fn vramctl_as_nobody(socket: &Path, gid: u32, args: &[&str]) -> Run {
    out(Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", VRAMCTL])
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)"))
}

#[test]
fn state_changes_need_root_or_the_control_group_over_http() {
    let (d, _keep) = daemon();
    open_socket(&d);
    let s = &d.socket;
    // Reading and generating are open to anyone who can reach the socket.
    assert_eq!(vramctl_as_nobody(s, 65534, &["status"]).code, 0);
    assert_eq!(vramctl_as_nobody(s, 65534, &["estimate", "sd"]).code, 0);
    let r = vramctl_as_nobody(s, 65534, &["image", "sd", "x", "--steps", "1", "-o", "/dev/null"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Changing state is not.
    for args in [
        &["load", "chat"][..],
        &["unload", "sd"],
        &["unload", "sd", "--soft"],
        &["pin", "chat"],
        &["unpin", "chat"],
    ] {
        let r = vramctl_as_nobody(s, 65534, args);
        assert_eq!(r.code, 1, "{args:?}");
        assert_eq!(
            r.stderr,
            "vramctl: changing vramd's state needs root or membership in the group \"vramd\" (caller uid 65534) (403 access_denied)\n",
            "{args:?}"
        );
    }
    assert_eq!(
        d.model_status("sd")["state"],
        "loaded",
        "the image's model is still there"
    );
    assert_eq!(d.model_status("chat")["pinned"], false);
    // Stopping an image is a generation right, not a state change: /sdapi/v1/interrupt is
    // open to anyone who may generate (with curl: vramctl has no interrupt command).
    let curl = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "-X",
            "POST",
            "--unix-socket",
        ])
        .arg(s)
        .arg("http://vramd/sdapi/v1/interrupt")
        .output()
        .expect("curl");
    let v: Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert_eq!(v["interrupted"], false, "nothing was running: {v}");
    // Root may.
    ok(s, &["unload", "sd"]);
}

#[test]
fn members_of_the_control_group_may_change_state_over_http() {
    let (config, _keep) = two_models("control_group = \"nogroup\"\n");
    let d = Daemon::start(&config);
    open_socket(&d);
    let r = vramctl_as_nobody(&d.socket, 65534, &["load", "chat"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(d.model_status("chat")["state"], "loaded");
    let r = vramctl_as_nobody(&d.socket, 65533, &["unload", "chat"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("group \"nogroup\""), "{}", r.stderr);
}
