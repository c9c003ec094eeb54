//! Q6_K rows for our Q8 kernels. A Q6_K super-block of 256 values is sixteen groups of 16,
//! each `value = d·sc·(q − 32)` with a 6-bit `q`, a signed 8-bit `sc` and the super-block's
//! f16 `d`. The matrix keeps the file's blocks (candle's `BlockQ6K`, `ggml.rs`): a single
//! activation row (one decoding request) runs candle's dot product, which reads the 210 bytes
//! per 256 values once and applies the scales in integers. For more rows a product unpacks
//! 64 weight rows at a time ([`unpack_rows`]) into signed bytes `q − 32` (Q8_0's layout, 32
//! per block) and f32 group scales `d·sc` (two per block), shared by every activation row, and
//! runs the Q8 tiles with one change (`dot.rs`'s `q6_rows`): the 32-bit lanes of a block's
//! integer products (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd`) hold values `4i..4i + 4`, so
//! lanes 0–3 are the first group of 16 and lanes 4–7 the second, and each block's scale is a
//! vector of the two groups' scales instead of one broadcast. `d·sc` is exact in f32 (11 + 8
//! bits), so the values are candle's to the bit.
//!
//! Measured on the way (`docs/serving/stored-weights.md`): holding the unpacked bytes (320
//! bytes per 256 values) made batches 2× candle's speed but single-request decoding slower, by
//! the bytes it read; a re-packed 6-bit form (212 bytes) kept the size, but unpacking in the
//! kernel made a single row 1.4× slower than candle's. Candle's own products reuse no weights
//! across a batch's rows (32–35 GMAC/s at any row count on two cores), which is what the
//! unpacked tiles fix.

/// Values per super-block.
pub(super) const QK_K: usize = 256;
/// Bytes of one stored Q6_K super-block: 128 of low nibbles, 64 of high bit pairs, 16 scales,
/// the f16 `d`.
pub(super) const BLOCK_BYTES: usize = 210;

/// Rows `r0..r0 + rows` of the file's Q6_K blocks `raw` (rows of `k` values) as f32 into
/// `out` (`rows·k`), candle's `to_float` to the bit: `(q − 32)·(d·sc)` with `d·sc` exact.
/// Unpacked with the AVX2 kernel where candle's `to_float` is a scalar loop (55% of a Q4_K_M
/// model's decoding time with f32 activations, before).
pub(super) fn rows_f32(raw: &[u8], (r0, rows, k): (usize, usize, usize), out: &mut [f32]) {
    if rows == 0 {
        return;
    }
    // Eight rows at a time, so a prefill's tile of thousands of rows needs no large buffer.
    let step = 8.min(rows);
    let (mut qs, mut ds) = (vec![0i8; step * k], vec![0f32; step * k / 16]);
    for (c, dst) in out[..rows * k].chunks_mut(step * k).enumerate() {
        let n = dst.len() / k;
        unpack_rows(raw, (r0 + c * step, n, k), &mut qs, &mut ds);
        for ((o, q), &d) in dst.chunks_exact_mut(16).zip(qs.chunks_exact(16)).zip(&ds) {
            for (o, &q) in o.iter_mut().zip(q) {
                *o = f32::from(q) * d;
            }
        }
    }
}

/// Rows `r0..r0 + rows` of the file's Q6_K blocks `raw` (rows of `k` values) as signed bytes
/// `q − 32` into the front of `qs` (`rows·k`) and group scales `d·sc` into the front of `ds`
/// (`rows·k/16`), candle's values to the bit.
///
/// # Panics
/// If the rows are out of range or the buffers too short.
pub(super) fn unpack_rows(
    raw: &[u8],
    (r0, rows, k): (usize, usize, usize),
    qs: &mut [i8],
    ds: &mut [f32],
) {
    let nsb = k / QK_K;
    let raw = &raw[r0 * nsb * BLOCK_BYTES..(r0 + rows) * nsb * BLOCK_BYTES];
    let (qs, ds) = (&mut qs[..rows * k], &mut ds[..rows * k / 16]);
    for ((b, q), d) in raw
        .chunks_exact(BLOCK_BYTES)
        .zip(qs.chunks_exact_mut(QK_K))
        .zip(ds.chunks_exact_mut(QK_K / 16))
    {
        let f = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
        for (d, &s) in d.iter_mut().zip(&b[192..208]) {
            *d = f * f32::from(s as i8);
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2; `b` is one block, `q` 256 values.
            unsafe { unpack_avx2(b, q) };
            continue;
        }
        unpack_plain(b, q);
    }
}

/// One block's `q − 32` in order: value `128h + 32j + l` (half `h`, `j` = 0..4) takes nibble
/// `j / 2` of low byte `64h + l + 32·(j % 2)` and bits `2j..2j + 2` of high byte `32h + l`
/// (ggml's layout).
fn unpack_plain(b: &[u8], q: &mut [i8]) {
    let (ql, qh) = (&b[..128], &b[128..192]);
    for h in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                let lo = (ql[64 * h + l + 32 * (j % 2)] >> (4 * (j / 2))) & 0x0f;
                let hi = (qh[32 * h + l] >> (2 * j)) & 3;
                q[128 * h + 32 * j + l] = (lo | (hi << 4)) as i8 - 32;
            }
        }
    }
}

/// [`unpack_plain`] with AVX2: 32 values per step, from 32 low bytes and the 32 high bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn unpack_avx2(b: &[u8], q: &mut [i8]) {
    use std::arch::x86_64::*;
    assert!(b.len() >= 192 && q.len() >= QK_K);
    let (mask4, mask2, off) = (
        _mm256_set1_epi8(0x0f),
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(32),
    );
    for h in 0..2 {
        let l0 = _mm256_loadu_si256(b.as_ptr().add(64 * h).cast());
        let l1 = _mm256_loadu_si256(b.as_ptr().add(64 * h + 32).cast());
        let hb = _mm256_loadu_si256(b.as_ptr().add(128 + 32 * h).cast());
        // Nibble j / 2 of l0 (j even) or l1 (j odd); 16-bit shifts, then a byte mask.
        let lows = [
            _mm256_and_si256(l0, mask4),
            _mm256_and_si256(l1, mask4),
            _mm256_and_si256(_mm256_srli_epi16(l0, 4), mask4),
            _mm256_and_si256(_mm256_srli_epi16(l1, 4), mask4),
        ];
        let highs = [
            _mm256_and_si256(hb, mask2),
            _mm256_and_si256(_mm256_srli_epi16(hb, 2), mask2),
            _mm256_and_si256(_mm256_srli_epi16(hb, 4), mask2),
            _mm256_and_si256(_mm256_srli_epi16(hb, 6), mask2),
        ];
        for (j, (lo, hi)) in lows.into_iter().zip(highs).enumerate() {
            let v = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
            _mm256_storeu_si256(
                q.as_mut_ptr().add(128 * h + 32 * j).cast(),
                _mm256_sub_epi8(v, off),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::backend::quant::tests::candle_blocks;
    use candle_core::quantized::GgmlDType;

    /// Unpacked rows times their group scales are candle's dequantized values bit for bit,
    /// for candle's own quantization and for blocks of arbitrary bytes (any scales, any 6-bit
    /// values), with the SIMD unpacking and without.
    #[test]
    fn rows_are_candles_to_the_bit() {
        let (rows, cols) = (5, 512);
        // Noise everywhere but the f16 factors, kept finite.
        for (data, want) in candle_blocks(GgmlDType::Q6K, (rows, cols), |i| i % BLOCK_BYTES >= 208)
        {
            assert_eq!(data.len(), rows * cols / QK_K * BLOCK_BYTES);
            // Rows 1..4, at the front of the buffers.
            let (mut qs, mut ds) = (vec![0i8; 3 * cols], vec![0f32; 3 * cols / 16]);
            unpack_rows(&data, (1, 3, cols), &mut qs, &mut ds);
            let got: Vec<f32> = qs
                .iter()
                .enumerate()
                .map(|(i, &q)| ds[i / 16] * f32::from(q))
                .collect();
            let same = got
                .iter()
                .zip(&want[cols..4 * cols])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same);
            let mut plain = vec![0i8; QK_K];
            for (b, q) in data[BLOCK_BYTES * 2..]
                .chunks_exact(BLOCK_BYTES)
                .zip(qs.chunks_exact(QK_K))
            {
                unpack_plain(b, &mut plain);
                assert_eq!(plain, q, "SIMD and plain unpacking");
            }
        }
    }
}
