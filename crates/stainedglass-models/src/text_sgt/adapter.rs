//! A **served adapter**: the base model's first `n` decoder layers as trainable copies,
//! trained together with the SGT, that the provider serves in place of its own first layers
//! (privacy variant (d) of the frontier). The SGT may then add noise the unchanged model could
//! not read through; what it assumes is a provider willing to serve modified weights for the
//! SGT's clients. The layers are the estimator's (`estimator.rs`: same kernels, same fused CPU
//! training op with weight gradients); [`ServedAdapter::served_model`] gives the whole served
//! model, which every existing tool (serving, evaluation, the provider's probes) loads like any
//! other once saved as a Hugging Face folder.

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use super::estimator::{block_from_hf, Estimator, Grad};
use crate::error::{Error, Result};
use crate::llm::{Llama, LlamaConfig, Stop};

/// The trainable first layers of the served model.
pub struct ServedAdapter {
    est: Estimator,
    layers: usize,
}

impl ServedAdapter {
    /// Copies of `base`'s layers `0..layers` (the served model starts equal to the base).
    pub fn from_base(base: &Llama, layers: usize) -> Result<Self> {
        let tensors: HashMap<String, Tensor> = base.hf_tensors()?.into_iter().collect();
        let mut named = HashMap::new();
        for i in 0..layers.min(base.config().num_layers) {
            named.extend(block_from_hf(&tensors, i)?);
        }
        Self::from_named(base.config(), layers, &named)
    }

    /// The adapter of `layers` layers from its [`Self::named_tensors`] (a checkpoint). Every
    /// tensor is copied: training never writes into the tensors given.
    pub fn from_named(
        base: &LlamaConfig,
        layers: usize,
        named: &HashMap<String, Tensor>,
    ) -> Result<Self> {
        if layers == 0 || layers >= base.num_layers {
            return Err(Error::Invalid {
                what: format!("a served adapter of {layers} layers"),
                expected: format!("between 1 and {} layers", base.num_layers - 1),
            });
        }
        let expected: HashMap<String, Vec<usize>> = Estimator::expected_shapes(base, layers)
            .into_iter()
            .collect();
        let est = Estimator::new(base, layers, |name| {
            let t = named.get(name).ok_or_else(|| Error::Invalid {
                what: format!("served adapter tensor {name}"),
                expected: "present (a checkpoint of the same adapter)".into(),
            })?;
            if Some(t.dims()) != expected.get(name).map(Vec::as_slice) {
                return Err(Error::Shape {
                    what: format!("served adapter tensor {name}"),
                    expected: format!("{:?}", expected.get(name)),
                    got: t.dims().to_vec(),
                });
            }
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?.copy()?)?)
        })?;
        Ok(Self { est, layers })
    }

    /// The number of layers it stands in for.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Its variables (what an optimizer updates).
    pub fn parameters(&self) -> Vec<Var> {
        self.est.parameters()
    }

    /// Every tensor by name (a checkpoint group).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.est.named_tensors()
    }

    /// The served model's pass on `x (b, t, hidden)`: the adapter's layers (with gradients to
    /// their weights and to `x`), then `base`'s layers from `self.layers()` up to `stop`.
    pub fn forward(
        &self,
        base: &Llama,
        x: &Tensor,
        attention_mask: &[u8],
        stop: Stop,
    ) -> Result<Tensor> {
        if let Stop::AtLayer(k) = stop {
            if k < self.layers {
                return Err(Error::Invalid {
                    what: format!("a pass that stops at layer {k}"),
                    expected: format!("a layer after the adapter's {} layers", self.layers),
                });
            }
        }
        let h = self.est.hidden(x, attention_mask, Grad::Track)?;
        let (b, t, _) = x.dims3()?;
        let mask = Tensor::from_vec(attention_mask.to_vec(), (b, t), x.device())?;
        base.forward_from_layer(self.layers, &h, Some(&mask), stop)
    }

    /// The adapter's layers under their Hugging Face names (q, k, v and gate, up unfused).
    pub fn hf_tensors(&self, base: &LlamaConfig) -> Result<Vec<(String, Tensor)>> {
        let named: HashMap<String, Tensor> = self.named_tensors().into_iter().collect();
        let (q, kv, f) = (
            base.num_heads * base.head_dim,
            base.num_kv_heads * base.head_dim,
            base.intermediate_size,
        );
        let mut out = Vec::new();
        for i in 0..self.layers {
            let get = |part: &str| -> Result<Tensor> {
                let name = format!("estimator.layers.{i}.{part}");
                let t = named.get(&name).ok_or_else(|| Error::Invalid {
                    what: format!("served adapter tensor {name}"),
                    expected: "present".into(),
                })?;
                Ok(t.detach().copy()?)
            };
            let p = format!("model.layers.{i}");
            let mut put = |n: &str, t: Tensor| out.push((format!("{p}.{n}"), t));
            put("input_layernorm.weight", get("attn_norm")?);
            put("post_attention_layernorm.weight", get("mlp_norm")?);
            put("self_attn.o_proj.weight", get("o")?);
            put("mlp.down_proj.weight", get("down")?);
            let qkv = get("qkv")?;
            put("self_attn.q_proj.weight", qkv.narrow(0, 0, q)?.copy()?);
            put("self_attn.k_proj.weight", qkv.narrow(0, q, kv)?.copy()?);
            put(
                "self_attn.v_proj.weight",
                qkv.narrow(0, q + kv, kv)?.copy()?,
            );
            if base.attention_bias {
                let b = get("qkv_bias")?;
                put("self_attn.q_proj.bias", b.narrow(0, 0, q)?.copy()?);
                put("self_attn.k_proj.bias", b.narrow(0, q, kv)?.copy()?);
                put("self_attn.v_proj.bias", b.narrow(0, q + kv, kv)?.copy()?);
            }
            let gu = get("gate_up")?;
            put("mlp.gate_proj.weight", gu.narrow(0, 0, f)?.copy()?);
            put("mlp.up_proj.weight", gu.narrow(0, f, f)?.copy()?);
        }
        Ok(out)
    }

    /// The whole served model: `base` with its first layers replaced by the adapter's current
    /// weights (a copy; later training does not change it).
    pub fn served_model(&self, base: &Llama) -> Result<Llama> {
        let mut map: HashMap<String, Tensor> = base.hf_tensors()?.into_iter().collect();
        for (name, t) in self.hf_tensors(base.config())? {
            map.insert(name, t);
        }
        Llama::from_tensors(base.config().clone(), map, base.device())
    }
}

#[cfg(test)]
mod tests {
    use super::ServedAdapter;
    use crate::llm::Stop;
    use crate::test_util::{max_diff, rand, tiny_model};
    use candle_core::{DType, Device, Tensor};
    use rand::SeedableRng;

    /// A fresh adapter is the base model's first layers: its pass, the served model and the
    /// base model agree; after its weights change, the served model follows the adapter
    /// and the base model does not.
    #[test]
    fn a_fresh_adapter_is_the_base_and_the_served_model_follows_it() {
        let m = tiny_model();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (b, t) = (2, 5);
        let x = rand(&[b, t, 32], &mut r, 1.0);
        let mut am = vec![1u8; b * t];
        am[t] = 0;
        let mask = Tensor::from_vec(am.clone(), (b, t), &Device::Cpu)
            .and_then(|m| m.to_dtype(DType::U8))
            .expect("mask");
        let a = ServedAdapter::from_base(&m, 1).expect("adapter");
        let want = m
            .forward_embeds(&x, Some(&mask), Stop::Logits)
            .expect("base");
        let got = a.forward(&m, &x, &am, Stop::Logits).expect("adapted");
        assert!(max_diff(&want, &got) < 1e-4, "{}", max_diff(&want, &got));
        let served = a.served_model(&m).expect("served");
        let s = served
            .forward_embeds(&x, Some(&mask), Stop::Logits)
            .expect("served");
        assert!(max_diff(&want, &s) < 1e-4);
        // Change the adapter's down projection: the adapted pass and a new served model move
        // together, the base model stays.
        // `parameters()` order: attn_norm, qkv, o, mlp_norm, gate_up, down.
        let down = a.parameters()[5].clone();
        down.set(&(down.as_tensor() * 3.0).expect("scale"))
            .expect("set");
        let got = a.forward(&m, &x, &am, Stop::Logits).expect("adapted");
        let s = a
            .served_model(&m)
            .and_then(|s| s.forward_embeds(&x, Some(&mask), Stop::Logits))
            .expect("served");
        assert!(max_diff(&got, &s) < 1e-4, "{}", max_diff(&got, &s));
        assert!(
            max_diff(&got, &want) > 1e-3,
            "the change did not reach the output"
        );
        let again = m
            .forward_embeds(&x, Some(&mask), Stop::Logits)
            .expect("base");
        assert!(
            max_diff(&want, &again) == 0.0,
            "training the adapter changed the base"
        );
    }

    /// The adapter's pass gives gradients to its weights and to its input.
    #[test]
    fn the_adapter_trains() {
        let m = tiny_model();
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        let x = candle_core::Var::from_tensor(&rand(&[1, 4, 32], &mut r, 1.0)).expect("var");
        let am = vec![1u8; 4];
        let mask = Tensor::from_vec(am.clone(), (1, 4), &Device::Cpu).expect("mask");
        let a = ServedAdapter::from_base(&m, 1).expect("adapter");
        let y = a
            .forward(&m, x.as_tensor(), &am, Stop::AtLayer(2))
            .expect("pass");
        let g = y
            .sqr()
            .and_then(|y| y.sum_all()?.backward())
            .expect("backward");
        // A fresh adapter is the base: the same input gradient as the base model's pass.
        let gb = m
            .forward_embeds(x.as_tensor(), Some(&mask), Stop::AtLayer(2))
            .and_then(|y| Ok(y.sqr()?.sum_all()?.backward()?))
            .expect("base backward");
        let (gx, gbx) = (
            g.get(x.as_tensor()).expect("input gradient"),
            gb.get(x.as_tensor()).expect("base input gradient"),
        );
        assert!(
            max_diff(gx, gbx) < 1e-3,
            "input gradients differ by {}",
            max_diff(gx, gbx)
        );
        for v in a.parameters() {
            let gv = g.get(v.as_tensor()).expect("weight gradient");
            let n = gv
                .sqr()
                .and_then(|s| s.sum_all()?.to_scalar::<f32>())
                .expect("norm");
            assert!(n > 0.0 && n.is_finite(), "gradient norm {n}");
        }
        assert!(a.forward(&m, x.as_tensor(), &am, Stop::AtLayer(0)).is_err());
        assert!(
            ServedAdapter::from_base(&m, 3).is_err(),
            "every layer is not an adapter"
        );
        let e = m.forward_from_layer(2, x.as_tensor(), Some(&mask), Stop::AtLayer(1));
        assert!(e.is_err(), "a pass that starts after it stops");
    }
}
