//! `NoisyModel` (`docs/spec.md` §4): a frozen base model composed with a noise layer at its input. The mode
//! is explicit — the same base model runs clean or transformed — and there are no global hooks.

use candle_core::Tensor;

use crate::noise_layer::{NoiseLayer, NoiseOutput};
use crate::{NoiseRng, Result};

/// A frozen model taking a batch of inputs (images) and returning outputs (logits).
/// Implementations hold plain tensors, never optimizer variables, so no weight gradients exist.
pub trait BaseModel {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

impl<B: BaseModel + ?Sized> BaseModel for &B {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        (**self).forward(x)
    }
}

/// Whether the noise layer is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Clean,
    Transformed,
}

/// What a [`NoisyModel`] returns: the base output and, when transformed, the noise statistics.
#[derive(Debug, Clone)]
pub struct NoisyModelOutput {
    pub base_model_output: Tensor,
    pub noise: Option<NoiseOutput>,
}

/// Base model `B` with noise layer `N` at its input.
pub struct NoisyModel<B, N> {
    pub base: B,
    pub noise_layer: N,
}

impl<B: BaseModel, N: NoiseLayer> NoisyModel<B, N> {
    pub fn new(base: B, noise_layer: N) -> Self {
        Self { base, noise_layer }
    }

    /// Runs the base model on `x` (clean) or on `x̃` (transformed).
    pub fn forward(
        &self,
        x: &Tensor,
        mode: Mode,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoisyModelOutput> {
        match mode {
            Mode::Clean => Ok(NoisyModelOutput {
                base_model_output: self.base.forward(x)?,
                noise: None,
            }),
            Mode::Transformed => {
                let noise = self.noise_layer.forward(x, noise_mask, rng)?;
                Ok(NoisyModelOutput {
                    base_model_output: self.base.forward(&noise.transformed)?,
                    noise: Some(noise),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloakNoiseLayer, NoiseLayer};
    use candle_core::{DType, Device};

    struct Linear(Tensor);
    impl BaseModel for Linear {
        fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            x.flatten_from(1)?.matmul(&self.0)
        }
    }

    #[test]
    fn gradients_reach_noise_not_base() {
        let d = Device::Cpu;
        let w = Tensor::ones((4, 2), DType::F32, &d).unwrap();
        let m = NoisyModel::new(
            Linear(w.clone()),
            CloakNoiseLayer::one_shot(&[1, 2, 2], None, &d).unwrap(),
        );
        let x = Tensor::ones((3, 1, 2, 2), DType::F32, &d).unwrap();
        let out = m
            .forward(&x, Mode::Transformed, None, &mut NoiseRng::seeded(0))
            .unwrap();
        let g = out
            .base_model_output
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(m.noise_layer.locs().as_tensor()).is_some());
        assert!(g.get(m.noise_layer.rhos().as_tensor()).is_some());
        // The base holds plain tensors, never variables: no optimizer can update it.
        assert!(!w.is_variable());
        assert!(m
            .noise_layer
            .parameters()
            .iter()
            .all(|v| v.as_tensor().id() != w.id()));
        let clean = m
            .forward(&x, Mode::Clean, None, &mut NoiseRng::seeded(0))
            .unwrap();
        assert!(clean.noise.is_none());
        assert_eq!(
            clean.base_model_output.to_vec2::<f32>().unwrap(),
            vec![vec![4.0, 4.0]; 3]
        );
    }
}
