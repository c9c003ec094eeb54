//! TransformerCloak (SPEC §3.3): the sequence-dependent SGT for LLM input embeddings.
//! `(μ, r) = Estimator(x, attention_mask)`, `σ = Param(r)`,
//! `x̃_t = x_t + n_t·(μ_t + σ_t ⊙ ε_t)`; with `percent_to_mask` the largest-σ features of each
//! transformed token are replaced by `μ`. The estimator is `L_est` decoder layers of the base
//! architecture (initialised from the base model's first layers, causal attention, so token `t`
//! depends on tokens `≤ t` only), then two `d → d` heads: the mean head (zero-initialised,
//! bounded mean) and the ρ head (bias `rhos_init`).
//!
//! It lives beside the Llama block it reuses: `stainedglass-core` cannot depend on models.

use super::config::LlamaConfig;
use super::decoder_stack::{DecoderStack, LayerPass, StackDims};
use super::estimator_layer::{EstimatorLayer, PackedLayout};
use super::model::Block;
use super::model::{positions_from_mask, Llama};
use super::noise_head::{combine_in_place, NoiseCombine, Rows, TanhHead};
use super::ops::{is_cpu_f32, reference, Attention, Linear, RmsNorm, Rope, RopeTable, SwiGlu};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use stainedglass_core::host::{with_host, zeroed};
use stainedglass_core::noise_layer::{NoiseLayer, NoiseOutput};
use stainedglass_core::param::{BoundedMean, StdParameterization};
use stainedglass_core::NoiseRng;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Serializable configuration of a TransformerCloak.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerCloakConfig {
    /// Architecture of the estimator's decoder layers (the base model's).
    pub base: LlamaConfig,
    /// Number of estimator decoder layers (`L_est`).
    pub estimator_layers: usize,
    /// σ bounds `(min, max)`.
    pub scale: (f64, f64),
    pub shallow: f64,
    pub rhos_init: f64,
    /// Bound `b` of the mean `μ = b·tanh(r / b)`.
    pub mean_bound: f64,
    /// Fraction of each transformed token's features replaced by μ (largest σ first).
    pub percent_to_mask: Option<f64>,
}

impl TransformerCloakConfig {
    /// SPEC defaults for `base`: one estimator layer, σ ∈ (1e-4, 2), shallow 1, ρ₀ = −4.
    pub fn new(base: LlamaConfig) -> Self {
        Self {
            base,
            estimator_layers: 1,
            scale: (1e-4, 2.0),
            shallow: 1.0,
            rhos_init: -4.0,
            mean_bound: 1.0,
            percent_to_mask: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, expected: &str| {
            Err(Error::Invalid {
                what: what.into(),
                expected: expected.into(),
            })
        };
        if self.estimator_layers == 0 || self.estimator_layers > self.base.num_layers {
            return bad(
                "estimator_layers",
                &format!(
                    "between 1 and the base model's {} layers",
                    self.base.num_layers
                ),
            );
        }
        StdParameterization::cloak(self.scale.0, self.scale.1, self.shallow).map_err(|e| {
            Error::Invalid {
                what: "scale/shallow".into(),
                expected: e.to_string(),
            }
        })?;
        BoundedMean::new(self.mean_bound, 0.0).map_err(|e| Error::Invalid {
            what: "mean_bound".into(),
            expected: e.to_string(),
        })?;
        if let Some(p) = self.percent_to_mask {
            if !(0.0..=1.0).contains(&p) {
                return bad("percent_to_mask", "a fraction in [0, 1]");
            }
        }
        if !self.rhos_init.is_finite() {
            return bad("rhos_init", "a finite number");
        }
        Ok(())
    }
}

/// One trainable decoder layer of the estimator.
struct EstimatorBlock {
    attn_norm: Var,
    qkv: Var,
    qkv_bias: Option<Var>,
    o: Var,
    mlp_norm: Var,
    gate_up: Var,
    down: Var,
}

impl EstimatorBlock {
    /// All parameters flattened and concatenated in the order of [`PackedLayout`]; gradients
    /// flow back to every variable.
    fn packed(&self) -> candle_core::Result<Tensor> {
        let mut parts = vec![
            self.attn_norm.as_tensor().flatten_all()?,
            self.qkv.as_tensor().flatten_all()?,
        ];
        if let Some(b) = &self.qkv_bias {
            parts.push(b.as_tensor().flatten_all()?);
        }
        for v in [&self.o, &self.mlp_norm, &self.gate_up, &self.down] {
            parts.push(v.as_tensor().flatten_all()?);
        }
        Tensor::cat(&parts, 0)
    }

    /// The layer's current weights as a frozen decoder layer (no copies but the norm weights).
    fn frozen(&self, eps: f64) -> candle_core::Result<Block> {
        let lin = |w: &Var, b: Option<&Var>| {
            Linear::new(w.as_tensor().detach(), b.map(|b| b.as_tensor().detach()))
        };
        Ok(Block {
            attn_norm: RmsNorm::new(self.attn_norm.as_tensor().detach(), eps)?,
            qkv: lin(&self.qkv, self.qkv_bias.as_ref()),
            o: lin(&self.o, None),
            mlp_norm: RmsNorm::new(self.mlp_norm.as_tensor().detach(), eps)?,
            gate_up: lin(&self.gate_up, None),
            down: lin(&self.down, None),
            packed: OnceLock::new(),
        })
    }
}

/// Whether a pass records the autograd graph (training) or not (applying a trained layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grad {
    Track,
    /// Detached weights: no graph, and products go through the BLAS-backed frozen linear.
    Off,
}

fn linear(x: &Tensor, w: &Var, b: Option<&Var>, grad: Grad) -> candle_core::Result<Tensor> {
    if grad == Grad::Off {
        let lin =
            super::ops::Linear::new(w.as_tensor().detach(), b.map(|b| b.as_tensor().detach()));
        return lin.forward(x);
    }
    let y = super::train_linear::linear(x, w.as_tensor())?;
    match b {
        Some(b) => y.broadcast_add(b.as_tensor()),
        None => Ok(y),
    }
}

fn weight(v: &Var, grad: Grad) -> Tensor {
    match grad {
        Grad::Track => v.as_tensor().clone(),
        Grad::Off => v.as_tensor().detach(),
    }
}

/// The learned, input-dependent noise layer for token embeddings.
pub struct TransformerCloak {
    config: TransformerCloakConfig,
    blocks: Vec<EstimatorBlock>,
    mean_w: Var,
    mean_b: Var,
    rho_w: Var,
    rho_b: Var,
    param: StdParameterization,
    mean: BoundedMean,
    rope: Arc<RopeTable>,
    /// Train through the per-part ops instead of one op per layer (the reference in tests).
    composed_layers: bool,
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
        for i in 0..config.estimator_layers {
            for (n, t) in block_from_hf(&tensors, i)? {
                named.insert(format!("estimator.layers.{i}.{n}"), t);
            }
        }
        let d = config.base.hidden_size;
        let dev = base.device();
        named.insert(
            "mean_head.weight".into(),
            Tensor::zeros((d, d), DType::F32, dev)?,
        );
        named.insert("mean_head.bias".into(), Tensor::zeros(d, DType::F32, dev)?);
        named.insert(
            "rho_head.weight".into(),
            Tensor::zeros((d, d), DType::F32, dev)?,
        );
        named.insert(
            "rho_head.bias".into(),
            Tensor::full(config.rhos_init as f32, d, dev)?,
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
        let expected = Self::expected_shapes(&config);
        for (name, shape) in &expected {
            let t = named.get(name).ok_or_else(|| Error::Invalid {
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
        let mut blocks = Vec::new();
        for i in 0..config.estimator_layers {
            let p = format!("estimator.layers.{i}");
            blocks.push(EstimatorBlock {
                attn_norm: var(&format!("{p}.attn_norm"))?,
                qkv: var(&format!("{p}.qkv"))?,
                qkv_bias: if config.base.attention_bias {
                    Some(var(&format!("{p}.qkv_bias"))?)
                } else {
                    None
                },
                o: var(&format!("{p}.o"))?,
                mlp_norm: var(&format!("{p}.mlp_norm"))?,
                gate_up: var(&format!("{p}.gate_up"))?,
                down: var(&format!("{p}.down"))?,
            });
        }
        let param = StdParameterization::cloak(config.scale.0, config.scale.1, config.shallow)
            .map_err(|e| Error::Invalid {
                what: "scale".into(),
                expected: e.to_string(),
            })?;
        let mean = BoundedMean::new(config.mean_bound, 0.0).map_err(|e| Error::Invalid {
            what: "mean_bound".into(),
            expected: e.to_string(),
        })?;
        let rope = Arc::new(RopeTable::new(
            config.base.head_dim,
            config.base.rope_theta,
            config.base.max_position_embeddings.min(32_768),
        ));
        Ok(Self {
            mean_w: var("mean_head.weight")?,
            mean_b: var("mean_head.bias")?,
            rho_w: var("rho_head.weight")?,
            rho_b: var("rho_head.bias")?,
            blocks,
            param,
            mean,
            rope,
            config,
            composed_layers: false,
        })
    }

    /// Names and shapes of every tensor of a layer with `config`.
    pub fn expected_shapes(config: &TransformerCloakConfig) -> Vec<(String, Vec<usize>)> {
        let c = &config.base;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        let mut v = Vec::new();
        for i in 0..config.estimator_layers {
            let p = format!("estimator.layers.{i}");
            v.push((format!("{p}.attn_norm"), vec![d]));
            v.push((format!("{p}.qkv"), vec![qkv, d]));
            if c.attention_bias {
                v.push((format!("{p}.qkv_bias"), vec![qkv]));
            }
            v.push((format!("{p}.o"), vec![d, c.num_heads * c.head_dim]));
            v.push((format!("{p}.mlp_norm"), vec![d]));
            v.push((format!("{p}.gate_up"), vec![2 * f, d]));
            v.push((format!("{p}.down"), vec![d, f]));
        }
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
        let biases = vec![self.mean_b.clone(), self.rho_b.clone()];
        let weights = self
            .parameters()
            .into_iter()
            .filter(|p| {
                biases
                    .iter()
                    .all(|b| b.as_tensor().id() != p.as_tensor().id())
            })
            .collect();
        (weights, biases)
    }

    /// Every tensor by name, sorted (for saving).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("estimator.layers.{i}");
            v.push((format!("{p}.attn_norm"), b.attn_norm.as_tensor().clone()));
            v.push((format!("{p}.qkv"), b.qkv.as_tensor().clone()));
            if let Some(bias) = &b.qkv_bias {
                v.push((format!("{p}.qkv_bias"), bias.as_tensor().clone()));
            }
            v.push((format!("{p}.o"), b.o.as_tensor().clone()));
            v.push((format!("{p}.mlp_norm"), b.mlp_norm.as_tensor().clone()));
            v.push((format!("{p}.gate_up"), b.gate_up.as_tensor().clone()));
            v.push((format!("{p}.down"), b.down.as_tensor().clone()));
        }
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
        self.hidden_with(x, attention_mask, Grad::Track)
    }

    /// Variables of the estimator's decoder layers only (not the heads).
    pub fn estimator_parameters(&self) -> Vec<Var> {
        self.blocks
            .iter()
            .flat_map(|b| {
                let mut v = vec![
                    b.attn_norm.clone(),
                    b.qkv.clone(),
                    b.o.clone(),
                    b.mlp_norm.clone(),
                    b.gate_up.clone(),
                    b.down.clone(),
                ];
                v.extend(b.qkv_bias.clone());
                v
            })
            .collect()
    }

    fn statistics_with(
        &self,
        x: &Tensor,
        attention_mask: &[u8],
        grad: Grad,
    ) -> Result<(Tensor, Tensor)> {
        let h = self.hidden_with(x, attention_mask, grad)?;
        if let Some(stats) = self.fused_heads(&h, grad)? {
            return Ok(stats);
        }
        let r_mean = linear(&h, &self.mean_w, Some(&self.mean_b), grad)?;
        let r_rho = linear(&h, &self.rho_w, Some(&self.rho_b), grad)?;
        let mean = self.mean.forward(&r_mean)?;
        let std = self.param.forward(&r_rho)?;
        Ok((mean, std))
    }

    /// Whether a training pass on `t` runs the host ops (estimator layers, heads, noise
    /// combination) rather than the composed candle ops.
    fn host_training(&self, grad: Grad, t: &Tensor) -> bool {
        grad == Grad::Track && !self.composed_layers && is_cpu_f32(t)
    }

    /// Training on the CPU with the Cloak σ form: μ and σ each as one op (linear head and
    /// its `tanh` form together); `None` where the composed ops run instead.
    fn fused_heads(&self, h: &Tensor, grad: Grad) -> Result<Option<(Tensor, Tensor)>> {
        let Some(std_form) = self.param.tanh_form() else {
            return Ok(None);
        };
        if !self.host_training(grad, h) {
            return Ok(None);
        }
        let (b, t, d) = h.dims3()?;
        let rows = h.reshape((b * t, d))?.contiguous()?;
        let head = |w: &Var, bias: &Var, form| -> Result<Tensor> {
            let y = rows.apply_op3(w.as_tensor(), bias.as_tensor(), TanhHead::new(form))?;
            Ok(y.reshape((b, t, w.dim(0)?))?)
        };
        Ok(Some((
            head(&self.mean_w, &self.mean_b, self.mean.tanh_form())?,
            head(&self.rho_w, &self.rho_b, std_form)?,
        )))
    }

    fn hidden_with(&self, x: &Tensor, attention_mask: &[u8], grad: Grad) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        if d != self.config.base.hidden_size {
            return Err(Error::Shape {
                what: "TransformerCloak input".into(),
                expected: format!("(batch, seq, {})", self.config.base.hidden_size),
                got: x.dims().to_vec(),
            });
        }
        let c = &self.config.base;
        let positions = positions_from_mask(attention_mask, b, t);
        let rope = Rope::new(self.rope.clone(), Arc::new(positions));
        let attn = Attention {
            key_valid: Arc::new(attention_mask.to_vec()),
        };
        let (hq, hkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let mut h = x.to_dtype(DType::F32)?;
        let dims = StackDims {
            hidden: d,
            hq,
            hkv,
            d: hd,
            ffn: c.intermediate_size,
        };
        let pass = LayerPass::new(
            dims,
            self.rope.clone(),
            rope.positions.clone(),
            attn.key_valid.clone(),
            false,
        );
        if grad == Grad::Off && is_cpu_f32(&h) {
            // Applying a trained layer: the estimator's layers as one host pass, like the
            // base model's (`decoder_stack`).
            let layers = self
                .blocks
                .iter()
                .map(|b| b.frozen(c.rms_norm_eps))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let op = DecoderStack::new(layers.into(), self.blocks.len(), pass);
            return Ok(h.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        if self.host_training(grad, &h) {
            // Training on the CPU: each layer one op with its weight gradients, on the same
            // host kernels.
            for blk in &self.blocks {
                let layout = PackedLayout {
                    dims,
                    bias: blk.qkv_bias.is_some(),
                };
                let op = EstimatorLayer::new(layout, c.rms_norm_eps as f32, pass.clone());
                h = h.contiguous()?.apply_op2(&blk.packed()?, op)?;
            }
            return Ok(h);
        }
        for blk in &self.blocks {
            let n = reference::rms_norm(&h, &weight(&blk.attn_norm, grad), c.rms_norm_eps)?;
            let qkv = linear(&n, &blk.qkv, blk.qkv_bias.as_ref(), grad)?;
            let q = qkv.narrow(2, 0, hq * hd)?.reshape((b, t, hq, hd))?;
            let k = qkv.narrow(2, hq * hd, hkv * hd)?.reshape((b, t, hkv, hd))?;
            let v = qkv
                .narrow(2, (hq + hkv) * hd, hkv * hd)?
                .reshape((b, t, hkv, hd))?;
            let a = attn.forward(&rope.forward(&q)?, &rope.forward(&k)?, &v)?;
            h = (h + linear(&a.reshape((b, t, hq * hd))?, &blk.o, None, grad)?)?;
            let n = reference::rms_norm(&h, &weight(&blk.mlp_norm, grad), c.rms_norm_eps)?;
            let m = SwiGlu::forward(&linear(&n, &blk.gate_up, None, grad)?)?;
            h = (h + linear(&m, &blk.down, None, grad)?)?;
        }
        Ok(h)
    }

    /// Transforms `x (b, t, d)`: tokens with `noise_mask = 0` (and padding) pass bit-exactly.
    /// Records the autograd graph (training).
    pub fn forward_masked(
        &self,
        x: &Tensor,
        attention_mask: Option<&[u8]>,
        noise_mask: Option<&[u8]>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        self.forward_impl(x, attention_mask, noise_mask, rng, Grad::Track)
    }

    /// [`Self::forward_masked`] for a trained layer: the same values, no autograd graph, and the
    /// products on the BLAS-backed path (what a client runs).
    pub fn transform(
        &self,
        x: &Tensor,
        attention_mask: Option<&[u8]>,
        noise_mask: Option<&[u8]>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        self.forward_impl(&x.detach(), attention_mask, noise_mask, rng, Grad::Off)
    }

    /// The client's path of [`Self::transform`] on the CPU: after the estimator, μ, σ, the
    /// noise and the masked combination are computed on host values in one pass per token
    /// (no intermediate tensors); the same formulas and noise stream as the training forward.
    /// `sel`: 1 per transformed token.
    fn transform_host(
        &self,
        x: &Tensor,
        am: &[u8],
        sel: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        let (b, t, d) = x.dims3()?;
        let host = |t: Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let h = self.hidden_with(x, am, Grad::Off)?;
        let mut mean = host(linear(&h, &self.mean_w, Some(&self.mean_b), Grad::Off)?)?;
        let mut std = host(linear(&h, &self.rho_w, Some(&self.rho_b), Grad::Off)?)?;
        self.mean.forward_in_place(&mut mean);
        self.param.forward_in_place(&mut std);
        let keep = match self.config.percent_to_mask {
            Some(p) if p > 0.0 => Some(keep_mask_host(&std, d, p)),
            _ => None,
        };
        let xs = host(x.clone())?;
        // ε, then x̃ in place.
        let mut out = zeroed(b * t * d);
        rng.fill_standard_normal(&mut out);
        combine_in_place(
            &mut out,
            Rows {
                x: &xs,
                mean: &mean,
                std: &std,
                transformed: sel,
                keep: keep.as_deref(),
                d,
            },
        );
        let dev = x.device();
        let mask = match keep {
            Some(k) => {
                let f: Vec<f32> = k.iter().map(|&v| f32::from(v)).collect();
                Some(Tensor::from_vec(f, (b, t, d), dev)?)
            }
            None => None,
        };
        Ok(NoiseOutput {
            transformed: Tensor::from_vec(out, (b, t, d), dev)?,
            mean: Tensor::from_vec(mean, (b, t, d), dev)?,
            std: Tensor::from_vec(std, (b, t, d), dev)?,
            mask,
        })
    }

    /// The training combination on the CPU as one op (input without a gradient): the same
    /// noise draw and formulas as the composed ops.
    fn combine_host(
        &self,
        x: &Tensor,
        mean: Tensor,
        std: Tensor,
        sel: Vec<u8>,
        rng: &mut NoiseRng,
    ) -> Result<NoiseOutput> {
        let mut eps = zeroed(x.elem_count());
        rng.fill_standard_normal(&mut eps);
        let keep = match self.config.percent_to_mask {
            Some(p) if p > 0.0 => Some(per_token_keep_mask(&std, p)?),
            _ => None,
        };
        let op = NoiseCombine {
            x: Arc::new(with_host(x, <[f32]>::to_vec)?),
            eps: Arc::new(eps),
            transformed: Arc::new(sel),
            keep: match &keep {
                Some(k) => Some(Arc::new(k.flatten_all()?.to_vec1::<u8>()?)),
                None => None,
            },
        };
        let transformed = mean.apply_op2(&std, op)?;
        Ok(NoiseOutput {
            transformed,
            mean,
            std,
            mask: match keep {
                Some(k) => Some(k.to_dtype(DType::F32)?),
                None => None,
            },
        })
    }

    fn forward_impl(
        &self,
        x: &Tensor,
        attention_mask: Option<&[u8]>,
        noise_mask: Option<&[u8]>,
        rng: &mut NoiseRng,
        grad: Grad,
    ) -> Result<NoiseOutput> {
        let (b, t, d) = x.dims3()?;
        let ones = vec![1u8; b * t];
        let am = attention_mask.unwrap_or(&ones);
        let nm = noise_mask.unwrap_or(am);
        if am.len() != b * t || nm.len() != b * t {
            return Err(Error::Shape {
                what: "attention / noise mask".into(),
                expected: format!("{} entries (batch × seq)", b * t),
                got: vec![am.len(), nm.len()],
            });
        }
        // 1 = the token is transformed (real and selected by the noise mask).
        let sel: Vec<u8> = nm
            .iter()
            .zip(am)
            .map(|(&n, &a)| u8::from(n != 0 && a != 0))
            .collect();
        if grad == Grad::Off && is_cpu_f32(x) {
            return self.transform_host(x, am, &sel, rng);
        }
        let (mean, std) = self.statistics_with(x, am, grad)?;
        if self.host_training(grad, x) && is_cpu_f32(&mean) && !x.track_op() {
            return self.combine_host(x, mean, std, sel, rng);
        }
        let eps = rng.standard_normal_parallel((b, t, d), x.device())?;
        let noise = (std.clone() * eps)?;
        let keep = match self.config.percent_to_mask {
            Some(p) if p > 0.0 => Some(per_token_keep_mask(&std, p)?),
            _ => None,
        };
        let x32 = x.to_dtype(DType::F32)?;
        let candidate = match &keep {
            // Kept features: x + μ + σε; suppressed ones: μ.
            Some(k) => {
                let full = ((&x32 + &mean)? + &noise)?;
                k.where_cond(&full, &mean)?
            }
            None => ((&x32 + &mean)? + &noise)?,
        };
        let sel = Tensor::from_vec(sel, (b, t, 1), x.device())?.broadcast_as((b, t, d))?;
        let transformed = sel.where_cond(&candidate, &x32)?;
        let mask = match keep {
            Some(k) => Some(k.to_dtype(DType::F32)?),
            None => None,
        };
        Ok(NoiseOutput {
            transformed,
            mean,
            std,
            mask,
        })
    }
}

/// Per-token keep mask (u8, 1 = keep): the `⌈p·d⌉` largest σ of every token are suppressed.
fn per_token_keep_mask(std: &Tensor, p: f64) -> Result<Tensor> {
    let (b, t, d) = std.dims3()?;
    let v = std.detach().flatten_all()?.to_vec1::<f32>()?;
    Ok(Tensor::from_vec(
        keep_mask_host(&v, d, p),
        (b, t, d),
        std.device(),
    )?)
}

/// [`per_token_keep_mask`] on host values: rows of `d` σ values → keep flags.
fn keep_mask_host(v: &[f32], d: usize, p: f64) -> Vec<u8> {
    let k = stainedglass_core::mask::masked_count(p, d);
    let mut keep = vec![1u8; v.len()];
    let mut order: Vec<usize> = Vec::with_capacity(d);
    if k == 0 {
        return keep;
    }
    for (r, kr) in v.chunks_exact(d).zip(keep.chunks_exact_mut(d)) {
        order.clear();
        order.extend(0..d);
        // Largest σ first; ties broken by index so the choice is deterministic. Only the set
        // of the k largest matters, so a selection (O(d)) replaces a sort.
        order.select_nth_unstable_by(k - 1, |&a, &c| r[c].total_cmp(&r[a]).then(a.cmp(&c)));
        for &j in &order[..k] {
            kr[j] = 0;
        }
    }
    keep
}

/// The estimator's tensors for block `i`, fused like the base model's, from HF-named weights.
fn block_from_hf(t: &HashMap<String, Tensor>, i: usize) -> Result<Vec<(String, Tensor)>> {
    let p = format!("model.layers.{i}");
    let g = |n: &str| -> Result<Tensor> {
        t.get(&format!("{p}.{n}"))
            .cloned()
            .ok_or_else(|| Error::Invalid {
                what: format!("base tensor {p}.{n}"),
                expected: "present in the base model".into(),
            })
    };
    let mut v = vec![
        ("attn_norm".to_string(), g("input_layernorm.weight")?),
        (
            "qkv".to_string(),
            Tensor::cat(
                &[
                    g("self_attn.q_proj.weight")?,
                    g("self_attn.k_proj.weight")?,
                    g("self_attn.v_proj.weight")?,
                ],
                0,
            )?,
        ),
        ("o".to_string(), g("self_attn.o_proj.weight")?),
        (
            "mlp_norm".to_string(),
            g("post_attention_layernorm.weight")?,
        ),
        (
            "gate_up".to_string(),
            Tensor::cat(&[g("mlp.gate_proj.weight")?, g("mlp.up_proj.weight")?], 0)?,
        ),
        ("down".to_string(), g("mlp.down_proj.weight")?),
    ];
    if let Ok(bq) = g("self_attn.q_proj.bias") {
        let bias = Tensor::cat(
            &[bq, g("self_attn.k_proj.bias")?, g("self_attn.v_proj.bias")?],
            0,
        )?;
        v.push(("qkv_bias".to_string(), bias));
    }
    Ok(v)
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
        let mut v = self.estimator_parameters();
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

#[cfg(test)]
mod tests {
    use super::super::test_util::rand;
    use super::*;
    use rand::SeedableRng;

    /// Two estimator layers with GQA and a qkv bias, random weights.
    fn tiny(composed: bool) -> TransformerCloak {
        tiny_with(composed, None)
    }

    fn tiny_with(composed: bool, percent_to_mask: Option<f64>) -> TransformerCloak {
        let mut config = TransformerCloakConfig::new(LlamaConfig::tiny_for_tests());
        config.estimator_layers = 2;
        config.percent_to_mask = percent_to_mask;
        // Not 1, so that a dropped temperature or bound shows in the gradients.
        config.shallow = 0.7;
        config.mean_bound = 2.0;
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let named: HashMap<String, Tensor> = TransformerCloak::expected_shapes(&config)
            .into_iter()
            .map(|(n, s)| {
                // Norm weights around 1, products small enough to keep activations tame.
                let t = if s.len() == 1 {
                    (rand(&s, &mut r, 0.5) + 1.0).expect("norm")
                } else {
                    rand(&s, &mut r, 0.3)
                };
                (n, t)
            })
            .collect();
        let mut c = TransformerCloak::from_named(config, &named, &Device::Cpu).expect("cloak");
        c.composed_layers = composed;
        c
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .and_then(|a| a.flatten_all()?.max(0)?.to_scalar::<f32>())
            .expect("max")
    }

    fn grads_of(g: &candle_core::backprop::GradStore, vars: &[Var]) -> Vec<Tensor> {
        vars.iter()
            .map(|v| {
                g.get(v.as_tensor())
                    .expect("every parameter has a gradient")
                    .clone()
            })
            .collect()
    }

    /// Every gradient of `got` within 1e-4 (relative to its scale) of `want`'s, none of them zero.
    fn assert_grads_close(got: &[Tensor], want: &[Tensor]) {
        assert_eq!(got.len(), want.len());
        for (i, (a, e)) in got.iter().zip(want).enumerate() {
            assert_eq!(a.dims(), e.dims(), "parameter {i}");
            let scale = max_abs(e);
            assert!(scale > 0.0, "parameter {i}: zero reference gradient");
            let d = max_abs(&(a - e).expect("diff"));
            assert!(
                d < 1e-4 * scale.max(1.0),
                "parameter {i}: gradient differs by {d} (scale {scale})"
            );
        }
    }

    /// The training path's one op per estimator layer against the per-part ops it replaces:
    /// same hidden states and the same gradient for every estimator parameter (norm weights,
    /// packed q/k/v and its bias, output, gate/up and down projections), with left padding in
    /// one row.
    #[test]
    fn layer_op_matches_the_composed_ops_in_value_and_every_gradient() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (b, t) = (2, 6);
        let x = rand(&[b, t, 32], &mut r, 1.0);
        let w = rand(&[b, t, 32], &mut r, 1.0);
        let mut am = vec![1u8; b * t];
        am[t] = 0;
        am[t + 1] = 0;
        let run = |composed: bool| {
            let c = tiny(composed);
            let h = c.estimator_hidden(&x, &am).expect("hidden");
            let g = (&h * &w)
                .and_then(|l| l.sum_all()?.backward())
                .expect("backward");
            (h, grads_of(&g, &c.estimator_parameters()))
        };
        let (h_op, g_op) = run(false);
        let (h_ref, g_ref) = run(true);
        let d = max_abs(&(&h_op - &h_ref).expect("diff"));
        assert!(d < 1e-4 * max_abs(&h_ref).max(1.0), "hidden differs by {d}");
        assert_eq!(g_op.len(), g_ref.len());
        assert_eq!(g_op.len(), 2 * 7, "two layers of seven tensors each");
        assert_grads_close(&g_op, &g_ref);
    }

    /// The whole training forward (fused estimator layers, heads and noise combination)
    /// against the composed ops: same transformed embeddings, μ, σ and keep mask for the same
    /// seed, and the same gradient for every parameter of the layer (heads included), with
    /// suppressed features, an untransformed token and a padded one.
    #[test]
    fn fused_training_forward_matches_the_composed_ops() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (b, t) = (2, 5);
        let x = rand(&[b, t, 32], &mut r, 1.0);
        let ws: Vec<Tensor> = (0..3).map(|_| rand(&[b, t, 32], &mut r, 1.0)).collect();
        let mut am = vec![1u8; b * t];
        am[t] = 0;
        let mut nm = vec![1u8; b * t];
        nm[2] = 0;
        let run = |composed: bool| {
            let c = tiny_with(composed, Some(0.25));
            let mut rng = NoiseRng::seeded(4);
            let o = c
                .forward_masked(&x, Some(&am), Some(&nm), &mut rng)
                .expect("forward");
            let outs = [o.transformed.clone(), o.mean.clone(), o.std.clone()];
            let loss = outs
                .iter()
                .zip(&ws)
                .map(|(o, w)| (o * w).and_then(|p| p.sum_all()))
                .collect::<candle_core::Result<Vec<_>>>()
                .and_then(|l| Tensor::stack(&l, 0)?.sum_all())
                .expect("loss");
            let g = loss.backward().expect("backward");
            (
                outs,
                o.mask.expect("keep mask"),
                grads_of(&g, &c.parameters()),
            )
        };
        let (o_op, m_op, g_op) = run(false);
        let (o_ref, m_ref, g_ref) = run(true);
        assert_eq!(
            max_abs(&(&m_op - &m_ref).expect("diff")),
            0.0,
            "keep masks differ"
        );
        for (i, (a, e)) in o_op.iter().zip(&o_ref).enumerate() {
            let d = max_abs(&(a - e).expect("diff"));
            assert!(d < 1e-4 * max_abs(e).max(1.0), "output {i} differs by {d}");
        }
        // The untransformed token passes bit-exactly.
        let row = |t: &Tensor| t.get(0).and_then(|r| r.get(2)).expect("row");
        assert_eq!(max_abs(&(row(&o_op[0]) - row(&x)).expect("diff")), 0.0);
        assert_grads_close(&g_op, &g_ref);
    }
}
