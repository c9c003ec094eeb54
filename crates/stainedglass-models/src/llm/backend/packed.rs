//! Frozen weights packed once for oneMKL's packed-operand products. Every matrix product packs
//! its `B` operand into the kernel's panel layout before multiplying; a frozen weight used by
//! every training step can be packed once instead. Measured on the 2-core AVX-512 Xeon (one
//! thread, 512 rows, the LM's shapes; `bench/blas_gemm.c`): 2–11% faster products (mostly
//! 5–8%), same results to rounding.
//!
//! A packed copy holds about the weight's size in memory; oneMKL asks for ~8 MiB more per
//! packed matrix as workspace, which is reserved but left untouched (not resident). The process
//! packs at most [`set_prepack_budget_mb`] MiB of weights (default 1024; 0 turns packing off;
//! the `sgt` binary sets it from `SGT_PREPACK_MB`); weights past the budget are multiplied as
//! usual. Without oneMKL nothing is packed.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::blas::{self, columns_per_task, NO_TRANS, ROW_MAJOR, TRANS};

/// `CblasBMatrix`: the packed operand is `B`.
const B_MATRIX: i32 = 162;
/// `CblasPacked`: the `B` argument of `cblas_sgemm_compute` is packed.
const PACKED: i32 = 151;
/// Rows of `A` the packing is sized for; the packed operand serves any number of rows.
const PACK_ROWS: usize = 512;

/// Bytes of packed matrices alive in the process.
static PACKED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The packing budget in bytes (1024 MiB unless set).
static BUDGET_BYTES: AtomicUsize = AtomicUsize::new(1024 << 20);

/// Sets how many MiB of weights the process may pack (0 turns packing off). Matrices already
/// packed stay packed.
pub fn set_prepack_budget_mb(mb: usize) {
    BUDGET_BYTES.store(mb.saturating_mul(1 << 20), Ordering::Relaxed);
}

fn budget_bytes() -> usize {
    BUDGET_BYTES.load(Ordering::Relaxed)
}

/// `B` of the products `a · B` with `B` = `w` (`k×n`) or `wᵀ` (`w` stored `n×k`), packed in
/// column blocks (one per rayon thread, as [`blas::par_sgemm`] splits them).
pub struct PackedMatrix {
    n: usize,
    k: usize,
    blocks: Vec<Block>,
    bytes: usize,
}

struct Block {
    j0: usize,
    cols: usize,
    /// The packed data lives in the spare capacity (never read as `f32`s from Rust, so left
    /// uninitialised: oneMKL's size includes a workspace it mostly never writes, and those
    /// pages then stay unmapped).
    buf: Vec<f32>,
    /// Offset of the 64-byte-aligned start inside `buf`'s capacity.
    off: usize,
}

impl PackedMatrix {
    /// Packs `w` for `a · wᵀ` (`transposed`, `w` stored `n×k`) or `a · w` (`w` stored `k×n`).
    /// `None` without oneMKL, for an empty matrix, or when the process's packing budget is
    /// spent.
    pub fn new(w: &[f32], (n, k): (usize, usize), transposed: bool) -> Option<Self> {
        let f = blas::pack_fns()?;
        if n == 0 || k == 0 || w.len() < n * k {
            return None;
        }
        let per = columns_per_task(n);
        let spans: Vec<(usize, usize)> = (0..n.div_ceil(per))
            .map(|i| (i * per, per.min(n - i * per)))
            .collect();
        // SAFETY: plain size query.
        let sizes: Vec<usize> = spans
            .iter()
            .map(|&(_, cols)| unsafe {
                (f.size)(B_MATRIX, PACK_ROWS as i32, cols as i32, k as i32)
            })
            .collect();
        let bytes = n * k * std::mem::size_of::<f32>();
        let budget = budget_bytes();
        let prev = PACKED_BYTES.fetch_add(bytes, Ordering::Relaxed);
        if prev + bytes > budget {
            PACKED_BYTES.fetch_sub(bytes, Ordering::Relaxed);
            return None;
        }
        let (ld, trans) = if transposed {
            (k, TRANS)
        } else {
            (n, NO_TRANS)
        };
        use rayon::prelude::*;
        let blocks = spans
            .par_iter()
            .zip(&sizes)
            .map(|(&(j0, cols), &size)| {
                let mut buf = Vec::<f32>::with_capacity((size + 64).div_ceil(4));
                let off = buf.as_ptr().align_offset(64);
                let src = if transposed { j0 * k } else { j0 };
                // SAFETY: `buf`'s capacity holds `size` bytes past `off`; `w` holds the
                // `k×cols` block at `src` with leading dimension `ld` (checked length above).
                unsafe {
                    (f.pack)(
                        ROW_MAJOR,
                        B_MATRIX,
                        trans,
                        PACK_ROWS as i32,
                        cols as i32,
                        k as i32,
                        1.0,
                        w.as_ptr().add(src),
                        ld as i32,
                        buf.as_mut_ptr().add(off),
                    )
                };
                Block { j0, cols, buf, off }
            })
            .collect();
        Some(Self {
            n,
            k,
            blocks,
            bytes,
        })
    }

    /// Output columns and inner dimension `(n, k)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// `c (m×n) = a (m×k) · B + beta·c`, the column blocks over rayon's threads.
    pub fn product(&self, a: &[f32], c: &mut [f32], m: usize, beta: f32) {
        assert!(c.len() >= m * self.n, "packed product: short output buffer");
        // SAFETY: `c` holds m×n values (checked above).
        unsafe { self.product_raw(a, c.as_mut_ptr(), m, beta) }
    }

    /// A new `m×n` buffer holding `a · B` (every value written by the product).
    pub fn product_new(&self, a: &[f32], m: usize) -> Vec<f32> {
        let mut c: Vec<f32> = Vec::with_capacity(m * self.n);
        // SAFETY: with beta = 0 every one of the m×n values is written (k > 0 by construction).
        unsafe {
            self.product_raw(a, c.as_mut_ptr(), m, 0.0);
            c.set_len(m * self.n);
        }
        c
    }

    /// # Safety
    /// `c` must address `m×n` writable values (initialised unless `beta == 0`).
    unsafe fn product_raw(&self, a: &[f32], c: *mut f32, m: usize, beta: f32) {
        let (n, k) = (self.n, self.k);
        assert!(a.len() >= m * k, "packed product: short input buffer");
        if m == 0 {
            return;
        }
        let Some(f) = blas::pack_fns() else {
            unreachable!("a packed matrix exists only with oneMKL loaded")
        };
        let c_ptr = c as usize;
        let call = |blk: &Block| {
            // SAFETY: `a` holds m×k; the block's packed buffer was built for `cols`×`k`;
            // each block writes only its own columns of `c` (leading dimension n).
            unsafe {
                (f.compute)(
                    ROW_MAJOR,
                    NO_TRANS,
                    PACKED,
                    m as i32,
                    blk.cols as i32,
                    k as i32,
                    a.as_ptr(),
                    k as i32,
                    blk.buf.as_ptr().add(blk.off),
                    k as i32,
                    beta,
                    (c_ptr as *mut f32).add(blk.j0),
                    n as i32,
                )
            }
        };
        if self.blocks.len() == 1 || m * n * k < blas::MIN_SPLIT_WORK {
            self.blocks.iter().for_each(call);
        } else {
            use rayon::prelude::*;
            self.blocks.par_iter().for_each(call);
        }
    }
}

impl Drop for PackedMatrix {
    fn drop(&mut self) {
        PACKED_BYTES.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With oneMKL, the packed product equals the plain one (to rounding) in both layouts, for
    /// row counts other than the one it was packed for, with and without accumulation; without
    /// it nothing is packed.
    #[test]
    fn packed_product_matches_the_plain_product() {
        let (n, k) = (200, 96);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7) % 23) as f32 / 11.0 - 1.0)
            .collect();
        for transposed in [true, false] {
            let Some(p) = PackedMatrix::new(&w, (n, k), transposed) else {
                assert_ne!(
                    blas::kind(),
                    Some(blas::Kind::Mkl),
                    "oneMKL loaded but no packing"
                );
                return;
            };
            assert_eq!(p.dims(), (n, k));
            for m in [1, 37, 700] {
                let a: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 5) % 17) as f32 / 8.0 - 1.0)
                    .collect();
                let mut want = vec![0.5f32; m * n];
                blas::par_sgemm(&a, &w, &mut want, (m, n, k), transposed, 1.0);
                let mut got = vec![0.5f32; m * n];
                p.product(&a, &mut got, m, 1.0);
                let fresh = p.product_new(&a, m);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "m {m} at {i}: {g} vs {w}"
                    );
                    let f = fresh[i] + 0.5;
                    assert!((f - w).abs() <= 1e-4 * w.abs().max(1.0), "m {m} new at {i}");
                }
            }
        }
    }
}
