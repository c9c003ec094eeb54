//! The vision evaluation report (`sgt eval vision --json`).

use candle_core::{DType, Device, D};
use serde::Serialize;
use stainedglass_core::info::mutual_information;
use stainedglass_core::noise_layer::VisionNoiseLayer;
use stainedglass_core::{BaseModel, NoiseLayer, NoiseRng};
use stainedglass_models::ImageDataset;

use super::reconstruction::{ReconstructionAttack, ReconstructionConfig};
use crate::image_metrics::{psnr, ssim};
use crate::{Error, Result};

/// Evaluation options.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    /// `None` skips the reconstruction attack.
    pub reconstruction: Option<ReconstructionConfig>,
    /// Mixture components for the mutual-information estimate (0 skips it).
    pub mi_components: usize,
    /// Noise seed (None = OS entropy).
    pub seed: Option<u64>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            reconstruction: Some(ReconstructionConfig::default()),
            mi_components: 512,
            seed: None,
        }
    }
}

/// Headline numbers of a vision SGT on a test set.
#[derive(Debug, Clone, Serialize)]
pub struct VisionEval {
    pub test_images: usize,
    pub clean_accuracy: f64,
    pub transformed_accuracy: f64,
    pub accuracy_drop_points: f64,
    pub mean_ssim: f64,
    pub mean_psnr_db: f64,
    pub masked_fraction: f64,
    pub mean_sigma: f64,
    /// PSNR of the learned decoder's reconstructions; `None` when skipped.
    pub reconstruction_psnr_db: Option<f64>,
    /// Monte-Carlo I(X; X̃) in nats over `mi_components` test images, and its bound log K.
    pub mutual_information_nats: Option<f64>,
    pub mutual_information_bound_nats: Option<f64>,
    /// Same estimate with no noise layer (μ = 0, σ → min): the "no protection" reference.
    pub clean_mutual_information_nats: Option<f64>,
}

/// Evaluates `layer` on `test` with the frozen `classifier`; `attack_train` feeds the
/// reconstruction attack (the attacker's own images).
pub fn evaluate_vision(
    classifier: &impl BaseModel,
    layer: &VisionNoiseLayer,
    test: &ImageDataset,
    attack_train: &ImageDataset,
    opts: &EvalOptions,
    device: &Device,
) -> Result<VisionEval> {
    if test.is_empty() {
        return Err(Error::Input("the test set is empty".into()));
    }
    if layer.input_shape() != test.shape {
        return Err(Error::Input(format!(
            "noise layer expects {:?} images, the test set has {:?}",
            layer.input_shape(),
            test.shape
        )));
    }
    let mut rng = NoiseRng::new(opts.seed);
    let n = test.image_size();
    let (mut clean_ok, mut tr_ok, mut ssim_sum, mut psnr_sum) = (0usize, 0usize, 0.0, 0.0);
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(opts.batch_size.max(1)) {
        let (x, y) = test.batch(chunk, device)?;
        let transformed = layer.transform(&x, None, &mut rng)?;
        let count = |logits: candle_core::Tensor| -> Result<usize> {
            Ok(logits
                .argmax(D::Minus1)?
                .eq(&y)?
                .to_dtype(DType::F32)?
                .sum_all()?
                .to_scalar::<f32>()? as usize)
        };
        clean_ok += count(classifier.forward(&x)?)?;
        tr_ok += count(classifier.forward(&transformed)?)?;
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let tv = transformed.flatten_all()?.to_vec1::<f32>()?;
        for k in 0..chunk.len() {
            let (a, b) = (&xv[k * n..(k + 1) * n], &tv[k * n..(k + 1) * n]);
            ssim_sum += ssim(a, b, test.shape);
            psnr_sum += psnr(a, b);
        }
    }
    let (mean, std, mask) = layer.statistics()?;
    let masked_fraction = match &mask {
        Some(m) => 1.0 - m.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
        None => 0.0,
    };
    let mean_sigma = std.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let reconstruction_psnr_db = match &opts.reconstruction {
        Some(cfg) => {
            let attack = ReconstructionAttack::train(layer, attack_train, cfg, device)?;
            Some(attack.evaluate(layer, test, &mut rng, device)?)
        }
        None => None,
    };
    let (mi, bound, clean_mi) = if opts.mi_components > 1 {
        let k = opts.mi_components.min(test.len());
        let sel: Vec<usize> = (0..k).collect();
        let (x, _) = test.batch(&sel, device)?;
        // MI is estimated for the Gaussian part of the transform, before the value-range clamp
        // (a deterministic post-processing, which cannot add information: the estimate is an
        // upper bound for the clamped output). A masked feature is the constant μ; it is modelled
        // as N(μ, σ_min²), independent of x, so it contributes no information.
        let (lo, _) = match layer.config() {
            stainedglass_core::NoiseLayerConfig::Cloak(c) => c.std.bounds(),
            stainedglass_core::NoiseLayerConfig::PatchCloak(c) => c.std.bounds(),
        };
        let lo = lo.max(1e-4);
        let (eff_x, eff_std) = match &mask {
            Some(m) => (
                x.broadcast_mul(m)?,
                (std.broadcast_mul(m)? + ((1.0 - m)? * lo)?)?,
            ),
            None => (x.clone(), std.clone()),
        };
        let eps = rng.standard_normal(x.shape(), device)?;
        let sample = eff_x
            .broadcast_add(&mean)?
            .add(&eps.broadcast_mul(&eff_std)?)?;
        let mi = mutual_information(&eff_x, &sample, &mean, &eff_std, None, &mut rng)?;
        let tiny = (std.ones_like()? * lo)?;
        let clean_sample = (&x + (rng.standard_normal(x.shape(), device)? * lo)?)?;
        let clean = mutual_information(
            &x,
            &clean_sample,
            &mean.zeros_like()?,
            &tiny,
            None,
            &mut rng,
        )?;
        (Some(mi), Some((k as f64).ln()), Some(clean))
    } else {
        (None, None, None)
    };
    let total = test.len() as f64;
    let clean_accuracy = clean_ok as f64 / total;
    let transformed_accuracy = tr_ok as f64 / total;
    Ok(VisionEval {
        test_images: test.len(),
        clean_accuracy,
        transformed_accuracy,
        accuracy_drop_points: 100.0 * (clean_accuracy - transformed_accuracy),
        mean_ssim: ssim_sum / total,
        mean_psnr_db: psnr_sum / total,
        masked_fraction,
        mean_sigma,
        reconstruction_psnr_db,
        mutual_information_nats: mi,
        mutual_information_bound_nats: bound,
        clean_mutual_information_nats: clean_mi,
    })
}
