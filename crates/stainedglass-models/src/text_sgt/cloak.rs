//! TransformerCloak (`docs/spec.md` §3.3): the sequence-dependent SGT for LLM input embeddings.
//! `(μ, r) = Estimator(x, attention_mask)`, `σ = Param(r)`,
//! `x̃_t = x_t + n_t·(μ_t + σ_t ⊙ ε_t)`; with `percent_to_mask` the largest-σ features of each
//! transformed token are replaced by `μ`. The estimator (`estimator.rs`) is followed by two
//! `d → d` heads: the mean head (zero-initialised, bounded mean) and the ρ head (bias
//! `rhos_init`). This file holds the layer's parameters; `forward.rs` its passes.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var, D};
use stainedglass_core::noise_layer::{NoiseLayer, NoiseOutput};
use stainedglass_core::param::{BoundedMean, StdParameterization};
use stainedglass_core::NoiseRng;

use super::config::TransformerCloakConfig;
use super::estimator::{block_from_hf, Estimator, Grad};
use super::precision::{Bf16Heads, Precision};
use crate::error::{Error, Result};
use crate::llm::Llama;

/// The learned, input-dependent noise layer for token embeddings.
pub struct TransformerCloak {
    pub(super) config: TransformerCloakConfig,
    pub(super) estimator: Estimator,
    pub(super) mean_w: Var,
    pub(super) mean_b: Var,
    pub(super) rho_w: Var,
    pub(super) rho_b: Var,
    pub(super) param: StdParameterization,
    pub(super) mean: BoundedMean,
    /// The heads as one bf16 product when applied with `Precision::Bf16`.
    pub(super) bf16_heads: Option<Bf16Heads>,
}

impl TransformerCloak {
    /// A fresh layer whose estimator starts as the base model's first `estimator_layers`
    /// decoder layers (copied, then trained).
    pub fn from_base(config: TransformerCloakConfig, base: &Llama) -> Result<Self> {
        config.validate()?;
        if &config.base != base.config() {
            return Err(Error::Invalid {
                what: "TransformerCloak base config".into(),
                expected: "the configuration of the base model it wraps".into(),
            });
        }
        let tensors: HashMap<String, Tensor> = base.hf_tensors()?.into_iter().collect();
        let mut named = HashMap::new();
        for i in 0..config.sgt.estimator_layers {
            named.extend(block_from_hf(&tensors, i)?);
        }
        let d = config.base.hidden_size;
        let dev = base.device();
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, dev);
        named.insert("mean_head.weight".into(), zeros(&[d, d])?);
        named.insert("mean_head.bias".into(), zeros(&[d])?);
        named.insert("rho_head.weight".into(), zeros(&[d, d])?);
        named.insert(
            "rho_head.bias".into(),
            Tensor::full(config.sgt.rhos_init as f32, d, dev)?,
        );
        Self::from_named(config, &named, dev)
    }

    /// Rebuilds a layer from its config and named tensors (see [`Self::named_tensors`]).
    pub fn from_named(
        config: TransformerCloakConfig,
        named: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        for (name, shape) in Self::expected_shapes(&config) {
            let t = named.get(&name).ok_or_else(|| Error::Invalid {
                what: format!("TransformerCloak tensor `{name}`"),
                expected: "present in the saved layer".into(),
            })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::Shape {
                    what: format!("TransformerCloak tensor `{name}`"),
                    expected: format!("{shape:?}"),
                    got: t.dims().to_vec(),
                });
            }
        }
        let var = |n: &str| -> Result<Var> {
            let t = named[n].to_dtype(DType::F32)?.to_device(device)?;
            Ok(Var::from_tensor(&t)?)
        };
        let estimator = Estimator::new(&config.base, config.sgt.estimator_layers, var)?;
        let mean = BoundedMean::new(config.sgt.mean_bound, 0.0).map_err(|e| Error::Invalid {
            what: "mean_bound".into(),
            expected: e.to_string(),
        })?;
        Ok(Self {
            mean_w: var("mean_head.weight")?,
            mean_b: var("mean_head.bias")?,
            rho_w: var("rho_head.weight")?,
            rho_b: var("rho_head.bias")?,
            estimator,
            param: config.sgt.std,
            mean,
            config,
            bf16_heads: None,
        })
    }

    /// Names and shapes of every tensor of a layer with `config`.
    pub fn expected_shapes(config: &TransformerCloakConfig) -> Vec<(String, Vec<usize>)> {
        let d = config.base.hidden_size;
        let mut v = Estimator::expected_shapes(&config.base, config.sgt.estimator_layers);
        for h in ["mean_head", "rho_head"] {
            v.push((format!("{h}.weight"), vec![d, d]));
            v.push((format!("{h}.bias"), vec![d]));
        }
        v
    }

    pub fn config(&self) -> &TransformerCloakConfig {
        &self.config
    }

    /// The parameters split into `(weights, head biases)`: the biases of the mean and ρ heads
    /// set the per-feature noise level directly and usually train with a larger learning rate.
    pub fn parameter_groups(&self) -> (Vec<Var>, Vec<Var>) {
        let mut weights = self.estimator.parameters();
        weights.extend([self.mean_w.clone(), self.rho_w.clone()]);
        (weights, vec![self.mean_b.clone(), self.rho_b.clone()])
    }

    /// Every tensor by name, sorted (for saving).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.estimator.named_tensors();
        v.push(("mean_head.weight".into(), self.mean_w.as_tensor().clone()));
        v.push(("mean_head.bias".into(), self.mean_b.as_tensor().clone()));
        v.push(("rho_head.weight".into(), self.rho_w.as_tensor().clone()));
        v.push(("rho_head.bias".into(), self.rho_b.as_tensor().clone()));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// μ and σ `(b, t, d)` for `x (b, t, d)`.
    pub fn statistics(&self, x: &Tensor, attention_mask: &[u8]) -> Result<(Tensor, Tensor)> {
        self.statistics_with(x, attention_mask, Grad::Track)
    }

    /// The estimator's last hidden states `(b, t, d)` for `x (b, t, d)` (before the mean and ρ
    /// heads), recording the autograd graph. A learned inversion attack reuses the estimator as
    /// a small causal transformer initialised from the base model.
    pub fn estimator_hidden(&self, x: &Tensor, attention_mask: &[u8]) -> Result<Tensor> {
        self.estimator.hidden(x, attention_mask, Grad::Track)
    }

    /// The longest sequence (in tokens) the layer transforms.
    pub fn max_positions(&self) -> usize {
        self.estimator.max_positions()
    }

    /// Variables of the estimator's decoder layers only (not the heads).
    pub fn estimator_parameters(&self) -> Vec<Var> {
        self.estimator.parameters()
    }
}

impl NoiseLayer for TransformerCloak {
    /// `noise_mask`: `(b, t)` over tokens (nonzero = transform); no attention mask (no padding).
    fn forward(
        &self,
        x: &Tensor,
        noise_mask: Option<&Tensor>,
        rng: &mut NoiseRng,
    ) -> stainedglass_core::Result<NoiseOutput> {
        let nm = match noise_mask {
            Some(m) => Some(
                m.flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|&v| u8::from(v != 0.0))
                    .collect::<Vec<u8>>(),
            ),
            None => None,
        };
        self.forward_masked(x, None, nm.as_deref(), rng)
            .map_err(|e| stainedglass_core::Error::Shape {
                what: e.to_string(),
                expected: String::new(),
                got: vec![],
            })
    }

    fn parameters(&self) -> Vec<Var> {
        let mut v = self.estimator.parameters();
        v.extend([
            self.mean_w.clone(),
            self.mean_b.clone(),
            self.rho_w.clone(),
            self.rho_b.clone(),
        ]);
        v
    }

    fn noise_loss_respects_mask(&self) -> bool {
        true
    }
}

/// Mean of σ over the features of transformed tokens (for logs).
pub fn mean_sigma(std: &Tensor, noise_mask: &[u8]) -> Result<f64> {
    let (b, t, _) = std.dims3()?;
    let per_tok = std.mean(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
    let (mut s, mut n) = (0f64, 0usize);
    for (i, &m) in noise_mask.iter().enumerate().take(b * t) {
        if m != 0 {
            s += per_tok[i] as f64;
            n += 1;
        }
    }
    Ok(if n == 0 { 0.0 } else { s / n as f64 })
}

impl TransformerCloak {
    /// Sets how [`TransformerCloak::transform`] multiplies on the CPU. [`Precision::Bf16`]
    /// rounds the layer's *current* weights once: set it on a trained, frozen layer (training
    /// passes are unaffected and always f32).
    pub fn set_precision(&mut self, p: Precision) -> Result<()> {
        self.estimator.set_bf16(p == Precision::Bf16)?;
        self.bf16_heads = match p {
            Precision::Bf16 => Some(Bf16Heads::new(
                (&self.mean_w, &self.mean_b),
                (&self.rho_w, &self.rho_b),
            )?),
            Precision::F32 => None,
        };
        Ok(())
    }

    /// How [`TransformerCloak::transform`] multiplies.
    pub fn precision(&self) -> Precision {
        if self.bf16_heads.is_some() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}
