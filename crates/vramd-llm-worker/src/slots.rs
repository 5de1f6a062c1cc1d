//! Parallel slots: `parallel` sequences of one context, decoded together in one batch per
//! step (continuous batching, as llama.cpp's server does).
//!
//! Each slot is a sequence id of the context with its own KV (`n_ctx` tokens: the context is
//! created `parallel` times larger, without a unified KV cache, so one long conversation
//! cannot take another's cells) and its own prompt cache. A request goes to the free slot
//! that already holds the longest prefix of its prompt, when that prefix is most of the
//! prompt or most of what the slot holds; else to the one used least recently. So a
//! conversation's next turn finds its KV again, and a WebUI's background request (a title,
//! whose prompt shares only the chat template's first tokens) goes to another slot instead
//! of throwing that KV away. A step puts the token each generating slot sampled last into
//! the batch first, then fills what room is left with prompt chunks, so that a long prompt
//! arriving does not stall the streams already running for more than one batch.
//!
//! The choices ([`choose`], [`shares`]) are pure functions, tested on their own; [`Slots`]
//! applies them to the context.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::cache::PromptCache;
use crate::generate::{Outcome, Running};

/// A free slot as [`choose`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    pub index: usize,
    /// Prompt tokens whose KV it holds (or keeps in host memory).
    pub prefix: usize,
    /// Tokens it holds in all.
    pub held: usize,
    /// Tokens in the prompt.
    pub prompt: usize,
    /// When it last served a request (a counter; higher is more recent).
    pub used: u64,
}

/// The slot for a new request among the free ones (non-empty): the longest cached prefix
/// that is more than half the prompt or more than half of what its slot holds, else the
/// least recently used slot, whose cache is the least likely to be wanted again. Pure.
pub fn choose(free: &[Free]) -> usize {
    let worth = |f: &&Free| f.prefix > 0 && (2 * f.prefix > f.prompt || 2 * f.prefix > f.held);
    let best = (free.iter().filter(worth)).max_by_key(|f| (f.prefix, std::cmp::Reverse(f.used)));
    match best {
        Some(f) => f.index,
        None => free.iter().min_by_key(|f| f.used).map_or(0, |f| f.index),
    }
}

/// How many tokens each running slot puts into a batch of `room` tokens, given the prompt
/// tokens each still has to decode (0: it is generating, and has one sampled token). Slots
/// that generate come first, one token each, then prompts in slot order with what is left.
/// Pure.
pub fn shares(prefill_left: &[usize], room: usize) -> Vec<usize> {
    let mut out = vec![0; prefill_left.len()];
    let mut room = room;
    for (i, left) in prefill_left.iter().enumerate() {
        if *left == 0 && room > 0 {
            out[i] = 1;
            room -= 1;
        }
    }
    for (i, left) in prefill_left.iter().enumerate() {
        if *left > 0 {
            out[i] = (*left).min(room);
            room -= out[i];
        }
    }
    out
}

struct Slot {
    cache: PromptCache,
    running: Option<Running>,
    used: u64,
}

/// A generation that ended in a step, for the engine to answer.
pub struct Ended {
    pub running: Running,
    pub outcome: Outcome,
}

pub struct Slots {
    slots: Vec<Slot>,
    /// Tokens of context each slot has.
    n_ctx: usize,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    clock: u64,
}

impl Slots {
    /// `parallel` slots of `n_ctx` tokens each, stepped in batches of `n_batch` tokens.
    pub fn new(parallel: u32, n_ctx: usize, n_batch: usize) -> Slots {
        let n_batch = n_batch.max(1);
        Slots {
            slots: (0..parallel.max(1) as i32)
                .map(|seq| Slot {
                    cache: PromptCache::new(seq),
                    running: None,
                    used: 0,
                })
                .collect(),
            n_ctx,
            batch: LlamaBatch::new(n_batch, 1),
            n_batch,
            clock: 0,
        }
    }

    /// Tokens of context each slot has.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// No slot is generating.
    pub fn idle(&self) -> bool {
        self.slots.iter().all(|s| s.running.is_none())
    }

    pub fn has_free(&self) -> bool {
        self.slots.iter().any(|s| s.running.is_none())
    }

    /// Picks the free slot for `prompt` ([`choose`]) and makes its context hold only the
    /// prefix it shares with `prompt`; returns the slot and that prefix's length.
    pub fn claim(&mut self, ctx: &mut LlamaContext<'_>, prompt: &[LlamaToken]) -> (usize, usize) {
        let free: Vec<Free> = (self.slots.iter().enumerate())
            .filter(|(_, s)| s.running.is_none())
            .map(|(index, s)| Free {
                index,
                prefix: s.cache.common_prefix(prompt),
                held: s.cache.held(),
                prompt: prompt.len(),
                used: s.used,
            })
            .collect();
        let i = choose(&free);
        self.clock += 1;
        self.slots[i].used = self.clock;
        (i, self.slots[i].cache.reuse(ctx, prompt))
    }

    /// Starts `running` on slot `i` (claimed).
    pub fn start(&mut self, i: usize, running: Running) {
        self.slots[i].running = Some(running);
    }

    /// One step: a batch of every running slot's next tokens, decoded together; returns the
    /// generations that ended.
    pub fn step(&mut self, model: &LlamaModel, ctx: &mut LlamaContext<'_>) -> Vec<Ended> {
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].running.is_some())
            .collect();
        let left: Vec<usize> = running
            .iter()
            .map(|i| self.slots[*i].running.as_ref().map_or(0, Running::prefill_left))
            .collect();
        self.batch.clear();
        let mut ended = Vec::new();
        let mut stepped = Vec::new();
        for (&i, share) in running.iter().zip(shares(&left, self.n_batch)) {
            if share == 0 {
                continue;
            }
            let filled = match self.slots[i].running.as_mut() {
                Some(r) => r.fill(&mut self.batch, i as i32, share),
                None => continue,
            };
            match filled {
                Ok(_) => stepped.push(i),
                Err(e) => ended.push(self.end(ctx, i, format!("batch: {e}"))),
            }
        }
        if stepped.is_empty() {
            return ended;
        }
        if let Err(e) = ctx.decode(&mut self.batch) {
            let msg = format!("decode: {e}");
            ended.extend(stepped.iter().map(|&i| self.end(ctx, i, msg.clone())));
            return ended;
        }
        for i in stepped {
            let slot = &mut self.slots[i];
            let Some(r) = slot.running.as_mut() else { continue };
            if let Some(outcome) = r.decoded(model, ctx, &mut slot.cache) {
                let running = slot.running.take().expect("running");
                ended.push(Ended { running, outcome });
            }
        }
        ended
    }

    /// Ends slot `i`'s generation with a failure; its KV is unknown, so it is forgotten.
    fn end(&mut self, ctx: &mut LlamaContext<'_>, i: usize, message: String) -> Ended {
        let slot = &mut self.slots[i];
        slot.cache.forget(ctx);
        let running = slot.running.take().expect("running");
        let outcome = running.failed(message);
        Ended { running, outcome }
    }

    /// Before the context is freed (all slots idle): copies each slot's KV to host memory,
    /// the most recently used first, while the total fits `budget`. Returns the bytes kept.
    pub fn keep(&mut self, ctx: &LlamaContext<'_>, budget: u64) -> u64 {
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        order.sort_by_key(|i| std::cmp::Reverse(self.slots[*i].used));
        let mut kept = 0;
        for i in order {
            kept += self.slots[i].cache.keep(ctx, budget - kept);
        }
        kept
    }

    /// After the context is recreated: puts every kept KV back. Returns the tokens restored.
    pub fn restore(&mut self, ctx: &mut LlamaContext<'_>) -> usize {
        self.slots.iter_mut().map(|s| s.cache.restore(ctx)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free slot holding `held` tokens, `prefix` of them the start of a 100-token prompt.
    fn free(index: usize, prefix: usize, held: usize, used: u64) -> Free {
        Free {
            index,
            prefix,
            held,
            prompt: 100,
            used,
        }
    }

    #[test]
    fn a_request_goes_to_the_slot_with_its_prefix_else_the_least_recently_used() {
        let next_turn = [free(0, 0, 0, 5), free(1, 90, 95, 1), free(2, 3, 50, 9)];
        assert_eq!(choose(&next_turn), 1, "the conversation's own slot");
        assert_eq!(
            choose(&[free(0, 0, 0, 5), free(1, 0, 0, 2), free(2, 0, 0, 9)]),
            1,
            "LRU"
        );
        assert_eq!(
            choose(&[free(3, 70, 80, 9), free(5, 70, 80, 4)]),
            5,
            "a tie on the prefix goes to the older slot"
        );
        assert_eq!(choose(&[free(4, 0, 0, 0)]), 4);
        // A title request shares the chat template's first tokens with the conversation:
        // it takes the empty slot, and the conversation keeps its KV.
        assert_eq!(choose(&[free(0, 3, 400, 7), free(1, 0, 0, 0)]), 1);
        // A long document pasted into a conversation: little of the prompt, but all of what
        // the slot holds.
        assert_eq!(choose(&[free(0, 40, 45, 7), free(1, 0, 0, 0)]), 0);
    }

    #[test]
    fn generating_slots_get_their_token_before_prompts_fill_the_batch() {
        assert_eq!(shares(&[0, 900, 0, 100], 512), vec![1, 510, 1, 0]);
        assert_eq!(shares(&[30, 0, 50], 512), vec![30, 1, 50]);
        assert_eq!(shares(&[0, 0, 0], 2), vec![1, 1, 0], "a batch smaller than the slots");
        assert_eq!(shares(&[], 512), Vec::<usize>::new());
    }

    #[test]
    fn shares_never_exceed_the_batch_or_what_is_left() {
        for room in [1, 2, 7, 512] {
            for left in [vec![0, 3, 0], vec![600, 600], vec![1, 0, 1000, 0, 5]] {
                let s = shares(&left, room);
                assert!(s.iter().sum::<usize>() <= room, "{left:?} {room} {s:?}");
                for (l, n) in left.iter().zip(&s) {
                    assert!(*n <= (*l).max(1));
                }
                assert!(s.iter().any(|n| *n > 0), "progress: {left:?} {room} {s:?}");
            }
        }
    }
}
