//! `sgt eval text`: the text attack suite on a trained SGT and the config's held-out split.

use crate::lm::model_args::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_eval::text::beamclean::BeamCleanConfig;
use stainedglass_eval::text::inverter::InverterConfig;
use stainedglass_eval::text::utility::load_questions;
use stainedglass_eval::text::{run_text_suite, write_text_report, TextSuiteConfig, TextSuiteInput};
use stainedglass_text::{TokenizerWrapper, WrapperOptions};
use stainedglass_train::text::TextTrainConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct EvalTextArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The training config: its data section names the conversations and the held-out split
    /// (the attacker's own text is the training split).
    #[arg(long)]
    pub config: PathBuf,
    /// The trained layer (a run's `sgt/` folder).
    #[arg(long)]
    pub sgt: PathBuf,
    /// Question set for answer accuracy (JSON lines: question, answers).
    #[arg(long, default_value = "data/eval/questions.jsonl")]
    pub questions: PathBuf,
    /// Where to write report.json, summary.md and the plots.
    #[arg(long)]
    pub report: PathBuf,
    /// Use only the first N held-out conversations.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N attacker conversations.
    #[arg(long)]
    pub attacker_limit: Option<usize>,
    /// Use only the first N questions.
    #[arg(long)]
    pub question_limit: Option<usize>,
    /// Epochs of the learned inverters (fresh noise each).
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Held-out prompts the BeamClean search decodes.
    #[arg(long, default_value_t = 12)]
    pub beamclean_rows: usize,
    /// BeamClean beam width.
    #[arg(long, default_value_t = 4)]
    pub beam: usize,
    /// Gaussian baseline scales (σ / embedding RMS), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.5,1,4,16")]
    pub gaussian: Vec<f64>,
    /// Metric-DP baselines (mean noise radius / mean embedding norm), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16,32")]
    pub metric_dp: Vec<f64>,
    /// The SGT with its noise multiplied by each factor (same centres), attacked by the learned
    /// MLP: how much more noise it would take to stop it. Comma-separated; `none` skips them.
    #[arg(long, value_delimiter = ',', default_value = "2,4,8", value_parser = parse_factor)]
    pub sgt_noise_factors: Vec<Option<f64>>,
    /// Decoder layer the activation probe reads (the provider's attack: a probe trained on clean
    /// hidden states); default: the config's distillation layer, else 6. 0 skips the probe.
    #[arg(long)]
    pub probe_layer: Option<usize>,
    /// Attack only the SGT with the learned inverters and BeamClean (not the baselines).
    #[arg(long)]
    pub no_baseline_attacks: bool,
    /// Also attack every baseline point with the learned MLP inverter (both baselines as curves
    /// under the strongest attack; the frontier of docs/eval/frontier/).
    #[arg(long, conflicts_with = "no_baseline_attacks")]
    pub all_baseline_attacks: bool,
    /// Seed of every mechanism's noise and of the attacks' initialisation and sampling.
    #[arg(long, default_value_t = 20_261_129)]
    pub seed: u64,
}

pub fn run(a: EvalTextArgs) -> Result<()> {
    let started = Instant::now();
    let cfg = TextTrainConfig::load(&a.config)?;
    let margs = ModelArgs {
        model: cfg.model.path.clone().or(a.model.model.clone()),
        ..a.model.clone()
    };
    let tok = Arc::new(margs.load_tokenizer()?);
    let model = margs.load_model()?;
    let cloak = stainedglass_train::text::load_sgt(&a.sgt, model.device())
        .with_context(|| format!("loading the SGT from {}", a.sgt.display()))?;
    let mut held = stainedglass_train::text::held_out_rows(&cfg, &tok)?;
    let mut attacker = stainedglass_train::text::training_rows(&cfg, &tok)?;
    held.truncate(a.limit.unwrap_or(usize::MAX));
    attacker.truncate(a.attacker_limit.unwrap_or(usize::MAX));
    if held.is_empty() || attacker.is_empty() {
        bail!(
            "{}: need held-out and training conversations (data.held_out = {}, {} in all)",
            a.config.display(),
            cfg.data.held_out,
            held.len() + attacker.len()
        );
    }
    let mut questions = load_questions(&a.questions)?;
    questions.truncate(a.question_limit.unwrap_or(usize::MAX));
    let wrapper = TokenizerWrapper::new(
        tok.clone(),
        WrapperOptions {
            add_generation_prompt: true,
            ..Default::default()
        },
    );
    let suite = TextSuiteConfig {
        gaussian_scales: a.gaussian.clone(),
        metric_dp_radii: a.metric_dp.clone(),
        sgt_noise_factors: a.sgt_noise_factors.iter().flatten().copied().collect(),
        inverter: InverterConfig {
            epochs: a.epochs,
            ..Default::default()
        },
        beamclean: BeamCleanConfig {
            beam: a.beam,
            ..Default::default()
        },
        beamclean_rows: a.beamclean_rows,
        probe_layer: match a
            .probe_layer
            .or(cfg.loss.distillation_layer_index)
            .unwrap_or(6)
        {
            0 => None,
            k => Some(k),
        },
        attack_baselines: !a.no_baseline_attacks,
        attack_all_baselines: a.all_baseline_attacks,
        seed: a.seed,
        ..Default::default()
    };
    let input = TextSuiteInput {
        model: &model,
        tokenizer: &tok,
        question_wrapper: &wrapper,
        sgt: &cloak,
        attacker_rows: &attacker,
        held_out: &held,
        questions: &questions,
    };
    let report = run_text_suite(&input, &suite, &mut |line| {
        eprintln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64())
    })?;
    let extra = serde_json::json!({
        "sgt": a.sgt,
        "config": a.config,
        "questions": a.questions,
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    write_text_report(
        &a.report,
        "Text SGT: attacks, utility and baselines",
        &report,
        extra,
    )?;
    let sgt = report
        .mechanisms
        .iter()
        .find(|m| m.kind == "sgt")
        .context("the report has no SGT entry")?;
    let clean = &report.mechanisms[0];
    let (attack, top1) = sgt.strongest();
    println!(
        "{}",
        serde_json::json!({
            "report": a.report,
            "sgt_strongest_attack": attack,
            "sgt_strongest_top1": top1,
            "clean_answer_accuracy": clean.answers.accuracy,
            "sgt_answer_accuracy": sgt.answers.accuracy,
            "sgt_next_token_agreement": sgt.utility.agreement,
            "wall_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}

/// A noise factor: a positive number, or `none`.
fn parse_factor(s: &str) -> std::result::Result<Option<f64>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(Some(f)),
        _ => Err(format!("`{s}` is not a positive number (or `none`)")),
    }
}
