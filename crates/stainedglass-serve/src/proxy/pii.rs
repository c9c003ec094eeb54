//! Personal data in the proxy: before the chat template, the tokenizer and the SGT, every
//! message of a request is scanned and each value replaced by a consistent stand-in
//! (`--pii pseudonymize`, the default) or by its kind (`--pii redact`); the reply is mapped back
//! before the caller sees it — in a stream too, where text that could be the start of a
//! stand-in waits for the next piece. The mapping lives in this request's memory only, is never
//! logged, and is zeroed when the request ends. Only counts are logged.

use stainedglass_pii::{redact, Detector, Mapping, PiiMode, Pseudonymizer, Restorer};
use stainedglass_text::Message;

/// What the proxy does with personal data.
pub struct PiiGuard {
    mode: PiiMode,
    detector: Detector,
}

impl PiiGuard {
    /// `mode` must not be [`PiiMode::Off`]; a proxy without personal-data handling has no
    /// guard.
    pub fn new(mode: PiiMode, detector: Detector) -> Self {
        Self { mode, detector }
    }

    pub fn mode(&self) -> PiiMode {
        self.mode
    }

    /// The messages with their personal data replaced, the mapping back (pseudonymise only)
    /// and how many values were found.
    pub(crate) fn scrub(&self, messages: Vec<Message>) -> Scrubbed {
        let mut found = 0;
        match self.mode {
            PiiMode::Off => Scrubbed {
                messages,
                mapping: None,
                found,
            },
            PiiMode::Redact => {
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let (text, spans) = redact(&self.detector, &m.content);
                        found += spans.len();
                        Message::new(m.role, text)
                    })
                    .collect();
                Scrubbed {
                    messages,
                    mapping: None,
                    found,
                }
            }
            PiiMode::Pseudonymize => {
                let mut p = Pseudonymizer::new(&self.detector);
                let messages = messages
                    .into_iter()
                    .map(|m| {
                        let (text, spans) = p.pseudonymize(&m.content);
                        found += spans.len();
                        Message::new(m.role, text)
                    })
                    .collect();
                Scrubbed {
                    messages,
                    mapping: Some(p.into_mapping()),
                    found,
                }
            }
        }
    }
}

impl PiiGuard {
    /// The messages with their personal data replaced, and how many values were; the mapping
    /// back is dropped (for previews, where nothing comes back).
    pub fn scrub_messages(&self, messages: Vec<Message>) -> (Vec<Message>, usize) {
        let s = self.scrub(messages);
        (s.messages, s.found)
    }
}

/// A request's messages after the guard.
pub(crate) struct Scrubbed {
    pub messages: Vec<Message>,
    pub mapping: Option<Mapping>,
    /// Values replaced (a count only: safe to log).
    pub found: usize,
}

/// Puts the real values back into a reply, piece by piece; a pass-through without a mapping.
pub(crate) struct ReplyRestorer {
    inner: Option<Restorer>,
}

impl ReplyRestorer {
    pub fn new(mapping: Option<&Mapping>) -> Self {
        Self {
            inner: mapping.filter(|m| !m.is_empty()).map(Mapping::restorer),
        }
    }

    /// The part of the reply so far that is final.
    pub fn push(&mut self, piece: &str) -> String {
        match &mut self.inner {
            Some(r) => r.push(piece),
            None => piece.to_string(),
        }
    }

    /// Whatever was held back.
    pub fn finish(&mut self) -> String {
        self.inner
            .as_mut()
            .map(Restorer::finish)
            .unwrap_or_default()
    }
}
