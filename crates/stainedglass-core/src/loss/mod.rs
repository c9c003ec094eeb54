//! Losses (SPEC §5.1): the composite cloak loss with fixed or adaptive α.

mod composite;

pub use composite::{
    noise_loss, noise_loss_wrapper, AdaptiveAlpha, Alpha, CompositeLoss, LossRecord,
};
