//! Writes the tiny random-weight models the package test (packaging/test-deb) serves: a
//! llama with a ChatML template (`chat`) and the Z-Image-style image model (`zimage`: DiT,
//! Qwen3-style encoder, tiny autoencoder, from crates/vramd-gguf/testdata/sd-tiny), plus a
//! `models.d` drop-in naming them.
//!
//! `cargo run --example tiny-models -- DIR [--llm-mb N]` writes `DIR/*.gguf` and
//! `DIR/tiny-models.toml`. With `--llm-mb N` the llama is about N MB of F16 weights (2048
//! wide, 100 MB a layer) instead of a few hundred KB: scripts/device-check uses it where a
//! model's memory must dwarf a CUDA context's.

use std::path::PathBuf;

use vramd_gguf::manifest::{write_from_manifest, ManifestOptions};

/// The Z-Image-style model's manifests (crates/vramd-gguf/testdata/sd-tiny).
const MANIFESTS: [(&str, &str); 3] = [
    (
        "zi_dit",
        include_str!("../crates/vramd-gguf/testdata/sd-tiny/zi_dit.json"),
    ),
    (
        "zi_llm",
        include_str!("../crates/vramd-gguf/testdata/sd-tiny/zi_llm.json"),
    ),
    (
        "zi_tae",
        include_str!("../crates/vramd-gguf/testdata/sd-tiny/zi_tae.json"),
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let usage = "usage: tiny-models DIR [--llm-mb N]";
    let mut args = std::env::args_os().skip(1);
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let llm_mb = match (args.next(), args.next()) {
        (None, _) => None,
        (Some(flag), Some(n)) if flag == "--llm-mb" => {
            Some(n.to_str().and_then(|n| n.parse::<u32>().ok()).ok_or(usage)?)
        }
        _ => return Err(usage.into()),
    };
    std::fs::create_dir_all(&dir)?;
    let chat = dir.join("chat.gguf");
    let spec = match llm_mb {
        None => Default::default(),
        Some(mb) => vramd_gguf::llama::TinyLlamaSpec {
            n_embd: 2048,
            n_ff: 8192,
            n_head: 16,
            n_head_kv: 16,
            n_layer: (mb / 100).max(1),
            n_ctx_train: 4096,
            weight_type: vramd_gguf::GgmlType::F16,
            init_scale: 0.02,
            ..Default::default()
        },
    };
    vramd_gguf::llama::write_tiny_llama(&chat, &spec)?;
    let mut image = Vec::new();
    // Built in, so that the binary alone writes them (scripts/device-check carries it).
    for (part, json) in MANIFESTS {
        let path = dir.join(format!("{part}.gguf"));
        write_from_manifest(&path, json, &ManifestOptions::default())?;
        image.push(path);
    }
    let dropin = format!(
        "[[models]]\nname = \"chat\"\nkind = \"llm\"\npath = \"{}\"\ncontext_length = 256\n\n\
         [[models]]\nname = \"zimage\"\nkind = \"image\"\ndiffusion_model = \"{}\"\nllm = \"{}\"\ntaesd = \"{}\"\nsize_multiple = 16\n",
        chat.display(),
        image[0].display(),
        image[1].display(),
        image[2].display(),
    );
    std::fs::write(dir.join("tiny-models.toml"), dropin)?;
    println!("{}", dir.join("tiny-models.toml").display());
    Ok(())
}
