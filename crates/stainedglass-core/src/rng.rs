//! The RNG policy: noise comes from a cryptographically secure generator (ChaCha20) seeded from
//! OS entropy, unless the caller gives an explicit seed for reproducibility. Each call draws
//! fresh values, so noise is never reused across calls.

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Source of the SGT's Gaussian noise.
pub struct NoiseRng {
    inner: ChaCha20Rng,
    seeded: bool,
}

impl NoiseRng {
    /// A CSPRNG seeded from the operating system's entropy source (the default).
    pub fn from_entropy() -> Self {
        Self {
            inner: ChaCha20Rng::from_os_rng(),
            seeded: false,
        }
    }

    /// A reproducible ChaCha20 stream; use only when reproducibility is wanted.
    pub fn seeded(seed: u64) -> Self {
        Self {
            inner: ChaCha20Rng::seed_from_u64(seed),
            seeded: true,
        }
    }

    /// `Some(seed)` → seeded, `None` → OS entropy.
    pub fn new(seed: Option<u64>) -> Self {
        seed.map_or_else(Self::from_entropy, Self::seeded)
    }

    /// Whether this stream was created from an explicit seed.
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    /// Standard normal samples of `shape` as an f32 tensor on `device`.
    pub fn standard_normal(
        &mut self,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let n = shape.elem_count();
        let v: Vec<f32> = (0..n).map(|_| self.inner.sample(StandardNormal)).collect();
        Tensor::from_vec(v, shape, device)
    }

    /// Uniform sample in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.inner.random::<f64>()
    }

    /// Uniform index in `0..n` (n > 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.inner.random_range(0..n)
    }

    /// Access to the underlying generator (for shuffling and similar).
    pub fn rng(&mut self) -> &mut ChaCha20Rng {
        &mut self.inner
    }
}

impl Default for NoiseRng {
    fn default() -> Self {
        Self::from_entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseeded_streams_differ_and_seeded_agree() {
        let d = Device::Cpu;
        let a = NoiseRng::from_entropy()
            .standard_normal(16, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = NoiseRng::from_entropy()
            .standard_normal(16, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(a, b);
        let c = NoiseRng::seeded(7)
            .standard_normal(16, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let e = NoiseRng::seeded(7)
            .standard_normal(16, &d)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(c, e);
    }

    #[test]
    fn consecutive_draws_differ() {
        let mut r = NoiseRng::seeded(1);
        let a = r
            .standard_normal(8, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = r
            .standard_normal(8, &Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_ne!(a, b);
    }
}
