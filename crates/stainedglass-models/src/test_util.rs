//! Helpers shared by the LM's unit tests.

use crate::llm::weights::TensorMap;
use crate::llm::{Llama, LlamaConfig};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

/// The largest absolute difference between two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
        .expect("diff")
}

/// A CPU tensor of `shape` with values uniform in `(-scale, scale)`.
pub fn rand(shape: &[usize], r: &mut rand_chacha::ChaCha8Rng, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| r.random_range(-scale..scale)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
}

/// A 3-layer model with GQA and a qkv bias (Qwen2-style), random weights.
pub fn tiny_model() -> Llama {
    tiny_model_with(|_| {})
}

/// [`tiny_model`] with its configuration changed by `edit` first.
pub fn tiny_model_with(edit: impl FnOnce(&mut LlamaConfig)) -> Llama {
    let mut cfg = LlamaConfig::tiny_for_tests();
    edit(&mut cfg);
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut map = TensorMap::new();
    let (h, f, q, kv) = (32, 40, 32, 16);
    map.insert(
        "model.embed_tokens.weight".into(),
        rand(&[50, h], &mut r, 1.0),
    );
    map.insert("model.norm.weight".into(), rand(&[h], &mut r, 1.0));
    for i in 0..3 {
        let p = format!("model.layers.{i}");
        let mut put = |n: &str, s: &[usize], sc: f32| {
            map.insert(format!("{p}.{n}"), rand(s, &mut r, sc));
        };
        put("input_layernorm.weight", &[h], 1.0);
        put("post_attention_layernorm.weight", &[h], 1.0);
        put("self_attn.q_proj.weight", &[q, h], 0.3);
        put("self_attn.k_proj.weight", &[kv, h], 0.3);
        put("self_attn.v_proj.weight", &[kv, h], 0.3);
        put("self_attn.q_proj.bias", &[q], 0.3);
        put("self_attn.k_proj.bias", &[kv], 0.3);
        put("self_attn.v_proj.bias", &[kv], 0.3);
        put("self_attn.o_proj.weight", &[h, q], 0.3);
        put("mlp.gate_proj.weight", &[f, h], 0.3);
        put("mlp.up_proj.weight", &[f, h], 0.3);
        put("mlp.down_proj.weight", &[h, f], 0.3);
    }
    Llama::from_tensors(cfg, map, &Device::Cpu).expect("tiny model")
}
