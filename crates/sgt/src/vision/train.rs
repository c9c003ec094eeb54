//! `sgt vision train-classifier` and `sgt vision train`: the provider's classifier and an SGT
//! on it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, ValueEnum};
use stainedglass_core::noise_layer::{
    CloakConfig, CloakRecipe, NoiseLayerConfig, PatchCloakConfig, ValueRange,
};
use stainedglass_core::StdParameterization;
use stainedglass_models::{Classifier, ClassifierConfig, Split};
use stainedglass_train::checkpoint::clear;
use stainedglass_train::vision::{
    train_classifier, train_sgt, ClassifierTrainConfig, SgtTrainConfig,
};

use super::data::DataArgs;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Arch {
    SmallCnn,
    Resnet18,
}

#[derive(Args)]
pub struct TrainClassifierArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Classifier architecture.
    #[arg(long, value_enum, default_value = "small-cnn")]
    arch: Arch,
    /// ResNet width (channels of the first stage).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (AdamW).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Seed of the initial weights and the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Gaussian-noise augmentation: σ ~ U(0, this) per image.
    #[arg(long, default_value_t = 0.0)]
    noise_augment: f64,
    /// Pixel-masking augmentation: up to this fraction of pixels replaced by random values.
    #[arg(long, default_value_t = 0.0)]
    mask_augment: f64,
    /// Steps between checkpoints (the run resumes from the latest).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Output directory (model/, checkpoints/, metrics.jsonl).
    #[arg(long)]
    output: PathBuf,
    /// Delete an existing run in --output instead of resuming it.
    #[arg(long)]
    fresh: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LayerKind {
    /// CloakNoiseLayerOneShot: μ, σ and mask learned jointly.
    Cloak,
    /// Classic two-phase Cloak: grow σ, freeze the mask, fine-tune μ with α = 0.
    CloakTwoPhase,
    /// PatchCloakNoiseLayer.
    Patch,
}

#[derive(Args)]
pub struct TrainSgtArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Directory of the trained classifier (`.../model`).
    #[arg(long)]
    pub classifier: PathBuf,
    /// Noise layer and training recipe.
    #[arg(long, value_enum, default_value = "cloak")]
    pub layer: LayerKind,
    /// Fraction of features (largest σ) replaced by μ.
    #[arg(long)]
    pub percent_to_mask: Option<f64>,
    /// Fixed α in [0, 1]; omit for adaptive α.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Adaptive α: allowed relative rise of the task loss over the clean loss.
    #[arg(long, default_value_t = 0.1)]
    pub tolerance: f64,
    /// Lower bound of σ.
    #[arg(long, default_value_t = 1e-4)]
    min_scale: f64,
    /// Upper bound of σ.
    #[arg(long, default_value_t = 2.0)]
    max_scale: f64,
    /// Temperature of the Cloak σ form σ(ρ) = min + (max − min)·(1 + tanh(ρ/shallow))/2.
    #[arg(long, default_value_t = 1.0)]
    shallow: f64,
    /// Initial ρ (σ starts near its lower bound).
    #[arg(long, default_value_t = -4.0, allow_hyphen_values = true)]
    rhos_init: f64,
    /// Patch size for --layer patch.
    #[arg(long, default_value_t = 4)]
    patch: usize,
    /// One-shot layer: fraction of the steps trained without the mask, so that σ ranks the
    /// features before the mask follows it (with 0 the first mask, ties broken by position,
    /// tends to lock in: on Fashion-MNIST with adaptive α, 70.7% accuracy instead of 84.8%).
    #[arg(long, default_value_t = 0.5)]
    mask_warmup: f64,
    /// Passes over the training set.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Stop after this many steps (default: all epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Images per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Learning rate of μ and ρ (AdamW, weight decay 0).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Seed the noise for a reproducible run (default: OS entropy).
    #[arg(long)]
    noise_seed: Option<u64>,
    /// Steps between checkpoints (the run resumes from the latest).
    #[arg(long, default_value_t = 200)]
    checkpoint_every: u64,
    /// Output directory (noise_layer/, checkpoints/, metrics.jsonl).
    #[arg(long)]
    pub output: PathBuf,
    /// Delete an existing run in --output instead of resuming it.
    #[arg(long)]
    pub fresh: bool,
}

impl TrainSgtArgs {
    pub fn config(&self, shape: [usize; 3]) -> Result<SgtTrainConfig> {
        let std = StdParameterization::cloak(self.min_scale, self.max_scale, self.shallow)?;
        let range = ValueRange {
            lo: Some(0.0),
            hi: Some(1.0),
        };
        let layer = match self.layer {
            LayerKind::Cloak | LayerKind::CloakTwoPhase => NoiseLayerConfig::Cloak(CloakConfig {
                shape: shape.to_vec(),
                std,
                rhos_init: self.rhos_init,
                percent_to_mask: self.percent_to_mask,
                value_range: range,
                recipe: if matches!(self.layer, LayerKind::CloakTwoPhase) {
                    CloakRecipe::TwoPhase
                } else {
                    CloakRecipe::OneShot
                },
            }),
            LayerKind::Patch => NoiseLayerConfig::PatchCloak(PatchCloakConfig {
                std,
                rhos_init: self.rhos_init,
                percent_to_mask: self.percent_to_mask,
                value_range: range,
                ..PatchCloakConfig::new(&shape, (self.patch, self.patch))
            }),
        };
        let mut cfg = SgtTrainConfig::new(layer);
        cfg.alpha = self.alpha;
        cfg.adaptive.tolerance = self.tolerance;
        cfg.epochs = self.epochs;
        cfg.max_steps = self.max_steps;
        cfg.mask_warmup = self.mask_warmup;
        cfg.batch_size = self.batch_size;
        cfg.lr = self.lr;
        cfg.seed = self.seed;
        cfg.noise_seed = self.noise_seed;
        cfg.checkpoint_every = self.checkpoint_every;
        Ok(cfg)
    }
}

pub fn run_train_classifier(a: TrainClassifierArgs, device: &Device) -> Result<()> {
    let train = a.data.load(Split::Train)?;
    let test = a.data.load(Split::Test)?;
    let model = match a.arch {
        Arch::SmallCnn => ClassifierConfig::small_cnn(train.shape, train.num_classes),
        Arch::Resnet18 => ClassifierConfig::resnet18(train.shape, train.num_classes, a.width),
    };
    let mut cfg = ClassifierTrainConfig::new(model);
    cfg.epochs = a.epochs;
    cfg.batch_size = a.batch_size;
    cfg.lr = a.lr;
    cfg.seed = a.seed;
    cfg.noise_augment = a.noise_augment;
    cfg.mask_augment = a.mask_augment;
    cfg.checkpoint_every = a.checkpoint_every;
    if a.fresh {
        clear(&a.output)?;
    }
    let run = train_classifier(&cfg, &train, Some(&test), &a.output, device)?;
    println!("{}", serde_json::to_string_pretty(&run)?);
    Ok(())
}

pub fn run_train_sgt(a: TrainSgtArgs, device: &Device) -> Result<()> {
    let train = a.data.load(Split::Train)?;
    let classifier = Classifier::load(&a.classifier, device)
        .with_context(|| format!("loading the classifier from {}", a.classifier.display()))?;
    if classifier.config().input_shape != train.shape {
        bail!(
                "the classifier expects {:?} images but the data set has {:?}; pick the matching --dataset",
                classifier.config().input_shape,
                train.shape
            );
    }
    let cfg = a.config(train.shape)?;
    if a.fresh {
        clear(&a.output)?;
    }
    crate::alloc::keep_freed_pages();
    let run = train_sgt(&cfg, &classifier, &train, &a.output, device)?;
    println!("{}", serde_json::to_string_pretty(&run)?);
    Ok(())
}
