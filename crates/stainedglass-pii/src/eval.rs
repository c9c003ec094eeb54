//! Measuring the detector on labelled prompts (`data/pii/prompts.jsonl`, written by
//! `scripts/pii_generate.py`): per-kind precision and recall, and what a perfect inverter of
//! the transformed prompt could read — the pseudonymised text itself — of the original values.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::detector::Detector;
use crate::pseudonymize::Pseudonymizer;
use crate::types::{PiiKind, Span};

/// One labelled value of a prompt.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldSpan {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
    pub text: String,
}

/// One labelled prompt (a single user message).
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledPrompt {
    pub id: usize,
    pub template: String,
    pub needs_pii: bool,
    pub messages: Vec<LabelledMessage>,
    pub spans: Vec<GoldSpan>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LabelledMessage {
    pub role: String,
    pub content: String,
}

/// Precision and recall of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindScore {
    pub gold: usize,
    pub found: usize,
    /// Gold values that a detected span of the same kind covers.
    pub recalled: usize,
    /// Detected spans that cover a gold value of the same kind.
    pub correct: usize,
    pub recall: f64,
    pub precision: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionReport {
    pub prompts: usize,
    pub per_kind: BTreeMap<String, KindScore>,
    pub structured_recall: f64,
    pub person_recall: f64,
    /// Person, organisation and location names together.
    pub name_recall: f64,
    pub overall_precision: f64,
    /// Share of gold values still present, whole, in the pseudonymised prompt: what a perfect
    /// inverter of the transformed embeddings could read back.
    pub leaked_whole: f64,
    pub leaked_values: Vec<String>,
    /// Gold values no span of their kind covers, and detected spans that cover no gold value.
    pub missed: Vec<String>,
    pub false_positives: Vec<String>,
    /// Detection and substitution time per 1,000 characters of prompt (median over prompts).
    pub micros_per_1000_chars: f64,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

fn covers(s: &Span, g: &GoldSpan) -> bool {
    s.kind == g.kind && s.start < g.end && g.start < s.end
}

/// Scores `detector` on `prompts`.
pub fn evaluate(detector: &Detector, prompts: &[LabelledPrompt]) -> DetectionReport {
    let mut per: BTreeMap<PiiKind, KindScore> = BTreeMap::new();
    let (mut leaked, mut gold_all, mut leaked_values) = (0, 0, Vec::new());
    let (mut missed, mut false_positives) = (Vec::new(), Vec::new());
    let mut times = Vec::new();
    for p in prompts {
        let text = p.messages.first().map_or("", |m| m.content.as_str());
        let t0 = Instant::now();
        let found = detector.detect(text);
        let mut ps = Pseudonymizer::seeded(detector, p.id as u64);
        let (pseudo, _) = ps.pseudonymize(text);
        let us = t0.elapsed().as_secs_f64() * 1e6;
        times.push(us * 1000.0 / text.chars().count().max(1) as f64);
        for g in &p.spans {
            let e = per.entry(g.kind).or_default();
            e.gold += 1;
            if found.iter().any(|s| covers(s, g)) {
                e.recalled += 1;
            } else {
                missed.push(format!("{}: {} (in “{text}”)", g.kind.name(), g.text));
            }
            gold_all += 1;
            if pseudo.contains(g.text.as_str()) {
                leaked += 1;
                leaked_values.push(format!("{}: {}", g.kind.name(), g.text));
            }
        }
        for s in &found {
            let e = per.entry(s.kind).or_default();
            e.found += 1;
            if p.spans.iter().any(|g| covers(s, g)) {
                e.correct += 1;
            } else {
                false_positives.push(format!("{}: {} (in “{text}”)", s.kind.name(), s.text(text)));
            }
        }
    }
    let sum = |f: fn(&(&PiiKind, &KindScore)) -> bool, g: fn(&KindScore) -> usize| {
        per.iter().filter(&f).map(|(_, s)| g(s)).sum::<usize>()
    };
    let structured_recall = ratio(
        sum(|(k, _)| k.is_structured(), |s| s.recalled),
        sum(|(k, _)| k.is_structured(), |s| s.gold),
    );
    let person_recall = ratio(
        sum(|(k, _)| **k == PiiKind::Person, |s| s.recalled),
        sum(|(k, _)| **k == PiiKind::Person, |s| s.gold),
    );
    let is_name = |(k, _): &(&PiiKind, &KindScore)| {
        matches!(
            **k,
            PiiKind::Person | PiiKind::Organization | PiiKind::Location
        )
    };
    let name_recall = ratio(sum(is_name, |s| s.recalled), sum(is_name, |s| s.gold));
    let overall_precision = ratio(sum(|_| true, |s| s.correct), sum(|_| true, |s| s.found));
    times.sort_by(f64::total_cmp);
    DetectionReport {
        prompts: prompts.len(),
        per_kind: per
            .into_iter()
            .map(|(k, mut s)| {
                s.recall = ratio(s.recalled, s.gold);
                s.precision = ratio(s.correct, s.found);
                (k.name().to_string(), s)
            })
            .collect(),
        structured_recall,
        person_recall,
        name_recall,
        overall_precision,
        leaked_whole: ratio(leaked, gold_all.max(1)) * f64::from(u8::from(gold_all > 0)),
        leaked_values,
        missed,
        false_positives,
        micros_per_1000_chars: times.get(times.len() / 2).copied().unwrap_or(0.0),
    }
}
