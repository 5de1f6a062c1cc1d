//! Stop sequences over a stream of text pieces.
//!
//! The model produces text a token at a time, and a stop sequence may span several tokens.
//! [`StopMatcher`] holds back any tail of the text that could still become a stop sequence,
//! releases it as soon as it cannot, and never releases the stop sequence itself (nor anything
//! after it). Pure: no llama.cpp, tested on strings.

/// What one [`StopMatcher::push`] lets through.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// Text that is certainly not part of a stop sequence (may be empty).
    pub emit: String,
    /// A stop sequence completed: generation ends, and the rest is discarded.
    pub stopped: bool,
}

#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty strings are ignored (they would match everywhere).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feeds the next piece of generated text.
    pub fn push(&mut self, text: &str) -> Step {
        self.held.push_str(text);
        // The earliest completed stop sequence wins.
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return Step { emit, stopped: true };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        Step { emit, stopped: false }
    }

    /// The text still held back, released when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop sequence.
    fn partial_suffix_len(&self) -> usize {
        let held = self.held.as_bytes();
        let mut best = 0;
        for stop in &self.stops {
            let stop = stop.as_bytes();
            let max = (stop.len() - 1).min(held.len());
            for len in (best + 1..=max).rev() {
                if held[held.len() - len..] == stop[..len] {
                    best = len;
                    break;
                }
            }
        }
        // A match starts where a stop sequence starts, so on a character boundary.
        debug_assert!(self.held.is_char_boundary(self.held.len() - best));
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(stops: &[&str]) -> StopMatcher {
        StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Feeds all pieces; returns what was emitted (including the final flush) and whether it
    /// stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = matcher(stops);
        let mut out = String::new();
        for p in pieces {
            let step = m.push(p);
            out.push_str(&step.emit);
            if step.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn no_stops_passes_everything_through_at_once() {
        let mut m = matcher(&[]);
        assert_eq!(
            m.push("hello"),
            Step {
                emit: "hello".into(),
                stopped: false
            }
        );
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn stop_inside_one_piece_cuts_before_it() {
        assert_eq!(run(&["END"], &["abcENDdef"]), ("abc".into(), true));
    }

    #[test]
    fn stop_split_across_pieces_is_held_then_swallowed() {
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("hi <").emit, "hi ");
        assert_eq!(m.push("/").emit, "");
        let step = m.push("s>tail");
        assert_eq!(
            step,
            Step {
                emit: "".into(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_text_is_released_when_it_cannot_match() {
        let mut m = matcher(&["</s>"]);
        assert_eq!(m.push("a </").emit, "a ");
        assert_eq!(m.push("b").emit, "</b");
        assert_eq!(m.push("<").emit, "");
        assert_eq!(m.finish(), "<");
    }

    #[test]
    fn concatenation_is_exact_without_a_match() {
        let pieces = ["St", "op", " s", "to", "p", "p", "ed ", "\n", "\n"];
        assert_eq!(run(&["stop!", "\n\n\n"], &pieces), ("Stop stopped \n\n".into(), false));
    }

    #[test]
    fn earliest_stop_wins() {
        assert_eq!(run(&["cd", "b"], &["abcd"]), ("a".into(), true));
        // A longer stop that started earlier but has not completed does not win.
        assert_eq!(run(&["abcx", "c"], &["ab", "c"]), ("ab".into(), true));
    }

    #[test]
    fn overlapping_prefixes_hold_the_longest() {
        let mut m = matcher(&["aab"]);
        assert_eq!(m.push("xaa").emit, "x");
        assert_eq!(m.push("a").emit, "a");
        assert!(m.push("b").stopped);
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), true));
        assert_eq!(run(&["éé"], &["caé", "x"]), ("caéx".into(), false));
        assert_eq!(run(&["日本"], &["今日", "は"]), ("今日は".into(), false));
    }

    #[test]
    fn empty_stop_strings_are_ignored() {
        assert_eq!(run(&[""], &["abc"]), ("abc".into(), false));
    }
}
