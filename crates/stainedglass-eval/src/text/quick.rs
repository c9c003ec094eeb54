//! The quick text report (what `sgt quickstart` writes): `report.json`, `sigma_over_norm.png`
//! (σ/|x| per transformed token), `recovery_by_position.png` (nearest-neighbour recovery by
//! position in the prompt) and `summary.md`, which leads with the strongest fresh attack
//! (`fresh.rs`) when the caller ran them. The measurements come from the caller (the trainer's
//! quick evaluation and privacy profile, the fresh attacks); this module aggregates, plots and
//! writes.

use super::fresh::FreshAttackReport;
use crate::plot::{histogram, line_chart, Series};
use crate::report_io::{create_report_dir, write_report_file};
use crate::{Error, Result};
use serde::Serialize;
use serde_json::Value;
use stainedglass_metrics::QuickEval;
use std::path::Path;

/// Inputs of the report: the quick evaluation of the clean embeddings and of the SGT, and the
/// per-token profile.
pub struct QuickReportInput<'a> {
    pub title: String,
    pub clean: &'a QuickEval,
    pub transformed: &'a QuickEval,
    pub sigma_over_norm: &'a [f64],
    /// `(position, recovered by L2, recovered by cosine)` per transformed token.
    pub recovery_by_position: &'a [(usize, bool, bool)],
    /// The attacks trained on the frozen SGT after training, scored on the same held-out
    /// prompts: the report's privacy headline.
    pub fresh: Option<&'a FreshAttackReport>,
    /// Anything else worth keeping (run settings, timings).
    pub extra: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub mean: f64,
    pub p10: f64,
    pub median: f64,
    pub p90: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PositionBucket {
    pub from: usize,
    pub to: usize,
    pub tokens: usize,
    pub l2: f64,
    pub cosine: f64,
}

pub fn quantiles(v: &[f64]) -> Quantiles {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if s.is_empty() {
            f64::NAN
        } else {
            s[((s.len() - 1) as f64 * p).round() as usize]
        }
    };
    Quantiles {
        mean: s.iter().sum::<f64>() / s.len().max(1) as f64,
        p10: q(0.1),
        median: q(0.5),
        p90: q(0.9),
    }
}

/// Buckets of `width` positions (only buckets with tokens).
pub fn bucket_positions(rec: &[(usize, bool, bool)], width: usize) -> Vec<PositionBucket> {
    let width = width.max(1);
    let last = rec.iter().map(|r| r.0).max().unwrap_or(0);
    (0..=last / width)
        .filter_map(|b| {
            let inb: Vec<_> = rec.iter().filter(|r| r.0 / width == b).collect();
            (!inb.is_empty()).then(|| PositionBucket {
                from: b * width,
                to: (b + 1) * width - 1,
                tokens: inb.len(),
                l2: inb.iter().filter(|r| r.1).count() as f64 / inb.len() as f64,
                cosine: inb.iter().filter(|r| r.2).count() as f64 / inb.len() as f64,
            })
        })
        .collect()
}

/// A fraction as a percentage; "n/a" when nothing was measured (no tokens of that kind).
fn pct(x: f64, measured: usize) -> String {
    if measured == 0 {
        "n/a".into()
    } else {
        format!("{:.1}%", 100.0 * x)
    }
}

/// The privacy headline: every fresh attack's recovery, strongest first.
fn fresh_table(f: &FreshAttackReport) -> String {
    let mut rows: Vec<_> = f.attacks.iter().collect();
    rows.sort_by(|a, b| b.1.top1.total_cmp(&a.1.top1));
    let mut md = format!(
        "**Strongest attack trained on the frozen SGT: {} recovers {:.1}% of the transformed \
         tokens.**\n\n| attack (trained after the SGT was frozen, on the attacker's {} \
         prompts) | top-1 | top-5 |\n|---|---|---|\n",
        f.strongest,
        100.0 * f.strongest_top1,
        f.attacker_prompts
    );
    for (name, r) in rows {
        let top5 = r
            .top5
            .map(|x| format!("{:.1}%", 100.0 * x))
            .unwrap_or("—".into());
        md.push_str(&format!("| {name} | {:.1}% | {top5} |\n", 100.0 * r.top1));
    }
    md.push_str(&format!(
        "\n{} held-out prompts, {} tokens; attackers trained in {:.0} s. Nearest neighbour is \
         the weakest of these; the full suite (`sgt eval text`) adds stronger ones.\n\n",
        f.held_out_prompts,
        f.attacks.values().map(|r| r.tokens).max().unwrap_or(0),
        f.train_seconds
    ));
    md
}

/// Writes the report into `dir` and returns `report.json`'s content.
pub fn write_quick_report(dir: &Path, input: &QuickReportInput<'_>) -> Result<Value> {
    create_report_dir(dir)?;
    let sig = quantiles(input.sigma_over_norm);
    let buckets = bucket_positions(input.recovery_by_position, 16);
    let report = serde_json::json!({
        "title": input.title,
        "clean": input.clean,
        "transformed": input.transformed,
        "sigma_over_norm": sig,
        "recovery_by_position": buckets,
        "fresh_attacks": input.fresh,
        "plots": ["sigma_over_norm.png", "recovery_by_position.png"],
        "extra": input.extra,
    });
    if !input.sigma_over_norm.is_empty() {
        histogram(
            &dir.join("sigma_over_norm.png"),
            "σ / |x| per transformed token",
            "‖σ‖ / ‖x‖",
            input.sigma_over_norm,
            30,
        )?;
    }
    if !buckets.is_empty() {
        let mid = |b: &PositionBucket| (b.from + b.to) as f64 / 2.0;
        let series = |name: &str, f: &dyn Fn(&PositionBucket) -> f64| Series {
            name: name.into(),
            points: buckets
                .iter()
                .map(|b| (mid(b), 100.0 * f(b), String::new()))
                .collect(),
        };
        line_chart(
            &dir.join("recovery_by_position.png"),
            "Nearest-neighbour recovery by position",
            "token position in the prompt",
            "transformed tokens recovered (%)",
            &[series("L2", &|b| b.l2), series("cosine", &|b| b.cosine)],
        )?;
    }
    let (c, t) = (input.clean, input.transformed);
    let md = format!(
        "# {title}\n\n{fresh}\
         | | clean embeddings | SGT |\n|---|---|---|\n\
         | nearest-neighbour recovery, L2 (lower is more private) | {cl2} | {tl2} |\n\
         | nearest-neighbour recovery, cosine | {ccos} | {tcos} |\n\
         | recovery of −x̃ by cosine (sign-flip attacker) | {cf} | {tf} |\n\
         | next-token agreement with the clean model (higher is more useful) | {ca} | {ta} |\n\
         | next-token KL (nats) | {ck:.3} | {tk:.3} |\n\n\
         {n} transformed tokens, {p} predicted reply tokens. σ/|x| per transformed token: mean \
         {sm:.3}, median {smed:.3} (10–90%: {s10:.3}–{s90:.3}).\n\n\
         ![σ/|x|](sigma_over_norm.png)\n\n![recovery by position](recovery_by_position.png)\n",
        title = input.title,
        fresh = input.fresh.map(fresh_table).unwrap_or_default(),
        cl2 = pct(c.nn_top1_l2, c.transformed_tokens),
        tl2 = pct(t.nn_top1_l2, t.transformed_tokens),
        ccos = pct(c.nn_top1_cosine, c.transformed_tokens),
        tcos = pct(t.nn_top1_cosine, t.transformed_tokens),
        cf = pct(c.nn_top1_cosine_flipped, c.transformed_tokens),
        tf = pct(t.nn_top1_cosine_flipped, t.transformed_tokens),
        ca = pct(c.next_token_agreement, c.predicted_tokens),
        ta = pct(t.next_token_agreement, t.predicted_tokens),
        ck = c.next_token_kl,
        tk = t.next_token_kl,
        n = t.transformed_tokens,
        p = t.predicted_tokens,
        sm = sig.mean,
        smed = sig.median,
        s10 = sig.p10,
        s90 = sig.p90,
    );
    let write = |name: &str, bytes: &[u8]| write_report_file(dir, name, bytes);
    write("summary.md", md.as_bytes())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::Input(e.to_string()))?;
    write("report.json", json.as_bytes())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_report_files() {
        let rec = [
            (0, true, true),
            (3, false, true),
            (17, false, false),
            (40, true, false),
        ];
        let b = bucket_positions(&rec, 16);
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].tokens, b[0].l2, b[0].cosine), (2, 0.5, 1.0));
        assert_eq!((b[2].from, b[2].to, b[2].l2), (32, 47, 1.0));
        let dir = tempfile::tempdir().expect("tmp");
        let m = QuickEval {
            nn_top1_l2: 0.05,
            nn_top1_cosine: 0.04,
            nn_top1_cosine_flipped: 0.0,
            next_token_agreement: 0.9,
            next_token_kl: 0.1,
            transformed_tokens: 4,
            predicted_tokens: 9,
        };
        let r = write_quick_report(
            dir.path(),
            &QuickReportInput {
                title: "t".into(),
                clean: &m,
                transformed: &m,
                sigma_over_norm: &[0.1, 0.2, 0.3, 0.25],
                recovery_by_position: &rec,
                fresh: None,
                extra: Value::Null,
            },
        )
        .expect("report");
        assert_eq!(r["recovery_by_position"].as_array().map(Vec::len), Some(3));
        for f in [
            "report.json",
            "summary.md",
            "sigma_over_norm.png",
            "recovery_by_position.png",
        ] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        let md = std::fs::read_to_string(dir.path().join("summary.md")).expect("md");
        assert!(md.contains("| 5.0% | 5.0% |"), "{md}");
        assert!(!md.contains("Strongest attack"), "{md}");
    }

    #[test]
    fn the_strongest_fresh_attack_leads_the_summary() {
        let rec = |top1: f64| crate::text::observed::Recovery {
            top1,
            top5: Some(top1),
            tokens: 40,
            hits: Vec::new(),
        };
        let f = FreshAttackReport {
            attacks: [
                ("nearest_neighbour_l2".to_string(), rec(0.05)),
                ("learned_mlp".to_string(), rec(0.975)),
                ("layer6_probe".to_string(), rec(0.5)),
            ]
            .into_iter()
            .collect(),
            strongest: "learned_mlp".into(),
            strongest_top1: 0.975,
            attacker_prompts: 52,
            held_out_prompts: 12,
            train_seconds: 90.0,
            config: Default::default(),
        };
        let md = fresh_table(&f);
        assert!(
            md.contains("learned_mlp recovers 97.5% of the transformed tokens"),
            "{md}"
        );
        let (mlp, probe, nn) = (
            md.find("| learned_mlp |").expect("mlp"),
            md.find("| layer6_probe |").expect("probe"),
            md.find("| nearest_neighbour_l2 |").expect("nn"),
        );
        assert!(mlp < probe && probe < nn, "strongest first:\n{md}");
    }
}
