//! Embeddings on the llama thread: each input is decoded alone in sequence 0 of a context
//! made with embeddings on, and its pooled vector (the model's own pooling, from its GGUF)
//! is read back. A model whose GGUF sets no pooling (a decoder-only LLM) gets the mean of
//! its token embeddings, as llama.cpp's server does with `--pooling mean`.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use vramd_protocol::{EmbedRequest, ErrorCode, WorkerError};
use vramd_worker_kit::error;

/// The pooled embedding of every input, and the tokens they took.
pub fn embed(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    req: &EmbedRequest,
) -> Result<(Vec<Vec<f32>>, u32), WorkerError> {
    let n_ctx = ctx.n_ctx() as usize;
    let mut vectors = Vec::with_capacity(req.inputs.len());
    let mut tokens_used = 0;
    for (i, input) in req.inputs.iter().enumerate() {
        let tokens = model.vocab().tokenize(input.as_bytes(), true, false);
        if tokens.is_empty() {
            return Err(error(ErrorCode::InvalidRequest, format!("input {i} is empty")));
        }
        // One input is one physical batch: non-causal models (BERT and kin) need it whole.
        let most = n_ctx.min(ctx.n_batch() as usize).min(ctx.n_ubatch() as usize);
        if tokens.len() > most {
            return Err(error(
                ErrorCode::PromptTooLong,
                format!(
                    "input {i} is {} tokens; this embedding model takes at most {most}",
                    tokens.len()
                ),
            ));
        }
        tokens_used += tokens.len() as u32;
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        batch
            .add_sequence(&tokens, 0, true)
            .map_err(|e| error(ErrorCode::Internal, e.to_string()))?;
        ctx.decode(&mut batch)
            .map_err(|e| error(ErrorCode::Internal, format!("embedding decode: {e}")))?;
        let mut v = match ctx.embeddings_seq_ith(0) {
            Ok(pooled) => pooled.to_vec(),
            Err(_) => mean_of_tokens(ctx, tokens.len())?,
        };
        if req.normalize {
            normalize(&mut v);
        }
        vectors.push(v);
    }
    Ok((vectors, tokens_used))
}

/// The mean of the per-token embeddings of the last batch (`n` tokens).
fn mean_of_tokens(ctx: &LlamaContext<'_>, n: usize) -> Result<Vec<f32>, WorkerError> {
    let mut sum: Vec<f32> = Vec::new();
    for i in 0..n {
        let e = ctx
            .embeddings_ith(i as i32)
            .map_err(|e| error(ErrorCode::Internal, format!("no token embedding: {e}")))?;
        if sum.is_empty() {
            sum = vec![0.0; e.len()];
        }
        sum.iter_mut().zip(e).for_each(|(s, x)| *s += x);
    }
    sum.iter_mut().for_each(|s| *s /= n as f32);
    Ok(sum)
}

/// Scales `v` to Euclidean length 1 (a zero vector stays zero).
fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize_gives_unit_length() {
        let mut v = vec![3.0, 4.0];
        super::normalize(&mut v);
        assert_eq!(v, vec![0.6, 0.8]);
        let mut zero = vec![0.0, 0.0];
        super::normalize(&mut zero);
        assert_eq!(zero, vec![0.0, 0.0]);
    }
}
