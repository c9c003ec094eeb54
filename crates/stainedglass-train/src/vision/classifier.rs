//! Trains the base image classifier (the provider's model, later frozen under the SGT).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::NoiseRng;
use stainedglass_models::{Classifier, ClassifierConfig, ImageDataset};

use super::{accuracy, correct};
use crate::batches::{batches_per_epoch, epoch_batches};
use crate::checkpoint::Checkpoints;
use crate::metrics::{progress_bar, MetricsLog};
use crate::{Error, Result};

/// Hyper-parameters of classifier training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierTrainConfig {
    pub model: ClassifierConfig,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Seed of initialisation order, batch order and augmentation.
    pub seed: u64,
    pub checkpoint_every: u64,
    /// Gaussian-noise augmentation: each image gets σ ~ U(0, noise_augment), clamped to [0, 1].
    /// 0 disables it.
    #[serde(default)]
    pub noise_augment: f64,
    /// Pixel-masking augmentation: a fraction f ~ U(0, mask_augment) of each image's pixels is
    /// replaced by random values. 0 disables it.
    #[serde(default)]
    pub mask_augment: f64,
}

impl ClassifierTrainConfig {
    pub fn new(model: ClassifierConfig) -> Self {
        Self {
            model,
            epochs: 3,
            batch_size: 128,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 0,
            checkpoint_every: 200,
            noise_augment: 0.0,
            mask_augment: 0.0,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.checkpoint_every == 0 {
            return Err(Error::Config(
                "epochs, batch_size and checkpoint_every must be > 0".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.mask_augment) {
            return Err(Error::Config(format!(
                "mask_augment = {} must be in [0, 1]",
                self.mask_augment
            )));
        }
        if !(self.noise_augment >= 0.0 && self.noise_augment.is_finite()) {
            return Err(Error::Config(format!(
                "noise_augment = {} must be ≥ 0",
                self.noise_augment
            )));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct State {
    step: u64,
    config: ClassifierTrainConfig,
}

/// Result of a classifier run.
#[derive(Debug, Clone, Serialize)]
pub struct ClassifierRun {
    pub model_dir: PathBuf,
    pub steps: u64,
    pub resumed_from: Option<u64>,
    pub test_accuracy: Option<f64>,
}

#[derive(Serialize)]
struct Record {
    step: u64,
    epoch: u64,
    loss: f64,
    batch_accuracy: f64,
    lr: f64,
    images_per_s: f64,
}

/// Robustness augmentation (each part off at 0):
/// - Gaussian noise with σ ~ U(0, `max_std`) per image;
/// - pixel masking: a fraction f ~ U(0, `max_mask`) of the pixels of each image is replaced by
///   uniform random values, so the model learns to ignore suppressed features.
///
/// The result is clamped to [0, 1].
fn augment(x: &Tensor, max_std: f64, max_mask: f64, rng: &mut NoiseRng) -> Result<Tensor> {
    if max_std <= 0.0 && max_mask <= 0.0 {
        return Ok(x.clone());
    }
    let b = x.dim(0)?;
    let n = x.elem_count() / b.max(1);
    let dev = x.device();
    let mut x = x.clone();
    if max_std > 0.0 {
        let stds: Vec<f32> = (0..b).map(|_| (rng.uniform() * max_std) as f32).collect();
        let s = Tensor::from_vec(stds, (b, 1, 1, 1), dev)?;
        let eps = rng.standard_normal(x.shape(), dev)?;
        x = (x + eps.broadcast_mul(&s)?)?;
    }
    if max_mask > 0.0 {
        let mut keep = Vec::with_capacity(b * n);
        let mut fill = Vec::with_capacity(b * n);
        for _ in 0..b {
            let f = rng.uniform() * max_mask;
            for _ in 0..n {
                keep.push(u8::from(rng.uniform() >= f));
                fill.push(rng.uniform() as f32);
            }
        }
        let keep = Tensor::from_vec(keep, x.shape(), dev)?;
        let fill = Tensor::from_vec(fill, x.shape(), dev)?;
        x = keep.where_cond(&x, &fill)?;
    }
    Ok(x.clamp(0f32, 1f32)?)
}

/// Trains a classifier into `out` (`model/`, `checkpoints/`, `metrics.jsonl`), resuming from the
/// newest checkpoint when one exists for the same config.
pub fn train_classifier(
    cfg: &ClassifierTrainConfig,
    train: &ImageDataset,
    test: Option<&ImageDataset>,
    out: &Path,
    device: &Device,
) -> Result<ClassifierRun> {
    cfg.validate()?;
    if train.shape != cfg.model.input_shape {
        return Err(Error::Config(format!(
            "data images are {:?} but the model expects {:?}",
            train.shape, cfg.model.input_shape
        )));
    }
    let model = Classifier::new_seeded(cfg.model.clone(), device, cfg.seed)?;
    let mut opt = AdamW::new(
        model.trainable_vars(),
        AdamWConfig {
            weight_decay: cfg.weight_decay,
            ..AdamWConfig::noise(cfg.lr)
        },
    )?;
    let ckpts = Checkpoints::new(out.join("checkpoints"));
    let mut step = 0u64;
    let mut resumed_from = None;
    if let Some(ck) = ckpts.load_latest::<State>(&["model", "optimizer"], device)? {
        if ck.state.config != *cfg {
            return Err(Error::ckpt(
                &ck.dir,
                "this output directory holds a run with a different config; pass --fresh or another --output",
            ));
        }
        model.set_named_tensors(&ck.tensors["model"])?;
        opt.load_state(&ck.tensors["optimizer"])?;
        step = ck.state.step;
        resumed_from = Some(step);
        tracing::info!(step, "resumed classifier training");
    }
    let per_epoch = batches_per_epoch(train.len(), cfg.batch_size, true) as u64;
    let total = per_epoch * cfg.epochs as u64;
    let mut log = MetricsLog::open(&out.join("metrics.jsonl"))?;
    let pb = progress_bar(total, step, "classifier");
    let save = |step: u64, opt: &AdamW| -> Result<()> {
        ckpts.save(
            step,
            &[
                ("model", model.named_tensors()?),
                ("optimizer", opt.state()?),
            ],
            &State {
                step,
                config: cfg.clone(),
            },
        )?;
        Ok(())
    };
    while step < total {
        let epoch = step / per_epoch;
        let batches = epoch_batches(train.len(), cfg.batch_size, cfg.seed, epoch, true);
        for b in batches.iter().skip((step % per_epoch) as usize) {
            let t0 = Instant::now();
            let (x, y) = train.batch(b, device)?;
            // Augmentation noise derives from (seed, step): a resumed run draws the same noise.
            let mut aug_rng =
                NoiseRng::seeded(cfg.seed ^ (step + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            let x = augment(&x, cfg.noise_augment, cfg.mask_augment, &mut aug_rng)?;
            let logits = model.forward_t(&x, true)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::Diverged {
                    step,
                    what: "classifier loss".into(),
                });
            }
            opt.step(&loss.backward()?)?;
            step += 1;
            let acc = correct(&logits, &y)? as f64 / b.len() as f64;
            log.write(&Record {
                step,
                epoch,
                loss: lv,
                batch_accuracy: acc,
                lr: opt.learning_rate(),
                images_per_s: b.len() as f64 / t0.elapsed().as_secs_f64(),
            })?;
            pb.set_position(step);
            pb.set_message(format!("loss {lv:.3} acc {acc:.3}"));
            if step.is_multiple_of(cfg.checkpoint_every) {
                save(step, &opt)?;
            }
        }
    }
    save(step, &opt)?;
    pb.finish_and_clear();
    let model_dir = out.join("model");
    model.save(&model_dir)?;
    let test_accuracy = match test {
        Some(t) => Some(accuracy(
            &Classifier::load(&model_dir, device)?,
            t,
            500,
            device,
        )?),
        None => None,
    };
    Ok(ClassifierRun {
        model_dir,
        steps: step,
        resumed_from,
        test_accuracy,
    })
}
