//! What the input-independent layers (Cloak, patch Cloak) share: their sampling step
//! `x̃ = m ⊙ (x + σ ⊙ ε) + μ` (then the clamp, then the noise mask) and, through
//! [`AffineLayer`], their whole [`NoiseLayer`] behaviour.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::affine_op::{affine_run, AffineOp};
use super::value_range::ValueRange;
use super::NoiseOutput;
use crate::{Error, NoiseRng, Result};

/// An input-independent noise layer: per-feature μ, σ and keep-mask of one example's shape.
pub(crate) trait AffineLayer {
    /// The per-example input shape.
    fn input_shape(&self) -> &[usize];
    fn value_range(&self) -> &ValueRange;
    /// μ, σ and the keep-mask, without sampling.
    fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)>;
}

/// [`super::NoiseLayer::forward`] of an affine layer.
pub(crate) fn forward(
    layer: &impl AffineLayer,
    x: &Tensor,
    noise_mask: Option<&Tensor>,
    rng: &mut NoiseRng,
) -> Result<NoiseOutput> {
    check_input(x, layer.input_shape())?;
    let (mean, std, mask) = layer.statistics()?;
    let transformed = affine_transform(
        x,
        &mean,
        &std,
        mask.as_ref(),
        layer.value_range(),
        noise_mask,
        rng,
    )?;
    Ok(NoiseOutput {
        transformed,
        mean,
        std,
        mask,
    })
}

/// [`super::NoiseLayer::transform`] of an affine layer: the same sampling with no autograd
/// graph (the client's path).
pub(crate) fn transform(
    layer: &impl AffineLayer,
    x: &Tensor,
    noise_mask: Option<&Tensor>,
    rng: &mut NoiseRng,
) -> Result<Tensor> {
    check_input(x, layer.input_shape())?;
    let (mean, std, mask) = layer.statistics()?;
    let mask = mask.map(|m| m.detach());
    affine_transform(
        &x.detach(),
        &mean.detach(),
        &std.detach(),
        mask.as_ref(),
        layer.value_range(),
        noise_mask,
        rng,
    )
}

/// Checks that `x` is `[B, *shape]`.
fn check_input(x: &Tensor, shape: &[usize]) -> Result<()> {
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
fn apply_noise_mask(
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
/// the CPU with gradients one fused op (`affine_op.rs`); otherwise the tensor composition.
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

/// The training path of [`affine_transform`] as one op ([`AffineOp`]) for f32 CPU
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
    let op = AffineOp {
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
