//! Learned reconstruction attack: the attacker holds the public noise-layer artefact, transforms
//! its own (training) images, and trains a small convolutional decoder `x̃ → x` with an MSE loss.
//! Its PSNR on held-out test images measures how much of the image the SGT still gives away.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::{NoiseLayer, NoiseRng};
use stainedglass_models::vision::Conv;
use stainedglass_models::ImageDataset;

use crate::image_metrics::psnr;
use crate::Result;

/// Attack budget.
#[derive(Debug, Clone)]
pub struct ReconstructionConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub channels: usize,
    pub seed: u64,
}

impl Default for ReconstructionConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch_size: 64,
            lr: 2e-3,
            channels: 32,
            seed: 0,
        }
    }
}

/// A trained decoder.
pub struct ReconstructionAttack {
    convs: Vec<Conv>,
}

impl ReconstructionAttack {
    fn new(c: usize, hidden: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        // 5×5, padding 2, with bias: the same weights and initialisation as candle-nn's conv2d,
        // on the host convolution kernels (a training step about 5× faster than on candle's).
        let conv = |cin, cout, name| Conv::new(cin, cout, 5, 1, 2, true, vb.pp(name));
        Ok(Self {
            convs: vec![
                conv(c, hidden, "c1")?,
                conv(hidden, hidden, "c2")?,
                conv(hidden, hidden, "c3")?,
                conv(hidden, c, "c4")?,
            ],
        })
    }

    /// Reconstructs `x` from `x̃`; output in (0, 1).
    pub fn reconstruct(&self, xt: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = xt.clone();
        let last = self.convs.len() - 1;
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward(&h)?;
            h = if i < last {
                h.relu()?
            } else {
                candle_nn::ops::sigmoid(&h)?
            };
        }
        Ok(h)
    }

    /// Trains the decoder on `train` images transformed by `layer` (fresh noise every batch).
    pub fn train(
        layer: &impl NoiseLayer,
        train: &ImageDataset,
        cfg: &ReconstructionConfig,
        device: &Device,
    ) -> Result<Self> {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, device);
        let attack = Self::new(train.shape[0], cfg.channels, vb)?;
        let mut opt = AdamW::new(vm.all_vars(), AdamWConfig::noise(cfg.lr))?;
        let mut rng = NoiseRng::seeded(cfg.seed);
        for _ in 0..cfg.steps {
            let idx: Vec<usize> = (0..cfg.batch_size)
                .map(|_| rng.index(train.len()))
                .collect();
            let (x, _) = train.batch(&idx, device)?;
            let xt = layer.transform(&x, None, &mut rng)?;
            let loss = (attack.reconstruct(&xt)? - &x)?.sqr()?.mean_all()?;
            opt.step(&loss.backward()?)?;
        }
        Ok(attack)
    }

    /// Mean PSNR (dB) of reconstructions of `layer`-transformed `test` images.
    pub fn evaluate(
        &self,
        layer: &impl NoiseLayer,
        test: &ImageDataset,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> Result<f64> {
        let idx: Vec<usize> = (0..test.len()).collect();
        let n = test.image_size();
        let mut total = 0.0;
        for chunk in idx.chunks(256) {
            let (x, _) = test.batch(chunk, device)?;
            let xt = layer.transform(&x, None, rng)?;
            let r = self.reconstruct(&xt)?.flatten_all()?.to_vec1::<f32>()?;
            let xv = x.flatten_all()?.to_vec1::<f32>()?;
            for k in 0..chunk.len() {
                total += psnr(&xv[k * n..(k + 1) * n], &r[k * n..(k + 1) * n]);
            }
        }
        Ok(total / test.len().max(1) as f64)
    }
}
