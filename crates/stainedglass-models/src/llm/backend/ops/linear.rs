//! A linear layer with a frozen weight: row dot products for a few rows, BLAS for more, and
//! an input-gradient-only backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use stainedglass_core::host::{is_cpu_f32, with_host, with_hosts};

use super::slice;
use crate::llm::backend::{blas, gemv};

/// Up to this many rows, a linear layer runs as row-wise dot products (`gemv`).
pub const GEMV_MAX_ROWS: usize = 4;

/// `y = x·Wᵀ (+ b)` with a frozen `W: (out, in)`. When `x` carries a gradient the matmul is a
/// custom op whose backward returns only `dx = dy·W` (candle's matmul would also compute the
/// unused weight gradient).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Few-row product through `gemv::gemv_rows`, reading the weight in place.
    fn gemv(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        let n = self.out_features();
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; m * n];
        with_host(&self.weight, |w| gemv::gemv_rows(&xs, w, m, k, n, &mut out))?;
        Tensor::from_vec(out, (m, n), x.device())
    }

    /// `x: (…, in)` → `(…, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let din = *dims.last().unwrap_or(&0);
        let x2 = x.reshape(((), din))?;
        let rows = x2.dim(0)?;
        let y = if x.track_op() && is_cpu_f32(x) {
            x2.contiguous()?
                .apply_op1(FrozenMatmul(self.weight.clone()))?
        } else if rows <= GEMV_MAX_ROWS && is_cpu_f32(x) && is_cpu_f32(&self.weight) {
            self.gemv(&x2.contiguous()?)?
        } else if is_cpu_f32(x) && is_cpu_f32(&self.weight) && blas::available() {
            matmul_host(&x2.contiguous()?, &self.weight, true)?
        } else {
            x2.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().unwrap_or(&mut 0) = self.out_features();
        y.reshape(out)
    }
}

struct FrozenMatmul(Tensor);

/// `x (m×k) · wᵀ` for `w (n×k)` if `transposed`, else `x · w` for `w (k×n)`; BLAS when
/// available, candle otherwise.
fn matmul_host(x: &Tensor, w: &Tensor, transposed: bool) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = if transposed { w.dim(0)? } else { w.dim(1)? };
    let x = x.contiguous()?;
    let mut out = vec![0f32; m * n];
    let done = with_hosts([&x, w], |[xs, ws]| {
        blas::sgemm(xs, ws, &mut out, m, n, k, transposed)
    })?;
    if done {
        Tensor::from_vec(out, (m, n), x.device())
    } else if transposed {
        x.matmul(&w.t()?)
    } else {
        x.matmul(w)
    }
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "sg-frozen-matmul"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "linear")?;
        let (m, k) = l.shape().dims2()?;
        let n = self.0.dim(0)?;
        let mut out = vec![0f32; m * n];
        let done = with_host(&self.0, |w| blas::sgemm(x, w, &mut out, m, n, k, true))?;
        if done {
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let xt = Tensor::from_slice(x, (m, k), &candle_core::Device::Cpu)?;
        let y = xt.matmul(&self.0.t()?)?.flatten_all()?.to_vec1::<f32>()?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(matmul_host(&grad.contiguous()?, &self.0, false)?))
    }
}
