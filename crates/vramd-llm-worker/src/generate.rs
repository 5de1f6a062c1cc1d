//! One generation on the llama thread: prompt → tokens → decode loop → streamed pieces.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;
use vramd_protocol::{ErrorCode, FinishReason, GenerateEvent, GenerateRequest, Input, SamplingParams, WorkerError};

use crate::engine::{error, Out};
use crate::stop::StopMatcher;
use crate::utf8::Utf8Stream;

/// Tokens the repetition penalties look back over.
const PENALTY_LAST_N: i32 = 64;

pub enum Outcome {
    Finished {
        reason: FinishReason,
        completion: u32,
    },
    /// The client went away; nothing more is sent.
    Cancelled {
        completion: u32,
    },
    Failed {
        error: WorkerError,
        completion: u32,
    },
}

/// Everything that can refuse a request before streaming starts: parameters, chat template,
/// tokenization, and the prompt's fit in a context of `n_ctx` tokens.
pub fn prepare(model: &LlamaModel, req: &GenerateRequest, n_ctx: u32) -> Result<Vec<LlamaToken>, WorkerError> {
    check_params(&req.params)?;
    let text = match &req.input {
        Input::Text { prompt } => prompt.clone(),
        Input::Chat { messages } if messages.is_empty() => {
            return Err(error(ErrorCode::InvalidRequest, "a chat needs at least one message"));
        }
        Input::Chat { messages } => {
            let template = model.chat_template(None).map_err(|_| {
                error(
                    ErrorCode::NoChatTemplate,
                    "the model has no chat template; send a text prompt",
                )
            })?;
            let messages = messages
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| error(ErrorCode::InvalidRequest, format!("chat message: {e}")))?;
            // llama.cpp knows a list of templates: a model with another one has none usable.
            model.apply_chat_template(&template, &messages, true).map_err(|e| {
                error(
                    ErrorCode::NoChatTemplate,
                    format!("llama.cpp cannot apply the model's chat template ({e}); send a text prompt"),
                )
            })?
        }
    };
    // BOS as the model asks; special tokens in the text (chat markers) are parsed as such.
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    if tokens.is_empty() {
        return Err(error(ErrorCode::InvalidRequest, "the prompt is empty"));
    }
    if tokens.len() + 1 > n_ctx as usize {
        return Err(error(
            ErrorCode::PromptTooLong,
            format!(
                "the prompt is {} tokens; the context holds {n_ctx} (prompt + 1 must fit)",
                tokens.len()
            ),
        ));
    }
    Ok(tokens)
}

fn check_params(p: &SamplingParams) -> Result<(), WorkerError> {
    let bad = |what: &str| Err(error(ErrorCode::InvalidRequest, what.to_string()));
    if !(p.temperature.is_finite() && p.temperature >= 0.0) {
        return bad("temperature must be a number ≥ 0");
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return bad("top_p must be in (0, 1]");
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        return bad("min_p must be in [0, 1]");
    }
    if p.top_k < 0 {
        return bad("top_k must be ≥ 0 (0 disables it)");
    }
    if !(p.repeat_penalty.is_finite() && p.repeat_penalty > 0.0) {
        return bad("repeat_penalty must be > 0 (1 disables it)");
    }
    if !(p.frequency_penalty.is_finite() && p.presence_penalty.is_finite()) {
        return bad("frequency_penalty and presence_penalty must be numbers");
    }
    Ok(())
}

/// The sampler chain for `p`: penalties, then greedy at temperature 0, else top-k, top-p,
/// min-p, temperature and a seeded draw.
fn sampler(p: &SamplingParams, n_vocab: i32) -> LlamaSampler {
    let mut chain = Vec::new();
    if p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            n_vocab,
            PENALTY_LAST_N,
            p.repeat_penalty,
            p.frequency_penalty,
            p.presence_penalty,
        ));
    }
    if p.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if p.top_k > 0 {
            chain.push(LlamaSampler::top_k(p.top_k));
        }
        if p.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(p.top_p, 1));
        }
        if p.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(p.min_p, 1));
        }
        chain.push(LlamaSampler::temp(p.temperature));
        // u32::MAX is LLAMA_DEFAULT_SEED: llama.cpp draws a random seed.
        chain.push(LlamaSampler::dist(p.seed.unwrap_or(u32::MAX)));
    }
    LlamaSampler::chain(chain, true)
}

/// Runs the generation; the caller has sent `started` and sends the final event.
pub fn run(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    prompt: &[LlamaToken],
    req: &GenerateRequest,
    out: &mpsc::Sender<Out>,
) -> Outcome {
    let mut g = Generation {
        out,
        completion: 0,
        utf8: Utf8Stream::default(),
        stops: StopMatcher::new(&req.params.stop),
    };
    let t0 = Instant::now();
    let result = g.decode_loop(model, ctx, prompt, &req.params);
    let t_gen = t0.elapsed();
    let outcome = match result {
        Ok(Some(reason)) => Outcome::Finished {
            reason,
            completion: g.completion,
        },
        Ok(None) => Outcome::Cancelled {
            completion: g.completion,
        },
        Err(msg) => Outcome::Failed {
            error: error(ErrorCode::Internal, msg),
            completion: g.completion,
        },
    };
    let secs = t_gen.as_secs_f64();
    tracing::info!(
        request_id = %req.request_id,
        prompt_tokens = prompt.len(),
        completion_tokens = g.completion,
        ms = t_gen.as_millis() as u64,
        tokens_per_s = if secs > 0.0 { (g.completion as f64 / secs).round() } else { 0.0 },
        "generation ended"
    );
    outcome
}

struct Generation<'o> {
    out: &'o mpsc::Sender<Out>,
    completion: u32,
    utf8: Utf8Stream,
    stops: StopMatcher,
}

impl Generation<'_> {
    /// `Ok(Some(reason))` when finished, `Ok(None)` when the client left.
    fn decode_loop(
        &mut self,
        model: &LlamaModel,
        ctx: &mut LlamaContext<'_>,
        prompt: &[LlamaToken],
        params: &SamplingParams,
    ) -> Result<Option<FinishReason>, String> {
        let vocab = model.vocab();
        let n_ctx = ctx.n_ctx() as usize;
        let n_batch = (ctx.n_batch() as usize).max(1);
        ctx.clear_kv_cache();
        let mut batch = LlamaBatch::new(n_batch, 1);
        let last = prompt.len() - 1;
        for (c, chunk) in prompt.chunks(n_batch).enumerate() {
            batch.clear();
            for (j, &token) in chunk.iter().enumerate() {
                let pos = c * n_batch + j;
                batch
                    .add(token, pos as i32, &[0], pos == last)
                    .map_err(|e| e.to_string())?;
            }
            ctx.decode(&mut batch).map_err(|e| format!("prompt decode: {e}"))?;
            if self.out.is_closed() {
                return Ok(None);
            }
        }
        let mut sampler = sampler(params, model.n_vocab());
        let mut n_past = prompt.len();
        loop {
            if self.completion >= params.max_tokens {
                return Ok(self.finish(FinishReason::Length));
            }
            if self.out.is_closed() {
                return Ok(None);
            }
            let token = sampler.sample(ctx, batch.n_tokens() - 1);
            if vocab.is_eog(token) {
                return Ok(self.finish(FinishReason::Stop));
            }
            self.completion += 1;
            let text = self.utf8.push(&vocab.token_to_piece(token, false, None));
            let step = self.stops.push(&text);
            if !self.send(step.emit) {
                return Ok(None);
            }
            if step.stopped {
                return Ok(Some(FinishReason::Stop));
            }
            if self.completion >= params.max_tokens || n_past >= n_ctx {
                // Out of tokens, or no cell left for this one: the context is full.
                return Ok(self.finish(FinishReason::Length));
            }
            batch.clear();
            batch.add(token, n_past as i32, &[0], true).map_err(|e| e.to_string())?;
            ctx.decode(&mut batch).map_err(|e| format!("decode: {e}"))?;
            n_past += 1;
        }
    }

    /// Sends a non-empty piece; false when the client has gone.
    fn send(&self, text: String) -> bool {
        text.is_empty()
            || self
                .out
                .blocking_send(Out::Event(GenerateEvent::Token { text }))
                .is_ok()
    }

    /// Releases held-back text at the end; a stop sequence completed by it still stops.
    fn finish(&mut self, reason: FinishReason) -> Option<FinishReason> {
        let step = self.stops.push(&self.utf8.finish());
        let stopped = step.stopped;
        let rest = if stopped { String::new() } else { self.stops.finish() };
        if !self.send(step.emit) || !self.send(rest) {
            return None;
        }
        Some(if stopped { FinishReason::Stop } else { reason })
    }
}
