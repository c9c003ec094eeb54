//! Noise layers (SPEC §3). Every layer returns a [`NoiseOutput`] and honours an optional
//! `noise_mask`: elements where it is 0 pass through bit-exactly.

mod affine_op;
mod cloak;
mod patch;

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};

use affine_op::affine_run;
use serde::{Deserialize, Serialize};

pub use cloak::{CloakConfig, CloakNoiseLayer, CloakRecipe};
pub use patch::{PatchCloakConfig, PatchCloakNoiseLayer};

use crate::{Error, NoiseRng, Result};

/// What a noise layer returns.
#[derive(Debug, Clone)]
pub struct NoiseOutput {
    /// `x̃`, the input's shape.
    pub transformed: Tensor,
    /// μ (without batch dimension for input-independent layers).
    pub mean: Tensor,
    /// σ, same shape as `mean`.
    pub std: Tensor,
    /// Keep-mask `m` (1 = keep, 0 = suppressed to μ), same shape as `std`; `None` without masking.
    pub mask: Option<Tensor>,
}

/// A stochastic transform `x ↦ x̃` with learnable parameters.
pub trait NoiseLayer {
    /// Transforms `x`; `noise_mask` (broadcastable to `x`, nonzero = transform) selects elements.
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput>;
    /// Inference (the client's path): `x̃` only, with no autograd graph. Same distribution as
    /// [`Self::forward`]; for the same seed, the same values.
    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        Ok(self.forward(x, noise_mask, rng)?.transformed.detach())
    }
    /// The trainable parameters (all of them get weight decay 0).
    fn parameters(&self) -> Vec<Var>;
    /// Whether the noise loss should average σ over kept features only.
    fn noise_loss_respects_mask(&self) -> bool;
}

/// Serializable configuration of a vision noise layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoiseLayerConfig {
    Cloak(CloakConfig),
    PatchCloak(PatchCloakConfig),
}

/// A closed set of vision noise layers, one type to save, load and train.
#[derive(Debug)]
pub enum VisionNoiseLayer {
    Cloak(CloakNoiseLayer),
    PatchCloak(PatchCloakNoiseLayer),
}

impl VisionNoiseLayer {
    /// Builds a fresh layer from its config.
    pub fn new(config: NoiseLayerConfig, device: &candle_core::Device) -> Result<Self> {
        Ok(match config {
            NoiseLayerConfig::Cloak(c) => Self::Cloak(CloakNoiseLayer::new(c, device)?),
            NoiseLayerConfig::PatchCloak(c) => {
                Self::PatchCloak(PatchCloakNoiseLayer::new(c, device)?)
            }
        })
    }

    /// The layer's config.
    pub fn config(&self) -> NoiseLayerConfig {
        match self {
            Self::Cloak(l) => NoiseLayerConfig::Cloak(l.config().clone()),
            Self::PatchCloak(l) => NoiseLayerConfig::PatchCloak(l.config().clone()),
        }
    }

    /// Named tensors to save (`locs`, `rhos`, and a frozen mask if any).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Self::Cloak(l) => l.named_tensors(),
            Self::PatchCloak(l) => l.named_tensors(),
        }
    }

    /// Overwrites parameters from named tensors (shapes are checked by the caller).
    pub fn set_named_tensors(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        match self {
            Self::Cloak(l) => l.set_named_tensors(tensors),
            Self::PatchCloak(l) => l.set_named_tensors(tensors),
        }
    }

    /// Expected names and shapes of the saved tensors.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect()
    }

    /// The per-image input shape `[C, H, W]` this layer accepts.
    pub fn input_shape(&self) -> &[usize] {
        match self {
            Self::Cloak(l) => &l.config().shape,
            Self::PatchCloak(l) => &l.config().shape,
        }
    }

    /// The deterministic part of the transform: μ, σ and the keep-mask, without sampling.
    pub fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        match self {
            Self::Cloak(l) => l.statistics(),
            Self::PatchCloak(l) => l.statistics(),
        }
    }
}

impl NoiseLayer for VisionNoiseLayer {
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        match self {
            Self::Cloak(l) => l.forward(x, noise_mask, rng),
            Self::PatchCloak(l) => l.forward(x, noise_mask, rng),
        }
    }
    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        match self {
            Self::Cloak(l) => l.transform(x, noise_mask, rng),
            Self::PatchCloak(l) => l.transform(x, noise_mask, rng),
        }
    }
    fn parameters(&self) -> Vec<Var> {
        match self {
            Self::Cloak(l) => l.parameters(),
            Self::PatchCloak(l) => l.parameters(),
        }
    }
    fn noise_loss_respects_mask(&self) -> bool {
        match self {
            Self::Cloak(l) => l.noise_loss_respects_mask(),
            Self::PatchCloak(l) => l.noise_loss_respects_mask(),
        }
    }
}

/// Optional clamp of `x̃` after the transform; each side optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueRange {
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl ValueRange {
    pub(crate) fn validate(&self) -> Result<()> {
        if let (Some(lo), Some(hi)) = (self.lo, self.hi) {
            if lo >= hi || lo.is_nan() || hi.is_nan() {
                return Err(Error::hyper(
                    "value_range",
                    format!("({lo}, {hi})"),
                    "lo must be below hi",
                ));
            }
        }
        for v in [self.lo, self.hi].into_iter().flatten() {
            if !v.is_finite() {
                return Err(Error::hyper("value_range", v, "bounds must be finite"));
            }
        }
        Ok(())
    }

    /// `(lo, hi)` as f32, an absent side as ∓∞.
    pub(crate) fn bounds(&self) -> (f32, f32) {
        (
            self.lo.map_or(f32::NEG_INFINITY, |v| v as f32),
            self.hi.map_or(f32::INFINITY, |v| v as f32),
        )
    }

    pub(crate) fn apply(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let x = match self.lo {
            Some(lo) => x.maximum(lo)?,
            None => x,
        };
        match self.hi {
            Some(hi) => x.minimum(hi),
            None => Ok(x),
        }
    }
}

/// Checks that `x` is `[B, *shape]`.
pub(crate) fn check_input(x: &Tensor, shape: &[usize]) -> Result<()> {
    let d = x.dims();
    if d.len() != shape.len() + 1 || &d[1..] != shape {
        return Err(Error::Shape {
            what: "noise layer input".into(),
            expected: format!(
                "[batch, {}]",
                shape
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            got: d.to_vec(),
        });
    }
    if x.dtype() != DType::F32 {
        return Err(Error::Shape {
            what: format!("noise layer input dtype {:?} (f32 required)", x.dtype()),
            expected: "f32".into(),
            got: d.to_vec(),
        });
    }
    Ok(())
}

/// `x̃` where `noise_mask` is nonzero, `x` (bit-exact) elsewhere.
pub(crate) fn apply_noise_mask(
    x: &Tensor,
    transformed: Tensor,
    noise_mask: Option<&Tensor>,
) -> Result<Tensor> {
    let Some(nm) = noise_mask else {
        return Ok(transformed);
    };
    let pred = nm.to_dtype(DType::F32)?.ne(0f32)?;
    let pred = pred.broadcast_as(x.shape()).map_err(|_| Error::Shape {
        what: "noise_mask".into(),
        expected: format!("broadcastable to {:?}", x.dims()),
        got: nm.dims().to_vec(),
    })?;
    Ok(pred.where_cond(&transformed, x)?)
}

/// Common sampling path of input-independent layers: `x̃ = m ⊙ (x + σ ⊙ ε) + μ`, then clamp,
/// then the noise mask. Three paths that draw ε alike and round alike: with no autograd graph
/// to build (no input tracks gradients) one fused parallel pass on host memory (the client); on
/// the CPU with gradients one fused op ([`affine_op`]); otherwise the tensor composition.
pub(crate) fn affine_transform(
    x: &Tensor,
    mean: &Tensor,
    std: &Tensor,
    keep: Option<&Tensor>,
    range: &ValueRange,
    noise_mask: Option<&Tensor>,
    rng: &mut NoiseRng,
) -> Result<Tensor> {
    let tracked = [Some(x), Some(mean), Some(std), keep]
        .into_iter()
        .flatten()
        .any(Tensor::track_op);
    if !tracked {
        if let Some(out) = affine_host(x, mean, std, keep, range, rng)? {
            return apply_noise_mask(x, out, noise_mask);
        }
    }
    if let Some(out) = affine_op(x, mean, std, keep, range, rng)? {
        return apply_noise_mask(x, out, noise_mask);
    }
    let eps = rng.standard_normal_parallel(x.shape(), x.device())?;
    let noisy = (x + eps.broadcast_mul(std)?)?;
    let noisy = match keep {
        Some(m) => noisy.broadcast_mul(m)?,
        None => noisy,
    };
    let out = range.apply(noisy.broadcast_add(mean)?)?;
    apply_noise_mask(x, out, noise_mask)
}

/// [`affine_transform`] without an autograd graph, from a layer's `(μ, σ, mask)`: the
/// input-independent layers' [`NoiseLayer::transform`].
pub(crate) fn detached_transform(
    x: &Tensor,
    (mean, std, mask): (Tensor, Tensor, Option<Tensor>),
    range: &ValueRange,
    noise_mask: Option<&Tensor>,
    rng: &mut NoiseRng,
) -> Result<Tensor> {
    let mask = mask.map(|m| m.detach());
    affine_transform(
        &x.detach(),
        &mean.detach(),
        &std.detach(),
        mask.as_ref(),
        range,
        noise_mask,
        rng,
    )
}

/// The training path of [`affine_transform`] as one op ([`affine_op::AffineOp`]) for f32 CPU
/// inputs whose σ and μ have one example's shape; `None` otherwise.
fn affine_op(
    x: &Tensor,
    mean: &Tensor,
    std: &Tensor,
    keep: Option<&Tensor>,
    range: &ValueRange,
    rng: &mut NoiseRng,
) -> Result<Option<Tensor>> {
    let cpu_f32 = crate::host::is_cpu_f32;
    let example = x.dims().get(1..).unwrap_or(&[]);
    let per_example = |t: &Tensor| cpu_f32(t) && t.dims() == example;
    if x.rank() < 2 || !cpu_f32(x) || !per_example(mean) || !per_example(std) {
        return Ok(None);
    }
    let keep = match keep {
        Some(k) if per_example(k) => Some(Arc::new(k.flatten_all()?.to_vec1::<f32>()?)),
        Some(_) => return Ok(None),
        None => None,
    };
    let mut eps = vec![0f32; x.elem_count()];
    rng.fill_standard_normal(&mut eps);
    let op = affine_op::AffineOp {
        eps: Arc::new(eps),
        keep,
        range: *range,
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &std.contiguous()?,
        &mean.contiguous()?,
        op,
    )?))
}

/// The no-graph path of [`affine_transform`] for f32 inputs on the CPU whose statistics
/// broadcast to one example's shape; `None` otherwise (the tensor path then runs).
fn affine_host(
    x: &Tensor,
    mean: &Tensor,
    std: &Tensor,
    keep: Option<&Tensor>,
    range: &ValueRange,
    rng: &mut NoiseRng,
) -> Result<Option<Tensor>> {
    if !crate::host::is_cpu_f32(x) || x.rank() < 2 {
        return Ok(None);
    }
    let example = &x.dims()[1..];
    let per_feature = |t: &Tensor| -> Option<Vec<f32>> {
        let t = t.to_dtype(DType::F32).ok()?.broadcast_as(example).ok()?;
        t.flatten_all().ok()?.to_vec1::<f32>().ok()
    };
    let (Some(mu), Some(sd)) = (per_feature(mean), per_feature(std)) else {
        return Ok(None);
    };
    let m = match keep {
        Some(k) => match per_feature(k) {
            Some(m) => Some(m),
            None => return Ok(None),
        },
        None => None,
    };
    let (f, bounds, keep) = (mu.len(), range.bounds(), m.as_deref());
    // Applied to each block of ε as soon as it is sampled, one feature-aligned run at a time.
    let out = crate::host::with_host(x, |xv| {
        let affine = |offset: usize, block: &mut [f32]| {
            let mut k = 0;
            while k < block.len() {
                let (e, j) = (offset + k, (offset + k) % f);
                let n = (f - j).min(block.len() - k);
                let feat = j..j + n;
                affine_run(
                    &mut block[k..k + n],
                    &xv[e..e + n],
                    &sd[feat.clone()],
                    &mu[feat.clone()],
                    keep.map(|m| &m[feat]),
                    bounds,
                );
                k += n;
            }
        };
        let mut out = vec![0f32; xv.len()];
        rng.fill_standard_normal_then(&mut out, affine);
        out
    })?;
    Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
}

impl<L: NoiseLayer + ?Sized> NoiseLayer for &L {
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        (**self).forward(x, noise_mask, rng)
    }
    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        (**self).transform(x, noise_mask, rng)
    }
    fn parameters(&self) -> Vec<Var> {
        (**self).parameters()
    }
    fn noise_loss_respects_mask(&self) -> bool {
        (**self).noise_loss_respects_mask()
    }
}
