//! `sgt bench pii`: what personal-data handling adds to a request — detection, pseudonymisation
//! and mapping the reply back — on prompts of 1,000 and 10,000 characters made of the labelled
//! synthetic prompts (so full of personal data: the worst case). There is no PyTorch
//! computation to compare with; the record gives the time per 1,000 characters.

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;
use stainedglass_pii::eval::LabelledPrompt;
use stainedglass_pii::Pseudonymizer;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct PiiBenchArgs {
    /// Labelled prompts whose text is concatenated into the benchmark prompts.
    #[arg(long, default_value = "data/pii/prompts-fresh.jsonl")]
    pub data: PathBuf,
    /// Prompt lengths, in characters (comma-separated).
    #[arg(long, default_value = "1000,10000", value_delimiter = ',')]
    pub chars: Vec<usize>,
    /// Timed runs per length.
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    #[command(flatten)]
    pub detector: crate::pii::DetectorArgs,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn pii(a: PiiBenchArgs) -> Result<()> {
    let d = a.detector.detector()?;
    let text = std::fs::read_to_string(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?;
    let corpus: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<LabelledPrompt>(l).ok())
        .filter_map(|p| p.messages.first().map(|m| m.content.clone()))
        .collect();
    anyhow::ensure!(!corpus.is_empty(), "no prompts in {}", a.data.display());
    for &n in &a.chars {
        let mut prompt = String::new();
        for t in corpus.iter().cycle() {
            if prompt.chars().count() >= n {
                break;
            }
            prompt.push_str(t);
            prompt.push(' ');
        }
        let prompt: String = prompt.chars().take(n).collect();
        let (mut detect, mut full) = (Vec::new(), Vec::new());
        let mut spans = 0;
        for i in 0..a.iters + 2 {
            let t = Instant::now();
            spans = d.detect(&prompt).len();
            let t_detect = t.elapsed().as_secs_f64() * 1e3;
            let t = Instant::now();
            let mut p = Pseudonymizer::new(&d);
            let (pseudo, _) = p.pseudonymize(&prompt);
            let back = p.into_mapping().restore(&pseudo);
            let t_full = t.elapsed().as_secs_f64() * 1e3;
            std::hint::black_box(back);
            if i >= 2 {
                detect.push(t_detect);
                full.push(t_full);
            }
        }
        let (md, mf) = (median(detect), median(full));
        println!(
            "{}",
            json!({"bench": "pii", "chars": n, "spans": spans, "iters": a.iters,
                   "detect_ms_median": md, "pseudonymize_and_restore_ms_median": mf,
                   "ms_per_1000_chars": mf * 1000.0 / n as f64,
                   "threads": 1})
        );
    }
    Ok(())
}
