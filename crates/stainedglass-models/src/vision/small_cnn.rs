//! A small all-convolutional classifier: four 3×3 convolutions (two with stride 2 instead of
//! pooling, whose candle backward is wrong or missing) and two linear layers.

use candle_core::{Module, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Conv2dConfig, Linear, VarBuilder};

/// Output size of a 3×3, padding-1 convolution with `stride`.
pub(crate) fn conv_out(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

#[derive(Debug, Clone)]
pub struct SmallCnn {
    convs: Vec<Conv2d>,
    fc1: Linear,
    fc2: Linear,
}

impl SmallCnn {
    pub fn new(
        in_shape: [usize; 3],
        channels: (usize, usize),
        hidden: usize,
        classes: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let cfg = |stride| Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        };
        let (c1, c2) = channels;
        let convs = vec![
            conv2d(in_shape[0], c1, 3, cfg(1), vb.pp("conv1"))?,
            conv2d(c1, c1, 3, cfg(2), vb.pp("conv2"))?,
            conv2d(c1, c2, 3, cfg(1), vb.pp("conv3"))?,
            conv2d(c2, c2, 3, cfg(2), vb.pp("conv4"))?,
        ];
        let h = conv_out(conv_out(in_shape[1], 2), 2);
        let w = conv_out(conv_out(in_shape[2], 2), 2);
        Ok(Self {
            convs,
            fc1: linear(c2 * h * w, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, classes, vb.pp("fc2"))?,
        })
    }
}

impl Module for SmallCnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward(&h)?.relu()?;
        }
        self.fc2
            .forward(&self.fc1.forward(&h.flatten_from(1)?)?.relu()?)
    }
}
