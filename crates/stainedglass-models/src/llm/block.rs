//! One decoder layer's frozen weights, as the model holds them and the fused stack reads them:
//! f32 (what an SGT trains against) or as the file stores them (quantized; inference only).

use std::sync::OnceLock;

use super::backend::ops::{Linear, RmsNorm};
use super::stack::{PackedLayer, StoredMats};

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

impl Block {
    /// The four products of an f32 layer (`[q | k | v]`, o, `[gate | up]`, down); `None` for a
    /// layer kept as stored.
    pub fn f32_mats(&self) -> Option<[&Linear; 4]> {
        match &self.mats {
            Mats::F32 {
                qkv,
                o,
                gate_up,
                down,
            } => Some([qkv, o, gate_up, down]),
            Mats::Stored(_) => None,
        }
    }
}
