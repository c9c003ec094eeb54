//! The passes of a TransformerCloak: μ and σ from the estimator's hidden states (the heads),
//! the noise draw, the per-token keep mask and the masked combination. Training records the
//! autograd graph (on the CPU through the fused ops of `noise_head`); the client's path
//! ([`TransformerCloak::transform`]) computes the same values on host buffers in one pass.

use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use stainedglass_core::host::{is_cpu_f32, with_host, zeroed};
use stainedglass_core::noise_layer::NoiseOutput;
use stainedglass_core::NoiseRng;

use super::cloak::TransformerCloak;
use super::config::MaskedFill;
use super::estimator::{linear, Grad};
use super::noise_head::{combine_in_place, NoiseCombine, Rows, TanhHead};
use crate::error::{Error, Result};

impl TransformerCloak {
    pub(super) fn statistics_with(
        &self,
        x: &Tensor,
        attention_mask: &[u8],
        grad: Grad,
    ) -> Result<(Tensor, Tensor)> {
        let h = self.estimator.hidden(x, attention_mask, grad)?;
        if let Some(stats) = self.fused_heads(&h, grad)? {
            return Ok(stats);
        }
        let r_mean = linear(&h, &self.mean_w, Some(&self.mean_b), grad)?;
        let r_rho = linear(&h, &self.rho_w, Some(&self.rho_b), grad)?;
        let mean = self.mean.forward(&r_mean)?;
        let std = self.param.forward(&r_rho)?;
        Ok((mean, std))
    }

    /// Training on the CPU with the Cloak σ form: μ and σ each as one op (linear head and
    /// its `tanh` form together); `None` where the composed ops run instead.
    fn fused_heads(&self, h: &Tensor, grad: Grad) -> Result<Option<(Tensor, Tensor)>> {
        let Some(std_form) = self.param.tanh_form() else {
            return Ok(None);
        };
        if !self.estimator.host_training(grad, h) {
            return Ok(None);
        }
        let (b, t, d) = h.dims3()?;
        let rows = h.reshape((b * t, d))?.contiguous()?;
        let head = |w: &Var, bias: &Var, form| -> Result<Tensor> {
            let y = rows.apply_op3(w.as_tensor(), bias.as_tensor(), TanhHead::new(form))?;
            Ok(y.reshape((b, t, w.dim(0)?))?)
        };
        Ok(Some((
            head(&self.mean_w, &self.mean_b, self.mean.tanh_form())?,
            head(&self.rho_w, &self.rho_b, std_form)?,
        )))
    }

    /// Transforms `x (b, t, d)`: tokens with `noise_mask = 0` (and padding) pass bit-exactly.
    /// Records the autograd graph (training).
    pub fn forward_masked(
        &self,
        x: &Tensor,
        attention_mask: Option<&[u8]>,
        noise_mask: Option<&[u8]>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        self.forward_impl(x, attention_mask, noise_mask, rng, Grad::Track)
    }

    /// [`Self::forward_masked`] for a trained layer: the same values, no autograd graph, and the
    /// products on the BLAS-backed path (what a client runs).
    pub fn transform(
        &self,
        x: &Tensor,
        attention_mask: Option<&[u8]>,
        noise_mask: Option<&[u8]>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        self.forward_impl(&x.detach(), attention_mask, noise_mask, rng, Grad::Off)
    }

    /// The client's path of [`Self::transform`] on the CPU: after the estimator, μ, σ, the
    /// noise and the masked combination are computed on host values in one pass per token
    /// (no intermediate tensors); the same formulas and noise stream as the training forward.
    /// `sel`: 1 per transformed token.
    fn transform_host(
        &self,
        x: &Tensor,
        am: &[u8],
        sel: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        let (b, t, d) = x.dims3()?;
        let host = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let h = self.estimator.hidden(x, am, Grad::Off)?;
        let (mut mean, mut std) = match &self.bf16_heads {
            Some(heads) => heads.raw(&host(h)?, b * t),
            None => (
                host(linear(&h, &self.mean_w, Some(&self.mean_b), Grad::Off)?)?,
                host(linear(&h, &self.rho_w, Some(&self.rho_b), Grad::Off)?)?,
            ),
        };
        self.mean.forward_in_place(&mut mean);
        self.param.forward_in_place(&mut std);
        let keep = match self.config.sgt.percent_to_mask {
            Some(p) if p > 0.0 => Some(keep_mask_host(&std, d, p)),
            _ => None,
        };
        let xs = host(x.clone())?;
        // ε, then x̃ in place.
        let mut out = zeroed(b * t * d);
        rng.fill_standard_normal(&mut out);
        combine_in_place(
            &mut out,
            Rows {
                x: &xs,
                mean: &mean,
                std: &std,
                transformed: sel,
                keep: keep.as_deref(),
                fill: self.config.sgt.masked_fill,
                d,
            },
        );
        let dev = x.device();
        let mask = match keep {
            Some(k) => {
                let f: Vec<f32> = k.iter().map(|&v| f32::from(v)).collect();
                Some(Tensor::from_vec(f, (b, t, d), dev)?)
            }
            None => None,
        };
        Ok(NoiseOutput {
            transformed: Tensor::from_vec(out, (b, t, d), dev)?,
            mean: Tensor::from_vec(mean, (b, t, d), dev)?,
            std: Tensor::from_vec(std, (b, t, d), dev)?,
            mask,
        })
    }

    /// The training combination on the CPU as one op (input without a gradient): the same
    /// noise draw and formulas as the composed ops.
    fn combine_host(
        &self,
        x: &Tensor,
        mean: Tensor,
        std: Tensor,
        sel: Vec<u8>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        let mut eps = zeroed(x.elem_count());
        rng.fill_standard_normal(&mut eps);
        let keep = match self.config.sgt.percent_to_mask {
            Some(p) if p > 0.0 => Some(per_token_keep_mask(&std, p)?),
            _ => None,
        };
        let op = NoiseCombine {
            x: Arc::new(with_host(x, <[f32]>::to_vec)?),
            eps: Arc::new(eps),
            transformed: Arc::new(sel),
            keep: match &keep {
                Some(k) => Some(Arc::new(k.flatten_all()?.to_vec1::<u8>()?)),
                None => None,
            },
            fill: self.config.sgt.masked_fill,
        };
        let transformed = mean.apply_op2(&std, op)?;
        Ok(NoiseOutput {
            transformed,
            mean,
            std,
            mask: match keep {
                Some(k) => Some(k.to_dtype(DType::F32)?),
                None => None,
            },
        })
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        attention_mask: Option<&[u8]>,
        noise_mask: Option<&[u8]>,
        rng: &mut NoiseRng,
        grad: Grad,
    ) -> Result<NoiseOutput> {
        let (b, t, d) = x.dims3()?;
        let ones = vec![1u8; b * t];
        let am = attention_mask.unwrap_or(&ones);
        let nm = noise_mask.unwrap_or(am);
        if am.len() != b * t || nm.len() != b * t {
            return Err(Error::Shape {
                what: "attention / noise mask".into(),
                expected: format!("{} entries (batch × seq)", b * t),
                got: vec![am.len(), nm.len()],
            });
        }
        // 1 = the token is transformed (real and selected by the noise mask).
        let sel: Vec<u8> = nm
            .iter()
            .zip(am)
            .map(|(&n, &a)| u8::from(n != 0 && a != 0))
            .collect();
        if grad == Grad::Off && is_cpu_f32(x) {
            return self.transform_host(x, am, &sel, rng);
        }
        let (mean, std) = self.statistics_with(x, am, grad)?;
        if self.estimator.host_training(grad, x) && is_cpu_f32(&mean) && !x.track_op() {
            return self.combine_host(x, mean, std, sel, rng);
        }
        let eps = rng.standard_normal_parallel((b, t, d), x.device())?;
        let noise = (std.clone() * eps)?;
        let keep = match self.config.sgt.percent_to_mask {
            Some(p) if p > 0.0 => Some(per_token_keep_mask(&std, p)?),
            _ => None,
        };
        let x32 = x.to_dtype(DType::F32)?;
        let candidate = match &keep {
            // Kept features: x + μ + σε; suppressed ones: the fill.
            Some(k) => {
                let full = ((&x32 + &mean)? + &noise)?;
                let fill = match self.config.sgt.masked_fill {
                    MaskedFill::Mean => mean.clone(),
                    MaskedFill::Noise => noise.clone(),
                    MaskedFill::Zero => mean.zeros_like()?,
                };
                k.where_cond(&full, &fill)?
            }
            None => ((&x32 + &mean)? + &noise)?,
        };
        let sel = Tensor::from_vec(sel, (b, t, 1), x.device())?.broadcast_as((b, t, d))?;
        let transformed = sel.where_cond(&candidate, &x32)?;
        let mask = match keep {
            Some(k) => Some(k.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(NoiseOutput {
            transformed,
            mean,
            std,
            mask,
        })
    }
}
/// Per-token keep mask (u8, 1 = keep): the `⌈p·d⌉` largest σ of every token are suppressed.
fn per_token_keep_mask(std: &Tensor, p: f64) -> Result<Tensor> {
    let (b, t, d) = std.dims3()?;
    let v = std.detach().flatten_all()?.to_vec1::<f32>()?;
    Ok(Tensor::from_vec(
        keep_mask_host(&v, d, p),
        (b, t, d),
        std.device(),
    )?)
}

/// [`per_token_keep_mask`] on host values: rows of `d` σ values → keep flags.
fn keep_mask_host(v: &[f32], d: usize, p: f64) -> Vec<u8> {
    let k = stainedglass_core::mask::masked_count(p, d);
    let mut keep = vec![1u8; v.len()];
    let mut order: Vec<usize> = Vec::with_capacity(d);
    if k == 0 {
        return keep;
    }
    for (r, kr) in v.chunks_exact(d).zip(keep.chunks_exact_mut(d)) {
        order.clear();
        order.extend(0..d);
        // Largest σ first; ties broken by index so the choice is deterministic. Only the set
        // of the k largest matters, so a selection (O(d)) replaces a sort.
        order.select_nth_unstable_by(k - 1, |&a, &c| r[c].total_cmp(&r[a]).then(a.cmp(&c)));
        for &j in &order[..k] {
            kr[j] = 0;
        }
    }
    keep
}
