//! Streaming UTF-8 decoding of token pieces.
//!
//! A token's bytes may end in the middle of a multi-byte character (byte-fallback tokens emit
//! one byte each), so pieces are decoded through [`Utf8Stream`], which keeps an incomplete
//! trailing sequence for the next piece. Every string it returns is valid UTF-8 and their
//! concatenation equals the lossy decoding of all the bytes.

#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Decodes what can be decoded; invalid sequences become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    // `good` is the valid prefix the error reported.
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        // Incomplete sequence at the end: keep it for the next piece.
                        None => {
                            rest = bad;
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        out
    }

    /// Flushes an incomplete trailing sequence (as U+FFFD) at the end of generation.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_multibyte_characters_are_joined() {
        let text = "é日🙂";
        let mut d = Utf8Stream::default();
        let mut out = String::new();
        for b in text.as_bytes() {
            out.push_str(&d.push(&[*b]));
        }
        out.push_str(&d.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn pieces_are_emitted_as_soon_as_complete() {
        let mut d = Utf8Stream::default();
        assert_eq!(d.push(b"ab\xc3"), "ab");
        assert_eq!(d.push(b"\xa9c"), "\u{e9}c");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut d = Utf8Stream::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(d.push(b"\xe6\x97"), "");
        assert_eq!(d.finish(), "\u{fffd}");
    }
}
