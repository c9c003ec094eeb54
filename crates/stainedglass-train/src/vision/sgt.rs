//! Trains a vision SGT on a frozen classifier with the composite cloak loss (`docs/spec.md` §5.1).
//! Only the noise layer's μ and ρ are optimised (AdamW, weight decay 0); the classifier holds plain
//! tensors. With the two-phase Cloak recipe, the first half of the steps grows σ without a mask,
//! then the mask is frozen and μ alone is fine-tuned with α = 0.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
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

/// The step counts of a run, from the config and the data.
struct Plan {
    per_epoch: u64,
    total: u64,
    /// One-shot recipe: steps trained without the mask.
    warmup_steps: u64,
    /// Two-phase recipe: the first step of phase 2 (`u64::MAX` otherwise).
    switch_at: u64,
}

impl Plan {
    fn new(
        cfg: &SgtTrainConfig,
        classifier: &Classifier,
        train: &ImageDataset,
        layer: &VisionNoiseLayer,
    ) -> Result<Self> {
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
        let two_phase = cfg.recipe() == CloakRecipe::TwoPhase;
        Ok(Self {
            per_epoch,
            total,
            warmup_steps: (cfg.mask_warmup * total as f64).round() as u64,
            switch_at: if two_phase { total / 2 } else { u64::MAX },
        })
    }

    fn phase_of(&self, step: u64) -> u8 {
        if step >= self.switch_at {
            2
        } else {
            1
        }
    }
}

/// A run in progress: the layer, the loss (with adaptive α's state) and the optimizer.
struct Run<'a> {
    cfg: &'a SgtTrainConfig,
    plan: Plan,
    layer: VisionNoiseLayer,
    loss: CompositeLoss,
    opt: AdamW,
    phase: u8,
    step: u64,
    resumed_from: Option<u64>,
    ckpts: Checkpoints,
    /// Whether adaptive α needs the clean task loss of every batch.
    adaptive: bool,
}

impl<'a> Run<'a> {
    /// A fresh layer, or the newest checkpoint of the same config in `out`.
    fn start(
        cfg: &'a SgtTrainConfig,
        classifier: &Classifier,
        train: &ImageDataset,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let mut layer = VisionNoiseLayer::new(cfg.noise_layer.clone(), device)?;
        let plan = Plan::new(cfg, classifier, train, &layer)?;
        let mut loss = cfg.loss()?;
        let ckpts = Checkpoints::new(out.join("checkpoints"));
        let (mut step, mut resumed_from, mut opt_state) = (0u64, None, None);
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
        let phase = plan.phase_of(step);
        let mut opt = optimizer(&layer, phase, cfg.lr)?;
        if let Some(s) = opt_state {
            opt.load_state(&s)?;
        }
        let adaptive = matches!(
            loss.alpha,
            Alpha::Adaptive(AdaptiveAlpha { target: None, .. })
        );
        Ok(Self {
            cfg,
            plan,
            layer,
            loss,
            opt,
            phase,
            step,
            resumed_from,
            ckpts,
            adaptive,
        })
    }

    /// Before each step: the two-phase switch (fix the mask from σ, then fine-tune μ with
    /// α = 0) and the one-shot mask warm-up.
    fn enter_step(&mut self) -> Result<()> {
        if self.plan.phase_of(self.step) != self.phase {
            self.phase = 2;
            if let VisionNoiseLayer::Cloak(c) = &mut self.layer {
                c.freeze_mask()?;
            }
            self.loss.alpha = Alpha::Fixed { alpha: 0.0 };
            self.opt = optimizer(&self.layer, self.phase, self.cfg.lr)?;
        }
        let warm = self.step < self.plan.warmup_steps;
        if let VisionNoiseLayer::Cloak(c) = &mut self.layer {
            c.suspend_mask(warm);
        }
        Ok(())
    }

    /// One optimizer step on the batch `(x, y)`; returns its metrics record.
    fn train_step(
        &mut self,
        classifier: &Classifier,
        (x, y): (&Tensor, &Tensor),
        rng: &mut NoiseRng,
    ) -> Result<Record> {
        let t0 = Instant::now();
        let model = NoisyModel::new(classifier, &self.layer);
        let out = model.forward(x, Mode::Transformed, None, rng)?;
        let noise = out
            .noise
            .as_ref()
            .ok_or_else(|| Error::Config("noise output missing".into()))?;
        let task = candle_nn::loss::cross_entropy(&out.base_model_output, y)?;
        let rec = self
            .loss
            .compute(&task, noise, self.layer.noise_loss_respects_mask())?;
        let composite = rec.composite_loss.to_scalar::<f32>()?;
        if !composite.is_finite() {
            return Err(Error::Diverged {
                step: self.step,
                what: "composite loss".into(),
            });
        }
        self.opt.step(&rec.composite_loss.backward()?)?;
        let clean_task_loss = if self.adaptive {
            let clean = classifier.forward(x)?;
            Some(candle_nn::loss::cross_entropy(&clean, y)?.to_scalar::<f32>()? as f64)
        } else {
            None
        };
        self.loss.observe(rec.task_loss, clean_task_loss)?;
        let mean = |t: &Tensor| -> Result<f64> {
            Ok(t.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
        };
        let rows = x.dim(0)?;
        Ok(Record {
            step: self.step + 1,
            epoch: self.step / self.plan.per_epoch,
            phase: self.phase,
            composite_loss: composite as f64,
            task_loss: rec.task_loss,
            noise_loss: rec.noise_loss,
            clean_task_loss,
            alpha: rec.alpha,
            mean_sigma: mean(&noise.std)?,
            masked_fraction: match &noise.mask {
                Some(m) => 1.0 - mean(m)?,
                None => 0.0,
            },
            batch_accuracy: correct(&out.base_model_output, y)? as f64 / rows as f64,
            lr: self.opt.learning_rate(),
            images_per_s: rows as f64 / t0.elapsed().as_secs_f64(),
        })
    }

    fn save(&self) -> Result<()> {
        self.ckpts.save(
            self.step,
            &[
                ("noise_layer", self.layer.named_tensors()),
                ("optimizer", self.opt.state()?),
            ],
            &State {
                step: self.step,
                config: self.cfg.clone(),
                loss: self.loss.clone(),
            },
        )?;
        Ok(())
    }
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
    let mut run = Run::start(cfg, classifier, train, out, device)?;
    let (per_epoch, total) = (run.plan.per_epoch, run.plan.total);
    // Seeded runs derive each step's stream from (seed, step), so a resumed run draws exactly the
    // noise the uninterrupted run would have drawn; unseeded runs use OS entropy throughout.
    let mut entropy_rng = NoiseRng::from_entropy();
    let mut log = MetricsLog::open(&out.join("metrics.jsonl"))?;
    let pb = progress_bar(total, run.step, "sgt");
    while run.step < total {
        let epoch = run.step / per_epoch;
        let batches = epoch_batches(train.len(), cfg.batch_size, cfg.seed, epoch, true);
        for b in batches.iter().skip((run.step % per_epoch) as usize) {
            if run.step >= total {
                break;
            }
            run.enter_step()?;
            let (x, y) = train.batch(b, device)?;
            let mut step_rng = cfg
                .noise_seed
                .map(|s| NoiseRng::seeded(s ^ (run.step + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let rng = step_rng.as_mut().unwrap_or(&mut entropy_rng);
            let r = run.train_step(classifier, (&x, &y), rng)?;
            run.step += 1;
            log.write(&r)?;
            pb.set_position(run.step);
            pb.set_message(format!(
                "task {:.3} noise {:.3} α {:.2} σ̄ {:.3} acc {:.2}",
                r.task_loss, r.noise_loss, r.alpha, r.mean_sigma, r.batch_accuracy
            ));
            if run.step.is_multiple_of(cfg.checkpoint_every) {
                run.save()?;
            }
        }
    }
    if let VisionNoiseLayer::Cloak(c) = &mut run.layer {
        c.suspend_mask(false);
    }
    run.save()?;
    pb.finish_and_clear();
    let artefact_dir = out.join(SGT_ARTEFACT_DIR);
    save_noise_layer(&run.layer, &artefact_dir)?;
    let (_, std, _) = run.layer.statistics()?;
    Ok(SgtRun {
        artefact_dir,
        steps: run.step,
        resumed_from: run.resumed_from,
        final_alpha: run.loss.alpha.value(),
        mean_sigma: std.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
    })
}
