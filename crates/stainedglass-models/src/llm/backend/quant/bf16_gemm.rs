//! Products in bf16 with f32 accumulation: `out = x · Wᵀ` with the weights and the inputs
//! both rounded to bf16 (to nearest, ties to even) and pairs of products summed into f32 by
//! AVX-512 BF16's `vdpbf16ps`. Not the f32 model's numbers: each input keeps 8 significant
//! bits, so a product carries a relative error of about 2⁻⁸ per term (the dot products about
//! 0.1–0.5% of their scale); the callers that use it say when that is acceptable (the client
//! transform with `Precision::Bf16`, checked against its f32 path; a bf16 folder's prefill with
//! `Activations::Bf16`, [`product_bf16_rows`], which packs the stored rows panel by panel as it
//! goes instead of keeping [`Bf16Panels`]).
//!
//! Our own kernel, not the BLAS: oneMKL's `cblas_gemm_bf16bf16f32` runs at its f32 speed on an
//! AVX-512 BF16 CPU without AMX (`bench/blas_bf16.c`: 90–92 vs 94–97 GFLOP/s on one Zen 4
//! core), while the instruction does twice the work of an f32 FMA per cycle (220 vs 110
//! GFLOP/s in a register loop on the same core). Where the CPU lacks AVX-512 BF16 the same
//! products run in portable code (same rounding of the inputs, exact bf16 products, f32 sums
//! in another order).
//!
//! Layout: the weights in panels of [`NR`] rows; within a panel, for each pair of columns
//! `(2p, 2p+1)`, the `NR` rows' two bf16 values side by side (one 32-bit lane per row), so one
//! 64-byte load feeds 16 rows' pair and one broadcast of the input's pair multiplies them all.
//! The inputs are packed the same way, [`MR`] rows at a time (`[block][pair][row in block]`),
//! so a register block's broadcasts read consecutive words. A task computes `MR` input rows
//! against one panel with 24 accumulators in registers.

use half::bf16;
use rayon::prelude::*;

use super::out_ptr::OutPtr;

/// Weight rows per panel (two 16-lane registers).
const NR: usize = 32;
/// Input rows per register block.
const MR: usize = 12;
/// Input rows per task (register blocks a task runs against one panel).
const ROWS_PER_TASK: usize = 4 * MR;

/// A `rows × cols` matrix rounded to bf16, packed for [`Bf16Panels::product`].
pub(crate) struct Bf16Panels {
    rows: usize,
    cols: usize,
    /// Column pairs (`cols` rounded up to even, halved).
    pairs: usize,
    /// `[panel][pair][row in panel]`: `lo = W[r, 2p]`, `hi = W[r, 2p + 1]` (zero past the end),
    /// from `data[off]`.
    data: Vec<u32>,
    /// Where the panels start in `data`: the first 64-byte boundary, so that every 64-byte load
    /// of a panel stays inside one cache line (the allocator's alignment varies between runs,
    /// and loads split across lines made whole runs ~1.5× slower).
    off: usize,
}

fn to_bf16_bits(v: f32) -> u32 {
    u32::from(bf16::from_f32(v).to_bits())
}

impl Bf16Panels {
    /// `w` (`rows × cols`, row-major f32) rounded to bf16 and packed.
    ///
    /// # Panics
    /// If `w` is not `rows × cols` long (callers pass their own matrices).
    pub fn from_f32(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "bf16 panels: {rows} × {cols} matrix");
        let pairs = cols.div_ceil(2);
        let panels = rows.div_ceil(NR);
        let len = panels * pairs * NR;
        let mut data = vec![0u32; len + 15];
        let off = data.as_ptr().align_offset(64).min(15);
        data[off..off + len]
            .par_chunks_mut((pairs * NR).max(1))
            .enumerate()
            .for_each(|(j, panel)| {
                for r in 0..NR.min(rows - j * NR) {
                    let row = &w[(j * NR + r) * cols..(j * NR + r + 1) * cols];
                    for p in 0..pairs {
                        let lo = to_bf16_bits(row[2 * p]);
                        let hi = row.get(2 * p + 1).map_or(0, |&v| to_bf16_bits(v));
                        panel[p * NR + r] = lo | (hi << 16);
                    }
                }
            });
        Self {
            rows,
            cols,
            pairs,
            data,
            off,
        }
    }

    /// Panel `j`'s lanes.
    fn panel(&self, j: usize) -> &[u32] {
        let start = self.off + j * self.pairs * NR;
        &self.data[start..start + self.pairs * NR]
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.data.len()
    }

    /// Row `r` widened to f32 (`out`: `cols` long): the bf16 values the products use.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let (j, i) = (r / NR, r % NR);
        let panel = self.panel(j);
        for (c, o) in out[..self.cols].iter_mut().enumerate() {
            let v = panel[(c / 2) * NR + i];
            let bits = if c % 2 == 0 { v & 0xffff } else { v >> 16 };
            *o = f32::from_bits(bits << 16);
        }
    }

    /// `out (m × rows) = bf16(x) (m × cols) · bf16(W)ᵀ`, added to `out` when `accumulate`.
    ///
    /// # Panics
    /// If `x` is not `m × cols` or `out` not `m × rows`.
    pub fn product(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        self.product_with(x, m, out, accumulate, avx512_bf16());
    }

    /// [`Self::product`] through the AVX-512 BF16 kernel when `fast` (the caller checked the
    /// CPU), else the portable one.
    fn product_with(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool, fast: bool) {
        assert!(
            x.len() == m * self.cols && out.len() == m * self.rows,
            "bf16 product: {} inputs and {} outputs for {m} rows of a {} × {} matrix",
            x.len(),
            out.len(),
            self.rows,
            self.cols
        );
        let xb = pack_inputs(x, m, self.cols, self.pairs);
        let panels = self.rows.div_ceil(NR);
        let chunks = m.div_ceil(ROWS_PER_TASK);
        let out_ptr = OutPtr(out.as_mut_ptr());
        (0..panels * chunks).into_par_iter().for_each(|task| {
            let (j, c) = (task % panels, task / panels);
            let start = c * ROWS_PER_TASK;
            let dst = Dst {
                ptr: &out_ptr,
                ld: self.rows,
                col0: j * NR,
                cols: NR.min(self.rows - j * NR),
                accumulate,
            };
            let end = m.min(start + ROWS_PER_TASK);
            run_panel(&xb, self.pairs, self.panel(j), start..end, &dst, fast);
        });
    }
}

/// Where a panel's results go: columns `col0..col0 + cols` of rows `ld` apart.
struct Dst<'a> {
    ptr: &'a OutPtr,
    ld: usize,
    col0: usize,
    cols: usize,
    accumulate: bool,
}

/// Input rows `rows` (packed in `xb`) against one panel, written to `dst`.
fn run_panel(
    xb: &[u32],
    pairs: usize,
    panel: &[u32],
    rows: std::ops::Range<usize>,
    dst: &Dst<'_>,
    fast: bool,
) {
    let mut r0 = rows.start;
    while r0 < rows.end {
        let n = MR.min(rows.end - r0);
        let mut acc = [[0f32; NR]; MR];
        let xs = &xb[r0 * pairs..(r0 + MR) * pairs];
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: the CPU has AVX-512F and AVX-512 BF16 (the caller checked); `xs`
            // holds a block of MR rows and `panel` `pairs × NR` lanes.
            unsafe { x86::block(xs, panel, pairs, &mut acc) };
        } else {
            block_portable(xs, n, panel, pairs, &mut acc);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = fast;
            block_portable(xs, n, panel, pairs, &mut acc);
        }
        for (i, a) in acc.iter().enumerate().take(n) {
            // SAFETY: columns col0.. col0 + cols of row r0 + i belong to this panel's task
            // alone; the callers checked that `out` holds them.
            let out = unsafe {
                std::slice::from_raw_parts_mut(dst.ptr.at((r0 + i) * dst.ld + dst.col0), dst.cols)
            };
            if dst.accumulate {
                out.iter_mut().zip(a).for_each(|(o, v)| *o += v);
            } else {
                out.copy_from_slice(&a[..dst.cols]);
            }
        }
        r0 += n;
    }
}

thread_local! {
    static PANEL: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `out[i, col0 + r] = bf16(x[i]) · W[r]` (added when `accumulate`) for a matrix stored as bf16
/// bits, row-major (`vals`: `rows × cols`), as it lies: each task packs one panel of [`NR`]
/// rows (a plain interleave: bf16 pairs are already 32-bit words) and runs every input row
/// against it, so a panel is packed once per call. `out`'s rows are `ld` apart. For prefill:
/// the packing is cheap against `m` input rows, not against one.
///
/// # Panics
/// If the slices do not hold the shapes given.
#[allow(clippy::too_many_arguments)] // one product's shapes; grouping them would only rename
pub(crate) fn product_bf16_rows(
    vals: &[u16],
    (rows, cols): (usize, usize),
    x: &[f32],
    m: usize,
    out: &mut [f32],
    (ld, col0): (usize, usize),
    accumulate: bool,
) {
    assert!(
        vals.len() == rows * cols
            && x.len() == m * cols
            && col0 + rows <= ld
            && out.len() >= m * ld,
        "bf16 rows product: {} weights for {rows} × {cols}, {} inputs for {m} rows, \
         columns {col0}..{} of {} outputs {ld} apart",
        vals.len(),
        x.len(),
        col0 + rows,
        out.len()
    );
    let pairs = cols.div_ceil(2);
    let xb = pack_inputs(x, m, cols, pairs);
    let fast = avx512_bf16();
    let out_ptr = OutPtr(out.as_mut_ptr());
    (0..rows.div_ceil(NR)).into_par_iter().for_each(|j| {
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            buf.resize(pairs * NR + 15, 0);
            let off = buf.as_ptr().align_offset(64).min(15);
            let panel = &mut buf[off..off + pairs * NR];
            let nr = NR.min(rows - j * NR);
            pack_panel(&vals[j * NR * cols..(j * NR + nr) * cols], nr, cols, panel);
            let dst = Dst {
                ptr: &out_ptr,
                ld,
                col0: col0 + j * NR,
                cols: nr,
                accumulate,
            };
            run_panel(&xb, pairs, panel, 0..m, &dst, fast);
        })
    });
}

/// `nr` rows of bf16 bits (`rows`: `nr × cols`, row-major) as one panel (`[pair][row]`, rows
/// past `nr` zero). A pair of bf16 values is one little-endian 32-bit word of the row, so with
/// an even `cols` on a 4-byte boundary each row is read as words, one word of every row per
/// pair (the panel written in order); else pair by pair from the 16-bit values.
fn pack_panel(rows: &[u16], nr: usize, cols: usize, panel: &mut [u32]) {
    let pairs = cols.div_ceil(2);
    // SAFETY: any bit pattern is a valid u32; `align_to` only splits at alignment.
    let (pre, words, _) = unsafe { rows.align_to::<u32>() };
    if cfg!(target_endian = "little")
        && cols.is_multiple_of(2)
        && pre.is_empty()
        && words.len() == nr * pairs
    {
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if nr == NR && avx512_bf16() {
            // Blocks of 16 pairs of 16 rows, transposed in registers.
            done = pairs / 16 * 16;
            for p0 in (0..done).step_by(16) {
                for h in [0, 16] {
                    // SAFETY: the CPU has AVX-512F; rows h..h + 16 hold words p0..p0 + 16
                    // (`p0 + 16 <= pairs`), and the panel pairs p0..p0 + 16 hold lanes
                    // h..h + 16 (`panel` is `pairs × NR`).
                    unsafe {
                        x86::transpose16(
                            words.as_ptr().add(h * pairs + p0),
                            pairs,
                            panel.as_mut_ptr().add(p0 * NR + h),
                            NR,
                        )
                    };
                }
            }
        }
        for (p, dst) in panel.chunks_exact_mut(NR).enumerate().skip(done) {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = if r < nr { words[r * pairs + p] } else { 0 };
            }
        }
        return;
    }
    panel.fill(0);
    for r in 0..nr {
        let row = &rows[r * cols..(r + 1) * cols];
        for (p, two) in row.chunks(2).enumerate() {
            let hi = two.get(1).map_or(0, |&v| u32::from(v));
            panel[p * NR + r] = u32::from(two[0]) | (hi << 16);
        }
    }
}

/// `x` (`m × k`) rounded to bf16, as pairs in blocks of [`MR`] rows (`[block][pair][row]`;
/// zero past the end of a row and in the last block's missing rows).
fn pack_inputs(x: &[f32], m: usize, k: usize, pairs: usize) -> Vec<u32> {
    let mut xb = vec![0u32; m.div_ceil(MR) * MR * pairs];
    xb.par_chunks_mut((MR * pairs).max(1))
        .zip(x.par_chunks((MR * k).max(1)))
        .for_each(|(dst, rows)| {
            let mut tmp = vec![0u32; pairs];
            for (i, row) in rows.chunks_exact(k.max(1)).enumerate() {
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut done = 0;
                #[cfg(target_arch = "x86_64")]
                if avx512_bf16() {
                    // SAFETY: the CPU has AVX-512F and AVX-512 BF16.
                    done = unsafe { x86::round_pairs(row, &mut tmp) };
                }
                for p in done..pairs {
                    let lo = to_bf16_bits(row[2 * p]);
                    let hi = row.get(2 * p + 1).map_or(0, |&v| to_bf16_bits(v));
                    tmp[p] = lo | (hi << 16);
                }
                for (p, &v) in tmp.iter().enumerate() {
                    dst[p * MR + i] = v;
                }
            }
        });
    xb
}

/// Whether this CPU runs the AVX-512 BF16 kernel (checked once).
fn avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The register block in portable code: exact bf16 products summed in f32.
fn block_portable(xs: &[u32], rows: usize, panel: &[u32], pairs: usize, acc: &mut [[f32; NR]; MR]) {
    let wide = |bits: u32| f32::from_bits(bits << 16);
    for (i, a) in acc.iter_mut().enumerate().take(rows) {
        for p in 0..pairs {
            let xv = xs[p * MR + i];
            let (x0, x1) = (wide(xv & 0xffff), wide(xv >> 16));
            for (q, o) in a.iter_mut().enumerate() {
                let w = panel[p * NR + q];
                *o += x0 * wide(w & 0xffff) + x1 * wide(w >> 16);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Transposes 16 × 16 words: row `i` of `src` (16 words from `src + i·ld_src`) becomes
    /// lane `i` of the 16 words at `dst + j·ld_dst` for every `j`. Unpacks within 128-bit lanes
    /// give each lane one column of 4 rows; two rounds of lane shuffles gather a column's four
    /// lanes.
    ///
    /// # Safety
    /// The CPU has AVX-512F; the 16 source rows and 16 destination rows of 16 words exist.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16(src: *const u32, ld_src: usize, dst: *mut u32, ld_dst: usize) {
        // SAFETY: the caller guarantees the 16 rows of 16 words on both sides.
        unsafe {
            let r: [__m512i; 16] =
                std::array::from_fn(|i| _mm512_loadu_si512(src.add(i * ld_src).cast()));
            // u[g][c], lane k: column 4k + c of rows 4g..4g + 4.
            let mut u = [[_mm512_setzero_si512(); 4]; 4];
            for g in 0..4 {
                let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
                let (t0, t1) = (_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
                let (t2, t3) = (_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
                u[g] = [
                    _mm512_unpacklo_epi64(t0, t2),
                    _mm512_unpackhi_epi64(t0, t2),
                    _mm512_unpacklo_epi64(t1, t3),
                    _mm512_unpackhi_epi64(t1, t3),
                ];
            }
            #[allow(clippy::needless_range_loop)] // `c` picks the same column of four groups
            for c in 0..4 {
                // Lanes (0, 1) and (2, 3) of groups 0, 1 and of groups 2, 3.
                let x01 = _mm512_shuffle_i32x4::<0x44>(u[0][c], u[1][c]);
                let y01 = _mm512_shuffle_i32x4::<0xEE>(u[0][c], u[1][c]);
                let x23 = _mm512_shuffle_i32x4::<0x44>(u[2][c], u[3][c]);
                let y23 = _mm512_shuffle_i32x4::<0xEE>(u[2][c], u[3][c]);
                let cols = [
                    _mm512_shuffle_i32x4::<0x88>(x01, x23),
                    _mm512_shuffle_i32x4::<0xDD>(x01, x23),
                    _mm512_shuffle_i32x4::<0x88>(y01, y23),
                    _mm512_shuffle_i32x4::<0xDD>(y01, y23),
                ];
                for (k, v) in cols.into_iter().enumerate() {
                    _mm512_storeu_si512(dst.add((4 * k + c) * ld_dst).cast(), v);
                }
            }
        }
    }

    use super::{MR, NR};

    /// `acc[i][q] = Σ_p x[i, p] · W[q, p]` (pairs) for one block of `MR` input rows (`xs`:
    /// `[pair][row]`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(xs: &[u32], panel: &[u32], pairs: usize, acc: &mut [[f32; NR]; MR]) {
        const R: usize = MR;
        assert!(xs.len() >= R * pairs && panel.len() >= pairs * NR);
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        let (x, w) = (xs.as_ptr(), panel.as_ptr());
        for p in 0..pairs {
            // SAFETY: `p < pairs`, so the loads stay inside `panel` and `xs` (asserted above).
            unsafe {
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(p * NR).cast()));
                let w1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(w.add(p * NR + 16).cast()));
                for i in 0..R {
                    let b: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*x.add(p * R + i) as i32));
                    lo[i] = _mm512_dpbf16_ps(lo[i], b, w0);
                    hi[i] = _mm512_dpbf16_ps(hi[i], b, w1);
                }
            }
        }
        for i in 0..R {
            // SAFETY: each row of `acc` holds NR = 32 floats.
            unsafe {
                _mm512_storeu_ps(acc[i].as_mut_ptr(), lo[i]);
                _mm512_storeu_ps(acc[i].as_mut_ptr().add(16), hi[i]);
            }
        }
    }

    /// Rounds the leading multiple of 32 values of `row` to bf16 pairs in `dst`; returns the
    /// pairs written.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_pairs(row: &[f32], dst: &mut [u32]) -> usize {
        let blocks = row.len() / 32;
        for b in 0..blocks {
            // SAFETY: 32 values from `32·b` are inside `row`, 16 pairs inside `dst`.
            unsafe {
                let lo = _mm512_loadu_ps(row.as_ptr().add(32 * b));
                let hi = _mm512_loadu_ps(row.as_ptr().add(32 * b + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().add(16 * b).cast(), v);
            }
        }
        16 * blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(n: usize, k: usize, seed: u32) -> Vec<f32> {
        (0..n * k)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8;
                (v as f32 / (1u32 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// The product of the bf16-rounded values, summed in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
        let r = |v: f32| f64::from(bf16::from_f32(v).to_f32());
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|c| r(x[i * k + c]) * r(w[j * k + c])).sum();
            }
        }
        out
    }

    #[test]
    fn product_is_the_bf16_rounded_product_for_every_tail() {
        // Row counts around the register block and task, column counts odd and around a
        // panel, input widths odd and around the 32-value rounding block.
        for (m, n, k) in [
            (1, 1, 1),
            (5, 33, 7),
            (13, 32, 64),
            (49, 70, 97),
            (12, 64, 576),
            (0, 3, 4),
        ] {
            let (x, w) = (matrix(m, k, 1), matrix(n, k, 2));
            let p = Bf16Panels::from_f32(&w, n, k);
            let want = reference(&x, &w, m, n, k);
            let check = |got: &[f32], path: &str| {
                for (i, (&o, &r)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(o) - r).abs() <= 1e-5 * (k as f64).sqrt() + 1e-6 * r.abs(),
                        "{path} ({m}, {n}, {k}) element {i}: {o} vs {r}"
                    );
                }
            };
            let mut portable = vec![1.0f32; m * n];
            p.product_with(&x, m, &mut portable, false, false);
            check(&portable, "portable");
            let mut out = vec![1.0f32; m * n];
            p.product(&x, m, &mut out, false);
            check(&out, "default");
            let mut acc = vec![1.0f32; m * n];
            p.product(&x, m, &mut acc, true);
            for (a, o) in acc.iter().zip(&out) {
                assert!((a - (o + 1.0)).abs() <= 1e-5, "accumulate: {a} vs {o} + 1");
            }
        }
    }

    /// bf16 rows multiplied as they lie are the packed product of the same weights, bit for
    /// bit, written into their own columns of a wider output (the others untouched), with
    /// tails of rows, odd columns and accumulation.
    #[test]
    fn rows_as_stored_are_the_packed_product_in_their_columns() {
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (40, 70, 64), (25, 32, 129)] {
            let w: Vec<f32> = matrix(n, k, 3)
                .iter()
                .map(|&v| bf16::from_f32(v).to_f32())
                .collect();
            let bits: Vec<u16> = w.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let x = matrix(m, k, 4);
            let mut want = vec![0f32; m * n];
            Bf16Panels::from_f32(&w, n, k).product(&x, m, &mut want, false);
            for accumulate in [false, true] {
                let (ld, col0) = (n + 5, 3);
                let mut got = vec![1f32; m * ld];
                product_bf16_rows(&bits, (n, k), &x, m, &mut got, (ld, col0), accumulate);
                for i in 0..m {
                    for c in 0..ld {
                        let g = got[i * ld + c];
                        if (col0..col0 + n).contains(&c) {
                            let w = want[i * n + c - col0] + if accumulate { 1.0 } else { 0.0 };
                            assert_eq!(g, w, "{m}×{n}×{k} row {i} col {c}");
                        } else {
                            assert_eq!(g, 1.0, "column {c} is not this matrix's");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn product_is_within_bf16_precision_of_f32() {
        let (m, n, k) = (40, 96, 576);
        let (x, w) = (matrix(m, k, 3), matrix(n, k, 4));
        let p = Bf16Panels::from_f32(&w, n, k);
        let mut out = vec![0.0f32; m * n];
        p.product(&x, m, &mut out, false);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|c| f64::from(x[i * k + c]) * f64::from(w[j * k + c]))
                    .sum();
                num += (f64::from(out[i * n + j]) - exact).powi(2);
                den += exact * exact;
            }
        }
        let rel = (num / den).sqrt();
        assert!(rel < 5e-3, "relative error {rel}");
        assert!(rel > 1e-5, "relative error {rel}: not rounded to bf16?");
    }

    /// Throughput against the f32 BLAS product (`cargo test --release -p stainedglass-models
    /// bf16_speed -- --ignored --nocapture`): a measurement, not a check.
    #[test]
    #[ignore]
    fn bf16_speed() {
        use crate::llm::backend::blas::par_sgemm;
        for (m, n, k) in [
            (256, 576, 576),
            (256, 3072, 576),
            (256, 576, 1536),
            (256, 960, 576),
        ] {
            let (x, w) = (matrix(m, k, 1), matrix(n, k, 2));
            let p = Bf16Panels::from_f32(&w, n, k);
            let mut out = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                for _ in 0..20 {
                    p.product(&x, m, &mut out, false);
                }
                let bf = flops * 20.0 / t.elapsed().as_secs_f64() / 1e9;
                let t = std::time::Instant::now();
                for _ in 0..20 {
                    par_sgemm(&x, &w, &mut out, (m, n, k), true, 0.0);
                }
                let f = flops * 20.0 / t.elapsed().as_secs_f64() / 1e9;
                println!("{{\"m\":{m},\"n\":{n},\"k\":{k},\"bf16_gflops\":{bf:.1},\"f32_blas_gflops\":{f:.1},\"ratio\":{:.2}}}", bf / f);
            }
        }
    }

    #[test]
    fn rows_widen_to_the_rounded_weights() {
        let (n, k) = (35, 9);
        let w = matrix(n, k, 5);
        let p = Bf16Panels::from_f32(&w, n, k);
        let mut row = vec![0.0; k];
        for r in [0, 31, 32, 34] {
            p.row_f32(r, &mut row);
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(v, bf16::from_f32(w[r * k + c]).to_f32());
            }
        }
    }

    #[test]
    fn portable_and_avx512_blocks_agree() {
        if !avx512_bf16() {
            eprintln!("no AVX-512 BF16 on this CPU: only the portable kernel is tested");
            return;
        }
        let pairs = 37;
        let xs: Vec<u32> = matrix(MR, pairs, 6)
            .iter()
            .zip(matrix(MR, pairs, 7))
            .map(|(&a, b)| to_bf16_bits(a) | (to_bf16_bits(b) << 16))
            .collect();
        let panel: Vec<u32> = matrix(NR, pairs, 8)
            .iter()
            .zip(matrix(NR, pairs, 9))
            .map(|(&a, b)| to_bf16_bits(a) | (to_bf16_bits(b) << 16))
            .collect();
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let (mut a, mut b) = ([[0f32; NR]; MR], [[0f32; NR]; MR]);
        block_portable(&xs, MR, &panel, pairs, &mut a);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: checked above.
        unsafe {
            x86::block(&xs, &panel, pairs, &mut b)
        };
        for i in 0..MR {
            for q in 0..NR {
                assert!((a[i][q] - b[i][q]).abs() < 1e-4, "{i},{q}");
            }
        }
    }
}
