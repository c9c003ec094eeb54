//! The closed set of image noise layers: one type to save, load and train.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::cloak::{CloakConfig, CloakNoiseLayer};
use super::patch::{PatchCloakConfig, PatchCloakNoiseLayer};
use super::{NoiseLayer, NoiseOutput};
use crate::{NoiseRng, Result};

/// Serializable configuration of a vision noise layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NoiseLayerConfig {
    Cloak(CloakConfig),
    PatchCloak(PatchCloakConfig),
}

/// A closed set of vision noise layers, one type to save, load and train.
#[derive(Debug)]
pub enum VisionNoiseLayer {
    Cloak(CloakNoiseLayer),
    PatchCloak(PatchCloakNoiseLayer),
}

impl VisionNoiseLayer {
    /// Builds a fresh layer from its config.
    pub fn new(config: NoiseLayerConfig, device: &candle_core::Device) -> Result<Self> {
        Ok(match config {
            NoiseLayerConfig::Cloak(c) => Self::Cloak(CloakNoiseLayer::new(c, device)?),
            NoiseLayerConfig::PatchCloak(c) => {
                Self::PatchCloak(PatchCloakNoiseLayer::new(c, device)?)
            }
        })
    }

    /// The layer's config.
    pub fn config(&self) -> NoiseLayerConfig {
        match self {
            Self::Cloak(l) => NoiseLayerConfig::Cloak(l.config().clone()),
            Self::PatchCloak(l) => NoiseLayerConfig::PatchCloak(l.config().clone()),
        }
    }

    /// Named tensors to save (`locs`, `rhos`, and a frozen mask if any).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match self {
            Self::Cloak(l) => l.named_tensors(),
            Self::PatchCloak(l) => l.named_tensors(),
        }
    }

    /// Overwrites parameters from named tensors (shapes are checked by the caller).
    pub fn set_named_tensors(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
    ) -> Result<()> {
        match self {
            Self::Cloak(l) => l.set_named_tensors(tensors),
            Self::PatchCloak(l) => l.set_named_tensors(tensors),
        }
    }

    /// Expected names and shapes of the saved tensors.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.named_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect()
    }

    /// The per-image input shape `[C, H, W]` this layer accepts.
    pub fn input_shape(&self) -> &[usize] {
        match self {
            Self::Cloak(l) => &l.config().shape,
            Self::PatchCloak(l) => &l.config().shape,
        }
    }

    /// The deterministic part of the transform: μ, σ and the keep-mask, without sampling.
    pub fn statistics(&self) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        match self {
            Self::Cloak(l) => l.statistics(),
            Self::PatchCloak(l) => l.statistics(),
        }
    }
}

impl NoiseLayer for VisionNoiseLayer {
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        match self {
            Self::Cloak(l) => l.forward(x, noise_mask, rng),
            Self::PatchCloak(l) => l.forward(x, noise_mask, rng),
        }
    }
    fn transform(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> Result<Tensor> {
        match self {
            Self::Cloak(l) => l.transform(x, noise_mask, rng),
            Self::PatchCloak(l) => l.transform(x, noise_mask, rng),
        }
    }
    fn parameters(&self) -> Vec<Var> {
        match self {
            Self::Cloak(l) => l.parameters(),
            Self::PatchCloak(l) => l.parameters(),
        }
    }
    fn noise_loss_respects_mask(&self) -> bool {
        match self {
            Self::Cloak(l) => l.noise_loss_respects_mask(),
            Self::PatchCloak(l) => l.noise_loss_respects_mask(),
        }
    }
}
