//! `sgt text …`: prepare chat training data with the base model, train a text SGT, measure it
//! with attacks trained on the frozen result (`attacks.rs`).

pub mod artefact;
pub mod attacks;
pub mod curve;
pub mod precision;
pub mod preview;

use crate::lm::model_args::ModelArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use stainedglass_train::text::{data, PrivacyCheck, RunOptions, TextTrainConfig};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum TextCommand {
    /// Answer the bundled chat prompts with the base model (greedy, batched) and write the
    /// conversations as JSON lines (skipped when the file exists unless --force).
    PrepareData(PrepareArgs),
    /// Train a TransformerCloak with the distillation loss (resumes from checkpoints).
    Train(TrainArgs),
    /// Plot recovery and agreement over training from a run's metrics.jsonl.
    Curve(curve::CurveArgs),
    /// Evaluation of a trained SGT on the config's held-out conversations (JSON): attacks
    /// trained on the frozen SGT (the strongest is the privacy headline), nearest neighbour,
    /// next-token agreement.
    Eval(EvalArgs),
    /// Package a trained SGT with the tokenizer, chat template and embedding table as the
    /// client artefact (StainedGlassTransformForText).
    Export(artefact::ExportArgs),
    /// Apply a client artefact to a prompt: transformed embeddings to a file (safetensors or
    /// torch.save), optionally previewing what a server could read back.
    Apply(artefact::ApplyArgs),
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The training config (its data section names the held-out conversations).
    #[arg(long)]
    pub config: PathBuf,
    /// The trained layer (a run's `sgt/` folder).
    #[arg(long)]
    pub sgt: PathBuf,
    /// Evaluate only the first N held-out conversations.
    #[arg(long)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub attacks: AttackArgs,
    #[command(flatten)]
    pub precision: precision::PrecisionArgs,
}

#[derive(Args, Clone)]
pub struct AttackArgs {
    /// Epochs of the attackers trained on the frozen SGT (learned MLP inverter, layer probe;
    /// fresh noise each epoch). 0 skips them: the privacy of the result is then unmeasured.
    #[arg(long, default_value_t = 3)]
    pub attack_epochs: usize,
    /// Seed of the attackers' initialisation and noise (default: the suite's fixed seed); a
    /// second seed measures how much the attacks vary from run to run.
    #[arg(long)]
    pub attack_seed: Option<u64>,
}

#[derive(Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the conversations (JSON lines).
    #[arg(long, default_value = "runs/text-data/conversations.jsonl")]
    pub out: PathBuf,
    /// Longest generated reply, in tokens.
    #[arg(long, default_value_t = 160)]
    pub max_new_tokens: usize,
    /// Prompts answered together in one batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Use only the first N prompt records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Regenerate the file even if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// TOML config (see configs/text-sgt-smollm2.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory (sgt/, checkpoints/, metrics.jsonl).
    #[arg(long, default_value = "runs/text-sgt")]
    pub output: PathBuf,
    /// Ignore existing checkpoints.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub attacks: AttackArgs,
}

pub fn run(cmd: TextCommand) -> Result<()> {
    match cmd {
        TextCommand::PrepareData(a) => prepare(a),
        TextCommand::Train(a) => train(a),
        TextCommand::Curve(a) => curve::run(a),
        TextCommand::Eval(a) => eval(a),
        TextCommand::Export(a) => artefact::export(a),
        TextCommand::Apply(a) => artefact::apply(a),
    }
}

fn prepare(a: PrepareArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        eprintln!(
            "{} exists; reusing it (--force to regenerate)",
            a.out.display()
        );
        return Ok(());
    }
    let tok = a.model.load_tokenizer()?;
    let model = a.model.load_model()?;
    let mut prompts = data::load_prompt_turns(&a.model.assets().join("chat"))?;
    if let Some(n) = a.limit {
        prompts.truncate(n);
    }
    let pb = stainedglass_train::metrics::progress_bar(
        prompts.iter().map(Vec::len).sum::<usize>() as u64,
        0,
        "replies",
    );
    if !std::io::stderr().is_terminal() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let n = data::prepare_conversations(
        &model,
        &tok,
        &prompts,
        &a.out,
        a.max_new_tokens,
        a.batch,
        |done, _| pb.set_position(done as u64),
    )?;
    pb.finish_and_clear();
    eprintln!("wrote {n} conversations to {}", a.out.display());
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    let mut cfg = TextTrainConfig::load(&a.config)?;
    if cfg.model.path.is_none() {
        cfg.model.path = a.model.model.clone();
    }
    let margs = crate::lm::model_args::ModelArgs {
        model: cfg.model.path.clone(),
        ..a.model.clone()
    };
    let tok = Arc::new(margs.load_tokenizer()?);
    let model = margs.load_model()?;
    crate::alloc::keep_freed_pages();
    // Each periodic evaluation also trains an inverter on the layer as it is then, unless the
    // attacks are off.
    let mut periodic = match a.attacks.attack_epochs {
        0 => None,
        _ => Some(attacks::Periodic::new(&cfg, &model, &tok)?),
    };
    let summary = stainedglass_train::text::train(
        &cfg,
        &model,
        tok.clone(),
        &a.output,
        &RunOptions {
            fresh: a.fresh,
            progress: std::io::stderr().is_terminal(),
        },
        periodic.as_mut().map(|p| p as &mut dyn PrivacyCheck),
    )
    .with_context(|| format!("training into {}", a.output.display()))?;
    // With a served adapter the provider's model is the served one: its probes read it.
    let served = match &summary.served_model_dir {
        Some(dir) => {
            crate::lm::convert::write_tokenizer_files(&tok, dir)?;
            eprintln!(
                "  wrote the served model (base with the trained adapter) to {}; serve and \
                 evaluate it with --model {0}",
                dir.display()
            );
            Some(
                stainedglass_models::llm::Llama::load(dir, model.device())
                    .with_context(|| format!("loading the served model from {}", dir.display()))?,
            )
        }
        None => None,
    };
    let fresh = fresh_attacks(
        &cfg,
        served.as_ref().unwrap_or(&model),
        &tok,
        (&summary.sgt_dir, Default::default()),
        &a.attacks,
        None,
        &margs.assets(),
    )?;
    if let Some(f) = &fresh {
        let path = a.output.join("fresh_attacks.json");
        stainedglass_core::io::atomic_write(&path, serde_json::to_string_pretty(f)?.as_bytes())?;
        eprintln!("  wrote {}", path.display());
    }
    let mut out = serde_json::to_value(&summary)?;
    out["fresh_attacks"] = serde_json::to_value(&fresh)?;
    println!("{out}");
    Ok(())
}

/// The attacks trained on the frozen SGT in `sgt_dir`, unless `--attack-epochs 0` (then a
/// warning that privacy is unmeasured).
fn fresh_attacks(
    cfg: &TextTrainConfig,
    model: &stainedglass_models::llm::Llama,
    tok: &Arc<stainedglass_text::TextTokenizer>,
    (sgt_dir, precision): (&std::path::Path, stainedglass_models::text_sgt::Precision),
    a: &AttackArgs,
    limit: Option<usize>,
    assets: &std::path::Path,
) -> Result<Option<stainedglass_eval::text::fresh::FreshAttackReport>> {
    if a.attack_epochs == 0 {
        eprintln!(
            "warning: --attack-epochs 0: no attack was trained on the frozen SGT, so its privacy \
             is unmeasured (nearest neighbour alone says little)"
        );
        return Ok(None);
    }
    let mut cloak = stainedglass_train::text::load_sgt(sgt_dir, model.device())
        .with_context(|| format!("loading the SGT from {}", sgt_dir.display()))?;
    cloak.set_precision(precision)?;
    let cache = attacks::probe_cache(assets);
    attacks::measure(
        cfg,
        model,
        tok,
        &cloak,
        (a.attack_epochs, a.attack_seed),
        limit,
        Some(&cache),
    )
    .map(Some)
}

fn eval(a: EvalArgs) -> Result<()> {
    let cfg = TextTrainConfig::load(&a.config)?;
    let margs = crate::lm::model_args::ModelArgs {
        model: cfg.model.path.clone().or(a.model.model.clone()),
        ..a.model.clone()
    };
    let tok = Arc::new(margs.load_tokenizer()?);
    let model = margs.load_model()?;
    let mut cloak = stainedglass_train::text::load_sgt(&a.sgt, model.device())
        .with_context(|| format!("loading the SGT from {}", a.sgt.display()))?;
    cloak.set_precision(a.precision.precision)?;
    let clean =
        stainedglass_train::text::held_out_eval(&cfg, &model, tok.clone(), &cloak, a.limit, false)?;
    let sgt =
        stainedglass_train::text::held_out_eval(&cfg, &model, tok.clone(), &cloak, a.limit, true)?;
    let fresh = fresh_attacks(
        &cfg,
        &model,
        &tok,
        (&a.sgt, a.precision.precision),
        &a.attacks,
        a.limit,
        &margs.assets(),
    )?;
    println!(
        "{}",
        serde_json::json!({"clean": clean, "transformed": sgt, "fresh_attacks": fresh})
    );
    Ok(())
}
