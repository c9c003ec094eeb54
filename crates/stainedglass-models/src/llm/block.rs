//! One decoder layer's frozen weights, as the model holds them and the fused stack reads them.

use std::sync::OnceLock;

use super::backend::ops::{Linear, RmsNorm};
use super::stack::PackedLayer;

/// One decoder layer's frozen weights (q, k, v and gate, up fused).
pub(crate) struct Block {
    pub attn_norm: RmsNorm,
    pub qkv: Linear,
    pub o: Linear,
    pub mlp_norm: RmsNorm,
    pub gate_up: Linear,
    pub down: Linear,
    /// The weights packed for training's large products, once (`llm::stack`).
    pub packed: OnceLock<PackedLayer>,
}
