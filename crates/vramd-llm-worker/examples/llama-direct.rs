//! The benchmark suite's reference for row 1 and 2 (benches/suite.py): prompt processing and
//! generation with `llama-cpp-2` called in-process, with the same crate, features, build
//! flags, threads, context and sampler as the LLM worker, and no daemon, socket or HTTP in
//! between. llama.cpp's own `llama-bench` is not vendored by the crate, so this small program
//! follows its method: a fresh KV cache each round, the prompt decoded in batches of 512,
//! then `--tg` tokens generated one by one (here also sampled greedily, as vramd does, with
//! the end-of-generation tokens banned so that every round generates all of them).
//!
//! `llama-direct MODEL PROMPT_FILE --threads N --tg 128 --rounds R` prints the model's
//! end-of-generation token ids (`{"eog": [...]}`, for the other side to ban them too), then
//! one JSON line per round: `{"prompt_tokens", "ttft_ms", "tg_tokens", "tg_ms"}`. `ttft_ms` is the prompt's
//! decode and the first token's sampling (what a client sees as time to first token, less
//! the transport); `tg_ms` the rest of the tokens.
//!
//! With `--parallel N` (row 7) it decodes N sequences of the prompt at once, as vramd's slots
//! do: one batch of N tokens per step; `tg_tokens` and `tg_ms` are then those of all N
//! sequences together, the engine's own aggregate for N concurrent clients.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;

struct Args {
    model: String,
    prompt: String,
    threads: i32,
    tg: usize,
    rounds: usize,
    ctx: u32,
    parallel: usize,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let usage = "usage: llama-direct MODEL PROMPT_FILE [--threads N] [--tg N] [--rounds N] [--ctx N] [--parallel N]";
    let model = it.next().ok_or(usage)?;
    let prompt_file = it.next().ok_or(usage)?;
    let prompt = std::fs::read_to_string(&prompt_file).map_err(|e| format!("{prompt_file}: {e}"))?;
    let mut a = Args {
        model,
        prompt,
        threads: 2,
        tg: 128,
        rounds: 3,
        ctx: 4096,
        parallel: 1,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(usage)?;
        let n: u64 = value.parse().map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--threads" => a.threads = n as i32,
            "--tg" => a.tg = n as usize,
            "--rounds" => a.rounds = n as usize,
            "--ctx" => a.ctx = n as u32,
            "--parallel" => a.parallel = (n as usize).max(1),
            _ => return Err(usage.into()),
        }
    }
    Ok(a)
}

// The worker's own search for llama.cpp's CPU modules, when they are modules.
#[cfg(feature = "dynamic-backends")]
#[path = "../src/backends.rs"]
mod backends;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    #[cfg(feature = "dynamic-backends")]
    eprintln!("{}", backends::load()?);
    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &a.model, &LlamaModelParams::default())?;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(a.ctx * a.parallel as u32))
        .with_n_seq_max(a.parallel as u32)
        .with_n_batch(512)
        .with_n_threads(a.threads)
        .with_n_threads_batch(a.threads);
    let mut ctx = model.new_context(&backend, params)?;
    // BOS as the model asks, special tokens parsed: what the worker does with a prompt.
    let prompt = model.vocab().tokenize(a.prompt.as_bytes(), true, true);
    let eog: Vec<LlamaLogitBias> = (0..model.n_vocab())
        .map(LlamaToken)
        .filter(|t| model.vocab().is_eog(*t))
        .map(|t| LlamaLogitBias::new(t, f32::NEG_INFINITY))
        .collect();
    let ids: Vec<String> = eog.iter().map(|b| b.token().0.to_string()).collect();
    println!("{{\"eog\": [{}]}}", ids.join(", "));
    let mut batch = LlamaBatch::new(512, 1);
    for _ in 0..a.rounds {
        ctx.clear_kv_cache();
        let mut samplers: Vec<LlamaSampler> = (0..a.parallel)
            .map(|_| {
                let bias = LlamaSampler::logit_bias(model.n_vocab(), &eog);
                LlamaSampler::chain([bias, LlamaSampler::greedy()], true)
            })
            .collect();
        // The prompt of every sequence, one after the other, each sampled at its last token.
        let t0 = Instant::now();
        let mut tokens = Vec::new();
        for (seq, sampler) in samplers.iter_mut().enumerate() {
            for (c, chunk) in prompt.chunks(512).enumerate() {
                batch.clear();
                for (j, &token) in chunk.iter().enumerate() {
                    let pos = c * 512 + j;
                    batch.add(token, pos as i32, &[seq as i32], pos + 1 == prompt.len())?;
                }
                ctx.decode(&mut batch)?;
            }
            tokens.push(sampler.sample(&ctx, batch.n_tokens() - 1));
        }
        let ttft = t0.elapsed();
        // Then one batch per step: every sequence's last token.
        let t1 = Instant::now();
        for n in 1..a.tg {
            batch.clear();
            for (seq, token) in tokens.iter().enumerate() {
                batch.add(*token, (prompt.len() + n - 1) as i32, &[seq as i32], true)?;
            }
            ctx.decode(&mut batch)?;
            for (i, sampler) in samplers.iter_mut().enumerate() {
                tokens[i] = sampler.sample(&ctx, i as i32);
            }
        }
        let tg = t1.elapsed();
        println!(
            "{{\"prompt_tokens\": {}, \"ttft_ms\": {:.3}, \"tg_tokens\": {}, \"tg_ms\": {:.3}}}",
            prompt.len(),
            ttft.as_secs_f64() * 1000.0,
            (a.tg - 1) * a.parallel,
            tg.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
