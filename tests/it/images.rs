//! End to end through the daemon and the real stable-diffusion.cpp worker, on random-weight
//! models written from the tensor manifests (crates/vramd-gguf/testdata/sd-tiny): the
//! Z-Image-style model (DiT + Qwen3-style encoder + tiny autoencoder) for the fast paths, and
//! SD1.x with its full VAE for `gpu` / `tiled` / `cpu` VAE placement. Random weights make
//! noise, so these tests check PNG structure, sizes, determinism, progress and memory, not
//! pictures. Like `llm.rs`, they skip when the worker is not built unless
//! `VRAMD_REQUIRE_WORKERS=1`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vramd_gguf::manifest::{write_from_manifest, ManifestOptions};

use crate::util::{Daemon, Response, BASE_CONFIG, VRAMD};

fn sd_worker_dir() -> Option<PathBuf> {
    let dir = Path::new(VRAMD).parent().unwrap().to_owned();
    if dir.join("vramd-sd-worker").is_file() && dir.join("vramd-llm-worker").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("VRAMD_REQUIRE_WORKERS").is_none(),
        "the workers are not built next to {VRAMD}: run `cargo build --workspace`"
    );
    eprintln!("skipped: the workers are not built (cargo build --workspace)");
    None
}

fn manifest(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/vramd-gguf/testdata/sd-tiny")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn write(dir: &Path, file: &str, manifests: &[&str]) -> PathBuf {
    let path = dir.join(file);
    let json = if manifests.len() == 1 {
        manifest(manifests[0])
    } else {
        // Several manifests into one checkpoint: merge their tensor tables.
        let mut merged = serde_json::Map::new();
        for m in manifests {
            let v: Value = serde_json::from_str(&manifest(m)).unwrap();
            merged.extend(v.as_object().unwrap().clone());
        }
        Value::Object(merged).to_string()
    };
    write_from_manifest(&path, &json, &ManifestOptions::default()).unwrap();
    path
}

pub struct Images {
    pub d: Daemon,
    _models: tempfile::TempDir,
}

/// A daemon with `zimage` (components), `sd1` (one checkpoint with its full VAE), a tiny
/// `chat` LLM, and optionally a `broken` image model.
fn start(budget: Option<u64>) -> Option<Images> {
    let workers = sd_worker_dir()?;
    let dir = tempfile::tempdir().unwrap();
    let dit = write(dir.path(), "zi_dit.gguf", &["zi_dit.json"]);
    let llm = write(dir.path(), "zi_llm.gguf", &["zi_llm.json"]);
    let tae = write(dir.path(), "zi_tae.gguf", &["zi_tae.json"]);
    let sd1 = write(dir.path(), "sd1.gguf", &["sd1_full.json", "sd1_vae.json"]);
    let chat = dir.path().join("chat.gguf");
    vramd_gguf::llama::write_tiny_llama(&chat, &Default::default()).unwrap();
    let broken = dir.path().join("broken.gguf");
    let bytes = std::fs::read(&dit).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 3]).unwrap();
    let config = format!(
        "{}\
         [[models]]\nname = \"zimage\"\nkind = \"image\"\ndiffusion_model = \"{}\"\nllm = \"{}\"\ntaesd = \"{}\"\nsize_multiple = 16\n\
         [[models]]\nname = \"sd1\"\nkind = \"image\"\npath = \"{}\"\n\
         [[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 256\n\
         [[models]]\nname = \"broken\"\nkind = \"image\"\ndiffusion_model = \"{}\"\nllm = \"{}\"\ntaesd = \"{}\"\n",
        BASE_CONFIG
            .replace("[daemon]\n", &format!("[daemon]\nworker_dir = \"{}\"\nworker_start_timeout = \"60s\"\n", workers.display()))
            .replace("budget = \"8GiB\"\n", &budget.map_or("budget = \"8GiB\"\n".into(), |b| format!("budget = {b}\nreserve = 0\n"))),
        dit.display(),
        llm.display(),
        tae.display(),
        sd1.display(),
        chat.display(),
        broken.display(),
        llm.display(),
        tae.display(),
    );
    Some(Images {
        d: Daemon::start_with(&config, |c| {
            c.env("RUST_LOG", "info");
        }),
        _models: dir,
    })
}

fn ok(r: Response) -> Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Width, height and the text chunks of a PNG, checking its structure on the way.
fn png_info(b64: &str) -> (u32, u32, Vec<(String, String)>) {
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut at = 8;
    let (mut w, mut h, mut texts, mut chunks) = (0, 0, Vec::new(), Vec::new());
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = std::str::from_utf8(&png[at + 4..at + 8]).unwrap().to_owned();
        let data = &png[at + 8..at + 8 + len];
        match kind.as_str() {
            "IHDR" => {
                w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                h = u32::from_be_bytes(data[4..8].try_into().unwrap());
            }
            "tEXt" => {
                let nul = data.iter().position(|b| *b == 0).unwrap();
                texts.push((
                    String::from_utf8_lossy(&data[..nul]).into_owned(),
                    String::from_utf8_lossy(&data[nul + 1..]).into_owned(),
                ));
            }
            _ => {}
        }
        chunks.push(kind);
        at += 12 + len;
    }
    assert_eq!(chunks.first().map(String::as_str), Some("IHDR"));
    assert_eq!(chunks.last().map(String::as_str), Some("IEND"));
    assert!(chunks.iter().any(|c| c == "IDAT"));
    (w, h, texts)
}

fn openai(d: &Daemon, body: Value) -> Response {
    d.post_json("/v1/images/generations", &body.to_string())
}

#[test]
fn openai_and_a1111_return_pngs_of_the_requested_size_deterministically() {
    let Some(t) = start(None) else { return };
    let body = json!({"model": "zimage", "prompt": "a red cube", "size": "64x48", "steps": 2, "seed": 7});
    let a = ok(openai(&t.d, body.clone()));
    let b64 = a["data"][0]["b64_json"].as_str().unwrap();
    let (w, h, texts) = png_info(b64);
    assert_eq!((w, h), (64, 48));
    let params = &texts
        .iter()
        .find(|(k, _)| k == "parameters")
        .expect("parameters chunk")
        .1;
    assert!(
        params.starts_with("a red cube\nSteps: 2, Sampler: euler_a, CFG scale: 7, Seed: 7, Size: 64x48, Model: zimage"),
        "{params}"
    );
    assert_eq!(a["vramd"]["vae"], "gpu");
    assert!(a["vramd"]["load_ms"].is_u64());
    let again = ok(openai(&t.d, body));
    assert_eq!(
        again["data"][0]["b64_json"], a["data"][0]["b64_json"],
        "same seed, same image"
    );
    assert!(again["vramd"]["load_ms"].is_null(), "the model stayed loaded");

    let v = ok(t.d.post_json("/sdapi/v1/txt2img", &json!({"model": "zimage", "prompt": "a blue ball", "width": 32, "height": 32, "steps": 1, "seed": 3, "batch_size": 2}).to_string()));
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (i, img) in images.iter().enumerate() {
        let (w, h, texts) = png_info(img.as_str().unwrap());
        assert_eq!((w, h), (32, 32));
        assert!(texts[0].1.contains(&format!("Seed: {}", 3 + i)), "{texts:?}");
    }
    assert_ne!(images[0], images[1], "consecutive seeds differ");
    let m = t.d.model_status("zimage");
    assert!(m["bytes"]["weights"].as_u64().unwrap() > 1_000_000, "{m}");
}

#[test]
fn progress_is_reported_in_order_and_interrupt_stops_a_generation() {
    let Some(t) = start(None) else { return };
    let socket = t.d.socket.clone();
    let running = std::thread::spawn(move || {
        let body = json!({"model": "zimage", "prompt": "slow", "width": 64, "height": 64, "steps": 40, "seed": 1});
        crate::util::http(
            &socket,
            "POST",
            "/sdapi/v1/txt2img",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.iter().filter(|s| **s > 0).count() < 3 {
        let p = ok(t.d.get("/sdapi/v1/progress"));
        let step = p["state"]["sampling_step"].as_u64().unwrap();
        if step > 0 {
            assert_eq!(p["state"]["sampling_steps"], 40);
            assert!(p["progress"].as_f64().unwrap() > 0.0);
        }
        if seen.last() != Some(&step) {
            seen.push(step);
        }
        assert!(Instant::now() < deadline, "no progress: {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let nonzero: Vec<u64> = seen.iter().copied().filter(|s| *s > 0).collect();
    assert!(nonzero.windows(2).all(|w| w[0] < w[1]), "steps in order: {seen:?}");
    let pid = t.d.model_status("zimage")["pid"].as_u64().unwrap();
    assert_eq!(ok(t.d.post_json("/sdapi/v1/interrupt", ""))["interrupted"], true);
    let r = running.join().unwrap();
    assert_eq!(r.error(409)["code"], "interrupted");
    let v = ok(openai(
        &t.d,
        json!({"model": "zimage", "prompt": "next", "size": "32x32", "steps": 1}),
    ));
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_ne!(
        t.d.model_status("zimage")["pid"].as_u64().unwrap(),
        pid,
        "a fresh worker"
    );
}

#[test]
fn tiled_and_cpu_vae_make_images_and_say_so() {
    let Some(t) = start(None) else { return };
    for vae in ["gpu", "tiled", "cpu"] {
        let v = ok(openai(
            &t.d,
            json!({"model": "sd1", "prompt": "x", "size": "64x64", "steps": 1, "seed": 2, "vae": vae}),
        ));
        let (w, h, _) = png_info(v["data"][0]["b64_json"].as_str().unwrap());
        assert_eq!((w, h), (64, 64), "{vae}");
        assert_eq!(v["vramd"]["vae"], vae, "{}", v["vramd"]);
        assert!(v["vramd"]["vae_switch_ms"].is_u64());
    }
    // The worker measured the phases; the arbiter learned from them.
    let m = t.d.model_status("sd1");
    assert!(m["bytes"]["weights"].as_u64().unwrap() > 10_000_000, "{m}");
    let e = ok(t.d.get("/v1/estimate?model=sd1&width=64&height=64"));
    assert_eq!(e["calibrated"], true, "{e}");
}

#[test]
fn a_corrupt_image_model_fails_with_its_reason_and_the_rest_keeps_working() {
    let Some(t) = start(None) else { return };
    let mut last = None;
    for _ in 0..3 {
        let r = openai(
            &t.d,
            json!({"model": "broken", "prompt": "x", "size": "32x32", "steps": 1}),
        );
        assert!(matches!(r.status, 502 | 503), "{}", String::from_utf8_lossy(&r.body));
        last = Some(r);
        if t.d.model_status("broken")["state"] == "failed" {
            break;
        }
    }
    let m = t.d.model_status("broken");
    assert_eq!(
        m["state"],
        "failed",
        "{m} {:?}",
        last.map(|r| String::from_utf8_lossy(&r.body).into_owned())
    );
    assert!(!m["error"].as_str().unwrap().is_empty());
    let chat = t.d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
    );
    ok(chat);
    ok(openai(
        &t.d,
        json!({"model": "zimage", "prompt": "x", "size": "32x32", "steps": 1}),
    ));
}

/// The arbiter with real workers: a chat model loaded, then an image that needs more than is
/// free. The budget is set, from the estimates, so that only a soft unload of the chat model
/// makes room.
#[test]
fn a_real_chat_then_image_goes_down_the_ladder_and_both_succeed() {
    let Some(probe) = start(None) else { return };
    let chat_est = ok(probe.d.get("/v1/estimate?model=chat"));
    let img_est = ok(probe.d.get("/v1/estimate?model=zimage&width=64&height=64"));
    drop(probe);
    let chat_total = chat_est["total"].as_u64().unwrap();
    let chat_kv = chat_est["parts"]["context"].as_u64().unwrap() + chat_est["parts"]["compute"].as_u64().unwrap();
    let img_total = img_est["total"].as_u64().unwrap();
    let budget = chat_total + img_total - chat_kv / 2;
    let Some(t) = start(Some(budget)) else { return };
    ok(t.d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
    ));
    let v = ok(openai(
        &t.d,
        json!({"model": "zimage", "prompt": "x", "size": "64x64", "steps": 1}),
    ));
    let actions: Vec<&str> = v["vramd"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions.first(), Some(&"soft_unload"), "{}", v["vramd"]);
    assert_eq!(t.d.model_status("chat")["state"], "soft_unloaded");
    ok(t.d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "again", "max_tokens": 2}).to_string(),
    ));
}

/// A request larger than the whole budget, with real workers: 507, nothing evicted.
#[test]
fn a_real_image_larger_than_the_budget_is_507() {
    let Some(probe) = start(None) else { return };
    let chat_total = ok(probe.d.get("/v1/estimate?model=chat"))["total"].as_u64().unwrap();
    let img_total = ok(probe.d.get("/v1/estimate?model=zimage&width=64&height=64"))["total"]
        .as_u64()
        .unwrap();
    drop(probe);
    let Some(t) = start(Some(chat_total.max(img_total / 2) + 1)) else {
        return;
    };
    ok(t.d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
    ));
    let e = openai(
        &t.d,
        json!({"model": "zimage", "prompt": "x", "size": "64x64", "steps": 1}),
    )
    .error(507);
    assert_eq!(e["code"], "exceeds_memory_budget");
    assert_eq!(t.d.model_status("chat")["state"], "loaded", "nothing evicted for it");
    assert_eq!(t.d.model_status("zimage")["state"], "unloaded");
}

/// 50 mixed requests from 8 clients on real workers in a budget that cannot hold both
/// models whole: every request is answered (a result, or 503 with Retry-After), and what
/// the registry says is held never exceeds the budget.
#[test]
fn fifty_real_mixed_requests_from_eight_clients() {
    let Some(probe) = start(None) else { return };
    let chat = ok(probe.d.get("/v1/estimate?model=chat"));
    let img_total = ok(probe.d.get("/v1/estimate?model=zimage&width=32&height=32"))["total"]
        .as_u64()
        .unwrap();
    drop(probe);
    let chat_kv = chat["parts"]["context"].as_u64().unwrap() + chat["parts"]["compute"].as_u64().unwrap();
    let budget = chat["total"].as_u64().unwrap() + img_total - chat_kv / 2;
    let Some(t) = start(Some(budget)) else { return };
    let socket = t.d.socket.clone();
    let watcher = crate::util::UsedWatcher::start(&socket);
    let clients: Vec<_> = (0..8u32)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for i in 0..7u32 {
                    if c * 7 + i >= 50 {
                        break;
                    }
                    let (path, body) = if (c + i) % 3 == 0 {
                        (
                            "/v1/images/generations",
                            json!({"model": "zimage", "prompt": "x", "size": "32x32", "steps": 1, "seed": i}),
                        )
                    } else {
                        (
                            "/v1/completions",
                            json!({"model": "chat", "prompt": "x", "max_tokens": 3, "temperature": 0}),
                        )
                    };
                    let r = crate::util::http(
                        &socket,
                        "POST",
                        path,
                        &[("Content-Type", "application/json")],
                        body.to_string().as_bytes(),
                    );
                    match r.status {
                        200 => {}
                        503 => assert!(r.header("retry-after").is_some(), "a 503 says when to retry"),
                        s => panic!("{s}: {}", String::from_utf8_lossy(&r.body)),
                    }
                    statuses.push(r.status);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    let max_used = watcher.stop();
    assert_eq!(statuses.len(), 50);
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 25, "{statuses:?}");
    assert!(max_used <= budget, "held {max_used} bytes with a budget of {budget}");
}
