//! The quick text report (what `sgt quickstart` writes): `report.json`, `sigma_over_norm.png`
//! (σ/|x| per transformed token), `recovery_by_position.png` (nearest-neighbour recovery by
//! position in the prompt) and `summary.md`. The measurements come from the caller (the
//! trainer's quick evaluation and privacy profile); this module aggregates, plots and writes.

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
        "# {title}\n\n\
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
    }
}
