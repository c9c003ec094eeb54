//! Building a [`QMatrix`] from GGUF tensor bytes: one or several tensors stacked by rows (a
//! fused `[q | k | v]`), each optionally read in another row order. Neighbouring tensors of
//! one of our types (Q4_0, Q4_1, Q8_0, F16, BF16) become one part whose buffers are allocated once at
//! their final size; a load's memory is the model's own, without copies or growth.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::act::QK;
use super::{ggml, half_rows, Activations, HalfKind, Part, QMatrix};

/// One GGUF tensor's rows, as [`QMatrix::from_gguf_pieces`] reads them.
pub struct GgufPiece<'a> {
    pub dtype: GgmlDType,
    /// The tensor's bytes (`rows` rows of blocks).
    pub data: &'a [u8],
    pub rows: usize,
    /// New row `i` is stored row `order[i]` (e.g. llama.cpp's rotary permutation undone).
    pub order: Option<Vec<usize>>,
}

/// Bytes of one block of our types.
fn block_bytes(dtype: GgmlDType) -> Option<usize> {
    match dtype {
        GgmlDType::Q4_0 => Some(18),
        GgmlDType::Q4_1 => Some(20),
        GgmlDType::Q8_0 => Some(34),
        _ => None,
    }
}

/// The 16-bit float kind of F16/BF16 tensors (kept as [`Part::Half`]).
fn half_kind(dtype: GgmlDType) -> Option<HalfKind> {
    match dtype {
        GgmlDType::BF16 => Some(HalfKind::Bf16),
        GgmlDType::F16 => Some(HalfKind::F16),
        _ => None,
    }
}

/// Whether neighbouring tensors of `dtype` become one part of ours.
fn ours(dtype: GgmlDType) -> bool {
    block_bytes(dtype).is_some() || half_kind(dtype).is_some()
}

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

impl GgufPiece<'_> {
    fn check(&self, cols: usize) -> Result<(), String> {
        let dtype = self.dtype;
        if cols == 0 || self.rows == 0 {
            return Err(format!("{dtype:?} tensor of {} × {cols} values", self.rows));
        }
        if let Some(o) = &self.order {
            if o.len() != self.rows || o.iter().any(|&r| r >= self.rows) {
                return Err("row order of another length".into());
            }
        }
        if half_kind(dtype).is_some() {
            let want = self.rows.checked_mul(cols).and_then(|n| n.checked_mul(2));
            if Some(self.data.len()) != want {
                return Err(format!(
                    "{dtype:?} data of {} bytes for {} × {cols} values",
                    self.data.len(),
                    self.rows
                ));
            }
        }
        if let Some(size) = block_bytes(dtype) {
            if !cols.is_multiple_of(QK) {
                return Err(format!(
                    "{dtype:?} rows of {cols} values: not blocks of {QK}"
                ));
            }
            let want = self
                .rows
                .checked_mul(cols / QK)
                .and_then(|b| b.checked_mul(size))
                .ok_or_else(|| {
                    format!(
                        "{dtype:?} tensor of {} × {cols} values: too large",
                        self.rows
                    )
                })?;
            if self.data.len() != want {
                return Err(format!(
                    "{dtype:?} data of {} bytes for {} × {cols} values (expected {want})",
                    self.data.len(),
                    self.rows
                ));
            }
        }
        Ok(())
    }

    /// The rows' bytes in their new order.
    fn rows_in_order(&self, row_bytes: usize) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.rows).map(move |i| {
            let r = self.order.as_ref().map_or(i, |o| o[i]);
            &self.data[r * row_bytes..(r + 1) * row_bytes]
        })
    }
}

impl QMatrix {
    /// The rows of `pieces`, one after the other, each `cols` values wide.
    pub fn from_gguf_pieces(pieces: &[GgufPiece<'_>], cols: usize) -> Result<Self, String> {
        for p in pieces {
            p.check(cols)?;
        }
        let mut parts = Vec::new();
        let mut i = 0;
        while i < pieces.len() {
            let dtype = pieces[i].dtype;
            let run = pieces[i..].iter().take_while(|p| p.dtype == dtype).count();
            let run = if ours(dtype) { run } else { 1 };
            parts.push(parse_run(&pieces[i..i + run], cols)?);
            i += run;
        }
        let rows = pieces.iter().map(|p| p.rows).sum();
        Ok(Self {
            rows,
            cols,
            parts,
            activations: Activations::default(),
        })
    }
}

/// One part from neighbouring pieces of one type (checked).
fn parse_run(run: &[GgufPiece<'_>], cols: usize) -> Result<Part, String> {
    let first = &run[0];
    let dtype = first.dtype;
    let rows: usize = run.iter().map(|p| p.rows).sum();
    let nb = rows * cols / QK;
    let part = match dtype {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let q41 = dtype == GgmlDType::Q4_1;
            let size = if q41 { 20 } else { 18 };
            let mut d = Vec::with_capacity(nb);
            let mut m = Vec::with_capacity(if q41 { nb } else { 0 });
            let mut qs = Vec::with_capacity(nb * 16);
            for p in run {
                for b in p
                    .rows_in_order(size * cols / QK)
                    .flat_map(|r| r.chunks_exact(size))
                {
                    d.push(half_at(b, 0));
                    if q41 {
                        m.push(half_at(b, 2));
                    }
                    qs.extend_from_slice(&b[size - 16..]);
                }
            }
            Part::Q4 {
                rows,
                d,
                m: q41.then_some(m),
                qs,
            }
        }
        GgmlDType::Q8_0 => {
            let mut d = Vec::with_capacity(nb);
            let mut qs = Vec::with_capacity(nb * QK);
            for p in run {
                for b in p
                    .rows_in_order(34 * cols / QK)
                    .flat_map(|r| r.chunks_exact(34))
                {
                    d.push(half_at(b, 0));
                    qs.extend(b[2..].iter().map(|&v| v as i8));
                }
            }
            Part::Q8 { rows, d, qs }
        }
        GgmlDType::F16 | GgmlDType::BF16 => {
            let mut vals = Vec::with_capacity(rows * cols);
            for p in run {
                for r in p.rows_in_order(2 * cols) {
                    vals.extend(r.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
                }
            }
            let kind = half_kind(dtype).unwrap_or(HalfKind::F16);
            Part::Half { rows, kind, vals }
        }
        _ => {
            let mut g = ggml::rows_for(dtype, first.data, first.rows, cols)?;
            if let Some(o) = &first.order {
                g.permute(o);
            }
            Part::Ggml(g)
        }
    };
    let bad = match &part {
        Part::Q4 { d, m, .. } => d.iter().chain(m.iter().flatten()).any(|v| !v.is_finite()),
        Part::Q8 { d, .. } => d.iter().any(|v| !v.is_finite()),
        Part::Half { kind, vals, .. } => !half_rows::all_finite(*kind, vals),
        // Never parsed from a file (made from f32 weights in memory).
        Part::Bf16Panels(_) => false,
        // A Q4_K or Q6_K value is its super-block's f16 factors times small integers: finite
        // factors (`d`, `dmin` at bytes 0..4 of a Q4_K block; `d` at 208..210 of a Q6_K one)
        // make every value finite, without dequantizing the matrix.
        Part::Ggml(g) if matches!(g.dtype(), GgmlDType::Q4K | GgmlDType::Q6K) => {
            let (size, at): (usize, &[usize]) = if g.dtype() == GgmlDType::Q4K {
                (144, &[0, 2])
            } else {
                (210, &[208])
            };
            let finite = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).is_finite();
            g.raw()
                .chunks_exact(size)
                .any(|b| at.iter().any(|&i| !finite(b, i)))
        }
        Part::Ggml(g) => {
            let mut row = vec![0f32; cols];
            (0..g.rows()).any(|r| {
                g.dequantize_row(r, &mut row);
                row.iter().any(|v| !v.is_finite())
            })
        }
    };
    if bad {
        return Err(format!("{dtype:?} weights hold NaN or Inf"));
    }
    Ok(part)
}
