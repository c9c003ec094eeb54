//! Noise layers (`docs/spec.md` §3). Every layer returns a [`NoiseOutput`] and honours an optional
//! `noise_mask`: elements where it is 0 pass through bit-exactly.

//!
//! - `cloak.rs`, `patch.rs`: the image layers, both input-independent: `x̃ = m ⊙ (x + σ ⊙ ε) + μ`
//!   with per-feature μ, σ and keep-mask; their sampling and their [`NoiseLayer`] impl are
//!   shared in `affine.rs` (one fused op for training in `affine_op.rs`);
//! - `vision.rs`: the closed set of image layers to save, load and train;
//! - the text layer (`TransformerCloak`) lives in `stainedglass_models::text_sgt`.

mod affine;
mod affine_op;
mod cloak;
mod patch;
mod value_range;
mod vision;

use candle_core::{Tensor, Var};

pub use cloak::{CloakConfig, CloakNoiseLayer, CloakRecipe};
pub use patch::{PatchCloakConfig, PatchCloakNoiseLayer};
pub use value_range::ValueRange;
pub use vision::{NoiseLayerConfig, VisionNoiseLayer};

use crate::{NoiseRng, Result};

/// What a noise layer returns.
#[derive(Debug, Clone)]
pub struct NoiseOutput {
    /// `x̃`, the input's shape.
    pub transformed: Tensor,
    /// μ (without batch dimension for input-independent layers).
    pub mean: Tensor,
    /// σ, same shape as `mean`.
    pub std: Tensor,
    /// Keep-mask `m` (1 = keep, 0 = suppressed to μ), same shape as `std`; `None` without masking.
    pub mask: Option<Tensor>,
}

/// A stochastic transform `x ↦ x̃` with learnable parameters.
pub trait NoiseLayer {
    /// Transforms `x`; `noise_mask` (broadcastable to `x`, nonzero = transform) selects elements.
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput>;
    /// Inference (the client's path): `x̃` only, with no autograd graph. Same distribution as
    /// [`Self::forward`]; for the same seed, the same values.
    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        Ok(self.forward(x, noise_mask, rng)?.transformed.detach())
    }
    /// The trainable parameters (all of them get weight decay 0).
    fn parameters(&self) -> Vec<Var>;
    /// Whether the noise loss should average σ over kept features only.
    fn noise_loss_respects_mask(&self) -> bool;
}

impl<L: NoiseLayer + ?Sized> NoiseLayer for &L {
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        (**self).forward(x, noise_mask, rng)
    }
    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        (**self).transform(x, noise_mask, rng)
    }
    fn parameters(&self) -> Vec<Var> {
        (**self).parameters()
    }
    fn noise_loss_respects_mask(&self) -> bool {
        (**self).noise_loss_respects_mask()
    }
}
