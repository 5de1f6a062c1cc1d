//! The HTTP API on a temporary socket: the routes of the foundation and every error case.

use crate::util::{http, Daemon, BASE_CONFIG};

fn with_models() -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let chat = dir.path().join("chat.gguf");
    std::fs::write(&chat, b"GGUF").unwrap();
    let config = format!(
        "{BASE_CONFIG}reserve = \"1GiB\"\n\
         [[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\n\
         [[models]]\nname = \"sd\"\nkind = \"image\"\npath = \"/nonexistent/sd.gguf\"\n",
        chat.display()
    );
    let d = Daemon::start(&config);
    std::mem::forget(dir); // the model file must outlive the daemon
    d
}

#[test]
fn health() {
    let d = Daemon::start(BASE_CONFIG);
    let r = d.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));
    assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
}

#[test]
fn status_lists_memory_and_every_model() {
    let d = with_models();
    let s = d.get("/v1/status").json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    let mem = &s["memory"];
    assert_eq!(mem["backend"], "budget");
    assert_eq!(mem["total_bytes"], 8u64 << 30);
    assert_eq!(mem["reserve_bytes"], 1u64 << 30);
    assert_eq!(mem["used_bytes"], 0);
    assert_eq!(mem["free_bytes"], 7u64 << 30);
    let models = s["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0]["name"], "chat");
    assert_eq!(models[0]["kind"], "llm");
    assert_eq!(models[0]["state"], "unloaded");
    assert_eq!(models[0]["bytes"]["total"], 0);
    assert_eq!(models[0]["last_used"], serde_json::Value::Null);
    // A model whose file is missing says so instead of failing on first use.
    assert_eq!(models[1]["kind"], "image");
    assert_eq!(models[1]["state"], "failed");
    assert!(models[1]["error"].as_str().unwrap().contains("/nonexistent/sd.gguf"));
}

#[test]
fn models_in_openai_list_format() {
    let d = with_models();
    let m = d.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "sd"]);
    assert!(m["data"].as_array().unwrap().iter().all(|x| x["object"] == "model"));
}

#[test]
fn unknown_route_is_404_json() {
    let d = Daemon::start(BASE_CONFIG);
    let e = d.get("/v2/nothing").error(404);
    assert_eq!(e["code"], "unknown_route");
    assert!(e["message"].as_str().unwrap().contains("/v2/nothing"));
}

#[test]
fn wrong_method_is_405_json_with_allow() {
    let d = Daemon::start(BASE_CONFIG);
    let r = http(&d.socket, "DELETE", "/v1/status", &[], b"");
    let e = r.error(405);
    assert_eq!(e["code"], "method_not_allowed");
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")), "{:?}", r.headers);
}

#[test]
fn bad_json_is_400() {
    let d = with_models();
    let e = d.post_json("/v1/models/chat/unload", "{\"mode\": ").error(400);
    assert_eq!(e["code"], "invalid_json");
    let e = d
        .post_json("/v1/models/chat/unload", "{\"mode\": \"sideways\"}")
        .error(400);
    assert!(e["message"].as_str().unwrap().contains("sideways"), "{e}");
    let r = http(&d.socket, "POST", "/v1/models/chat/unload", &[], b"{\"mode\":\"soft\"}");
    assert!(r.error(400)["message"].as_str().unwrap().contains("Content-Type"));
}

#[test]
fn unknown_model_is_404() {
    let d = with_models();
    let e = d.post_json("/v1/models/nope/unload", "{\"mode\":\"soft\"}").error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
}

/// Requests name models, never files: a model's own path, or a path to any file, is an
/// unknown model on every endpoint that takes one.
#[test]
fn a_file_path_is_never_a_model() {
    let d = with_models();
    for name in ["/etc/passwd", "../chat.gguf", "/nonexistent/sd.gguf"] {
        let chat = serde_json::json!({"model": name, "messages": [{"role": "user", "content": "x"}]});
        let e = d.post_json("/v1/chat/completions", &chat.to_string()).error(404);
        assert_eq!(e["code"], "model_not_found", "{name}: {e}");
        let image = serde_json::json!({"model": name, "prompt": "x"});
        let e = d.post_json("/v1/images/generations", &image.to_string()).error(404);
        assert_eq!(e["code"], "model_not_found", "{name}: {e}");
        let embed = serde_json::json!({"model": name, "input": "x"});
        let e = d.post_json("/v1/embeddings", &embed.to_string()).error(404);
        assert_eq!(e["code"], "model_not_found", "{name}: {e}");
    }
}

#[test]
fn unloading_an_unloaded_model_frees_nothing() {
    let d = with_models();
    let r = d.post_json("/v1/models/chat/unload", "{\"mode\":\"hard\"}");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["model"], "chat");
    assert_eq!(v["mode"], "hard");
    assert_eq!(v["state"], "unloaded");
    assert_eq!(v["freed_bytes"], 0);
}

#[test]
fn body_over_max_body_is_413() {
    let d = Daemon::start(
        &format!("{BASE_CONFIG}[[models]]\nname = \"m\"\nkind = \"llm\"\npath = \"/x\"\n")
            .replace("[daemon]\n", "[daemon]\nmax_body = \"1KiB\"\n"),
    );
    let big = format!("{{\"mode\":\"soft\",\"pad\":\"{}\"}}", "x".repeat(4096));
    let e = d.post_json("/v1/models/m/unload", &big).error(413);
    assert_eq!(e["code"], "payload_too_large");
    // Chunked bodies have no length up front and are cut off just the same.
    let r = http(
        &d.socket,
        "POST",
        "/v1/models/m/unload",
        &[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
        format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes(),
    );
    r.error(413);
}

#[test]
fn request_id_is_echoed() {
    let d = Daemon::start(BASE_CONFIG);
    let r = http(&d.socket, "GET", "/health", &[("X-Request-Id", "webui-42")], b"");
    assert_eq!(r.header("x-request-id"), Some("webui-42"));
    assert!(d.log().contains("webui-42"), "request_id not in the log:\n{}", d.log());
}
