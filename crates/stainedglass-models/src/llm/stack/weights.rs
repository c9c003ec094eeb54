//! One decoder layer's weights as host slices ([`LayerWeights`]), their gradients
//! ([`LayerGrads`]), their packed forms for training's large products ([`PackedLayer`]), and the
//! products a layer pass makes with them (row dot products for a few rows, BLAS otherwise).

use stainedglass_core::host::zeroed;

use crate::llm::backend::blas::{par_sgemm, par_sgemm_new};
use crate::llm::backend::gemv::gemv_rows;
use crate::llm::backend::ops::GEMV_MAX_ROWS;
use crate::llm::backend::packed::PackedMatrix;
use crate::llm::backend::quant::QMatrix;

/// Host views of one decoder layer's weights (`(out, in)` row-major products).
pub(crate) struct LayerWeights<'a> {
    pub attn_norm: &'a [f32],
    pub attn_eps: f32,
    pub qkv: &'a [f32],
    pub bias: Option<&'a [f32]>,
    pub o: &'a [f32],
    pub mlp_norm: &'a [f32],
    pub mlp_eps: f32,
    pub gate_up: &'a [f32],
    pub down: &'a [f32],
    /// The same weights packed for large products (frozen layers in training; see `packed`).
    pub packed: Option<&'a PackedLayer>,
    /// The weights as stored (quantized), in place of the f32 slices (then empty).
    pub stored: Option<&'a StoredMats>,
}

/// A layer's products kept as stored, with the `[q | k | v]` bias (if any) in f32.
pub(crate) struct StoredMats {
    pub qkv: QMatrix,
    pub qkv_bias: Option<Vec<f32>>,
    pub o: QMatrix,
    pub gate_up: QMatrix,
    pub down: QMatrix,
}

/// A frozen layer's four weights packed once: `fwd` for `x · Wᵀ`, `bwd` for the input
/// gradient `dy · W`. A missing matrix (no oneMKL, budget spent) is multiplied as usual.
#[derive(Default)]
pub(crate) struct PackedLayer {
    fwd: PackedProducts,
    bwd: PackedProducts,
}

#[derive(Default)]
pub(super) struct PackedProducts {
    pub qkv: Option<PackedMatrix>,
    pub o: Option<PackedMatrix>,
    pub gate_up: Option<PackedMatrix>,
    pub down: Option<PackedMatrix>,
}

impl PackedLayer {
    /// Packs `lw`'s products both ways: each weight is stored `(out, in)`, `x · Wᵀ` multiplies
    /// by `Wᵀ` (`in×out`) and the input gradient by `W` (`out×in`).
    pub(super) fn new(lw: &LayerWeights) -> Self {
        let hidden = lw.attn_norm.len().max(1);
        let [qkv, o, gate_up, down] = [
            (lw.qkv, lw.qkv.len() / hidden),
            (lw.o, hidden),
            (lw.gate_up, lw.gate_up.len() / hidden),
            (lw.down, hidden),
        ]
        .map(|(w, out)| {
            let inp = w.len() / out.max(1);
            (
                PackedMatrix::new(w, (out, inp), true),
                PackedMatrix::new(w, (inp, out), false),
            )
        });
        Self {
            fwd: PackedProducts {
                qkv: qkv.0,
                o: o.0,
                gate_up: gate_up.0,
                down: down.0,
            },
            bwd: PackedProducts {
                qkv: qkv.1,
                o: o.1,
                gate_up: gate_up.1,
                down: down.1,
            },
        }
    }
}

impl LayerWeights<'_> {
    /// The packed form of one of the weights for the forward (`x · Wᵀ`) product.
    pub(super) fn fwd(
        &self,
        pick: fn(&PackedProducts) -> &Option<PackedMatrix>,
    ) -> Option<&PackedMatrix> {
        self.packed.and_then(|p| pick(&p.fwd).as_ref())
    }

    /// The stored form of one of the weights, when the layer runs from stored weights.
    pub(super) fn stored(&self, pick: fn(&StoredMats) -> &QMatrix) -> Option<&QMatrix> {
        self.stored.map(pick)
    }

    /// The packed form of one of the weights for the input-gradient (`dy · W`) product.
    pub(super) fn bwd(
        &self,
        pick: fn(&PackedProducts) -> &Option<PackedMatrix>,
    ) -> Option<&PackedMatrix> {
        self.packed.and_then(|p| pick(&p.bwd).as_ref())
    }
}

/// Gradients of one layer's weights, in the shapes of [`LayerWeights`] (written, not added).
pub(crate) struct LayerGrads<'a> {
    pub attn_norm: &'a mut [f32],
    pub qkv: &'a mut [f32],
    pub bias: Option<&'a mut [f32]>,
    pub o: &'a mut [f32],
    pub mlp_norm: &'a mut [f32],
    pub gate_up: &'a mut [f32],
    pub down: &'a mut [f32],
}

/// A new `dy (m×k) · w` (`w` stored `k×n`), through `packed` (`w` packed) when given.
pub(super) fn input_grad(
    dy: &[f32],
    w: &[f32],
    packed: Option<&PackedMatrix>,
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    match packed {
        Some(p) => {
            debug_assert_eq!(p.dims(), (n, k), "packed weight of another shape");
            p.product_new(dy, m)
        }
        None => par_sgemm_new(dy, w, (m, n, k), false),
    }
}

/// A new `x (m×k) · wᵀ` (`w` stored `n×k`), as [`project`] computes it.
pub(super) fn project_new(
    x: &[f32],
    (w, packed, stored): (&[f32], Option<&PackedMatrix>, Option<&QMatrix>),
    (m, n, k): (usize, usize, usize),
) -> Vec<f32> {
    if let Some(q) = stored {
        let mut out = zeroed(m * n);
        q.product(x, m, &mut out, false);
        return out;
    }
    if m > GEMV_MAX_ROWS {
        return match packed {
            Some(p) => {
                debug_assert_eq!(p.dims(), (n, k), "packed weight of another shape");
                p.product_new(x, m)
            }
            None => par_sgemm_new(x, w, (m, n, k), true),
        };
    }
    let mut out = zeroed(m * n);
    gemv_rows(x, w, m, k, n, &mut out);
    out
}

/// `out (m×n) = x (m×k) · wᵀ` (`w` stored `n×k`), added to `out` when `accumulate`. A few
/// rows (decoding) run as row dot products, more as a matrix product (through `packed`, `wᵀ`
/// packed, when given); stored weights run their quantized product.
pub(super) fn project(
    x: &[f32],
    (w, packed, stored): (&[f32], Option<&PackedMatrix>, Option<&QMatrix>),
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
    out: &mut [f32],
) {
    let beta = if accumulate { 1.0 } else { 0.0 };
    if let Some(q) = stored {
        q.product(x, m, out, accumulate);
    } else if m > GEMV_MAX_ROWS {
        match packed {
            Some(p) => {
                debug_assert_eq!(p.dims(), (n, k), "packed weight of another shape");
                p.product(x, out, m, beta)
            }
            None => par_sgemm(x, w, out, (m, n, k), true, beta),
        }
    } else if accumulate {
        let mut tmp = zeroed(m * n);
        gemv_rows(x, w, m, k, n, &mut tmp);
        out.iter_mut().zip(&tmp).for_each(|(o, t)| *o += t);
    } else {
        gemv_rows(x, w, m, k, n, out);
    }
}
