//! SwiGLU `silu(g)·u` on the fused `[gate | up]` projection, and its backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use stainedglass_core::host::is_cpu_f32;

use super::{reference, slice};
use crate::llm::backend::kernels;

/// `silu(gate) · up` where `x = [gate | up]` on the last dimension (`2·ffn` → `ffn`).
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl SwiGlu {
    pub fn forward(x: &Tensor) -> Result<Tensor> {
        if is_cpu_f32(x) {
            x.contiguous()?.apply_op1(SwiGlu)
        } else {
            reference::swiglu(x)
        }
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "sg-swiglu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "swiglu")?;
        let dims = l.shape().dims();
        let two_f = dims[dims.len() - 1];
        let f = two_f / 2;
        let mut y = vec![0f32; x.len() / 2];
        kernels::swiglu(x, f, &mut y);
        let mut out = dims.to_vec();
        *out.last_mut().expect("rank ≥ 1") = f;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &SwiGluBwd)?))
    }
}

struct SwiGluBwd;

impl CustomOp2 for SwiGluBwd {
    fn name(&self) -> &'static str {
        "sg-swiglu-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "swiglu_bwd")?;
        let g = slice(s2, l2, "swiglu_bwd")?;
        let dims = l1.shape().dims();
        let two_f = dims[dims.len() - 1];
        let f = two_f / 2;
        let mut dx = vec![0f32; x.len()];
        kernels::swiglu_bwd(x, g, f, &mut dx);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
