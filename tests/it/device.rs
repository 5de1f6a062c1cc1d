//! The NVML path of the arbiter without a GPU: `VRAMD_TEST_DEVICE_FILE` stands a file in for
//! the device (see `src/memory/simulated.rs`), which the test rewrites as a driver's figures
//! would change, with the fake workers of `arbiter.rs`. What is left out is only the calls into
//! `libnvidia-ml.so`, which the device check on a GPU machine covers.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{events, fake_two_models, kinds, Daemon, GIB};

/// Writes the device's figures: total 4 GiB, `free`, and per-process use.
fn device(file: &Path, free: u64, processes: &[(u64, u64)]) {
    let processes: serde_json::Map<String, Value> = processes.iter().map(|(p, b)| (p.to_string(), json!(b))).collect();
    let tmp = file.with_extension("tmp");
    std::fs::write(
        &tmp,
        json!({"total": 4 * GIB, "free": free, "processes": processes}).to_string(),
    )
    .unwrap();
    std::fs::rename(tmp, file).unwrap();
}

fn memory(d: &Daemon) -> Value {
    d.get("/v1/status").json()["memory"].clone()
}

/// Polls until `check` holds (the arbiter reads the device every half second).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

struct Device {
    d: Daemon,
    file: tempfile::NamedTempFile,
    _dirs: Vec<tempfile::TempDir>,
}

/// A daemon on the `nvml` backend with a simulated 4 GiB device, `chat` loaded (2 GiB by its
/// worker's account) and seen by the device as 2.5 GiB (its CUDA context), 1.5 GiB free.
fn chat_loaded() -> (Device, u64) {
    let (config, dirs) = fake_two_models(GIB, "ok delay_ms=1", "");
    let config = config.replace("backend = \"budget\"", "backend = \"nvml\"");
    let file = tempfile::NamedTempFile::new().unwrap();
    device(file.path(), 4 * GIB, &[]);
    let path = file.path().to_owned();
    let d = Daemon::start_with(&config, move |c| {
        c.env("VRAMD_TEST_DEVICE_FILE", &path);
    });
    let m = memory(&d);
    assert_eq!(
        (m["backend"].as_str(), m["total_bytes"].as_u64()),
        (Some("nvml"), Some(4 * GIB)),
        "{m}"
    );
    let r = d.post_json(
        "/v1/completions",
        &json!({"model": "chat", "prompt": "hi", "max_tokens": 2}).to_string(),
    );
    assert_eq!(r.status, 200);
    // The device has not noticed the load yet: the registry's account limits what is free.
    let m = memory(&d);
    assert_eq!(
        (m["free_bytes"].as_u64(), m["device_free_bytes"].as_u64()),
        (Some(2 * GIB), Some(4 * GIB)),
        "{m}"
    );
    let pid = d.model_status("chat")["pid"].as_u64().unwrap();
    device(file.path(), 3 * GIB / 2, &[(pid, 5 * GIB / 2)]);
    eventually("chat's NVML figure", || {
        d.model_status("chat")["device_bytes"] == 5 * GIB / 2
    });
    (Device { d, file, _dirs: dirs }, pid)
}

#[test]
fn device_figures_limit_free_memory_and_the_larger_figure_of_a_worker_counts() {
    let (t, _) = chat_loaded();
    let chat = t.d.model_status("chat");
    assert_eq!(chat["bytes"]["total"], 2 * GIB, "the worker's own account: {chat}");
    assert_eq!(
        chat["device_bytes"],
        5 * GIB / 2,
        "NVML's figure for its process: {chat}"
    );
    let m = memory(&t.d);
    assert_eq!(m["used_bytes"], 5 * GIB / 2, "the larger one is held: {m}");
    assert_eq!(m["free_bytes"], 3 * GIB / 2, "{m}");
    // Something outside vramd takes 1 GiB: the device's figure is now the smaller one.
    device(t.file.path(), GIB / 2, &[]);
    eventually("the device's free figure", || memory(&t.d)["free_bytes"] == GIB / 2);
}

/// After a hard unload the driver gives the memory back a moment after the process is gone;
/// the next request waits for the device to report it (bounded) instead of planning on the
/// stale figure.
#[test]
fn after_a_hard_unload_the_next_request_waits_for_the_device_to_free_the_memory() {
    let (t, _) = chat_loaded();
    let r =
        t.d.post_json("/v1/models/chat/unload", &json!({"mode": "hard"}).to_string());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(t.d.model_status("chat")["state"], "unloaded");
    // The device still shows chat's 2.5 GiB as used.
    let socket = t.d.socket.clone();
    let image = thread::spawn(move || {
        let body = json!({"model": "sd", "prompt": "x", "size": "256x256", "steps": 1}).to_string();
        let r = crate::util::http(
            &socket,
            "POST",
            "/v1/images/generations",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        (r, Instant::now())
    });
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.d.model_status("sd")["state"],
        "unloaded",
        "planned on a stale device figure"
    );
    assert!(!kinds(&events(&t.d)).contains(&"model_loading sd".to_owned()));
    let given_back = Instant::now();
    device(t.file.path(), 4 * GIB, &[]);
    let (r, answered) = image.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(answered > given_back, "served once the device had the memory back");
}
