//! Q4 (and Q8_0) rows times 8-bit activation rows in tiles of **8** weight rows with AVX2 (no VNNI):
//! `tile16.rs`'s layout on 256-bit registers, for CPUs without AVX-512 (AMD Zen 2/3, Intel
//! client parts). `dot.rs`'s AVX2 tiles pay, per weight row, block and activation row, a
//! `vpmaddubsw`, a `vpmaddwd`, a conversion, a multiply and a fused multiply-add for 32
//! products, then a horizontal sum per output. Here every 32-bit lane is one weight row:
//!
//! - the weights: 8 rows' blocks are loaded two rows to a register (rows `i` and `i + 4` in
//!   its two 128-bit lanes) and a 4 × 4 transpose of 32-bit words inside each lane leaves, in
//!   register `c`, word `c` of row `p` in lane `p` (in order: no permutation to undo). Word `c`
//!   holds values `4c..4c + 4` in its low nibbles and `16 + 4c..` in its high nibbles;
//! - the activations: four bytes at a time broadcast to every lane, one `vpmaddubsw` per word
//!   (nibble · byte pairs, at most 2 · 15 · 127 = 3,810), the block's eight summed in 16 bits
//!   (at most 30,480: no overflow, the activations being clamped to ±127), then one
//!   `vpmaddwd` into 32 bits: 17 integer operations for 8 rows' block, against 16 for one
//!   row's in `dot.rs`;
//! - the scales and offsets: one gather each per block for the 8 rows, shared by every
//!   activation row; then one conversion, one multiply and two fused multiply-adds per block
//!   and activation row cover 8 weight rows.
//!
//! Q8_0 rows (the bundled model's LM head) go the same way with eight words per block
//! ([`q8_tiles8`]).
//!
//! The integer sums are the reference's (`dot::q4_portable`, `dot::q8_portable`); only the
//! order of the f32 accumulation differs.

use super::act::QK;
use super::dot::{self, ActRow, Q4Offset};

/// Weight rows per tile.
pub const ROWS: usize = 8;

/// Weight rows `0..rows / 8 · 8` in tiles of 8, times every activation row of `x`:
/// `write(t, r, values)` gets, for activation row `t`, the values `dot::q4_rows` gives for
/// weight rows `r..r + 8`; returns the first weight row not written. Each weight block is
/// unpacked once for all of `x` (the accumulators live in memory, 32 bytes per activation
/// row).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
///
/// # Panics
/// If the slices are shorter than `rows` rows of `nb` blocks, or `nb` is too large for
/// 32-bit gather offsets.
#[cfg(target_arch = "x86_64")]
pub unsafe fn q4_tiles8(
    (qs, d): (&[u8], &[f32]),
    o: Q4Offset<'_>,
    x: &[ActRow<'_>],
    rows: usize,
    write: &mut impl FnMut(usize, usize, &[f32; ROWS]),
) -> usize {
    let nb = dot::q4_blocks((qs, d), o, x, rows);
    tiles(nb, rows, x.len(), write, |j, acc| {
        // SAFETY: the caller vouches for the features; rows `j..j + 8` of `nb` blocks are in
        // bounds (lengths checked by `q4_blocks`), `acc` has a row per activation row.
        unsafe {
            q4_tile8(
                qs.as_ptr().add(j * nb * 16),
                d.as_ptr().add(j * nb),
                (o.off.as_ptr().add(j * nb), o.scale),
                x,
                nb,
                acc,
            )
        }
    })
}

/// Weight rows `0..rows / 8 · 8` of `nb` blocks in tiles of 8: `tile(j, acc)` fills `acc`
/// (a row per activation row, `m` of them) for weight rows `j..j + 8`, whose values go to
/// `write`; returns the first weight row not written.
#[cfg(target_arch = "x86_64")]
fn tiles(
    nb: usize,
    rows: usize,
    m: usize,
    write: &mut impl FnMut(usize, usize, &[f32; ROWS]),
    mut tile: impl FnMut(usize, &mut [[f32; ROWS]]),
) -> usize {
    assert!(
        i32::try_from(ROWS * nb).is_ok(),
        "{nb} blocks per row: too many for the gather"
    );
    let full = rows / ROWS * ROWS;
    let mut acc = vec![[0f32; ROWS]; m];
    for j in (0..full).step_by(ROWS) {
        tile(j, &mut acc);
        for (t, v) in acc.iter().enumerate() {
            write(t, j, v);
        }
    }
    full
}

/// 8 Q4 rows × every activation row: `acc[t][r]` (overwritten).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_tile8(
    qs: *const u8,
    d: *const f32,
    (off, off_scale): (*const f32, f32),
    x: &[ActRow<'_>],
    nb: usize,
    acc: &mut [[f32; ROWS]],
) {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let stride = nb * 16;
    // Offsets (in f32s) of each lane's row's scale: row · nb.
    let gather = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(nb as i32),
    );
    let osc = _mm256_set1_ps(off_scale);
    for a in acc.iter_mut() {
        *a = [0.0; ROWS];
    }
    for b in 0..nb {
        let c = words8(qs.add(b * 16), stride);
        let lo = c.map(|v| _mm256_and_si256(v, mask));
        let hi = c.map(|v| _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask));
        let dw = _mm256_i32gather_ps::<4>(d.add(b), gather);
        let ow = _mm256_mul_ps(_mm256_i32gather_ps::<4>(off.add(b), gather), osc);
        for (a, at) in x.iter().zip(acc.iter_mut()) {
            let xq = a.q.as_ptr().add(b * QK).cast::<i32>();
            let word = |i: usize| _mm256_set1_epi32(xq.add(i).read_unaligned());
            // Two chains, so one activation row is not one long dependency.
            let mut s0 = _mm256_maddubs_epi16(lo[0], word(0));
            let mut s1 = _mm256_maddubs_epi16(hi[0], word(4));
            for i in 1..4 {
                s0 = _mm256_add_epi16(s0, _mm256_maddubs_epi16(lo[i], word(i)));
                s1 = _mm256_add_epi16(s1, _mm256_maddubs_epi16(hi[i], word(4 + i)));
            }
            let sum = _mm256_madd_epi16(_mm256_add_epi16(s0, s1), ones);
            let s = _mm256_mul_ps(dw, _mm256_set1_ps(*a.d.get_unchecked(b)));
            let prev = _mm256_loadu_ps(at.as_ptr());
            let am = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, prev);
            let am = _mm256_fmadd_ps(ow, _mm256_set1_ps(*a.s.get_unchecked(b)), am);
            _mm256_storeu_ps(at.as_mut_ptr(), am);
        }
    }
}

/// Q8_0 weight rows `0..rows / 8 · 8` in tiles of 8, times every activation row of `x`, as
/// [`q4_tiles8`]: `write(t, r, values)` gets the values `dot::q8_rows` gives for weight rows
/// `r..r + 8`. Signed weights take `vpmaddubsw`'s unsigned operand as `|w|`, the activation
/// word carrying `w`'s sign (`vpsignb`); a pair can reach 2 · 128 · 127, so each word's pairs
/// are widened to 32 bits at once (`vpmaddwd`): 4 integer operations per word and activation
/// row for 8 rows, against 3 for one row in `dot.rs`.
///
/// # Safety
/// As [`q4_tiles8`].
///
/// # Panics
/// As [`q4_tiles8`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn q8_tiles8(
    (qs, d): (&[i8], &[f32]),
    x: &[ActRow<'_>],
    rows: usize,
    write: &mut impl FnMut(usize, usize, &[f32; ROWS]),
) -> usize {
    let nb = dot::q8_blocks((qs, d), x, rows);
    tiles(nb, rows, x.len(), write, |j, acc| {
        // SAFETY: the caller vouches for the features; rows `j..j + 8` of `nb` blocks are in
        // bounds (lengths checked by `q8_blocks`), `acc` has a row per activation row.
        unsafe {
            q8_tile8(
                qs.as_ptr().add(j * nb * QK),
                d.as_ptr().add(j * nb),
                x,
                nb,
                acc,
            )
        }
    })
}

/// 8 Q8_0 rows × every activation row: `acc[t][r]` (overwritten).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_tile8(
    qs: *const i8,
    d: *const f32,
    x: &[ActRow<'_>],
    nb: usize,
    acc: &mut [[f32; ROWS]],
) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let stride = nb * QK;
    let gather = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(nb as i32),
    );
    for a in acc.iter_mut() {
        *a = [0.0; ROWS];
    }
    for b in 0..nb {
        let p = qs.add(b * QK).cast::<u8>();
        // Words 0..4 (values 0..16) and 4..8 (values 16..32) of the 8 rows, and their sizes.
        let w = [words8(p, stride), words8(p.add(16), stride)];
        let aw = w.map(|h| h.map(|v| _mm256_sign_epi8(v, v)));
        let dw = _mm256_i32gather_ps::<4>(d.add(b), gather);
        for (a, at) in x.iter().zip(acc.iter_mut()) {
            let xq = a.q.as_ptr().add(b * QK).cast::<i32>();
            let word = |i: usize| _mm256_set1_epi32(xq.add(i).read_unaligned());
            let dp = |h: usize, i: usize| {
                let xs = _mm256_sign_epi8(word(4 * h + i), w[h][i]);
                _mm256_madd_epi16(_mm256_maddubs_epi16(aw[h][i], xs), ones)
            };
            // Two chains, so one activation row is not one long dependency.
            let (mut s0, mut s1) = (dp(0, 0), dp(1, 0));
            for i in 1..4 {
                s0 = _mm256_add_epi32(s0, dp(0, i));
                s1 = _mm256_add_epi32(s1, dp(1, i));
            }
            let s = _mm256_mul_ps(dw, _mm256_set1_ps(*a.d.get_unchecked(b)));
            let prev = _mm256_loadu_ps(at.as_ptr());
            let v = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
            _mm256_storeu_ps(at.as_mut_ptr(), _mm256_fmadd_ps(v, s, prev));
        }
    }
}

/// The 16 bytes at `p + r·stride` of 8 rows `r`, transposed: register `c` holds word `c`
/// (bytes `4c..4c + 4`) of row `p` in 32-bit lane `p`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn words8(p: *const u8, stride: usize) -> [std::arch::x86_64::__m256i; 4] {
    use std::arch::x86_64::*;
    // Rows `i` (low lane) and `i + 4` (high lane).
    let pair =
        |i: usize| _mm256_loadu2_m128i(p.add((i + 4) * stride).cast(), p.add(i * stride).cast());
    let q = [pair(0), pair(1), pair(2), pair(3)];
    let t0 = _mm256_unpacklo_epi32(q[0], q[1]);
    let t1 = _mm256_unpackhi_epi32(q[0], q[1]);
    let t2 = _mm256_unpacklo_epi32(q[2], q[3]);
    let t3 = _mm256_unpackhi_epi32(q[2], q[3]);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}
