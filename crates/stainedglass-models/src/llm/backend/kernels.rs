//! Host kernels of the Llama block on plain `f32` slices: RMSNorm, SwiGLU
//! and causal grouped-query attention, each with its input-gradient counterpart. The custom ops
//! in `ops` (one op per layer part) and the fused decoder stack in `llm::stack` (one op for
//! many layers) both run these, so the two paths compute the same numbers.

use super::gemv::dot;
use super::pool::{spin_pool, SERIAL_MAX};
use super::vexp;
use rayon::prelude::*;

// ---------------------------------------------------------------- RMSNorm

/// `y = x / sqrt(mean(x²) + eps) · w` on every row of `x` (row length `w.len()`).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let n = w.len();
    let row = |(yr, xr): (&mut [f32], &[f32])| {
        let r = 1.0 / (dot(xr, xr) / n as f32 + eps).sqrt();
        for k in 0..n {
            yr[k] = xr[k] * r * w[k];
        }
    };
    if y.len() <= SERIAL_MAX {
        y.chunks_mut(n).zip(x.chunks(n)).for_each(row);
    } else {
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(row);
    }
}

/// The input gradient of [`rms_norm`] for output gradient `g`, **added** to `dx` when
/// `accumulate` (a residual branch), written otherwise.
pub fn rms_norm_bwd(x: &[f32], g: &[f32], w: &[f32], eps: f32, dx: &mut [f32], accumulate: bool) {
    let n = w.len();
    dx.par_chunks_mut(n)
        .zip(x.par_chunks(n).zip(g.par_chunks(n)))
        .for_each(|(d, (xr, gr))| {
            let r = 1.0 / (dot(xr, xr) / n as f32 + eps).sqrt();
            let mut s = 0f32;
            for k in 0..n {
                s += xr[k] * w[k] * gr[k];
            }
            let c = r * r * r * s / n as f32;
            if accumulate {
                for k in 0..n {
                    d[k] += r * w[k] * gr[k] - xr[k] * c;
                }
            } else {
                for k in 0..n {
                    d[k] = r * w[k] * gr[k] - xr[k] * c;
                }
            }
        });
}

/// The weight gradient of [`rms_norm`] for output gradient `g`: `dw[k] = Σ_rows g·x/rms(x)`
/// (written, not added; row length `dw.len()`). Rows are summed in fixed blocks and the blocks
/// in order, so the result does not depend on thread scheduling (resumed training stays
/// bit-exact).
pub fn rms_norm_weight_grad(x: &[f32], g: &[f32], eps: f32, dw: &mut [f32]) {
    const ROWS_PER_BLOCK: usize = 64;
    let n = dw.len();
    let block = n * ROWS_PER_BLOCK;
    let partial: Vec<Vec<f32>> = x
        .par_chunks(block)
        .zip(g.par_chunks(block))
        .map(|(xb, gb)| {
            let mut acc = vec![0f32; n];
            for (xr, gr) in xb.chunks_exact(n).zip(gb.chunks_exact(n)) {
                let r = 1.0 / (dot(xr, xr) / n as f32 + eps).sqrt();
                for k in 0..n {
                    acc[k] += gr[k] * xr[k] * r;
                }
            }
            acc
        })
        .collect();
    dw.fill(0.0);
    for p in &partial {
        dw.iter_mut().zip(p).for_each(|(d, v)| *d += v);
    }
}

/// `out[j] = Σ_i g[i, j]` over the rows of `g` (row length `out.len()`; a bias gradient),
/// summed in row order.
pub fn column_sums(g: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for row in g.chunks_exact(out.len()) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
}

// ---------------------------------------------------------------- SwiGLU

/// `y = silu(gate) · up` on rows `x = [gate | up]` of length `2f` (`y` rows of length `f`).
pub fn swiglu(x: &[f32], f: usize, y: &mut [f32]) {
    let row = |(yr, xr): (&mut [f32], &[f32])| {
        let (g, u) = xr.split_at(f);
        vexp::swiglu_row(g, u, yr);
    };
    if y.len() <= SERIAL_MAX {
        y.chunks_mut(f).zip(x.chunks(2 * f)).for_each(row);
    } else {
        y.par_chunks_mut(f).zip(x.par_chunks(2 * f)).for_each(row);
    }
}

/// The input gradient of [`swiglu`] for output gradient `g` (rows of length `f`).
pub fn swiglu_bwd(x: &[f32], g: &[f32], f: usize, dx: &mut [f32]) {
    dx.par_chunks_mut(2 * f)
        .zip(x.par_chunks(2 * f).zip(g.par_chunks(f)))
        .for_each(|(d, (xr, gr))| {
            let (gate, up) = xr.split_at(f);
            let (dg, du) = d.split_at_mut(f);
            vexp::swiglu_bwd_row(gate, up, gr, dg, du);
        });
}

// ---------------------------------------------------------------- attention

/// A raw pointer that may cross threads; every task writes a disjoint region through it.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
// SAFETY: used only for disjoint writes, joined before the buffer is read.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub fn of(s: &[f32]) -> Self {
        Self(s.as_ptr() as *mut f32)
    }

    /// A method (not field access) so closures capture the whole `Send` wrapper.
    pub fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation (see the kernel bodies).
        unsafe { self.0.add(offset) }
    }
}

/// Per-head matrices in memory: element `(batch bi, position i, head h, j)` sits at
/// `ptr + bi·batch + i·row + h·d + j`. Lets attention read q, k and v straight out of a packed
/// `[q | k | v]` projection, or out of a preallocated KV cache.
#[derive(Clone, Copy)]
pub struct HeadView {
    pub ptr: SendPtr,
    pub batch: usize,
    pub row: usize,
}

impl HeadView {
    /// The start of head `h`'s matrix in batch `bi` (`d` values per head).
    fn head(self, bi: usize, h: usize, d: usize) -> *mut f32 {
        self.ptr.at(bi * self.batch + h * d)
    }
}

/// Shapes of one attention call: `t` queries over `s ≥ t` keys; query `i` sits at key index
/// `s − t + i`.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub t: usize,
    pub s: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

/// Turns scaled scores `sc (t×s)` into causal, key-masked softmax probabilities in place. A row
/// with no visible key becomes all zeros.
fn masked_softmax(sc: &mut [f32], t: usize, s: usize, valid: &[u8]) {
    for i in 0..t {
        let last = s - t + i;
        let row = &mut sc[i * s..(i + 1) * s];
        let mut m = f32::NEG_INFINITY;
        vexp::max_valid(&row[..=last], &valid[..=last], &mut m);
        if m == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        let mut l = 0f32;
        vexp::softmax_row(&mut row[..=last], &valid[..=last], m, &mut l);
        row[last + 1..].fill(0.0);
        vexp::scale_row(&mut row[..=last], 1.0 / l);
    }
}

/// `c = alpha·op(a)·op(b) + beta·c` on one head's matrices, each given as (pointer, row
/// stride); `(ta, tb)` = whether `a`, `b` are stored transposed.
///
/// # Safety
/// As for `blas::sgemm_strided`.
#[inline]
unsafe fn mm(
    (ta, tb): (bool, bool),
    (m, n, k): (usize, usize, usize),
    (alpha, beta): (f32, f32),
    (a, lda): (*const f32, usize),
    (b, ldb): (*const f32, usize),
    (c, ldc): (*mut f32, usize),
) {
    super::blas::sgemm_strided(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// Attention up to this many multiply-adds per product (`b·hq·t·s·d`; a decoding step's)
/// runs on candle's spinning pool ([`spin_pool`]).
const SPIN_ATTENTION_MAX: usize = 1 << 24;

/// Causal grouped-query attention `out = softmax(q·kᵀ/√d + mask)·v`, keys masked by
/// `key_valid[b·s]`. With `probs` (`b·hq·t·s` values) the probabilities are kept for
/// [`attention_bwd`].
///
/// # Safety
/// The views must address `b × t` (q, out) and `b × s` (k, v) rows of the shape's heads; `out`
/// and `probs` must not overlap the inputs.
pub unsafe fn attention(
    sh: AttnShape,
    q: HeadView,
    k: HeadView,
    v: HeadView,
    out: HeadView,
    key_valid: &[u8],
    probs: Option<&mut [f32]>,
) {
    let AttnShape {
        b,
        t,
        s,
        hq,
        hkv,
        d,
    } = sh;
    let group = hq / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let kept = probs.map(|p| SendPtr(p.as_mut_ptr()));
    let run = |scratch: &mut Vec<f32>, task: usize| {
        let (bi, h) = (task / hq, task % hq);
        let kh = h / group;
        let valid = &key_valid[bi * s..(bi + 1) * s];
        let p: &mut [f32] = match kept {
            // SAFETY: task `(bi, h)` owns probabilities `task·t·s ..` of the buffer.
            Some(pp) => unsafe { std::slice::from_raw_parts_mut(pp.at(task * t * s), t * s) },
            None => scratch,
        };
        // SAFETY: the caller's views cover these heads; each task writes only head `h` of
        // batch `bi` of `out`.
        unsafe {
            mm(
                (false, true),
                (t, s, d),
                (scale, 0.0),
                (q.head(bi, h, d), q.row),
                (k.head(bi, kh, d), k.row),
                (p.as_mut_ptr(), s),
            );
            masked_softmax(p, t, s, valid);
            mm(
                (false, false),
                (t, d, s),
                (1.0, 0.0),
                (p.as_ptr(), s),
                (v.head(bi, kh, d), v.row),
                (out.head(bi, h, d), out.row),
            );
        }
    };
    let scratch = || {
        if kept.is_some() {
            Vec::new()
        } else {
            vec![0f32; t * s]
        }
    };
    // A decoding step's attention is small: candle's spinning pool, not a rayon wake-up.
    if kept.is_none() && b * hq * t * s * d <= SPIN_ATTENTION_MAX {
        spin_pool(b * hq, |tasks| {
            let mut sc = scratch();
            tasks.for_each(|task| run(&mut sc, task));
        });
    } else {
        (0..b * hq)
            .into_par_iter()
            .for_each_init(scratch, |sc, task| run(sc, task));
    }
}

/// Input gradients of [`attention`] for the output gradient `g`: writes `dq`, `dk`, `dv`
/// (their previous contents are ignored). With `probs` from the forward pass the scores are
/// not recomputed.
///
/// # Safety
/// As for [`attention`]; the output views must not overlap each other or the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_bwd(
    sh: AttnShape,
    (q, k, v): (HeadView, HeadView, HeadView),
    g: HeadView,
    (dq, dk, dv): (HeadView, HeadView, HeadView),
    key_valid: &[u8],
    probs: Option<&[f32]>,
) {
    let AttnShape {
        b,
        t,
        s,
        hq,
        hkv,
        d,
    } = sh;
    let group = hq / hkv;
    let scale = 1.0 / (d as f32).sqrt();
    let kept = probs.map(SendPtr::of);
    // Each task owns one (batch, kv head): its dk, dv and the dq of its query heads.
    let scratch_len = if kept.is_some() { 0 } else { t * s };
    (0..b * hkv).into_par_iter().for_each_init(
        || (vec![0f32; scratch_len], vec![0f32; t * s]),
        |(scratch, dp), task| {
            let (bi, kh) = (task / hkv, task % hkv);
            let valid = &key_valid[bi * s..(bi + 1) * s];
            // SAFETY: the caller's views cover these heads; this task writes only dq of its
            // query heads and dk/dv of kv head `kh`, batch `bi`.
            unsafe {
                for h in kh * group..(kh + 1) * group {
                    let p: &[f32] = match kept {
                        Some(pp) => std::slice::from_raw_parts(pp.at((bi * hq + h) * t * s), t * s),
                        None => {
                            mm(
                                (false, true),
                                (t, s, d),
                                (scale, 0.0),
                                (q.head(bi, h, d), q.row),
                                (k.head(bi, kh, d), k.row),
                                (scratch.as_mut_ptr(), s),
                            );
                            masked_softmax(scratch, t, s, valid);
                            scratch
                        }
                    };
                    mm(
                        (false, true),
                        (t, s, d),
                        (1.0, 0.0),
                        (g.head(bi, h, d), g.row),
                        (v.head(bi, kh, d), v.row),
                        (dp.as_mut_ptr(), s),
                    );
                    for i in 0..t {
                        let pr = &p[i * s..(i + 1) * s];
                        let dr = &mut dp[i * s..(i + 1) * s];
                        let dsum = dot(pr, dr);
                        for j in 0..s {
                            dr[j] = pr[j] * (dr[j] - dsum) * scale;
                        }
                    }
                    // The first query head of the group writes dk/dv, the others add.
                    let beta = if h == kh * group { 0.0 } else { 1.0 };
                    mm(
                        (false, false),
                        (t, d, s),
                        (1.0, 0.0),
                        (dp.as_ptr(), s),
                        (k.head(bi, kh, d), k.row),
                        (dq.head(bi, h, d), dq.row),
                    );
                    mm(
                        (true, false),
                        (s, d, t),
                        (1.0, beta),
                        (dp.as_ptr(), s),
                        (q.head(bi, h, d), q.row),
                        (dk.head(bi, kh, d), dk.row),
                    );
                    mm(
                        (true, false),
                        (s, d, t),
                        (1.0, beta),
                        (p.as_ptr(), s),
                        (g.head(bi, h, d), g.row),
                        (dv.head(bi, kh, d), dv.row),
                    );
                }
            }
        },
    );
}
