//! Weights kept as stored: a matrix of GGUF-quantized rows ([`QMatrix`]) multiplied in
//! quantized form. The activations are quantized per row to 8-bit blocks (`act.rs`); Q4_0, Q4_1
//! and Q8_0 rows run our kernels (`dot.rs`), every other storage type candle's per-type dot
//! products (`ggml.rs`). One parallel pass covers every part of a fused matrix (e.g. `[q | k |
//! v]` with a Q6_K `v`), so a decode step pays one dispatch per product.
//!
//! Numerics: llama.cpp's (8-bit activations, integer block sums, f32 accumulation), not the
//! f32 path's; the frozen model an SGT trains against runs in f32 (`Llama::load`), serving may
//! run from these.

mod act;
mod dot;
mod ggml;

use candle_core::quantized::GgmlDType;
use half::f16;
use rayon::prelude::*;

pub use dot::Isa;
use act::{ActQ8, QK};
use ggml::GgmlRows;

/// Rows of one storage type inside a [`QMatrix`].
enum Part {
    /// Q4_0 (`m` absent: value = (nibble − 8)·d) or Q4_1 (value = nibble·d + m).
    Q4 {
        rows: usize,
        d: Vec<f32>,
        m: Option<Vec<f32>>,
        qs: Vec<u8>,
    },
    /// Q8_0: value = q·d.
    Q8 {
        rows: usize,
        d: Vec<f32>,
        qs: Vec<i8>,
    },
    Ggml(Box<dyn GgmlRows>),
}

impl Part {
    fn rows(&self) -> usize {
        match self {
            Part::Q4 { rows, .. } | Part::Q8 { rows, .. } => *rows,
            Part::Ggml(g) => g.rows(),
        }
    }

    fn name(&self) -> String {
        match self {
            Part::Q4 { m: None, .. } => "Q4_0".into(),
            Part::Q4 { m: Some(_), .. } => "Q4_1".into(),
            Part::Q8 { .. } => "Q8_0".into(),
            Part::Ggml(g) => format!("{:?}", g.dtype()),
        }
    }
}

/// A `rows × cols` weight matrix in its stored (quantized) form; `x · Wᵀ` products.
pub struct QMatrix {
    rows: usize,
    cols: usize,
    parts: Vec<Part>,
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

impl QMatrix {
    /// A matrix from a GGUF tensor's bytes: `dtype`, `rows × cols` values.
    pub fn from_gguf(
        dtype: GgmlDType,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        let own = matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0);
        if own && cols % QK != 0 {
            return Err(format!("{dtype:?} rows of {cols} values: not blocks of {QK}"));
        }
        let nb = rows * cols / QK;
        let check = |size: usize| {
            if data.len() == nb * size {
                Ok(())
            } else {
                Err(format!(
                    "{dtype:?} data of {} bytes for {rows} × {cols} values (expected {})",
                    data.len(),
                    nb * size
                ))
            }
        };
        let part = match dtype {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
                let q41 = dtype == GgmlDType::Q4_1;
                let size = if q41 { 20 } else { 18 };
                check(size)?;
                let mut d = Vec::with_capacity(nb);
                let mut m = Vec::with_capacity(if q41 { nb } else { 0 });
                let mut qs = Vec::with_capacity(nb * 16);
                for b in data.chunks_exact(size) {
                    d.push(half_at(b, 0));
                    if q41 {
                        m.push(half_at(b, 2));
                    }
                    qs.extend_from_slice(&b[size - 16..]);
                }
                Part::Q4 {
                    rows,
                    d,
                    m: q41.then_some(m),
                    qs,
                }
            }
            GgmlDType::Q8_0 => {
                check(34)?;
                let mut d = Vec::with_capacity(nb);
                let mut qs = Vec::with_capacity(nb * QK);
                for b in data.chunks_exact(34) {
                    d.push(half_at(b, 0));
                    qs.extend(b[2..].iter().map(|&v| v as i8));
                }
                Part::Q8 { rows, d, qs }
            }
            _ => Part::Ggml(ggml::rows_for(dtype, data, rows, cols)?),
        };
        let bad = match &part {
            Part::Q4 { d, m, .. } => d.iter().chain(m.iter().flatten()).any(|v| !v.is_finite()),
            Part::Q8 { d, .. } => d.iter().any(|v| !v.is_finite()),
            Part::Ggml(g) => {
                let mut row = vec![0f32; cols];
                (0..rows).any(|r| {
                    g.dequantize_row(r, &mut row);
                    row.iter().any(|v| !v.is_finite())
                })
            }
        };
        if bad {
            return Err(format!("{dtype:?} weights hold NaN or Inf"));
        }
        Ok(Self {
            rows,
            cols,
            parts: vec![part],
        })
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes the matrix holds.
    pub fn bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Q4 { d, m, qs, .. } => {
                    4 * d.len() + m.as_ref().map_or(0, |m| 4 * m.len()) + qs.len()
                }
                Part::Q8 { d, qs, .. } => 4 * d.len() + qs.len(),
                Part::Ggml(g) => g.bytes(),
            })
            .sum()
    }

    /// The storage types of the parts, e.g. `Q4_1` or `Q4_K+Q6_K`.
    pub fn storage(&self) -> String {
        let names: Vec<String> = self.parts.iter().map(Part::name).collect();
        names.join("+")
    }

    /// Reorders the rows: new row `i` is old row `perm[i]` (one-part matrices only: done
    /// right after loading).
    pub fn permute_rows(&mut self, perm: &[usize]) -> Result<(), String> {
        if self.parts.len() != 1 || perm.len() != self.rows {
            return Err("row permutation of a fused matrix".into());
        }
        let nb = self.cols / QK;
        let pick = |v: &[f32], w: usize| -> Vec<f32> {
            perm.iter().flat_map(|&p| v[p * w..(p + 1) * w].iter().copied()).collect()
        };
        match &mut self.parts[0] {
            Part::Q4 { d, m, qs, .. } => {
                *d = pick(d, nb);
                if let Some(m) = m {
                    *m = pick(m, nb);
                }
                *qs = perm
                    .iter()
                    .flat_map(|&p| qs[p * nb * 16..(p + 1) * nb * 16].iter().copied())
                    .collect();
            }
            Part::Q8 { d, qs, .. } => {
                *d = pick(d, nb);
                *qs = perm
                    .iter()
                    .flat_map(|&p| qs[p * nb * QK..(p + 1) * nb * QK].iter().copied())
                    .collect();
            }
            Part::Ggml(g) => g.permute(perm),
        }
        Ok(())
    }

    /// The rows of `mats` one after the other (same column count); neighbouring parts of one
    /// of our types are merged, so the product runs them as one.
    pub fn concat(mats: Vec<QMatrix>) -> Result<Self, String> {
        let cols = mats.first().map_or(0, |m| m.cols);
        if mats.iter().any(|m| m.cols != cols) {
            return Err("fused matrices of different widths".into());
        }
        let rows = mats.iter().map(|m| m.rows).sum();
        let mut parts: Vec<Part> = Vec::new();
        for p in mats.into_iter().flat_map(|m| m.parts) {
            match (parts.last_mut(), p) {
                (
                    Some(Part::Q4 { rows, d, m, qs }),
                    Part::Q4 {
                        rows: r2,
                        d: d2,
                        m: m2,
                        qs: q2,
                    },
                ) if m.is_some() == m2.is_some() => {
                    *rows += r2;
                    d.extend(d2);
                    if let (Some(m), Some(m2)) = (m.as_mut(), m2) {
                        m.extend(m2);
                    }
                    qs.extend(q2);
                }
                (
                    Some(Part::Q8 { rows, d, qs }),
                    Part::Q8 {
                        rows: r2,
                        d: d2,
                        qs: q2,
                    },
                ) => {
                    *rows += r2;
                    d.extend(d2);
                    qs.extend(q2);
                }
                (_, p) => parts.push(p),
            }
        }
        Ok(Self { rows, cols, parts })
    }

    /// Row `row` as f32 values (`out`: `cols` long).
    pub fn dequantize_row(&self, mut row: usize, out: &mut [f32]) {
        let nb = self.cols / QK;
        for p in &self.parts {
            if row >= p.rows() {
                row -= p.rows();
                continue;
            }
            match p {
                Part::Q4 { d, m, qs, .. } => {
                    for b in 0..nb {
                        let (scale, min) = match m {
                            Some(m) => (d[row * nb + b], m[row * nb + b]),
                            None => (d[row * nb + b], -8.0 * d[row * nb + b]),
                        };
                        let q = &qs[(row * nb + b) * 16..][..16];
                        for j in 0..16 {
                            out[b * QK + j] = f32::from(q[j] & 0x0f) * scale + min;
                            out[b * QK + j + 16] = f32::from(q[j] >> 4) * scale + min;
                        }
                    }
                }
                Part::Q8 { d, qs, .. } => {
                    for (i, o) in out.iter_mut().enumerate().take(self.cols) {
                        *o = f32::from(qs[row * self.cols + i]) * d[row * nb + i / QK];
                    }
                }
                Part::Ggml(g) => g.dequantize_row(row, out),
            }
            return;
        }
    }

    /// `out (m × rows) = x (m × cols) · Wᵀ`, added to `out` when `accumulate`.
    pub fn product(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        let (n, k) = (self.rows, self.cols);
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(out.len(), m * n);
        let isa = Isa::get();
        let own = self.parts.iter().any(|p| !matches!(p, Part::Ggml(_)));
        let act = own.then(|| ActQ8::new(x, k));
        let preps: Vec<Option<ggml::Prepared>> = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Ggml(g) => Some(g.prepare(x)),
                _ => None,
            })
            .collect();
        // Tasks of whole groups of four rows, several per thread.
        let per_task = (n / (rayon::current_num_threads() * 8)).clamp(16, 256) / 4 * 4;
        let mut tasks = Vec::new();
        let mut offset = 0;
        for (pi, p) in self.parts.iter().enumerate() {
            let r = p.rows();
            tasks.extend((0..r).step_by(per_task).map(|s| (pi, s, (s + per_task).min(r), offset)));
            offset += r;
        }
        let out_ptr = OutPtr(out.as_mut_ptr());
        tasks.par_iter().for_each(|&(pi, r0, r1, offset)| {
            let write = |ar: usize, j: usize, v: f32| {
                // SAFETY: each (row, column) of `out` (m × n) belongs to one task.
                unsafe {
                    let p = out_ptr.at(ar * n + offset + j);
                    *p = if accumulate { *p + v } else { v };
                }
            };
            match &self.parts[pi] {
                Part::Ggml(g) => {
                    let Some(prep) = &preps[pi] else { return };
                    for j in r0..r1 {
                        for ar in 0..m {
                            write(ar, j, g.dot(j, prep, ar));
                        }
                    }
                }
                part => {
                    let Some(act) = &act else { return };
                    own_rows(isa, part, act, k / QK, (r0, r1), m, write);
                }
            }
        });
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the product's tasks write disjoint elements and are joined before `out` is read.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers index inside `out`.
        unsafe { self.0.add(i) }
    }
}

/// Rows `r0..r1` of one of our parts with every activation row, four rows at a time.
fn own_rows(
    isa: Isa,
    part: &Part,
    act: &ActQ8,
    nb: usize,
    (r0, r1): (usize, usize),
    m: usize,
    write: impl Fn(usize, usize, f32),
) {
    let mut j = r0;
    while j < r1 {
        let four = j + 4 <= r1;
        for ar in 0..m {
            let (xq, xd, xs) = act.row(ar);
            let mut v = [0f32; 4];
            match part {
                Part::Q4 { d, m: mins, qs, .. } => {
                    let (q, dd) = (&qs[j * nb * 16..], &d[j * nb..]);
                    if four {
                        v = dot::q4_dots::<4>(isa, q, dd, xq, xd);
                    } else {
                        v[0] = dot::q4_dots::<1>(isa, q, dd, xq, xd)[0];
                    }
                    for (r, val) in v.iter_mut().enumerate().take(if four { 4 } else { 1 }) {
                        let row = (j + r) * nb;
                        let off: f32 = match mins {
                            Some(mn) => mn[row..row + nb].iter().zip(xs).map(|(a, b)| a * b).sum(),
                            None => -8.0 * d[row..row + nb].iter().zip(xs).map(|(a, b)| a * b).sum::<f32>(),
                        };
                        *val += off;
                    }
                }
                Part::Q8 { d, qs, .. } => {
                    let (q, dd) = (&qs[j * nb * QK..], &d[j * nb..]);
                    if four {
                        v = dot::q8_dots::<4>(isa, q, dd, xq, xd);
                    } else {
                        v[0] = dot::q8_dots::<1>(isa, q, dd, xq, xd)[0];
                    }
                }
                Part::Ggml(_) => return,
            }
            for (r, val) in v.iter().enumerate().take(if four { 4 } else { 1 }) {
                write(ar, j + r, *val);
            }
        }
        j += if four { 4 } else { 1 };
    }
}

#[cfg(test)]
mod tests;
