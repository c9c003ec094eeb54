//! One decoder layer's frozen weights, as the model holds them and the fused stack reads them:
//! f32 (what an SGT trains against) or as the file stores them (quantized; inference only).

use std::sync::OnceLock;

use super::backend::ops::{Linear, RmsNorm};
use super::backend::quant::QMatrix;
use super::stack::PackedLayer;

/// One decoder layer's frozen weights (q, k, v and gate, up fused).
pub(crate) struct Block {
    pub attn_norm: RmsNorm,
    pub mlp_norm: RmsNorm,
    pub mats: Mats,
    /// The weights packed for training's large products, once (`llm::stack`).
    pub packed: OnceLock<PackedLayer>,
}

/// A layer's four products.
pub(crate) enum Mats {
    F32 {
        qkv: Linear,
        o: Linear,
        gate_up: Linear,
        down: Linear,
    },
    Stored(StoredMats),
}

/// A layer's products kept as stored, with the `[q | k | v]` bias (if any) in f32.
pub(crate) struct StoredMats {
    pub qkv: QMatrix,
    pub qkv_bias: Option<Vec<f32>>,
    pub o: QMatrix,
    pub gate_up: QMatrix,
    pub down: QMatrix,
}
