//! Q4 (and Q8_0) rows times 8-bit activation rows in tiles of **16** weight rows: the batched-decoding
//! kernel (a decode step of several requests, a short prefill). `dot512.rs`'s tiles of 4 rows
//! put one row per 128-bit lane, so every block and activation row pays a conversion, two
//! scalings and a four-way lane sum for 128 products, and the per-row scales are assembled
//! lane by lane. Here every 32-bit lane is one weight row:
//!
//! - the weights: 16 rows' blocks are loaded four rows to a register (one row per 128-bit
//!   lane, the stored layout) and a 4 × 4 transpose of 32-bit words inside each lane leaves,
//!   in register `c`, word `c` of each row's 16 bytes in its own 32-bit lane. Word `c` holds
//!   values `4c..4c + 4` in its low nibbles and `16 + 4c..16 + 4c + 4` in its high nibbles
//!   (Q4's layout), so the masked nibbles of the four registers are the whole block, with no
//!   byte shuffles;
//! - the activations: four bytes at a time broadcast to every lane (a `vpdpbusd` operand
//!   straight from memory), eight `vpdpbusd` per block and activation row give each row's
//!   integer sum in its lane;
//! - the scales and offsets: one gather each per block for the 16 rows, shared by every
//!   activation row; then one conversion, one multiply and two fused multiply-adds per
//!   block and activation row cover 16 weight rows.
//!
//! Q8_0 rows (the bundled model's LM head) go the same way with eight words per block and
//! `dot512.rs`'s unsigned-activation trick ([`q8_tiles16`]).
//!
//! The transpose leaves row `4j + l` in lane `4l + j`; the accumulators are permuted back
//! once per tile. The integer sums are the reference's (`dot::q4_portable`); only the order of
//! the f32 accumulation differs.

use super::act::QK;
use super::dot::{self, ActRow, Q4Offset};

/// Weight rows per tile.
pub const ROWS: usize = 16;

/// Weight rows `0..rows / 16 · 16` in tiles of 16, times every activation row of `x`:
/// `write(t, r, values)` gets, for activation row `t`, the values `dot::q4_rows` gives for
/// weight rows `r..r + 16`; returns the first weight row not written. Each weight block is
/// unpacked once for all of `x` (the accumulators live in memory, 64 bytes per activation
/// row).
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI (`Isa::Vnni512`).
///
/// # Panics
/// If the slices are shorter than `rows` rows of `nb` blocks, or `nb` is too large for
/// 32-bit gather offsets.
#[cfg(target_arch = "x86_64")]
pub unsafe fn q4_tiles16(
    (qs, d): (&[u8], &[f32]),
    o: Q4Offset<'_>,
    x: &[ActRow<'_>],
    rows: usize,
    write: &mut impl FnMut(usize, usize, &[f32; ROWS]),
) -> usize {
    let nb = dot::q4_blocks((qs, d), o, x, rows);
    assert!(
        i32::try_from(ROWS * nb).is_ok(),
        "{nb} blocks per row: too many for the gather"
    );
    let full = rows / ROWS * ROWS;
    let mut acc = vec![[0f32; ROWS]; x.len()];
    for j in (0..full).step_by(ROWS) {
        // SAFETY: the caller vouches for the features; rows `j..j + 16` of `nb` blocks are in
        // bounds (lengths checked above), `acc` has a row per activation row.
        q4_tile16(
            qs.as_ptr().add(j * nb * 16),
            d.as_ptr().add(j * nb),
            (o.off.as_ptr().add(j * nb), o.scale),
            x,
            nb,
            &mut acc,
        );
        for (t, v) in acc.iter().enumerate() {
            write(t, j, v);
        }
    }
    full
}

/// Lane `p` of the transposed registers holds row `LANE_ROW[p]` (and, the permutation being
/// its own inverse, row `r` is in lane `LANE_ROW[r]`).
const LANE_ROW: [i32; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15];

/// 16 Q4 rows × every activation row: `acc[t][r]` (overwritten).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q4_tile16(
    qs: *const u8,
    d: *const f32,
    (off, off_scale): (*const f32, f32),
    x: &[ActRow<'_>],
    nb: usize,
    acc: &mut [[f32; ROWS]],
) {
    use std::arch::x86_64::*;
    let mask = _mm512_set1_epi8(0x0f);
    let stride = nb * 16;
    let perm = _mm512_loadu_si512(LANE_ROW.as_ptr().cast());
    // Offsets (in f32s) of each lane's row's scale: row · nb.
    let gather = _mm512_mullo_epi32(perm, _mm512_set1_epi32(nb as i32));
    let osc = _mm512_set1_ps(off_scale);
    for a in acc.iter_mut() {
        *a = [0.0; ROWS];
    }
    for b in 0..nb {
        let c = words16(qs.add(b * 16), stride);
        let lo = c.map(|v| _mm512_and_si512(v, mask));
        let hi = c.map(|v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask));
        let dw = _mm512_i32gather_ps::<4>(gather, d.add(b).cast());
        let ow = _mm512_mul_ps(_mm512_i32gather_ps::<4>(gather, off.add(b).cast()), osc);
        for (a, at) in x.iter().zip(acc.iter_mut()) {
            let xq = a.q.as_ptr().add(b * QK).cast::<i32>();
            let word = |i: usize| _mm512_set1_epi32(xq.add(i).read_unaligned());
            // Two chains, so one activation row is not one long dependency.
            let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[0], word(0));
            let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[0], word(4));
            for i in 1..4 {
                s0 = _mm512_dpbusd_epi32(s0, lo[i], word(i));
                s1 = _mm512_dpbusd_epi32(s1, hi[i], word(4 + i));
            }
            let sum = _mm512_add_epi32(s0, s1);
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(b)));
            let prev = _mm512_loadu_ps(at.as_ptr());
            let am = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), s, prev);
            let am = _mm512_fmadd_ps(ow, _mm512_set1_ps(*a.s.get_unchecked(b)), am);
            _mm512_storeu_ps(at.as_mut_ptr(), am);
        }
    }
    unpermute(acc, perm);
}

/// Each accumulator row from lane order back to row order (`perm`: [`LANE_ROW`]).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn unpermute(acc: &mut [[f32; ROWS]], perm: std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    for at in acc.iter_mut() {
        let v = _mm512_permutexvar_ps(perm, _mm512_loadu_ps(at.as_ptr()));
        _mm512_storeu_ps(at.as_mut_ptr(), v);
    }
}

/// The 16 bytes at `p + r·stride` of 16 rows `r`, transposed: register `c` holds word `c`
/// (bytes `4c..4c + 4`) of row [`LANE_ROW`]`[p]` in 32-bit lane `p`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn words16(p: *const u8, stride: usize) -> [std::arch::x86_64::__m512i; 4] {
    use std::arch::x86_64::*;
    let q = [
        rows4(p, stride),
        rows4(p.add(4 * stride), stride),
        rows4(p.add(8 * stride), stride),
        rows4(p.add(12 * stride), stride),
    ];
    let t0 = _mm512_unpacklo_epi32(q[0], q[1]);
    let t1 = _mm512_unpackhi_epi32(q[0], q[1]);
    let t2 = _mm512_unpacklo_epi32(q[2], q[3]);
    let t3 = _mm512_unpackhi_epi32(q[2], q[3]);
    [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ]
}

/// Q8_0 weight rows `0..rows / 16 · 16` in tiles of 16, times every activation row of `x`,
/// as [`q4_tiles16`]: `write(t, r, values)` gets the values `dot::q8_rows` gives for weight
/// rows `r..r + 16`. The activations are made unsigned once (`x + 128`, a flipped sign bit)
/// and each block's integer sum starts at `−128 · Σ w` (eight more `vpdpbusd` per block,
/// shared by every activation row), so one `vpdpbusd` multiplies signed by signed.
///
/// # Safety
/// As [`q4_tiles16`].
///
/// # Panics
/// As [`q4_tiles16`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn q8_tiles16(
    (qs, d): (&[i8], &[f32]),
    x: &[ActRow<'_>],
    rows: usize,
    write: &mut impl FnMut(usize, usize, &[f32; ROWS]),
) -> usize {
    let nb = dot::q8_blocks((qs, d), x, rows);
    assert!(
        i32::try_from(ROWS * nb).is_ok(),
        "{nb} blocks per row: too many for the gather"
    );
    let full = rows / ROWS * ROWS;
    if full == 0 {
        return 0;
    }
    let flipped: Vec<Vec<u8>> = x
        .iter()
        .map(|a| a.q[..nb * QK].iter().map(|&v| (v as u8) ^ 0x80).collect())
        .collect();
    let mut acc = vec![[0f32; ROWS]; x.len()];
    for j in (0..full).step_by(ROWS) {
        // SAFETY: the caller vouches for the features; rows `j..j + 16` of `nb` blocks are in
        // bounds (lengths checked above), `acc` and `flipped` have a row per activation row.
        q8_tile16(
            qs.as_ptr().add(j * nb * QK),
            d.as_ptr().add(j * nb),
            (x, &flipped),
            nb,
            &mut acc,
        );
        for (t, v) in acc.iter().enumerate() {
            write(t, j, v);
        }
    }
    full
}

/// 16 Q8_0 rows × every activation row: `acc[t][r]` (overwritten).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn q8_tile16(
    qs: *const i8,
    d: *const f32,
    (x, flipped): (&[ActRow<'_>], &[Vec<u8>]),
    nb: usize,
    acc: &mut [[f32; ROWS]],
) {
    use std::arch::x86_64::*;
    let stride = nb * QK;
    let flip = _mm512_set1_epi8(-128);
    let perm = _mm512_loadu_si512(LANE_ROW.as_ptr().cast());
    let gather = _mm512_mullo_epi32(perm, _mm512_set1_epi32(nb as i32));
    for a in acc.iter_mut() {
        *a = [0.0; ROWS];
    }
    for b in 0..nb {
        let p = qs.add(b * QK).cast::<u8>();
        let (w0, w1) = (words16(p, stride), words16(p.add(16), stride));
        let mut sum = _mm512_setzero_si512();
        for i in 0..4 {
            sum = _mm512_dpbusd_epi32(sum, flip, w0[i]);
            sum = _mm512_dpbusd_epi32(sum, flip, w1[i]);
        }
        let start = _mm512_sub_epi32(_mm512_setzero_si512(), sum);
        let dw = _mm512_i32gather_ps::<4>(gather, d.add(b).cast());
        for ((a, f), at) in x.iter().zip(flipped).zip(acc.iter_mut()) {
            let xq = f.as_ptr().add(b * QK).cast::<i32>();
            let word = |i: usize| _mm512_set1_epi32(xq.add(i).read_unaligned());
            let mut s0 = _mm512_dpbusd_epi32(start, word(0), w0[0]);
            let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), word(4), w1[0]);
            for i in 1..4 {
                s0 = _mm512_dpbusd_epi32(s0, word(i), w0[i]);
                s1 = _mm512_dpbusd_epi32(s1, word(4 + i), w1[i]);
            }
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(b)));
            let prev = _mm512_loadu_ps(at.as_ptr());
            let v = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
            _mm512_storeu_ps(at.as_mut_ptr(), _mm512_fmadd_ps(v, s, prev));
        }
    }
    unpermute(acc, perm);
}

/// The 16 bytes at `p + r·stride` in lane `r`, for 4 rows.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn rows4(p: *const u8, stride: usize) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let v = _mm512_castsi128_si512(_mm_loadu_si128(p.cast()));
    let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p.add(stride).cast()));
    let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p.add(2 * stride).cast()));
    _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p.add(3 * stride).cast()))
}
