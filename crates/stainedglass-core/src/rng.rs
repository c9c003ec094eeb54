//! The RNG policy: noise comes from a cryptographically secure generator (ChaCha20) seeded from
//! OS entropy, unless the caller gives an explicit seed for reproducibility. Each call draws
//! fresh values, so noise is never reused across calls.

use crate::host::zeroed;
use candle_core::{Device, Shape, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

/// Samples per independent stream of [`NoiseRng::fill_standard_normal`].
const NORMAL_BLOCK: usize = 16 * 1024;

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

    /// Fills `out` with standard normal samples, in parallel for large requests: `out` is cut
    /// into fixed blocks of 16 Ki samples, each drawn from its own ChaCha20 stream keyed with
    /// 256 fresh bits of this generator and sampled with [`crate::ziggurat`]. The values depend
    /// on the seed alone, not on the number of threads, and each stream is as unpredictable as
    /// this one. (A different sequence from [`Self::standard_normal`] for the same seed.)
    pub fn fill_standard_normal(&mut self, out: &mut [f32]) {
        self.fill_standard_normal_then(out, |_, _| {});
    }

    /// [`Self::fill_standard_normal`], then `post(offset, block)` on each block right after it
    /// is sampled, while it is still in cache (`offset` = the block's start in `out`).
    pub fn fill_standard_normal_then(
        &mut self,
        out: &mut [f32],
        post: impl Fn(usize, &mut [f32]) + Sync,
    ) {
        if out.len() <= NORMAL_BLOCK {
            crate::ziggurat::fill_standard_normal(&mut self.inner, out);
            post(0, out);
            return;
        }
        let keys: Vec<[u8; 32]> = (0..out.len().div_ceil(NORMAL_BLOCK))
            .map(|_| {
                let mut k = [0u8; 32];
                self.inner.fill_bytes(&mut k);
                k
            })
            .collect();
        out.par_chunks_mut(NORMAL_BLOCK)
            .zip(keys)
            .enumerate()
            .for_each(|(b, (block, key))| {
                crate::ziggurat::fill_standard_normal(&mut ChaCha20Rng::from_seed(key), block);
                post(b * NORMAL_BLOCK, block);
            });
    }

    /// Standard normal samples of `shape` drawn with [`Self::fill_standard_normal`].
    pub fn standard_normal_parallel(
        &mut self,
        shape: impl Into<Shape>,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let shape = shape.into();
        let mut v = zeroed(shape.elem_count());
        self.fill_standard_normal(&mut v);
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

    /// The parallel sampler: seeded streams agree whatever the thread count, blocks differ from
    /// each other, and the samples are standard normal (mean, variance, tail mass).
    #[test]
    fn parallel_normals_are_reproducible_distinct_and_standard() {
        let n = 5 * NORMAL_BLOCK + 123;
        let draw = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut v = vec![0f32; n];
            pool.install(|| NoiseRng::seeded(3).fill_standard_normal(&mut v));
            v
        };
        let (a, b) = (draw(1), draw(3));
        assert_eq!(a, b);
        assert_ne!(a[..64], a[NORMAL_BLOCK..NORMAL_BLOCK + 64]);
        let mut c = vec![0f32; n];
        NoiseRng::from_entropy().fill_standard_normal(&mut c);
        assert_ne!(a, c);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let tail = a.iter().filter(|x| x.abs() > 1.96).count() as f64 / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        assert!((tail - 0.05).abs() < 0.005, "P(|z| > 1.96) = {tail}");
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
