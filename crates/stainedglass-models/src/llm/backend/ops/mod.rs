//! Fused CPU ops for the Llama block, each with a hand-written backward pass: RMSNorm with a
//! frozen weight, rotary embedding, SwiGLU, causal grouped-query attention, and a linear layer
//! with a frozen weight. candle's own fast paths for these cut the gradient (see
//! `docs/candle.md`) and its differentiable compositions are slow; these run row-parallel with
//! rayon, compute only the input gradients (the base model is frozen), and match the reference
//! compositions in [`reference`] (tested in `tests.rs`). Non-CPU devices use the reference
//! compositions.

mod attention;
mod linear;
mod norm;
pub mod reference;
mod rope;
mod swiglu;

pub use attention::Attention;
pub use linear::{Linear, GEMV_MAX_ROWS};
pub use norm::RmsNorm;
pub use rope::Rope;
pub use swiglu::SwiGlu;

use candle_core::{CpuStorage, Layout, Result};
use stainedglass_core::host::cpu_slice;

/// The op's input as an f32 slice, errors naming the op.
fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    cpu_slice(s, l).map_err(|e| e.context(op.to_string()))
}

#[cfg(test)]
mod tests;
