//! Q6_K rows run by our Q8 kernels. A Q6_K super-block of 256 values is sixteen groups of 16,
//! each `value = d·sc·(q − 32)` with a 6-bit `q`, a signed 8-bit `sc` and the super-block's
//! f16 `d`. Re-packed once at load as signed bytes `q − 32` (−32..=31) in Q8_0's layout (32 per
//! block) with one f32 scale `d·sc` per group of 16 — two per block of 32. `d·sc` is exact in
//! f32 (11 + 8 bits) and `(d·sc)·(q − 32)` is candle's `d · sc · (q − 32)` to the bit, so the
//! f32 path (`deq.rs`'s buffer) computes on exactly the values candle dequantizes.
//!
//! The 8-bit product is Q8_0's with one change: the 32-bit lanes of a block's integer products
//! (`vpdpbusd`, or `vpmaddubsw` + `vpmaddwd`) hold values `4i..4i + 4`, so lanes 0–3 are the
//! first group of 16 and lanes 4–7 the second; each block's scale is a vector of the two groups'
//! scales (four lanes each) instead of one broadcast (`dot.rs`'s `q6_rows`). Candle's own Q6_K
//! products (activations quantized per 256, one row at a time) reused no weights across a
//! decoding batch, and a fused matrix with a Q6_K part (a Q4_K_M model's `[q | k | v]`) had to
//! prefill in f32 past 16 rows.
//!
//! Memory: 320 bytes per 256 values against the file's 210 (1.52×): unpacking the 6 bits and
//! the 8-bit scales in the kernel would keep the file's size, at a few more instructions per
//! block; a Q4_K_M file holds about a quarter of its weights as Q6_K, so about +13% in all.

/// Values per super-block.
pub(super) const QK_K: usize = 256;
/// Values per group sharing a scale.
pub(super) const GROUP: usize = 16;
/// Bytes of one stored Q6_K super-block: 128 of low nibbles, 64 of high bit pairs, 16 scales,
/// the f16 `d`.
pub(super) const BLOCK_BYTES: usize = 210;

/// Rows of Q6_K, re-packed (see the module doc).
pub(crate) struct Q6K {
    pub(super) rows: usize,
    /// `q − 32` as signed bytes, in order (Q8_0's layout: 32 per block).
    pub(super) qs: Vec<i8>,
    /// `d·sc` of each group of 16 values (two per block of 32).
    pub(super) ds: Vec<f32>,
}

impl Q6K {
    /// An empty part for `rows` rows of `cols` values (`cols` a multiple of 256), filled by
    /// [`Q6K::push_block`].
    pub(super) fn with_capacity(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            qs: Vec::with_capacity(rows * cols),
            ds: Vec::with_capacity(rows * cols / GROUP),
        }
    }

    /// Appends one stored super-block (`BLOCK_BYTES` bytes): ggml's unpacking, in order.
    pub(super) fn push_block(&mut self, b: &[u8]) {
        let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
        let d = half::f16::from_le_bytes([b[208], b[209]]).to_f32();
        self.ds.extend(sc.iter().map(|&s| d * f32::from(s as i8)));
        // Each half of 128 values: 64 bytes of low nibbles, 32 of high bit pairs; value
        // `32j + l` (j = 0..4) takes nibble j / 2 of byte `l + 32·(j % 2)` and bits 2j..2j + 2
        // of high byte `l`.
        for half in 0..2 {
            let (ql, qh) = (
                &ql[64 * half..64 * half + 64],
                &qh[32 * half..32 * half + 32],
            );
            for j in 0..4 {
                self.qs.extend((0..32).map(|l| {
                    let lo = (ql[l + 32 * (j % 2)] >> (4 * (j / 2))) & 0x0f;
                    let hi = (qh[l] >> (2 * j)) & 3;
                    ((lo | (hi << 4)) as i8) - 32
                }));
            }
        }
    }

    /// Whether every scale is finite (then so is every value).
    pub(super) fn finite(&self) -> bool {
        self.ds.iter().all(|v| v.is_finite())
    }

    pub(super) fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.ds.len()
    }

    /// Row `row` as f32 values (`out`: the row's `cols` values), candle's to the bit.
    pub(super) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let k = out.len();
        let (qs, ds) = (
            &self.qs[row * k..(row + 1) * k],
            &self.ds[row * k / GROUP..(row + 1) * k / GROUP],
        );
        for ((o, q), d) in out
            .chunks_exact_mut(GROUP)
            .zip(qs.chunks_exact(GROUP))
            .zip(ds)
        {
            for (o, &q) in o.iter_mut().zip(q) {
                *o = d * f32::from(q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Every row reads back as candle dequantizes the stored blocks, bit for bit, for
    /// candle's own quantization and for super-blocks of arbitrary bytes (any scales, any
    /// 6-bit values).
    #[test]
    fn rows_are_candles_to_the_bit() {
        let (rows, cols) = (5, 512);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).expect("tensor");
        let quantized = QTensor::quantize(&t, GgmlDType::Q6K)
            .and_then(|q| q.data().map(|d| d.to_vec()))
            .expect("quantize");
        assert_eq!(quantized.len(), rows * cols / QK_K * BLOCK_BYTES);
        let mut noise = quantized.clone();
        let mut h = 0x2545_f491_4f6c_dd1du64;
        for (i, v) in noise.iter_mut().enumerate() {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            // Keep the f16 factor (the last two bytes of each block) finite.
            if i % BLOCK_BYTES < 208 {
                *v = h as u8;
            }
        }
        for data in [quantized, noise] {
            let q = QTensor::new(
                candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Borrowed(&data),
                    &Device::Cpu,
                    GgmlDType::Q6K,
                )
                .expect("storage"),
                (rows, cols),
            )
            .expect("qtensor");
            let want = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("dequantize");
            let mut part = Q6K::with_capacity(rows, cols);
            data.chunks_exact(BLOCK_BYTES)
                .for_each(|b| part.push_block(b));
            assert!(part.finite());
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                part.dequantize_row(r, &mut row);
                let same = row
                    .iter()
                    .zip(&want[r * cols..(r + 1) * cols])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "row {r}");
            }
        }
    }
}
