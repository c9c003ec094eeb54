//! A small all-convolutional classifier: four 3×3 convolutions (two with stride 2 instead of
//! pooling, whose candle backward is wrong or missing) and two linear layers.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::frozen::{Conv, Dense};
use super::frozen_chain::{FrozenChain, Stage};

/// Output size of a 3×3, padding-1 convolution with `stride`.
pub(crate) fn conv_out(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

#[derive(Debug, Clone)]
pub struct SmallCnn {
    convs: Vec<Conv>,
    fc1: Dense,
    fc2: Dense,
    /// The whole network as one op when every layer is frozen (CPU).
    chain: Option<FrozenChain>,
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
        let fc1 = Dense::new(c2 * h * w, hidden, vb.pp("fc1"))?;
        let fc2 = Dense::new(hidden, classes, vb.pp("fc2"))?;
        let stages: Option<Vec<Stage>> = convs
            .iter()
            .map(|c| c.stage(true))
            .chain([fc1.stage(true), fc2.stage(false)])
            .collect();
        Ok(Self {
            convs,
            fc1,
            fc2,
            chain: stages.map(FrozenChain::new),
        })
    }
}

impl Module for SmallCnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(chain) = &self.chain {
            if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 4 {
                return x.contiguous()?.apply_op1(chain.op());
            }
        }
        let mut h = x.clone();
        for c in &self.convs {
            h = c.forward_relu(&h)?;
        }
        self.fc2
            .forward(&self.fc1.forward_relu(&h.flatten_from(1)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// The frozen network as one op equals the layer-by-layer trainable network in logits and
    /// in the gradient that reaches the input.
    #[test]
    fn frozen_chain_matches_the_layers() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let trainable = SmallCnn::new([1, 12, 12], (4, 6), 16, 5, vb).unwrap();
        assert!(trainable.chain.is_none());
        let vb = crate::vision::frozen_builder(&vm, &dev);
        let frozen = SmallCnn::new([1, 12, 12], (4, 6), 16, 5, vb).unwrap();
        assert!(frozen.chain.is_some());
        let x = Var::from_tensor(&Tensor::rand(0f32, 1.0, (3, 1, 12, 12), &dev).unwrap()).unwrap();
        let run = |m: &SmallCnn| {
            let y = m.forward(x.as_tensor()).unwrap();
            let g = y.sin().unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (flat(&y), flat(g.get(x.as_tensor()).unwrap()))
        };
        let ((y0, g0), (y1, g1)) = (run(&trainable), run(&frozen));
        let max = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        };
        assert!(max(&y0, &y1) < 1e-5, "logits");
        assert!(g0.iter().any(|v| *v != 0.0));
        assert!(max(&g0, &g1) < 1e-5, "input gradient");
    }
}
