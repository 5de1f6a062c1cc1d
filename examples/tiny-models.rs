//! Writes the tiny random-weight models the package test (packaging/test-deb) serves: a
//! llama with a ChatML template (`chat`) and the Z-Image-style image model (`zimage`: DiT,
//! Qwen3-style encoder, tiny autoencoder, from crates/vramd-gguf/testdata/sd-tiny), plus a
//! `models.d` drop-in naming them.
//!
//! `cargo run --example tiny-models -- DIR` writes `DIR/*.gguf` and `DIR/tiny-models.toml`.

use std::path::{Path, PathBuf};

use vramd_gguf::manifest::{write_from_manifest, ManifestOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args_os().nth(1).ok_or("usage: tiny-models DIR")?);
    std::fs::create_dir_all(&dir)?;
    let chat = dir.join("chat.gguf");
    vramd_gguf::llama::write_tiny_llama(&chat, &Default::default())?;
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/vramd-gguf/testdata/sd-tiny");
    let mut image = Vec::new();
    for part in ["zi_dit", "zi_llm", "zi_tae"] {
        let json = std::fs::read_to_string(manifests.join(format!("{part}.json")))?;
        let path = dir.join(format!("{part}.gguf"));
        write_from_manifest(&path, &json, &ManifestOptions::default())?;
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
