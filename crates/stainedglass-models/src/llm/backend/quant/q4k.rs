//! Q4_K rows run by our Q4 kernels. A Q4_K super-block of 256 values is eight blocks of 32,
//! each `value = d·sc·q − dmin·mn` with 6-bit `sc` and `mn`: a Q4_1 block whose scale
//! `d·sc` and minimum `−dmin·mn` are products of the super-block's f16 factors and the
//! 6-bit integers. Both products are exact in f32 (11 + 6 bits), and `q·(d·sc) + (−dmin·mn)`
//! is candle's `d·sc·q − dmin·mn` to the bit, so the Q4_1 kernels (`dot.rs`, `dot512.rs`,
//! `tile16.rs`, the f32 path's `deq.rs`) compute on exactly the values candle dequantizes.
//!
//! The file's layout holds two blocks per 32 bytes (one in the low nibbles, the next in the
//! high); it is re-packed once at load into Q4's (16 bytes per block, values `i` and `16 + i`
//! in byte `i`). The 6-bit scales are unpacked to one byte each and the super-block factors
//! kept as f32: 152 bytes per 256 values against the file's 144 (+5.6%). A product expands
//! the scales of the rows it is about to multiply ([`Q4K::expand`]: 16 rows at a time, a
//! multiply each, shared by every activation row), instead of holding f32 scales (6 bits per
//! weight, +33%), which a memory-bound decode of a large model would pay for on every token.

use super::act::QK;

/// Values per super-block.
pub(super) const QK_K: usize = 256;
/// Blocks of 32 per super-block.
const SUB: usize = QK_K / QK;
/// Bytes of one stored Q4_K super-block: `d`, `dmin` (f16), 12 bytes of scales, 128 of quants.
pub(super) const BLOCK_BYTES: usize = 144;

/// Rows of Q4_K, re-packed (see the module doc).
pub(crate) struct Q4K {
    pub(super) rows: usize,
    /// Q4's layout: 16 bytes per block of 32.
    pub(super) qs: Vec<u8>,
    /// 6-bit scale and minimum of each block of 32.
    sc: Vec<u8>,
    mn: Vec<u8>,
    /// Each super-block's factors.
    d: Vec<f32>,
    dmin: Vec<f32>,
}

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

impl Q4K {
    /// An empty part for `rows` rows of `cols` values (`cols` a multiple of 256), filled by
    /// [`Q4K::push_block`].
    pub(super) fn with_capacity(rows: usize, cols: usize) -> Self {
        let (nsb, nb) = (rows * cols / QK_K, rows * cols / QK);
        Self {
            rows,
            qs: Vec::with_capacity(nb * 16),
            sc: Vec::with_capacity(nb),
            mn: Vec::with_capacity(nb),
            d: Vec::with_capacity(nsb),
            dmin: Vec::with_capacity(nsb),
        }
    }

    /// Appends one stored super-block (`BLOCK_BYTES` bytes).
    pub(super) fn push_block(&mut self, b: &[u8]) {
        let half = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
        self.d.push(half(0));
        self.dmin.push(half(2));
        let (scales, q) = (&b[4..16], &b[16..BLOCK_BYTES]);
        for j in 0..SUB {
            let (s, m) = scale_min(j, scales);
            self.sc.push(s);
            self.mn.push(m);
        }
        // Block `2c + h` is nibble `h` of bytes `32c..32c + 32`.
        for chunk in q.chunks_exact(32) {
            for shift in [0, 4] {
                let v = |l: usize| (chunk[l] >> shift) & 0x0f;
                self.qs.extend((0..16).map(|i| v(i) | (v(i + 16) << 4)));
            }
        }
    }

    /// Whether every super-block factor is finite (then so is every value).
    pub(super) fn finite(&self) -> bool {
        self.d.iter().chain(&self.dmin).all(|v| v.is_finite())
    }

    pub(super) fn bytes(&self) -> usize {
        self.qs.len() + self.sc.len() + self.mn.len() + 4 * (self.d.len() + self.dmin.len())
    }

    /// The Q4_1 scales and minimums of rows `r0..r0 + rows` (`nb` blocks per row) into the
    /// front of `d` and `m`, as candle computes them (`d·sc`, and `−(dmin·mn)`).
    ///
    /// # Panics
    /// If the rows are out of range or the buffers shorter than `rows · nb`.
    pub(super) fn expand(&self, r0: usize, rows: usize, nb: usize, d: &mut [f32], m: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.expand_avx2(r0, rows, nb, d, m) };
        }
        self.expand_plain(r0, rows, nb, d, m)
    }

    /// [`Q4K::expand`] with AVX2: eight blocks (one super-block) per step, the same
    /// operations (`d·sc`; `(−dmin)·mn`, which is `−(dmin·mn)` exactly).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn expand_avx2(&self, r0: usize, rows: usize, nb: usize, d: &mut [f32], m: &mut [f32]) {
        use std::arch::x86_64::*;
        let (b0, n) = (r0 * nb, rows * nb);
        let (sc, mn) = (&self.sc[b0..b0 + n], &self.mn[b0..b0 + n]);
        let (d, m) = (&mut d[..n], &mut m[..n]);
        let s0 = b0 / SUB;
        let widen = |p: &[u8]| {
            let p: &[u8; SUB] = p.try_into().unwrap_or_else(|_| unreachable!("chunks of 8"));
            // SAFETY: AVX2 (this function's feature); `p` is 8 bytes.
            unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.as_ptr().cast()))) }
        };
        for (i, ((ds, ms), (scs, mns))) in d
            .chunks_exact_mut(SUB)
            .zip(m.chunks_exact_mut(SUB))
            .zip(sc.chunks_exact(SUB).zip(mn.chunks_exact(SUB)))
            .enumerate()
        {
            let (f, fm) = (self.d[s0 + i], -self.dmin[s0 + i]);
            // SAFETY: AVX2; `ds` and `ms` are 8 floats long.
            unsafe {
                _mm256_storeu_ps(
                    ds.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_set1_ps(f), widen(scs)),
                );
                _mm256_storeu_ps(
                    ms.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_set1_ps(fm), widen(mns)),
                );
            }
        }
    }

    #[inline(always)]
    fn expand_plain(&self, r0: usize, rows: usize, nb: usize, d: &mut [f32], m: &mut [f32]) {
        let (b0, n) = (r0 * nb, rows * nb);
        let (sc, mn) = (&self.sc[b0..b0 + n], &self.mn[b0..b0 + n]);
        let s0 = b0 / SUB;
        for (i, ((ds, ms), (scs, mns))) in d[..n]
            .chunks_exact_mut(SUB)
            .zip(m[..n].chunks_exact_mut(SUB))
            .zip(sc.chunks_exact(SUB).zip(mn.chunks_exact(SUB)))
            .enumerate()
        {
            let (f, fm) = (self.d[s0 + i], self.dmin[s0 + i]);
            for j in 0..SUB {
                ds[j] = f * f32::from(scs[j]);
                ms[j] = -(fm * f32::from(mns[j]));
            }
        }
    }

    /// Row `row` as f32 values (`out`: the row's `cols` values), candle's to the bit.
    pub(super) fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let nb = out.len() / QK;
        let (mut d, mut m) = (vec![0f32; nb], vec![0f32; nb]);
        self.expand(row, 1, nb, &mut d, &mut m);
        super::deq::q4(
            &self.qs[row * nb * 16..(row + 1) * nb * 16],
            &d,
            Some(&m),
            0,
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    /// Every row reads back as candle dequantizes the stored blocks, bit for bit, for
    /// candle's own quantization and for super-blocks of arbitrary bytes (any 6-bit scales).
    #[test]
    fn rows_are_candles_to_the_bit() {
        let (rows, cols) = (5, 512);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).expect("tensor");
        let quantized = QTensor::quantize(&t, GgmlDType::Q4K)
            .and_then(|q| q.data().map(|d| d.to_vec()))
            .expect("quantize");
        let mut noise = quantized.clone();
        let mut h = 0x2545_f491_4f6c_dd1du64;
        for (i, v) in noise.iter_mut().enumerate() {
            h ^= h << 13;
            h ^= h >> 7;
            h ^= h << 17;
            // Keep the f16 factors (bytes 0..4 of each block) finite.
            if i % BLOCK_BYTES >= 4 {
                *v = h as u8;
            }
        }
        for data in [quantized, noise] {
            let q = QTensor::new(
                candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Borrowed(&data),
                    &Device::Cpu,
                    GgmlDType::Q4K,
                )
                .expect("storage"),
                (rows, cols),
            )
            .expect("qtensor");
            let want = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("dequantize");
            let mut part = Q4K::with_capacity(rows, cols);
            data.chunks_exact(BLOCK_BYTES)
                .for_each(|b| part.push_block(b));
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
