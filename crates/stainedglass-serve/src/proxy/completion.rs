//! One chat completion as a pure state machine over the upstream's pieces. The plain reply
//! (collect, then one JSON body) and the streamed one (a chunk per delta) are both built from
//! it, so they cut at stop strings, end and count tokens alike.

use stainedglass_text::TextTokenizer;

use super::detok::Collector;
use super::upstream::Piece;
use crate::protocol::{Finish, Usage};

/// A completion in progress.
pub struct Completion<'a> {
    collector: Collector<'a>,
    finish: Option<Finish>,
    usage: Option<Usage>,
}

/// How a completion ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    /// Text held back until the end (a possible stop-string prefix, half a character).
    pub rest: String,
    pub finish: Finish,
    /// The upstream's count when it gave one, else the tokens received.
    pub completion_tokens: usize,
}

impl<'a> Completion<'a> {
    pub fn new(tokenizer: &'a TextTokenizer, stops: Vec<String>) -> Self {
        Self {
            collector: Collector::new(tokenizer, stops),
            finish: None,
            usage: None,
        }
    }

    /// Feeds one piece; returns the text that may be shown now (often empty). Pieces after the
    /// end (a stop string, or the upstream's `Done`) are ignored.
    pub fn push(&mut self, piece: Piece) -> String {
        if self.finish.is_some() {
            return String::new();
        }
        let delta = match piece {
            Piece::Token(t) => self.collector.push_token(t),
            Piece::Text(t) => self.collector.push_text(&t),
            Piece::Done { finish, usage } => {
                self.finish = Some(finish);
                self.usage = usage;
                return String::new();
            }
        };
        if self.collector.stopped() {
            self.finish = Some(Finish::Stop);
        }
        delta
    }

    /// Whether the completion has ended (stop string or `Done`); the caller stops reading.
    pub fn is_done(&self) -> bool {
        self.finish.is_some()
    }

    /// Ends the completion. An upstream that closed without `Done` ran out of tokens.
    pub fn end(mut self) -> Ending {
        Ending {
            rest: self.collector.finish(),
            finish: self.finish.unwrap_or(Finish::Length),
            completion_tokens: self
                .usage
                .map(|u| u.completion_tokens)
                .unwrap_or(self.collector.completion_tokens()),
        }
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

    fn run(c: &mut Completion, pieces: Vec<Piece>) -> String {
        let mut out = String::new();
        for p in pieces {
            out.push_str(&c.push(p));
            if c.is_done() {
                break;
            }
        }
        out
    }

    #[test]
    fn a_stop_string_ends_the_completion_before_it() {
        let t = tok();
        let mut c = Completion::new(&t, vec!["</".into()]);
        let pieces = [0, 3, 1, 3, 4, 2].map(Piece::Token).to_vec();
        let shown = run(&mut c, pieces);
        assert!(c.is_done());
        // Later pieces change nothing.
        assert_eq!(c.push(Piece::Token(0)), "");
        let e = c.end();
        assert_eq!(format!("{shown}{}", e.rest), "a<b");
        assert_eq!(e.finish, Finish::Stop);
        assert_eq!(e.completion_tokens, 5);
    }

    #[test]
    fn done_gives_the_reason_and_count_and_a_closed_stream_means_length() {
        let t = tok();
        let mut c = Completion::new(&t, vec![]);
        let done = Piece::Done {
            finish: Finish::Stop,
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 9,
            }),
        };
        let shown = run(&mut c, vec![Piece::Text("ab".into()), done]);
        let e = c.end();
        assert_eq!(
            (shown.as_str(), e.finish, e.completion_tokens),
            ("ab", Finish::Stop, 9)
        );

        let mut c = Completion::new(&t, vec![">".into()]);
        let shown = run(&mut c, vec![Piece::Token(0), Piece::Token(1)]);
        assert!(!c.is_done());
        let e = c.end();
        assert_eq!(format!("{shown}{}", e.rest), "ab");
        assert_eq!((e.finish, e.completion_tokens), (Finish::Length, 2));
    }
}
