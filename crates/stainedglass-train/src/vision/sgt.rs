//! Trains a vision SGT on a frozen classifier with the composite cloak loss (SPEC §5.1).
//! Only the noise layer's μ and ρ are optimised (AdamW, weight decay 0); the classifier holds plain
//! tensors. With the two-phase Cloak recipe, the first half of the steps grows σ without a mask,
//! then the mask is frozen and μ alone is fine-tuned with α = 0.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use stainedglass_core::io::save_noise_layer;
use stainedglass_core::loss::{noise_loss_wrapper, AdaptiveAlpha, Alpha, CompositeLoss};
use stainedglass_core::noise_layer::{CloakRecipe, NoiseLayer, NoiseLayerConfig, VisionNoiseLayer};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::{BaseModel, Mode, NoiseRng, NoisyModel};
use stainedglass_models::{Classifier, ImageDataset};

use super::correct;
use crate::batches::{batches_per_epoch, epoch_batches};
use crate::checkpoint::Checkpoints;
use crate::metrics::{progress_bar, MetricsLog};
use crate::{Error, Result};

/// Directory name of the exported client artefact inside a run directory.
pub const SGT_ARTEFACT_DIR: &str = "noise_layer";

/// Hyper-parameters of SGT training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SgtTrainConfig {
    pub noise_layer: NoiseLayerConfig,
    /// Fixed α in [0, 1]; `None` → adaptive (dual ascent).
    pub alpha: Option<f64>,
    /// Adaptive-α settings (used when `alpha` is `None`).
    #[serde(default)]
    pub adaptive: AdaptiveAlpha,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Seed of the noise; `None` draws from OS entropy (not reproducible).
    pub noise_seed: Option<u64>,
    pub checkpoint_every: u64,
    /// Stop after this many steps (for quick runs); `None` = all epochs.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// One-shot recipe: fraction of the steps trained without the mask first, so that σ learns
    /// which features matter before the mask (largest σ) follows it. 0 = mask from step one.
    #[serde(default)]
    pub mask_warmup: f64,
}

impl SgtTrainConfig {
    pub fn new(noise_layer: NoiseLayerConfig) -> Self {
        Self {
            noise_layer,
            alpha: Some(0.5),
            adaptive: AdaptiveAlpha::default(),
            epochs: 2,
            batch_size: 128,
            lr: 0.05,
            seed: 0,
            noise_seed: None,
            checkpoint_every: 200,
            max_steps: None,
            mask_warmup: 0.0,
        }
    }

    fn loss(&self) -> Result<CompositeLoss> {
        let mut l = noise_loss_wrapper(self.alpha)?;
        if let Alpha::Adaptive(_) = l.alpha {
            l.alpha = Alpha::Adaptive(self.adaptive.clone());
        }
        Ok(l)
    }

    fn recipe(&self) -> CloakRecipe {
        match &self.noise_layer {
            NoiseLayerConfig::Cloak(c) => c.recipe,
            NoiseLayerConfig::PatchCloak(_) => CloakRecipe::OneShot,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    step: u64,
    config: SgtTrainConfig,
    loss: CompositeLoss,
}

/// Result of an SGT run.
#[derive(Debug, Clone, Serialize)]
pub struct SgtRun {
    pub artefact_dir: PathBuf,
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub final_alpha: f64,
    pub mean_sigma: f64,
}

#[derive(Serialize)]
struct Record {
    step: u64,
    epoch: u64,
    phase: u8,
    composite_loss: f64,
    task_loss: f64,
    noise_loss: f64,
    clean_task_loss: Option<f64>,
    alpha: f64,
    mean_sigma: f64,
    masked_fraction: f64,
    batch_accuracy: f64,
    lr: f64,
    images_per_s: f64,
}

fn optimizer(layer: &VisionNoiseLayer, phase: u8, lr: f64) -> Result<AdamW> {
    let vars = match (phase, layer) {
        // Phase 2 of the two-phase recipe fine-tunes μ only.
        (2, VisionNoiseLayer::Cloak(c)) => vec![c.locs().clone()],
        _ => layer.parameters(),
    };
    Ok(AdamW::new(vars, AdamWConfig::noise(lr))?)
}

/// Trains the SGT into `out` (`noise_layer/` artefact, `checkpoints/`, `metrics.jsonl`),
/// resuming from the newest checkpoint of the same config.
pub fn train_sgt(
    cfg: &SgtTrainConfig,
    classifier: &Classifier,
    train: &ImageDataset,
    out: &Path,
    device: &Device,
) -> Result<SgtRun> {
    if cfg.epochs == 0 || cfg.batch_size == 0 || cfg.checkpoint_every == 0 {
        return Err(Error::Config(
            "epochs, batch_size and checkpoint_every must be > 0".into(),
        ));
    }
    if !classifier.is_frozen() {
        return Err(Error::Config(
            "the base classifier must be frozen (load it from disk)".into(),
        ));
    }
    let mut layer = VisionNoiseLayer::new(cfg.noise_layer.clone(), device)?;
    if layer.input_shape() != classifier.config().input_shape
        || train.shape != classifier.config().input_shape
    {
        return Err(Error::Config(format!(
            "shapes disagree: noise layer {:?}, classifier {:?}, data {:?}",
            layer.input_shape(),
            classifier.config().input_shape,
            train.shape
        )));
    }
    let mut loss = cfg.loss()?;
    let per_epoch = batches_per_epoch(train.len(), cfg.batch_size, true) as u64;
    if per_epoch == 0 {
        return Err(Error::Config(format!(
            "batch size {} exceeds the {} training images",
            cfg.batch_size,
            train.len()
        )));
    }
    let mut total = per_epoch * cfg.epochs as u64;
    if let Some(m) = cfg.max_steps {
        total = total.min(m);
    }
    if !(0.0..1.0).contains(&cfg.mask_warmup) {
        return Err(Error::Config(format!(
            "mask_warmup = {} must be in [0, 1)",
            cfg.mask_warmup
        )));
    }
    let warmup_steps = (cfg.mask_warmup * total as f64).round() as u64;
    let two_phase = cfg.recipe() == CloakRecipe::TwoPhase;
    let switch_at = if two_phase { total / 2 } else { u64::MAX };

    let ckpts = Checkpoints::new(out.join("checkpoints"));
    let mut step = 0u64;
    let mut resumed_from = None;
    let mut opt_state = None;
    if let Some(ck) = ckpts.load_latest::<State>(&["noise_layer", "optimizer"], device)? {
        if ck.state.config != *cfg {
            return Err(Error::ckpt(
                &ck.dir,
                "this output directory holds a run with a different config; pass --fresh or another --output",
            ));
        }
        layer.set_named_tensors(&ck.tensors["noise_layer"])?;
        step = ck.state.step;
        loss = ck.state.loss;
        opt_state = ck.tensors.get("optimizer").cloned();
        resumed_from = Some(step);
        tracing::info!(step, "resumed SGT training");
    }
    let phase_of = |s: u64| if s >= switch_at { 2u8 } else { 1u8 };
    let mut phase = phase_of(step);
    let mut opt = optimizer(&layer, phase, cfg.lr)?;
    if let Some(s) = opt_state {
        opt.load_state(&s)?;
    }
    // Seeded runs derive each step's stream from (seed, step), so a resumed run draws exactly the
    // noise the uninterrupted run would have drawn; unseeded runs use OS entropy throughout.
    let mut entropy_rng = NoiseRng::from_entropy();
    let mut log = MetricsLog::open(&out.join("metrics.jsonl"))?;
    let pb = progress_bar(total, step, "sgt");
    let save =
        |step: u64, layer: &VisionNoiseLayer, opt: &AdamW, loss: &CompositeLoss| -> Result<()> {
            ckpts.save(
                step,
                &[
                    ("noise_layer", layer.named_tensors()),
                    ("optimizer", opt.state()?),
                ],
                &State {
                    step,
                    config: cfg.clone(),
                    loss: loss.clone(),
                },
            )?;
            Ok(())
        };
    let adaptive = matches!(
        loss.alpha,
        Alpha::Adaptive(AdaptiveAlpha { target: None, .. })
    );
    'outer: while step < total {
        let epoch = step / per_epoch;
        let batches = epoch_batches(train.len(), cfg.batch_size, cfg.seed, epoch, true);
        for b in batches.iter().skip((step % per_epoch) as usize) {
            if step >= total {
                break 'outer;
            }
            if phase_of(step) != phase {
                // End of phase 1: fix the mask from σ, then fine-tune μ with α = 0.
                phase = 2;
                if let VisionNoiseLayer::Cloak(c) = &mut layer {
                    c.freeze_mask()?;
                }
                loss.alpha = Alpha::Fixed { alpha: 0.0 };
                opt = optimizer(&layer, phase, cfg.lr)?;
            }
            if let VisionNoiseLayer::Cloak(c) = &mut layer {
                c.suspend_mask(step < warmup_steps);
            }
            let t0 = Instant::now();
            let (x, y) = train.batch(b, device)?;
            let model = NoisyModel::new(classifier, &layer);
            let mut step_rng = cfg
                .noise_seed
                .map(|s| NoiseRng::seeded(s ^ (step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let rng = step_rng.as_mut().unwrap_or(&mut entropy_rng);
            let out = model.forward(&x, Mode::Transformed, None, rng)?;
            let noise = out
                .noise
                .as_ref()
                .ok_or_else(|| Error::Config("noise output missing".into()))?;
            let task = candle_nn::loss::cross_entropy(&out.base_model_output, &y)?;
            let rec = loss.compute(&task, noise, layer.noise_loss_respects_mask())?;
            if !rec.composite_loss.to_scalar::<f32>()?.is_finite() {
                return Err(Error::Diverged {
                    step,
                    what: "composite loss".into(),
                });
            }
            opt.step(&rec.composite_loss.backward()?)?;
            let clean_task_loss = if adaptive {
                let clean = classifier.forward(&x)?;
                Some(candle_nn::loss::cross_entropy(&clean, &y)?.to_scalar::<f32>()? as f64)
            } else {
                None
            };
            loss.observe(rec.task_loss, clean_task_loss)?;
            step += 1;
            let mean_sigma = noise
                .std
                .mean_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            let masked_fraction = match &noise.mask {
                Some(m) => 1.0 - m.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                None => 0.0,
            };
            let acc = correct(&out.base_model_output, &y)? as f64 / b.len() as f64;
            log.write(&Record {
                step,
                epoch,
                phase,
                composite_loss: rec.composite_loss.to_scalar::<f32>()? as f64,
                task_loss: rec.task_loss,
                noise_loss: rec.noise_loss,
                clean_task_loss,
                alpha: rec.alpha,
                mean_sigma,
                masked_fraction,
                batch_accuracy: acc,
                lr: opt.learning_rate(),
                images_per_s: b.len() as f64 / t0.elapsed().as_secs_f64(),
            })?;
            pb.set_position(step);
            pb.set_message(format!(
                "task {:.3} noise {:.3} α {:.2} σ̄ {mean_sigma:.3} acc {acc:.2}",
                rec.task_loss, rec.noise_loss, rec.alpha
            ));
            if step.is_multiple_of(cfg.checkpoint_every) {
                save(step, &layer, &opt, &loss)?;
            }
        }
    }
    if let VisionNoiseLayer::Cloak(c) = &mut layer {
        c.suspend_mask(false);
    }
    save(step, &layer, &opt, &loss)?;
    pb.finish_and_clear();
    let artefact_dir = out.join(SGT_ARTEFACT_DIR);
    save_noise_layer(&layer, &artefact_dir)?;
    let (_, std, _) = layer.statistics()?;
    Ok(SgtRun {
        artefact_dir,
        steps: step,
        resumed_from,
        final_alpha: loss.alpha.value(),
        mean_sigma: std.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
    })
}
