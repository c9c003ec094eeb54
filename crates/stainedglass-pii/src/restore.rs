//! Turning stand-ins back into the real values in a reply that arrives in pieces: text that
//! could still be the start of a stand-in is held back until the next piece decides it, so a
//! stand-in split across two pieces is restored all the same, and the caller never sees one.
//! Stand-ins are replaced only as whole words (never inside a longer word), longest first.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Restores one reply.
pub struct Restorer {
    ac: Option<AhoCorasick>,
    stand_ins: Vec<String>,
    values: Vec<String>,
    buf: String,
}

impl Drop for Restorer {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.values.zeroize();
        self.stand_ins.zeroize();
        self.buf.zeroize();
    }
}

/// A character that continues a word as the detector's name pattern reads it: a letter or a
/// mark, by general category (not `char::is_alphabetic`, which also takes "🄰"). (A
/// digit does not: the detector may end a name right before one, and the stand-in put there
/// must come back.)
pub(crate) fn is_word(c: Option<char>) -> bool {
    static LETTER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"^[\p{L}\p{M}]$").unwrap_or_else(|e| panic!("letter pattern: {e}"))
    });
    c.is_some_and(|c| LETTER.is_match(c.encode_utf8(&mut [0; 4])))
}

/// Whether `stand_in` would be the end of a longer word after `before` ("Jameson" holds no
/// "James"); a stand-in that starts with "+" or a digit joins no word.
fn glued_before(stand_in: &str, before: Option<char>) -> bool {
    is_word(stand_in.chars().next()) && is_word(before)
}

/// Whether `stand_in` would be the start of a longer word before `after`.
fn glued_after(stand_in: &str, after: Option<char>) -> bool {
    is_word(stand_in.chars().last()) && is_word(after)
}

impl Restorer {
    pub(crate) fn new(pairs: &[(String, String)]) -> Self {
        let stand_ins: Vec<String> = pairs.iter().map(|(a, _)| a.clone()).collect();
        let ac = (!stand_ins.is_empty())
            .then(|| {
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&stand_ins)
                    .ok()
            })
            .flatten();
        Self {
            ac,
            values: pairs.iter().map(|(_, b)| b.clone()).collect(),
            stand_ins,
            buf: String::new(),
        }
    }

    /// `text` with whole-word stand-ins replaced; `end` says whether the text is final (a
    /// stand-in touching the end is then whole).
    fn replace(&self, text: &str) -> String {
        let Some(ac) = &self.ac else {
            return text.to_string();
        };
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for m in ac.find_iter(text) {
            let before = text[..m.start()].chars().last();
            let after = text[m.end()..].chars().next();
            let s = &self.stand_ins[m.pattern().as_usize()];
            if glued_before(s, before) || glued_after(s, after) {
                continue;
            }
            out.push_str(&text[at..m.start()]);
            out.push_str(&self.values[m.pattern().as_usize()]);
            at = m.end();
        }
        out.push_str(&text[at..]);
        out
    }

    /// Where the held-back tail starts: the first word start from which the rest of the buffer
    /// is a prefix of some stand-in (or a whole one, whose next character is not known yet).
    fn hold_from(&self) -> usize {
        let longest = self.stand_ins.iter().map(String::len).max().unwrap_or(0);
        let lo = self.buf.len().saturating_sub(longest);
        for (k, _) in self.buf.char_indices().filter(|&(k, _)| k >= lo) {
            let tail = &self.buf[k..];
            let before = self.buf[..k].chars().last();
            if self
                .stand_ins
                .iter()
                .any(|s| s.starts_with(tail) && !glued_before(s, before))
            {
                return k;
            }
        }
        self.buf.len()
    }

    /// Feeds the next piece of the reply; returns the text that is final.
    pub fn push(&mut self, piece: &str) -> String {
        self.buf.push_str(piece);
        let mut hold = self.hold_from();
        // Never cut through a whole stand-in that the held-back tail begins inside
        // ("2025-11-20" before "20 Cedar Street" held back).
        if let Some(ac) = &self.ac {
            while let Some(m) = ac
                .find_iter(self.buf.as_str())
                .find(|m| m.start() < hold && hold < m.end())
            {
                hold = m.start();
            }
        }
        let ready: String = self.buf.drain(..hold).collect();
        self.replace(&ready)
    }

    /// The end of the reply: whatever was held back.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.buf);
        self.replace(&rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs() -> Vec<(String, String)> {
        [
            ("James Carter", "Michael Roy"),
            ("James", "Michael"),
            ("Carter", "Roy"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    /// Any split of the reply into pieces restores to the same text as the whole.
    #[test]
    fn restores_across_any_split_and_only_whole_words() {
        let reply = "Dear James Carter, thanks. Carterville is far; James will call. JamesX.";
        let want = "Dear Michael Roy, thanks. Carterville is far; Michael will call. JamesX.";
        for step in 1..=reply.len() {
            let mut r = Restorer::new(&pairs());
            let mut out = String::new();
            let mut at = 0;
            while at < reply.len() {
                let mut end = (at + step).min(reply.len());
                while !reply.is_char_boundary(end) {
                    end += 1;
                }
                out.push_str(&r.push(&reply[at..end]));
                at = end;
            }
            out.push_str(&r.finish());
            assert_eq!(out, want, "pieces of {step} bytes");
        }
    }

    #[test]
    fn a_stand_in_is_never_shown_half() {
        let mut r = Restorer::new(&pairs());
        assert_eq!(r.push("Hello Ja"), "Hello ");
        assert_eq!(r.push("mes Car"), "");
        assert_eq!(r.push("ter!"), "Michael Roy!");
    }
}
