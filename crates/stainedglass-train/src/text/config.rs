//! The text-SGT training configuration (`sgt text train --config <toml>`). Every section has
//! defaults, so a config names only what it changes; unknown keys are errors.

use super::adversary::AdversarySection;
use super::served::AdapterSection;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use stainedglass_core::loss::DistillationConfig;
use stainedglass_models::text_sgt::CloakSettings;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// `.gguf` file or Hugging Face folder; empty = the bundled SmolLM2 under the assets dir.
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// JSON lines, one conversation per line: `{"messages": [{"role", "content"}, …]}` or an
    /// instruction record `{"instruction", "context", "system_prompt", "response"}`.
    pub conversations: PathBuf,
    /// The last N conversations are held out for evaluation.
    pub held_out: usize,
    /// Token budget per conversation (longer ones are truncated from the right).
    pub max_length: usize,
    /// Put the distillation loss only on assistant replies (else on every token).
    pub ignore_prompt_loss: bool,
    /// Transform every token, scaffolding included (else message contents only).
    pub transform_all_tokens: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            conversations: PathBuf::from("runs/text-data/conversations.jsonl"),
            held_out: 24,
            max_length: 256,
            ignore_prompt_loss: false,
            transform_all_tokens: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSection {
    pub steps: u64,
    pub batch_size: usize,
    /// Peak learning rate of the estimator and the head weights.
    pub learning_rate: f64,
    /// Peak learning rate of the mean and ρ head biases (the per-feature noise levels).
    pub bias_learning_rate: f64,
    pub warmup_steps: u64,
    /// Linear decay to this fraction of the peak learning rate at the last step.
    pub final_lr_fraction: f64,
    pub grad_accumulation: usize,
    pub clip_grad_norm: Option<f64>,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// Seeds batch order and the training noise (per step, so a resumed run matches).
    pub seed: u64,
    /// Conversations of the held-out set used by each evaluation (0 = all).
    pub eval_conversations: usize,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            steps: 1000,
            batch_size: 4,
            learning_rate: 1e-3,
            bias_learning_rate: 2e-2,
            warmup_steps: 50,
            final_lr_fraction: 0.1,
            grad_accumulation: 1,
            clip_grad_norm: Some(1.0),
            eval_every: 100,
            checkpoint_every: 100,
            seed: 0,
            eval_conversations: 0,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TextTrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    /// The TransformerCloak's hyper-parameters (the artefact stores the same struct).
    pub sgt: CloakSettings,
    pub loss: DistillationConfig,
    pub train: TrainSection,
    /// An inverter trained online against the SGT (off unless `weight > 0`).
    pub adversary: AdversarySection,
    /// The served model's first layers trained with the SGT (off unless `layers > 0`).
    pub adapter: AdapterSection,
}

impl TextTrainConfig {
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let c: Self =
            toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        c.validate()?;
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text, path)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let t = &self.train;
        if t.steps == 0 || t.batch_size == 0 || t.grad_accumulation == 0 {
            return bad(
                "train.steps, train.batch_size and train.grad_accumulation must be ≥ 1".into(),
            );
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            return bad(format!(
                "train.learning_rate {} must be > 0",
                t.learning_rate
            ));
        }
        if !(0.0..=1.0).contains(&t.final_lr_fraction) {
            return bad("train.final_lr_fraction must be in [0, 1]".into());
        }
        if t.eval_every == 0 || t.checkpoint_every == 0 {
            return bad("train.eval_every and train.checkpoint_every must be ≥ 1".into());
        }
        if self.data.max_length < 8 {
            return bad("data.max_length must be at least 8 tokens".into());
        }
        self.loss.validate()?;
        self.adapter.validate(self.loss.distillation_layer_index)?;
        self.adversary.validate()
    }

    /// Learning rate at `step` (0-based): linear warm-up, then linear decay.
    pub fn learning_rate(&self, step: u64) -> f64 {
        self.schedule(step) * self.train.learning_rate
    }

    /// The schedule's factor at `step`, in `(0, 1]`.
    pub fn schedule(&self, step: u64) -> f64 {
        let t = &self.train;
        let peak = 1.0;
        if step < t.warmup_steps {
            return peak * (step + 1) as f64 / t.warmup_steps as f64;
        }
        let span = t.steps.saturating_sub(t.warmup_steps).max(1) as f64;
        let frac = (step - t.warmup_steps) as f64 / span;
        peak * (1.0 - (1.0 - t.final_lr_fraction) * frac.min(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partial_toml_and_rejects_unknown_keys() {
        let c = TextTrainConfig::from_toml(
            "[train]\nsteps = 10\n[loss]\ndistillation_layer_index = 6\nalpha = 0.3\n",
            Path::new("t.toml"),
        )
        .expect("config");
        assert_eq!(c.train.steps, 10);
        assert_eq!(c.loss.distillation_layer_index, Some(6));
        assert_eq!(c.train.batch_size, 4);
        let e = TextTrainConfig::from_toml("[train]\nstepz = 1\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stepz"), "{e}");
        let e = TextTrainConfig::from_toml("[loss]\nalpha = 2.0\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpha"), "{e}");
    }

    #[test]
    fn schedule_warms_up_then_decays() {
        let mut c = TextTrainConfig::default();
        c.train.steps = 100;
        c.train.warmup_steps = 10;
        assert!(c.learning_rate(0) < c.learning_rate(5));
        assert!((c.learning_rate(9) - 1e-3).abs() < 1e-12);
        assert!(c.learning_rate(50) < 1e-3);
        assert!((c.learning_rate(100) - 1e-4).abs() < 1e-9);
    }
}
