//! GGUF files of Llama 3.1-style models carry their RoPE scaling as per-frequency factors
//! (`rope_freqs.weight`, written by llama.cpp's converter from the `llama3` `rope_scaling`).
//! Read with them, the rotary frequencies equal the ones Hugging Face computes from the
//! original `rope_scaling`; factors of the wrong length are refused.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use stainedglass_models::llm::config::RopeScaling;
use stainedglass_models::llm::{GgufFile, LlamaConfig};
use std::path::Path;

const HEAD_DIM: usize = 16;
const THETA: f64 = 500_000.0;

fn scaling() -> RopeScaling {
    RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        // Small enough that the tiny head's wavelengths fall in all three bands.
        original_max_position_embeddings: 64,
    }
}

/// The factors llama.cpp's `convert_hf_to_gguf.py` writes for a `llama3` scaling.
fn llamacpp_factors(s: &RopeScaling) -> Vec<f32> {
    let old = s.original_max_position_embeddings as f64;
    let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
    (0..HEAD_DIM / 2)
        .map(|i| {
            let freq = 1.0 / THETA.powf(2.0 * i as f64 / HEAD_DIM as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                s.factor
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                1.0 / ((1.0 - smooth) / s.factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// A llama GGUF holding the metadata, an embedding table and `factors` as `rope_freqs.weight`.
fn write_gguf(path: &Path, factors: &[f32]) {
    let u = gguf_file::Value::U32;
    let md = [
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        ("llama.embedding_length", u(64)),
        ("llama.attention.head_count", u(4)),
        ("llama.attention.head_count_kv", u(2)),
        ("llama.rope.dimension_count", u(HEAD_DIM as u32)),
        ("llama.feed_forward_length", u(96)),
        ("llama.block_count", u(1)),
        ("llama.context_length", u(512)),
        ("llama.vocab_size", u(8)),
        ("llama.rope.freq_base", gguf_file::Value::F32(THETA as f32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(1e-5),
        ),
    ];
    let md: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let q = |t: Tensor| QTensor::quantize(&t, GgmlDType::F32).expect("tensor");
    let embd = q(Tensor::zeros((8, 64), candle_core::DType::F32, &Device::Cpu).expect("zeros"));
    let freqs = q(Tensor::new(factors, &Device::Cpu).expect("factors"));
    let mut f = std::fs::File::create(path).expect("create");
    gguf_file::write(
        &mut f,
        &md,
        &[("token_embd.weight", &embd), ("rope_freqs.weight", &freqs)],
    )
    .expect("write gguf");
}

fn read(path: &Path) -> stainedglass_models::Result<LlamaConfig> {
    let file = GgufFile::open(path)?;
    LlamaConfig::read_gguf(&file.content, &file.path)
}

#[test]
fn rope_factors_from_a_gguf_give_the_llama3_frequencies() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("llama31.gguf");
    let s = scaling();
    write_gguf(&path, &llamacpp_factors(&s));
    let cfg = read(&path).expect("config");
    assert!(cfg.rope_scaling.is_none());
    let got = cfg.rope_inv_freq();
    let want = LlamaConfig {
        rope_freq_factors: None,
        rope_scaling: Some(s.clone()),
        ..cfg.clone()
    }
    .rope_inv_freq();
    let plain = LlamaConfig {
        rope_freq_factors: None,
        ..cfg.clone()
    }
    .rope_inv_freq();
    assert_eq!(got.len(), HEAD_DIM / 2);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g / w - 1.0).abs() < 1e-6, "frequency {i}: {g} vs {w}");
    }
    // All three bands occur: kept, interpolated and stretched by the factor.
    let ratios: Vec<f64> = plain.iter().zip(&got).map(|(p, g)| p / g).collect();
    assert!((ratios[0] - 1.0).abs() < 1e-6, "{ratios:?}");
    assert!(
        (ratios[HEAD_DIM / 2 - 1] - s.factor).abs() < 1e-4,
        "{ratios:?}"
    );
    assert!(
        ratios
            .iter()
            .any(|r| *r > 1.0 + 1e-3 && *r < s.factor - 1e-3),
        "{ratios:?}"
    );
}

#[test]
fn rope_factors_of_the_wrong_length_or_sign_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    for (name, factors) in [
        ("short.gguf", vec![1.0f32; HEAD_DIM / 2 - 1]),
        ("zero.gguf", vec![0.0f32; HEAD_DIM / 2]),
    ] {
        let path = dir.path().join(name);
        write_gguf(&path, &factors);
        let e = read(&path).expect_err("refused").to_string();
        assert!(e.contains("rope_freqs"), "{name}: {e}");
    }
}
