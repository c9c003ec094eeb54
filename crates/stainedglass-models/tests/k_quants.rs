//! A tiny Llama written as a GGUF with Q4_K and Q6_K matrices (the mix of llama.cpp's Q4_K_M:
//! Q6_K for the LM head, one layer's `v` and `ffn_down`), loaded with its matrices as stored:
//! with f32 activations it is the f32 model (candle's dequantization) bit for bit, through a
//! prefill and cached decoding, and with 8-bit activations its logits stay close; prefills of
//! more than 128 positions (the f32 route for matrices with Q6_K parts) agree too.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use stainedglass_models::llm::{Activations, KvCache, Llama};
use std::path::Path;

const HIDDEN: usize = 256;
const FFN: usize = 512;
const LAYERS: usize = 2;
const HEADS: u32 = 4;
const KV_HEADS: u32 = 2;
const VOCAB: usize = 300;

/// Deterministic weights of about the scale of a trained model's.
fn weights(rows: usize, cols: usize, seed: u64) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15 ^ (seed << 17));
            ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.12
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("weights")
}

fn write_model(path: &Path) {
    let head_dim = HIDDEN / HEADS as usize;
    let kv = KV_HEADS as usize * head_dim;
    let q = |t: Tensor, dtype: GgmlDType| QTensor::quantize(&t, dtype).expect("quantize");
    let norm = |seed: u64| {
        let w = weights(1, HIDDEN, seed).flatten_all().expect("flat");
        q((w + 1.0).expect("norm"), GgmlDType::F32)
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        (
            "token_embd.weight".into(),
            q(weights(VOCAB, HIDDEN, 1), GgmlDType::Q4K),
        ),
        ("output_norm.weight".into(), norm(2)),
        (
            "output.weight".into(),
            q(weights(VOCAB, HIDDEN, 3), GgmlDType::Q6K),
        ),
    ];
    for l in 0..LAYERS {
        let s = 10 * (l as u64 + 1);
        // Q4_K_M's "more bits" layers: Q6_K `v` and `ffn_down` in the first layer only.
        let six = if l == 0 {
            GgmlDType::Q6K
        } else {
            GgmlDType::Q4K
        };
        let b = |name: &str| format!("blk.{l}.{name}.weight");
        tensors.extend([
            (b("attn_norm"), norm(s)),
            (
                b("attn_q"),
                q(weights(HIDDEN, HIDDEN, s + 1), GgmlDType::Q4K),
            ),
            (b("attn_k"), q(weights(kv, HIDDEN, s + 2), GgmlDType::Q4K)),
            (b("attn_v"), q(weights(kv, HIDDEN, s + 3), six)),
            (
                b("attn_output"),
                q(weights(HIDDEN, HIDDEN, s + 4), GgmlDType::Q4K),
            ),
            (b("ffn_norm"), norm(s + 5)),
            (
                b("ffn_gate"),
                q(weights(FFN, HIDDEN, s + 6), GgmlDType::Q4K),
            ),
            (b("ffn_up"), q(weights(FFN, HIDDEN, s + 7), GgmlDType::Q4K)),
            (b("ffn_down"), q(weights(HIDDEN, FFN, s + 8), six)),
        ]);
    }
    let u = |v: u32| gguf_file::Value::U32(v);
    let md = [
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        ("llama.embedding_length", u(HIDDEN as u32)),
        ("llama.attention.head_count", u(HEADS)),
        ("llama.attention.head_count_kv", u(KV_HEADS)),
        ("llama.feed_forward_length", u(FFN as u32)),
        ("llama.block_count", u(LAYERS as u32)),
        ("llama.context_length", u(512)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(1e-5),
        ),
        ("llama.rope.freq_base", gguf_file::Value::F32(10_000.0)),
    ];
    let mdr: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let tr: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut f, &mdr, &tr).expect("write gguf");
}

/// Last-position logits of a prefill of `ids[..prefill]`, then of each later token decoded
/// one at a time through the KV cache.
fn cached_logits(m: &Llama, ids: &[u32], prefill: usize) -> Vec<Vec<f32>> {
    let ids = Tensor::new(ids, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let x = m.embed(&ids).expect("embed");
    let n = ids.dim(1).expect("len");
    let mut cache = KvCache::new(m.config().num_layers, 1);
    let mut steps = vec![(0, prefill)];
    steps.extend((prefill..n).map(|i| (i, 1)));
    steps
        .into_iter()
        .map(|(start, len)| {
            m.forward_cached(&x.narrow(1, start, len).expect("part"), None, &mut cache)
                .and_then(|l| Ok(l.squeeze(0)?.to_vec1::<f32>()?))
                .expect("cached pass")
        })
        .collect()
}

fn ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % VOCAB) as u32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()))
}

#[test]
fn q4_k_and_q6_k_models_run_as_stored() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tiny-q4_k_m.gguf");
    write_model(&path);
    let f32_model = Llama::load(&path, &Device::Cpu).expect("f32 model");
    let exact = Llama::load_stored_with(&path, &Device::Cpu, Activations::F32).expect("stored");
    let int8 = Llama::load_stored_with(&path, &Device::Cpu, Activations::Int8).expect("stored");
    assert_eq!(
        exact.storage_summary(),
        "Q4K ×4, Q4K+Q4K ×2, Q4K+Q4K+Q4K ×1, Q4K+Q4K+Q6K ×1, Q6K ×2"
    );
    assert!(exact.weight_bytes() * 4 < f32_model.weight_bytes());
    // A short prefill (8-bit products throughout) and a long one (past 128 rows: the Q6_K
    // matrices' f32 route, the Q4_K ones' tiles where the CPU has them).
    for (n, prefill) in [(12, 8), (140, 136)] {
        let ids = ids(n);
        let want = cached_logits(&f32_model, &ids, prefill);
        let got = cached_logits(&exact, &ids, prefill);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(max_diff(g, w), 0.0, "f32 activations, {n} tokens, step {i}");
        }
        let got = cached_logits(&int8, &ids, prefill);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_diff(g, w);
            assert!(d > 0.0, "8-bit activations ran ({n} tokens, step {i})");
            assert!(
                d <= 0.05 * scale,
                "8-bit activations, {n} tokens, step {i}: {d} against logits up to {scale}"
            );
        }
    }
}
