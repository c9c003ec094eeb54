//! Losses: the composite cloak loss with fixed or adaptive α (`docs/spec.md` §5.1) and the LLM
//! distillation loss (`docs/spec.md` §5.2).

mod composite;
pub mod distillation;

pub use composite::{
    noise_loss, noise_loss_wrapper, AdaptiveAlpha, Alpha, CompositeLoss, LossRecord,
};
pub use distillation::{
    distillation_loss_factory, DistillationConfig, DistillationInputs, DistillationLoss,
    DistillationRecord,
};
