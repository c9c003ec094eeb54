//! Batch normalisation over `[B, C, H, W]`. Training mode uses batch statistics and updates the
//! running ones; eval mode is a per-channel affine map. Written here (rather than candle-nn's) so
//! that a frozen model holds plain tensors only, with no variables for running statistics.

use candle_core::{DType, Module, Tensor, Var, D};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm2d {
    pub fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(c, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(c, "bias", Init::Const(0.0))?,
            running_mean: vb.get_with_hints(c, "running_mean", Init::Const(0.0))?,
            running_var: vb.get_with_hints(c, "running_var", Init::Const(1.0))?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    fn channel(t: &Tensor) -> candle_core::Result<Tensor> {
        t.reshape((1, t.elem_count(), 1, 1))
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        if !train {
            return self.forward(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let n = (b * h * w) as f64;
        let xt = x.transpose(0, 1)?.reshape((c, b * h * w))?;
        let mean = xt.mean(D::Minus1)?;
        let centered = xt.broadcast_sub(&mean.unsqueeze(1)?)?;
        let var = centered.sqr()?.mean(D::Minus1)?;
        // Running statistics: unbiased variance, updated without gradient.
        if self.running_mean.is_variable() {
            let m = Var::from_tensor(&self.running_mean)?;
            let v = Var::from_tensor(&self.running_var)?;
            let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
            m.set(&((m.as_tensor() * (1.0 - self.momentum))? + (mean.detach() * self.momentum)?)?)?;
            v.set(&((v.as_tensor() * (1.0 - self.momentum))? + (unbiased * self.momentum)?)?)?;
        }
        let inv = (var + self.eps)?.sqrt()?.recip()?;
        let scale = (inv * &self.weight)?;
        let y = centered
            .broadcast_mul(&scale.unsqueeze(1)?)?
            .broadcast_add(&self.bias.unsqueeze(1)?)?;
        y.reshape((c, b, h, w))?.transpose(0, 1)
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let scale = ((&self.running_var + self.eps)?.sqrt()?.recip()? * &self.weight)?;
        let shift = (&self.bias - (&self.running_mean * &scale)?)?;
        x.broadcast_mul(&Self::channel(&scale.to_dtype(DType::F32)?)?)?
            .broadcast_add(&Self::channel(&shift)?)
    }
}
