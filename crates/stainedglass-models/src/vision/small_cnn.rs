//! A small all-convolutional classifier: four 3×3 convolutions (two with stride 2 instead of
//! pooling, whose candle backward is wrong or missing) and two linear layers.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::frozen::{Conv, Dense};

/// Output size of a 3×3, padding-1 convolution with `stride`.
pub(crate) fn conv_out(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

#[derive(Debug, Clone)]
pub struct SmallCnn {
    convs: Vec<Conv>,
    fc1: Dense,
    fc2: Dense,
}

impl SmallCnn {
    pub fn new(
        in_shape: [usize; 3],
        channels: (usize, usize),
        hidden: usize,
        classes: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let (c1, c2) = channels;
        let convs = vec![
            Conv::new(in_shape[0], c1, 3, 1, 1, true, vb.pp("conv1"))?,
            Conv::new(c1, c1, 3, 2, 1, true, vb.pp("conv2"))?,
            Conv::new(c1, c2, 3, 1, 1, true, vb.pp("conv3"))?,
            Conv::new(c2, c2, 3, 2, 1, true, vb.pp("conv4"))?,
        ];
        let h = conv_out(conv_out(in_shape[1], 2), 2);
        let w = conv_out(conv_out(in_shape[2], 2), 2);
        Ok(Self {
            convs,
            fc1: Dense::new(c2 * h * w, hidden, vb.pp("fc1"))?,
            fc2: Dense::new(hidden, classes, vb.pp("fc2"))?,
        })
    }
}

impl Module for SmallCnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward_relu(&h)?;
        }
        self.fc2
            .forward(&self.fc1.forward_relu(&h.flatten_from(1)?)?)
    }
}
