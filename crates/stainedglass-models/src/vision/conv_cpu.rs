//! Host kernels of the frozen convolution and linear layers (f32, NCHW, one group): forward as
//! im2col + one matrix product per image, input gradient as the transposed product + col2im, each
//! optionally fused with the ReLU that follows. Written here because candle's CPU conv2d copies
//! through a generic im2col and its `conv_transpose2d` is a direct loop of dot products (≈ 30% of
//! an SGT training step on the small CNN); products go through `crate::llm::backend::blas`.

use rayon::prelude::*;

use crate::llm::backend::blas::sgemm_strided;

/// Shape of one 2-D convolution: input `(cin, h, w)`, square kernel `k`, output `(cout, ho, wo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeometry {
    /// `None` when the kernel does not fit the padded input or `stride` is 0.
    pub fn new(
        (cin, h, w): (usize, usize, usize),
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Option<Self> {
        if stride == 0 || k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            return None;
        }
        Some(Self {
            cin,
            h,
            w,
            cout,
            k,
            stride,
            pad,
            ho: (h + 2 * pad - k) / stride + 1,
            wo: (w + 2 * pad - k) / stride + 1,
        })
    }

    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }

    pub fn out_len(&self) -> usize {
        self.cout * self.ho * self.wo
    }

    /// Rows of the column matrix: one per (input channel, ky, kx).
    fn rows(&self) -> usize {
        self.cin * self.k * self.k
    }

    fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// Rows and columns of each stride phase plane (the largest phase, `py = px = 0`).
    fn phase_dims(&self) -> (usize, usize) {
        (self.h.div_ceil(self.stride), self.w.div_ceil(self.stride))
    }

    /// Where kernel tap `(ky, kx)` reads: the phase plane `(py, px)` and the offsets `(by, bx)`
    /// such that output `(oy, ox)` reads that plane at `(oy + by, ox + bx)`, with the plane's
    /// valid extent `(hp, wp)`.
    fn tap(&self, ky: usize, kx: usize) -> Tap {
        let s = self.stride as isize;
        let (dy, dx) = (
            ky as isize - self.pad as isize,
            kx as isize - self.pad as isize,
        );
        let (py, px) = (dy.rem_euclid(s) as usize, dx.rem_euclid(s) as usize);
        Tap {
            phase: py * self.stride + px,
            by: dy.div_euclid(s),
            bx: dx.div_euclid(s),
            hp: self.h.saturating_sub(py).div_ceil(self.stride),
            wp: self.w.saturating_sub(px).div_ceil(self.stride),
        }
    }
}

/// One kernel tap's view of the phase planes (see [`ConvGeometry::tap`]).
struct Tap {
    phase: usize,
    by: isize,
    bx: isize,
    hp: usize,
    wp: usize,
}

impl Tap {
    /// The phase-plane row read by output row `oy`, if inside the plane.
    fn row(&self, oy: usize) -> Option<usize> {
        let r = oy as isize + self.by;
        (r >= 0 && (r as usize) < self.hp).then_some(r as usize)
    }

    /// Output columns `lo..hi` that read inside the plane, and the plane column of `lo`.
    fn cols(&self, wo: usize) -> (usize, usize, usize) {
        let lo = (-self.bx).max(0) as usize;
        let hi = (self.wp as isize - self.bx).clamp(0, wo as isize) as usize;
        let hi = hi.max(lo);
        (lo, hi, (lo as isize + self.bx).max(0) as usize)
    }
}

/// A strided convolution reads `stride²` interleaved sub-grids ("phases") of its input; split
/// into contiguous planes `[phase][c][row][col]` every kernel tap reads contiguous runs, so
/// im2col and col2im copy and add whole slices. Stride 1 has one phase: the input itself.
fn split_phases(g: &ConvGeometry, x: &[f32], planes: &mut [f32]) {
    let s = g.stride;
    let (hpm, wpm) = g.phase_dims();
    for c in 0..g.cin {
        for iy in 0..g.h {
            let src = &x[(c * g.h + iy) * g.w..][..g.w];
            let base = |px: usize| (((iy % s) * s + px) * g.cin + c) * hpm * wpm + (iy / s) * wpm;
            if s == 2 {
                // Even and odd columns in one pass (vectorises as a de-interleave).
                let (b0, b1) = (base(0), base(1));
                let (head, tail) = planes.split_at_mut(b1);
                let (even, odd) = (&mut head[b0..b0 + wpm], &mut tail[..wpm]);
                for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(src.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
                if g.w % 2 == 1 {
                    even[g.w / 2] = src[g.w - 1];
                }
                continue;
            }
            for px in 0..s {
                let dst = &mut planes[base(px)..base(px) + wpm];
                for (d, &v) in dst.iter_mut().zip(src.iter().skip(px).step_by(s)) {
                    *d = v;
                }
            }
        }
    }
}

/// The inverse of [`split_phases`]: `x[c, iy, ix] = planes[phase][c][iy / s][ix / s]`.
fn merge_phases(g: &ConvGeometry, planes: &[f32], x: &mut [f32]) {
    let s = g.stride;
    let (hpm, wpm) = g.phase_dims();
    for c in 0..g.cin {
        for iy in 0..g.h {
            let dst = &mut x[(c * g.h + iy) * g.w..][..g.w];
            let base = |px: usize| (((iy % s) * s + px) * g.cin + c) * hpm * wpm + (iy / s) * wpm;
            if s == 2 {
                let (even, odd) = (&planes[base(0)..][..wpm], &planes[base(1)..][..wpm]);
                for ((pair, &e), &o) in dst.chunks_exact_mut(2).zip(even).zip(odd) {
                    pair[0] = e;
                    pair[1] = o;
                }
                if g.w % 2 == 1 {
                    dst[g.w - 1] = even[g.w / 2];
                }
                continue;
            }
            for px in 0..s {
                let src = &planes[base(px)..base(px) + wpm];
                for (d, &v) in dst.iter_mut().skip(px).step_by(s).zip(src) {
                    *d = v;
                }
            }
        }
    }
}

/// `cols[(c, ky, kx), (oy, ox)] = x[c, oy·s + ky − p, ox·s + kx − p]` (0 outside), reading the
/// phase planes of `x` (`x` itself at stride 1).
fn im2col(g: &ConvGeometry, planes: &[f32], cols: &mut [f32]) {
    let p = g.positions();
    let (hpm, wpm) = g.phase_dims();
    for ky in 0..g.k {
        for kx in 0..g.k {
            let t = g.tap(ky, kx);
            let (lo, hi, first) = t.cols(g.wo);
            for c in 0..g.cin {
                let plane = &planes[(t.phase * g.cin + c) * hpm * wpm..][..hpm * wpm];
                let row = &mut cols[((c * g.k + ky) * g.k + kx) * p..][..p];
                for oy in 0..g.ho {
                    let dst = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let Some(r) = t.row(oy) else {
                        dst.fill(0.0);
                        continue;
                    };
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    dst[lo..hi].copy_from_slice(&plane[r * wpm + first..][..hi - lo]);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: `planes[...] += cols[(c, ky, kx), (oy, ox)]`.
fn col2im_add(g: &ConvGeometry, cols: &[f32], planes: &mut [f32]) {
    let p = g.positions();
    let (hpm, wpm) = g.phase_dims();
    for ky in 0..g.k {
        for kx in 0..g.k {
            let t = g.tap(ky, kx);
            let (lo, hi, first) = t.cols(g.wo);
            for c in 0..g.cin {
                let plane = &mut planes[(t.phase * g.cin + c) * hpm * wpm..][..hpm * wpm];
                let row = &cols[((c * g.k + ky) * g.k + kx) * p..][..p];
                for oy in 0..g.ho {
                    let Some(r) = t.row(oy) else {
                        continue;
                    };
                    let src = &row[oy * g.wo + lo..oy * g.wo + hi];
                    let dst = &mut plane[r * wpm + first..][..hi - lo];
                    for (d, v) in dst.iter_mut().zip(src) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// Length of the phase-plane buffer (0 at stride 1, where the input is used in place).
fn phases_len(g: &ConvGeometry) -> usize {
    if g.stride == 1 {
        0
    } else {
        let (hpm, wpm) = g.phase_dims();
        g.stride * g.stride * g.cin * hpm * wpm
    }
}

/// im2col of one image `x`, through its phase planes when strided (`planes` is scratch of
/// [`phases_len`] values).
fn image_columns(g: &ConvGeometry, x: &[f32], planes: &mut [f32], cols: &mut [f32]) {
    if g.stride == 1 {
        im2col(g, x, cols);
    } else {
        split_phases(g, x, planes);
        im2col(g, planes, cols);
    }
}

/// The adjoint of [`image_columns`] into the zeroed image gradient `dx`.
fn image_columns_adjoint(g: &ConvGeometry, cols: &[f32], planes: &mut [f32], dx: &mut [f32]) {
    if g.stride == 1 {
        col2im_add(g, cols, dx);
    } else {
        planes.fill(0.0);
        col2im_add(g, cols, planes);
        merge_phases(g, planes, dx);
    }
}

/// Splits `batch` items into contiguous chunks, about two per thread.
fn chunk_len(batch: usize) -> usize {
    batch
        .div_ceil(2 * rayon::current_num_threads().max(1))
        .max(1)
}

/// Forward of a batch `x` `(b, cin, h, w)` with `weight` `(cout, cin·k·k)` and optional bias,
/// then ReLU if `relu`. Returns `(b, cout, ho, wo)`.
pub(crate) fn conv2d_forward(
    g: &ConvGeometry,
    x: &[f32],
    batch: usize,
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
) -> Vec<f32> {
    let (il, ol, kk, p) = (g.in_len(), g.out_len(), g.rows(), g.positions());
    let mut out = vec![0f32; batch * ol];
    let per = chunk_len(batch);
    out.par_chunks_mut(per * ol)
        .zip(x.par_chunks(per * il))
        .for_each(|(out, x)| {
            let mut cols = vec![0f32; kk * p];
            let mut planes = vec![0f32; phases_len(g)];
            for (o, xi) in out.chunks_mut(ol).zip(x.chunks(il)) {
                image_columns(g, xi, &mut planes, &mut cols);
                let beta = match bias {
                    Some(b) => {
                        for (row, &bv) in o.chunks_mut(p).zip(b) {
                            row.fill(bv);
                        }
                        1.0
                    }
                    None => 0.0,
                };
                // SAFETY: weight is cout×kk, cols kk×p, o cout×p, all row-major and disjoint.
                unsafe {
                    sgemm_strided(
                        false,
                        false,
                        g.cout,
                        p,
                        kk,
                        1.0,
                        weight.as_ptr(),
                        kk,
                        cols.as_ptr(),
                        p,
                        beta,
                        o.as_mut_ptr(),
                        p,
                    )
                };
                if relu {
                    relu_in_place(o);
                }
            }
        });
    out
}

/// Input gradient of [`conv2d_forward`]: `dy` `(b, cout, ho, wo)`; with `relu_out` (the forward's
/// ReLU output) the gradient is first zeroed where that output is not positive.
pub(crate) fn conv2d_input_grad(
    g: &ConvGeometry,
    dy: &[f32],
    relu_out: Option<&[f32]>,
    batch: usize,
    weight: &[f32],
) -> Vec<f32> {
    let (il, ol, kk, p) = (g.in_len(), g.out_len(), g.rows(), g.positions());
    let mut dx = vec![0f32; batch * il];
    let per = chunk_len(batch);
    dx.par_chunks_mut(per * il)
        .enumerate()
        .for_each(|(ci, dx)| {
            let mut cols = vec![0f32; kk * p];
            let mut planes = vec![0f32; phases_len(g)];
            let mut masked = vec![0f32; if relu_out.is_some() { ol } else { 0 }];
            for (j, dxi) in dx.chunks_mut(il).enumerate() {
                let i = ci * per + j;
                let dyi = &dy[i * ol..(i + 1) * ol];
                let dyi: &[f32] = match relu_out {
                    Some(r) => {
                        relu_mask(dyi, &r[i * ol..(i + 1) * ol], &mut masked);
                        &masked
                    }
                    None => dyi,
                };
                // SAFETY: weightᵀ is kk×cout (stored cout×kk), dyi cout×p, cols kk×p.
                unsafe {
                    sgemm_strided(
                        true,
                        false,
                        kk,
                        p,
                        g.cout,
                        1.0,
                        weight.as_ptr(),
                        kk,
                        dyi.as_ptr(),
                        p,
                        0.0,
                        cols.as_mut_ptr(),
                        p,
                    )
                };
                image_columns_adjoint(g, &cols, &mut planes, dxi);
            }
        });
    dx
}

/// Weight gradient of [`conv2d_forward`] (no ReLU): `dW = Σ_images dy_i · cols(x_i)ᵀ`, shaped
/// `(cout, cin·k·k)`. Each task accumulates its images; the partial sums are added at the end.
pub(crate) fn conv2d_weight_grad(
    g: &ConvGeometry,
    x: &[f32],
    dy: &[f32],
    batch: usize,
) -> Vec<f32> {
    let (il, ol, kk, p) = (g.in_len(), g.out_len(), g.rows(), g.positions());
    let per = chunk_len(batch);
    let partials: Vec<Vec<f32>> = x[..batch * il]
        .par_chunks(per * il)
        .zip(dy[..batch * ol].par_chunks(per * ol))
        .map(|(xs, dys)| {
            let mut acc = vec![0f32; g.cout * kk];
            let mut cols = vec![0f32; kk * p];
            let mut planes = vec![0f32; phases_len(g)];
            for (xi, dyi) in xs.chunks(il).zip(dys.chunks(ol)) {
                image_columns(g, xi, &mut planes, &mut cols);
                // SAFETY: dyi is cout×p, cols kk×p (used transposed), acc cout×kk.
                unsafe {
                    sgemm_strided(
                        false,
                        true,
                        g.cout,
                        kk,
                        p,
                        1.0,
                        dyi.as_ptr(),
                        p,
                        cols.as_ptr(),
                        p,
                        1.0,
                        acc.as_mut_ptr(),
                        kk,
                    )
                };
            }
            acc
        })
        .collect();
    let mut dw = vec![0f32; g.cout * kk];
    for part in partials {
        for (d, v) in dw.iter_mut().zip(part) {
            *d += v;
        }
    }
    dw
}

/// `y = x·Wᵀ + b` (then ReLU if `relu`) for `x` `(m, din)`, `weight` `(dout, din)`.
pub(crate) fn linear_forward(
    x: &[f32],
    m: usize,
    weight: &[f32],
    bias: &[f32],
    relu: bool,
) -> Vec<f32> {
    let (dout, din) = (bias.len(), weight.len() / bias.len().max(1));
    let mut out = vec![0f32; m * dout];
    let per = chunk_len(m);
    out.par_chunks_mut(per * dout)
        .zip(x.par_chunks(per * din))
        .for_each(|(o, xs)| {
            let rows = o.len() / dout;
            for row in o.chunks_mut(dout) {
                row.copy_from_slice(bias);
            }
            // SAFETY: xs is rows×din, weight dout×din (used transposed), o rows×dout.
            unsafe {
                sgemm_strided(
                    false,
                    true,
                    rows,
                    dout,
                    din,
                    1.0,
                    xs.as_ptr(),
                    din,
                    weight.as_ptr(),
                    din,
                    1.0,
                    o.as_mut_ptr(),
                    dout,
                )
            };
            if relu {
                relu_in_place(o);
            }
        });
    out
}

/// Input gradient of [`linear_forward`]: `dx = (dy ⊙ [relu_out > 0])·W`.
pub(crate) fn linear_input_grad(
    dy: &[f32],
    relu_out: Option<&[f32]>,
    m: usize,
    weight: &[f32],
    dout: usize,
) -> Vec<f32> {
    let din = weight.len() / dout.max(1);
    let mut dx = vec![0f32; m * din];
    let per = chunk_len(m);
    dx.par_chunks_mut(per * din)
        .enumerate()
        .for_each(|(ci, dxs)| {
            let rows = dxs.len() / din;
            let r0 = ci * per;
            let dys = &dy[r0 * dout..(r0 + rows) * dout];
            let mut masked = Vec::new();
            let dys: &[f32] = match relu_out {
                Some(r) => {
                    masked.resize(dys.len(), 0.0);
                    relu_mask(dys, &r[r0 * dout..(r0 + rows) * dout], &mut masked);
                    &masked
                }
                None => dys,
            };
            // SAFETY: dys is rows×dout, weight dout×din, dxs rows×din.
            unsafe {
                sgemm_strided(
                    false,
                    false,
                    rows,
                    din,
                    dout,
                    1.0,
                    dys.as_ptr(),
                    dout,
                    weight.as_ptr(),
                    din,
                    0.0,
                    dxs.as_mut_ptr(),
                    din,
                )
            };
        });
    dx
}

fn relu_in_place(v: &mut [f32]) {
    for x in v {
        // NaN propagates: a broken input must not be hidden by the ReLU.
        *x = if *x > 0.0 || x.is_nan() { *x } else { 0.0 };
    }
}

/// `out = dy` where the ReLU output is positive, 0 elsewhere.
fn relu_mask(dy: &[f32], relu_out: &[f32], out: &mut [f32]) {
    for ((o, &d), &r) in out.iter_mut().zip(dy).zip(relu_out) {
        *o = if r > 0.0 { d } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_conv(g: &ConvGeometry, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; g.out_len()];
        for co in 0..g.cout {
            for oy in 0..g.ho {
                for ox in 0..g.wo {
                    let mut s = 0f32;
                    for c in 0..g.cin {
                        for ky in 0..g.k {
                            for kx in 0..g.k {
                                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                s += w[((co * g.cin + c) * g.k + ky) * g.k + kx]
                                    * x[(c * g.h + iy as usize) * g.w + ix as usize];
                            }
                        }
                    }
                    y[(co * g.ho + oy) * g.wo + ox] = s;
                }
            }
        }
        y
    }

    /// Forward equals the naive sum; the input gradient satisfies ⟨conv(x), dy⟩ = ⟨x, ∇⟩ for
    /// every geometry, including strides that skip input pixels and kernels wider than padding.
    #[test]
    fn forward_matches_naive_and_gradient_is_its_adjoint() {
        let cases = [
            (2, 7, 6, 3, 3, 1, 1),
            (2, 7, 6, 3, 3, 2, 1),
            (3, 9, 9, 4, 3, 2, 0),
            (1, 5, 8, 2, 1, 2, 0),
            (2, 6, 6, 3, 5, 3, 2),
        ];
        for (cin, h, w, cout, k, s, p) in cases {
            let g = ConvGeometry::new((cin, h, w), cout, k, s, p).unwrap();
            let x: Vec<f32> = (0..2 * g.in_len())
                .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
                .collect();
            let wt: Vec<f32> = (0..cout * g.rows())
                .map(|i| ((i * 13 % 17) as f32 - 8.0) / 5.0)
                .collect();
            let y = conv2d_forward(&g, &x, 2, &wt, None, false);
            for b in 0..2 {
                let want = naive_conv(&g, &x[b * g.in_len()..(b + 1) * g.in_len()], &wt);
                for (a, e) in y[b * g.out_len()..(b + 1) * g.out_len()].iter().zip(&want) {
                    assert!(
                        (a - e).abs() < 1e-3,
                        "{cin} {h} {w} {k} {s} {p}: {a} vs {e}"
                    );
                }
            }
            let dy: Vec<f32> = (0..y.len())
                .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
                .collect();
            let dx = conv2d_input_grad(&g, &dy, None, 2, &wt);
            let lhs: f64 = y.iter().zip(&dy).map(|(a, b)| (a * b) as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
            // The convolution is linear in W too: ⟨conv(x; W), dy⟩ = ⟨W, ∇_W⟩.
            let dw = conv2d_weight_grad(&g, &x, &dy, 2);
            let rhs: f64 = wt.iter().zip(&dw).map(|(a, b)| (a * b) as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{lhs} vs {rhs} (weights)"
            );
        }
    }

    #[test]
    fn fused_relu_forward_and_gradient() {
        let g = ConvGeometry::new((1, 4, 4), 2, 3, 1, 1).unwrap();
        let x: Vec<f32> = (0..16).map(|i| i as f32 - 8.0).collect();
        let wt: Vec<f32> = (0..18).map(|i| (i as f32 - 9.0) / 4.0).collect();
        let plain = conv2d_forward(&g, &x, 1, &wt, Some(&[0.5, -0.5]), false);
        let fused = conv2d_forward(&g, &x, 1, &wt, Some(&[0.5, -0.5]), true);
        for (p, f) in plain.iter().zip(&fused) {
            assert_eq!(*f, p.max(0.0));
        }
        let dy = vec![1f32; 32];
        let masked: Vec<f32> = plain
            .iter()
            .map(|&v| if v > 0.0 { 1.0 } else { 0.0 })
            .collect();
        assert_eq!(
            conv2d_input_grad(&g, &dy, Some(&fused), 1, &wt),
            conv2d_input_grad(&g, &masked, None, 1, &wt)
        );
        let lin = linear_forward(&[1.0, -2.0], 1, &[1.0, 1.0, -1.0, 0.0], &[0.0, 0.5], true);
        assert_eq!(lin, vec![0.0, 0.0]);
        let dx = linear_input_grad(&[1.0, 1.0], Some(&[0.0, 1.0]), 1, &[1.0, 1.0, -1.0, 0.0], 2);
        assert_eq!(dx, vec![-1.0, 0.0]);
    }
}
