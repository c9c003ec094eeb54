//! What the frozen layers (`frozen.rs`) hand the fused chain (`frozen_chain.rs`): host copies
//! of the weights and the convolution's hyper-parameters.

use super::conv_cpu::ConvGeometry;

pub(super) fn op_error(msg: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(msg.into())
}

/// Host copy of a frozen layer's weight and bias.
#[derive(Debug)]
pub(super) struct HostWeights {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

/// Hyper-parameters of a convolution, and the geometry they give an input.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvShape {
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    pub(super) fn geometry(&self, dims: &[usize]) -> candle_core::Result<(usize, ConvGeometry)> {
        let &[b, c, h, w] = dims else {
            return Err(op_error(format!(
                "conv2d input must be (batch, channels, height, width), got {dims:?}"
            )));
        };
        if c != self.cin {
            return Err(op_error(format!(
                "conv2d expects {} input channels, got {c}",
                self.cin
            )));
        }
        let g = ConvGeometry::new((c, h, w), self.cout, self.k, self.stride, self.padding)
            .ok_or_else(|| {
                op_error(format!(
                    "conv2d kernel {k}×{k} (padding {p}) does not fit a {h}×{w} input",
                    k = self.k,
                    p = self.padding
                ))
            })?;
        Ok((b, g))
    }
}
