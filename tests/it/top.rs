//! `vramctl top` against a running daemon (fake workers, `dbus_util::two_models`): one frame
//! with `--once` after a chat and an image, the frame and exit status when vramd is not
//! there, and the plain-lines mode following vramd away and back.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::dbus_util::two_models;
use crate::util::{events, ok, Daemon};

const VRAMCTL: &str = env!("CARGO_BIN_EXE_vramctl");

fn top(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(VRAMCTL);
    cmd.arg("--socket")
        .arg(socket)
        .arg("top")
        .args(args)
        .env("COLUMNS", "120")
        .env_remove("LINES")
        .stdin(Stdio::null());
    cmd
}

fn line<'a>(frame: &'a [&str], prefix: &str) -> &'a str {
    frame
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{}", frame.join("\n")))
}

#[test]
fn once_shows_the_bar_both_models_and_the_decisions() {
    let (config, _keep) = two_models("");
    let d = Daemon::start(&config);
    ok(d.post_json("/v1/completions", r#"{"model":"chat","prompt":"x","max_tokens":1}"#));
    // The image needs room: chat is soft-unloaded for it.
    ok(d.post_json("/v1/images/generations", r#"{"model":"sd","prompt":"a dog","steps":2}"#));
    let out = top(&d.socket, &["--once"]).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stdout.contains('\u{1b}'),
        "no escape sequences off a terminal: {stdout:?}"
    );
    let frame: Vec<&str> = stdout.lines().collect();
    assert!(frame.iter().all(|l| l.chars().count() <= 120), "{stdout}");
    assert!(frame[0].starts_with(&format!("vramd {} · budget · ", env!("CARGO_PKG_VERSION"))));
    assert!(line(&frame, "memory budget 3.0 GiB: ").ends_with(" free"), "{stdout}");
    let bar = line(&frame, "[");
    assert_eq!(bar.chars().count(), 102, "at most 100 cells: {bar}");
    assert!(bar.starts_with("[████"), "{bar}");
    assert_eq!(line(&frame, "  chat "), "  chat  █ weights 1.5 GiB");
    assert!(
        line(&frame, "  sd ").starts_with("  sd    █ weights 1.0 GiB"),
        "{stdout}"
    );
    assert!(line(&frame, "MODEL ").starts_with("MODEL  KIND   STATE"), "{stdout}");
    // The eviction order, when the daemon gives one.
    let ranked = d.model_status("chat").get("eviction_rank").is_some();
    assert_eq!(line(&frame, "MODEL ").contains(" EVICT "), ranked, "{stdout}");
    let chat = line(&frame, "chat ");
    assert!(chat.starts_with("chat   llm    soft-unloaded  1.5 GiB  "), "{stdout}");
    let sd = line(&frame, "sd ");
    assert!(sd.starts_with("sd     image  loaded "), "{stdout}");
    // The log: what the daemon decided, in its own words when it gives them.
    let log_at = frame.iter().position(|l| *l == "recent decisions").expect("a log");
    let log = &frame[log_at + 1..];
    let replay = events(&d);
    assert_eq!(log.len(), replay.len(), "{stdout}");
    for (l, e) in log.iter().zip(&replay) {
        assert_eq!(l.as_bytes()[2], b':', "HH:MM:SS first: {l}");
        if let Some(text) = e["text"].as_str() {
            // A line too long for the terminal is cut, with `…` at the end.
            let shown = l[9..].trim_end_matches('…');
            assert!(
                l.ends_with(text) || l.ends_with('…') && text.starts_with(shown),
                "{l:?} says {text:?}"
            );
        }
    }
    assert!(log.iter().any(|l| l.contains("chat")) && log.iter().any(|l| l.contains("sd")));
}

#[test]
fn once_without_a_daemon_says_so_and_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vramd.sock");
    let started = Instant::now();
    let out = top(&socket, &["--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(started.elapsed() < Duration::from_secs(2), "no waiting for a replay");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().any(|l| l == "vramd is not reachable"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("vramctl: cannot reach vramd at {}", socket.display())),
        "{stderr}"
    );
}

/// The child's stdout, line by line, on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line that `pred` accepts; the lines seen meanwhile go in the failure message.
fn wait_line(rx: &mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no matching line within 20 s:\n{}", seen.join("\n")));
        if pred(&line) {
            return line;
        }
        seen.push(line);
    }
}

/// Kills the child when dropped, so a failed test leaves no `vramctl top` behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn plain_lines_follow_vramd_away_and_back() {
    // vramctl follows a link, so the daemon behind it can be replaced.
    let home = tempfile::tempdir().unwrap();
    let socket = home.path().join("vramd.sock");
    let (config, _keep) = two_models("");
    let first = Daemon::start(&config);
    std::os::unix::fs::symlink(&first.socket, &socket).unwrap();
    let mut child = Killed(top(&socket, &[]).stdout(Stdio::piped()).spawn().unwrap());
    let rx = lines_of(&mut child.0);
    wait_line(&rx, |l| l.starts_with("chat   llm    unloaded"));
    ok(d_load(&first, "chat"));
    wait_line(&rx, |l| l.starts_with("chat   llm    loaded"));
    drop(first);
    wait_line(&rx, |l| l == "vramd is not reachable; retrying…");
    let second = Daemon::start(&config);
    std::fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(&second.socket, &socket).unwrap();
    wait_line(&rx, |l| l.starts_with("chat   llm    unloaded"));
}

fn d_load(d: &Daemon, model: &str) -> crate::util::Response {
    d.post_json(&format!("/v1/models/{model}/load"), "{}")
}
