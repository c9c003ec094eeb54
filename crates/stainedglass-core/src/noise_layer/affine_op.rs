//! The training path of the input-independent layers' sampling step as one op on the CPU:
//! `x̃ = clamp((x + ε ⊙ σ) ⊙ m + μ)` with inputs `(x, σ, μ)` — `σ` and `μ` of one example's
//! shape — and the noise `ε` and the detached keep-mask `m` held in the op. Forward is one
//! parallel pass; backward is one pass giving `∂x`, and `∂σ`, `∂μ` summed over the batch. It
//! replaces six broadcast tensor ops forward and about twelve backward (each a full-size
//! temporary). The clamp passes the gradient where `lo ≤ v ≤ hi` (PyTorch's `clamp`).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::value_range::ValueRange;
use crate::host::{cpu_slice as slice, with_host};

/// Examples per parallel task (about two tasks per thread).
fn examples_per_task(batch: usize) -> usize {
    batch
        .div_ceil(2 * rayon::current_num_threads().max(1))
        .max(1)
}

#[derive(Debug, Clone)]
pub(crate) struct AffineOp {
    /// `ε`, the input's shape.
    pub eps: Arc<Vec<f32>>,
    /// Keep-mask per feature (1 keep, 0 suppress), if any.
    pub keep: Option<Arc<Vec<f32>>>,
    pub range: ValueRange,
}

/// `o ← clamp((x + o·σ)·m + μ)` on one feature-aligned run: `o` holds ε on entry and x̃ on
/// exit; all slices have the run's length. The tensor path's operation order and rounding, and
/// branch-free so it vectorises (an absent bound is ±∞, which leaves every value unchanged).
pub(crate) fn affine_run(
    o: &mut [f32],
    x: &[f32],
    sd: &[f32],
    mu: &[f32],
    keep: Option<&[f32]>,
    (lo, hi): (f32, f32),
) {
    let run = o.iter_mut().zip(x).zip(sd).zip(mu);
    match keep {
        Some(m) => {
            for ((((o, &x), &s), &u), &k) in run.zip(m) {
                *o = clamp_or_nan((x + *o * s) * k + u, lo, hi);
            }
        }
        None => {
            for (((o, &x), &s), &u) in run {
                *o = clamp_or_nan(x + *o * s + u, lo, hi);
            }
        }
    }
}

/// `max(lo)` then `min(hi)` with the tensor path's rounding; NaN passes through.
#[inline(always)]
fn clamp_or_nan(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

impl CustomOp3 for AffineOp {
    fn name(&self) -> &'static str {
        "sgt-affine-noise"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, sd, mu) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let f = mu.len();
        if f == 0 || sd.len() != f || x.len() % f != 0 || self.eps.len() != x.len() {
            return Err(candle_core::Error::Msg(format!(
                "noise op: input of {} values, σ of {}, μ of {}, ε of {}",
                x.len(),
                sd.len(),
                f,
                self.eps.len()
            )));
        }
        let bounds = self.range.bounds();
        let keep = self.keep.as_deref().map(Vec::as_slice);
        let per = examples_per_task(x.len() / f) * f;
        let mut out = self.eps.to_vec();
        out.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(o, x)| {
                for (o, x) in o.chunks_mut(f).zip(x.chunks(f)) {
                    affine_run(o, x, sd, mu, keep, bounds);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        std: &Tensor,
        mean: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let f = mean.elem_count();
        let (lo, hi) = self.range.bounds();
        let want_x = x.track_op();
        let host = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (xs, sd, mu) = (host(x)?, host(std)?, host(mean)?);
        // Per task: (∂x of its examples, Σ ∂σ, Σ ∂μ over its examples).
        let parts = with_host(grad, |g| {
            let per = examples_per_task(g.len() / f.max(1)) * f;
            g.par_chunks(per)
                .zip(xs.par_chunks(per))
                .zip(self.eps.par_chunks(per))
                .map(|((g, x), e)| {
                    let mut dx = if want_x {
                        vec![0f32; g.len()]
                    } else {
                        Vec::new()
                    };
                    let (mut ds, mut dm) = (vec![0f32; f], vec![0f32; f]);
                    for (ex, ((g, x), e)) in
                        g.chunks(f).zip(x.chunks(f)).zip(e.chunks(f)).enumerate()
                    {
                        for j in 0..f {
                            let k = self.keep.as_ref().map_or(1.0, |m| m[j]);
                            // The pre-clamp value, recomputed with the forward's rounding.
                            let v = (x[j] + e[j] * sd[j]) * k + mu[j];
                            let pass = if v >= lo && v <= hi { g[j] } else { 0.0 };
                            dm[j] += pass;
                            ds[j] += pass * k * e[j];
                            if want_x {
                                dx[ex * f + j] = pass * k;
                            }
                        }
                    }
                    (dx, ds, dm)
                })
                .collect::<Vec<_>>()
        })?;
        let (mut ds, mut dm) = (vec![0f32; f], vec![0f32; f]);
        let mut dx = Vec::with_capacity(if want_x { xs.len() } else { 0 });
        for (px, ps, pm) in parts {
            dx.extend(px);
            for j in 0..f {
                ds[j] += ps[j];
                dm[j] += pm[j];
            }
        }
        let dx = if want_x {
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(ds, std.shape(), std.device())?),
            Some(Tensor::from_vec(dm, mean.shape(), mean.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::affine::affine_transform;
    use super::super::value_range::ValueRange;
    use crate::NoiseRng;
    use candle_core::{Device, Tensor, Var};

    /// The fused op equals the tensor composition in value and in every gradient, with clamping
    /// on both sides and a keep-mask.
    #[test]
    fn fused_op_matches_the_tensor_composition() {
        let d = Device::Cpu;
        let (b, f) = (37, 50);
        let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, (b, 5, 10), &d).unwrap()).unwrap();
        let sd = Var::from_tensor(&Tensor::rand(0.05f32, 0.6, (5, 10), &d).unwrap()).unwrap();
        let mu = Var::from_tensor(&Tensor::rand(-0.3f32, 0.3, (5, 10), &d).unwrap()).unwrap();
        let keep: Vec<f32> = (0..f).map(|j| if j % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (5, 10), &d).unwrap();
        let range = ValueRange {
            lo: Some(0.0),
            hi: Some(1.0),
        };
        let weights = Tensor::rand(-1f32, 1.0, (b, 5, 10), &d).unwrap();
        let ours = affine_transform(
            x.as_tensor(),
            mu.as_tensor(),
            sd.as_tensor(),
            Some(&keep),
            &range,
            None,
            &mut NoiseRng::seeded(9),
        )
        .unwrap();
        assert!(ours.track_op());
        let eps = NoiseRng::seeded(9)
            .standard_normal_parallel((b, 5, 10), &d)
            .unwrap();
        let reference = ((x.as_tensor() + eps.broadcast_mul(sd.as_tensor()).unwrap())
            .unwrap()
            .broadcast_mul(&keep)
            .unwrap()
            .broadcast_add(mu.as_tensor())
            .unwrap()
            .maximum(0f32)
            .unwrap()
            .minimum(1f32))
        .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&ours), flat(&reference));
        let clamped = flat(&ours)
            .iter()
            .filter(|v| **v == 0.0 || **v == 1.0)
            .count();
        assert!(
            clamped > 10,
            "the test must exercise the clamp ({clamped} clamped)"
        );
        let grads = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (g0, g1) = (grads(&reference), grads(&ours));
        for (name, v) in [("x", &x), ("σ", &sd), ("μ", &mu)] {
            let (a, c) = (flat(g0.get(v).unwrap()), flat(g1.get(v).unwrap()));
            let err = a
                .iter()
                .zip(&c)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(err < 1e-4, "∂{name}: max |Δ| = {err}");
        }
    }
}
