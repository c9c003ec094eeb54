//! The TransformerCloak's heads and noise combination as CPU ops for training: each head
//! (`y = a·tanh((x·Wᵀ + bias + shift)·s) + c`, the bounded mean and the Cloak σ) is one op
//! with its three gradients, and `x̃ = x + μ + σ·ε` (with the noise and keep masks) is one op
//! with the gradients of μ and σ. The composition of candle ops they replace allocated a
//! tensor per step and a zero-filled gradient per tensor in backward.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;
use stainedglass_core::fastmath::tanh_affine_in_place;
use stainedglass_core::host::{cpu_slice, with_host, with_hosts, zeroed};
use stainedglass_core::param::TanhAffine;

use super::config::MaskedFill;
use crate::llm::backend::blas::{par_sgemm, par_sgemm_new};
use crate::llm::backend::kernels::column_sums;
use crate::llm::backend::train_linear::weight_grad;

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("noise head: tape lock poisoned".into())
}

/// `y = a·tanh((x·Wᵀ + bias + shift)·s) + c` for `x: (m, k)`, `W: (n, k)`, `bias: (n)`.
pub(super) struct TanhHead {
    form: TanhAffine,
    /// `tanh(·)` of the forward pass (its derivative is `1 − t²`).
    tanh: Mutex<Vec<f32>>,
}

impl TanhHead {
    pub fn new(form: TanhAffine) -> Self {
        Self {
            form,
            tanh: Mutex::default(),
        }
    }
}

impl CustomOp3 for TanhHead {
    fn name(&self) -> &'static str {
        "sg-tanh-head"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        let (n, kw) = lw.shape().dims2()?;
        if kw != k || lb.shape().elem_count() != n {
            candle_core::bail!(
                "noise head: input {:?}, weight {:?} and bias {:?} do not fit",
                lx.shape().dims(),
                lw.shape().dims(),
                lb.shape().dims()
            );
        }
        let mut t = zeroed(m * n);
        let bias = cpu_slice(sb, lb)?;
        t.chunks_exact_mut(n).for_each(|r| r.copy_from_slice(bias));
        par_sgemm(
            cpu_slice(sx, lx)?,
            cpu_slice(sw, lw)?,
            &mut t,
            (m, n, k),
            true,
            1.0,
        );
        let f = self.form;
        t.par_chunks_mut(n)
            .for_each(|r| tanh_affine_in_place(r, f.pre_shift, f.pre_scale, 1.0, 0.0));
        let y: Vec<f32> = t
            .par_iter()
            .map(|&v| f.post_scale * v + f.post_shift)
            .collect();
        *self.tanh.lock().map_err(|_| poisoned())? = t;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let t = self.tanh.lock().map_err(|_| poisoned())?;
        if t.len() != m * n {
            candle_core::bail!("noise head: backward without a recorded forward pass");
        }
        // dr = g · a·s·(1 − t²)
        let c = self.form.post_scale * self.form.pre_scale;
        let dr: Vec<f32> = with_host(grad, |g| {
            g.par_iter()
                .zip(t.par_iter())
                .map(|(&g, &t)| g * c * (1.0 - t * t))
                .collect()
        })?;
        drop(t);
        let mut db = vec![0f32; n];
        column_sums(&dr, &mut db);
        let (dw, dx) = with_hosts([x, w], |[xs, ws]| {
            let mut dw = zeroed(n * k);
            weight_grad(&dr, xs, (m, n, k), &mut dw);
            let dx = x
                .track_op()
                .then(|| par_sgemm_new(&dr, ws, (m, k, n), false));
            (dw, dx)
        })?;
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, (m, k), dev)).transpose()?,
            Some(Tensor::from_vec(dw, (n, k), dev)?),
            Some(Tensor::from_vec(db, n, dev)?),
        ))
    }
}

/// The inputs of [`combine_in_place`]: rows of `d` values, one flag per token, one keep flag
/// per value.
pub(super) struct Rows<'a> {
    pub x: &'a [f32],
    pub mean: &'a [f32],
    pub std: &'a [f32],
    pub transformed: &'a [u8],
    pub keep: Option<&'a [u8]>,
    pub fill: MaskedFill,
    pub d: usize,
}

/// `x̃` in place: `out` holds ε on entry and, per row, `(x + μ) + σ·ε` where the token is
/// transformed and the feature kept (the composed ops' order of operations), the fill (`μ`,
/// `σ·ε` or 0) where it is suppressed, and `x` where the token is not transformed. Training (this module's op) and the
/// client's path (`TransformerCloak::transform`) both run it.
pub(super) fn combine_in_place(out: &mut [f32], r: Rows) {
    let d = r.d;
    out.par_chunks_mut(d).enumerate().for_each(|(row, o)| {
        let span = row * d..(row + 1) * d;
        let xr = &r.x[span.clone()];
        if r.transformed[row] == 0 {
            o.copy_from_slice(xr);
            return;
        }
        let (mr, sr) = (&r.mean[span.clone()], &r.std[span.clone()]);
        let kr = r.keep.map(|k| &k[span]);
        for j in 0..d {
            o[j] = match kr {
                Some(k) if k[j] == 0 => match r.fill {
                    MaskedFill::Mean => mr[j],
                    MaskedFill::Noise => sr[j] * o[j],
                    MaskedFill::Zero => 0.0,
                },
                _ => (xr[j] + mr[j]) + sr[j] * o[j],
            };
        }
    });
}

/// `x̃ = x + μ + σ·ε` on transformed tokens (the fill where a feature is suppressed), `x`
/// elsewhere; the op's inputs are μ and σ (`x` carries no gradient in training).
pub(super) struct NoiseCombine {
    pub x: Arc<Vec<f32>>,
    pub eps: Arc<Vec<f32>>,
    /// Per token: 1 = transformed.
    pub transformed: Arc<Vec<u8>>,
    /// Per feature: 1 = kept, 0 = replaced by the fill (no suppression when `None`).
    pub keep: Option<Arc<Vec<u8>>>,
    pub fill: MaskedFill,
}

impl NoiseCombine {
    fn check(&self, mean: &Shape, std: &Shape) -> candle_core::Result<usize> {
        let n = mean.elem_count();
        let d = mean.dims().last().copied().unwrap_or(0);
        let keep_ok = self.keep.as_ref().is_none_or(|k| k.len() == n);
        if mean != std
            || self.x.len() != n
            || self.eps.len() != n
            || d == 0
            || self.transformed.len() * d != n
            || !keep_ok
        {
            candle_core::bail!(
                "noise combination: μ {:?}, σ {:?}, {} inputs, {} noise values and {} token \
                 flags do not fit",
                mean.dims(),
                std.dims(),
                self.x.len(),
                self.eps.len(),
                self.transformed.len()
            );
        }
        Ok(d)
    }
}

impl CustomOp2 for NoiseCombine {
    fn name(&self) -> &'static str {
        "sg-noise-combine"
    }

    fn cpu_fwd(
        &self,
        sm: &CpuStorage,
        lm: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.check(lm.shape(), ls.shape())?;
        let (mean, std) = (cpu_slice(sm, lm)?, cpu_slice(ss, ls)?);
        let mut out = self.eps.to_vec();
        combine_in_place(
            &mut out,
            Rows {
                x: &self.x,
                mean,
                std,
                transformed: &self.transformed,
                keep: self.keep.as_ref().map(|k| k.as_slice()),
                fill: self.fill,
                d,
            },
        );
        Ok((CpuStorage::F32(out), lm.shape().clone()))
    }

    fn bwd(
        &self,
        mean: &Tensor,
        std: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let d = self.check(mean.shape(), std.shape())?;
        let n = self.x.len();
        let (mut dm, mut ds) = (zeroed(n), zeroed(n));
        with_host(grad, |g| {
            dm.par_chunks_mut(d)
                .zip(ds.par_chunks_mut(d))
                .enumerate()
                .for_each(|(row, (dmr, dsr))| {
                    if self.transformed[row] == 0 {
                        return;
                    }
                    let r = row * d..(row + 1) * d;
                    let (gr, er) = (&g[r.clone()], &self.eps[r.clone()]);
                    let kr = self.keep.as_ref().map(|k| &k[r]);
                    for j in 0..d {
                        let (dm, ds) = if kr.is_none_or(|k| k[j] != 0) {
                            (gr[j], gr[j] * er[j])
                        } else {
                            match self.fill {
                                MaskedFill::Mean => (gr[j], 0.0),
                                MaskedFill::Noise => (0.0, gr[j] * er[j]),
                                MaskedFill::Zero => (0.0, 0.0),
                            }
                        };
                        dmr[j] = dm;
                        dsr[j] = ds;
                    }
                });
        })?;
        let (shape, dev) = (mean.shape(), mean.device());
        Ok((
            Some(Tensor::from_vec(dm, shape, dev)?),
            Some(Tensor::from_vec(ds, shape, dev)?),
        ))
    }
}
