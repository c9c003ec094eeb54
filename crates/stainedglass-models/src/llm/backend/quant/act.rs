//! Activations quantized for the integer dot products: every row cut into blocks of 32, each
//! block stored as 32 signed bytes with one f32 scale (`d = max|x| / 127`) and the block's sum
//! `d·Σq` (what the Q4_0 offset and the Q4_1 minimum multiply). This is llama.cpp's Q8_1
//! activation format with f32 scales.

/// Values per block.
pub(crate) const QK: usize = 32;

/// Rounds to the nearest integer, ties to even, for |v| < 2²²: adding and subtracting 1.5·2²³
/// leaves no fraction bits. It vectorizes where `f32::round` is a libm call per value on a
/// baseline x86-64 build (llama.cpp's SIMD quantization rounds ties to even too).
#[inline(always)]
fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// `m` rows of `k` activations, quantized.
pub(crate) struct ActQ8 {
    /// Blocks per row.
    pub nb: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    /// `d · Σ q` per block.
    pub s: Vec<f32>,
}

impl ActQ8 {
    /// Quantizes `x` (`m` rows of `k`, `k` a multiple of 32).
    pub fn new(x: &[f32], k: usize) -> Self {
        debug_assert_eq!(k % QK, 0);
        let nb = k / QK;
        let blocks = x.len() / QK;
        let mut qs = vec![0i8; x.len()];
        let mut d = vec![0f32; blocks];
        let mut s = vec![0f32; blocks];
        for (bi, (xb, qb)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            if xb.iter().any(|v| !v.is_finite()) {
                // NaN or Inf: the block's products are NaN, as the f32 path's would be.
                d[bi] = f32::NAN;
                s[bi] = f32::NAN;
                continue;
            }
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qb.iter_mut().zip(xb) {
                let r = round_even(v * inv).clamp(-127.0, 127.0) as i8;
                sum += i32::from(r);
                *q = r;
            }
            d[bi] = scale;
            s[bi] = scale * sum as f32;
        }
        Self { nb, qs, d, s }
    }

    /// Row `r`'s quantized values, scales and sums.
    pub fn row(&self, r: usize) -> (&[i8], &[f32], &[f32]) {
        let nb = self.nb;
        (
            &self.qs[r * nb * QK..(r + 1) * nb * QK],
            &self.d[r * nb..(r + 1) * nb],
            &self.s[r * nb..(r + 1) * nb],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_within_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 37) % 23) as f32 * 0.13 - 1.4)
            .collect();
        let a = ActQ8::new(&x, 96);
        for (i, v) in x.iter().enumerate() {
            let back = f32::from(a.qs[i]) * a.d[i / QK];
            assert!(
                (back - v).abs() <= a.d[i / QK] * 0.5 + 1e-6,
                "{i}: {back} vs {v}"
            );
        }
        let sum: f32 = a.qs[..QK].iter().map(|&q| f32::from(q)).sum::<f32>() * a.d[0];
        assert!((a.s[0] - sum).abs() < 1e-4);
        let z = ActQ8::new(&[0.0; 32], 32);
        assert_eq!((z.d[0], z.s[0]), (0.0, 0.0));
    }
}
