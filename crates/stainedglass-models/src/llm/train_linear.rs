//! `y = x · Wᵀ` with a **trainable** weight on the CPU, through the system BLAS: forward, the
//! input gradient (only when the input tracks one) and the weight gradient `dyᵀ · x`. candle's
//! own matmul runs on the `gemm` crate (about half OpenBLAS's speed on these shapes) and always
//! computes both gradients. Used by the TransformerCloak estimator, whose weights train.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::blas;

fn host<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("trainable linear: inputs must be contiguous"),
    }
}

fn to_host(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

struct TrainableMatmul;

impl CustomOp2 for TrainableMatmul {
    fn name(&self) -> &'static str {
        "sg-trainable-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("trainable linear: input has {k} features, weight expects {k2}");
        }
        let mut out = vec![0f32; m * n];
        if !blas::sgemm(host(s1, l1)?, host(s2, l2)?, &mut out, m, n, k, true) {
            candle_core::bail!("trainable linear: no BLAS loaded");
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
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
        let dy = to_host(grad)?;
        let dx = if x.track_op() {
            let mut dx = vec![0f32; m * k];
            blas::sgemm(&dy, &to_host(w)?, &mut dx, m, k, n, false);
            Some(Tensor::from_vec(dx, (m, k), x.device())?)
        } else {
            None
        };
        // dW (n×k) = dyᵀ (n×m) · x (m×k), rows of dW split over threads.
        let xs = to_host(x)?;
        let mut dw = vec![0f32; n * k];
        let per = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
        dw.par_chunks_mut(per * k)
            .enumerate()
            .for_each(|(i, rows)| {
                let r0 = i * per;
                let nr = rows.len() / k;
                // SAFETY: dyᵀ rows r0..r0+nr are columns of dy (m×n, leading dimension n); xs is
                // m×k; `rows` is nr×k and written by this task only.
                unsafe {
                    blas::sgemm_strided(
                        true,
                        false,
                        nr,
                        k,
                        m,
                        1.0,
                        dy.as_ptr().add(r0),
                        n,
                        xs.as_ptr(),
                        k,
                        0.0,
                        rows.as_mut_ptr(),
                        k,
                    )
                };
            });
        Ok((dx, Some(Tensor::from_vec(dw, (n, k), w.device())?)))
    }
}

/// `x (…, k) · wᵀ` for a trainable `w (n, k)`: the BLAS op on CPU f32 tensors when a system BLAS
/// is loaded, candle's matmul otherwise.
pub fn trainable_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let host_ok = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !(host_ok(x) && host_ok(w) && w.rank() == 2 && blas::available()) {
        return x.broadcast_matmul(&w.t()?);
    }
    let dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let y = x
        .reshape(((), k))?
        .contiguous()?
        .apply_op2(&w.contiguous()?, TrainableMatmul)?;
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Value and both gradients equal candle's matmul (the BLAS path when one is loaded).
    #[test]
    fn matches_candle_matmul() {
        let d = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 7), &d).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &d).unwrap()).unwrap();
        let run = |y: Tensor| {
            let g = y.sin().unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (
                flat(&y),
                flat(g.get(x.as_tensor()).unwrap()),
                flat(g.get(w.as_tensor()).unwrap()),
            )
        };
        let a = run(trainable_linear(x.as_tensor(), w.as_tensor()).unwrap());
        let b = run(x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap());
        let max = |p: &[f32], q: &[f32]| {
            p.iter()
                .zip(q)
                .map(|(u, v)| (u - v).abs())
                .fold(0f32, f32::max)
        };
        assert!(max(&a.0, &b.0) < 1e-4 && max(&a.1, &b.1) < 1e-4 && max(&a.2, &b.2) < 1e-4);
    }
}
