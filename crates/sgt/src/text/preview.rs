//! `sgt text apply --preview`: what a server could read of this prompt, judged by attacks
//! trained on the frozen artefact — nearest neighbour is one column, never the headline.
//!
//! The attacker's own text is the bundled chat prompts (`<assets>/chat`: MT-Bench and Vicuna
//! user turns), each templated and transformed exactly as the artefact does it. On it are
//! trained, after the artefact was frozen (`stainedglass_eval::text::fresh`):
//! - the learned MLP inverter on the artefact's public transform (fresh noise each epoch);
//! - the provider's probes on the base model's *clean* states at three depths (kept in the probe
//!   cache: they do not depend on the SGT);
//! - the provider holding the artefact: a probe on the states of the SGT's own outputs.
//!
//! The last prompts of the attacker's text are held out; the attack that recovers most of their
//! transformed tokens is the headline, and every attack reads this prompt. The provider's
//! probes need the base model (`--model`, default the bundled one), which is checked against the
//! artefact's embedding hash.

use super::attacks::{print, probe_cache, probe_depths};
use crate::lm::model_args::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_eval::text::fresh::{observe, FreshAttackConfig, FreshAttacks};
use stainedglass_eval::text::inverter::InverterConfig;
use stainedglass_metrics::EmbeddingIndex;
use stainedglass_text::{
    EncodedPrompt, Message, PromptInput, Role, StainedGlassTransformForText, TransformedPrompt,
};

/// How `--preview` trains its attackers.
#[derive(Args, Clone)]
pub struct PreviewArgs {
    /// The base model the provider serves (for its probes); it must be the artefact's.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Passes of each attacker over its text (fresh noise each).
    #[arg(long, default_value_t = 3)]
    pub attack_epochs: usize,
    /// Use only the first N bundled prompts as the attacker's text (default: all).
    #[arg(long)]
    pub attack_prompts: Option<usize>,
    /// Decoder layers the provider's clean-state probes read (comma-separated; default: a
    /// fifth of the depth, half of that, and halfway from there to the output — layers 6, 3 and
    /// 18 of SmolLM2's 30, as `sgt text train` probes a layer-6 SGT). The first also gets a
    /// probe trained on the SGT's own states.
    #[arg(long, value_delimiter = ',')]
    pub probe_layers: Vec<usize>,
}

/// Prompts of the bundled chat set kept out of the attackers' training, to rank the attacks.
const HELD_OUT: usize = 24;

/// The preview of `out` (this prompt, transformed by `sgt`) as JSON: every attack's reading and
/// share of the transformed tokens it recovers, led by the strongest on held-out prompts.
pub fn preview(
    a: &PreviewArgs,
    sgt: &StainedGlassTransformForText,
    out: &TransformedPrompt,
) -> Result<serde_json::Value> {
    let model = a.model.load_model()?;
    let want = &sgt.config().base_model.embedding_sha256;
    let got = stainedglass_text::artefact::model_embedding_sha256(&model)?;
    if &got != want {
        bail!(
            "{} is not the artefact's base model (its embedding table hashes to {got}, the \
             artefact was made for {want}): pass the model it was trained for with --model",
            a.model.model_path()?.display()
        );
    }
    let mut rows = attacker_rows(a, sgt)?;
    if rows.len() < HELD_OUT + 8 {
        bail!(
            "--attack-prompts {} leaves too little text: the attackers need at least {} prompts \
             ({HELD_OUT} are held out to rank them)",
            rows.len(),
            HELD_OUT + 8
        );
    }
    let held = rows.split_off(rows.len() - HELD_OUT);
    let layers = match a.probe_layers.is_empty() {
        true => probe_depths(
            Some(model.config().num_layers / 5),
            model.config().num_layers,
        ),
        false => a.probe_layers.clone(),
    };
    let cfg = FreshAttackConfig {
        inverter: InverterConfig {
            epochs: a.attack_epochs.max(1),
            ..InverterConfig::default()
        },
        probe_layers: layers,
        probe_on_sgt: true,
        ..FreshAttackConfig::default()
    };
    let index = EmbeddingIndex::new(model.embedding_table())?;
    let cache = probe_cache(&a.model.assets());
    eprintln!(
        "training attackers on the frozen artefact ({} bundled prompts)",
        rows.len()
    );
    let mut log = |line: String| eprintln!("  {line}");
    let attackers = FreshAttacks::train(
        &index,
        &model,
        sgt.cloak(),
        &rows,
        &cfg,
        Some(&cache),
        &mut log,
    )
    .context("training the attackers on the frozen artefact")?;
    let ranked = attackers.score(&model, sgt.cloak(), &held)?;
    print(&ranked);
    let obs = observe(
        out.embeddings.unsqueeze(0)?,
        &out.input_ids,
        &out.noise_mask,
    );
    let tok = sgt.tokenizer();
    let mut readings = serde_json::Map::new();
    for name in ranked.attacks.keys() {
        let guessed = attackers.read(name, &obs)?;
        if guessed.len() != obs.positions.len() {
            bail!(
                "internal: {name} read {} of {} transformed positions",
                guessed.len(),
                obs.positions.len()
            );
        }
        let hits = guessed
            .iter()
            .zip(&obs.tokens)
            .filter(|(g, t)| g == t)
            .count();
        let mut read = out.input_ids.clone();
        for (&p, &g) in obs.positions.iter().zip(&guessed) {
            read[p as usize] = g;
        }
        readings.insert(
            name.clone(),
            serde_json::json!({
                "reads": tok.decode(&read, false)?,
                "recovered": hits as f64 / obs.positions.len().max(1) as f64,
                "held_out_recovered": ranked.attacks[name].top1,
            }),
        );
    }
    let strongest = &readings[&ranked.strongest];
    Ok(serde_json::json!({
        "clean_prompt": tok.decode(&out.input_ids, false)?,
        "transformed_tokens": obs.positions.len(),
        "strongest_attack": ranked.strongest,
        "strongest_reads": strongest["reads"],
        "transformed_tokens_recovered_by_strongest": strongest["recovered"],
        "strongest_held_out_recovered": ranked.strongest_top1,
        "attacks": readings,
        "attackers": {
            "text": "the bundled chat prompts (MT-Bench and Vicuna user turns)",
            "trained_on_prompts": ranked.attacker_prompts,
            "held_out_prompts": ranked.held_out_prompts,
            "epochs": cfg.inverter.epochs,
            "probe_layers": cfg.probe_layers,
            "train_seconds": ranked.train_seconds,
        },
    }))
}

/// The bundled chat prompts, one user turn each, encoded by the artefact's own wrapper.
fn attacker_rows(
    a: &PreviewArgs,
    sgt: &StainedGlassTransformForText,
) -> Result<Vec<EncodedPrompt>> {
    let chat = a.model.assets().join("chat");
    let turns = stainedglass_train::text::data::load_prompt_turns(&chat)?;
    let max = sgt.max_positions();
    let mut rows = Vec::new();
    for turn in turns.into_iter().flatten() {
        if a.attack_prompts.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let enc = sgt.encode(&PromptInput::Chat(vec![Message::new(Role::User, turn)]))?;
        if enc.input_ids.len() <= max && enc.noise_mask.contains(&1) {
            rows.push(enc);
        }
    }
    Ok(rows)
}
