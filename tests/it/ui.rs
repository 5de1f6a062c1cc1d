//! The status page (`/ui`) and what it reads: the assets and their headers on both
//! listeners, `/v1/me` (who sees controls), each event's `text`, the eviction rank in
//! `/v1/status`; then the page itself in headless Chromium (`tests/python/ui_chromium.py`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::dbus_util::open_socket;
use crate::util::{events, fake_two_models, free_port, ok, read_response, send_request, Daemon, Response, BASE_CONFIG};

/// `fake_two_models` (a chat then a 512² image soft-unloads chat), on the socket and TCP.
struct Served {
    d: Daemon,
    port: u16,
    _dirs: Vec<tempfile::TempDir>,
}

fn serve(extra_daemon: &str) -> Served {
    let (config, dirs) = fake_two_models(1 << 30, "ok delay_ms=1", extra_daemon);
    let port = free_port();
    let d = Daemon::start_with(&config, |c| {
        c.arg("--tcp").arg(format!("127.0.0.1:{port}"));
    });
    Served { d, port, _dirs: dirs }
}

impl Served {
    fn get(&self, tcp: bool, path: &str) -> Response {
        if !tcp {
            return self.d.get(path);
        }
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        send_request(&mut s, "GET", path, &[], b"");
        read_response(&mut s)
    }
}

fn chat(d: &Daemon) -> Value {
    ok(d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
    ))
}

fn image(d: &Daemon) -> Value {
    let body = json!({"model": "sd", "prompt": "a cat", "size": "512x512", "steps": 2, "seed": 1});
    ok(d.post_json("/v1/images/generations", &body.to_string()))
}

#[test]
fn the_page_and_its_assets_are_served_with_their_headers_on_both_listeners() {
    let s = serve("");
    for tcp in [false, true] {
        for (path, ty) in [
            ("/ui", "text/html; charset=utf-8"),
            ("/ui/", "text/html; charset=utf-8"),
            ("/ui/ui.css", "text/css; charset=utf-8"),
            ("/ui/ui.js", "text/javascript; charset=utf-8"),
        ] {
            let r = s.get(tcp, path);
            assert_eq!(r.status, 200, "{path} over tcp={tcp}");
            assert_eq!(r.header("content-type"), Some(ty), "{path}");
            assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
            let csp = r.header("content-security-policy").unwrap_or_default();
            assert!(csp.starts_with("default-src 'self'"), "{path}: {csp}");
            assert!(
                csp.contains("script-src 'self'") && !csp.contains("unsafe"),
                "{path}: {csp}"
            );
            assert!(!r.body.is_empty());
        }
        let page = String::from_utf8(s.get(tcp, "/ui").body).unwrap();
        assert!(page.contains("<script src=\"/ui/ui.js\" defer></script>"), "{page}");
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "nothing from elsewhere"
        );
        // Other routes keep their JSON errors.
        let e = s.get(tcp, "/ui/nothing-here").error(404);
        assert_eq!(e["code"], "unknown_route");
    }
}

/// `GET /v1/me` as uid/gid 65534 without supplementary groups, through curl on the socket.
fn me_as_nobody(socket: &Path) -> Value {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-s",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://vramd/v1/me")
        .output()
        .expect("setpriv (util-linux) and curl");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn me_says_whether_controls_work_for_this_caller() {
    let s = serve("");
    // The tests run as root, whom the rule always allows, over the socket.
    assert_eq!(
        ok(s.get(false, "/v1/me")),
        json!({"may_control": true, "transport": "unix"})
    );
    // Nobody over TCP.
    assert_eq!(
        ok(s.get(true, "/v1/me")),
        json!({"may_control": false, "transport": "tcp"})
    );
    // A local user outside the control group may not; a member may.
    open_socket(&s.d);
    assert_eq!(me_as_nobody(&s.d.socket)["may_control"], false);
    let member = serve("control_group = \"nogroup\"\n");
    open_socket(&member.d);
    assert_eq!(
        me_as_nobody(&member.d.socket),
        json!({"may_control": true, "transport": "unix"})
    );
}

#[test]
fn events_carry_their_sentence_and_status_the_eviction_rank() {
    let s = serve("");
    let status = s.d.get("/v1/status").json();
    assert!(
        status["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["eviction_rank"].is_null()),
        "nothing loaded, nothing to evict: {status}"
    );
    assert_eq!(
        status["memory"]["other_bytes"],
        Value::Null,
        "no device on the budget backend"
    );
    chat(&s.d);
    image(&s.d);
    let evs = events(&s.d);
    assert!(
        evs.iter().all(|e| e["text"].as_str().is_some_and(|t| !t.is_empty())),
        "{evs:#?}"
    );
    let text_of = |ty: &str| -> Vec<&str> {
        evs.iter()
            .filter(|e| e["type"] == ty)
            .map(|e| e["text"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        text_of("model_soft_unloaded"),
        ["Set aside the working memory of chat (512 MiB) to make room for an image of sd"]
    );
    let soft = evs.iter().find(|e| e["type"] == "model_soft_unloaded").unwrap();
    assert_eq!(soft["cause"]["request_kind"], "image", "{soft}");
    let finished = text_of("request_finished");
    assert!(finished[0].starts_with("Answered with chat"), "{finished:?}");
    assert!(finished[1].starts_with("Made an image with sd"), "{finished:?}");
    assert!(
        finished[1].ends_with(
            "; set aside the working memory of chat (512 MiB); decoded the image's last step in tiles \
             so the other models could stay loaded"
        ),
        "{finished:?}"
    );
    // Both idle: chat, used first, goes first (the planner's rule, not the page's).
    assert_eq!(s.d.model_status("chat")["eviction_rank"], 1);
    assert_eq!(s.d.model_status("sd")["eviction_rank"], 2);
    // A pinned model is never evicted, so it has no rank, and the others move up.
    ok(s.d.post_json("/v1/models/chat/pin", ""));
    assert_eq!(s.d.model_status("chat")["eviction_rank"], Value::Null);
    assert_eq!(s.d.model_status("sd")["eviction_rank"], 1);
}

/// Chromium, if this machine has it; without it the test is skipped with a message, unless
/// `VRAMD_REQUIRE_WORKERS=1` (scripts/test, CI), where it must run.
fn chromium() -> Option<&'static str> {
    let path = "/usr/bin/chromium";
    let have = Path::new(path).is_file() && crate::util::python_has("websocket");
    if !have {
        assert!(
            std::env::var_os("VRAMD_REQUIRE_WORKERS").is_none(),
            "{path} and python3's websocket-client are required (apt install chromium; pip install -r tests/requirements.txt)"
        );
        eprintln!("skipped: no {path} (apt install chromium) or no websocket-client");
    }
    have.then_some(path)
}

/// The page in a real browser: the bar and the log follow a chat, then an image that sets
/// chat's working memory aside; the log survives a reload; names are shown as text; after
/// the daemon restarts, the page says "reconnecting…" and comes back by itself. With
/// `VRAMD_UI_SCREENSHOT=PATH` it also saves the screenshot the README shows (docs/ui.png).
#[test]
fn the_page_in_chromium_follows_a_soft_unload_and_a_restart() {
    let Some(chromium) = chromium() else {
        return;
    };
    let (config, _dirs) = fake_two_models(1 << 30, "ok delay_ms=1", "");
    let port = free_port();
    let start = |config: &str| {
        Daemon::start_with(config, |c| {
            c.arg("--tcp").arg(format!("127.0.0.1:{port}"));
        })
    };
    let d = start(&config);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ui_chromium.py");
    let shot = std::env::var("VRAMD_UI_SCREENSHOT").unwrap_or_default();
    let mut child = Command::new("python3")
        .arg(script)
        .args([chromium, &format!("http://127.0.0.1:{port}")])
        .arg(&d.socket)
        .arg(shot)
        .env("UI_TEST_RESTART", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let d = if first == "restart" {
        drop(d);
        let d = start(&config);
        writeln!(child.stdin.as_mut().unwrap(), "{}", d.socket.display()).unwrap();
        d
    } else {
        d
    };
    let last = lines.next().and_then(Result::ok).unwrap_or(first);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ui_chromium.py:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let v: Value = serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {last}"));
    assert_eq!(v["restarted"], true, "{v}");
    assert_eq!(v["escaped"]["shown"], "<script>alert(1)</script>");
}

/// With no model configured the page still comes up live, with no rows and the whole bar
/// free.
#[test]
fn the_page_in_chromium_with_no_models() {
    let Some(chromium) = chromium() else {
        return;
    };
    let port = free_port();
    let d = Daemon::start_with(BASE_CONFIG, |c| {
        c.arg("--tcp").arg(format!("127.0.0.1:{port}"));
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ui_chromium.py");
    let out = Command::new("python3")
        .arg(script)
        .args([chromium, &format!("http://127.0.0.1:{port}")])
        .arg(&d.socket)
        .env("UI_TEST_EMPTY", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ui_chromium.py:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["empty"]["rows"], json!({}), "{v}");
}
