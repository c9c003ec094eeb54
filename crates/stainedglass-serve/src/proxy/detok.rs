//! Turns generated pieces (token ids, or text from a text-returning upstream) into text deltas
//! that are safe to show: no half UTF-8 characters, and no text that might be the start of a
//! stop string; once a stop string appears the reply ends just before it.

use stainedglass_text::TextTokenizer;

pub struct Collector<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    text: String,
    emitted: usize,
    stops: Vec<String>,
    stopped: bool,
}

impl<'a> Collector<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, stops: Vec<String>) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            text: String::new(),
            emitted: 0,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
        }
    }

    /// A stop string was found: the reply is complete.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    pub fn completion_tokens(&self) -> usize {
        self.ids.len()
    }

    fn full(&self) -> String {
        if self.ids.is_empty() {
            self.text.clone()
        } else {
            self.tokenizer
                .decode(&self.ids, true)
                .unwrap_or_else(|_| self.text.clone())
        }
    }

    pub fn push_token(&mut self, id: u32) -> String {
        self.ids.push(id);
        self.advance(false)
    }

    pub fn push_text(&mut self, t: &str) -> String {
        self.text.push_str(t);
        self.advance(false)
    }

    /// Whatever is left once the upstream is done.
    pub fn finish(&mut self) -> String {
        self.advance(true)
    }

    fn advance(&mut self, last: bool) -> String {
        if self.stopped {
            return String::new();
        }
        let full = self.full();
        if !last && full.ends_with('\u{FFFD}') {
            return String::new();
        }
        let Some(fresh) = full.get(self.emitted..) else {
            return String::new();
        };
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| fresh.find(s.as_str()))
            .min()
        {
            self.stopped = true;
            let out = fresh[..at].to_string();
            self.emitted += at;
            return out;
        }
        let mut safe = fresh.len();
        if !last {
            for s in &self.stops {
                for k in (1..s.len()).rev() {
                    if s.is_char_boundary(k) && fresh.ends_with(&s[..k]) {
                        safe = safe.min(fresh.len() - k);
                        break;
                    }
                }
            }
        }
        let out = fresh[..safe].to_string();
        self.emitted += safe;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok() -> TextTokenizer {
        let json = serde_json::json!({
            "version": "1.0",
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "<": 3, "/": 4, ">": 5},
                      "merges": []},
            "decoder": {"type": "Fuse"}
        });
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).expect("w");
        TextTokenizer::from_folder(dir.path()).expect("tok")
    }

    #[test]
    fn holds_back_stop_prefixes_and_cuts_at_the_stop() {
        let t = tok();
        let mut c = Collector::new(&t, vec!["</".into()]);
        let mut out = String::new();
        for id in [0, 1, 3] {
            out.push_str(&c.push_token(id));
        }
        // "<" might start "</": held back.
        assert_eq!(out, "ab");
        out.push_str(&c.push_token(2));
        assert_eq!(out, "ab<c");
        out.push_str(&c.push_token(3));
        out.push_str(&c.push_token(4));
        assert!(c.stopped());
        out.push_str(&c.push_token(0));
        out.push_str(&c.finish());
        assert_eq!(out, "ab<c");

        let mut c = Collector::new(&t, vec![]);
        let mut out = c.push_text("hel");
        out.push_str(&c.push_text("lo"));
        out.push_str(&c.finish());
        assert_eq!(out, "hello");
    }
}
