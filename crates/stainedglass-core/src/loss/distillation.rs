//! The LLM distillation loss (`docs/spec.md` §5.2). With `h`, `h̃` the clean and transformed activations
//! at the distillation layer (or the logits), `x`, `x̃` the clean and transformed input
//! embeddings, `σ` the noise scale, `ℓ` the loss mask and `n` the noise mask:
//! - `L_dist = w_cos·⟨1 − cos(h_t, h̃_t)⟩_ℓ + w_l2·⟨‖h_t − h̃_t‖ / ‖h_t‖⟩_ℓ +
//!   w_kl·⟨KL(softmax h_t ‖ softmax h̃_t)⟩_ℓ⁺` — the KL term only at the logits, where `h` are
//!   next-token logits; `ℓ⁺_t = ℓ_{t+1}` are the positions whose *next* token the mask counts,
//!   so that with `ignore_prompt_loss` the last prompt position, which predicts the first
//!   response token, is included
//! - `L_std = −⟨log(σ_tj / rms(x_t))⟩` over transformed tokens and all features
//! - `L_sim = ⟨cos(x_t, x̃_t)⟩_n` (or its absolute value)
//! - `L = (1 − α)·L_dist + α·(w_std·L_std + w_sim·L_sim)`.
//!
//! [`DistillationLoss`] is the factory's result: `compute` is the loss function, `losses()` the
//! named components of the last call, `hyperparameters()` the configuration.

use crate::{Error, Result};
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Hyper-parameters of the distillation loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillationConfig {
    /// Layer whose activations are compared; `None` = logits (`"logits"` in a config file).
    #[serde(with = "layer_or_logits")]
    pub distillation_layer_index: Option<usize>,
    pub alpha: f64,
    pub std_log_ratio_loss_weight: f64,
    pub input_embedding_similarity_loss_weight: f64,
    pub distillation_layer_cosine_distance_loss_weight: f64,
    pub distillation_layer_l2_distance_loss_weight: f64,
    /// Weight of the KL divergence of the next-token distributions (clean ‖ transformed); needs
    /// `distillation_layer_index = "logits"`.
    pub distillation_logit_kl_loss_weight: f64,
    /// Use `|cos(x, x̃)|` in `L_sim`.
    pub absolute_cosine_similarity: bool,
}

impl Default for DistillationConfig {
    /// The known-good starting point of `docs/spec.md` §5.2 (layer 12, α 0.54, w_std 0.01, w_sim 0.75,
    /// w_cos 12).
    fn default() -> Self {
        Self {
            distillation_layer_index: Some(12),
            alpha: 0.54,
            std_log_ratio_loss_weight: 0.01,
            input_embedding_similarity_loss_weight: 0.75,
            distillation_layer_cosine_distance_loss_weight: 12.0,
            distillation_layer_l2_distance_loss_weight: 0.0,
            distillation_logit_kl_loss_weight: 0.0,
            absolute_cosine_similarity: false,
        }
    }
}

impl DistillationConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(Error::hyper("alpha", self.alpha, "must be in [0, 1]"));
        }
        let w = [
            ("std_log_ratio_loss_weight", self.std_log_ratio_loss_weight),
            (
                "input_embedding_similarity_loss_weight",
                self.input_embedding_similarity_loss_weight,
            ),
            (
                "distillation_layer_cosine_distance_loss_weight",
                self.distillation_layer_cosine_distance_loss_weight,
            ),
            (
                "distillation_layer_l2_distance_loss_weight",
                self.distillation_layer_l2_distance_loss_weight,
            ),
            (
                "distillation_logit_kl_loss_weight",
                self.distillation_logit_kl_loss_weight,
            ),
        ];
        for (name, v) in w {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::hyper(name, v, "must be finite and ≥ 0"));
            }
        }
        if self.distillation_logit_kl_loss_weight > 0.0 && self.distillation_layer_index.is_some() {
            return Err(Error::hyper(
                "distillation_logit_kl_loss_weight",
                self.distillation_logit_kl_loss_weight,
                "compares next-token distributions: set distillation_layer_index = \"logits\"",
            ));
        }
        Ok(())
    }
}

/// `distillation_layer_index` in a config file: a layer number, or `"logits"` (TOML has no null;
/// JSON's `null` is read as the logits too).
mod layer_or_logits {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Layer(usize),
        Name(String),
        Null(()),
    }

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(k) => s.serialize_u64(*k as u64),
            None => s.serialize_str("logits"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Layer(k) => Ok(Some(k)),
            Raw::Name(n) if n == "logits" => Ok(None),
            Raw::Null(()) => Ok(None),
            Raw::Name(n) => Err(D::Error::custom(format!(
                "distillation_layer_index must be a layer number or \"logits\", got {n:?}"
            ))),
        }
    }
}

/// Everything one loss evaluation needs; all `(b, t, …)` with masks `(b, t)` of 0/1.
pub struct DistillationInputs<'a> {
    /// Clean activations at the distillation layer (no gradient needed).
    pub clean: &'a Tensor,
    /// Transformed activations at the same layer.
    pub transformed: &'a Tensor,
    /// Tokens the distillation term averages over.
    pub loss_mask: &'a Tensor,
    /// Tokens that were transformed.
    pub noise_mask: &'a Tensor,
    /// Clean input embeddings `x`.
    pub input_embeds: &'a Tensor,
    /// Transformed input embeddings `x̃`.
    pub transformed_embeds: &'a Tensor,
    /// σ, `(b, t, d)`.
    pub std: &'a Tensor,
    /// Keep-mask `(b, t, d)` (1 = kept, 0 = replaced by μ) of a masking layer: `L_std` then
    /// averages over kept features only, as the vision noise loss does.
    pub keep_mask: Option<&'a Tensor>,
}

/// One evaluation: the tensor to backpropagate and the components as numbers.
#[derive(Debug, Clone)]
pub struct DistillationRecord {
    pub loss: Tensor,
    pub components: Vec<(&'static str, f64)>,
}

/// The loss function with its configuration and the components of its last call.
pub struct DistillationLoss {
    config: DistillationConfig,
    last: Mutex<Vec<(&'static str, f64)>>,
}

/// Builds the distillation loss (the factory of `docs/spec.md` §5.2).
pub fn distillation_loss_factory(config: DistillationConfig) -> Result<DistillationLoss> {
    config.validate()?;
    Ok(DistillationLoss {
        config,
        last: Mutex::new(Vec::new()),
    })
}

/// Mean of `v (b, t)` over entries where `mask (b, t)` is 1; 0 when the mask is empty.
fn masked_mean(v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.sum_all()?;
    let s = (v * mask)?.sum_all()?;
    Ok(s.broadcast_div(&n.maximum(1.0)?)?)
}

/// Cosine similarity over the last dimension: `(b, t, d) × (b, t, d) → (b, t)`.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok(dot.broadcast_div(&((na * nb)? + 1e-12)?)?)
}

/// `KL(softmax p ‖ softmax q)` per position of logits `(b, t, vocab) → (b, t)`; `p` is constant.
fn next_token_kl(p: &Tensor, q: &Tensor) -> Result<Tensor> {
    let (lp, lq) = (log_softmax(p)?, log_softmax(q)?);
    Ok((lp.exp()? * (lp - lq)?)?.sum(D::Minus1)?)
}

/// Log-softmax over the last dimension; the shift by the (constant) maximum keeps `exp` finite
/// and does not change the value or the gradient.
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().max_keepdim(D::Minus1)?;
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// `ℓ⁺_t = ℓ_{t+1}` (0 at the last position): the positions whose next token the mask counts.
fn next_mask(lm: &Tensor) -> Result<Tensor> {
    let (b, t) = lm.dims2()?;
    let zero = Tensor::zeros((b, 1), lm.dtype(), lm.device())?;
    match t {
        0 | 1 => Ok(lm.zeros_like()?),
        _ => Ok(Tensor::cat(&[&lm.narrow(1, 1, t - 1)?, &zero], 1)?),
    }
}

impl DistillationLoss {
    pub fn hyperparameters(&self) -> &DistillationConfig {
        &self.config
    }

    /// Named components of the last `compute` call (all losses, α and the weights' products).
    pub fn losses(&self) -> Vec<(&'static str, f64)> {
        self.last.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The loss of `docs/spec.md` §5.2.
    pub fn compute(&self, i: &DistillationInputs<'_>) -> Result<DistillationRecord> {
        let c = &self.config;
        let f32_ = |t: &Tensor| t.to_dtype(DType::F32);
        let (h, ht) = (f32_(&i.clean.detach())?, f32_(i.transformed)?);
        if h.dims() != ht.dims() || h.rank() != 3 {
            return Err(Error::Shape {
                what: "distillation activations".into(),
                expected: format!("(batch, seq, features) pairs, got {:?}", h.dims()),
                got: ht.dims().to_vec(),
            });
        }
        let lm = f32_(i.loss_mask)?;
        let nm = f32_(i.noise_mask)?;
        // Distillation term.
        let cos_dist = (1.0 - cosine(&h, &ht)?)?;
        let l_cos = masked_mean(&cos_dist, &lm)?;
        let rel_l2 = ((&h - &ht)?.sqr()?.sum(D::Minus1)?.sqrt()?
            / (h.sqr()?.sum(D::Minus1)?.sqrt()? + 1e-12)?)?;
        let l_l2 = masked_mean(&rel_l2, &lm)?;
        let l_kl = match c.distillation_logit_kl_loss_weight > 0.0 {
            true => masked_mean(&next_token_kl(&h, &ht)?, &next_mask(&lm)?)?,
            false => Tensor::zeros((), DType::F32, h.device())?,
        };
        let l_dist = ((&l_cos * c.distillation_layer_cosine_distance_loss_weight)?
            + (&l_l2 * c.distillation_layer_l2_distance_loss_weight)?
            + (&l_kl * c.distillation_logit_kl_loss_weight)?)?;
        // Noise-to-signal term: −log(σ / rms(x)) averaged over transformed tokens.
        let x = f32_(&i.input_embeds.detach())?;
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
        let log_ratio = f32_(i.std)?.broadcast_div(&rms)?.log()?;
        let log_ratio = match i.keep_mask {
            Some(k) => {
                let k = f32_(k)?;
                (log_ratio * &k)?
                    .sum(D::Minus1)?
                    .broadcast_div(&k.sum(D::Minus1)?.maximum(1.0)?)?
            }
            None => log_ratio.mean(D::Minus1)?,
        };
        let l_std = masked_mean(&log_ratio, &nm)?.neg()?;
        // Input-embedding similarity.
        let mut sim = cosine(&x, &f32_(i.transformed_embeds)?)?;
        if c.absolute_cosine_similarity {
            sim = sim.abs()?;
        }
        let l_sim = masked_mean(&sim, &nm)?;
        let privacy = ((&l_std * c.std_log_ratio_loss_weight)?
            + (&l_sim * c.input_embedding_similarity_loss_weight)?)?;
        let loss = ((&l_dist * (1.0 - c.alpha))? + (&privacy * c.alpha)?)?;
        let v = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
        let components = vec![
            ("loss", v(&loss)?),
            ("distillation_loss", v(&l_dist)?),
            ("distillation_cosine_distance", v(&l_cos)?),
            ("distillation_relative_l2", v(&l_l2)?),
            ("distillation_logit_kl", v(&l_kl)?),
            ("std_log_ratio_loss", v(&l_std)?),
            ("input_embedding_similarity", v(&l_sim)?),
            ("alpha", c.alpha),
        ];
        if let Ok(mut last) = self.last.lock() {
            *last = components.clone();
        }
        Ok(DistillationRecord { loss, components })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let mut r = crate::NoiseRng::seeded(seed);
        r.standard_normal(shape, &Device::Cpu).expect("normal")
    }

    #[test]
    fn identity_transform_gives_zero_distillation_and_unit_similarity() {
        let x = t((2, 5, 8), 1);
        let h = t((2, 5, 8), 2);
        let ones = Tensor::ones((2, 5), DType::F32, &Device::Cpu).expect("ones");
        let std = Tensor::full(1e-4f32, (2, 5, 8), &Device::Cpu).expect("std");
        let loss = distillation_loss_factory(DistillationConfig {
            distillation_layer_l2_distance_loss_weight: 1.0,
            ..Default::default()
        })
        .expect("loss");
        let r = loss
            .compute(&DistillationInputs {
                clean: &h,
                transformed: &h,
                loss_mask: &ones,
                noise_mask: &ones,
                input_embeds: &x,
                transformed_embeds: &x,
                std: &std,
                keep_mask: None,
            })
            .expect("compute");
        let get = |n: &str| r.components.iter().find(|(k, _)| *k == n).expect(n).1;
        assert!(get("distillation_loss").abs() < 1e-5);
        assert!((get("input_embedding_similarity") - 1.0).abs() < 1e-5);
        assert!(
            get("std_log_ratio_loss") > 5.0,
            "σ ≪ |x| gives a large L_std"
        );
        let names: Vec<&str> = loss.losses().iter().map(|(k, _)| *k).collect();
        assert_eq!(names.len(), 8);
        assert!(names.contains(&"std_log_ratio_loss"));
        assert_eq!(loss.hyperparameters().alpha, 0.54);
    }

    #[test]
    fn masks_select_tokens_and_gradients_flow_to_the_transformed_side() {
        let x = t((1, 4, 6), 3);
        let h = t((1, 4, 6), 4);
        let ht = Var::from_tensor(&t((1, 4, 6), 5)).expect("var");
        let lm = Tensor::new(&[[1f32, 0.0, 0.0, 0.0]], &Device::Cpu).expect("lm");
        let loss = distillation_loss_factory(DistillationConfig {
            alpha: 0.0,
            ..Default::default()
        })
        .expect("loss");
        let std = Tensor::full(0.1f32, (1, 4, 6), &Device::Cpu).expect("std");
        let r = loss
            .compute(&DistillationInputs {
                clean: &h,
                transformed: ht.as_tensor(),
                loss_mask: &lm,
                noise_mask: &lm,
                input_embeds: &x,
                transformed_embeds: &x,
                std: &std,
                keep_mask: None,
            })
            .expect("compute");
        let g = r.loss.backward().expect("backward");
        let gh = g.get(&ht).expect("gradient reaches h̃");
        let per_tok = gh
            .abs()
            .and_then(|a| a.sum(2))
            .and_then(|a| a.to_vec2::<f32>())
            .expect("g");
        assert!(per_tok[0][0] > 0.0);
        assert!(
            per_tok[0][1..].iter().all(|&v| v == 0.0),
            "masked-out tokens get no gradient"
        );
        assert!(distillation_loss_factory(DistillationConfig {
            alpha: 1.5,
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn logit_kl_counts_the_positions_that_predict_a_counted_token_and_has_the_softmax_gradient() {
        // Logits (1, 3, 4); the loss mask counts only token 2, so only position 1 (which
        // predicts it) enters the KL term.
        let p = Tensor::new(
            &[[[1f32, 0.0, -1.0, 0.5], [2.0, 0.0, 0.0, 1.0], [0.0; 4]]],
            &Device::Cpu,
        )
        .expect("p");
        let q0 = [[
            [0f32, 1.0, 0.0, 0.0],
            [0.0, 1.0, 2.0, -1.0],
            [3.0, 0.0, 0.0, 0.0],
        ]];
        let q = Var::from_tensor(&Tensor::new(&q0, &Device::Cpu).expect("q")).expect("var");
        let lm = Tensor::new(&[[0f32, 0.0, 1.0]], &Device::Cpu).expect("lm");
        let x = t((1, 3, 4), 7);
        let std = Tensor::full(0.1f32, (1, 3, 4), &Device::Cpu).expect("std");
        let loss = distillation_loss_factory(DistillationConfig {
            distillation_layer_index: None,
            alpha: 0.0,
            distillation_layer_cosine_distance_loss_weight: 0.0,
            distillation_logit_kl_loss_weight: 2.0,
            ..Default::default()
        })
        .expect("loss");
        let r = loss
            .compute(&DistillationInputs {
                clean: &p,
                transformed: q.as_tensor(),
                loss_mask: &lm,
                noise_mask: &lm,
                input_embeds: &x,
                transformed_embeds: &x,
                std: &std,
                keep_mask: None,
            })
            .expect("compute");
        let softmax = |v: &[f32]| {
            let z: f64 = v.iter().map(|&a| (a as f64).exp()).sum();
            v.iter()
                .map(|&a| (a as f64).exp() / z)
                .collect::<Vec<f64>>()
        };
        let (pp, qq) = (softmax(&[2.0, 0.0, 0.0, 1.0]), softmax(&q0[0][1]));
        let kl: f64 = pp.iter().zip(&qq).map(|(a, b)| a * (a / b).ln()).sum();
        let got = r
            .components
            .iter()
            .find(|(k, _)| *k == "distillation_logit_kl")
            .expect("kl")
            .1;
        assert!((got - kl).abs() < 1e-5, "KL {got} vs {kl}");
        let g = r.loss.backward().expect("backward");
        let g = g.get(&q).expect("gradient").to_vec3::<f32>().expect("g");
        for v in 0..4 {
            let want = 2.0 * (qq[v] - pp[v]);
            assert!((g[0][1][v] as f64 - want).abs() < 1e-5, "∂/∂q[{v}]");
            assert_eq!(g[0][0][v], 0.0, "position 0 predicts an uncounted token");
            assert_eq!(g[0][2][v], 0.0, "the last position predicts nothing");
        }
    }

    #[test]
    fn the_kl_term_needs_logits_and_the_layer_index_reads_logits_by_name() {
        let with_kl = |layer| DistillationConfig {
            distillation_layer_index: layer,
            distillation_logit_kl_loss_weight: 1.0,
            ..Default::default()
        };
        assert!(with_kl(Some(6)).validate().is_err());
        assert!(with_kl(None).validate().is_ok());
        let read = |v: &str| {
            serde_json::from_str::<DistillationConfig>(&format!(
                r#"{{"distillation_layer_index": {v}}}"#
            ))
            .map(|c| c.distillation_layer_index)
        };
        assert_eq!(read("6").expect("6"), Some(6));
        assert_eq!(read(r#""logits""#).expect("logits"), None);
        assert_eq!(read("null").expect("null"), None);
        assert!(read(r#""last""#).is_err());
        let c = with_kl(None);
        let back: DistillationConfig =
            serde_json::from_str(&serde_json::to_string(&c).expect("json")).expect("parse");
        assert_eq!(back, c);
    }
}
