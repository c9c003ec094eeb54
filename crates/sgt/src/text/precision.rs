//! `--precision`: how a trained SGT's products run when it is applied.

use clap::Args;

/// How the client transform multiplies when a trained SGT is applied.
#[derive(Args, Clone, Debug)]
pub struct PrecisionArgs {
    /// The SGT's products when applied: f32 (the numbers it was trained and measured with) or
    /// bf16 (f32 accumulation: the apply ~1.8× faster on a CPU with AVX-512 BF16; μ and σ move
    /// by under half a percent, the attacks read the same: docs/eval/precision/README.md).
    #[arg(long, default_value = "f32")]
    pub precision: stainedglass_models::text_sgt::Precision,
}
