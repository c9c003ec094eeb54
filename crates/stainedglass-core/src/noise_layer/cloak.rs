//! `CloakNoiseLayer` (`docs/spec.md` §3.1): per-feature μ and ρ of the input's shape,
//! `x̃ = m ⊙ (x + σ ⊙ ε) + μ`. Two recipes share the code:
//! - [`CloakRecipe::OneShot`] (`CloakNoiseLayerOneShot`): μ, σ and the mask are learned jointly;
//!   the mask is recomputed from the current σ on every call.
//! - [`CloakRecipe::TwoPhase`] (classic Cloak): phase 1 grows σ without a mask (α > 0); then
//!   [`CloakNoiseLayer::freeze_mask`] fixes the mask from σ, and phase 2 fine-tunes μ (α = 0).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::affine::{self, AffineLayer};
use super::value_range::ValueRange;
use super::{NoiseLayer, NoiseOutput};
use crate::mask::{check_percent, percent_keep_mask};
use crate::param::{StdParameterization, DEFAULT_RHOS_INIT};
use crate::{Error, NoiseRng, Result};

/// Training recipe of a Cloak layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloakRecipe {
    /// Mask recomputed from σ on every call (the default).
    #[default]
    OneShot,
    /// Mask off until frozen; then fixed.
    TwoPhase,
}

/// Hyper-parameters of a Cloak layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloakConfig {
    /// Per-example input shape, e.g. `[1, 28, 28]`.
    pub shape: Vec<usize>,
    #[serde(default)]
    pub std: StdParameterization,
    #[serde(default = "default_rhos_init")]
    pub rhos_init: f64,
    #[serde(default)]
    pub percent_to_mask: Option<f64>,
    #[serde(default)]
    pub value_range: ValueRange,
    #[serde(default)]
    pub recipe: CloakRecipe,
}

fn default_rhos_init() -> f64 {
    DEFAULT_RHOS_INIT
}

impl CloakConfig {
    /// Defaults for an input shape: Cloak σ in (1e-4, 2), ρ₀ = −4, one-shot, no mask.
    pub fn new(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            std: StdParameterization::default(),
            rhos_init: DEFAULT_RHOS_INIT,
            percent_to_mask: None,
            value_range: ValueRange::default(),
            recipe: CloakRecipe::OneShot,
        }
    }

    /// Checks every hyper-parameter.
    pub fn validate(&self) -> Result<()> {
        if self.shape.is_empty() || self.shape.contains(&0) {
            return Err(Error::hyper(
                "shape",
                format!("{:?}", self.shape),
                "needs ≥ 1 dimension, all > 0",
            ));
        }
        self.std.validate()?;
        if !self.rhos_init.is_finite() {
            return Err(Error::hyper("rhos_init", self.rhos_init, "must be finite"));
        }
        if let Some(p) = self.percent_to_mask {
            check_percent(p)?;
        }
        self.value_range.validate()
    }
}

/// The Cloak noise layer for fixed-shape inputs (images).
#[derive(Debug)]
pub struct CloakNoiseLayer {
    config: CloakConfig,
    locs: Var,
    rhos: Var,
    frozen_mask: Option<Tensor>,
    /// Runtime switch (not saved): a one-shot layer in mask warm-up transforms without masking.
    mask_suspended: bool,
}

impl CloakNoiseLayer {
    /// A fresh layer: μ = 0, ρ = `rhos_init`.
    pub fn new(config: CloakConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let locs = Var::zeros(config.shape.as_slice(), DType::F32, device)?;
        let rhos = Var::from_tensor(
            &(Tensor::ones(config.shape.as_slice(), DType::F32, device)? * config.rhos_init)?,
        )?;
        Ok(Self {
            config,
            locs,
            rhos,
            frozen_mask: None,
            mask_suspended: false,
        })
    }

    /// Shorthand for the one-shot recipe (`CloakNoiseLayerOneShot`).
    pub fn one_shot(
        shape: &[usize],
        percent_to_mask: Option<f64>,
        device: &Device,
    ) -> Result<Self> {
        let mut c = CloakConfig::new(shape);
        c.percent_to_mask = percent_to_mask;
        Self::new(c, device)
    }

    pub fn config(&self) -> &CloakConfig {
        &self.config
    }

    /// μ as a trainable variable.
    pub fn locs(&self) -> &Var {
        &self.locs
    }

    /// ρ as a trainable variable.
    pub fn rhos(&self) -> &Var {
        &self.rhos
    }

    /// Current σ (differentiable in ρ).
    pub fn std(&self) -> Result<Tensor> {
        Ok(self.config.std.forward(self.rhos.as_tensor())?)
    }

    /// Two-phase recipe: fixes the keep-mask from the current σ (end of phase 1).
    pub fn freeze_mask(&mut self) -> Result<()> {
        let p = self.config.percent_to_mask.ok_or_else(|| {
            Error::hyper(
                "percent_to_mask",
                "None",
                "freeze_mask needs percent_to_mask to be set",
            )
        })?;
        self.frozen_mask = Some(percent_keep_mask(&self.std()?, p)?);
        Ok(())
    }

    /// Whether the mask has been frozen (phase 2 of the two-phase recipe).
    pub fn mask_frozen(&self) -> bool {
        self.frozen_mask.is_some()
    }

    /// Suspends (true) or restores (false) the one-shot mask, e.g. for a warm-up in which σ
    /// learns which features matter before the mask follows it. A frozen mask is unaffected.
    pub fn suspend_mask(&mut self, suspended: bool) {
        self.mask_suspended = suspended;
    }

    fn keep_mask(&self, std: &Tensor) -> Result<Option<Tensor>> {
        if let Some(m) = &self.frozen_mask {
            return Ok(Some(m.clone()));
        }
        match (self.config.recipe, self.config.percent_to_mask) {
            (CloakRecipe::OneShot, Some(p)) if !self.mask_suspended => {
                Ok(Some(percent_keep_mask(std, p)?))
            }
            _ => Ok(None),
        }
    }

    /// μ, σ and the keep-mask without sampling.
    pub fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let std = self.std()?;
        let mask = self.keep_mask(&std)?;
        Ok((self.locs.as_tensor().clone(), std, mask))
    }

    pub(crate) fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![
            ("locs".to_string(), self.locs.as_tensor().clone()),
            ("rhos".to_string(), self.rhos.as_tensor().clone()),
        ];
        if let Some(m) = &self.frozen_mask {
            v.push(("frozen_mask".to_string(), m.clone()));
        }
        v
    }

    pub(crate) fn set_named_tensors(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        let get = |n: &str| {
            t.get(n)
                .cloned()
                .ok_or_else(|| Error::artefact("<tensors>", format!("missing tensor `{n}`")))
        };
        self.locs.set(&get("locs")?)?;
        self.rhos.set(&get("rhos")?)?;
        self.frozen_mask = t.get("frozen_mask").cloned();
        Ok(())
    }
}

impl AffineLayer for CloakNoiseLayer {
    fn input_shape(&self) -> &[usize] {
        &self.config.shape
    }
    fn value_range(&self) -> &ValueRange {
        &self.config.value_range
    }
    fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        CloakNoiseLayer::statistics(self)
    }
}

impl NoiseLayer for CloakNoiseLayer {
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        affine::forward(self, x, noise_mask, rng)
    }

    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        affine::transform(self, x, noise_mask, rng)
    }

    fn parameters(&self) -> Vec<Var> {
        vec![self.locs.clone(), self.rhos.clone()]
    }

    fn noise_loss_respects_mask(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(p: Option<f64>) -> CloakNoiseLayer {
        CloakNoiseLayer::one_shot(&[1, 4, 4], p, &Device::Cpu).unwrap()
    }

    fn input() -> Tensor {
        Tensor::arange(0f32, 32.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 4, 4))
            .unwrap()
            .affine(1.0 / 32.0, 0.0)
            .unwrap()
    }

    #[test]
    fn masked_features_equal_mean_exactly() {
        let l = layer(Some(0.5));
        // Distinct μ and ρ so the mask is well defined.
        let r: Vec<f32> = (0..16).map(|i| -2.0 + i as f32 * 0.2).collect();
        l.rhos
            .set(&Tensor::from_vec(r, (1, 4, 4), &Device::Cpu).unwrap())
            .unwrap();
        let mu: Vec<f32> = (0..16).map(|i| 0.3 - i as f32 * 0.05).collect();
        l.locs
            .set(&Tensor::from_vec(mu.clone(), (1, 4, 4), &Device::Cpu).unwrap())
            .unwrap();
        let out = l.forward(&input(), None, &mut NoiseRng::seeded(0)).unwrap();
        let keep = out
            .mask
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(keep.iter().filter(|&&k| k == 0.0).count(), 8);
        // Largest σ are the last 8 features.
        assert!(keep[8..].iter().all(|&k| k == 0.0));
        let y = out
            .transformed
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for row in y {
            for j in 8..16 {
                assert_eq!(row[j].to_bits(), mu[j].to_bits(), "feature {j}");
            }
        }
    }

    #[test]
    fn zero_noise_mask_is_bit_exact() {
        let l = layer(Some(0.3));
        l.rhos
            .set(&(Tensor::ones((1, 4, 4), DType::F32, &Device::Cpu).unwrap() * 2.0).unwrap())
            .unwrap();
        let x = input();
        let nm = Tensor::zeros((2, 1, 4, 4), DType::U8, &Device::Cpu).unwrap();
        let out = l
            .forward(&x, Some(&nm), &mut NoiseRng::from_entropy())
            .unwrap();
        let a = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = out
            .transformed
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        // A partial mask (per example) transforms only the selected example.
        let nm = Tensor::new(&[1f32, 0.0], &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 1, 1))
            .unwrap();
        let out = l
            .forward(&x, Some(&nm), &mut NoiseRng::from_entropy())
            .unwrap();
        let y = out
            .transformed
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let x2 = x.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(y[1], x2[1]);
        assert_ne!(y[0], x2[0]);
    }

    /// The client's no-graph path draws and rounds exactly like the training forward, in the
    /// parallel regime too (more samples than one noise block).
    #[test]
    fn inference_transform_equals_forward_bit_for_bit() {
        let mut c = CloakConfig::new(&[1, 4, 4]);
        c.percent_to_mask = Some(0.25);
        c.value_range = ValueRange {
            lo: Some(0.0),
            hi: Some(1.0),
        };
        let l = CloakNoiseLayer::new(c, &Device::Cpu).unwrap();
        let r: Vec<f32> = (0..16).map(|i| -3.0 + i as f32 * 0.3).collect();
        l.rhos
            .set(&Tensor::from_vec(r, (1, 4, 4), &Device::Cpu).unwrap())
            .unwrap();
        let x = Tensor::rand(0f32, 1.0, (2000, 1, 4, 4), &Device::Cpu).unwrap();
        let nm = Tensor::rand(0f32, 1.0, (2000, 1, 4, 4), &Device::Cpu)
            .unwrap()
            .ge(0.5)
            .unwrap();
        for noise_mask in [None, Some(&nm)] {
            let a = l
                .forward(&x, noise_mask, &mut NoiseRng::seeded(5))
                .unwrap()
                .transformed;
            let b = l
                .transform(&x, noise_mask, &mut NoiseRng::seeded(5))
                .unwrap();
            assert!(!b.track_op());
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
            assert!(b.iter().all(|v| (0.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn unseeded_calls_differ_seeded_agree() {
        let l = layer(None);
        let x = input();
        let a = l
            .forward(&x, None, &mut NoiseRng::from_entropy())
            .unwrap()
            .transformed;
        let b = l
            .forward(&x, None, &mut NoiseRng::from_entropy())
            .unwrap()
            .transformed;
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff > 0.0);
        let a = l
            .forward(&x, None, &mut NoiseRng::seeded(3))
            .unwrap()
            .transformed;
        let b = l
            .forward(&x, None, &mut NoiseRng::seeded(3))
            .unwrap()
            .transformed;
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn value_range_clamps() {
        let mut c = CloakConfig::new(&[1, 4, 4]);
        c.rhos_init = 3.0;
        c.value_range = ValueRange {
            lo: Some(0.0),
            hi: Some(1.0),
        };
        let l = CloakNoiseLayer::new(c, &Device::Cpu).unwrap();
        let y = l
            .forward(&input(), None, &mut NoiseRng::seeded(1))
            .unwrap()
            .transformed;
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|&x| (0.0..=1.0).contains(&x)));
        assert!(v.contains(&0.0) && v.contains(&1.0));
    }

    #[test]
    fn wrong_shapes_and_bad_config_are_errors() {
        let l = layer(None);
        let x = Tensor::zeros((2, 1, 5, 4), DType::F32, &Device::Cpu).unwrap();
        let e = l
            .forward(&x, None, &mut NoiseRng::seeded(0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[batch, 1, 4, 4]"), "{e}");
        let nm = Tensor::zeros((3,), DType::U8, &Device::Cpu).unwrap();
        assert!(l
            .forward(&input(), Some(&nm), &mut NoiseRng::seeded(0))
            .is_err());
        let mut c = CloakConfig::new(&[1, 4, 4]);
        c.percent_to_mask = Some(1.2);
        assert!(CloakNoiseLayer::new(c, &Device::Cpu).is_err());
        let mut c = CloakConfig::new(&[1, 4, 4]);
        c.value_range = ValueRange {
            lo: Some(1.0),
            hi: Some(0.0),
        };
        assert!(CloakNoiseLayer::new(c, &Device::Cpu).is_err());
    }

    #[test]
    fn gradients_reach_mean_and_rho() {
        let l = layer(Some(0.25));
        let out = l.forward(&input(), None, &mut NoiseRng::seeded(0)).unwrap();
        let loss = out.transformed.sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let gm = grads.get(l.locs.as_tensor()).expect("no grad for μ");
        let gr = grads.get(l.rhos.as_tensor()).expect("no grad for ρ");
        assert!(
            gm.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
        assert!(
            gr.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn suspended_one_shot_mask_transforms_every_feature() {
        let mut l = layer(Some(0.5));
        l.suspend_mask(true);
        assert!(l
            .forward(&input(), None, &mut NoiseRng::seeded(0))
            .unwrap()
            .mask
            .is_none());
        l.suspend_mask(false);
        assert!(l
            .forward(&input(), None, &mut NoiseRng::seeded(0))
            .unwrap()
            .mask
            .is_some());
    }

    #[test]
    fn two_phase_mask_is_frozen() {
        let mut c = CloakConfig::new(&[1, 4, 4]);
        c.recipe = CloakRecipe::TwoPhase;
        c.percent_to_mask = Some(0.5);
        let mut l = CloakNoiseLayer::new(c, &Device::Cpu).unwrap();
        let r: Vec<f32> = (0..16).map(|i| -2.0 + i as f32 * 0.2).collect();
        l.rhos
            .set(&Tensor::from_vec(r, (1, 4, 4), &Device::Cpu).unwrap())
            .unwrap();
        assert!(l
            .forward(&input(), None, &mut NoiseRng::seeded(0))
            .unwrap()
            .mask
            .is_none());
        l.freeze_mask().unwrap();
        let m1 = l
            .forward(&input(), None, &mut NoiseRng::seeded(0))
            .unwrap()
            .mask
            .unwrap();
        // Changing σ afterwards does not move the frozen mask.
        l.rhos
            .set(&Tensor::zeros((1, 4, 4), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let m2 = l
            .forward(&input(), None, &mut NoiseRng::seeded(0))
            .unwrap()
            .mask
            .unwrap();
        assert_eq!(
            m1.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            m2.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
