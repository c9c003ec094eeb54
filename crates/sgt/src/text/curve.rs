//! `sgt text curve`: plots the trainer's quick evaluations from `metrics.jsonl` — recovery and
//! agreement over steps, and the privacy–utility trajectory (recovery vs agreement).

use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_eval::plot::{line_chart, Series};
use stainedglass_metrics::QuickEval;
use stainedglass_train::text::EvalRecord;
use std::path::PathBuf;

#[derive(Args)]
pub struct CurveArgs {
    /// The run's metrics (JSON lines with `"kind": "eval"` records).
    #[arg(long)]
    pub metrics: PathBuf,
    /// Output directory for `curve_steps.png`, `curve_tradeoff.png` and `curve.json`.
    #[arg(long)]
    pub output: PathBuf,
}

pub fn run(a: CurveArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.metrics)
        .with_context(|| format!("reading {}", a.metrics.display()))?;
    let mut evals: Vec<EvalRecord> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = || format!("{} line {}", a.metrics.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        if v["kind"] == "eval" {
            let r = serde_json::from_value(v)
                .with_context(|| format!("{}: not an evaluation record", at()))?;
            evals.push(r);
        }
    }
    if evals.is_empty() {
        bail!("{} holds no evaluation records", a.metrics.display());
    }
    let series = |name: &str, f: fn(&QuickEval) -> f64| Series {
        name: name.to_string(),
        points: evals
            .iter()
            .map(|r| (r.step as f64, 100.0 * f(&r.eval), String::new()))
            .collect(),
    };
    std::fs::create_dir_all(&a.output)?;
    line_chart(
        &a.output.join("curve_steps.png"),
        "Held-out quick evaluation during training",
        "training step",
        "percent",
        &[
            series("NN recovery, cosine (%)", |e| e.nn_top1_cosine),
            series("NN recovery, L2 (%)", |e| e.nn_top1_l2),
            series("next-token agreement (%)", |e| e.next_token_agreement),
        ],
    )?;
    let trade = Series {
        name: "TransformerCloak during training".into(),
        points: evals
            .iter()
            .map(|r| {
                (
                    100.0 * r.eval.nn_top1_cosine,
                    100.0 * r.eval.next_token_agreement,
                    r.step.to_string(),
                )
            })
            .collect(),
    };
    line_chart(
        &a.output.join("curve_tradeoff.png"),
        "Privacy vs utility (labels: step)",
        "nearest-neighbour token recovery, cosine (%)",
        "next-token top-1 agreement (%)",
        &[trade],
    )?;
    std::fs::write(
        a.output.join("curve.json"),
        serde_json::to_string_pretty(&evals)?,
    )?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
