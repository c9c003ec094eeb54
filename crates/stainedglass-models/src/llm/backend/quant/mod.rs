//! Weights kept as stored: a matrix of GGUF-quantized rows ([`QMatrix`]) multiplied in
//! quantized form, or of 16-bit floats (bf16/f16, e.g. from safetensors; `half.rs`) widened to
//! f32 on use. The activations are quantized per row to 8-bit blocks (`act.rs`); Q4_0, Q4_1,
//! Q4_K (re-packed as Q4_1 blocks with 6-bit scales, `q4k.rs`) and Q8_0 rows run our kernels
//! (`dot.rs`), Q6_K rows candle's dot product for one activation row and our kernels for more
//! (`q6k.rs`), every other quantized type candle's per-type dot products (`ggml.rs`). One parallel pass covers
//! every part of a fused matrix (e.g. `[q | k | v]` with a Q5_K `v`), so a decode step pays one
//! dispatch per product.
//!
//! Numerics ([`Activations`]): by default the f32 model's, bit for bit (`exact.rs`); or, for
//! decoding, llama.cpp's (8-bit activations, integer block sums, f32 accumulation; `int8.rs`).
//! A matrix made with [`QMatrix::bf16_from_f32`] always multiplies in bf16 with f32
//! accumulation (`bf16_gemm.rs`): the client transform's products with `Precision::Bf16`.

mod act;
mod bf16_gemm;
mod deq;
mod dot;
mod dot512;
mod exact;
#[cfg(target_arch = "x86_64")]
mod exact512;
mod ggml;
mod half_rows;
mod int8;
mod out_ptr;
mod parse;
mod q4k;
mod q6k;
#[cfg(target_arch = "x86_64")]
mod tile16;
#[cfg(target_arch = "x86_64")]
mod tile8;

use candle_core::quantized::GgmlDType;

pub(super) use super::pool::spin_pool;
pub use dot::Isa;
use ggml::GgmlRows;
pub(crate) use half_rows::HalfKind;
pub use parse::GgufPiece;

/// The most activation rows the 8-bit product takes (a decode step of up to this many
/// requests); more rows are a prefill, faster in f32 through the BLAS — except for a matrix
/// of Q4_0/Q4_1/Q4_K/Q8_0 rows only on a CPU with 512-bit VNNI, whose tiles of 16 weight rows
/// (`tile16.rs`) take any number (a 256-token prefill 1.3–2.1× the BLAS path), or of Q4 rows
/// only on a CPU with AVX2 (`tile8.rs`); see also [`GGML_INT8_MAX_ROWS`] and
/// [`AVX2_Q8_INT8_MAX_ROWS`].
pub const INT8_MAX_ROWS: usize = 128;

/// The most activation rows the 8-bit product takes for a matrix with a Q5_K (or other
/// candle-multiplied) part: candle's per-row dot products reuse no weights across activation
/// rows, so they stay at 20–45 GMAC/s on two cores whatever the row count, and the f32 BLAS
/// overtakes them between 16 and 32 rows (`q4_int8_speed` on 3072 × 768, 3 alternating
/// rounds, `docs/bench-runs/kquant-int8-speed.jsonl`: Q4_K 26–44 against 21–23 GMAC/s at 16
/// rows, 20–30 against 29–34 at 32; Q6_K 36 against 25–28, then 35–38 against 40–42).
pub const GGML_INT8_MAX_ROWS: usize = 16;

/// The most activation rows the 8-bit product takes for a matrix with Q8_0 rows on a CPU with
/// AVX2 and no VNNI: `tile8.rs`'s Q8_0 tiles (no `vpdpbusd`: signed weights cost a sign and a
/// widening per word) level off near 70 GMAC/s on two cores, and the f32 BLAS overtakes them
/// between 64 and 256 rows (`q4_int8_speed`, the bundled model's 49152 × 576 Q8_0 LM head, 2
/// alternating rounds on an AVX2-only AMD EPYC: 52–53 against 35–37 GMAC/s at 16 rows, 63–70
/// against 62–67 at 64, 69–75 against 81–85 at 256). Matrices of Q4 rows only take any number
/// on such a CPU (`tile8.rs`: 70–87 against 43–77 GMAC/s at 256 rows).
pub const AVX2_Q8_INT8_MAX_ROWS: usize = 64;

impl std::str::FromStr for Activations {
    type Err = String;

    /// `f32`, `int8` or `bf16`, as the command line names them.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Activations::F32),
            "int8" => Ok(Activations::Int8),
            "bf16" => Ok(Activations::Bf16),
            other => Err(format!("activations `{other}`: expected f32, int8 or bf16")),
        }
    }
}

/// The fewest activation rows [`Activations::Bf16`] multiplies in bf16 (a prefill: below it,
/// decoding, the product is memory-bound and stays exact).
pub const BF16_MIN_ROWS: usize = 32;

/// Rows of one storage type inside a [`QMatrix`].
pub(super) enum Part {
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
    /// bf16 or f16 values (as bits), widened to f32 exactly on use.
    Half {
        rows: usize,
        kind: HalfKind,
        vals: Vec<u16>,
    },
    Ggml(Box<dyn GgmlRows>),
    /// f32 weights rounded to bf16 and packed for the bf16 product (the whole matrix).
    Bf16Panels(bf16_gemm::Bf16Panels),
}

impl Part {
    pub(super) fn rows(&self) -> usize {
        match self {
            Part::Q4 { rows, .. } | Part::Q8 { rows, .. } | Part::Half { rows, .. } => *rows,
            Part::Ggml(g) => g.rows(),
            Part::Bf16Panels(p) => p.rows(),
        }
    }

    fn name(&self) -> String {
        match self {
            Part::Q4 { m: None, .. } => "Q4_0".into(),
            Part::Q4 { m: Some(_), .. } => "Q4_1".into(),
            Part::Q8 { .. } => "Q8_0".into(),
            Part::Half { kind, .. } => kind.name().into(),
            Part::Ggml(g) => format!("{:?}", g.dtype()),
            Part::Bf16Panels(_) => "BF16 (panels)".into(),
        }
    }
}

/// A `rows × cols` weight matrix in its stored (quantized) form; `x · Wᵀ` products.
pub struct QMatrix {
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) parts: Vec<Part>,
    /// How [`QMatrix::product`] multiplies.
    activations: Activations,
}

/// How a stored matrix multiplies its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Quantized to 8 bits per block of 32, integer block sums (llama.cpp's numerics), in
    /// decoding and, for Q4_0/Q4_1/Q4_K/Q8_0 matrices on a 512-bit VNNI CPU, in prefill too
    /// (elsewhere prefills beyond [`INT8_MAX_ROWS`] rows run in f32): about twice as fast as
    /// [`Activations::F32`], and greedy replies may differ from the f32 model's where its top
    /// two tokens are close.
    Int8,
    /// For bf16 rows (a bf16 safetensors folder): products of at least [`BF16_MIN_ROWS`]
    /// rows (prefill) round the activations to bf16 and run the AVX-512 BF16 kernel with f32
    /// accumulation, as PyTorch's bf16 does (about 0.1–0.5% of a dot product's scale off the
    /// f32 model's); fewer rows (decoding) and other storage types as [`Activations::F32`].
    Bf16,
    /// Kept in f32, weights dequantized on the fly and multiplied in the f32 model's order:
    /// the f32 model's numbers bit for bit (what an SGT was trained against), at a fraction of
    /// its memory.
    #[default]
    F32,
}

impl QMatrix {
    /// A matrix from a GGUF tensor's bytes: `dtype`, `rows × cols` values.
    pub fn from_gguf(
        dtype: GgmlDType,
        data: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        Self::from_gguf_pieces(
            &[GgufPiece {
                dtype,
                data,
                rows,
                order: None,
            }],
            cols,
        )
    }

    /// `w` (`rows × cols`, row-major f32) rounded to bf16, multiplied in bf16 with f32
    /// accumulation by [`QMatrix::product`] whatever the [`Activations`] (the inputs rounded
    /// to bf16 too): about twice the f32 product's speed on a CPU with AVX-512 BF16, within
    /// bf16's precision (relative error about 2⁻⁸ per term).
    ///
    /// # Panics
    /// If `w` is not `rows × cols` long.
    pub fn bf16_from_f32(w: &[f32], rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            parts: vec![Part::Bf16Panels(bf16_gemm::Bf16Panels::from_f32(
                w, rows, cols,
            ))],
            activations: Activations::default(),
        }
    }

    /// Sets how [`QMatrix::product`] multiplies.
    pub fn set_activations(&mut self, a: Activations) {
        self.activations = a;
    }

    /// `out (m × rows) = x (m × cols) · Wᵀ`, added to `out` when `accumulate`: up to
    /// [`INT8_MAX_ROWS`] rows (decoding, a batch of decoding requests) with the matrix's
    /// [`Activations`], more (prefill) in f32 through the BLAS on dequantized tiles (faster
    /// there than 8-bit row products, and exact) — unless the tiles of 16 or of 8 take every
    /// part (see [`INT8_MAX_ROWS`]): then `Int8` takes any number of rows.
    ///
    /// # Panics
    /// If `x` is not `m × cols` or `out` not `m × rows` (checked before any work starts).
    pub fn product(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) {
        assert!(
            x.len() == m * self.cols && out.len() == m * self.rows,
            "quantized product: {} inputs and {} outputs for {m} rows of a {} × {} matrix",
            x.len(),
            out.len(),
            self.rows,
            self.cols
        );
        if let [Part::Bf16Panels(p)] = self.parts.as_slice() {
            return p.product(x, m, out, accumulate);
        }
        if self.activations == Activations::Bf16
            && m >= BF16_MIN_ROWS
            && self.product_bf16(x, m, out, accumulate)
        {
            return;
        }
        // 16-bit float rows gain nothing from 8-bit activations: they always multiply in f32.
        let quantized = self.parts.iter().any(|p| !matches!(p, Part::Half { .. }));
        match self.activations {
            Activations::Int8 if m <= self.int8_max_rows() && quantized => {
                self.product_int8(x, m, out, accumulate)
            }
            _ => self.product_f32(x, m, out, accumulate),
        }
    }

    /// The most activation rows the 8-bit product takes for this matrix on this CPU.
    fn int8_max_rows(&self) -> usize {
        // Q4_K and Q6_K rows are candle's blocks, unpacked for our tiles (`q4k.rs`, `q6k.rs`).
        let k_quant = |p: &Part, t: GgmlDType| matches!(p, Part::Ggml(g) if g.dtype() == t);
        let (q4k, q6k) = (
            |p: &Part| k_quant(p, GgmlDType::Q4K),
            |p: &Part| k_quant(p, GgmlDType::Q6K),
        );
        if self
            .parts
            .iter()
            .any(|p| matches!(p, Part::Ggml(_)) && !q4k(p) && !q6k(p))
        {
            return GGML_INT8_MAX_ROWS;
        }
        let tiled = self
            .parts
            .iter()
            .all(|p| matches!(p, Part::Q4 { .. } | Part::Q8 { .. }) || q4k(p));
        let q8 = self
            .parts
            .iter()
            .any(|p| matches!(p, Part::Q8 { .. }) || q6k(p));
        match Isa::get() {
            Isa::Vnni512 if tiled => usize::MAX,
            Isa::Avx2 if tiled && !q8 => usize::MAX,
            Isa::Avx2 if q8 => AVX2_Q8_INT8_MAX_ROWS,
            _ => INT8_MAX_ROWS,
        }
    }

    /// The product in bf16 when every part is bf16 rows (each part its own columns of
    /// `out`); false, with nothing written, otherwise.
    fn product_bf16(&self, x: &[f32], m: usize, out: &mut [f32], accumulate: bool) -> bool {
        let all_bf16 = self.parts.iter().all(|p| {
            matches!(
                p,
                Part::Half {
                    kind: HalfKind::Bf16,
                    ..
                }
            )
        });
        if !all_bf16 {
            return false;
        }
        let mut col0 = 0;
        for p in &self.parts {
            if let Part::Half { rows, vals, .. } = p {
                bf16_gemm::product_bf16_rows(
                    vals,
                    (*rows, self.cols),
                    x,
                    m,
                    out,
                    (self.rows, col0),
                    accumulate,
                );
                col0 += rows;
            }
        }
        true
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
                Part::Half { vals, .. } => 2 * vals.len(),
                Part::Ggml(g) => g.bytes(),
                Part::Bf16Panels(p) => p.bytes(),
            })
            .sum()
    }

    /// The storage types of the parts, e.g. `Q4_1` or `Q4_K+Q6_K`.
    pub fn storage(&self) -> String {
        let names: Vec<String> = self.parts.iter().map(Part::name).collect();
        names.join("+")
    }

    /// Rows `g0..g0 + out.len() / cols` (across parts) as f32 values, exactly as candle
    /// dequantizes them (the f32 model's weights).
    pub(crate) fn rows_f32(&self, mut g0: usize, out: &mut [f32]) {
        let k = self.cols;
        let mut done = 0;
        let count = out.len() / k.max(1);
        for p in &self.parts {
            let pr = p.rows();
            if g0 >= pr {
                g0 -= pr;
                continue;
            }
            let take = (pr - g0).min(count - done);
            let dst = &mut out[done * k..(done + take) * k];
            match p {
                Part::Ggml(q) if q.dtype() == GgmlDType::Q4K => {
                    q4k::rows_f32(q.raw(), (g0, take, k), dst)
                }
                Part::Ggml(q) if q.dtype() == GgmlDType::Q6K => {
                    q6k::rows_f32(q.raw(), (g0, take, k), dst)
                }
                _ => self.part_rows_f32(p, g0, dst),
            }
            done += take;
            g0 = 0;
            if done == count {
                return;
            }
        }
    }

    /// Rows `g0..` of one part into `out` (whole rows), candle's values.
    fn part_rows_f32(&self, p: &Part, g0: usize, out: &mut [f32]) {
        let k = self.cols;
        for (i, row) in out.chunks_exact_mut(k).enumerate() {
            match p {
                Part::Q4 { d, m, qs, .. } => deq::q4(qs, d, m.as_deref(), g0 + i, row),
                Part::Q8 { d, qs, .. } => deq::q8(qs, d, g0 + i, row),
                Part::Half { kind, vals, .. } => {
                    half_rows::widen(*kind, &vals[(g0 + i) * k..(g0 + i + 1) * k], row)
                }
                Part::Ggml(g) => g.dequantize_row(g0 + i, row),
                Part::Bf16Panels(p) => p.row_f32(g0 + i, row),
            }
        }
    }

    /// Row `row` as f32 values (`out`: `cols` long).
    ///
    /// # Panics
    /// If `row` is not below the row count (callers check ids first).
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} of a {}-row matrix", self.rows);
        self.rows_f32(row, &mut out[..self.cols]);
    }
}

#[cfg(test)]
mod speed_tests;
#[cfg(test)]
mod tests;
