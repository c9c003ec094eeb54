//! Information measures (`docs/spec.md` §5.3): Gaussian entropy, square Mahalanobis distance and a
//! Monte-Carlo estimate of the mutual information between `X` and `X̃`.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::{Error, NoiseRng, Result};

const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_7;
const HALF_LOG_2PI_E: f64 = 1.418_938_533_204_672_7;

/// Per-feature Gaussian entropy: `mean(log σ) + ½·log(2πe)` (nats).
pub fn gaussian_entropy(std: &Tensor) -> Result<Tensor> {
    Ok((std.to_dtype(DType::F32)?.log()?.mean_all()? + HALF_LOG_2PI_E)?)
}

/// `D²(x, y; σ) = Σ_j ((x_j − y_j)/σ_j)²` over all non-batch dimensions; returns `[B]`.
pub fn square_mahalanobis(x: &Tensor, y: &Tensor, std: &Tensor) -> Result<Tensor> {
    let z = (x - y)?.broadcast_div(std)?;
    Ok(z.sqr()?.flatten_from(1)?.sum(1)?)
}

fn rows(t: &Tensor, b: usize, d: usize, what: &str) -> Result<Vec<f64>> {
    let t = t.to_dtype(DType::F32)?;
    let t = if t.elem_count() == d {
        t.reshape((1, d))?.broadcast_as((b, d))?
    } else {
        t.reshape((b, d)).map_err(|_| Error::Shape {
            what: what.into(),
            expected: format!("[{b}, {d}] or [{d}] elements"),
            got: t.dims().to_vec(),
        })?
    };
    Ok(t.contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// Monte-Carlo mutual information `I(X; X̃) ≈ H(X̃) − H(X̃|X)` in nats, using the batch's own
/// Gaussians `N(x_k + μ_k, diag σ_k²)` as the mixture for `H(X̃)`. Bounded by `log K`, K the number
/// of mixture components (`components` picks a random sub-batch of that size).
pub fn mutual_information(
    x: &Tensor,
    transformed: &Tensor,
    mean: &Tensor,
    std: &Tensor,
    components: Option<usize>,
    rng: &mut NoiseRng,
) -> Result<f64> {
    let b = x.dim(0)?;
    if b == 0 || transformed.dims() != x.dims() {
        return Err(Error::Shape {
            what: "mutual_information inputs".into(),
            expected: format!("x and x̃ of equal non-empty shape {:?}", x.dims()),
            got: transformed.dims().to_vec(),
        });
    }
    let d = x.elem_count() / b;
    let xs = rows(x, b, d, "x")?;
    let xt = rows(transformed, b, d, "x̃")?;
    let mu = rows(mean, b, d, "mean")?;
    let sd = rows(std, b, d, "std")?;
    if sd.iter().any(|&s| s.is_nan() || s <= 0.0 || !s.is_finite()) {
        return Err(Error::hyper(
            "std",
            "≤ 0 or non-finite",
            "σ must be positive and finite",
        ));
    }
    let comps: Vec<usize> = match components {
        Some(k) if k < b => {
            let mut idx: Vec<usize> = (0..b).collect();
            for i in 0..k {
                let j = i + rng.index(b - i);
                idx.swap(i, j);
            }
            idx.truncate(k);
            idx
        }
        _ => (0..b).collect(),
    };
    let k = comps.len() as f64;
    // log-normaliser of component k: −Σ_j (log σ_kj + ½ log 2π)
    let log_norm: Vec<f64> = (0..b)
        .map(|r| {
            -sd[r * d..(r + 1) * d]
                .iter()
                .map(|s| s.ln() + HALF_LOG_2PI)
                .sum::<f64>()
        })
        .collect();
    // Each sample's own log-density minus its log-density under the mixture: H(X̃|X) and H(X̃)
    // on the same samples, so the per-sample χ² noise cancels (bounded by log K when the own
    // component is among the K).
    let log_density = |i: usize, c: usize| {
        let (xi, xc, mc, sc) = (
            &xt[i * d..(i + 1) * d],
            &xs[c * d..(c + 1) * d],
            &mu[c * d..(c + 1) * d],
            &sd[c * d..(c + 1) * d],
        );
        let mut q = 0.0;
        for j in 0..d {
            let z = (xi[j] - xc[j] - mc[j]) / sc[j];
            q += z * z;
        }
        log_norm[c] - 0.5 * q
    };
    let mi: f64 = (0..b)
        .into_par_iter()
        .map(|i| {
            let logs: Vec<f64> = comps.iter().map(|&c| log_density(i, c)).collect();
            let m = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logs.iter().map(|l| (l - m).exp()).sum::<f64>().ln();
            log_density(i, i) - (lse - k.ln())
        })
        .sum::<f64>()
        / b as f64;
    Ok(mi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sample(sigma: f32, seed: u64) -> (Tensor, Tensor, Tensor, Tensor) {
        let d = Device::Cpu;
        let mut r = NoiseRng::seeded(seed);
        let x = r.standard_normal((64, 8), &d).unwrap();
        let mean = Tensor::zeros(8, DType::F32, &d).unwrap();
        let std = (Tensor::ones(8, DType::F32, &d).unwrap() * sigma as f64).unwrap();
        let xt = (&x + (r.standard_normal((64, 8), &d).unwrap() * sigma as f64).unwrap()).unwrap();
        (x, xt, mean, std)
    }

    #[test]
    fn mi_is_log_b_for_tiny_sigma_and_zero_for_huge() {
        let (x, xt, m, s) = sample(1e-3, 1);
        let mi = mutual_information(&x, &xt, &m, &s, None, &mut NoiseRng::seeded(0)).unwrap();
        assert!((mi - (64f64).ln()).abs() < 0.05, "tiny σ: {mi}");
        let (x, xt, m, s) = sample(1e3, 2);
        let mi = mutual_information(&x, &xt, &m, &s, None, &mut NoiseRng::seeded(0)).unwrap();
        assert!(mi.abs() < 0.05, "huge σ: {mi}");
        let mi = mutual_information(&x, &xt, &m, &s, Some(16), &mut NoiseRng::seeded(0)).unwrap();
        assert!(mi.abs() < 0.1, "sub-batch: {mi}");
    }

    #[test]
    fn entropy_and_mahalanobis() {
        let d = Device::Cpu;
        let s = Tensor::new(&[1f32, 1.0], &d).unwrap();
        let h = gaussian_entropy(&s).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((h - HALF_LOG_2PI_E).abs() < 1e-6);
        let x = Tensor::new(&[[1f32, 2.0]], &d).unwrap();
        let y = Tensor::new(&[[0f32, 0.0]], &d).unwrap();
        let s = Tensor::new(&[1f32, 2.0], &d).unwrap();
        assert_eq!(
            square_mahalanobis(&x, &y, &s)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![2.0]
        );
    }
}
