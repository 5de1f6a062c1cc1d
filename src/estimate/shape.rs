//! What estimates need from model files, read from GGUF headers through a memory map
//! (nothing is loaded; only the header pages are touched).

use std::path::Path;

use vramd_gguf::GgufFile;

/// An LLM's dimensions, from `{arch}.*` keys and the tensor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlmShape {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_head: u64,
    pub n_head_kv: u64,
    pub n_ctx_train: u32,
    pub n_vocab: u64,
    /// Bytes of all tensors.
    pub weights: u64,
}

pub fn llm_shape(path: &Path) -> Result<LlmShape, String> {
    let f = GgufFile::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let arch = f.architecture().ok_or("no general.architecture")?.to_owned();
    let key = |k: &str| f.get_u64(&format!("{arch}.{k}")).ok_or(format!("no {arch}.{k}"));
    let n_head = key("attention.head_count")?;
    let n_vocab = f
        .get_array("tokenizer.ggml.tokens")
        .map(|(_, v)| v.len() as u64)
        .or_else(|| f.tensor("token_embd.weight").and_then(|t| t.dims.get(1).copied()))
        .ok_or("no vocabulary")?;
    Ok(LlmShape {
        n_layer: key("block_count")?,
        n_embd: key("embedding_length")?,
        n_head,
        n_head_kv: key("attention.head_count_kv").unwrap_or(n_head),
        n_ctx_train: u32::try_from(key("context_length")?).unwrap_or(u32::MAX),
        n_vocab,
        weights: f.tensor_data_bytes(),
    })
}

/// Weights of an image model per component.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageWeights {
    pub components: Vec<(String, u64)>,
    /// Decodes with the tiny autoencoder.
    pub taesd: bool,
}

impl ImageWeights {
    pub fn total(&self) -> u64 {
        self.components.iter().map(|(_, b)| b).sum()
    }
}

/// Tensor bytes of each GGUF component; other formats (safetensors, ckpt) count their size.
pub fn image_weights(files: &[(&'static str, &Path)]) -> Result<ImageWeights, String> {
    let mut w = ImageWeights::default();
    for (role, path) in files {
        let bytes = match GgufFile::open(path) {
            Ok(f) => f.tensor_data_bytes(),
            Err(_) => std::fs::metadata(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .len(),
        };
        w.taesd |= *role == "taesd";
        w.components.push(((*role).to_owned(), bytes));
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vramd_gguf::llama::{write_tiny_llama, TinyLlamaSpec};

    #[test]
    fn reads_the_tiny_llama_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let spec = TinyLlamaSpec {
            n_head_kv: 2,
            ..TinyLlamaSpec::default()
        };
        write_tiny_llama(&path, &spec).unwrap();
        let s = llm_shape(&path).unwrap();
        assert_eq!(
            (s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.n_ctx_train),
            (2, 64, 4, 2, 512)
        );
        assert!(s.n_vocab > 256);
        assert!(s.weights > 0 && s.weights < std::fs::metadata(&path).unwrap().len());
        let w = image_weights(&[("diffusion_model", path.as_path())]).unwrap();
        assert_eq!(w.total(), s.weights);
        assert!(!w.taesd);
        assert!(llm_shape(&dir.path().join("missing.gguf")).is_err());
    }
}
