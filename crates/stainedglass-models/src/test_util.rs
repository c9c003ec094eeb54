//! Helpers shared by the LM's unit tests.

use candle_core::{Device, Tensor};
use rand::Rng;

/// A CPU tensor of `shape` with values uniform in `(-scale, scale)`.
pub fn rand(shape: &[usize], r: &mut rand_chacha::ChaCha8Rng, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}
