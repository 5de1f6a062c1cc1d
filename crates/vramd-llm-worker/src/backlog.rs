//! The order in which the llama thread takes its calls.
//!
//! A context serves `parallel` generations at once (its slots); the rest wait in the
//! engine's channel. A WebUI fires background generations (a title, tags, follow-ups) after
//! each answer; the person's next message, streamed, must not wait behind all of them. So
//! among generations waiting together, an interactive (streamed) one goes first, and a
//! background one is passed over at most [`MAX_PASSED`] times, so that none waits without
//! bound. Other calls (load, unload, restore, embed) keep their place: nothing moves ahead
//! of them, and they run once the running generations have ended.

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

/// What [`Backlog::take`] found.
pub enum Take<C> {
    Call(C),
    /// The next call may not run yet (or none waits, and the caller does not block).
    Wait,
    /// The channel is closed and nothing waits.
    Closed,
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
        match self.take(describe, |_| true, true) {
            Take::Call(c) => Some(c),
            Take::Wait | Take::Closed => None,
        }
    }

    /// The call [`pick`] chooses, when `may_run` lets it run now; it stays first otherwise
    /// (and nothing behind it is taken). With `block`, waits for a call while none waits.
    pub fn take(
        &mut self,
        describe: impl Fn(&C) -> Waiting,
        may_run: impl Fn(&Waiting) -> bool,
        block: bool,
    ) -> Take<C> {
        if self.queue.is_empty() && block {
            let Ok(call) = self.calls.recv() else {
                return Take::Closed;
            };
            let w = describe(&call);
            self.queue.push_back((call, w));
        }
        while let Ok(call) = self.calls.try_recv() {
            let w = describe(&call);
            self.queue.push_back((call, w));
        }
        if self.queue.is_empty() {
            return Take::Wait;
        }
        let order: Vec<Waiting> = self.queue.iter().map(|(_, w)| *w).collect();
        let i = pick(&order);
        if !may_run(&order[i]) {
            return Take::Wait;
        }
        for (_, w) in self.queue.iter_mut().take(i) {
            w.passed += 1;
        }
        self.queue.remove(i).map_or(Take::Wait, |(c, _)| Take::Call(c))
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

    #[test]
    fn a_call_that_may_not_run_yet_keeps_its_place_and_holds_those_behind() {
        let (tx, rx) = std::sync::mpsc::channel::<(u32, bool)>();
        let mut b = Backlog::new(rx);
        let describe = |c: &(u32, bool)| if c.0 == 9 { OTHER } else { generation(c.1, 0) };
        tx.send((9, false)).unwrap();
        tx.send((1, true)).unwrap();
        // Slots are busy: the unload-like call waits, and the chat behind it too.
        assert!(matches!(b.take(describe, |w| w.generation, false), Take::Wait));
        assert!(matches!(b.take(describe, |_| true, false), Take::Call((9, _))));
        assert!(matches!(b.take(describe, |_| true, false), Take::Call((1, _))));
        assert!(matches!(b.take(describe, |_| true, false), Take::Wait), "nothing waits");
        drop(tx);
        assert!(matches!(b.take(describe, |_| true, true), Take::Closed));
    }
}
