//! The detector: structured patterns, names, health terms and the user's own terms, merged into
//! non-overlapping spans (the more specific kind wins an overlap).

use std::collections::{BTreeSet, HashSet};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::health::CONDITIONS;
use crate::lexicon::Lexicon;
use crate::names::NameDetector;
use crate::restore::is_word;
use crate::types::{resolve_overlaps, PiiKind, Span};

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct DetectorConfig {
    /// Further sensitive terms (e.g. project names), matched as whole words, any case.
    pub custom_terms: Vec<String>,
    /// Only these kinds (all when empty).
    pub kinds: BTreeSet<PiiKind>,
}

/// Finds personal data in text.
pub struct Detector {
    lex: Lexicon,
    health: AhoCorasick,
    custom: Option<AhoCorasick>,
    kinds: BTreeSet<PiiKind>,
}

fn phrases(words: &[impl AsRef<str>]) -> Option<AhoCorasick> {
    if words.is_empty() {
        return None;
    }
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostLongest)
        .build(words.iter().map(|w| w.as_ref()))
        .ok()
}

/// Matches of `ac` in `text` that start and end at word boundaries: no ASCII letter or digit,
/// and no letter or mark of any script, on either side. (The restorer puts a stand-in back only
/// where it is not glued to a letter; a phrase matched inside "IBSᴀ" would come back as its
/// stand-in.)
fn whole_words(ac: &AhoCorasick, text: &str, kind: PiiKind, out: &mut Vec<Span>) {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric()) || is_word(c);
    for m in ac.find_iter(text) {
        // Matches of UTF-8 patterns start and end on character boundaries.
        let before = text.get(..m.start()).and_then(|t| t.chars().next_back());
        let after = text.get(m.end()..).and_then(|t| t.chars().next());
        if !word(before) && !word(after) {
            out.push(Span::new(m.start(), m.end(), kind));
        }
    }
}

impl Detector {
    pub fn new(lex: Lexicon, config: DetectorConfig) -> Self {
        let custom: Vec<&str> = config
            .custom_terms
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        Self {
            lex,
            // The built-in vocabulary is non-empty, so the automaton always builds.
            health: phrases(CONDITIONS).unwrap_or_else(|| unreachable!("non-empty vocabulary")),
            custom: phrases(&custom),
            kinds: config.kinds,
        }
    }

    /// The personal data in `text`, sorted by position, not overlapping.
    pub fn detect(&self, text: &str) -> Vec<Span> {
        let mut spans = Vec::new();
        crate::structured::detect(text, &mut spans);
        // The words of an e-mail address's local part name its owner elsewhere in the text.
        let hints: HashSet<String> = spans
            .iter()
            .filter(|s| s.kind == PiiKind::Email)
            .flat_map(|s| {
                let local = s.text(text).split('@').next().unwrap_or_default();
                local
                    .split(|c: char| !c.is_alphabetic())
                    .filter(|p| p.chars().count() > 1)
                    .map(str::to_lowercase)
                    .collect::<Vec<_>>()
            })
            .collect();
        NameDetector::new(&self.lex).detect(text, &hints, &mut spans);
        whole_words(&self.health, text, PiiKind::Health, &mut spans);
        if let Some(c) = &self.custom {
            whole_words(c, text, PiiKind::Custom, &mut spans);
        }
        let spans = resolve_overlaps(spans);
        if self.kinds.is_empty() {
            spans
        } else {
            spans
                .into_iter()
                .filter(|s| self.kinds.contains(&s.kind))
                .collect()
        }
    }

    /// The lexicon (surrogates draw places from it).
    pub fn lexicon(&self) -> &Lexicon {
        &self.lex
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_at_once_without_overlaps() {
        let lex = Lexicon::from_lists(
            &["Michael"],
            &["Roy"],
            &[],
            &[],
            &["email", "to", "about", "his", "the", "and", "draft", "an"],
        );
        let d = Detector::new(
            lex,
            DetectorConfig {
                custom_terms: vec!["Project Falcon".into()],
                ..Default::default()
            },
        );
        let text = "Draft an email to Michael Roy (michael.roy@acme.example) about his asthma \
                    and Project Falcon, due 2026-04-15.";
        let got: Vec<(PiiKind, &str)> = d
            .detect(text)
            .iter()
            .map(|s| (s.kind, s.text(text)))
            .collect();
        assert_eq!(
            got,
            [
                (PiiKind::Person, "Michael Roy"),
                (PiiKind::Email, "michael.roy@acme.example"),
                (PiiKind::Health, "asthma"),
                (PiiKind::Custom, "Project Falcon"),
                (PiiKind::Date, "2026-04-15"),
            ]
        );
    }
}
