//! `PatchCloakNoiseLayer` (`docs/spec.md` §3.2): μ and ρ live on a patch grid (per channel, or shared over
//! channels) and are expanded over the pixels of each patch; the mask suppresses whole patches,
//! largest σ first. Its noise loss ignores the mask.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::affine::{self, AffineLayer};
use super::value_range::ValueRange;
use super::{NoiseLayer, NoiseOutput};
use crate::mask::{check_percent, percent_keep_mask};
use crate::param::{StdParameterization, DEFAULT_RHOS_INIT};
use crate::{Error, NoiseRng, Result};

/// Hyper-parameters of a patch Cloak layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchCloakConfig {
    /// Per-example input shape `[C, H, W]`.
    pub shape: Vec<usize>,
    /// Patch size `(ph, pw)`; must divide `(H, W)`.
    pub patch_size: (usize, usize),
    /// One μ/ρ per channel and patch (true), or shared over channels (false).
    #[serde(default = "yes")]
    pub per_channel: bool,
    #[serde(default)]
    pub std: StdParameterization,
    #[serde(default = "default_rhos_init")]
    pub rhos_init: f64,
    #[serde(default)]
    pub percent_to_mask: Option<f64>,
    #[serde(default)]
    pub value_range: ValueRange,
}

fn yes() -> bool {
    true
}
fn default_rhos_init() -> f64 {
    DEFAULT_RHOS_INIT
}

impl PatchCloakConfig {
    pub fn new(shape: &[usize], patch_size: (usize, usize)) -> Self {
        Self {
            shape: shape.to_vec(),
            patch_size,
            per_channel: true,
            std: StdParameterization::default(),
            rhos_init: DEFAULT_RHOS_INIT,
            percent_to_mask: None,
            value_range: ValueRange::default(),
        }
    }

    /// Shape of the parameter grid `[C or 1, H/ph, W/pw]`.
    pub fn grid_shape(&self) -> Vec<usize> {
        let c = if self.per_channel { self.shape[0] } else { 1 };
        vec![
            c,
            self.shape[1] / self.patch_size.0,
            self.shape[2] / self.patch_size.1,
        ]
    }

    pub fn validate(&self) -> Result<()> {
        if self.shape.len() != 3 || self.shape.contains(&0) {
            return Err(Error::hyper(
                "shape",
                format!("{:?}", self.shape),
                "PatchCloak needs [C, H, W], all > 0",
            ));
        }
        let (ph, pw) = self.patch_size;
        if ph == 0
            || pw == 0
            || !self.shape[1].is_multiple_of(ph)
            || !self.shape[2].is_multiple_of(pw)
        {
            return Err(Error::hyper(
                "patch_size",
                format!("({ph}, {pw})"),
                format!(
                    "must be > 0 and divide the image size {}×{}",
                    self.shape[1], self.shape[2]
                ),
            ));
        }
        self.std.validate()?;
        if let Some(p) = self.percent_to_mask {
            check_percent(p)?;
        }
        self.value_range.validate()
    }
}

/// Patch-wise Cloak layer.
#[derive(Debug)]
pub struct PatchCloakNoiseLayer {
    config: PatchCloakConfig,
    locs: Var,
    rhos: Var,
}

impl PatchCloakNoiseLayer {
    pub fn new(config: PatchCloakConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let g = config.grid_shape();
        let locs = Var::zeros(g.as_slice(), DType::F32, device)?;
        let rhos = Var::from_tensor(
            &(Tensor::ones(g.as_slice(), DType::F32, device)? * config.rhos_init)?,
        )?;
        Ok(Self { config, locs, rhos })
    }

    pub fn config(&self) -> &PatchCloakConfig {
        &self.config
    }

    pub fn locs(&self) -> &Var {
        &self.locs
    }

    pub fn rhos(&self) -> &Var {
        &self.rhos
    }

    /// Expands a grid tensor `[c, gh, gw]` to pixels `[C, H, W]` (differentiable).
    fn expand(&self, g: &Tensor) -> candle_core::Result<Tensor> {
        let (c, gh, gw) = g.dims3()?;
        let (ph, pw) = self.config.patch_size;
        let s = &self.config.shape;
        g.reshape((c, gh, 1, gw, 1))?
            .broadcast_as((c, gh, ph, gw, pw))?
            .reshape((c, gh * ph, gw * pw))?
            .broadcast_as((s[0], s[1], s[2]))?
            .contiguous()
    }

    /// Pixel-level μ, σ and keep-mask.
    pub fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let grid_std = self.config.std.forward(self.rhos.as_tensor())?;
        let mask = match self.config.percent_to_mask {
            Some(p) => Some(self.expand(&percent_keep_mask(&grid_std, p)?)?),
            None => None,
        };
        Ok((
            self.expand(self.locs.as_tensor())?,
            self.expand(&grid_std)?,
            mask,
        ))
    }

    pub(crate) fn named_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("locs".to_string(), self.locs.as_tensor().clone()),
            ("rhos".to_string(), self.rhos.as_tensor().clone()),
        ]
    }

    pub(crate) fn set_named_tensors(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        let get = |n: &str| {
            t.get(n)
                .ok_or_else(|| Error::artefact("<tensors>", format!("missing tensor `{n}`")))
        };
        self.locs.set(get("locs")?)?;
        self.rhos.set(get("rhos")?)?;
        Ok(())
    }
}

impl AffineLayer for PatchCloakNoiseLayer {
    fn input_shape(&self) -> &[usize] {
        &self.config.shape
    }
    fn value_range(&self) -> &ValueRange {
        &self.config.value_range
    }
    fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        PatchCloakNoiseLayer::statistics(self)
    }
}

impl NoiseLayer for PatchCloakNoiseLayer {
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
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_whole_patches_and_shares_parameters() {
        let mut c = PatchCloakConfig::new(&[2, 4, 4], (2, 2));
        c.percent_to_mask = Some(0.25);
        c.per_channel = false;
        let l = PatchCloakNoiseLayer::new(c, &Device::Cpu).unwrap();
        l.rhos
            .set(&Tensor::new(&[[[-1f32, 0.5], [0.0, -2.0]]], &Device::Cpu).unwrap())
            .unwrap();
        l.locs
            .set(&Tensor::new(&[[[0.1f32, 0.2], [0.3, 0.4]]], &Device::Cpu).unwrap())
            .unwrap();
        let x = Tensor::ones((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let out = l.forward(&x, None, &mut NoiseRng::seeded(0)).unwrap();
        let m = out.mask.unwrap().to_vec3::<f32>().unwrap();
        // Top-right patch (ρ = 0.5) is suppressed in both channels.
        for ch in &m {
            assert_eq!(ch[0], vec![1.0, 1.0, 0.0, 0.0]);
            assert_eq!(ch[3], vec![1.0, 1.0, 1.0, 1.0]);
        }
        let y = out
            .transformed
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(y[1][1][3], 0.2f32);
        assert!(!l.noise_loss_respects_mask());
    }

    #[test]
    fn bad_patch_size_is_error() {
        assert!(PatchCloakNoiseLayer::new(
            PatchCloakConfig::new(&[1, 28, 28], (5, 5)),
            &Device::Cpu
        )
        .is_err());
        assert!(PatchCloakNoiseLayer::new(
            PatchCloakConfig::new(&[1, 28, 28], (0, 4)),
            &Device::Cpu
        )
        .is_err());
    }

    #[test]
    fn gradients_reach_grid_parameters() {
        let l = PatchCloakNoiseLayer::new(PatchCloakConfig::new(&[1, 4, 4], (2, 2)), &Device::Cpu)
            .unwrap();
        let x = Tensor::ones((2, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
        let out = l.forward(&x, None, &mut NoiseRng::seeded(0)).unwrap();
        let g = out
            .transformed
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(l.locs.as_tensor()).is_some());
        assert!(g.get(l.rhos.as_tensor()).is_some());
    }
}
