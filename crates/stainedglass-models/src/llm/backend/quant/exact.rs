//! The f32 product of stored weights: rows dequantized with candle's arithmetic (`deq.rs`; Q4_K
//! and Q6_K through `q4k.rs` and `q6k.rs`, candle's values to the bit) into a per-thread buffer and multiplied by the f32 model's own kernels in the f32 model's order —
//! for a few activation rows `gemv::dot_rows` over the same 8-row passes as `gemv::gemv_rows`
//! (on AVX-512, `exact512.rs`'s pass, the same arithmetic), for more the BLAS over the same column split as `blas::par_sgemm`. A
//! decode step therefore gives the f32 model's logits bit for bit (tested), while reading
//! 4–8× fewer bytes of weights. What is ever in f32 is a per-thread buffer: 8 rows for
//! decoding, a task's whole column block for prefill (up to 16 MiB per thread; beyond that,
//! tiles of 128 rows, whose bit-equality with `par_sgemm` then depends on the BLAS).

use std::cell::RefCell;

use super::act::QK;
#[cfg(target_arch = "x86_64")]
use super::dot::Isa;
use super::out_ptr::OutPtr;
#[cfg(target_arch = "x86_64")]
use super::Part;
use super::{HalfKind, QMatrix};
use crate::llm::backend::blas::{for_column_blocks, sgemm_strided};
use crate::llm::backend::gemv::{dot, dot_rows};
use crate::llm::backend::ops::GEMV_MAX_ROWS;
#[cfg(target_arch = "x86_64")]
use candle_core::quantized::GgmlDType;

/// Weight rows per pass, as `gemv::gemv_rows` has them, and per parallel task. Each row's sum
/// depends only on whether it lies in a pass of 8 (`dot_rows`) or in a block's tail (`dot`),
/// and with any multiple of 8 rows per task the tail is the matrix's last `rows % 8`, as in
/// `gemv_rows`'s blocks of 64. candle's pool hands tasks out in chunks of an eighth of a
/// thread's share: with 16 rows a task the bundled model's 576-row products split 288 : 288
/// between two threads, with 64 (or 32) rows 320 : 256.
const BLOCK: usize = 16;
const ROWS_PER_PASS: usize = 8;
/// Most f32 values a task dequantizes for one BLAS call: up to this, a task's whole column
/// block (as `par_sgemm` splits it) goes in one call, which gives `par_sgemm`'s numbers bit
/// for bit; a larger block (an LM head) goes in tiles of [`TILE`] rows.
const MAX_BLOCK_VALUES: usize = 4 << 20;
const TILE: usize = 128;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static UNPACKED: RefCell<Unpacked> = const { RefCell::new(Unpacked::new()) };
}

/// Eight K-quant rows unpacked for a fused pass, kept per thread so a pass allocates nothing:
/// Q4_K as Q4_1 blocks (`q4`, scales `a`, minimums `b`), Q6_K as signed bytes `q − 32`
/// (`signed`) with a scale per 16 values (`a`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Unpacked {
    q4: Vec<u8>,
    signed: Vec<i8>,
    a: Vec<f32>,
    b: Vec<f32>,
}

impl Unpacked {
    const fn new() -> Self {
        Unpacked {
            q4: Vec::new(),
            signed: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
        }
    }
}

/// `v` at least `len` long.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn grown<T: Default + Clone>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut buf = s.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

impl QMatrix {
    /// `out (m × rows) = x (m × cols) · Wᵀ`, added to `out` when `accumulate`, in f32 on the
    /// dequantized weights (see the module doc).
    pub(super) fn product_f32(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        debug_assert_eq!(x.len(), m * self.cols);
        debug_assert_eq!(out.len(), m * self.rows);
        if m <= GEMV_MAX_ROWS {
            self.rows_product(x, m, out, accumulate);
        } else {
            self.tiled_product(x, m, out, accumulate);
        }
    }

    fn rows_product(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        let (n, k) = (self.rows, self.cols);
        let out_ptr = OutPtr(out.as_mut_ptr());
        let write = |r: usize, j: usize, v: f32| {
            // SAFETY: each (row, column) of `out` (m × n) belongs to one task.
            unsafe {
                let p = out_ptr.at(r * n + j);
                *p = if accumulate { *p + v } else { v };
            }
        };
        let block = |bi: usize| {
            let j0 = bi * BLOCK;
            let rows = BLOCK.min(n - j0);
            let passes = rows / ROWS_PER_PASS * ROWS_PER_PASS;
            let mut unpacked = UNPACKED.with(|u| u.replace(Unpacked::new()));
            with_scratch(ROWS_PER_PASS * k, |buf| {
                for jj in (0..passes).step_by(ROWS_PER_PASS) {
                    if let Some(fused) = self.fused_pass(j0 + jj, &mut unpacked) {
                        for r in 0..m {
                            let d = fused.dots(&x[r * k..(r + 1) * k]);
                            for (q, v) in d.into_iter().enumerate() {
                                write(r, j0 + jj + q, v);
                            }
                        }
                        continue;
                    }
                    self.rows_f32(j0 + jj, buf);
                    for r in 0..m {
                        let d = dot_rows::<ROWS_PER_PASS>(&x[r * k..(r + 1) * k], buf);
                        for (q, v) in d.into_iter().enumerate() {
                            write(r, j0 + jj + q, v);
                        }
                    }
                }
                for jj in passes..rows {
                    self.rows_f32(j0 + jj, &mut buf[..k]);
                    for r in 0..m {
                        write(r, j0 + jj, dot(&x[r * k..(r + 1) * k], &buf[..k]));
                    }
                }
            });
            UNPACKED.with(|u| u.replace(unpacked));
        };
        super::spin_pool(n.div_ceil(BLOCK), |range| range.for_each(block));
    }

    /// Rows `g..g + 8` when they lie in one of our parts, or in Q4_K or Q6_K rows (unpacked
    /// into `u`), and the CPU has AVX2 (and F16C for f16): dequantized in registers instead of
    /// through the buffer.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn fused_pass<'a>(&'a self, mut g: usize, u: &'a mut Unpacked) -> Option<Fused<'a>> {
        #[cfg(target_arch = "x86_64")]
        {
            // Both SIMD kernel sets imply AVX2 and FMA.
            if Isa::get() == Isa::Portable {
                return None;
            }
            let nb = self.cols / QK;
            for p in &self.parts {
                if g >= p.rows() {
                    g -= p.rows();
                    continue;
                }
                if g + ROWS_PER_PASS > p.rows() {
                    return None;
                }
                return match p {
                    Part::Half { kind, vals, .. } => {
                        let k = self.cols;
                        (k.is_multiple_of(8) && kind.fused_ok()).then(|| Fused::Half {
                            kind: *kind,
                            vals: &vals[g * k..(g + ROWS_PER_PASS) * k],
                        })
                    }
                    Part::Q4 { d, m, qs, .. } => Some(Fused::Q4 {
                        qs: &qs[g * nb * 16..(g + ROWS_PER_PASS) * nb * 16],
                        d: &d[g * nb..(g + ROWS_PER_PASS) * nb],
                        m: m.as_ref().map(|m| &m[g * nb..(g + ROWS_PER_PASS) * nb]),
                    }),
                    Part::Q8 { d, qs, .. } => Some(Fused::Q8 {
                        qs: &qs[g * nb * QK..(g + ROWS_PER_PASS) * nb * QK],
                        d: &d[g * nb..(g + ROWS_PER_PASS) * nb],
                    }),
                    Part::Ggml(q) if q.dtype() == GgmlDType::Q4K => {
                        let n = ROWS_PER_PASS * nb;
                        let (qs, d, m) = (
                            grown(&mut u.q4, n * 16),
                            grown(&mut u.a, n),
                            grown(&mut u.b, n),
                        );
                        let rows = (g, ROWS_PER_PASS, self.cols);
                        super::q4k::unpack_rows(q.raw(), rows, qs, d, m);
                        Some(Fused::Q4 { qs, d, m: Some(m) })
                    }
                    Part::Ggml(q) if q.dtype() == GgmlDType::Q6K => {
                        let n = ROWS_PER_PASS * self.cols;
                        let (qs, ds) = (grown(&mut u.signed, n), grown(&mut u.a, n / 16));
                        super::q6k::unpack_rows(q.raw(), (g, ROWS_PER_PASS, self.cols), qs, ds);
                        Some(Fused::Q6 { qs, ds })
                    }
                    Part::Ggml(_) | Part::Bf16Panels(_) => None,
                };
            }
        }
        let _ = &mut g;
        None
    }

    fn tiled_product(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        let (n, k) = (self.rows, self.cols);
        let beta = if accumulate { 1.0 } else { 0.0 };
        let out_ptr = OutPtr(out.as_mut_ptr());
        let call = |j0: usize, cols: usize| {
            let tile = if cols * k <= MAX_BLOCK_VALUES {
                cols
            } else {
                TILE
            };
            with_scratch(tile.min(cols) * k, |buf| {
                for t0 in (j0..j0 + cols).step_by(tile) {
                    let tc = tile.min(j0 + cols - t0);
                    self.rows_f32(t0, &mut buf[..tc * k]);
                    // SAFETY: `x` is m × k, the buffer tc × k, `out` m × n with this task's
                    // columns t0..t0 + tc written by this call only.
                    unsafe {
                        sgemm_strided(
                            false,
                            true,
                            m,
                            tc,
                            k,
                            1.0,
                            x.as_ptr(),
                            k,
                            buf.as_ptr(),
                            k,
                            beta,
                            out_ptr.at(t0),
                            n,
                        )
                    }
                }
            })
        };
        for_column_blocks((m, n, k), call);
    }
}

/// Eight consecutive rows of one of our parts, or of Q4_K or Q6_K rows unpacked (made on x86-64
/// only).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Fused<'a> {
    Q4 {
        qs: &'a [u8],
        d: &'a [f32],
        m: Option<&'a [f32]>,
    },
    Q8 {
        qs: &'a [i8],
        d: &'a [f32],
    },
    /// Q6_K rows unpacked (`q6k.rs`): signed bytes and a scale per 16 values.
    Q6 {
        qs: &'a [i8],
        ds: &'a [f32],
    },
    Half {
        kind: HalfKind,
        vals: &'a [u16],
    },
}

impl Fused<'_> {
    /// The eight rows' dot products with `x`, in `gemv::dot_rows`'s order and arithmetic.
    fn dots(&self, x: &[f32]) -> [f32; ROWS_PER_PASS] {
        let nb = x.len() / QK;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `fused_pass` checked AVX2 and FMA, and sliced eight rows of `nb` blocks.
        unsafe {
            if let Some(level) = super::exact512::level() {
                // The CPU has `level`; `q4` checks the lengths.
                match *self {
                    Fused::Q4 { qs, d, m: Some(m) } if m.len() == d.len() => {
                        return super::exact512::q4::<true>(level, qs, d, m.as_ptr(), x, nb);
                    }
                    Fused::Q4 { qs, d, m: None } => {
                        return super::exact512::q4::<false>(level, qs, d, d.as_ptr(), x, nb);
                    }
                    _ => {}
                }
            }
            match *self {
                Fused::Q4 { qs, d, m: Some(m) } => {
                    assert!(qs.len() == ROWS_PER_PASS * nb * 16 && m.len() == d.len());
                    x86::q4::<ROWS_PER_PASS, true>(qs, d, m.as_ptr(), x, nb)
                }
                Fused::Q4 { qs, d, m: None } => {
                    assert!(qs.len() == ROWS_PER_PASS * nb * 16);
                    x86::q4::<ROWS_PER_PASS, false>(qs, d, d.as_ptr(), x, nb)
                }
                Fused::Q6 { qs, ds } => {
                    assert!(qs.len() == ROWS_PER_PASS * nb * QK && ds.len() == 2 * qs.len() / QK);
                    x86::signed::<ROWS_PER_PASS, 2>(qs, ds, x, nb)
                }
                Fused::Q8 { qs, d } => {
                    assert!(qs.len() == ROWS_PER_PASS * nb * QK);
                    x86::signed::<ROWS_PER_PASS, 1>(qs, d, x, nb)
                }
                Fused::Half { kind, vals } => {
                    super::half_rows::dot_rows::<ROWS_PER_PASS>(kind, vals, x)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (nb, x);
            unreachable!("fused passes are made on x86-64 only")
        }
    }
}

/// The 256-bit Q4_1 pass, for `exact512.rs`'s speed comparison.
///
/// # Safety
/// As [`x86::q4`]: AVX2 and FMA, eight rows of `nb` blocks.
#[cfg(all(test, target_arch = "x86_64"))]
pub(super) unsafe fn x86_q4_for_tests(qs: &[u8], d: &[f32], x: &[f32], nb: usize) -> [f32; 8] {
    x86::q4::<ROWS_PER_PASS, true>(qs, d, d.as_ptr(), x, nb)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The eight lanes summed in `gemv::dot_rows_avx2`'s order.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lane_sum(a: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), a);
        lanes.iter().sum()
    }

    /// `R` Q4 rows (`MIN`: Q4_1, with minimums `m`) against `x`: each 8-value chunk is
    /// dequantized as candle does (`q·d + m`, or `(q − 8)·d`) and multiply-added in order.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn q4<const R: usize, const MIN: bool>(
        qs: &[u8],
        d: &[f32],
        m: *const f32,
        x: &[f32],
        nb: usize,
    ) -> [f32; R] {
        let (qp, xp) = (qs.as_ptr(), x.as_ptr());
        let mask = _mm_set1_epi8(0x0f);
        let eight = _mm256_set1_epi32(8);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let xs = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xp.add(b * 32 + o)));
            for (r, a) in acc.iter_mut().enumerate() {
                let raw = _mm_loadu_si128(qp.add((r * nb + b) * 16).cast());
                let lo = _mm_and_si128(raw, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
                let ints = [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)];
                let s = _mm256_set1_ps(d[r * nb + b]);
                let mn = _mm256_set1_ps(if MIN { *m.add(r * nb + b) } else { 0.0 });
                for (c, xv) in ints.into_iter().zip(xs) {
                    let q = _mm256_cvtepu8_epi32(c);
                    let w = if MIN {
                        _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), s), mn)
                    } else {
                        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, eight)), s)
                    };
                    *a = _mm256_fmadd_ps(w, xv, *a);
                }
            }
        }
        std::array::from_fn(|r| lane_sum(acc[r]))
    }

    /// `R` rows of signed bytes against `x`, each value its byte times its group's scale
    /// (`SCALES` groups per block of 32: one for Q8_0, `q·d`; two for unpacked Q6_K, whose
    /// `(q − 32)·(d·sc)` is candle's `d · sc · (q − 32)` to the bit, `d·sc` being exact in f32,
    /// 11 + 8 bits), in `gemv::dot_rows`'s order.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn signed<const R: usize, const SCALES: usize>(
        qs: &[i8],
        ds: &[f32],
        x: &[f32],
        nb: usize,
    ) -> [f32; R] {
        let (qp, xp) = (qs.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let xs = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(xp.add(b * 32 + o)));
            for (r, a) in acc.iter_mut().enumerate() {
                let i = r * nb + b;
                let s: [__m256; SCALES] =
                    std::array::from_fn(|j| _mm256_set1_ps(ds[SCALES * i + j]));
                for (c, xv) in xs.into_iter().enumerate() {
                    let raw = _mm_loadl_epi64(qp.add(i * 32 + c * 8).cast());
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw));
                    let w = _mm256_mul_ps(q, s[c * SCALES / 4]);
                    *a = _mm256_fmadd_ps(w, xv, *a);
                }
            }
        }
        std::array::from_fn(|r| lane_sum(acc[r]))
    }
}
