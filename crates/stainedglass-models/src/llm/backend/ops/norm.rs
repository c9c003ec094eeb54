//! RMSNorm with a frozen weight, and its input-gradient op.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use stainedglass_core::host::is_cpu_f32;

use super::{reference, slice};
use crate::llm::backend::kernels;

/// `y = x / sqrt(mean(x²) + eps) · w` over the last dimension; `w` is frozen.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    host: Arc<Vec<f32>>,
    eps: f32,
}

impl RmsNorm {
    pub fn new(weight: Tensor, eps: f64) -> Result<Self> {
        let host = Arc::new(
            weight
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        Ok(Self {
            weight,
            host,
            eps: eps as f32,
        })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The weight as host values.
    pub fn host(&self) -> &[f32] {
        &self.host
    }

    pub fn eps(&self) -> f32 {
        self.eps
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if is_cpu_f32(x) {
            x.contiguous()?.apply_op1(self.clone())
        } else {
            reference::rms_norm(x, &self.weight, self.eps as f64)
        }
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "sg-rms-norm"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "rms_norm")?;
        let mut y = vec![0f32; x.len()];
        kernels::rms_norm(x, &self.host, self.eps, &mut y);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&g, &RmsNormBwd(self.clone()))?))
    }
}

struct RmsNormBwd(RmsNorm);

impl CustomOp2 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "sg-rms-norm-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "rms_norm_bwd")?;
        let g = slice(s2, l2, "rms_norm_bwd")?;
        let mut dx = vec![0f32; x.len()];
        kernels::rms_norm_bwd(x, g, &self.0.host, self.0.eps, &mut dx, false);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}
