//! `sgt eval weights`: what serving from the weights as stored (quantized, `Llama::load_stored`)
//! changes against the f32 model an SGT is trained with — answer accuracy on the question set,
//! clean and through the SGT, the SGT's next-token agreement, and how often the two models'
//! clean next-token predictions agree — with the same seeded noise on both sides.

use crate::lm::model_args::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_core::NoiseRng;
use stainedglass_eval::text::mechanism::{Clean, Mechanism, Sgt};
use stainedglass_eval::text::observed::{apply_rows, embed_rows};
use stainedglass_eval::text::utility::{answer_accuracy, load_questions, next_token_utility};
use stainedglass_models::llm::{Activations, Llama};
use stainedglass_text::{TokenizerWrapper, WrapperOptions};
use stainedglass_train::text::TextTrainConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct EvalWeightsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The training config (its data section names the held-out conversations).
    #[arg(long)]
    pub config: PathBuf,
    /// The trained layer (a run's `sgt/` folder).
    #[arg(long)]
    pub sgt: PathBuf,
    /// Question set for answer accuracy (JSON lines: question, answers).
    #[arg(long, default_value = "data/eval/questions.jsonl")]
    pub questions: PathBuf,
    /// Write the JSON result here as well as to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tokens generated per answer.
    #[arg(long, default_value_t = 24)]
    pub answer_tokens: usize,
    /// The stored model's activations: `int8` (8-bit decoding, what `sgt serve --activations
    /// int8` runs), `f32` (equal to the f32 model bit for bit, by construction) or `bf16`
    /// (a bf16 folder's prefill in bf16).
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32", "bf16"])]
    pub activations: String,
    /// Seed of the SGT's noise (the same on both models).
    #[arg(long, default_value_t = 20_261_203)]
    pub seed: u64,
}

pub fn run(a: EvalWeightsArgs) -> Result<()> {
    let started = Instant::now();
    let cfg = TextTrainConfig::load(&a.config)?;
    let margs = ModelArgs {
        model: cfg.model.path.clone().or(a.model.model.clone()),
        ..a.model.clone()
    };
    let path = margs.model_path()?;
    let tok = Arc::new(margs.load_tokenizer()?);
    let f32_model = margs.load_model()?;
    let act: Activations = a.activations.parse().map_err(anyhow::Error::msg)?;
    let stored = Llama::load_stored_with(&path, &candle_core::Device::Cpu, act)
        .with_context(|| format!("loading {} with its weights as stored", path.display()))?;
    if !stored.is_stored() {
        bail!(
            "{} is not a GGUF file: nothing is stored quantized",
            path.display()
        );
    }
    let cloak = stainedglass_train::text::load_sgt(&a.sgt, f32_model.device())
        .with_context(|| format!("loading the SGT from {}", a.sgt.display()))?;
    let held = stainedglass_train::text::held_out_rows(&cfg, &tok)?;
    let questions = load_questions(&a.questions)?;
    let wrapper = TokenizerWrapper::new(
        tok.clone(),
        WrapperOptions {
            add_generation_prompt: true,
            ..Default::default()
        },
    );
    let clean = embed_rows(f32_model.embedding_table(), &held)?;
    let sgt = Sgt(&cloak);
    let mut sides = serde_json::Map::new();
    for (name, model) in [("f32", &f32_model), ("stored", &stored)] {
        let answers = |mech: &dyn Mechanism| {
            let mut rng = NoiseRng::seeded(a.seed);
            answer_accuracy(
                model,
                &wrapper,
                &tok,
                &questions,
                mech,
                &mut rng,
                a.answer_tokens,
            )
        };
        let (clean_answers, sgt_answers) = (answers(&Clean)?, answers(&sgt)?);
        let applied = apply_rows(&sgt, &held, &clean, &mut NoiseRng::seeded(a.seed))?;
        let utility = next_token_utility(model, &held, &clean, &applied)?;
        eprintln!(
            "[{:>6.1}s] {name}: answers {:.3} clean, {:.3} through the SGT; agreement {:.4}",
            started.elapsed().as_secs_f64(),
            clean_answers.accuracy,
            sgt_answers.accuracy,
            utility.agreement
        );
        sides.insert(
            name.into(),
            serde_json::json!({
                "clean_answer_accuracy": clean_answers.accuracy,
                "sgt_answer_accuracy": sgt_answers.accuracy,
                "sgt_next_token_agreement": utility.agreement,
                "sgt_kl": utility.kl,
                "clean_replies": clean_answers.replies,
                "weight_bytes": model.weight_bytes(),
            }),
        );
    }
    // How often the stored model's clean prediction is the f32 model's, on the held-out replies.
    let same = stainedglass_eval::text::utility::cross_model_agreement(
        &f32_model, &stored, &held, &clean,
    )?;
    let get = |side: &str, k: &str| sides[side][k].as_f64().unwrap_or(f64::NAN);
    let out = serde_json::json!({
        "model": path,
        "sgt": a.sgt,
        "questions": questions.len(),
        "held_out_rows": held.len(),
        "storage": stored.storage_summary(),
        "isa": stainedglass_models::llm::QuantIsa::get().name(),
        "activations": a.activations,
        "f32": sides["f32"],
        "stored": sides["stored"],
        "clean_next_token_agreement_stored_vs_f32": same,
        "delta_points": {
            "clean_answers": 100.0 * (get("stored", "clean_answer_accuracy") - get("f32", "clean_answer_accuracy")),
            "sgt_answers": 100.0 * (get("stored", "sgt_answer_accuracy") - get("f32", "sgt_answer_accuracy")),
            "sgt_agreement": 100.0 * (get("stored", "sgt_next_token_agreement") - get("f32", "sgt_next_token_agreement")),
        },
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(p) = &a.out {
        stainedglass_core::io::atomic_write(p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{text}");
    Ok(())
}
