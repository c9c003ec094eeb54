//! The client artefact on the bundled SmolLM2: save → load → apply round trips, and every kind
//! of broken artefact is refused with a clear error.

use candle_core::{DType, Device, Tensor};
use stainedglass_core::NoiseRng;
use stainedglass_models::llm::Llama;
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use stainedglass_text::artefact::{ArtefactOptions, EmbeddingDtype};
use stainedglass_text::{Message, PromptInput, Role, StainedGlassTransformForText, TextTokenizer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

fn gguf() -> PathBuf {
    // The products on oneMKL from the assets folder, as the `sgt` binary runs them.
    let _ = stainedglass_models::llm::configure_blas(stainedglass_models::llm::BlasOptions {
        assets: Some(stainedglass_test_support::assets()),
        ..Default::default()
    });
    stainedglass_test_support::smollm2_gguf()
}

fn model() -> &'static Llama {
    static M: OnceLock<Llama> = OnceLock::new();
    M.get_or_init(|| Llama::load(&gguf(), &Device::Cpu).expect("load"))
}

fn tok() -> Arc<TextTokenizer> {
    static T: OnceLock<Arc<TextTokenizer>> = OnceLock::new();
    T.get_or_init(|| Arc::new(TextTokenizer::from_model_path(&gguf()).expect("tokenizer")))
        .clone()
}

fn transform(dtype: EmbeddingDtype) -> StainedGlassTransformForText {
    let mut c = TransformerCloakConfig::new(model().config().clone());
    // Visible noise: σ starts near the middle of its range.
    c.sgt.rhos_init = 0.0;
    c.sgt.percent_to_mask = Some(0.25);
    let cloak = TransformerCloak::from_base(c, model()).expect("cloak");
    StainedGlassTransformForText::new(
        cloak,
        model().embedding_table(),
        tok(),
        ArtefactOptions {
            base_model_name: "SmolLM2-135M-Instruct".into(),
            embedding_dtype: dtype,
            transform_all_tokens: false,
        },
    )
    .expect("artefact")
}

fn prompt() -> PromptInput {
    PromptInput::Chat(vec![Message::new(
        Role::User,
        "What is the capital of France?",
    )])
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1()).expect("vec")
}

fn load(dir: &Path) -> stainedglass_text::Result<StainedGlassTransformForText> {
    StainedGlassTransformForText::from_pretrained(dir, &Device::Cpu)
}

#[test]
fn round_trip_reproduces_seeded_outputs_in_f32_and_f16() {
    for dtype in [EmbeddingDtype::F32, EmbeddingDtype::F16] {
        let sgt = transform(dtype);
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("artefact");
        sgt.save_pretrained(&path).expect("save");
        // Saving again over an existing artefact replaces it.
        sgt.save_pretrained(&path).expect("save again");
        let back = load(&path).expect("load");
        assert_eq!(back.config(), &{
            let mut c = sgt.config().clone();
            c.files = back.config().files.clone();
            c
        });
        let a = sgt
            .apply(&prompt(), &mut NoiseRng::seeded(7))
            .expect("apply");
        let b = back
            .apply(&prompt(), &mut NoiseRng::seeded(7))
            .expect("apply");
        assert_eq!(a.input_ids, b.input_ids);
        assert_eq!(flat(&a.embeddings), flat(&b.embeddings), "{dtype:?}");
        let c = back
            .apply(&prompt(), &mut NoiseRng::from_entropy())
            .expect("apply");
        let d = back
            .apply(&prompt(), &mut NoiseRng::from_entropy())
            .expect("apply");
        assert_ne!(flat(&c.embeddings), flat(&d.embeddings));

        // Shape, masks and untransformed tokens.
        let (t, h) = a.embeddings.dims2().expect("2d");
        assert_eq!((t, h), (a.input_ids.len(), 576));
        assert!(a.noise_mask.contains(&0) && a.noise_mask.contains(&1));
        let clean = back
            .embeddings()
            .expect("table")
            .index_select(
                &Tensor::new(a.input_ids.as_slice(), &Device::Cpu).expect("ids"),
                0,
            )
            .expect("rows");
        let (x, y) = (flat(&clean), flat(&a.embeddings));
        for (i, &m) in a.noise_mask.iter().enumerate() {
            let same = x[i * h..(i + 1) * h] == y[i * h..(i + 1) * h];
            assert_eq!(same, m == 0, "token {i} (noise mask {m})");
        }
        let size = std::fs::metadata(path.join("model.safetensors"))
            .expect("meta")
            .len();
        let table = 49152 * 576;
        match dtype {
            EmbeddingDtype::F16 => assert!(size < (table * 4) as u64, "{size}"),
            EmbeddingDtype::F32 => assert!(size > (table * 4) as u64, "{size}"),
        }
    }
}

fn saved() -> (tempfile::TempDir, PathBuf) {
    static SGT: OnceLock<StainedGlassTransformForText> = OnceLock::new();
    let sgt = SGT.get_or_init(|| transform(EmbeddingDtype::F16));
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("a");
    sgt.save_pretrained(&path).expect("save");
    (dir, path)
}

fn expect_err(dir: &Path, needle: &str) {
    let e = load(dir)
        .expect_err("a broken artefact must be refused")
        .to_string();
    assert!(e.contains(needle), "error `{e}` should mention `{needle}`");
}

#[test]
fn corrupt_truncated_and_mismatched_artefacts_are_refused() {
    // One flipped byte in the weights.
    let (_d, p) = saved();
    let w = p.join("model.safetensors");
    let mut bytes = std::fs::read(&w).expect("read");
    let n = bytes.len();
    bytes[n / 2] ^= 0x40;
    std::fs::write(&w, &bytes).expect("write");
    expect_err(&p, "sha256");

    // Truncated weights.
    let (_d, p) = saved();
    let w = p.join("model.safetensors");
    let bytes = std::fs::read(&w).expect("read");
    std::fs::write(&w, &bytes[..bytes.len() / 3]).expect("write");
    expect_err(&p, "corrupt, truncated");

    // A missing tokenizer.
    let (_d, p) = saved();
    std::fs::remove_file(p.join("tokenizer.json")).expect("rm");
    expect_err(&p, "tokenizer.json");

    // Edited config: version, format, unknown field, NaN weights with a matching hash.
    let edit = |f: &dyn Fn(&mut serde_json::Value), needle: &str| {
        let (_d, p) = saved();
        let c = p.join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&c).expect("read")).expect("json");
        f(&mut v);
        std::fs::write(&c, serde_json::to_string(&v).expect("ser")).expect("write");
        expect_err(&p, needle);
    };
    edit(&|v| v["format_version"] = 99.into(), "format_version");
    edit(&|v| v["format"] = "something-else".into(), "format");
    edit(&|v| v["surprise"] = 1.into(), "unknown field");
    edit(
        &|v| v["base_model"]["hidden_size"] = 512.into(),
        "disagrees",
    );
    edit(
        &|v| v["noise_layer"]["config"]["estimator_layers"] = 2.into(),
        "missing tensor",
    );

    // Non-finite weights (in the cloak, then in the table read in place) re-hashed so that
    // only the finiteness check can catch them.
    for in_table in [false, true] {
        let (_d, p) = saved();
        let sgt = load(&p).expect("load");
        let mut tensors = sgt.cloak().named_tensors();
        let table = sgt.embeddings().expect("table");
        let table = if in_table {
            let mut v = table
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("v");
            let n = v.len();
            v[n - 1] = f32::INFINITY;
            Tensor::from_vec(v, table.dims(), &Device::Cpu).expect("table")
        } else {
            tensors[0].1 = tensors[0]
                .1
                .ones_like()
                .expect("ones")
                .affine(f64::NAN, 0.0)
                .expect("nan");
            table.clone()
        };
        tensors.push((
            "embed_tokens.weight".into(),
            table.to_dtype(DType::F16).expect("f16"),
        ));
        rehash_weights(&p, &tensors);
        expect_err(&p, "non-finite");
    }
}

/// Writes `tensors` as the artefact's weights and lists their new hash in `config.json`.
fn rehash_weights(p: &Path, tensors: &[(String, Tensor)]) {
    let bytes = stainedglass_core::io::safetensors_bytes(tensors).expect("bytes");
    std::fs::write(p.join("model.safetensors"), &bytes).expect("write");
    rehash_weights_bytes(p, &bytes);
}

/// Lists `bytes` (already written as the weights) as their correct hash in `config.json`.
fn rehash_weights_bytes(p: &Path, bytes: &[u8]) {
    let c = p.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c).expect("read")).expect("json");
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    v["files"]["model.safetensors"] = hex.into();
    std::fs::write(&c, serde_json::to_string(&v).expect("ser")).expect("write");
}

#[test]
fn f32_artefacts_check_the_embedding_hash() {
    let sgt = transform(EmbeddingDtype::F32);
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("a");
    sgt.save_pretrained(&p).expect("save");
    let c = p.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c).expect("read")).expect("json");
    v["base_model"]["embedding_sha256"] = "00".repeat(32).into();
    std::fs::write(&c, serde_json::to_string(&v).expect("ser")).expect("write");
    expect_err(&p, "hashes to");
    assert_eq!(
        sgt.config().base_model.embedding_sha256,
        stainedglass_text::artefact::embedding_sha256(model().embedding_table()).expect("hash")
    );
}

#[test]
fn a_batch_pads_on_the_left_and_a_batch_of_one_is_the_single_prompt() {
    let t = transform(EmbeddingDtype::F32);
    let one = t.apply(&prompt(), &mut NoiseRng::seeded(5)).expect("one");
    let b1 = t
        .apply_batch(&[prompt()], &mut NoiseRng::seeded(5))
        .expect("batch of one");
    assert_eq!(b1.input_ids, vec![one.input_ids.clone()]);
    assert_eq!(
        flat(&b1.embeddings),
        flat(&one.embeddings),
        "same noise stream"
    );

    let long = PromptInput::Chat(vec![Message::new(
        Role::User,
        "Name three rivers that flow through Europe, longest first.",
    )]);
    let b = t
        .apply_batch(&[prompt(), long], &mut NoiseRng::seeded(6))
        .expect("batch");
    let (rows, seq, hidden) = b.embeddings.dims3().expect("3d");
    assert_eq!((rows, hidden), (2, t.hidden_size()));
    let pad = seq - one.input_ids.len();
    assert!(pad > 0, "the short prompt is padded");
    assert_eq!(b.attention_mask[0][..pad], vec![0u8; pad][..]);
    assert_eq!(b.noise_mask[0][..pad], vec![0u8; pad][..]);
    assert_eq!(b.input_ids[0][pad..], one.input_ids[..]);
    assert!(b.attention_mask[1].iter().all(|&m| m == 1));
    assert!(t.apply_batch(&[], &mut NoiseRng::seeded(0)).is_err());
}

/// Damaged weight files whose hash is then listed as correct, so that the parser and the
/// checks, not the hash, must catch them: a changed safetensors header (its length, a byte of
/// its JSON: offsets, shapes, dtypes), a truncation, a grown tail. Loading must give an
/// artefact or an error, never a panic; a loaded one must still apply.
#[test]
fn rehashed_damaged_weight_files_load_or_fail_cleanly() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let (_d, p) = saved();
    let w = p.join("model.safetensors");
    let good = std::fs::read(&w).expect("read");
    let cfg = std::fs::read(p.join("config.json")).expect("config");
    let header = 8 + u64::from_le_bytes(good[..8].try_into().expect("8 bytes")) as usize;
    let damage = prop_oneof![
        // A byte of the header (its length or its JSON) set to anything.
        (0..header, any::<u8>()).prop_map(|(i, b)| (0usize, i, b)),
        // Cut anywhere.
        (0..good.len()).prop_map(|i| (1usize, i, 0u8)),
        // Bytes appended.
        (1..4096usize, any::<u8>()).prop_map(|(n, b)| (2usize, n, b)),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&damage, |(kind, i, b)| {
            let mut bytes = good.clone();
            match kind {
                0 => bytes[i] = b,
                1 => bytes.truncate(i),
                _ => bytes.extend(std::iter::repeat_n(b, i)),
            }
            std::fs::write(&w, &bytes).expect("write");
            std::fs::write(p.join("config.json"), &cfg).expect("config");
            rehash_weights_bytes(&p, &bytes);
            if let Ok(sgt) = load(&p) {
                let mut rng = NoiseRng::seeded(3);
                sgt.apply(&prompt(), &mut rng)
                    .expect("a loaded artefact applies");
            }
            Ok(())
        })
        .expect("damaged weights");
}
