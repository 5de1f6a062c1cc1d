//! The arbiter's scenarios with the real workers and the tiny models (`images.rs` makes
//! them): the exact ladder for a chat model and an image that does not fit, with its events in
//! order and the background restore after it; the ten-minute rule with the clock injected; a
//! request larger than the budget; 50 mixed requests from 8 clients. Budgets come from what
//! a first daemon measures and estimates, so the scenarios hold whatever the models weigh.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::images::{ok, openai, start_with, Options};
use crate::util::{events, kinds, Daemon};

/// What the budget of a scenario is made from, read from a first daemon with room for all.
#[derive(Clone)]
struct Probe {
    /// What the chat model's worker reports for its weights, once loaded.
    chat_weights: u64,
    /// Its KV cache and compute buffers.
    chat_context: u64,
    /// The estimate for one image: peak with the VAE decoded whole on the device, and tiled.
    image_total: u64,
    image_tiled_total: u64,
    /// The estimator's calibration after one image of each kind, for the scenario daemons.
    calibration: String,
}

/// The image: `zimage` (its decoder is the tiny autoencoder, which stable-diffusion.cpp
/// tiles like a VAE) at 288×288, big enough that decoding in tiles needs less than decoding
/// whole (measured on the CPU: about 159 MB whole, 126 MB tiled, 5 MB sampling) and small
/// enough to take seconds. SD1's full VAE shows the same ladder but takes half a minute here.
const MODEL: &str = "zimage";
const SIZE: &str = "288x288";

/// Measures once per test process: chat loaded, then one image with the VAE decoded whole
/// and one in tiles, so that the estimates the scenarios plan with are calibrated (before
/// that, ggml's decoders on the CPU need a few times the CUDA-derived anchors).
fn probe() -> Option<Probe> {
    static PROBE: OnceLock<Option<Probe>> = OnceLock::new();
    PROBE.get_or_init(measure).clone()
}

fn measure() -> Option<Probe> {
    let p = start_with(Options::default())?;
    chat(&p.d);
    for vae in ["gpu", "tiled"] {
        let body = json!({"model": MODEL, "prompt": "x", "size": SIZE, "steps": 1, "seed": 3, "vae": vae});
        assert_eq!(ok(openai(&p.d, body))["vramd"]["vae"], vae);
    }
    // The arbiter saves what the tiled decode taught it once it has the request's release,
    // which may come a moment after the answer.
    let path = p.d.dir.path().join("state/calibration.json");
    let deadline = Instant::now() + Duration::from_secs(10);
    let calibration = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("vae_tiled") {
            break text;
        }
        assert!(Instant::now() < deadline, "no tiled decode calibrated: {text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let bytes = p.d.model_status("chat")["bytes"].clone();
    let e = ok(p.d.get(&format!("/v1/estimate?model={MODEL}&width=288&height=288")));
    assert_eq!(e["calibrated"], true, "{e}");
    let u = |v: &Value| v.as_u64().unwrap();
    let (weights, sampling) = (u(&e["parts"]["weights"]), u(&e["parts"]["sampling"]));
    let tiled = u(&e["parts"]["vae_decode"]["tiled"]);
    Some(Probe {
        chat_weights: u(&bytes["weights"]),
        chat_context: u(&bytes["context"]) + u(&bytes["compute"]),
        image_total: u(&e["total"]),
        image_tiled_total: weights + sampling.max(tiled),
        calibration,
    })
}

fn chat(d: &Daemon) -> Value {
    ok(d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2, "temperature": 0}).to_string(),
    ))
}

fn image(d: &Daemon) -> Value {
    ok(openai(
        d,
        json!({"model": MODEL, "prompt": "x", "size": SIZE, "steps": 1, "seed": 3}),
    ))
}

fn actions(v: &Value) -> Vec<String> {
    v["vramd"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap().to_owned())
        .collect()
}

/// A budget one byte short of chat's weights plus the whole image: after chat's soft unload
/// the image still does not fit with its VAE decoded whole, but does in tiles; and once chat
/// is gone entirely, it fits whole.
fn ladder_budget(p: &Probe) -> u64 {
    let budget = p.chat_weights + p.image_total - 1;
    assert!(p.chat_weights + p.chat_context + p.image_total > budget);
    assert!(p.chat_weights + p.image_tiled_total <= budget, "tiling must be enough");
    budget
}

/// A budget where the image needs both steps: with chat's context it does not fit even in
/// tiles, without it it fits only in tiles. (The planner takes no step that buys nothing, so
/// with more room tiling alone would be the plan.)
fn soft_and_tiled_budget(p: &Probe) -> u64 {
    let tiled = p.chat_weights + p.image_tiled_total;
    let budget = tiled + p.chat_context.min(p.image_total - p.image_tiled_total) - 1;
    assert!(tiled + p.chat_context > budget, "tiling alone must not be enough");
    assert!(tiled <= budget, "the soft unload and tiling must be enough");
    assert!(p.chat_weights + p.image_total > budget, "the whole decode must not fit");
    budget
}

/// Chat loaded, then an image that does not fit even in tiles: chat drops its KV cache (soft
/// unload) and the VAE is decoded in tiles rather than unloading chat; both requests succeed,
/// and once the image model gives its memory back and the arbiter is quiet, chat's context
/// comes back by itself.
#[test]
fn a_real_chat_then_an_image_soft_unloads_tiles_and_restores_afterwards() {
    let Some(p) = probe() else { return };
    let budget = soft_and_tiled_budget(&p);
    let Some(t) = start_with(Options {
        budget: Some(budget),
        policy: "restore_after = \"300ms\"\n",
        calibration: Some(p.calibration.clone()),
        ..Default::default()
    }) else {
        return;
    };
    chat(&t.d);
    let v = image(&t.d);
    assert_eq!(actions(&v), ["soft_unload", "vae_tiled"], "{}", v["vramd"]);
    assert_eq!(v["vramd"]["vae"], "tiled");
    assert!(v["data"][0]["b64_json"].as_str().unwrap().starts_with("iVBOR"));
    assert_eq!(t.d.model_status(MODEL)["reserved_bytes"], 0);
    // The image model still holds what its tiled decode took: chat's context fits again
    // only once it is gone.
    assert_eq!(t.d.model_status("chat")["state"], "soft_unloaded");
    ok(t.d.post_json(&format!("/v1/models/{MODEL}/unload"), r#"{"mode":"hard"}"#));

    let deadline = Instant::now() + Duration::from_secs(60);
    while t.d.model_status("chat")["state"] != "loaded" {
        assert!(Instant::now() < deadline, "not restored: {}", t.d.model_status("chat"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = events(&t.d);
    assert_eq!(
        kinds(&all),
        [
            "model_loading chat",
            "model_loaded chat",
            "memory_pressure zimage",
            "model_soft_unloaded chat",
            "vae_tiled zimage",
            "model_loading zimage",
            "model_loaded zimage",
            "model_unloaded zimage",
            "model_restored chat",
        ]
    );
    let soft = all.iter().find(|e| e["type"] == "model_soft_unloaded").unwrap();
    assert_eq!(soft["freed_bytes"], p.chat_context, "{soft}");
    let restored = all.iter().rfind(|e| e["type"] == "model_restored").unwrap();
    assert_eq!(restored["bytes"], p.chat_context, "the same context again: {restored}");
    let status = t.d.get("/v1/status").json();
    assert!(status["memory"]["used_bytes"].as_u64().unwrap() <= budget, "{status}");
    // The next chat needs nothing: no eviction, no restore, no event.
    chat(&t.d);
    assert_eq!(kinds(&events(&t.d)), kinds(&all));
}

/// The same budget with chat idle for ten minutes (the daemon's clock moved, not slept): the
/// idle LLM is unloaded instead, and the image decodes its VAE whole.
#[test]
fn a_real_llm_idle_for_ten_minutes_is_unloaded_instead_of_tiling() {
    let Some(p) = probe() else { return };
    let clock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(clock.path(), "0").unwrap();
    let Some(t) = start_with(Options {
        budget: Some(ladder_budget(&p)),
        env: vec![("VRAMD_TEST_CLOCK_OFFSET_FILE", PathBuf::from(clock.path()))],
        calibration: Some(p.calibration.clone()),
        ..Default::default()
    }) else {
        return;
    };
    chat(&t.d);
    std::fs::write(clock.path(), "601").unwrap();
    let v = image(&t.d);
    // The hard unload alone makes the room: a soft unload before it would buy nothing.
    assert_eq!(actions(&v), ["hard_unload"], "{}", v["vramd"]);
    assert!(
        v["vramd"]["actions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("an idle LLM goes first"),
        "{}",
        v["vramd"]
    );
    assert_eq!(v["vramd"]["vae"], "gpu");
    assert_eq!(t.d.model_status("chat")["state"], "unloaded");
    assert_eq!(
        kinds(&events(&t.d)),
        [
            "model_loading chat",
            "model_loaded chat",
            "memory_pressure zimage",
            "model_unloaded chat",
            "model_loading zimage",
            "model_loaded zimage",
        ]
    );
    // Chat comes back when asked for, making room again.
    chat(&t.d);
}

/// A request larger than the whole budget, with real workers: 507, nothing evicted.
#[test]
fn a_real_image_larger_than_the_budget_is_507() {
    let Some(probe) = start_with(Options::default()) else {
        return;
    };
    let chat_total = ok(probe.d.get("/v1/estimate?model=chat"))["total"].as_u64().unwrap();
    let img_total = ok(probe.d.get("/v1/estimate?model=zimage&width=64&height=64"))["total"]
        .as_u64()
        .unwrap();
    drop(probe);
    let Some(t) = start_with(Options {
        budget: Some(chat_total.max(img_total / 2) + 1),
        ..Default::default()
    }) else {
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
    let Some(probe) = start_with(Options::default()) else {
        return;
    };
    let chat = ok(probe.d.get("/v1/estimate?model=chat"));
    let img_total = ok(probe.d.get("/v1/estimate?model=zimage&width=32&height=32"))["total"]
        .as_u64()
        .unwrap();
    drop(probe);
    let chat_kv = chat["parts"]["context"].as_u64().unwrap() + chat["parts"]["compute"].as_u64().unwrap();
    let budget = chat["total"].as_u64().unwrap() + img_total - chat_kv / 2;
    let Some(t) = start_with(Options {
        budget: Some(budget),
        ..Default::default()
    }) else {
        return;
    };
    crate::util::fifty_from_eight_clients(&t.d.socket, budget, |c, i| {
        if (c + i) % 3 == 0 {
            (
                "/v1/images/generations",
                json!({"model": "zimage", "prompt": "x", "size": "32x32", "steps": 1, "seed": i}),
            )
        } else {
            (
                "/v1/completions",
                json!({"model": "chat", "prompt": "x", "max_tokens": 3, "temperature": 0}),
            )
        }
    });
}
