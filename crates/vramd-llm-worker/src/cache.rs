//! The prompt cache of one slot (one sequence of the context), and its copy in host memory
//! across a soft unload.
//!
//! A slot keeps the KV of the tokens it last decoded; a new request reuses the longest
//! common prefix and decodes only the rest, as llama.cpp's server does, so a chat turn costs
//! its new tokens, not the whole conversation. vramd goes one step further: before a soft
//! unload frees the context (to make room for an image), the sequence's KV is copied to host
//! memory (`state_seq_get`) within a budget, and put back (`state_seq_set`) when the context
//! is recreated, so the first turn after an image does not pay the prefill again.

use llama_cpp_2::context::session::{LlamaStateSeqFlags, SeqState};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;

pub struct PromptCache {
    /// The sequence id of this slot in the context.
    seq: i32,
    /// The tokens whose KV the context holds, in order from position 0.
    tokens: Vec<LlamaToken>,
    /// The KV and tokens kept in host memory while the context is gone.
    kept: Option<Kept>,
}

struct Kept {
    state: SeqState,
    tokens: Vec<LlamaToken>,
}

impl PromptCache {
    pub fn new(seq: i32) -> PromptCache {
        PromptCache {
            seq,
            tokens: Vec::new(),
            kept: None,
        }
    }

    /// The length of the prefix of `prompt` whose KV this slot holds or keeps.
    pub fn common_prefix(&self, prompt: &[LlamaToken]) -> usize {
        let held = self.kept.as_ref().map_or(&self.tokens, |k| &k.tokens);
        held.iter().zip(prompt).take_while(|(a, b)| a == b).count()
    }

    /// Tokens this slot holds or keeps.
    pub fn held(&self) -> usize {
        self.kept.as_ref().map_or(self.tokens.len(), |k| k.tokens.len())
    }

    /// Makes the context hold only the prefix of `prompt` it already has (at least one token
    /// is left to decode, for its logits); returns that prefix's length.
    pub fn reuse(&mut self, ctx: &mut LlamaContext<'_>, prompt: &[LlamaToken]) -> usize {
        let same = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = same.min(prompt.len().saturating_sub(1));
        if keep < self.tokens.len() {
            let removed = ctx.clear_kv_cache_seq(Some(self.seq as u32), Some(keep as u32), None);
            if !matches!(removed, Ok(true)) {
                // A partial removal the cache type cannot do: start over.
                self.forget(ctx);
                return 0;
            }
        }
        self.tokens.truncate(keep);
        keep
    }

    /// Records tokens just decoded into the sequence.
    pub fn push(&mut self, tokens: &[LlamaToken]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Empties the sequence (after a failed decode its KV is unknown).
    pub fn forget(&mut self, ctx: &mut LlamaContext<'_>) {
        // Removing a whole sequence cannot fail (only a partial removal can).
        let _ = ctx.clear_kv_cache_seq(Some(self.seq as u32), None, None);
        self.tokens.clear();
    }

    /// Before the context is freed: copies the sequence's KV to host memory when it fits
    /// `budget` bytes. Returns the bytes kept (0: nothing kept).
    pub fn keep(&mut self, ctx: &LlamaContext<'_>, budget: u64) -> u64 {
        self.kept = None;
        let tokens = std::mem::take(&mut self.tokens);
        if tokens.is_empty() || budget == 0 {
            return 0;
        }
        let flags = LlamaStateSeqFlags::default();
        if ctx.state_seq_get_size_ext(self.seq, flags) as u64 > budget {
            return 0;
        }
        match ctx.state_seq_get(self.seq, flags) {
            Ok(state) => {
                let bytes = state.byte_len() as u64;
                self.kept = Some(Kept { state, tokens });
                bytes
            }
            Err(e) => {
                tracing::warn!("cannot copy the KV cache to host memory: {e}");
                0
            }
        }
    }

    /// After the context is recreated: puts the kept KV back. Returns the tokens restored.
    pub fn restore(&mut self, ctx: &mut LlamaContext<'_>) -> usize {
        let Some(kept) = self.kept.take() else { return 0 };
        match ctx.state_seq_set(&kept.state, self.seq) {
            Ok(()) => {
                self.tokens = kept.tokens;
                self.tokens.len()
            }
            Err(e) => {
                tracing::warn!("cannot restore the kept KV cache: {e}");
                self.forget(ctx);
                0
            }
        }
    }
}
