//! The order in which the llama thread takes its calls.
//!
//! One context serves one generation at a time, so calls wait in the engine's channel. A
//! WebUI fires background generations (a title, tags, follow-ups) after each answer; the
//! person's next message, streamed, must not wait behind all of them. So among generations
//! waiting together, an interactive (streamed) one goes first, and a background one is
//! passed over at most [`MAX_PASSED`] times, so that none waits without bound. Other calls
//! (load, unload, restore, embed) keep their place: nothing moves ahead of them.

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;

/// How often a waiting generation may be passed over by interactive ones.
pub const MAX_PASSED: u32 = 4;

/// What the picker needs to know of a waiting call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// A generation (the only calls that are reordered).
    pub generation: bool,
    pub interactive: bool,
    /// Times it was passed over.
    pub passed: u32,
}

/// The index of the call to take next from `queue` (non-empty), in arrival order. Pure.
pub fn pick(queue: &[Waiting]) -> usize {
    let first = queue[0];
    if !first.generation || first.interactive || first.passed >= MAX_PASSED {
        return 0;
    }
    queue
        .iter()
        .take_while(|w| w.generation)
        .position(|w| w.interactive)
        .unwrap_or(0)
}

/// The engine's channel and the calls taken from it but not run yet: one for the thread's
/// whole life, so that no call is lost when a model is unloaded or replaced.
pub struct Backlog<C> {
    calls: Receiver<C>,
    queue: VecDeque<(C, Waiting)>,
}

impl<C> Backlog<C> {
    pub fn new(calls: Receiver<C>) -> Backlog<C> {
        Backlog {
            calls,
            queue: VecDeque::new(),
        }
    }

    /// The next call to run: everything that arrived is looked at, then [`pick`] chooses;
    /// blocks while there is none. `None` when the channel is closed and nothing waits.
    pub fn next(&mut self, describe: impl Fn(&C) -> Waiting) -> Option<C> {
        if self.queue.is_empty() {
            let call = self.calls.recv().ok()?;
            let w = describe(&call);
            self.queue.push_back((call, w));
        }
        while let Ok(call) = self.calls.try_recv() {
            let w = describe(&call);
            self.queue.push_back((call, w));
        }
        let order: Vec<Waiting> = self.queue.iter().map(|(_, w)| *w).collect();
        let i = pick(&order);
        for (_, w) in self.queue.iter_mut().take(i) {
            w.passed += 1;
        }
        self.queue.remove(i).map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(interactive: bool, passed: u32) -> Waiting {
        Waiting {
            generation: true,
            interactive,
            passed,
        }
    }

    const OTHER: Waiting = Waiting {
        generation: false,
        interactive: false,
        passed: 0,
    };

    #[test]
    fn interactive_generations_go_first_within_bounds() {
        let (bg, chat) = (generation(false, 0), generation(true, 0));
        assert_eq!(pick(&[bg, bg, chat]), 2, "the streamed chat jumps the background ones");
        assert_eq!(pick(&[chat, bg]), 0);
        assert_eq!(pick(&[bg, bg]), 0, "arrival order otherwise");
        assert_eq!(
            pick(&[bg, OTHER, chat]),
            0,
            "nothing moves ahead of an unload or a load"
        );
        assert_eq!(pick(&[OTHER, chat]), 0);
        assert_eq!(pick(&[generation(false, MAX_PASSED), chat]), 0, "no wait without bound");
    }

    #[test]
    fn a_backlog_passes_a_background_generation_at_most_max_passed_times() {
        let (tx, rx) = std::sync::mpsc::channel::<(u32, bool)>();
        let mut b = Backlog::new(rx);
        let describe = |c: &(u32, bool)| generation(c.1, 0);
        tx.send((0, false)).unwrap();
        let mut taken = Vec::new();
        for i in 1..=10 {
            tx.send((i, true)).unwrap();
            taken.push(b.next(describe).unwrap().0);
        }
        drop(tx);
        while let Some(c) = b.next(describe) {
            taken.push(c.0);
        }
        let position = taken.iter().position(|n| *n == 0).unwrap();
        assert_eq!(position, MAX_PASSED as usize, "{taken:?}");
        assert_eq!(taken.len(), 11);
    }
}
