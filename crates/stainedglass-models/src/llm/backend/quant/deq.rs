//! Dequantizing our parts' rows to f32 with exactly candle's arithmetic (`(q − 8)·d` for Q4_0,
//! `q·d + m` for Q4_1, `q·d` for Q8_0, one rounding per operation, no fused multiply-add), so
//! a stored model computes on the very values the f32 model holds. The loops are compiled
//! twice, plain and with AVX2 enabled (vectorized by the compiler: same operations, same
//! results), and the AVX2 copy runs when the CPU has it.

use super::act::QK;

#[inline(always)]
fn q4_row(qs: &[u8], d: &[f32], m: Option<&[f32]>, row: usize, out: &mut [f32]) {
    let nb = out.len() / QK;
    let qs = &qs[row * nb * 16..(row + 1) * nb * 16];
    let d = &d[row * nb..(row + 1) * nb];
    for (b, (o, q)) in out
        .chunks_exact_mut(QK)
        .zip(qs.chunks_exact(16))
        .enumerate()
    {
        let (lo, hi) = o.split_at_mut(16);
        match m {
            Some(m) => {
                let (s, mn) = (d[b], m[row * nb + b]);
                for j in 0..16 {
                    lo[j] = f32::from(q[j] & 0x0f) * s + mn;
                    hi[j] = f32::from(q[j] >> 4) * s + mn;
                }
            }
            None => {
                let s = d[b];
                for j in 0..16 {
                    lo[j] = f32::from(i16::from(q[j] & 0x0f) - 8) * s;
                    hi[j] = f32::from(i16::from(q[j] >> 4) - 8) * s;
                }
            }
        }
    }
}

#[inline(always)]
fn q8_row(qs: &[i8], d: &[f32], row: usize, out: &mut [f32]) {
    let k = out.len();
    let qs = &qs[row * k..(row + 1) * k];
    let d = &d[row * (k / QK)..(row + 1) * (k / QK)];
    for ((o, q), &s) in out.chunks_exact_mut(QK).zip(qs.chunks_exact(QK)).zip(d) {
        for (v, &x) in o.iter_mut().zip(q) {
            *v = f32::from(x) * s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn q4_avx2(qs: &[u8], d: &[f32], m: Option<&[f32]>, row: usize, out: &mut [f32]) {
    q4_row(qs, d, m, row, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn q8_avx2(qs: &[i8], d: &[f32], row: usize, out: &mut [f32]) {
    q8_row(qs, d, row, out)
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

/// Row `row` of a Q4 part (`m`: the Q4_1 minimums, absent for Q4_0) into `out` (`cols` long).
pub(super) fn q4(qs: &[u8], d: &[f32], m: Option<&[f32]>, row: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { q4_avx2(qs, d, m, row, out) };
    }
    q4_row(qs, d, m, row, out)
}

/// Row `row` of a Q8_0 part into `out` (`cols` long).
pub(super) fn q8(qs: &[i8], d: &[f32], row: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { q8_avx2(qs, d, row, out) };
    }
    q8_row(qs, d, row, out)
}
