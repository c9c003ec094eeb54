//! Hugging Face folders of bf16 or f16 safetensors kept as stored (`Llama::load_stored`): two
//! bytes a weight, and the logits of the f32 model loaded from the same folder bit for bit
//! (prefill and cached decoding), for the tiny Llama 3 (grouped-query attention, RoPE scaling)
//! and Qwen2.5 (q/k/v biases, tied embeddings) fixtures; hostile folders are refused by name.

use candle_core::{DType, Device, Tensor};
use stainedglass_models::llm::hf::save_hf_folder;
use stainedglass_models::llm::{Activations, KvCache, Llama};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf_tiny")
        .join(name)
}

/// The fixture `name` written again with its tensors as `dtype`.
fn converted(name: &str, dtype: DType) -> tempfile::TempDir {
    let m = Llama::load(&fixture(name), &Device::Cpu).expect("load fixture");
    let dir = tempfile::tempdir().expect("tmp");
    save_hf_folder(&m, dir.path(), 2, dtype).expect("save");
    dir
}

/// Logits of a 20-token prefill, then of 6 tokens decoded one at a time.
fn logits(m: &Llama) -> Vec<Vec<f32>> {
    let v = m.config().vocab_size as u32;
    let ids: Vec<u32> = (0..26).map(|i| (i * 7 + 3) % v).collect();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let x = m.embed(&ids).expect("embed");
    let mut cache = KvCache::new(m.config().num_layers, 1);
    let mut out = Vec::new();
    for (start, len) in [
        (0, 20),
        (20, 1),
        (21, 1),
        (22, 1),
        (23, 1),
        (24, 1),
        (25, 1),
    ] {
        let l = m
            .forward_cached(&x.narrow(1, start, len).expect("part"), None, &mut cache)
            .and_then(|l| Ok(l.flatten_all()?.to_vec1::<f32>()?))
            .expect("cached pass");
        out.push(l);
    }
    out
}

fn check(name: &str, dtype: DType, storage: &str) {
    let dir = converted(name, dtype);
    let f32_model = Llama::load(dir.path(), &Device::Cpu).expect("f32 load");
    assert!(!f32_model.is_stored());
    for act in [Activations::F32, Activations::Int8] {
        let q = Llama::load_stored_with(dir.path(), &Device::Cpu, act).expect("stored load");
        assert!(q.is_stored(), "{name}");
        assert!(
            q.storage_summary().starts_with(storage),
            "{name}: {}",
            q.storage_summary()
        );
        assert_eq!(2 * q.weight_bytes(), f32_model.weight_bytes(), "{name}");
        for (i, (a, b)) in logits(&q).iter().zip(logits(&f32_model)).enumerate() {
            assert_eq!(a.len(), b.len());
            let d = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(d == 0.0, "{name} {act:?}, pass {i}: logits differ by {d}");
        }
    }
}

#[test]
fn bf16_llama3_folder_is_the_f32_model_of_its_weights_at_half_the_bytes() {
    check("llama3", DType::BF16, "BF16 ×");
}

#[test]
fn f16_qwen2_folder_is_the_f32_model_of_its_weights_at_half_the_bytes() {
    check("qwen2", DType::F16, "F16 ×");
}

/// Logits of a `prefill`-token prefill, then of 3 tokens decoded one at a time.
fn logits_after(m: &Llama, prefill: usize) -> Vec<Vec<f32>> {
    let v = m.config().vocab_size as u32;
    let ids: Vec<u32> = (0..prefill as u32 + 3).map(|i| (i * 7 + 3) % v).collect();
    let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids");
    let x = m.embed(&ids).expect("embed");
    let mut cache = KvCache::new(m.config().num_layers, 1);
    let steps = [
        (0, prefill),
        (prefill, 1),
        (prefill + 1, 1),
        (prefill + 2, 1),
    ];
    let pass = |(start, len): (usize, usize), cache: &mut KvCache| {
        m.forward_cached(&x.narrow(1, start, len).expect("part"), None, cache)
            .and_then(|l| Ok(l.flatten_all()?.to_vec1::<f32>()?))
            .expect("cached pass")
    };
    steps.into_iter().map(|s| pass(s, &mut cache)).collect()
}

/// `--activations bf16`: a prefill of at least `BF16_MIN_ROWS` tokens runs the bf16 kernel
/// (logits within bf16's precision of the f32 model's, and not equal to them: the kernel ran);
/// a shorter prefill and its decoding stay the f32 model's bit for bit.
#[test]
fn bf16_activations_prefill_in_bf16_and_decode_exactly() {
    let min = stainedglass_models::llm::BF16_MIN_ROWS;
    let dir = converted("llama3", DType::BF16);
    let f32_model = Llama::load(dir.path(), &Device::Cpu).expect("f32 load");
    let q = Llama::load_stored_with(dir.path(), &Device::Cpu, Activations::Bf16).expect("load");
    let max_diff =
        |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    for (a, b) in logits_after(&q, min - 1)
        .iter()
        .zip(logits_after(&f32_model, min - 1))
    {
        assert_eq!(
            max_diff(a, &b),
            0.0,
            "below {min} rows the products stay exact"
        );
    }
    for (i, (a, b)) in logits_after(&q, min + 8)
        .iter()
        .zip(logits_after(&f32_model, min + 8))
        .enumerate()
    {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = max_diff(a, &b);
        assert!(
            d <= 0.05 * scale,
            "pass {i}: logits differ by {d} (scale {scale})"
        );
        if i == 0 {
            assert!(d > 0.0, "a {}-token prefill must run in bf16", min + 8);
        }
    }
}

/// An f32 folder loads as the f32 model (nothing smaller to keep).
#[test]
fn f32_folder_loads_as_the_f32_model() {
    let q = Llama::load_stored(&fixture("smollm2"), &Device::Cpu).expect("load");
    assert!(!q.is_stored());
}

/// A weight that is NaN, a truncated shard and an integer matrix are refused with what and
/// where, never a panic.
#[test]
fn hostile_half_folders_are_refused_by_name() {
    let dir = converted("llama3", DType::BF16);
    let shard = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .expect("a shard");
    let good = std::fs::read(&shard).expect("read");

    // NaN in a matrix: every value of the last 64 bytes (a matrix's tail) set to NaN.
    let mut bad = good.clone();
    let n = bad.len();
    for pair in bad[n - 64..].chunks_exact_mut(2) {
        pair.copy_from_slice(&half::bf16::NAN.to_le_bytes());
    }
    std::fs::write(&shard, &bad).expect("write");
    let e = Llama::load_stored(dir.path(), &Device::Cpu)
        .err()
        .expect("NaN refused")
        .to_string();
    assert!(e.contains("NaN"), "{e}");

    std::fs::write(&shard, &good[..n - 1000]).expect("truncate");
    let e = Llama::load_stored(dir.path(), &Device::Cpu)
        .err()
        .expect("truncated refused")
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    std::fs::write(&shard, &good).expect("restore");
    assert!(Llama::load_stored(dir.path(), &Device::Cpu).is_ok());
}

#[test]
fn integer_matrices_are_refused_by_name() {
    let m = Llama::load(&fixture("llama3"), &Device::Cpu).expect("load");
    let dir = tempfile::tempdir().expect("tmp");
    save_hf_folder(&m, dir.path(), 1, DType::BF16).expect("save");
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).expect("read");
    let name = "model.layers.0.mlp.up_proj.weight";
    let t = tensors[name].to_dtype(DType::I64).expect("as integers");
    tensors.insert(name.to_string(), t);
    candle_core::safetensors::save(&tensors, &path).expect("write");
    let e = Llama::load_stored(dir.path(), &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains(name) && e.contains("bf16"), "{e}");
}
