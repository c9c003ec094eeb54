//! Which model (GGUF file or Hugging Face folder) a text command uses.

use anyhow::{bail, Context, Result};
use clap::Args;
use stainedglass_models::llm::Llama;
use stainedglass_text::TextTokenizer;
use std::path::PathBuf;

/// The bundled default, relative to the assets directory.
pub const BUNDLED_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face folder (config.json + safetensors + tokenizer.json).
    /// Default: the bundled SmolLM2-135M-Instruct under the assets directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Take the tokenizer from this folder (tokenizer.json, tokenizer_config.json) instead of
    /// the model.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Assets directory (as filled by scripts/setup-assets.sh). Default: `$SGT_ASSETS`, else
    /// `assets`.
    #[arg(long)]
    pub assets: Option<PathBuf>,
}

impl ModelArgs {
    /// The assets folder: `--assets`, else `$SGT_ASSETS`, else `assets`.
    pub fn assets(&self) -> PathBuf {
        self.assets.clone().unwrap_or_else(crate::env::assets)
    }

    pub fn model_path(&self) -> Result<PathBuf> {
        let p = match &self.model {
            Some(p) => p.clone(),
            None => self.assets().join(BUNDLED_GGUF),
        };
        if !p.exists() {
            if self.model.is_none() {
                bail!(
                    "the bundled model {} is missing: run ./scripts/setup-assets.sh (or pass \
                     --model)",
                    p.display()
                );
            }
            bail!(
                "model {} not found: pass a .gguf file or a model folder",
                p.display()
            );
        }
        Ok(p)
    }

    pub fn load_tokenizer(&self) -> Result<TextTokenizer> {
        let p = match &self.tokenizer {
            Some(t) => t.clone(),
            None => self.model_path()?,
        };
        TextTokenizer::from_model_path(&p)
            .with_context(|| format!("loading the tokenizer from {}", p.display()))
    }

    pub fn load_model(&self) -> Result<Llama> {
        let p = self.model_path()?;
        Llama::load(&p, &candle_core::Device::Cpu)
            .with_context(|| format!("loading the model from {}", p.display()))
    }
}
