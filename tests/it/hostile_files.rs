//! Crafted GGUF files, as someone with bad intent would write them, configured as models of
//! both kinds: a tensor count of 2^60, a tensor whose dimensions overflow, a string whose
//! length runs past the end of the file, and a file cut in half. Each model ends `failed`
//! with a reason that names the problem; estimating it, showing it (Ollama's `show`) and
//! loading it never take the daemon or the other models down. Real workers.

use std::path::Path;

use serde_json::{json, Value};

use crate::images::{models, sd_worker_dir};
use crate::util::{Daemon, BASE_CONFIG};

fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(tensors.to_le_bytes());
    b.extend(kvs.to_le_bytes());
    b
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// (file name, words one of which the reason must say)
fn crafted(dir: &Path) -> Vec<(&'static str, &'static [&'static str])> {
    let mut huge_count = header(1 << 60, 0);
    huge_count.extend([0u8; 64]);
    // One tensor of 2^40 × 2^40 f32 elements after a valid architecture key.
    let mut overflow = header(1, 1);
    string(&mut overflow, "general.architecture");
    overflow.extend(8u32.to_le_bytes()); // string
    string(&mut overflow, "llama");
    string(&mut overflow, "a");
    overflow.extend(2u32.to_le_bytes());
    overflow.extend((1u64 << 40).to_le_bytes());
    overflow.extend((1u64 << 40).to_le_bytes());
    overflow.extend(0u32.to_le_bytes()); // F32
    overflow.extend(0u64.to_le_bytes());
    overflow.resize(overflow.len().div_ceil(32) * 32 + 64, 0);
    // A key whose length says 2^62 bytes.
    let mut long_string = header(0, 1);
    long_string.extend((1u64 << 62).to_le_bytes());
    long_string.extend(b"general.architecture");
    let chat = std::fs::read(models().join("chat.gguf")).unwrap();
    let half = chat[..chat.len() / 2].to_vec();
    for (name, bytes) in [
        ("huge_count.gguf", &huge_count),
        ("overflow.gguf", &overflow),
        ("long_string.gguf", &long_string),
        ("half.gguf", &half),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    vec![
        ("huge_count.gguf", &["tensor"]),
        ("overflow.gguf", &["overflow", "size", "tensor", "dimension", "bounds"]),
        ("long_string.gguf", &["string", "metadata", "key"]),
        (
            "half.gguf",
            &["truncated", "end of file", "past the end", "tensor", "read"],
        ),
    ]
}

#[test]
fn crafted_gguf_files_fail_their_model_with_a_reason_and_nothing_else() {
    let Some(workers) = sd_worker_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let files = crafted(dir.path());
    let mut config = BASE_CONFIG.replace(
        "[daemon]\n",
        &format!(
            "[daemon]\nworker_dir = \"{}\"\nworker_start_timeout = \"60s\"\n",
            workers.display()
        ),
    );
    config.push_str(&format!(
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 256\n",
        models().join("chat.gguf").display()
    ));
    let (llm, tae) = (models().join("zi_llm.gguf"), models().join("zi_tae.gguf"));
    for (i, (file, _)) in files.iter().enumerate() {
        let path = dir.path().join(file);
        config.push_str(&format!(
            "[[models]]\nname = \"llm{i}\"\nkind = \"llm\"\npath = \"{}\"\n",
            path.display()
        ));
        config.push_str(&format!(
            "[[models]]\nname = \"img{i}\"\nkind = \"image\"\ndiffusion_model = \"{}\"\nllm = \"{}\"\ntaesd = \"{}\"\n",
            path.display(),
            llm.display(),
            tae.display()
        ));
    }
    let d = Daemon::start(&config);
    let post = |path: &str, body: Value| d.post_json(path, &body.to_string());
    for (i, (file, says)) in files.iter().enumerate() {
        // Reading the file's header (Ollama's show, the estimate) is an error, not a crash.
        let r = post("/api/show", json!({"model": format!("llm{i}")}));
        assert!(
            r.status >= 400 && r.status < 500 || r.status == 200,
            "{file}: {}",
            r.status
        );
        let r = d.get(&format!("/v1/estimate?model=img{i}&width=64&height=64"));
        assert!(
            r.status < 500 || r.status == 503,
            "{file}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        // Using it: 503 model_failed, the model `failed` with the reason.
        for (model, path, body) in [
            (
                format!("llm{i}"),
                "/v1/completions",
                json!({"prompt": "x", "max_tokens": 2}),
            ),
            (
                format!("img{i}"),
                "/v1/images/generations",
                json!({"prompt": "x", "size": "64x64", "steps": 1}),
            ),
        ] {
            let mut body = body;
            body["model"] = json!(model);
            let r = post(path, body);
            let e = r.error(503);
            assert_eq!(e["code"], "model_failed", "{file} as {model}: {e}");
            let m = d.model_status(&model);
            assert_eq!(m["state"], "failed", "{file} as {model}: {m}");
            let reason = m["error"].as_str().unwrap();
            eprintln!("{file} as {model}: {reason}");
            assert!(says.iter().any(|w| reason.contains(w)), "{file} as {model}: {reason}");
        }
    }
    // The daemon and a good model are untouched.
    let v = post(
        "/v1/completions",
        json!({"model": "chat", "prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
    assert_eq!(d.get("/health").status, 200);
}
