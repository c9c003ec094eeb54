//! Our Llama-family implementation against Hugging Face `transformers`, on the tiny random
//! models of `tests/fixtures/hf_tiny/` (written once by `bench/hf_tiny_reference.py`): Llama 3.x
//! with llama3 RoPE scaling and grouped-query attention, Qwen2.5 (q/k/v biases, tied
//! embeddings), Mistral, and a SmolLM2-style Llama. The logits of 48 positions and the hidden
//! state after the first decoder layer must match `transformers`' float32 results.

use candle_core::{Device, Tensor};
use stainedglass_models::llm::{KvCache, Llama, Stop};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf_tiny")
        .join(name)
}

struct Reference {
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    hidden: Vec<Vec<f32>>,
}

fn reference(dir: &Path) -> Reference {
    let text = std::fs::read_to_string(dir.join("reference.json")).expect("reference.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let rows = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .expect(k)
            .iter()
            .map(|r| {
                r.as_array()
                    .expect("row")
                    .iter()
                    .map(|x| x.as_f64().expect("number") as f32)
                    .collect()
            })
            .collect()
    };
    Reference {
        ids: v["input_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|x| x.as_u64().expect("id") as u32)
            .collect(),
        logits: rows("logits"),
        hidden: rows("hidden_after_layer_1"),
    }
}

/// Largest absolute difference, and the largest reference magnitude (for the message).
fn max_diff(ours: &Tensor, want: &[Vec<f32>]) -> (f32, f32) {
    let got = ours
        .squeeze(0)
        .expect("squeeze")
        .to_vec2::<f32>()
        .expect("values");
    assert_eq!(got.len(), want.len(), "positions");
    let mut d = 0f32;
    let mut m = 0f32;
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "width");
        for (a, b) in g.iter().zip(w) {
            d = d.max((a - b).abs());
            m = m.max(b.abs());
        }
    }
    (d, m)
}

fn check(name: &str, architecture: &str) -> Llama {
    let dir = fixture(name);
    let model = Llama::load(&dir, &Device::Cpu).expect("load");
    assert_eq!(model.config().architecture, architecture);
    let r = reference(&dir);
    let ids = Tensor::new(r.ids.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let (d, m) = max_diff(&model.forward_ids(&ids, None).expect("forward"), &r.logits);
    assert!(
        d < 2e-4 * m.max(1.0),
        "{name}: logits differ by {d} (largest {m})"
    );
    let x = model.embed(&ids).expect("embed");
    let h = model
        .forward_embeds(&x, None, Stop::AtLayer(1))
        .expect("layer 1");
    let (d, m) = max_diff(&h, &r.hidden);
    assert!(
        d < 2e-4 * m.max(1.0),
        "{name}: layer-1 states differ by {d} (largest {m})"
    );
    // Decoding one position at a time through the KV cache gives the same last logits.
    let mut cache = KvCache::new(model.config().num_layers, 1);
    let mut last = None;
    for i in 0..r.ids.len() {
        let e = x.narrow(1, i, 1).expect("narrow");
        last = Some(model.forward_cached(&e, None, &mut cache).expect("cached"));
    }
    let last = last.expect("positions").unsqueeze(0).expect("unsqueeze");
    let want = &r.logits[r.logits.len() - 1..];
    let (d, m) = max_diff(&last, want);
    assert!(
        d < 2e-4 * m.max(1.0),
        "{name}: cached decode differs by {d} (largest {m})"
    );
    model
}

#[test]
fn llama3_with_rope_scaling_and_gqa_matches_transformers() {
    let m = check("llama3", "llama");
    let s = m
        .config()
        .rope_scaling
        .as_ref()
        .expect("llama3 rope scaling read");
    assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 128));
    assert_eq!((m.config().num_heads, m.config().num_kv_heads), (4, 2));
}

#[test]
fn qwen2_with_biases_and_tied_embeddings_matches_transformers() {
    let m = check("qwen2", "qwen2");
    assert!(m.config().attention_bias && m.config().tie_word_embeddings);
}

#[test]
fn mistral_matches_transformers() {
    let m = check("mistral", "mistral");
    // Attention is full: equal to Mistral's sliding window only up to the window, so the
    // model's positions stop there (fixture: window 4096 of 256 positions → 256; a window of 32
    // caps at 32).
    assert_eq!(m.config().max_position_embeddings, 256);
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(fixture("mistral").join("config.json")).expect("config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["sliding_window"] = serde_json::json!(32);
    std::fs::write(dir.path().join("config.json"), v.to_string()).expect("write");
    std::fs::copy(
        fixture("mistral").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .expect("copy");
    let m = Llama::load(dir.path(), &Device::Cpu).expect("load");
    assert_eq!(m.config().max_position_embeddings, 32);
}

#[test]
fn smollm2_style_llama_matches_transformers() {
    let m = check("smollm2", "llama");
    assert!(m.config().tie_word_embeddings && m.config().rope_scaling.is_none());
}

/// A RoPE scaling we do not implement is refused by name, never ignored.
#[test]
fn other_rope_scalings_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let text = std::fs::read_to_string(fixture("llama3").join("config.json")).expect("config");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(dir.path().join("config.json"), v.to_string()).expect("write");
    std::fs::copy(
        fixture("llama3").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .expect("copy");
    let e = Llama::load(dir.path(), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("yarn"), "{e}");
}
