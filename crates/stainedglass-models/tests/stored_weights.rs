//! The bundled SmolLM2 GGUF loaded with its matrices as stored (Q4_1, a Q8_0 embedding table):
//! with f32 activations it is the f32 model bit for bit (prefill and cached decoding), with
//! 8-bit activations it predicts the same next tokens on real text, it holds under a quarter of
//! the f32 model's bytes, and it refuses what it does not run (gradients, saving). Written as a
//! bf16 Hugging Face folder, it is kept at two bytes a weight with the numbers of that folder's
//! f32 model.

use candle_core::{Device, Tensor, Var};
use stainedglass_models::llm::{Activations, KvCache, Llama, Stop};
use std::path::PathBuf;
use std::sync::OnceLock;

fn gguf() -> PathBuf {
    let _ = stainedglass_models::llm::configure_blas(stainedglass_models::llm::BlasOptions {
        assets: Some(stainedglass_test_support::assets()),
        ..Default::default()
    });
    stainedglass_test_support::smollm2_gguf()
}

fn f32_model() -> &'static Llama {
    static M: OnceLock<Llama> = OnceLock::new();
    M.get_or_init(|| Llama::load(&gguf(), &Device::Cpu).expect("load SmolLM2"))
}

fn stored(a: Activations) -> Llama {
    Llama::load_stored_with(&gguf(), &Device::Cpu, a).expect("load SmolLM2 as stored")
}

/// "Hello world! The year 2024 has 366 days." in SmolLM2 ids.
const IDS: [u32; 17] = [
    19556, 905, 17, 378, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 38, 2009, 30,
];

/// Last-position logits of a 12-token prefill, then of each of the remaining tokens decoded
/// one at a time through the KV cache.
fn cached_logits(m: &Llama) -> Vec<Vec<f32>> {
    let ids = Tensor::new(&IDS[..], &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("batch");
    let x = m.embed(&ids).expect("embed");
    let mut cache = KvCache::new(m.config().num_layers, 1);
    let mut out = Vec::new();
    for (start, len) in [(0, 12), (12, 1), (13, 1), (14, 1), (15, 1), (16, 1)] {
        let l = m
            .forward_cached(&x.narrow(1, start, len).expect("part"), None, &mut cache)
            .and_then(|l| Ok(l.squeeze(0)?.to_vec1::<f32>()?))
            .expect("cached pass");
        out.push(l);
    }
    out
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a })
        .0
}

#[test]
fn f32_activations_give_the_f32_model_bit_for_bit() {
    let q = stored(Activations::F32);
    assert!(q.is_stored());
    assert_eq!(q.storage_summary(), "Q4_1 ×120, Q8_0 ×1");
    let (a, b) = (cached_logits(&q), cached_logits(f32_model()));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(d == 0.0, "position {i}: logits differ by {d}");
    }
    // The embedding table and its rows are the f32 model's.
    let mut row = vec![0f32; 576];
    q.embedding_row(IDS[3] as usize, &mut row).expect("row");
    let want = f32_model()
        .embedding_table()
        .get(IDS[3] as usize)
        .and_then(|r| r.to_vec1::<f32>())
        .expect("f32 row");
    assert_eq!(row, want);
}

#[test]
fn int8_activations_predict_the_same_tokens_in_a_quarter_of_the_memory() {
    let q = stored(Activations::Int8);
    let (a, b) = (cached_logits(&q), cached_logits(f32_model()));
    let same = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    assert!(same >= 5, "next tokens agree at {same} of 6 positions");
    for (x, y) in a.iter().zip(&b) {
        let d = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(d < 1.5, "logits differ by {d}");
    }
    let (fb, qb) = (f32_model().weight_bytes(), q.weight_bytes());
    assert!(qb * 4 < fb, "stored {qb} bytes, f32 {fb}");
    // Activations at a layer run too (what a probe reads), close to the f32 model's.
    let ids = Tensor::new(&IDS[..], &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("b");
    let x = f32_model().embed(&ids).expect("embed");
    let hq = q
        .forward_embeds(&x, None, Stop::AtLayer(6))
        .expect("stored layer 6");
    let hf = f32_model()
        .forward_embeds(&x, None, Stop::AtLayer(6))
        .expect("f32 layer 6");
    let rel = (&hq - &hf)
        .and_then(|d| d.sqr()?.sum_all()?.sqrt())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
        / hf.sqr()
            .and_then(|d| d.sum_all()?.sqrt()?.to_scalar::<f32>())
            .expect("norm");
    assert!(rel < 0.05, "layer-6 states differ by {rel} (relative)");
}

#[test]
fn what_stored_weights_do_not_run_is_refused_by_name() {
    let q = stored(Activations::Int8);
    let ids = Tensor::new(&IDS[..4], &Device::Cpu)
        .expect("ids")
        .unsqueeze(0)
        .expect("b");
    let x = Var::from_tensor(&q.embed(&ids).expect("embed")).expect("var");
    let e = q
        .forward_embeds(x.as_tensor(), None, Stop::AtLayer(2))
        .expect_err("gradients through quantized weights")
        .to_string();
    assert!(
        e.contains("f32 weights") && e.contains("Llama::load"),
        "{e}"
    );
    let e = q.hf_tensors().expect_err("saving").to_string();
    assert!(e.contains("f32 weights"), "{e}");
    let e = q
        .forward_with_states(&x.as_tensor().detach(), None)
        .expect_err("per-layer states")
        .to_string();
    assert!(e.contains("f32 weights"), "{e}");
    let mut row = vec![0f32; 576];
    assert!(q.embedding_row(49_152, &mut row).is_err());
    // A truncated file is refused with the tensor's name, not a panic.
    let dir = tempfile::tempdir().expect("tmp");
    let cut = dir.path().join("cut.gguf");
    let bytes = std::fs::read(gguf()).expect("read");
    std::fs::write(&cut, &bytes[..bytes.len() - 4096]).expect("write");
    let e = Llama::load_stored(&cut, &Device::Cpu)
        .err()
        .expect("truncated")
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}

/// The bundled model written as a bf16 Hugging Face folder and loaded as stored: two bytes a
/// weight, and the logits of the f32 model loaded from that folder bit for bit.
#[test]
fn bf16_folder_of_the_bundled_model_is_its_f32_model_at_half_the_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    stainedglass_models::llm::hf::save_hf_folder(
        f32_model(),
        dir.path(),
        1,
        candle_core::DType::BF16,
    )
    .expect("save bf16");
    let wide = Llama::load(dir.path(), &Device::Cpu).expect("f32 load");
    let q = Llama::load_stored(dir.path(), &Device::Cpu).expect("stored load");
    assert_eq!(q.storage_summary(), "BF16 ×121");
    assert_eq!(2 * q.weight_bytes(), wide.weight_bytes());
    for (i, (x, y)) in cached_logits(&q)
        .iter()
        .zip(cached_logits(&wide))
        .enumerate()
    {
        let d = x
            .iter()
            .zip(&y)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(d == 0.0, "position {i}: logits differ by {d}");
    }
}
