//! The arbiter through the real daemon on the budget backend, with fake workers whose models
//! are sparse files of a chosen size (the fake reports a model's file size as its weights;
//! vramd estimates an unreadable model by its file size), so that GiB-sized scenarios run in
//! milliseconds. The real workers' numbers are checked in `llm.rs` and `images.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::ok;
use crate::util::{events, http, kinds, Daemon, Response};

use crate::util::GIB;

struct Scenario {
    d: Daemon,
    _dirs: Vec<tempfile::TempDir>,
}

/// A daemon with a 3 GiB budget, `chat` (1.5 GiB weights + 0.5 GiB KV) and `sd` (`sd_size`).
fn scenario(sd_size: u64, extra_env: &[(&str, &Path)]) -> Scenario {
    let (config, dirs) = crate::util::fake_two_models(sd_size, "ok delay_ms=1", "");
    let env: Vec<(String, std::path::PathBuf)> = extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_path_buf()))
        .collect();
    let d = Daemon::start_with(&config, move |c| {
        for (k, v) in &env {
            c.env(k, v);
        }
    });
    Scenario { d, _dirs: dirs }
}

fn chat(d: &Daemon) -> Response {
    d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
    )
}

fn image(d: &Daemon, size: &str) -> Response {
    d.post_json(
        "/v1/images/generations",
        &json!({"model": "sd", "prompt": "a cat", "size": size, "steps": 2, "seed": 1}).to_string(),
    )
}

fn used(d: &Daemon) -> (u64, u64) {
    let m = d.get("/v1/status").json()["memory"].clone();
    (m["used_bytes"].as_u64().unwrap(), m["total_bytes"].as_u64().unwrap())
}

#[test]
fn chat_then_an_image_that_does_not_fit_soft_unloads_and_tiles_the_vae() {
    let s = scenario(GIB, &[]);
    ok(chat(&s.d));
    assert_eq!(used(&s.d), (2 * GIB, 3 * GIB));

    let v = ok(image(&s.d, "512x512"));
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert!(v["data"][0]["b64_json"].as_str().unwrap().starts_with("iVBOR"));
    let vramd = &v["vramd"];
    assert_eq!(vramd["vae"], "tiled", "{vramd}");
    let actions: Vec<&str> = vramd["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["soft_unload", "vae_tiled"], "{vramd}");
    assert!(vramd["actions"][0]["reason"].as_str().unwrap().contains("chat is idle"));

    let kinds = kinds(&events(&s.d));
    assert_eq!(
        kinds,
        [
            "model_loading chat",
            "model_loaded chat",
            "memory_pressure sd",
            "model_soft_unloaded chat",
            "vae_tiled sd",
            "model_loading sd",
            "model_loaded sd"
        ]
    );
    let chat_status = s.d.model_status("chat");
    assert_eq!(chat_status["state"], "soft_unloaded");
    assert_eq!(chat_status["bytes"]["total"], GIB + GIB / 2, "weights kept");
    assert!(used(&s.d).0 <= 3 * GIB);
    // Both stay loaded, and chat gets its KV cache back now that it fits again.
    ok(chat(&s.d));
    assert_eq!(s.d.model_status("chat")["state"], "loaded");
    assert_eq!(s.d.model_status("sd")["state"], "loaded");
    assert_eq!(used(&s.d), (3 * GIB, 3 * GIB));
}

/// After the image that soft-unloaded chat, chat's context comes back by itself once the
/// arbiter has been quiet for `restore_after`; while the image ran, its working memory was
/// reserved, so what the registry counts never left room for an out-of-memory.
#[test]
fn a_soft_unloaded_context_is_restored_in_the_background_after_the_image() {
    let (config, _dirs) = crate::util::fake_two_models(GIB, "ok delay_ms=400", "");
    let d = Daemon::start(&config.replace("restore_after = \"0\"", "restore_after = \"300ms\""));
    ok(chat(&d));
    let socket = d.socket.clone();
    let image = std::thread::spawn(move || {
        let body = json!({"model": "sd", "prompt": "a cat", "size": "512x512", "steps": 2}).to_string();
        http(
            &socket,
            "POST",
            "/v1/images/generations",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let busy = loop {
        let sd = d.model_status("sd");
        if sd["state"] == "busy" {
            break sd;
        }
        assert!(Instant::now() < deadline, "sd never got busy: {sd}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Sampling (1 GiB / 4 + 32 KiB per latent pixel) reserved on top of the weights.
    let reserved = busy["reserved_bytes"].as_u64().unwrap();
    assert_eq!(reserved, GIB / 4 + (32 << 10) * 64 * 64, "{busy}");
    let (used_now, total) = used(&d);
    assert!(
        used_now >= GIB + GIB / 2 + GIB + reserved && used_now <= total,
        "{used_now} of {total}"
    );
    assert_eq!(d.model_status("chat")["state"], "soft_unloaded");

    let v = ok(image.join().unwrap());
    assert_eq!(v["vramd"]["vae"], "tiled", "{}", v["vramd"]);
    assert_eq!(
        d.model_status("sd")["reserved_bytes"],
        0,
        "given back when the image is done"
    );
    // No chat request: the context comes back by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.model_status("chat")["state"] != "loaded" {
        assert!(
            Instant::now() < deadline,
            "chat was not restored: {}",
            d.model_status("chat")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = events(&d);
    let k = kinds(&all);
    assert_eq!(
        &k[k.len() - 2..],
        ["model_loaded sd", "model_restored chat"],
        "restored after the image: {k:?}"
    );
    let restored = all.last().unwrap();
    assert_eq!(restored["bytes"], GIB / 2);
    assert!(
        restored["reason"].as_str().unwrap().contains("free again"),
        "{restored}"
    );
    let chat_status = d.model_status("chat");
    assert_eq!(chat_status["bytes"]["total"], 2 * GIB, "{chat_status}");
    assert!(used(&d).0 <= 3 * GIB);
    let log = std::fs::read_to_string(_dirs[1].path().join("chat.bin.log")).unwrap();
    assert!(log.lines().any(|l| l == "restore"), "{log}");
    // The next chat finds its context there: nothing is evicted or restored for it.
    ok(chat(&d));
    assert_eq!(kinds(&events(&d)).len(), k.len(), "no new events");
    // A context a person dropped stays dropped, however free memory is.
    let r = d.post_json("/v1/models/chat/unload", &json!({"mode": "soft"}).to_string());
    assert_eq!(ok(r)["state"], "soft_unloaded");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        d.model_status("chat")["state"],
        "soft_unloaded",
        "restored against a person's unload"
    );
}

#[test]
fn an_llm_idle_for_ten_minutes_is_unloaded_instead_of_tiling() {
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "0").unwrap();
    let s = scenario(GIB, &[("VRAMD_TEST_CLOCK_OFFSET_FILE", clock.path())]);
    ok(chat(&s.d));
    std::fs::write(clock.path(), "601").unwrap(); // ten minutes and a second later
    let v = ok(image(&s.d, "512x512"));
    let vramd = &v["vramd"];
    assert_eq!(vramd["vae"], "gpu", "with the idle LLM gone the VAE fits: {vramd}");
    let actions: Vec<&str> = vramd["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    // The hard unload alone makes the room: a soft unload before it would buy nothing.
    assert_eq!(actions, ["hard_unload"]);
    assert!(
        vramd["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("an idle LLM goes first"),
        "{vramd}"
    );
    assert_eq!(s.d.model_status("chat")["state"], "unloaded");
    let unloaded = events(&s.d)
        .into_iter()
        .find(|e| e["type"] == "model_unloaded")
        .unwrap();
    assert_eq!(unloaded["freed_bytes"], 2 * GIB, "weights and KV cache in one step");
    assert!(
        !kinds(&events(&s.d)).contains(&"model_soft_unloaded chat".to_owned()),
        "no step that buys nothing"
    );
}

#[test]
fn a_request_larger_than_the_budget_is_507_and_evicts_nothing() {
    let s = scenario(4 * GIB, &[]);
    ok(chat(&s.d));
    let r = image(&s.d, "512x512");
    let e = r.error(507);
    assert_eq!(e["code"], "exceeds_memory_budget");
    assert!(
        e["message"].as_str().unwrap().contains("whole budget is 3.0 GiB"),
        "{e}"
    );
    assert_eq!(s.d.model_status("chat")["state"], "loaded", "nothing evicted");
    assert!(kinds(&events(&s.d)).contains(&"request_rejected sd".to_owned()));
}

#[test]
fn pinned_models_stay_and_the_request_gets_503_with_retry_after() {
    let s = scenario(GIB, &[]);
    ok(chat(&s.d));
    assert_eq!(
        ok(s.d.post_json("/v1/models/chat/pin", "")),
        json!({"model": "chat", "pinned": true})
    );
    let r = image(&s.d, "512x512");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.error(503)["code"], "insufficient_memory");
    assert_eq!(s.d.model_status("chat")["state"], "loaded");
    assert_eq!(s.d.model_status("chat")["pinned"], true);
    ok(s.d.post_json("/v1/models/chat/unpin", ""));
    assert_eq!(ok(image(&s.d, "512x512"))["vramd"]["vae"], "tiled");
}

#[test]
fn fifty_mixed_requests_from_eight_clients_are_all_answered_within_budget() {
    let s = scenario(GIB, &[]);
    // The fake chat model is not a GGUF, so vramd cannot estimate its KV cache before the
    // first load (it plans with the file size): one chat first, so that the registry knows
    // what chat really takes, as it does for a real model from its header.
    ok(chat(&s.d));
    crate::util::fifty_from_eight_clients(&s.d.socket, 3 * GIB, |c, i| {
        if (c + i) % 3 == 0 {
            let size = if i % 2 == 0 { "512x512" } else { "256x256" };
            (
                "/v1/images/generations",
                json!({"model": "sd", "prompt": "x", "size": size, "steps": 2}),
            )
        } else {
            (
                "/v1/completions",
                json!({"model": "chat", "prompt": "x", "max_tokens": 2}),
            )
        }
    });
}

#[test]
fn a1111_txt2img_sd_models_progress_and_interrupt() {
    let s = scenario(GIB, &[]);
    let models = ok(s.d.get("/sdapi/v1/sd-models"));
    assert_eq!(models[0]["model_name"], "sd");
    let v = ok(s.d.post_json("/sdapi/v1/txt2img", &json!({"prompt": "a cat", "width": 256, "height": 256, "steps": 2, "seed": 5, "batch_size": 2, "sampler_name": "Euler a"}).to_string()));
    assert_eq!(v["images"].as_array().unwrap().len(), 2);
    let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([5, 6]));
    assert!(info["infotexts"][1]
        .as_str()
        .unwrap()
        .contains("Seed: 6, Size: 256x256, Model: sd"));
    assert_eq!(v["parameters"]["sampler_name"], "euler_a");
    let idle = ok(s.d.get("/sdapi/v1/progress"));
    assert_eq!(idle["progress"], 0.0);

    // A slow generation (the fake takes `delay_ms` per step: 1 ms here, so ask for many).
    let socket = s.d.socket.clone();
    let slow = std::thread::spawn(move || {
        let body = json!({"prompt": "slow", "width": 64, "height": 64, "steps": 150, "n_iter": 8});
        http(
            &socket,
            "POST",
            "/sdapi/v1/txt2img",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = ok(s.d.get("/sdapi/v1/progress"));
        if p["progress"].as_f64().unwrap() > 0.0 {
            assert_eq!(p["state"]["sampling_steps"], 150);
            break;
        }
        assert!(Instant::now() < deadline, "no progress reported");
        std::thread::sleep(Duration::from_millis(5));
    }
    let i = ok(s.d.post_json("/sdapi/v1/interrupt", ""));
    assert_eq!(i["interrupted"], true);
    let r = slow.join().unwrap();
    assert_eq!(r.error(409)["code"], "interrupted");
    // The next one works, on a new worker.
    ok(s.d.post_json(
        "/sdapi/v1/txt2img",
        &json!({"prompt": "again", "width": 64, "height": 64, "steps": 1}).to_string(),
    ));
}

#[test]
fn bad_image_requests_name_the_field() {
    let s = scenario(GIB, &[]);
    let post = |path: &str, body: Value| s.d.post_json(path, &body.to_string());
    let cases = [
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "size": "500x512"}),
            "size",
        ),
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "size": "4096x512"}),
            "size",
        ),
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "size": "big"}),
            "size",
        ),
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "n": 9}),
            "n",
        ),
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "steps": 0}),
            "steps",
        ),
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "sampler": "magic"}),
            "sampler",
        ),
        (
            "/v1/images/generations",
            json!({"model": "sd", "prompt": "x", "response_format": "jpeg_url"}),
            "response_format",
        ),
        (
            "/v1/images/generations",
            json!({"model": "chat", "prompt": "x"}),
            "model",
        ),
        ("/sdapi/v1/txt2img", json!({"prompt": "x", "width": 100}), "width"),
        ("/sdapi/v1/txt2img", json!({"prompt": "x", "steps": 500}), "steps"),
        (
            "/sdapi/v1/txt2img",
            json!({"prompt": "x", "sampler_name": "nope"}),
            "sampler_name",
        ),
    ];
    for (path, body, field) in cases {
        let e = post(path, body.clone()).error(400);
        assert_eq!(e["param"], field, "{body} → {e}");
    }
    let e = post("/v1/images/generations", json!({"model": "nope", "prompt": "x"})).error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(
        s.d.model_status("sd")["state"],
        "unloaded",
        "nothing loaded for bad requests"
    );
}

#[test]
fn estimates_from_the_gguf_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    vramd_gguf::llama::write_tiny_llama(&path, &Default::default()).unwrap();
    let config = format!(
        "{}[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 256\n",
        crate::util::BASE_CONFIG,
        path.display()
    );
    let d = Daemon::start(&config);
    let e = ok(d.get("/v1/estimate?model=chat"));
    assert_eq!(e["context_length"], 256);
    // Two slots by default (`parallel`), each with its own KV.
    assert_eq!(e["parallel"], 2);
    assert_eq!(e["parts"]["context"], 2 * (2 * 2 * 256 * 64 * 2));
    assert_eq!(e["calibrated"], false);
    let e = ok(d.get("/v1/estimate?model=chat&context=512"));
    assert_eq!(e["parts"]["context"], 2 * (2 * 2 * 512 * 64 * 2));
    let total = e["parts"]["weights"].as_u64().unwrap()
        + e["parts"]["context"].as_u64().unwrap()
        + e["parts"]["compute"].as_u64().unwrap();
    assert_eq!(e["total"], total);
    d.get("/v1/estimate?model=nope").error(404);
    d.get("/v1/estimate").error(400);
    // The page-cache keeper reports the file's residency.
    let status = d.model_status("chat");
    assert_eq!(
        status["page_cache"]["file_bytes"],
        std::fs::metadata(&path).unwrap().len()
    );
}
