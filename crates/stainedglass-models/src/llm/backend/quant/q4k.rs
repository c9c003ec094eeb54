//! Q4_K rows for our Q4 kernels. A Q4_K super-block of 256 values is eight blocks of 32,
//! each `value = d·sc·q − dmin·mn` with 6-bit `sc` and `mn`: a Q4_1 block whose scale `d·sc`
//! and minimum `−dmin·mn` are products of the super-block's f16 factors and the 6-bit
//! integers. Both products are exact in f32 (11 + 6 bits), and `q·(d·sc) + (−dmin·mn)` is
//! candle's `d·sc·q − dmin·mn` to the bit, so the Q4_1 kernels (`dot.rs`, `dot512.rs`,
//! `tile16.rs`, `tile8.rs`, the f32 path's `exact.rs`) compute on exactly the values candle
//! dequantizes.
//!
//! The matrix keeps the file's blocks (candle's `BlockQ4K`, `ggml.rs`): a single activation row
//! (one decoding request) runs candle's dot product, which reads the 144 bytes per 256 values
//! once and applies the scales in integers. For more rows a product unpacks 64 weight rows at a
//! time ([`unpack_rows`]) into Q4's layout (16 bytes per block, values `i` and `16 + i` in byte
//! `i`; the file holds two blocks per 32 bytes, one in the low nibbles and the next in the
//! high) with f32 scales and minimums, shared by every activation row. A first version
//! re-packed at load (152 bytes per 256 values) and ran our kernels for every row count:
//! batches 2.2–3.2× candle's speed, but a single row 0.8× of it in a whole model.

use super::act::QK;

/// Values per super-block.
pub(super) const QK_K: usize = 256;
/// Blocks of 32 per super-block.
const SUB: usize = QK_K / QK;
/// Bytes of one stored Q4_K super-block: `d`, `dmin` (f16), 12 bytes of scales, 128 of quants.
pub(super) const BLOCK_BYTES: usize = 144;

/// ggml's unpacking of the 6-bit scale and minimum of block `j` (0..8) of a super-block.
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Rows `r0..r0 + rows` of the file's Q4_K blocks `raw` (rows of `k` values) as f32 into
/// `out` (`rows·k`), candle's `to_float` to the bit: unpacked into Q4_1 blocks, whose `q·d + m`
/// are candle's values (see the module doc), and dequantized as Q4_1.
pub(super) fn rows_f32(raw: &[u8], (r0, rows, k): (usize, usize, usize), out: &mut [f32]) {
    if rows == 0 {
        return;
    }
    // Eight rows at a time, so a prefill's tile of thousands of rows needs no large buffer.
    let step = 8.min(rows);
    let n = step * k;
    let (mut qs, mut d, mut m) = (vec![0u8; n / 2], vec![0f32; n / QK], vec![0f32; n / QK]);
    for (c, dst) in out[..rows * k].chunks_mut(n).enumerate() {
        unpack_rows(
            raw,
            (r0 + c * step, dst.len() / k, k),
            &mut qs,
            &mut d,
            &mut m,
        );
        for (i, row) in dst.chunks_exact_mut(k).enumerate() {
            super::deq::q4(&qs, &d, Some(&m), i, row);
        }
    }
}

/// Rows `r0..r0 + rows` of the file's Q4_K blocks `raw` (rows of `k` values) into the front of
/// `qs` (Q4's layout, `rows·k/2` bytes), `d` and `m` (a scale and a minimum per block of 32,
/// `rows·k/32` each), candle's values to the bit.
///
/// # Panics
/// If the rows are out of range or the buffers too short.
pub(super) fn unpack_rows(
    raw: &[u8],
    (r0, rows, k): (usize, usize, usize),
    qs: &mut [u8],
    d: &mut [f32],
    m: &mut [f32],
) {
    let nsb = k / QK_K;
    let raw = &raw[r0 * nsb * BLOCK_BYTES..(r0 + rows) * nsb * BLOCK_BYTES];
    let n = rows * k;
    let (qs, d, m) = (&mut qs[..n / 2], &mut d[..n / QK], &mut m[..n / QK]);
    for (((b, q), d), m) in raw
        .chunks_exact(BLOCK_BYTES)
        .zip(qs.chunks_exact_mut(QK_K / 2))
        .zip(d.chunks_exact_mut(SUB))
        .zip(m.chunks_exact_mut(SUB))
    {
        let half = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        let (f, fmin) = (half(0), half(2));
        for j in 0..SUB {
            let (s, mn) = scale_min(j, &b[4..16]);
            d[j] = f * f32::from(s);
            m[j] = -(fmin * f32::from(mn));
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2; `b` is one block, `q` 128 bytes.
            unsafe { repack_avx2(&b[16..BLOCK_BYTES], q) };
            continue;
        }
        repack_plain(&b[16..BLOCK_BYTES], q);
    }
}

/// One super-block's 128 bytes of quants (block `2c + h` in nibble `h` of bytes `32c..32c +
/// 32`) in Q4's layout (16 bytes per block: values `i` and `16 + i` in byte `i`).
fn repack_plain(src: &[u8], q: &mut [u8]) {
    for (c, chunk) in src.chunks_exact(32).enumerate() {
        for h in 0..2 {
            let v = |l: usize| (chunk[l] >> (4 * h)) & 0x0f;
            for i in 0..16 {
                q[32 * c + 16 * h + i] = v(i) | (v(i + 16) << 4);
            }
        }
    }
}

/// [`repack_plain`] with AVX2: per 32 bytes, two blocks' nibbles masked out, each block's
/// second half shifted into the high nibbles of its first.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn repack_avx2(src: &[u8], q: &mut [u8]) {
    use std::arch::x86_64::*;
    assert!(src.len() >= 128 && q.len() >= 128);
    let mask = _mm256_set1_epi8(0x0f);
    for c in 0..4 {
        let x = _mm256_loadu_si256(src.as_ptr().add(32 * c).cast());
        let blocks = [
            _mm256_and_si256(x, mask),
            _mm256_and_si256(_mm256_srli_epi16(x, 4), mask),
        ];
        for (h, v) in blocks.into_iter().enumerate() {
            let packed = _mm_or_si128(
                _mm256_castsi256_si128(v),
                _mm_slli_epi16(_mm256_extracti128_si256(v, 1), 4),
            );
            _mm_storeu_si128(q.as_mut_ptr().add(32 * c + 16 * h).cast(), packed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::backend::quant::tests::candle_blocks;
    use candle_core::quantized::GgmlDType;

    /// Unpacked rows read back (through Q4_1's dequantization, `deq.rs`) as candle dequantizes
    /// the stored blocks, bit for bit, for candle's own quantization and for super-blocks of
    /// arbitrary bytes (any 6-bit scales), with the SIMD re-packing and without.
    #[test]
    fn rows_are_candles_to_the_bit() {
        let (rows, cols) = (5, 512);
        // Noise everywhere but the f16 factors, kept finite.
        for (data, want) in candle_blocks(GgmlDType::Q4K, (rows, cols), |i| i % BLOCK_BYTES < 4) {
            // Rows 1..4, at the front of the buffers.
            let nb = cols / QK;
            let (mut qs, mut d, mut m) = (
                vec![0u8; 3 * cols / 2],
                vec![0f32; 3 * nb],
                vec![0f32; 3 * nb],
            );
            unpack_rows(&data, (1, 3, cols), &mut qs, &mut d, &mut m);
            let mut row = vec![0f32; cols];
            for r in 0..3 {
                super::super::deq::q4(
                    &qs[r * nb * 16..],
                    &d[r * nb..],
                    Some(&m[r * nb..]),
                    0,
                    &mut row,
                );
                let same = row
                    .iter()
                    .zip(&want[(r + 1) * cols..(r + 2) * cols])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "row {r}");
            }
            let mut plain = vec![0u8; QK_K / 2];
            for (b, q) in data[BLOCK_BYTES * 2..]
                .chunks_exact(BLOCK_BYTES)
                .zip(qs.chunks_exact(QK_K / 2))
            {
                repack_plain(&b[16..], &mut plain);
                assert_eq!(plain, q, "SIMD and plain re-packing");
            }
        }
    }
}
