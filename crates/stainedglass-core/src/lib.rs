//! Core of the Stained Glass Transform (SGT): the σ and μ parameterizations, the noise layers,
//! `NoisyModel`, the composite cloak loss, information measures, the RNG policy, and save/load
//! of noise-layer artefacts. See `docs/spec.md` §2–5 for the math this crate pins.

pub mod error;
pub mod fastmath;
pub mod fpu;
pub mod host;
pub mod info;
pub mod io;
pub mod loss;
pub mod mask;
pub mod noise_layer;
pub mod noisy_model;
pub mod optim;
pub mod param;
pub mod rng;
mod ziggurat;

pub use error::{Error, Result};
pub use noise_layer::{
    CloakConfig, CloakNoiseLayer, NoiseLayer, NoiseLayerConfig, NoiseOutput, PatchCloakConfig,
    PatchCloakNoiseLayer, VisionNoiseLayer,
};
pub use noisy_model::{BaseModel, Mode, NoisyModel, NoisyModelOutput};
pub use param::{BoundedMean, StdParameterization};
pub use rng::NoiseRng;
