//! The text SGT: [`TransformerCloak`] (`docs/spec.md` §3.3), the sequence-dependent Stained Glass
//! Transform for LLM input embeddings, and [`NoiseMaskedNoisyTransformerModel`], the frozen
//! model behind it. The image noise layers (`CloakNoiseLayer`, `PatchCloakNoiseLayer`) live in
//! `stainedglass_core::noise_layer`; this one lives beside the Llama whose layers and kernels
//! its estimator reuses.
//!
//! - `config.rs`: [`TransformerCloakConfig`], the hyper-parameters the TOML and the artefact share;
//! - `cloak.rs`: the layer, its parameters and construction;
//! - `estimator.rs`: the estimator's decoder layers (trainable copies of the base model's);
//! - `forward.rs`: μ, σ, the noise and the masked combination (training and client paths);
//! - `estimator_layer.rs`, `noise_head.rs`: the fused CPU training ops;
//! - `precision.rs`: [`Precision`], f32 or bf16 products when a trained layer is applied;
//! - `noisy.rs`: the noisy model wrapper;
//! - `adapter.rs`: [`ServedAdapter`], the served model's first layers trained with the SGT.

mod adapter;
mod cloak;
mod config;
mod estimator;
mod estimator_layer;
mod forward;
mod noise_head;
mod noisy;
mod precision;

pub use adapter::ServedAdapter;
pub use cloak::{mean_sigma, TransformerCloak};
pub use config::{CloakSettings, MaskedFill, TransformerCloakConfig};
pub use noisy::{NoiseMaskedNoisyTransformerModel, NoisyLmOutput};
pub use precision::Precision;

#[cfg(test)]
mod tests;
