//! ResNet-18-style classifier for small images: 3×3 stem (no max-pool, whose candle backward is
//! unreliable), four stages of two basic blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2),
//! global average pooling and a linear head. Batch-norm everywhere, as in ResNet-18.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use super::batch_norm::BatchNorm2d;
use super::frozen::{Conv, Dense};

fn conv3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Conv> {
    Conv::new(cin, cout, 3, stride, 1, false, vb)
}

#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    shortcut: Option<(Conv, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some((
                Conv::new(cin, cout, 1, stride, 0, false, vb.pp("downsample.0"))?,
                BatchNorm2d::new(cout, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv3(cin, cout, stride, vb.pp("conv1"))?,
            bn1: BatchNorm2d::new(cout, vb.pp("bn1"))?,
            conv2: conv3(cout, cout, 1, vb.pp("conv2"))?,
            bn2: BatchNorm2d::new(cout, vb.pp("bn2"))?,
            shortcut,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.bn1.forward_t(&self.conv1.forward(x)?, train)?.relu()?;
        let h = self.bn2.forward_t(&self.conv2.forward(&h)?, train)?;
        let s = match &self.shortcut {
            Some((c, bn)) => bn.forward_t(&c.forward(x)?, train)?,
            None => x.clone(),
        };
        (h + s)?.relu()
    }
}

#[derive(Debug, Clone)]
pub struct ResNet18 {
    stem: Conv,
    stem_bn: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    fc: Dense,
}

impl ResNet18 {
    pub fn new(
        in_channels: usize,
        width: usize,
        classes: usize,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let mut blocks = Vec::new();
        let mut cin = width;
        for (stage, mult) in [1usize, 2, 4, 8].into_iter().enumerate() {
            let cout = width * mult;
            for b in 0..2 {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("layer{}.{b}", stage + 1)),
                )?);
                cin = cout;
            }
        }
        Ok(Self {
            stem: conv3(in_channels, width, 1, vb.pp("conv1"))?,
            stem_bn: BatchNorm2d::new(width, vb.pp("bn1"))?,
            blocks,
            fc: Dense::new(cin, classes, vb.pp("fc"))?,
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = self
            .stem_bn
            .forward_t(&self.stem.forward(x)?, train)?
            .relu()?;
        for b in &self.blocks {
            h = b.forward_t(&h, train)?;
        }
        self.fc.forward(&h.mean((2, 3))?)
    }
}
