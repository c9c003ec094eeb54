//! `sgt eval text --report <dir>`: `report.json`, `summary.md` and the plots of a suite run.

use super::quick::PositionBucket;
use super::suite::{MechanismReport, TextSuiteReport};
use crate::plot::{histogram, line_chart, Series};
use crate::report_io::{create_report_dir, write_report_file};
use crate::{Error, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// Privacy–utility chart: one series per baseline kind, the SGT as its own point.
fn tradeoff(
    dir: &Path,
    file: &str,
    r: &TextSuiteReport,
    x_label: &str,
    x: &dyn Fn(&MechanismReport) -> f64,
) -> Result<()> {
    let series = |kinds: &[&str],
                  name: &str,
                  y: &dyn Fn(&MechanismReport) -> f64,
                  label: &dyn Fn(&MechanismReport) -> String| Series {
        name: name.into(),
        points: r
            .mechanisms
            .iter()
            .filter(|m| kinds.contains(&m.kind.as_str()))
            .map(|m| (100.0 * x(m), 100.0 * y(m), label(m)))
            .collect(),
    };
    let strongest = |m: &MechanismReport| m.strongest().1;
    let nn = |m: &MechanismReport| {
        m.attacks
            .get("nearest_neighbour_l2")
            .map_or(0.0, |a| a.top1)
    };
    let strength = |m: &MechanismReport| format!("{}", m.strength.unwrap_or_default());
    let s = [
        series(
            &["gaussian"],
            "Gaussian noise (σ / rms), strongest attack",
            &strongest,
            &strength,
        ),
        series(
            &["metric-dp"],
            "metric-DP (radius / |x|), strongest attack",
            &strongest,
            &strength,
        ),
        series(&["sgt"], "SGT, strongest attack", &strongest, &|m| {
            m.strongest().0.replace('_', " ")
        }),
        series(
            &["sgt", "sgt-scaled"],
            "SGT with its noise ×c, strongest attack",
            &strongest,
            &|m| format!("×{}", m.strength.unwrap_or(1.0)),
        ),
        series(&["sgt"], "SGT, nearest neighbour (L2)", &nn, &|_| {
            "SGT, NN".into()
        }),
        series(&["clean"], "clean", &nn, &|_| "clean".into()),
    ];
    line_chart(
        &dir.join(file),
        "Privacy vs utility (held-out prompts)",
        x_label,
        "top-1 token recovery (%)",
        &s,
    )
}

/// Draws the report's plots into `dir`; returns their file names.
fn plots(dir: &Path, r: &TextSuiteReport) -> Result<Vec<&'static str>> {
    let mut plots = vec!["privacy_utility.png", "privacy_utility_answers.png"];
    tradeoff(
        dir,
        "privacy_utility.png",
        r,
        "next-token top-1 agreement with the clean model (%)",
        &|m| m.utility.agreement,
    )?;
    tradeoff(
        dir,
        "privacy_utility_answers.png",
        r,
        "answer accuracy on the question set (%)",
        &|m| m.answers.accuracy,
    )?;
    let Some(s) = r.mechanisms.iter().find(|m| m.kind == "sgt") else {
        return Ok(plots);
    };
    if !s.sigma_over_norm_values.is_empty() {
        histogram(
            &dir.join("sigma_over_norm.png"),
            "σ / |x| per transformed token (SGT)",
            "‖σ‖ / ‖x‖",
            &s.sigma_over_norm_values,
            30,
        )?;
        plots.push("sigma_over_norm.png");
    }
    if !s.recovery_by_position.is_empty() {
        let mid = |b: &PositionBucket| (b.from + b.to) as f64 / 2.0;
        let series = |name: &str, f: &dyn Fn(&PositionBucket) -> f64| Series {
            name: name.into(),
            points: s
                .recovery_by_position
                .iter()
                .map(|b| (mid(b), 100.0 * f(b), String::new()))
                .collect(),
        };
        line_chart(
            &dir.join("recovery_by_position.png"),
            "SGT: nearest-neighbour recovery by position",
            "token position in the prompt",
            "transformed tokens recovered (%)",
            &[series("L2", &|b| b.l2), series("cosine", &|b| b.cosine)],
        )?;
        plots.push("recovery_by_position.png");
    }
    Ok(plots)
}

/// The token-recovery table: every attack's top-1 recovery per mechanism, and the strongest.
fn recovery_table(md: &mut String, r: &TextSuiteReport) {
    md.push_str("## Token recovery (top-1; lower is more private)\n\n| mechanism | NN cosine | NN L2 | NN L2 top-5 | noise-aware NN | learned MLP | learned transformer | BeamClean | layer-k probe | strongest |\n|---|---|---|---|---|---|---|---|---|---|\n");
    let cell = |m: &MechanismReport, k: &str| {
        m.attacks
            .get(k)
            .map(|a| pct(a.top1))
            .unwrap_or_else(|| "—".into())
    };
    for m in &r.mechanisms {
        let (sa, sv) = m.strongest();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) |",
            m.name,
            cell(m, "nearest_neighbour_cosine"),
            cell(m, "nearest_neighbour_l2"),
            m.attacks
                .get("nearest_neighbour_l2")
                .and_then(|a| a.top5)
                .map(pct)
                .unwrap_or_default(),
            cell(m, "noise_aware_nearest_neighbour"),
            cell(m, "learned_mlp"),
            cell(m, "learned_transformer"),
            cell(m, "beamclean"),
            cell(m, "activation_probe"),
            pct(sv),
            sa.replace('_', " "),
        );
    }
}

/// The utility table: agreement, KL, perplexity, answers, information and σ/‖x‖.
fn utility_table(md: &mut String, r: &TextSuiteReport) {
    md.push_str("\n## Utility (higher agreement and accuracy are more useful)\n\n| mechanism | next-token agreement | KL (nats) | reply perplexity (clean → this) | answer accuracy | clean-correct answers kept | MI / log K | MI / log V | σ/‖x‖ median |\n|---|---|---|---|---|---|---|---|---|\n");
    let or_dash = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "—".into());
    for m in &r.mechanisms {
        let info = m.information.as_ref();
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} | {:.2} → {:.2} | {} | {} | {} | {} | {} |",
            m.name,
            pct(m.utility.agreement),
            m.utility.kl,
            m.utility.perplexity_clean,
            m.utility.perplexity_transformed,
            pct(m.answers.accuracy),
            pct(m.answers_retained),
            or_dash(info.map(|i| i.normalised_by_log_components)),
            or_dash(info.map(|i| i.normalised_by_log_vocab)),
            or_dash(m.sigma_over_norm.as_ref().map(|q| q.median)),
        );
    }
}

/// Writes the report files into `dir`; returns `report.json`'s value.
pub fn write_text_report(
    dir: &Path,
    title: &str,
    r: &TextSuiteReport,
    extra: Value,
) -> Result<Value> {
    create_report_dir(dir)?;
    let plots = plots(dir, r)?;
    let mut md = format!("# {title}\n\n");
    let _ = writeln!(
        md,
        "{} held-out prompts, {} attacker prompts (its own text, transformed with the public SGT), {} questions, vocabulary {}.\n",
        r.held_out_prompts, r.attacker_prompts, r.questions, r.vocab
    );
    recovery_table(&mut md, r);
    utility_table(&mut md, r);
    md.push('\n');
    for p in &plots {
        let _ = writeln!(md, "![{p}]({p})\n");
    }
    write_report_file(dir, "summary.md", md.as_bytes())?;
    let mut json = serde_json::to_value(r).map_err(|e| Error::Input(e.to_string()))?;
    json["title"] = Value::from(title);
    json["plots"] = serde_json::to_value(&plots).map_err(|e| Error::Input(e.to_string()))?;
    json["extra"] = extra;
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Input(e.to_string()))?;
    write_report_file(dir, "report.json", text.as_bytes())?;
    Ok(json)
}
