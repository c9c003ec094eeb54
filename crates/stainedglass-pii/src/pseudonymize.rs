//! Replacing personal data before a prompt leaves the machine, and putting it back into the
//! reply: a [`Pseudonymizer`] gives each detected value a consistent stand-in across the
//! messages of one conversation; the [`Mapping`] it builds turns stand-ins back into the values
//! (also inside a stream, see [`crate::restore`]). The mapping lives in memory only and is
//! zeroed when dropped.

use std::collections::HashMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::detector::Detector;
use crate::restore::Restorer;
use crate::surrogate::surrogate;
use crate::types::{PiiKind, Span};

/// What to do with detected personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PiiMode {
    /// Replace each value by a consistent stand-in, and map the reply back.
    #[default]
    Pseudonymize,
    /// Replace each value by its kind in brackets (`[PERSON]`); nothing to map back.
    Redact,
    Off,
}

impl std::str::FromStr for PiiMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pseudonymize" | "pseudonymise" => Ok(Self::Pseudonymize),
            "redact" => Ok(Self::Redact),
            "off" => Ok(Self::Off),
            o => Err(format!(
                "{o:?} is not a PII mode: use pseudonymize, redact or off"
            )),
        }
    }
}

impl std::fmt::Display for PiiMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Pseudonymize => "pseudonymize",
            Self::Redact => "redact",
            Self::Off => "off",
        })
    }
}

/// Stand-ins given so far, both ways. Zeroed on drop.
#[derive(Default)]
pub struct Mapping {
    forward: HashMap<(PiiKind, String), String>,
    /// `(stand-in, value)`, the whole stand-ins and, for names, their single words.
    back: Vec<(String, String)>,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for ((_, k), v) in self.forward.drain() {
            let (mut k, mut v) = (k, v);
            k.zeroize();
            v.zeroize();
        }
        for (a, b) in &mut self.back {
            a.zeroize();
            b.zeroize();
        }
    }
}

impl Mapping {
    /// How many values were replaced.
    pub fn len(&self) -> usize {
        self.forward.len()
    }

    pub fn is_empty(&self) -> bool {
        self.forward.is_empty()
    }

    /// A streaming restorer for a reply.
    pub fn restorer(&self) -> Restorer {
        Restorer::new(&self.back)
    }

    /// `text` with every stand-in turned back into its value.
    pub fn restore(&self, text: &str) -> String {
        let mut r = self.restorer();
        let mut out = r.push(text);
        out.push_str(&r.finish());
        out
    }
}

/// Pseudonymises the messages of one conversation.
pub struct Pseudonymizer<'d> {
    detector: &'d Detector,
    rng: ChaCha20Rng,
    map: Mapping,
    /// Every text seen, so that no stand-in equals a real value.
    seen: String,
}

impl<'d> Pseudonymizer<'d> {
    /// Stand-ins drawn from the OS random source.
    pub fn new(detector: &'d Detector) -> Self {
        Self::with_rng(detector, ChaCha20Rng::from_os_rng())
    }

    /// Stand-ins drawn from `seed` (reproducible; tests and evaluations).
    pub fn seeded(detector: &'d Detector, seed: u64) -> Self {
        Self::with_rng(detector, ChaCha20Rng::seed_from_u64(seed))
    }

    fn with_rng(detector: &'d Detector, rng: ChaCha20Rng) -> Self {
        Self {
            detector,
            rng,
            map: Mapping::default(),
            seen: String::new(),
        }
    }

    /// `text` with its personal data replaced, and the spans that were replaced.
    pub fn pseudonymize(&mut self, text: &str) -> (String, Vec<Span>) {
        self.seen.push_str(text);
        self.seen.push('\n');
        let spans = self.detector.detect(text);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for s in &spans {
            out.push_str(&text[at..s.start]);
            out.push_str(&self.stand_in(s.kind, s.text(text)));
            at = s.end;
        }
        out.push_str(&text[at..]);
        (out, spans)
    }

    fn stand_in(&mut self, kind: PiiKind, value: &str) -> String {
        let key = (kind, value.to_string());
        if let Some(s) = self.map.forward.get(&key) {
            return s.clone();
        }
        let taken =
            |s: &str, m: &Mapping| m.back.iter().any(|(a, _)| a == s) || self.seen.contains(s);
        let mut s = surrogate(&mut self.rng, self.detector.lexicon(), kind, value);
        for _ in 0..32 {
            if !taken(&s, &self.map) {
                break;
            }
            s = surrogate(&mut self.rng, self.detector.lexicon(), kind, value);
        }
        self.map.back.push((s.clone(), value.to_string()));
        if kind == PiiKind::Person {
            // A reply may use part of a name ("Dear Mr. Carter").
            let (sw, vw): (Vec<&str>, Vec<&str>) = (
                s.split_whitespace().collect(),
                value.split_whitespace().collect(),
            );
            if sw.len() == vw.len() && sw.len() > 1 {
                for (a, b) in sw.iter().zip(&vw) {
                    // Not a word the user wrote themselves: it would be "restored" too.
                    if !self.seen.contains(a) {
                        self.map.back.push((a.to_string(), b.to_string()));
                    }
                }
            }
        }
        self.map.forward.insert(key, s.clone());
        s
    }

    /// The mapping built so far (to restore the reply).
    pub fn into_mapping(self) -> Mapping {
        self.map
    }
}

/// `text` with every detected value replaced by its kind in brackets.
pub fn redact(detector: &Detector, text: &str) -> (String, Vec<Span>) {
    let spans = detector.detect(text);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for s in &spans {
        out.push_str(&text[at..s.start]);
        out.push('[');
        out.push_str(&s.kind.name().to_uppercase());
        out.push(']');
        at = s.end;
    }
    out.push_str(&text[at..]);
    (out, spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::DetectorConfig;
    use crate::lexicon::Lexicon;

    #[test]
    fn the_same_value_gets_the_same_stand_in_and_comes_back() {
        let lex = Lexicon::from_lists(&["Michael"], &["Roy"], &[], &[], &["to", "about", "the"]);
        let d = Detector::new(lex, DetectorConfig::default());
        let mut p = Pseudonymizer::seeded(&d, 1);
        let a = "Write to Michael Roy about the contract due 2026-04-15.";
        let b = "Also cc Michael Roy.";
        let (pa, sa) = p.pseudonymize(a);
        let (pb, _) = p.pseudonymize(b);
        assert_eq!(sa.len(), 2, "{sa:?}");
        assert!(
            !pa.contains("Michael") && !pa.contains("2026-04-15"),
            "{pa}"
        );
        let name_a = &pa["Write to ".len()..pa.find(" about").expect("about")];
        assert!(pb.contains(name_a), "{pa} / {pb}");
        let m = p.into_mapping();
        assert_eq!(m.restore(&pa), a);
        let last = name_a.split_whitespace().last().expect("last");
        assert_eq!(m.restore(&format!("Dear Mr. {last},")), "Dear Mr. Roy,");
        let (r, _) = redact(&d, a);
        assert_eq!(r, "Write to [PERSON] about the contract due [DATE].");
    }
}
