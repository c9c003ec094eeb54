//! The AVX-512 form of `exact.rs`'s fused Q4 pass (eight Q4_0, Q4_1 or unpacked Q4_K weight
//! rows against one f32 activation row): two weight rows share one 512-bit register, row `2p` in the low eight lanes and row
//! `2p + 1` in the high eight. Each lane still multiply-adds the same values in the same order
//! as `gemv::dot_rows_avx2` does for its row (eight lanes stepping through the row, summed
//! left to right at the end), so the products equal the f32 model's bit for bit, with half
//! the instructions of the 256-bit pass.
//!
//! Q4 rows take a table instead of a conversion per value: a block's 16 possible values
//! (`q·d + m` for Q4_1, `(q − 8)·d` for Q4_0, with candle's separate roundings) are computed
//! once, and each nibble picks its value with one `vpermt2ps` over the two rows' tables side
//! by side (the high row's indices carry bit 4). A block's 16 bytes of both rows are widened
//! once (bytes `j` and `8 + j` into 32-bit lane `j`) and each chunk of 8 values is a shift and
//! a mask away, so per 16 weights that is about a shift, a mask, a permute and a
//! multiply-add, where the 256-bit pass spends a widening, a conversion, a multiply, an add and
//! a multiply-add per 8. Hand-written because the compiler cannot know that the table
//! gives candle's values, and because no crate multiplies our parts' layout.
//!
//! Single-threaded on the bundled model's shapes (`pair_pass_speed`): 1.45–1.53× the 256-bit
//! pass (14.4–15.7 GMAC/s against 9.8–10.3; a first form that widened each chunk's 16 nibbles
//! separately ran at 14.5–15.1; the VBMI form below 1.61–1.92×). Q8_0 rows stay on the
//! 256-bit pass: 256 possible values make no table, and both 512-bit forms tried were
//! bound by their float work (convert, multiply, multiply-add per 16 values), which this
//! CPU runs on one port at 512 bits and on two at 256. Widening and converting measured
//! 0.93–1.04× of the 256-bit pass; a zero-masked byte permute to the top byte of each lane
//! (`q·2²⁴` converts exactly, then `× d·2⁻²⁴`; bit-exact) 0.78–0.83×.

use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Weight rows per pass (`exact.rs`'s `ROWS_PER_PASS`).
const ROWS: usize = 8;
const PAIRS: usize = ROWS / 2;

/// Which form of the pass this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Level {
    /// AVX-512 F, VL and BW (besides AVX2 and FMA): chunks by shift and mask.
    Bw,
    /// And AVX-512 VBMI: one byte permute and one multishift place all four chunks' indices.
    Vbmi,
}

/// The form of the pass this CPU runs, if any.
pub(super) fn level() -> Option<Level> {
    static LEVEL: OnceLock<Option<Level>> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let bw = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma");
        match (bw, std::is_x86_feature_detected!("avx512vbmi")) {
            (false, _) => None,
            (true, false) => Some(Level::Bw),
            (true, true) => Some(Level::Vbmi),
        }
    })
}

/// The two rows' sums of a pair accumulator, each in `gemv::dot_rows_avx2`'s order.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn pair_sums(acc: __m512) -> [f32; 2] {
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` holds 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    [lanes[..8].iter().sum(), lanes[8..].iter().sum()]
}

/// The eight f32 at `p` in both halves (AVX-512 F only: the DQ form would not inline here).
#[inline]
#[target_feature(enable = "avx512f,avx2")]
unsafe fn broadcast8(p: *const f32) -> __m512 {
    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(p))))
}

/// The eight Q4 rows `qs` (16 bytes a block, `nb` blocks a row; scales `d`, Q4_1 minimums at
/// `m` when `MIN`) against `x`, in `gemv::dot_rows`'s order and arithmetic, on the form
/// `level` names.
///
/// # Safety
/// The CPU must have `level` (from [`level`]); `qs` holds `8 · nb · 16` bytes, `d` (and `m`
/// when `MIN`) `8 · nb` values, `x` `nb · 32`.
pub(super) unsafe fn q4<const MIN: bool>(
    level: Level,
    qs: &[u8],
    d: &[f32],
    m: *const f32,
    x: &[f32],
    nb: usize,
) -> [f32; ROWS] {
    assert!(qs.len() >= ROWS * nb * 16 && d.len() >= ROWS * nb && x.len() >= nb * 32);
    match level {
        Level::Bw => q4_bw::<MIN>(qs, d, m, x, nb),
        Level::Vbmi => q4_vbmi::<MIN>(qs, d, m, x, nb),
    }
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma")]
unsafe fn q4_bw<const MIN: bool>(
    qs: &[u8],
    d: &[f32],
    m: *const f32,
    x: &[f32],
    nb: usize,
) -> [f32; ROWS] {
    q4_body::<MIN, false>(qs, d, m, x, nb)
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vbmi,avx2,fma")]
unsafe fn q4_vbmi<const MIN: bool>(
    qs: &[u8],
    d: &[f32],
    m: *const f32,
    x: &[f32],
    nb: usize,
) -> [f32; ROWS] {
    q4_body::<MIN, true>(qs, d, m, x, nb)
}

/// Constants of the index placement: `(mask, second, a, b)`, where `a` and `b` are the BW
/// form's byte shuffle (and nothing), or the VBMI form's byte permute and multishift controls.
#[inline(always)]
unsafe fn index_constants<const VBMI: bool>() -> (__m512i, __m512i, __m512i, __m512i) {
    if !VBMI {
        let mask = _mm512_set1_epi32(0x0f);
        // The high row's lanes index the second table: bit 4.
        let second = _mm512_maskz_set1_epi32(0xff00, 0x10);
        let pairs = _mm256_setr_epi8(
            0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15, 0, 8, 1, 9, 2, 10, 3, 11, 4, 12,
            5, 13, 6, 14, 7, 15,
        );
        return (
            mask,
            second,
            _mm512_castsi256_si512(pairs),
            _mm512_setzero_si512(),
        );
    }
    let mask = _mm512_set1_epi8(0x0f);
    // Bit 4 of every byte of the high row's lanes: each byte is some chunk's index.
    let second = _mm512_maskz_set1_epi32(0xff00, 0x1010_1010);
    let gather = _mm512_loadu_si512(VBMI_GATHER.as_ptr().cast());
    let shifts = _mm512_loadu_si512(VBMI_SHIFTS.as_ptr().cast());
    (mask, second, gather, shifts)
}

/// The VBMI form's byte permute: byte `4L + c` of the arranged vector is row `L / 8`'s byte
/// `L % 8 + 8 (c & 1)` (the row pair's 16 + 16 bytes in the low 256 bits).
const VBMI_GATHER: [u8; 64] = {
    let mut g = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let (l, c) = (i / 4, i % 4);
        g[i] = (16 * (l / 8) + l % 8 + 8 * (c & 1)) as u8;
        i += 1;
    }
    g
};

/// The VBMI form's multishift controls: each arranged byte shifted so its nibble (the high
/// one for chunks 2 and 3) lands in bits 0..4.
const VBMI_SHIFTS: [u8; 64] = {
    let mut sh = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        sh[i] = (8 * (i % 8) + if i % 4 >= 2 { 4 } else { 0 }) as u8;
        i += 1;
    }
    sh
};

/// The four chunks' table indices of one block of a row pair (`q0`, `q1`: their 16 bytes).
/// Bytes `0..8` hold values `0..8` (low nibbles) and `16..24` (high); bytes `8..16` the rest.
#[inline(always)]
unsafe fn indices<const VBMI: bool>(
    q0: *const u8,
    q1: *const u8,
    (mask, second, a, b): (__m512i, __m512i, __m512i, __m512i),
) -> [__m512i; 4] {
    // Row 2p's 16 bytes in the low 128 bits, row 2p + 1's in the high.
    let raw = _mm256_inserti128_si256::<1>(
        _mm256_castsi128_si256(_mm_loadu_si128(q0.cast())),
        _mm_loadu_si128(q1.cast()),
    );
    if VBMI {
        // Byte c of 32-bit lane L: chunk c's index for lane L; vpermt2ps reads only bits 0–4.
        let arranged = _mm512_permutexvar_epi8(a, _mm512_castsi256_si512(raw));
        let v = _mm512_ternarylogic_epi32::<0xEA>(
            _mm512_multishift_epi64_epi8(b, arranged),
            mask,
            second,
        );
        return [
            v,
            _mm512_bsrli_epi128::<1>(v),
            _mm512_srli_epi32::<16>(v),
            _mm512_bsrli_epi128::<3>(v),
        ];
    }
    // Per half the bytes `j` and `8 + j` side by side, widened to 32-bit lane `j` (values `j`
    // and `16 + j` in byte `j`'s nibbles, `8 + j` and `24 + j` in byte `8 + j`'s).
    let w = _mm512_cvtepu16_epi32(_mm256_shuffle_epi8(raw, _mm512_castsi512_si256(a)));
    // `(v & 15) | second` in one instruction; chunk c's nibble sits at bit 0, 8, 4, 12.
    let pick = |v: __m512i| _mm512_ternarylogic_epi32::<0xEA>(v, mask, second);
    [
        pick(w),
        pick(_mm512_srli_epi32::<8>(w)),
        pick(_mm512_srli_epi32::<4>(w)),
        pick(_mm512_srli_epi32::<12>(w)),
    ]
}

#[inline(always)]
unsafe fn q4_body<const MIN: bool, const VBMI: bool>(
    qs: &[u8],
    d: &[f32],
    m: *const f32,
    x: &[f32],
    nb: usize,
) -> [f32; ROWS] {
    let (qp, xp) = (qs.as_ptr(), x.as_ptr());
    let iota = _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    );
    // Q4_0's values are `(q − 8)·d`: the table's lanes are `q − 8`, exact in f32.
    let base = if MIN {
        iota
    } else {
        _mm512_sub_ps(iota, _mm512_set1_ps(8.0))
    };
    let consts = index_constants::<VBMI>();
    let table = |i: usize| {
        let v = _mm512_mul_ps(base, _mm512_set1_ps(*d.get_unchecked(i)));
        if MIN {
            _mm512_add_ps(v, _mm512_set1_ps(*m.add(i)))
        } else {
            v
        }
    };
    let mut acc = [_mm512_setzero_ps(); PAIRS];
    for b in 0..nb {
        let xb = xp.add(b * 32);
        let xs = [0, 8, 16, 24].map(|o| broadcast8(xb.add(o)));
        for (p, a) in acc.iter_mut().enumerate() {
            let (i0, i1) = (2 * p * nb + b, (2 * p + 1) * nb + b);
            let (t0, t1) = (table(i0), table(i1));
            let idx = indices::<VBMI>(qp.add(i0 * 16), qp.add(i1 * 16), consts);
            for (c, xv) in idx.into_iter().zip(xs) {
                let w = _mm512_permutex2var_ps(t0, c, t1);
                *a = _mm512_fmadd_ps(w, xv, *a);
            }
        }
    }
    let mut out = [0f32; ROWS];
    for (p, a) in acc.into_iter().enumerate() {
        let [s0, s1] = pair_sums(a);
        out[2 * p] = s0;
        out[2 * p + 1] = s1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::backend::gemv::dot_rows;
    use rand::{Rng, SeedableRng};

    /// The forms this CPU can run (the VBMI form needs the BW form's features too).
    fn levels() -> Vec<Level> {
        match level() {
            None => Vec::new(),
            Some(Level::Bw) => vec![Level::Bw],
            Some(Level::Vbmi) => vec![Level::Bw, Level::Vbmi],
        }
    }

    /// Q4_0 and Q4_1 rows of arbitrary bytes and scales: every form of the pass this CPU runs
    /// gives the dot products of the rows dequantized as candle does, bit for bit
    /// (`gemv::dot_rows`).
    #[test]
    fn the_pair_pass_equals_the_f32_kernel_bit_for_bit() {
        if levels().is_empty() {
            eprintln!("this CPU has no AVX-512 F/VL/BW: the 512-bit pass is not run here");
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for nb in [1, 2, 18, 48] {
            let k = nb * 32;
            let mut vals = |n: usize, s: f32| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-s..s)).collect()
            };
            let (x, d, m) = (vals(k, 2.0), vals(ROWS * nb, 0.05), vals(ROWS * nb, 0.2));
            let b4: Vec<u8> = (0..ROWS * nb * 16).map(|_| rng.random()).collect();
            for min in [true, false] {
                let mut deq = vec![0f32; ROWS * k];
                for r in 0..ROWS {
                    let mm = min.then_some(&m[..]);
                    super::super::deq::q4(&b4, &d, mm, r, &mut deq[r * k..(r + 1) * k]);
                }
                let want = dot_rows::<ROWS>(&x, &deq);
                for level in levels() {
                    // SAFETY: the CPU has `level`; the lengths above.
                    let got = unsafe {
                        if min {
                            q4::<true>(level, &b4, &d, m.as_ptr(), &x, nb)
                        } else {
                            q4::<false>(level, &b4, &d, m.as_ptr(), &x, nb)
                        }
                    };
                    let (g, w) = (got.map(f32::to_bits), want.map(f32::to_bits));
                    assert_eq!(g, w, "{level:?} min={min} nb={nb}");
                }
            }
        }
    }

    /// Single-threaded speed of the 512-bit Q4_1 passes against the 256-bit one (`exact.rs`) on
    /// the bundled model's shapes, alternating (`cargo test --release -p stainedglass-models
    /// pair_pass_speed -- --ignored --nocapture`): a measurement, not a check.
    #[test]
    #[ignore]
    fn pair_pass_speed() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (n, k) in [(3072usize, 576usize), (576, 1536)] {
            let nb = k / 32;
            let x: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let d: Vec<f32> = (0..n * nb).map(|_| rng.random_range(-0.05..0.05)).collect();
            let b4: Vec<u8> = (0..n * nb * 16).map(|_| rng.random()).collect();
            for round in 0..3 {
                let rate = |level: Option<Level>| {
                    let iters = 1500;
                    let t = std::time::Instant::now();
                    let mut sink = 0f32;
                    for _ in 0..iters {
                        for g in (0..n).step_by(ROWS) {
                            let (r4, s) = (
                                &b4[g * nb * 16..(g + ROWS) * nb * 16],
                                &d[g * nb..(g + ROWS) * nb],
                            );
                            // SAFETY: the CPU has `level` (and AVX2 and FMA, checked above);
                            // the slices hold eight rows.
                            let r = unsafe {
                                match level {
                                    Some(l) => q4::<true>(l, r4, s, s.as_ptr(), &x, nb),
                                    None => super::super::exact::x86_q4_for_tests(r4, s, &x, nb),
                                }
                            };
                            sink += r[0];
                        }
                    }
                    std::hint::black_box(sink);
                    (n * k * iters) as f64 / t.elapsed().as_secs_f64() / 1e9
                };
                let base = rate(None);
                let mut line = format!(
                    "{{\"n\":{n},\"k\":{k},\"round\":{round},\"avx2_gmac_per_s\":{base:.2}"
                );
                for level in levels() {
                    let r = rate(Some(level));
                    line += &format!(
                        ",\"{level:?}_gmac_per_s\":{r:.2},\"{level:?}_ratio\":{:.2}",
                        r / base
                    );
                }
                println!("{line}}}");
            }
        }
    }
}
