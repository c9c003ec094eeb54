//! The estimator of a TransformerCloak: `L_est` decoder layers of the base architecture
//! (initialised from the base model's first layers, causal attention, so token `t` depends on
//! tokens `≤ t` only), trainable. Three paths compute the same hidden states: applying a
//! trained layer runs them as the frozen stack's one host pass; training on the CPU runs each
//! layer as one op with its weight gradients (`estimator_layer`); elsewhere (and as the tests'
//! reference) the per-part differentiable ops.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use candle_core::{DType, Tensor, Var};
use stainedglass_core::host::is_cpu_f32;

use super::estimator_layer::{EstimatorLayer, PackedLayout};
use crate::error::{Error, Result};
use crate::llm::backend::ops::{reference, Attention, Linear, RmsNorm, Rope, SwiGlu};
use crate::llm::backend::quant::QMatrix;
use crate::llm::backend::rope_table::RopeTable;
use crate::llm::backend::train_linear;
use crate::llm::block::{Block, Mats};
use crate::llm::stack::{DecoderStack, LayerPass, StackDims, StoredMats};
use crate::llm::{positions_from_mask, LlamaConfig};

/// Whether a pass records the autograd graph (training) or not (applying a trained layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Grad {
    Track,
    /// Detached weights: no graph, and products go through the BLAS-backed frozen linear.
    Off,
}

/// `x·wᵀ (+ b)`: trainable in `w` and `b` when tracking, the frozen linear otherwise.
pub(super) fn linear(
    x: &Tensor,
    w: &Var,
    b: Option<&Var>,
    grad: Grad,
) -> candle_core::Result<Tensor> {
    if grad == Grad::Off {
        let lin = Linear::new(w.as_tensor().detach(), b.map(|b| b.as_tensor().detach()));
        return lin.forward(x);
    }
    let y = train_linear::linear(x, w.as_tensor())?;
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

/// One trainable decoder layer of the estimator.
pub(super) struct EstimatorBlock {
    attn_norm: Var,
    qkv: Var,
    qkv_bias: Option<Var>,
    o: Var,
    mlp_norm: Var,
    gate_up: Var,
    down: Var,
}

impl EstimatorBlock {
    /// Every variable with its name under `prefix`, in [`PackedLayout`] order.
    fn named(&self) -> Vec<(&'static str, &Var)> {
        let mut v = vec![("attn_norm", &self.attn_norm), ("qkv", &self.qkv)];
        v.extend(self.qkv_bias.as_ref().map(|b| ("qkv_bias", b)));
        v.extend([
            ("o", &self.o),
            ("mlp_norm", &self.mlp_norm),
            ("gate_up", &self.gate_up),
            ("down", &self.down),
        ]);
        v
    }

    /// All parameters flattened and concatenated in the order of [`PackedLayout`]; gradients
    /// flow back to every variable.
    fn packed(&self) -> candle_core::Result<Tensor> {
        let parts = self
            .named()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }

    /// The layer's current weights as a frozen decoder layer (no copies but the norm weights).
    fn frozen(&self, eps: f64) -> candle_core::Result<Block> {
        let lin = |w: &Var, b: Option<&Var>| {
            Linear::new(w.as_tensor().detach(), b.map(|b| b.as_tensor().detach()))
        };
        Ok(Block {
            attn_norm: RmsNorm::new(self.attn_norm.as_tensor().detach(), eps)?,
            mlp_norm: RmsNorm::new(self.mlp_norm.as_tensor().detach(), eps)?,
            mats: Mats::F32 {
                qkv: lin(&self.qkv, self.qkv_bias.as_ref()),
                o: lin(&self.o, None),
                gate_up: lin(&self.gate_up, None),
                down: lin(&self.down, None),
            },
            packed: OnceLock::new(),
        })
    }

    /// The layer's current weights rounded to bf16 as a frozen decoder layer whose products
    /// run in bf16 with f32 accumulation (`Precision::Bf16`; norms and bias stay f32).
    fn bf16(&self, eps: f64) -> Result<Block> {
        let mat = |v: &Var| -> Result<QMatrix> {
            let (rows, cols) = v.as_tensor().dims2()?;
            let w = v.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            Ok(QMatrix::bf16_from_f32(&w, rows, cols))
        };
        let qkv_bias = match &self.qkv_bias {
            Some(b) => Some(b.as_tensor().flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Block {
            attn_norm: RmsNorm::new(self.attn_norm.as_tensor().detach(), eps)?,
            mlp_norm: RmsNorm::new(self.mlp_norm.as_tensor().detach(), eps)?,
            mats: Mats::Stored(StoredMats {
                qkv: mat(&self.qkv)?,
                qkv_bias,
                o: mat(&self.o)?,
                gate_up: mat(&self.gate_up)?,
                down: mat(&self.down)?,
            }),
            packed: OnceLock::new(),
        })
    }
}

/// The estimator's decoder layers.
pub(super) struct Estimator {
    base: LlamaConfig,
    blocks: Vec<EstimatorBlock>,
    rope: Arc<RopeTable>,
    /// Train through the per-part ops instead of one op per layer (the reference in tests).
    pub composed_layers: bool,
    /// The layers as bf16 products, used by passes without a graph (`Precision::Bf16`).
    bf16: Option<Arc<[Block]>>,
}

/// Name of the estimator tensor `part` of layer `i`.
fn tensor_name(i: usize, part: &str) -> String {
    format!("estimator.layers.{i}.{part}")
}

impl Estimator {
    /// `layers` decoder layers of architecture `base`, their variables from `var(name)`.
    pub fn new(
        base: &LlamaConfig,
        layers: usize,
        var: impl Fn(&str) -> Result<Var>,
    ) -> Result<Self> {
        let blocks = (0..layers)
            .map(|i| {
                let v = |part: &str| var(&tensor_name(i, part));
                Ok(EstimatorBlock {
                    attn_norm: v("attn_norm")?,
                    qkv: v("qkv")?,
                    qkv_bias: base.attention_bias.then(|| v("qkv_bias")).transpose()?,
                    o: v("o")?,
                    mlp_norm: v("mlp_norm")?,
                    gate_up: v("gate_up")?,
                    down: v("down")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rope = Arc::new(RopeTable::from_inv_freq(
            &base.rope_inv_freq(),
            base.max_position_embeddings.min(32_768),
        ));
        Ok(Self {
            base: base.clone(),
            blocks,
            rope,
            composed_layers: false,
            bf16: None,
        })
    }

    /// Passes without a graph run the layers' current weights rounded to bf16 (`on`), or the
    /// f32 weights as they are (a copy taken now: set it on a trained, frozen layer).
    pub fn set_bf16(&mut self, on: bool) -> Result<()> {
        self.bf16 = if on {
            let eps = self.base.rms_norm_eps;
            let blocks = self.blocks.iter().map(|b| b.bf16(eps));
            Some(blocks.collect::<Result<Vec<_>>>()?.into())
        } else {
            None
        };
        Ok(())
    }

    /// Names and shapes of the tensors of `layers` estimator layers of architecture `c`.
    pub fn expected_shapes(c: &LlamaConfig, layers: usize) -> Vec<(String, Vec<usize>)> {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        let mut v = Vec::new();
        for i in 0..layers {
            v.push((tensor_name(i, "attn_norm"), vec![d]));
            v.push((tensor_name(i, "qkv"), vec![qkv, d]));
            if c.attention_bias {
                v.push((tensor_name(i, "qkv_bias"), vec![qkv]));
            }
            v.push((tensor_name(i, "o"), vec![d, c.num_heads * c.head_dim]));
            v.push((tensor_name(i, "mlp_norm"), vec![d]));
            v.push((tensor_name(i, "gate_up"), vec![2 * f, d]));
            v.push((tensor_name(i, "down"), vec![d, f]));
        }
        v
    }

    /// Every tensor by name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (part, var) in b.named() {
                v.push((tensor_name(i, part), var.as_tensor().clone()));
            }
        }
        v
    }

    /// Variables of the decoder layers, layer by layer (the qkv bias after the six weights).
    pub fn parameters(&self) -> Vec<Var> {
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

    /// The longest sequence the estimator accepts (the base model's positions).
    pub fn max_positions(&self) -> usize {
        self.rope.max_positions
    }

    /// Whether a training pass on `t` runs the host ops (estimator layers, heads, noise
    /// combination) rather than the composed candle ops.
    pub fn host_training(&self, grad: Grad, t: &Tensor) -> bool {
        grad == Grad::Track && !self.composed_layers && is_cpu_f32(t)
    }

    /// The last hidden states `(b, t, d)` for `x (b, t, d)` with its attention mask.
    pub fn hidden(&self, x: &Tensor, attention_mask: &[u8], grad: Grad) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        if d != self.base.hidden_size {
            return Err(Error::Shape {
                what: "TransformerCloak input".into(),
                expected: format!("(batch, seq, {})", self.base.hidden_size),
                got: x.dims().to_vec(),
            });
        }
        if t > self.rope.max_positions {
            return Err(Error::Invalid {
                what: format!("a sequence of {t} tokens"),
                expected: format!(
                    "at most {} tokens (the base model's positions)",
                    self.rope.max_positions
                ),
            });
        }
        if attention_mask.len() != b * t {
            return Err(Error::Shape {
                what: "attention mask".into(),
                expected: format!("{} entries (batch × seq)", b * t),
                got: vec![attention_mask.len()],
            });
        }
        let c = &self.base;
        let dims = StackDims {
            hidden: d,
            hq: c.num_heads,
            hkv: c.num_kv_heads,
            d: c.head_dim,
            ffn: c.intermediate_size,
        };
        let pass = LayerPass::new(
            dims,
            self.rope.clone(),
            Arc::new(positions_from_mask(attention_mask, b, t)),
            Arc::new(attention_mask.to_vec()),
            false,
        );
        let h = x.to_dtype(DType::F32)?;
        if grad == Grad::Off && is_cpu_f32(&h) {
            // Applying a trained layer: the estimator's layers as one host pass, like the
            // base model's (`llm::stack`).
            let layers: Arc<[Block]> = match &self.bf16 {
                Some(layers) => layers.clone(),
                None => self
                    .blocks
                    .iter()
                    .map(|b| b.frozen(c.rms_norm_eps))
                    .collect::<candle_core::Result<Vec<_>>>()?
                    .into(),
            };
            let op = DecoderStack::new(layers, self.blocks.len(), pass);
            return Ok(h.contiguous()?.apply_op1_no_bwd(&op)?);
        }
        if self.host_training(grad, &h) {
            // Training on the CPU: each layer one op with its weight gradients, on the same
            // host kernels.
            let mut h = h;
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
        self.composed(h, &pass, grad)
    }

    /// The per-part differentiable ops (non-CPU devices, and the reference in tests).
    fn composed(&self, mut h: Tensor, pass: &LayerPass, grad: Grad) -> Result<Tensor> {
        let c = &self.base;
        let (b, t, _) = h.dims3()?;
        let (hq, hkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rope = Rope::new(self.rope.clone(), pass.positions.clone());
        let attn = Attention {
            key_valid: pass.key_valid.clone(),
        };
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
}

/// The estimator's tensors for block `i`, fused like the base model's, from HF-named weights.
pub(super) fn block_from_hf(
    t: &HashMap<String, Tensor>,
    i: usize,
) -> Result<Vec<(String, Tensor)>> {
    let p = format!("model.layers.{i}");
    let g = |n: &str| -> Result<Tensor> {
        t.get(&format!("{p}.{n}"))
            .cloned()
            .ok_or_else(|| Error::Invalid {
                what: format!("base tensor {p}.{n}"),
                expected: "present in the base model".into(),
            })
    };
    let cat = |parts: &[&str]| -> Result<Tensor> {
        let ts = parts.iter().map(|n| g(n)).collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&ts, 0)?)
    };
    let mut v = vec![
        ("attn_norm", g("input_layernorm.weight")?),
        (
            "qkv",
            cat(&[
                "self_attn.q_proj.weight",
                "self_attn.k_proj.weight",
                "self_attn.v_proj.weight",
            ])?,
        ),
        ("o", g("self_attn.o_proj.weight")?),
        ("mlp_norm", g("post_attention_layernorm.weight")?),
        (
            "gate_up",
            cat(&["mlp.gate_proj.weight", "mlp.up_proj.weight"])?,
        ),
        ("down", g("mlp.down_proj.weight")?),
    ];
    if t.contains_key(&format!("{p}.self_attn.q_proj.bias")) {
        let bias = cat(&[
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.bias",
        ])?;
        v.push(("qkv_bias", bias));
    }
    Ok(v.into_iter().map(|(n, t)| (tensor_name(i, n), t)).collect())
}
