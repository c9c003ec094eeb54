//! The image baseline: input-independent Gaussian pixel noise `x̃ = clip(x + σε, 0, 1)` at
//! several σ, measured the way the SGT is (accuracy of the frozen classifier, SSIM, PSNR).

use crate::image_metrics::{psnr, ssim};
use crate::{Error, Result};
use candle_core::{DType, Device, D};
use serde::Serialize;
use stainedglass_core::{BaseModel, NoiseRng};
use stainedglass_models::ImageDataset;

/// One baseline strength.
#[derive(Debug, Clone, Serialize)]
pub struct GaussianImagePoint {
    pub sigma: f64,
    pub accuracy: f64,
    pub mean_ssim: f64,
    pub mean_psnr_db: f64,
}

/// Measures Gaussian pixel noise of standard deviation `sigma` on `test`.
pub fn gaussian_image_baseline(
    classifier: &impl BaseModel,
    test: &ImageDataset,
    sigma: f64,
    batch_size: usize,
    rng: &mut NoiseRng,
    device: &Device,
) -> Result<GaussianImagePoint> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::Input(format!(
            "Gaussian baseline σ {sigma}: use σ ≥ 0"
        )));
    }
    if test.is_empty() {
        return Err(Error::Input("the test set is empty".into()));
    }
    let n = test.image_size();
    let (mut ok, mut s, mut p) = (0usize, 0.0, 0.0);
    let idx: Vec<usize> = (0..test.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y) = test.batch(chunk, device)?;
        let noisy = (&x + (rng.standard_normal(x.shape(), device)? * sigma)?)?.clamp(0f32, 1f32)?;
        ok += classifier
            .forward(&noisy)?
            .argmax(D::Minus1)?
            .eq(&y)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()? as usize;
        let (xv, tv) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            noisy.flatten_all()?.to_vec1::<f32>()?,
        );
        for k in 0..chunk.len() {
            let (a, b) = (&xv[k * n..(k + 1) * n], &tv[k * n..(k + 1) * n]);
            s += ssim(a, b, test.shape);
            p += psnr(a, b);
        }
    }
    let total = test.len() as f64;
    Ok(GaussianImagePoint {
        sigma,
        accuracy: ok as f64 / total,
        mean_ssim: s / total,
        mean_psnr_db: p / total,
    })
}
