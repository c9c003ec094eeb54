//! `sgt text curve`: plots the trainer's quick evaluations from `metrics.jsonl` — recovery and
//! agreement over steps, and the privacy–utility trajectory (recovery vs agreement).

use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_eval::plot::{line_chart, Series};
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
    let mut evals = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{} holds a line that is not JSON", a.metrics.display()))?;
        if v["kind"] == "eval" {
            evals.push(v);
        }
    }
    if evals.is_empty() {
        bail!("{} holds no evaluation records", a.metrics.display());
    }
    let get = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let pct = |v: &serde_json::Value, k: &str| 100.0 * get(v, k);
    let series = |name: &str, key: &str| Series {
        name: name.to_string(),
        points: evals
            .iter()
            .map(|v| (get(v, "step"), pct(v, key), String::new()))
            .collect(),
    };
    std::fs::create_dir_all(&a.output)?;
    line_chart(
        &a.output.join("curve_steps.png"),
        "Held-out quick evaluation during training",
        "training step",
        "percent",
        &[
            series("NN recovery, cosine (%)", "nn_top1_cosine"),
            series("NN recovery, L2 (%)", "nn_top1_l2"),
            series("next-token agreement (%)", "next_token_agreement"),
        ],
    )?;
    let trade = Series {
        name: "TransformerCloak during training".into(),
        points: evals
            .iter()
            .map(|v| {
                (
                    pct(v, "nn_top1_cosine"),
                    pct(v, "next_token_agreement"),
                    format!("{}", get(v, "step")),
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
    let json: Vec<serde_json::Value> = evals.clone();
    std::fs::write(
        a.output.join("curve.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
