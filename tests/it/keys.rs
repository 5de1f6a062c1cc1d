//! API keys at both doors, as the clients send them: Bearer (OpenAI, Ollama clients, Open
//! WebUI's OpenAI engine) and HTTP Basic with the key as password (A1111 clients:
//! SillyTavern's `auth: "user:key"`, Open WebUI's "AUTOMATIC1111 API auth"). Keys are made
//! and revoked with `vramctl keys`, and the daemon follows the file without a restart. Fake
//! workers (see `a1111::serve`).

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::a1111::{serve, Served};
use crate::util::{http, read_response, send_request, Response};

const VRAMCTL: &str = env!("CARGO_BIN_EXE_vramctl");

fn keys(file: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(VRAMCTL)
        .arg("keys")
        .args(args)
        .arg("--file")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn create(file: &Path, name: &str, role: &str) -> String {
    let (ok, key, err) = keys(file, &["create", name, "--role", role]);
    assert!(ok, "{err}");
    key
}

/// One TCP request with these headers.
fn tcp(s: &Served, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> Response {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    send_request(&mut c, method, path, &all, body.as_bytes());
    read_response(&mut c)
}

fn basic(user_pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass))
}

#[test]
fn tcp_needs_a_key_once_there_is_one_and_roles_decide_state_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let s = serve(&format!("keys_file = \"{}\"\n", file.display()));
    // No keys yet: TCP keeps today's rights, and the start said so.
    assert_eq!(tcp(&s, "GET", "/v1/models", &[], None).status, 200);
    assert!(s.d.log().contains("no API keys in"), "{}", s.d.log());

    let webui = create(&file, "open-webui", "generate");
    let admin = create(&file, "admin", "control");
    assert!(webui.starts_with("vramd-") && admin.starts_with("vramd-"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains(&webui) && !text.contains(&admin),
        "the file holds digests only"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o640);

    // Without a key, or with a wrong one: 401, a JSON error, and the way to authenticate.
    for headers in [vec![], vec![("Authorization", "Bearer vramd-not-a-key")]] {
        let r = tcp(&s, "GET", "/v1/models", &headers, None);
        let e = r.error(401);
        assert_eq!(e["code"], "invalid_api_key");
        assert!(r.header("www-authenticate").unwrap().contains("Basic"), "{r:?}");
    }
    // Ollama's routes get Ollama's error shape.
    let r = tcp(&s, "GET", "/api/tags", &[], None);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("API key"));
    // `/health` tells nothing and stays open for monitors.
    assert_eq!(tcp(&s, "GET", "/health", &[], None).status, 200);

    // Bearer (OpenAI clients) and Basic with the key as password (SillyTavern: "user:key").
    let bearer = format!("Bearer {webui}");
    assert_eq!(
        tcp(&s, "GET", "/v1/models", &[("Authorization", &bearer)], None).status,
        200
    );
    let st = basic(&format!("sillytavern:{webui}"));
    let body = json!({"prompt": "a cat", "width": 64, "height": 64, "steps": 1});
    let r = tcp(&s, "POST", "/sdapi/v1/txt2img", &[("Authorization", &st)], Some(&body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // A generate key chooses the A1111 checkpoint, but may not load models.
    let r = tcp(
        &s,
        "POST",
        "/sdapi/v1/options",
        &[("Authorization", &st)],
        Some(&json!({"sd_model_checkpoint": "sd2"})),
    );
    assert_eq!(r.status, 200);
    let r = tcp(
        &s,
        "POST",
        "/v1/models/chat/load",
        &[("Authorization", &bearer)],
        Some(&json!({})),
    );
    assert!(r.error(403)["message"].as_str().unwrap().contains("control"));
    // A control key may, over TCP.
    let control = format!("Bearer {admin}");
    let r = tcp(
        &s,
        "POST",
        "/v1/models/chat/load",
        &[("Authorization", &control)],
        Some(&json!({})),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let me = tcp(&s, "GET", "/v1/me", &[("Authorization", &control)], None).json();
    assert_eq!(me["may_control"], true);

    // The Unix socket needs no key (its group decides who reaches it); a wrong key there is
    // no error, and a control key grants its role there too.
    let socket = |headers: &[(&str, &str)]| http(&s.d.socket, "GET", "/v1/me", headers, b"");
    assert_eq!(socket(&[]).status, 200);
    assert_eq!(socket(&[("Authorization", "Bearer sk-whatever")]).status, 200);
    assert_eq!(socket(&[("Authorization", &control)]).json()["may_control"], true);

    // Revoked: refused from the next request on, without a restart.
    let (ok, list, _) = keys(&file, &["list"]);
    assert!(ok && list.contains("open-webui") && list.contains("control"), "{list}");
    let (ok, _, err) = keys(&file, &["revoke", "open-webui"]);
    assert!(ok, "{err}");
    tcp(&s, "GET", "/v1/models", &[("Authorization", &bearer)], None).error(401);
    assert_eq!(
        tcp(&s, "GET", "/v1/models", &[("Authorization", &control)], None).status,
        200
    );

    // Keys are never logged.
    let log = s.d.log();
    assert!(!log.contains(&webui) && !log.contains(&admin), "a key in the log");
}

#[test]
fn a_broken_keys_file_refuses_tcp_and_vramctl_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(&file, "[[key]]\nname = \"x\"\nrole = \"root\"\n").unwrap();
    let s = serve(&format!("keys_file = \"{}\"\n", file.display()));
    let r = tcp(&s, "GET", "/v1/models", &[], None);
    assert!(r.error(401)["message"].as_str().unwrap().contains("keys file"));
    assert_eq!(
        http(&s.d.socket, "GET", "/v1/models", &[], b"").status,
        200,
        "the socket still works"
    );
    assert!(s.d.log().contains("keys.toml"), "{}", s.d.log());
    let (ok, _, err) = keys(&file, &["create", "a"]);
    assert!(!ok && err.contains("keys.toml"), "{err}");
    // Fixed: TCP is open again without a key (none is listed), and keys work once made.
    std::fs::remove_file(&file).unwrap();
    let (ok, _, err) = keys(&file, &["create", "../x"]);
    assert!(!ok && err.contains("key name"), "{err}");
    assert_eq!(tcp(&s, "GET", "/v1/models", &[], None).status, 200);
    let (ok, out, _) = keys(&file, &["create", "ollama", "--json"]);
    assert!(ok);
    let key = serde_json::from_str::<Value>(&out).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {key}");
    assert_eq!(
        tcp(&s, "GET", "/api/tags", &[("Authorization", &auth)], None).status,
        200
    );
    tcp(&s, "GET", "/v1/models", &[], None).error(401);
}
