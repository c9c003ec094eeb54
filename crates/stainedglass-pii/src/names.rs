//! Person, organisation and location names, offline: capitalised word chains read with the
//! lexicons (census names, GeoNames cities, English word frequencies) and context cues — a
//! title ("Dr", "Ms"), a phrase ("my name is", "email", "dear", "to", …), a known org suffix,
//! the parts of an e-mail address's local part — then made consistent (a detected name's words
//! are names wherever else they appear in the text).
//!
//! Why this and not a learned tagger: it needs no model, runs in microseconds per prompt, and
//! its recall on names it has never seen comes from the context cues and the shape of a
//! two-word capitalised chain of uncommon words, which is where names in prompts sit. Its limits
//! (a lone uncued lowercase or foreign name; a person named like a city) are measured in
//! `docs/pii/`.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::cues::{
    AMBIGUOUS, COMMON_TOP, FUNCTION_WORDS, LANDMARKS, NEVER, ORG_WORDS, PARTICLES, PERSON_CUES,
    PLACE_CUES, TITLES, VERY_COMMON_TOP,
};
use crate::lexicon::{Lexicon, PUBLIC_CITY_POPULATION};
use crate::types::{PiiKind, Span};
static WORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[\p{L}\p{M}][\p{L}\p{M}'’-]*").unwrap_or_else(|e| panic!("word pattern: {e}"))
});

#[derive(Debug, Clone, Copy)]
struct Word<'a> {
    start: usize,
    end: usize,
    text: &'a str,
}

impl Word<'_> {
    fn capitalised(&self) -> bool {
        self.text.chars().next().is_some_and(char::is_uppercase)
    }
    fn lower(&self) -> String {
        self.text.to_lowercase()
    }
}

/// Words with a trailing possessive `'s` dropped from the span.
fn words(text: &str) -> Vec<Word<'_>> {
    WORD.find_iter(text)
        .map(|m| {
            let mut end = m.end();
            let s = m.as_str();
            for suffix in ["'s", "’s", "'", "’"] {
                if s.len() > suffix.len() && s.ends_with(suffix) {
                    end -= suffix.len();
                    break;
                }
            }
            Word {
                start: m.start(),
                end,
                text: &text[m.start()..end],
            }
        })
        .collect()
}

/// A capital after two lower-case letters ("JavaScript", "YouTube"): a product, not a name
/// ("McKenzie", "DiCaprio", "MacArthur" are names).
fn camel_case(w: &str) -> bool {
    if w.starts_with("Mac") || w.starts_with("Fitz") {
        return false;
    }
    let mut lower_run = 0;
    for c in w.chars() {
        if c.is_uppercase() && lower_run >= 2 {
            return true;
        }
        lower_run = if c.is_lowercase() { lower_run + 1 } else { 0 };
    }
    false
}

/// Whether only spaces separate two words (a chain continues).
fn joined(text: &str, a: &Word, b: &Word) -> bool {
    let gap = &text[a.end..b.start];
    !gap.is_empty() && gap.len() <= 3 && gap.chars().all(|c| c == ' ' || c == '\u{a0}')
}

/// Whether the word starts a sentence (or a line, or a quote).
fn sentence_initial(text: &str, w: &Word) -> bool {
    match text[..w.start].trim_end_matches([' ', '\t']).chars().last() {
        None => true,
        Some(c) => ".!?\n:;\"“(*•>-".contains(c),
    }
}

/// The lower-cased word just before `w` in the same sentence, and whether a "." follows it.
fn previous<'a>(ws: &'a [Word<'a>], i: usize, text: &str) -> Option<(String, bool)> {
    let p = ws.get(i.checked_sub(1)?)?;
    let gap = &text[p.end..ws[i].start];
    if gap.chars().any(|c| ".!?\n".contains(c))
        && !(gap.trim_start().starts_with('.') && gap.len() <= 3)
    {
        return None;
    }
    Some((p.lower(), gap.starts_with('.')))
}

pub(crate) struct NameDetector<'l> {
    lex: &'l Lexicon,
}

impl<'l> NameDetector<'l> {
    pub fn new(lex: &'l Lexicon) -> Self {
        Self { lex }
    }

    /// A word that can be part of a name: a known first or last name or an uncommon word, and
    /// not an acronym ("SSN", "MRN") or a contraction ("You'll").
    fn namelike(&self, w: &str) -> bool {
        let acronym = w.chars().filter(|c| c.is_alphabetic()).count() >= 2
            && w.chars().all(|c| !c.is_lowercase());
        let contraction = w
            .rsplit_once(['\'', '’'])
            .is_some_and(|(_, t)| ["ll", "re", "ve", "d", "t", "m"].contains(&t));
        !acronym
            && !contraction
            && !camel_case(w)
            && (self.lex.is_first(w) || self.lex.is_last(w) || !self.lex.is_common(w, COMMON_TOP))
    }

    /// A word that can be a name on its own: name-like and not a weekday, month, language, ….
    fn namelike_alone(&self, w: &str) -> bool {
        !NEVER.contains(&w.to_lowercase().as_str()) && self.namelike(w)
    }

    /// Person, organisation and location spans of `text`. `hints` are lower-cased words known
    /// to be name parts (from e-mail local parts).
    pub fn detect(&self, text: &str, hints: &HashSet<String>, out: &mut Vec<Span>) {
        let ws = words(text);
        let mut i = 0;
        let mut persons: Vec<Span> = Vec::new();
        while i < ws.len() {
            if !ws[i].capitalised() {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            loop {
                if j < ws.len() && ws[j].capitalised() && joined(text, &ws[j - 1], &ws[j]) {
                    j += 1;
                    continue;
                }
                // Particles between capitalised words stay in the chain.
                let mut k = j;
                while k < ws.len()
                    && PARTICLES.contains(&ws[k].text)
                    && joined(text, &ws[k - 1], &ws[k])
                {
                    k += 1;
                }
                if k > j && k < ws.len() && ws[k].capitalised() && joined(text, &ws[k - 1], &ws[k])
                {
                    j = k + 1;
                    continue;
                }
                break;
            }
            self.classify(text, &ws, i, j, hints, out, &mut persons);
            i = j;
        }
        // Consistency: the words of a detected name are that name wherever they appear.
        let parts: HashSet<String> = persons
            .iter()
            .flat_map(|s| words(s.text(text)).into_iter().map(|w| w.lower()))
            .filter(|w| w.len() > 1 && !TITLES.contains(&w.as_str()))
            // Only distinctive parts: an ordinary word is not a name everywhere ("River").
            .filter(|w| !self.lex.is_common(w, COMMON_TOP) || self.lex.is_first(w))
            .collect();
        for w in &ws {
            if w.capitalised() && parts.contains(&w.lower()) {
                out.push(Span::new(w.start, w.end, PiiKind::Person));
            }
        }
        out.extend(persons);
    }

    #[allow(clippy::too_many_arguments)]
    fn classify(
        &self,
        text: &str,
        ws: &[Word],
        mut i: usize,
        j: usize,
        hints: &HashSet<String>,
        out: &mut Vec<Span>,
        persons: &mut Vec<Span>,
    ) {
        let span = |a: usize, b: usize| (ws[a].start, ws[b - 1].end);
        // A place, as written or after the leading ordinary words ("Visit Springfield") —
        // unless a title says it is a person ("Dr. Jackson").
        let after_title = previous(ws, i, text).is_some_and(|(p, _)| TITLES.contains(&p.as_str()));
        if !after_title && !self.cued_first_name(ws, i, j, text) && self.place(text, ws, i, j, out)
        {
            return;
        }
        // Organisations: a chain ending in an organisation word.
        let last = ws[j - 1].lower();
        // Landmarks ("Rhine River", "Anavilhanas Archipelago"): geography, not a person.
        if j - i >= 2 && LANDMARKS.contains(&last.as_str()) {
            return;
        }
        if j - i >= 2 && ORG_WORDS.contains(&last.as_str()) {
            let (s, e) = span(i, j);
            out.push(Span::new(s, e, PiiKind::Organization));
            return;
        }
        // Leading titles and ordinary words are not part of a name ("Dear", "Ask", "Dr").
        let mut titled = self.titled_or_cued(ws, i, text);
        while i < j {
            let w = ws[i].lower();
            if TITLES.contains(&w.as_str()) {
                titled = true;
                i += 1;
            } else if FUNCTION_WORDS.contains(&w.as_str())
                || (j - i > 1 && self.lex.is_common(&w, COMMON_TOP) && !self.lex.is_first(&w))
            {
                titled |= PERSON_CUES.contains(&w.as_str());
                i += 1;
            } else {
                break;
            }
        }
        if i >= j || (!after_title && !titled && self.place(text, ws, i, j, out)) {
            return;
        }
        let (s, e) = span(i, j);
        // Particles ("van", "da") sit inside names but are ordinary words.
        let chain: Vec<&Word> = ws[i..j]
            .iter()
            .filter(|w| !PARTICLES.contains(&w.text))
            .collect();
        let hinted = chain.iter().any(|w| hints.contains(&w.lower()));
        let all_namelike = chain.iter().all(|w| self.namelike(w.text));
        let ordinary = chain
            .iter()
            .all(|w| self.lex.is_common(w.text, VERY_COMMON_TOP) && !self.lex.is_first(w.text));
        if !after_title && self.cued_place(ws, i, text, &chain) {
            out.push(Span::new(s, e, PiiKind::Location));
            return;
        }
        let person = if chain.len() >= 2 {
            let lead = self.namelike(chain[0].text);
            !ordinary
                && ((all_namelike && (titled || hinted || self.two_word_name(&chain)))
                    || (titled && lead))
        } else {
            let w = chain[0];
            let l = w.lower();
            let first = self.lex.is_first(w.text) && !AMBIGUOUS.contains(&l.as_str());
            // After an article a capitalised word is a thing ("the Sun").
            let article = previous(ws, i, text)
                .is_some_and(|(p, _)| ["the", "a", "an"].contains(&p.as_str()));
            let wordlike = self.lex.is_common(w.text, COMMON_TOP);
            self.namelike_alone(w.text)
                && !article
                && (hinted
                    || (titled && !self.lex.is_common(w.text, VERY_COMMON_TOP))
                    || (titled && first)
                    || (first && !wordlike && !sentence_initial(text, w)))
        };
        if person {
            persons.push(Span::new(s, e, PiiKind::Person));
        }
    }

    /// Whether words `i..j` name a place: a public one (country, state, big city: nothing to
    /// report) or a town (reported as a location).
    fn place(&self, text: &str, ws: &[Word], i: usize, j: usize, out: &mut Vec<Span>) -> bool {
        let (s, e) = (ws[i].start, ws[j - 1].end);
        let name = &text[s..e];
        if self.lex.is_public_place(name) {
            return true;
        }
        // A town named like a word or a person ("Date", "Alice") only after a place cue.
        let w = ws[i].text;
        let word_like = j - i == 1 && (self.lex.is_common(w, COMMON_TOP) || self.lex.is_first(w));
        let cued = previous(ws, i, text).is_some_and(|(p, _)| PLACE_CUES.contains(&p.as_str()));
        match self.lex.city_population(name) {
            Some(_) if word_like && !cued => false,
            Some(pop) => {
                if pop < PUBLIC_CITY_POPULATION {
                    out.push(Span::new(s, e, PiiKind::Location));
                }
                true
            }
            None => false,
        }
    }

    /// A chain of two or more words that reads as a name: a known first name or an uncommon
    /// word, then a known surname or an uncommon word.
    fn two_word_name(&self, chain: &[&Word]) -> bool {
        let (f, l) = (chain[0].text, chain[chain.len() - 1].text);
        let uncommon = |w: &str| !self.lex.is_common(w, COMMON_TOP);
        // A surname that is also a common word ("Baker") needs a known first name before it,
        // or "Ubuntu Server" would be a person.
        let first = self.lex.is_first(f);
        (first || uncommon(f)) && (uncommon(l) || (self.lex.is_last(l) && first))
    }

    /// Whether words after a place cue ("in", "near", …) name an unlisted town: uncommon
    /// words, none of them a known first name.
    fn cued_place(&self, ws: &[Word], i: usize, text: &str, chain: &[&Word]) -> bool {
        let cued = previous(ws, i, text).is_some_and(|(p, _)| PLACE_CUES.contains(&p.as_str()));
        cued && !self.lex.is_first(chain[0].text)
            && chain
                .iter()
                .all(|w| self.namelike_alone(w.text) || w.text.len() > 1)
            && chain
                .iter()
                .any(|w| self.namelike_alone(w.text) && !self.lex.is_common(w.text, COMMON_TOP))
    }

    /// A lone known first name after a person cue ("text Alice"): a person even where a small
    /// town has the same name; public places stay places ("to Paris").
    fn cued_first_name(&self, ws: &[Word], i: usize, j: usize, text: &str) -> bool {
        let w = ws[i].text;
        j - i == 1
            && self.lex.is_first(w)
            && !AMBIGUOUS.contains(&ws[i].lower().as_str())
            && !self.lex.is_public_place(w)
            && self
                .lex
                .city_population(w)
                .is_none_or(|p| p < PUBLIC_CITY_POPULATION)
            && previous(ws, i, text).is_some_and(|(p, _)| PERSON_CUES.contains(&p.as_str()))
    }

    /// Whether a title or a person cue precedes word `i`.
    fn titled_or_cued(&self, ws: &[Word], i: usize, text: &str) -> bool {
        let Some((p, _)) = previous(ws, i, text) else {
            return false;
        };
        TITLES.contains(&p.as_str()) || PERSON_CUES.contains(&p.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex() -> Lexicon {
        Lexicon::from_lists(
            &["Michael", "Anna", "Will", "John", "Mary"],
            &["Roy", "Smith", "Wagner", "Brown"],
            &[
                ("Springfield", 160_000),
                ("Paris", 2_100_000),
                ("Lyon", 500_000),
            ],
            &["France", "Texas", "Europe"],
            &[
                "the", "to", "and", "draft", "an", "email", "about", "contract", "please", "ask",
                "will", "new", "machine", "learning", "dear", "thank", "you", "brown", "meet",
                "capital", "of", "what", "is", "in", "for", "work", "at", "call", "compare",
                "remind", "today", "orbits", "it", "we", "sailed", "visit", "us", "next", "summer",
                "reply", "see", "on", "file", "a", "nebula", "river", "python",
            ],
        )
    }

    fn found(text: &str) -> Vec<(PiiKind, String)> {
        let l = lex();
        let mut v = Vec::new();
        NameDetector::new(&l).detect(text, &HashSet::new(), &mut v);
        let mut v: Vec<_> = crate::types::resolve_overlaps(v)
            .into_iter()
            .map(|s| (s.kind, s.text(text).to_string()))
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn names_places_and_organisations() {
        let p = |s: &str| (PiiKind::Person, s.to_string());
        assert_eq!(
            found("Draft an email to Michael Roy about the contract"),
            [p("Michael Roy")]
        );
        assert_eq!(
            found("Dear Henrike Wagner, thank you"),
            [p("Henrike Wagner")]
        );
        assert_eq!(found("Please ask Dr. Okonkwo to call"), [p("Okonkwo")]);
        assert_eq!(
            found("Meet Anna at the Lyon office. Anna will call."),
            [p("Anna"), (PiiKind::Location, "Lyon".into()), p("Anna")]
        );
        assert_eq!(found("What is the capital of France? Paris."), []);
        assert_eq!(found("Machine Learning is new"), []);
        assert_eq!(
            found("I work at Acme Widgets Inc in Springfield"),
            [
                (PiiKind::Organization, "Acme Widgets Inc".into()),
                (PiiKind::Location, "Springfield".into())
            ]
        );
        assert_eq!(found("Will you draft it?"), []);
        assert_eq!(found("Please ask Dr. Springfield"), [p("Springfield")]);
    }

    #[test]
    fn things_that_look_like_names_are_not() {
        // Function words and acronyms, contractions, products, things after an article,
        // landmarks, and ordinary words that were part of a name elsewhere.
        assert_eq!(found("My SSN is on file."), []);
        assert_eq!(found("You'll see."), []);
        assert_eq!(found("Compare Python and JavaScript today"), []);
        assert_eq!(found("It orbits the Anna nebula"), []);
        assert_eq!(found("We sailed the Springfield Riverbank River"), []);
    }

    #[test]
    fn particles_cues_and_place_cues() {
        let p = |s: &str| (PiiKind::Person, s.to_string());
        assert_eq!(
            found("Remind Milan van den Bosch to call"),
            [p("Milan van den Bosch")]
        );
        // A cued two-word chain with an uncommon first word is a person even if the surname is
        // an ordinary word.
        assert_eq!(found("Draft a reply to Fiene Brown."), [p("Fiene Brown")]);
        // An unlisted town after a place cue.
        assert_eq!(
            found("Visit us in Neustadtwaldnaab next summer"),
            [(PiiKind::Location, "Neustadtwaldnaab".into())]
        );
    }
}
