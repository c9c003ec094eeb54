//! `sgt text export` (trained layer → client artefact) and `sgt text apply` (prompt →
//! transformed embeddings file, with an optional "what the server could read" preview).

use crate::lm::model_args::ModelArgs;
use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use stainedglass_core::NoiseRng;
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use stainedglass_text::artefact::{ArtefactOptions, EmbeddingDtype};
use stainedglass_text::{Message, PromptInput, Role, StainedGlassTransformForText};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The trained layer (a training run's `sgt/` folder).
    #[arg(long, required_unless_present = "init_only")]
    pub sgt: Option<PathBuf>,
    /// Export the untrained initial layer instead (σ at its minimum: almost no protection;
    /// for smoke tests only).
    #[arg(long, conflicts_with = "sgt")]
    pub init_only: bool,
    /// Artefact directory to write (replaced atomically).
    #[arg(long)]
    pub output: PathBuf,
    /// Store the embedding table in f16 (half the size).
    #[arg(long)]
    pub f16: bool,
    /// Transform every token, template scaffolding included, not only message contents.
    #[arg(long)]
    pub transform_all_tokens: bool,
    /// Base-model name recorded in the artefact (default: the model file's name).
    #[arg(long)]
    pub name: Option<String>,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let path = a.model.model_path()?;
    let model = a.model.load_model()?;
    let tok = Arc::new(a.model.load_tokenizer()?);
    let cloak = match &a.sgt {
        Some(dir) => stainedglass_train::text::load_sgt(dir, model.device())
            .with_context(|| format!("loading the trained SGT from {}", dir.display()))?,
        None => {
            eprintln!(
                "warning: exporting an UNTRAINED SGT (--init-only): it barely changes the \
                 embeddings and protects nothing"
            );
            TransformerCloak::from_base(
                TransformerCloakConfig::new(model.config().clone()),
                &model,
            )?
        }
    };
    let name = a.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "model".into())
    });
    let sgt = StainedGlassTransformForText::new(
        cloak,
        model.embedding_table(),
        tok,
        ArtefactOptions {
            base_model_name: name,
            embedding_dtype: if a.f16 {
                EmbeddingDtype::F16
            } else {
                EmbeddingDtype::F32
            },
            transform_all_tokens: a.transform_all_tokens,
        },
    )?;
    let written = sgt
        .save_pretrained(&a.output)
        .with_context(|| format!("writing the artefact to {}", a.output.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "artefact": a.output,
            "base_model": sgt.config().base_model,
            "embedding_dtype": sgt.config().embedding_dtype,
            "files": written.files,
        })
    );
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// One tensor `embeddings (seq, hidden)` f32 — what `sgt serve` accepts.
    Safetensors,
    /// `torch.save` of the `(seq, hidden)` tensor — vLLM's `prompt_embeds`.
    Torch,
}

#[derive(Args)]
pub struct ApplyArgs {
    /// The client artefact (written by `sgt text export`).
    #[arg(long)]
    pub sgt: PathBuf,
    /// The user message.
    #[arg(long)]
    pub prompt: String,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Where to write the embeddings (format from --format, else from the extension: .pt →
    /// torch, anything else → safetensors). Without it nothing is written.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Output format (default: from the --output file name).
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Also show the prompt that was transformed (after personal data was replaced) and what a
    /// server could read of it: attacks trained on this frozen artefact (the learned inverter,
    /// the provider's probes on its model's states) each read it, led by the strongest; nearest
    /// neighbour is one of them. Needs the base model (--model, default the bundled one).
    #[arg(long)]
    pub preview: bool,
    #[command(flatten)]
    pub attack: super::preview::PreviewArgs,
    #[command(flatten)]
    pub pii: crate::pii::GuardArgs,
    /// Noise seed (reproducible, for tests); default: fresh OS entropy.
    #[arg(long)]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub precision: super::precision::PrecisionArgs,
}

pub fn apply(a: ApplyArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut sgt = StainedGlassTransformForText::from_pretrained(&a.sgt, &Device::Cpu)
        .with_context(|| format!("loading the artefact {}", a.sgt.display()))?;
    sgt.set_precision(a.precision.precision)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::new(Role::System, s.clone()));
    }
    messages.push(Message::new(Role::User, a.prompt.clone()));
    let t1 = Instant::now();
    let (messages, pii_found) = match a.pii.detector()? {
        Some(d) => {
            let guard = stainedglass_serve::proxy::PiiGuard::new(a.pii.pii, d);
            let (messages, found) = guard.scrub_messages(messages);
            (messages, found)
        }
        None => (messages, 0),
    };
    let sent: Vec<String> = messages.iter().map(|m| m.content.clone()).collect();
    let out = sgt.apply(&PromptInput::Chat(messages), &mut NoiseRng::new(a.seed))?;
    let apply_ms = t1.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = &a.output {
        let format = a.format.unwrap_or(
            if path.extension().is_some_and(|e| e == "pt" || e == "pth") {
                OutputFormat::Torch
            } else {
                OutputFormat::Safetensors
            },
        );
        let bytes = match format {
            OutputFormat::Torch => stainedglass_serve::torch_save::save_bytes(&out.embeddings)?,
            OutputFormat::Safetensors => {
                let tensors = vec![("embeddings".to_string(), out.embeddings.clone())];
                stainedglass_core::io::safetensors_bytes(&tensors)?
            }
        };
        stainedglass_core::io::atomic_write(path, &bytes)?;
    }
    let mut report = serde_json::json!({
        "artefact": a.sgt,
        "tokens": out.input_ids.len(),
        "transformed_tokens": out.noise_mask.iter().filter(|&&m| m != 0).count(),
        "hidden_size": sgt.hidden_size(),
        "load_ms": load_ms,
        "apply_ms": apply_ms,
        "output": a.output,
        "pii": {"mode": a.pii.pii.to_string(), "replaced": pii_found},
    });
    if a.preview {
        report["preview"] = super::preview::preview(&a.attack, &sgt, &out)?;
        // What the SGT was given: personal data already replaced by stand-ins (not kept).
        report["preview"]["transformed_messages"] = serde_json::json!(sent);
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
