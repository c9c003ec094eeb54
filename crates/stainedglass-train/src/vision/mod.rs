//! Vision trainers.

mod classifier;
mod sgt;

pub use classifier::{train_classifier, ClassifierRun, ClassifierTrainConfig};
pub use sgt::{train_sgt, SgtRun, SgtTrainConfig, SGT_ARTEFACT_DIR};

use candle_core::{Device, Tensor, D};
use stainedglass_core::BaseModel;
use stainedglass_models::ImageDataset;

use crate::Result;

/// Number of correct predictions of `logits` `[B, K]` for labels `[B]`.
pub fn correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let pred = logits.argmax(D::Minus1)?;
    Ok(pred
        .eq(labels)?
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()? as usize)
}

/// Clean accuracy of `model` on `ds`.
pub fn accuracy(
    model: &impl BaseModel,
    ds: &ImageDataset,
    batch_size: usize,
    device: &Device,
) -> Result<f64> {
    let mut ok = 0;
    let idx: Vec<usize> = (0..ds.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, y) = ds.batch(chunk, device)?;
        ok += correct(&model.forward(&x)?, &y)?;
    }
    Ok(ok as f64 / ds.len().max(1) as f64)
}
