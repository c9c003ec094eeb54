//! `y = x·Wᵀ` for a few rows of `x` (decoding, short prefills): every output is a dot product
//! of two contiguous rows, parallel over blocks of `W` rows. The `gemm` crate's general kernel
//! reads the transposed weight with strides and is several times slower for these shapes.
//! AVX2+FMA is used when the CPU has it (checked at run time), otherwise a portable loop.

use rayon::prelude::*;

/// Rows of `W` per parallel task.
const BLOCK: usize = 64;

/// `out[r·n + j] = Σ_k x[r·k_dim + k] · w[j·k_dim + k]` for `r < m`, `j < n`.
pub fn gemv_rows(x: &[f32], w: &[f32], m: usize, k: usize, n: usize, out: &mut [f32]) {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    debug_assert_eq!(out.len(), m * n);
    // Each task fills a (m × BLOCK) tile of a transposed buffer, then rows are scattered.
    let mut tiles = vec![0f32; n * m];
    tiles
        .par_chunks_mut(BLOCK * m)
        .enumerate()
        .for_each(|(bi, tile)| {
            let j0 = bi * BLOCK;
            let rows = tile.len() / m;
            // Four weight rows at a time: four independent streams keep more loads in flight
            // (decoding is bound by reading the weights).
            let quads = rows / 4 * 4;
            for jj in (0..quads).step_by(4) {
                let w4 = &w[(j0 + jj) * k..(j0 + jj + 4) * k];
                for r in 0..m {
                    let d = dot4(&x[r * k..(r + 1) * k], w4);
                    for (q, v) in d.into_iter().enumerate() {
                        tile[(jj + q) * m + r] = v;
                    }
                }
            }
            for jj in quads..rows {
                let wr = &w[(j0 + jj) * k..(j0 + jj + 1) * k];
                for r in 0..m {
                    tile[jj * m + r] = dot(&x[r * k..(r + 1) * k], wr);
                }
            }
        });
    for j in 0..n {
        for r in 0..m {
            out[r * n + j] = tiles[j * m + r];
        }
    }
}

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// Dot products of `x` with the four consecutive rows of `w4` (each `x.len()` long).
#[inline]
pub fn dot4(x: &[f32], w4: &[f32]) -> [f32; 4] {
    let k = x.len();
    debug_assert_eq!(w4.len(), 4 * k);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { dot4_avx2(x, w4) };
        }
    }
    let row = |q: usize| dot_portable(x, &w4[q * k..(q + 1) * k]);
    [row(0), row(1), row(2), row(3)]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(x: &[f32], w4: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let k = x.len();
    assert!(w4.len() >= 4 * k, "dot4: short weight rows");
    let (px, pw) = (x.as_ptr(), w4.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 8 <= k {
        let xv = _mm256_loadu_ps(px.add(i));
        for (q, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(q * k + i)), xv, *a);
        }
        i += 8;
    }
    let mut out = [0f32; 4];
    for (q, a) in acc.iter().enumerate() {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
        let mut s: f32 = lanes.iter().sum();
        for j in i..k {
            s += *px.add(j) * *pw.add(q * k + j);
        }
        out[q] = s;
    }
    out
}

#[inline]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut acc2 = _mm256_setzero_ps();
    let mut acc3 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 32 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        acc1 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
            acc1,
        );
        acc2 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 16)),
            _mm256_loadu_ps(pb.add(i + 16)),
            acc2,
        );
        acc3 = _mm256_fmadd_ps(
            _mm256_loadu_ps(pa.add(i + 24)),
            _mm256_loadu_ps(pb.add(i + 24)),
            acc3,
        );
        i += 32;
    }
    while i + 8 <= n {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
        i += 8;
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s: f32 = lanes.iter().sum();
    while i < n {
        s += *pa.add(i) * *pb.add(i);
        i += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_product() {
        let (m, k, n) = (3, 77, 130);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7) % 13) as f32 * 0.1 - 0.6)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 5) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let mut out = vec![0f32; m * n];
        gemv_rows(&x, &w, m, k, n, &mut out);
        for r in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|i| x[r * k + i] * w[j * k + i]).sum();
                assert!((out[r * n + j] - want).abs() < 1e-4);
            }
        }
        assert!((dot_portable(&x[..k], &w[..k]) - dot(&x[..k], &w[..k])).abs() < 1e-4);
        let d4 = dot4(&x[..k], &w[..4 * k]);
        for (q, v) in d4.iter().enumerate() {
            assert!((v - dot_portable(&x[..k], &w[q * k..(q + 1) * k])).abs() < 1e-4);
        }
    }
}
