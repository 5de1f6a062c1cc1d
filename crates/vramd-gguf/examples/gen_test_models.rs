//! Writes the random-weight test models to disk, for loading them by hand into llama.cpp or
//! stable-diffusion.cpp, or checking them with another GGUF reader (e.g. Python `gguf`).
//!
//! ```text
//! cargo run -p vramd-gguf --example gen_test_models -- llama OUT.gguf [f32|f16|q8_0|q4_0] [gqa] [no-template] [tied]
//! cargo run -p vramd-gguf --example gen_test_models -- sd MANIFEST.json OUT.gguf [q4_0|q8_0|f16|f32]
//! ```

use std::process::ExitCode;

use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec};
use vramd_gguf::manifest::{write_from_manifest, ManifestOptions};
use vramd_gguf::{GgmlType, GgufFile};

fn ggml_type(name: &str) -> Result<GgmlType, String> {
    GgmlType::ALL
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("unknown type {name}"))
}

fn run(args: &[String]) -> Result<String, String> {
    let out = match args {
        [cmd, out, rest @ ..] if cmd == "llama" => {
            let mut spec = TinyLlamaSpec::default();
            for flag in rest {
                match flag.as_str() {
                    "gqa" => spec.n_head_kv = 2,
                    "no-template" => spec.chat_template = None,
                    "tied" => spec.output_tensor = false,
                    t => spec.weight_type = ggml_type(t)?,
                }
            }
            write_tiny_llama(out, &spec).map_err(|e| e.to_string())?;
            out
        }
        [cmd, manifest, out, rest @ ..] if cmd == "sd" => {
            let mut opts = ManifestOptions::default();
            if let Some(t) = rest.first() {
                opts.linear_type = ggml_type(t)?;
            }
            let json = std::fs::read_to_string(manifest).map_err(|e| format!("{manifest}: {e}"))?;
            write_from_manifest(out, &json, &opts).map_err(|e| e.to_string())?;
            out
        }
        _ => {
            return Err(
                "usage: gen_test_models llama OUT [type] [gqa] [no-template] [tied] | sd MANIFEST OUT [type]".into(),
            )
        }
    };
    let f = GgufFile::open(out).map_err(|e| e.to_string())?;
    Ok(format!(
        "{out}: {} tensors, {} metadata keys, {} bytes of tensor data, {} bytes on disk",
        f.tensors().len(),
        f.metadata_entries().len(),
        f.tensor_data_bytes(),
        f.file_len()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_test_models: {e}");
            ExitCode::FAILURE
        }
    }
}
