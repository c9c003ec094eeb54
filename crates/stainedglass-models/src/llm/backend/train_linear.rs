//! `y = x·Wᵀ` with a **trainable** `W: (out, in)` on the CPU (the TransformerCloak estimator's
//! layers and heads): forward and both gradients as products on the BLAS path
//! (`blas::par_sgemm`), the weight gradient split over rows of `W`, and the input gradient only
//! when the input carries one. candle's matmul runs the pure-Rust `gemm` crate, about half
//! OpenBLAS's speed on these shapes (15% of a text-SGT training step went there), and always
//! computes both gradients.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use stainedglass_core::host::{cpu_slice, is_cpu_f32, with_hosts, zeroed};

use super::blas::{self, par_sgemm_new, sgemm_strided};
use super::kernels::SendPtr;

/// `x: (…, in)` → `(…, out)` for a trainable `w: (out, in)`; gradients reach both.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !(is_cpu_f32(x) && is_cpu_f32(w) && blas::available()) {
        return x.broadcast_matmul(&w.t()?);
    }
    let dims = x.dims().to_vec();
    let din = *dims.last().unwrap_or(&0);
    let y = x
        .reshape(((), din))?
        .contiguous()?
        .apply_op2(&w.contiguous()?, TrainLinear)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out)
}

struct TrainLinear;

/// The weight gradient of `y = x·Wᵀ`: `dw (n×k) = gᵀ (n×m) · x (m×k)` for the output gradient
/// `g (m×n)`, written (not added); rows of `dw` split over the threads.
pub(crate) fn weight_grad(g: &[f32], x: &[f32], (m, n, k): (usize, usize, usize), dw: &mut [f32]) {
    assert!(
        g.len() >= m * n && x.len() >= m * k && dw.len() >= n * k,
        "weight gradient: short buffers"
    );
    let per = n.div_ceil(rayon::current_num_threads().max(1)).max(16);
    let out = SendPtr(dw.as_mut_ptr());
    (0..n.div_ceil(per)).into_par_iter().for_each(|i| {
        let (j0, rows) = (i * per, per.min(n - i * per));
        // SAFETY: g is m×n, x is m×k, dw is n×k (checked above); this task writes rows
        // j0..j0+rows.
        unsafe {
            sgemm_strided(
                true,
                false,
                rows,
                k,
                m,
                1.0,
                g.as_ptr().add(j0),
                n,
                x.as_ptr(),
                k,
                0.0,
                out.at(j0 * k),
                k,
            )
        };
    });
}

impl CustomOp2 for TrainLinear {
    fn name(&self) -> &'static str {
        "sg-train-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = lx.shape().dims2()?;
        let (n, kw) = lw.shape().dims2()?;
        if k != kw {
            candle_core::bail!("linear: input has {k} features, the weight expects {kw}");
        }
        let y = par_sgemm_new(cpu_slice(sx, lx)?, cpu_slice(sw, lw)?, (m, n, k), true);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (m, k) = x.dims2()?;
        let n = w.dim(0)?;
        let g = grad.contiguous()?;
        let dx = if x.track_op() {
            let dx = with_hosts([&g, w], |[gs, ws]| par_sgemm_new(gs, ws, (m, k, n), false))?;
            Some(Tensor::from_vec(dx, (m, k), x.device())?)
        } else {
            None
        };
        let mut dw = zeroed(n * k);
        with_hosts([&g, x], |[gs, xs]| weight_grad(gs, xs, (m, n, k), &mut dw))?;
        Ok((dx, Some(Tensor::from_vec(dw, (n, k), w.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32) / 500.0 - 1.0)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    #[test]
    fn matches_candle_matmul_in_value_and_both_gradients() {
        let x = Var::from_tensor(&rand(&[2, 37, 24], 1)).expect("x");
        let w = Var::from_tensor(&rand(&[40, 24], 2)).expect("w");
        let r = rand(&[2, 37, 40], 3);
        let ours = linear(x.as_tensor(), w.as_tensor()).expect("ours");
        let theirs = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().expect("t"))
            .expect("candle");
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
                .expect("diff")
        };
        assert!(diff(&ours, &theirs) < 1e-4);
        let g1 = (ours * &r)
            .and_then(|l| l.sum_all()?.backward())
            .expect("bwd");
        let g2 = (theirs * &r)
            .and_then(|l| l.sum_all()?.backward())
            .expect("bwd");
        for v in [&x, &w] {
            let (a, b) = (g1.get(v).expect("ours"), g2.get(v).expect("candle"));
            assert!(diff(a, b) < 1e-3, "gradient differs by {}", diff(a, b));
        }
        // An input without a gradient gets none computed; the weight still does.
        let y = linear(&x.as_tensor().detach(), w.as_tensor()).expect("y");
        let g = y.sum_all().and_then(|l| l.backward()).expect("bwd");
        assert!(g.get(&w).is_some());
    }
}
