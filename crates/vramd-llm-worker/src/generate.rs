//! One generation on the llama thread: prompt → tokens → decode loop → streamed pieces.
//!
//! The engine (`engine.rs`) calls [`prepare`], sends `started`, and hands a [`Running`] to
//! a slot; the slots step it with the others and the engine sends the last event from its
//! [`Outcome`]. This module knows the model, a context and the stream ([`Out`]), not the
//! engine or the other slots.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;
use vramd_protocol::{
    ErrorCode, FinishReason, GenerateEvent, GenerateRequest, Grammar, Input, SamplingParams, TokenLogprob, TopLogprob,
    WorkerError,
};
use vramd_worker_kit::error;

use crate::cache::PromptCache;
use crate::stop::StopMatcher;
use crate::utf8::Utf8Stream;

/// Tokens the repetition penalties look back over.
const PENALTY_LAST_N: i32 = 64;

/// What the engine sends back for a generation: a refusal, or the next line of the stream.
pub type Out = vramd_worker_kit::Out<GenerateEvent>;

/// How a generation ended, for the engine to report: the last event is its to send.
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

/// Everything that can refuse a request before streaming starts: parameters, the grammar,
/// chat template, tokenization, and the prompt's fit in a context of `n_ctx` tokens.
pub fn prepare(
    model: &LlamaModel,
    req: &GenerateRequest,
    n_ctx: u32,
) -> Result<(Vec<LlamaToken>, LlamaSampler), WorkerError> {
    check_params(&req.params, model.n_vocab())?;
    let sampler = sampler(&req.params, model)?;
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
    Ok((tokens, sampler))
}

fn check_params(p: &SamplingParams, n_vocab: i32) -> Result<(), WorkerError> {
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
    if p.max_tokens == Some(0) {
        return bad("max_tokens must be at least 1");
    }
    if let Some((token, _)) = p
        .logit_bias
        .iter()
        .find(|(t, b)| *t < 0 || *t >= n_vocab || !b.is_finite())
    {
        return bad(&format!(
            "logit_bias: token {token} is not in the vocabulary (0..{n_vocab}) or its bias is not a number"
        ));
    }
    Ok(())
}

/// The grammar sampler for `grammar`; a schema llama.cpp cannot convert, or a grammar it
/// cannot parse, is the request's fault.
fn grammar_sampler(model: &LlamaModel, grammar: &Grammar) -> Result<LlamaSampler, WorkerError> {
    let gbnf = match grammar {
        Grammar::Gbnf { text } => text.clone(),
        Grammar::JsonSchema { schema } => llama_cpp_2::json_schema_to_grammar(schema).map_err(|e| {
            error(
                ErrorCode::InvalidRequest,
                format!("the JSON schema cannot be turned into a grammar: {e}"),
            )
        })?,
    };
    LlamaSampler::grammar(model, &gbnf, "root")
        .map_err(|e| error(ErrorCode::InvalidRequest, format!("the grammar is not valid: {e}")))
}

/// The sampler chain for `p`: the grammar and the logit biases first (they decide what may
/// be drawn at all), penalties, then greedy at temperature 0, else top-k, top-p, min-p,
/// temperature and a seeded draw.
fn sampler(p: &SamplingParams, model: &LlamaModel) -> Result<LlamaSampler, WorkerError> {
    let n_vocab = model.n_vocab();
    let mut chain = Vec::new();
    if let Some(g) = &p.grammar {
        chain.push(grammar_sampler(model, g)?);
    }
    if !p.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = p
            .logit_bias
            .iter()
            .map(|(t, b)| LlamaLogitBias::new(LlamaToken(*t), *b))
            .collect();
        chain.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
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
    Ok(LlamaSampler::chain(chain, true))
}

/// A generation in progress on one slot of the context. The slot scheduler (`slots.rs`)
/// puts its tokens into each step's batch ([`Running::fill`]: the rest of the prompt in
/// chunks, then the token sampled last) and hands it the decoded logits
/// ([`Running::decoded`]), until it returns an [`Outcome`].
pub struct Running {
    pub req: GenerateRequest,
    out: mpsc::Sender<Out>,
    sampler: LlamaSampler,
    prompt: Vec<LlamaToken>,
    /// The next prompt token to decode (the slot's cache holds those before it).
    next: usize,
    /// The token sampled last, to be decoded in the next step.
    sampled: Option<LlamaToken>,
    /// The position of the next token: the slot's context holds this many.
    n_past: usize,
    /// Tokens a slot's context holds at most.
    n_ctx: usize,
    /// Where this generation's logits are in the step under way.
    logits_at: Option<i32>,
    /// Tokens put into the step under way, recorded in the cache once decoded.
    in_batch: Vec<LlamaToken>,
    max_tokens: u32,
    preserved: Vec<LlamaToken>,
    completion: u32,
    utf8: Utf8Stream,
    stops: StopMatcher,
    /// Alternatives to report per token, when the request asked for logprobs.
    logprobs: Option<u32>,
    /// The logprob of the token whose text is being sent (one token, one event).
    pending: Option<TokenLogprob>,
    started: Instant,
}

impl Running {
    /// A generation of `prompt` on a slot whose context already holds its first `cached`
    /// tokens ([`PromptCache::reuse`]) and has room for `n_ctx`; the caller has sent
    /// `started`.
    pub fn new(
        model: &LlamaModel,
        req: GenerateRequest,
        out: mpsc::Sender<Out>,
        (prompt, sampler): (Vec<LlamaToken>, LlamaSampler),
        cached: usize,
        n_ctx: usize,
    ) -> Running {
        Running {
            max_tokens: req.params.max_tokens.unwrap_or(u32::MAX),
            preserved: preserved_ids(model, &req.params.preserved),
            stops: StopMatcher::new(&req.params.stop),
            logprobs: req.params.logprobs,
            req,
            out,
            sampler,
            prompt,
            next: cached,
            sampled: None,
            n_past: cached,
            n_ctx,
            logits_at: None,
            in_batch: Vec::new(),
            completion: 0,
            utf8: Utf8Stream::default(),
            pending: None,
            started: Instant::now(),
        }
    }

    pub fn prompt_tokens(&self) -> u32 {
        self.prompt.len() as u32
    }

    /// Prompt tokens still to decode before the first token is sampled.
    pub fn prefill_left(&self) -> usize {
        if self.sampled.is_some() {
            0
        } else {
            self.prompt.len() - self.next
        }
    }

    /// Adds at most `room` (≥ 1) of this generation's tokens to `batch` as sequence `seq`;
    /// returns how many.
    pub fn fill(&mut self, batch: &mut LlamaBatch, seq: i32, room: usize) -> Result<usize, String> {
        self.in_batch.clear();
        self.logits_at = None;
        if let Some(token) = self.sampled.take() {
            self.add(batch, seq, token, true)?;
            return Ok(1);
        }
        let end = (self.next + room).min(self.prompt.len());
        for i in self.next..end {
            self.add(batch, seq, self.prompt[i], i + 1 == self.prompt.len())?;
        }
        let n = end - self.next;
        self.next = end;
        Ok(n)
    }

    fn add(&mut self, batch: &mut LlamaBatch, seq: i32, token: LlamaToken, logits: bool) -> Result<(), String> {
        if logits {
            self.logits_at = Some(batch.n_tokens());
        }
        batch
            .add(token, self.n_past as i32, &[seq], logits)
            .map_err(|e| e.to_string())?;
        self.in_batch.push(token);
        self.n_past += 1;
        Ok(())
    }

    /// After the step's batch was decoded: records this generation's tokens in its slot's
    /// cache, samples the next token when its logits were computed, and sends its text.
    /// `Some` when the generation is over.
    pub fn decoded(&mut self, model: &LlamaModel, ctx: &LlamaContext<'_>, cache: &mut PromptCache) -> Option<Outcome> {
        cache.push(&self.in_batch);
        self.in_batch.clear();
        if self.out.is_closed() {
            return Some(self.outcome(None));
        }
        let at = self.logits_at.take()?;
        let vocab = model.vocab();
        let token = self.sampler.sample(ctx, at);
        if vocab.is_eog(token) {
            let reason = self.finish(FinishReason::Stop);
            return Some(self.outcome(reason));
        }
        self.completion += 1;
        if let Some(top) = self.logprobs {
            self.pending = Some(logprob_of(model, ctx, at, token, top));
        }
        let text = self
            .utf8
            .push(&vocab.token_to_piece(token, self.preserved.contains(&token), None));
        let step = self.stops.push(&text);
        if !self.send(step.emit) {
            return Some(self.outcome(None));
        }
        if step.stopped {
            return Some(self.outcome(Some(FinishReason::Stop)));
        }
        if self.completion >= self.max_tokens || self.n_past >= self.n_ctx {
            // Out of tokens, or no cell left for this one: the slot's context is full.
            let reason = self.finish(FinishReason::Length);
            return Some(self.outcome(reason));
        }
        self.sampled = Some(token);
        None
    }

    /// The step's decode failed: the slot's KV is unknown (the caller forgets it).
    pub fn failed(&self, message: String) -> Outcome {
        let outcome = Outcome::Failed {
            error: error(ErrorCode::Internal, message),
            completion: self.completion,
        };
        self.log_end();
        outcome
    }

    /// `reason` is `None` when the client left.
    fn outcome(&self, reason: Option<FinishReason>) -> Outcome {
        self.log_end();
        match reason {
            Some(reason) => Outcome::Finished {
                reason,
                completion: self.completion,
            },
            None => Outcome::Cancelled {
                completion: self.completion,
            },
        }
    }

    fn log_end(&self) {
        let t = self.started.elapsed();
        let secs = t.as_secs_f64();
        tracing::info!(
            request_id = %self.req.request_id,
            prompt_tokens = self.prompt.len(),
            completion_tokens = self.completion,
            ms = t.as_millis() as u64,
            tokens_per_s = if secs > 0.0 { (self.completion as f64 / secs).round() } else { 0.0 },
            "generation ended"
        );
    }

    /// Sends a piece of text with the logprob of the token just sampled; false when the
    /// client has gone.
    fn send(&mut self, text: String) -> bool {
        // With logprobs every token is an event, even one whose text is still held back (a
        // partial UTF-8 character, a possible stop sequence): its entry must not be lost.
        let logprob = self.pending.take();
        if text.is_empty() && logprob.is_none() {
            return true;
        }
        // Blocks the llama thread while this client's stream is full: the daemon reads
        // every worker stream at once, so that is a client that reads slower than the model
        // writes, and it holds the other slots back only as long as its socket buffers fill.
        self.out
            .blocking_send(Out::Event(GenerateEvent::Token { text, logprob }))
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

    /// Sends the generation's last event.
    pub fn send_last(&self, event: GenerateEvent) {
        let _ = self.out.blocking_send(Out::Event(event));
    }
}

/// The log-probability of `token` among the logits at batch index `i` (log-softmax over the
/// whole vocabulary, before any sampler), and the `top` likeliest tokens.
fn logprob_of(model: &LlamaModel, ctx: &LlamaContext<'_>, i: i32, token: LlamaToken, top: u32) -> TokenLogprob {
    let logits = ctx.get_logits_ith(i);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let entry = |id: i32| {
        let bytes = model.vocab().token_to_piece(LlamaToken(id), false, None);
        (
            String::from_utf8_lossy(&bytes).into_owned(),
            logits[id as usize] - log_sum,
            bytes,
        )
    };
    let mut order: Vec<i32> = (0..logits.len() as i32).collect();
    let k = (top as usize).min(order.len());
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
        order.truncate(k);
        order.sort_by(|a, b| logits[*b as usize].total_cmp(&logits[*a as usize]));
    }
    let (text, logprob, bytes) = entry(token.0);
    TokenLogprob {
        token: text,
        logprob,
        bytes,
        top: if k == 0 {
            Vec::new()
        } else {
            order
                .into_iter()
                .map(|id| {
                    let (token, logprob, bytes) = entry(id);
                    TopLogprob { token, logprob, bytes }
                })
                .collect()
        },
    }
}

/// The ids of the special tokens written out as text: each text that is one token.
fn preserved_ids(model: &LlamaModel, texts: &[String]) -> Vec<LlamaToken> {
    texts
        .iter()
        .filter_map(|t| match model.vocab().tokenize(t.as_bytes(), false, true).as_slice() {
            [one] => Some(*one),
            _ => None,
        })
        .collect()
}
