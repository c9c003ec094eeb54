//! `L = (1 − α)·L_task + α·L_noise`, `L_noise = −log(mean σ)` over kept features.
//! `alpha = None` is adaptive: dual ascent on α keeps `L_task` below a target (by default the
//! clean model's task loss × (1 + tolerance)), raising α while the constraint holds.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::noise_layer::NoiseOutput;
use crate::{Error, Result};

/// Adaptive α state (dual ascent, α clipped to [0, 1]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveAlpha {
    /// Current α.
    pub alpha: f64,
    /// Step size of the dual update, per unit of relative constraint slack.
    pub lr: f64,
    /// Relative slack over the clean task loss allowed by the default target.
    pub tolerance: f64,
    /// Fixed target for `L_task`; `None` → clean loss × (1 + tolerance).
    pub target: Option<f64>,
}

impl Default for AdaptiveAlpha {
    fn default() -> Self {
        Self {
            alpha: 0.5,
            lr: 0.02,
            tolerance: 0.1,
            target: None,
        }
    }
}

impl AdaptiveAlpha {
    /// One dual-ascent step from the observed task loss (and the clean loss for the target).
    /// Returns the new α.
    pub fn update(&mut self, task_loss: f64, clean_task_loss: Option<f64>) -> Result<f64> {
        let target = match (self.target, clean_task_loss) {
            (Some(t), _) => t,
            (None, Some(c)) => c * (1.0 + self.tolerance),
            (None, None) => {
                return Err(Error::hyper(
                    "alpha",
                    "adaptive",
                    "adaptive α needs a target or the clean task loss each step",
                ))
            }
        };
        if !task_loss.is_finite() || !target.is_finite() {
            return Err(Error::NonFinite {
                what: "task loss for adaptive α".into(),
                count: 1,
            });
        }
        let slack = (target - task_loss) / target.abs().max(1e-8);
        self.alpha = (self.alpha + self.lr * slack).clamp(0.0, 1.0);
        Ok(self.alpha)
    }
}

/// α: fixed or adaptive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Alpha {
    Fixed { alpha: f64 },
    Adaptive(AdaptiveAlpha),
}

impl Alpha {
    pub fn value(&self) -> f64 {
        match self {
            Alpha::Fixed { alpha } => *alpha,
            Alpha::Adaptive(a) => a.alpha,
        }
    }
}

/// One step's loss values; `composite_loss` is the tensor to backpropagate.
#[derive(Debug, Clone)]
pub struct LossRecord {
    pub composite_loss: Tensor,
    pub task_loss: f64,
    pub noise_loss: f64,
    pub alpha: f64,
}

/// The composite cloak loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompositeLoss {
    pub alpha: Alpha,
    /// Average σ over kept features only (ignored by layers whose noise loss ignores the mask).
    pub respect_std_mask: bool,
}

/// `noise_loss_wrapper(base_loss, alpha)`: `Some(α)` with α ∈ [0, 1] is fixed; `None` is adaptive.
pub fn noise_loss_wrapper(alpha: Option<f64>) -> Result<CompositeLoss> {
    let alpha = match alpha {
        Some(a) if (0.0..=1.0).contains(&a) => Alpha::Fixed { alpha: a },
        Some(a) => {
            return Err(Error::hyper(
                "alpha",
                a,
                "must be in [0, 1], or None for adaptive",
            ))
        }
        None => Alpha::Adaptive(AdaptiveAlpha::default()),
    };
    Ok(CompositeLoss {
        alpha,
        respect_std_mask: true,
    })
}

/// `−log(mean σ)` over kept features (all features when `respect_mask` is false or no mask).
pub fn noise_loss(noise: &NoiseOutput, respect_mask: bool) -> Result<Tensor> {
    let std = noise.std.to_dtype(DType::F32)?;
    let mean = match (&noise.mask, respect_mask) {
        (Some(m), true) => {
            let kept = m.sum_all()?.to_scalar::<f32>()?;
            if kept > 0.0 {
                ((&std * m)?.sum_all()? / kept as f64)?
            } else {
                std.mean_all()?
            }
        }
        _ => std.mean_all()?,
    };
    Ok(mean.log()?.neg()?)
}

impl CompositeLoss {
    /// Combines a scalar task loss with the noise loss of `noise`.
    pub fn compute(
        &self,
        task_loss: &Tensor,
        noise: &NoiseOutput,
        layer_respects_mask: bool,
    ) -> Result<LossRecord> {
        let alpha = self.alpha.value();
        let noise_l = noise_loss(noise, self.respect_std_mask && layer_respects_mask)?;
        let task = task_loss.to_dtype(DType::F32)?;
        let composite = ((&task * (1.0 - alpha))? + (&noise_l * alpha)?)?;
        Ok(LossRecord {
            composite_loss: composite,
            task_loss: task.to_scalar::<f32>()? as f64,
            noise_loss: noise_l.to_scalar::<f32>()? as f64,
            alpha,
        })
    }

    /// After a step: updates an adaptive α (no-op when fixed). Returns the α for the next step.
    pub fn observe(&mut self, task_loss: f64, clean_task_loss: Option<f64>) -> Result<f64> {
        match &mut self.alpha {
            Alpha::Fixed { alpha } => Ok(*alpha),
            Alpha::Adaptive(a) => a.update(task_loss, clean_task_loss),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn output(std: &[f32], mask: Option<&[f32]>) -> NoiseOutput {
        let d = Device::Cpu;
        let s = Tensor::new(std, &d).unwrap();
        NoiseOutput {
            transformed: s.clone(),
            mean: s.zeros_like().unwrap(),
            std: s,
            mask: mask.map(|m| Tensor::new(m, &d).unwrap()),
        }
    }

    #[test]
    fn composite_formula() {
        let l = noise_loss_wrapper(Some(0.25)).unwrap();
        let out = output(&[0.5, 1.5, 9.0], Some(&[1.0, 1.0, 0.0]));
        let task = Tensor::new(2.0f32, &Device::Cpu).unwrap();
        let r = l.compute(&task, &out, true).unwrap();
        let noise = -(1.0f64).ln(); // mean of kept σ = 1.0
        assert!((r.noise_loss - noise).abs() < 1e-6);
        let expected = 0.75 * 2.0 + 0.25 * noise;
        let got = r.composite_loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - expected).abs() < 1e-6);
        assert_eq!(r.alpha, 0.25);
        // Ignoring the mask averages all features.
        let r = l.compute(&task, &out, false).unwrap();
        assert!((r.noise_loss + (11.0f64 / 3.0).ln()).abs() < 1e-5);
    }

    #[test]
    fn alpha_out_of_range_is_error() {
        assert!(noise_loss_wrapper(Some(1.5)).is_err());
        assert!(noise_loss_wrapper(Some(-0.1)).is_err());
        assert!(noise_loss_wrapper(Some(f64::NAN)).is_err());
    }

    #[test]
    fn adaptive_alpha_rises_while_constraint_holds_and_falls_otherwise() {
        let mut l = noise_loss_wrapper(None).unwrap();
        let a0 = l.alpha.value();
        let a1 = l.observe(0.3, Some(0.5)).unwrap();
        assert!(a1 > a0);
        let a2 = l.observe(2.0, Some(0.5)).unwrap();
        assert!(a2 < a1);
        for _ in 0..1000 {
            l.observe(100.0, Some(0.5)).unwrap();
        }
        assert_eq!(l.alpha.value(), 0.0);
        assert!(l.observe(1.0, None).is_err());
    }
}
