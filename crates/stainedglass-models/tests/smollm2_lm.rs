//! The Llama implementation on the bundled SmolLM2 GGUF: loading, equivalences between entry
//! points, padding, the KV cache, HF-folder round trip, gradients to the input embeddings, and
//! errors on bad files.

use candle_core::{DType, Device, Tensor, Var};
use stainedglass_models::llm::{
    FinishReason, GgufFile, Llama, Prompt, RowRequest, SamplingParams, Stop,
};
use std::path::PathBuf;
use std::sync::OnceLock;

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
    M.get_or_init(|| Llama::load(&gguf(), &Device::Cpu).expect("load SmolLM2"))
}

/// "Hello world! The year 2024 has 366 days." in SmolLM2 ids.
const IDS: [u32; 17] = [
    19556, 905, 17, 378, 713, 216, 34, 32, 34, 36, 553, 216, 35, 38, 38, 2009, 30,
];

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}

fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("max")
}

fn ids(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu)
        .and_then(|t| t.unsqueeze(0))
        .expect("ids")
}

#[test]
fn config_is_read_from_the_gguf() {
    let c = model().config();
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim
        ),
        (30, 576, 9, 3, 64)
    );
    assert_eq!((c.intermediate_size, c.vocab_size), (1536, 49152));
    assert!(c.tie_word_embeddings && !c.attention_bias);
    assert_eq!(c.rope_theta, 100_000.0);
}

#[test]
fn embeds_path_equals_ids_path_and_layer_k_matches_full_pass() {
    let m = model();
    let x = ids(&IDS);
    let from_ids = m.forward_ids(&x, None).expect("ids");
    let e = m.embed(&x).expect("embed");
    let from_embeds = m.forward_embeds(&e, None, Stop::Logits).expect("embeds");
    assert_eq!(max_diff(&from_ids, &from_embeds), 0.0);
    // Stopping at layer k gives the layer-k state of the full pass. `forward_with_states` runs
    // layer by layer (one op per layer part) while `forward_embeds` runs the layers as one
    // fused op: the two agree to float rounding, relative 1e-5 of the largest activation.
    let (full, states) = m.forward_with_states(&e, None).expect("states");
    assert_eq!(states.len(), 31);
    let rel = |a: &Tensor, b: &Tensor| max_diff(a, b) / max_abs(b);
    assert!(rel(&full, &from_ids) < 1e-5, "{}", rel(&full, &from_ids));
    for k in [1, 6, 30] {
        let at = m
            .forward_embeds(&e, None, Stop::AtLayer(k))
            .expect("layer k");
        assert_eq!(at.dims(), [1, IDS.len(), 576]);
        let d = rel(&at, &states[k]);
        assert!(d < 1e-5, "layer {k}: relative difference {d}");
    }
    assert_eq!(
        max_diff(
            &m.forward_embeds(&e, None, Stop::AtLayer(0)).expect("0"),
            &e
        ),
        0.0
    );
    assert!(m.forward_embeds(&e, None, Stop::AtLayer(31)).is_err());
    // A sensible LM: after "Hello world! The year 2024 has 366" comes " days".
    let last = from_ids
        .narrow(1, 14, 1)
        .expect("narrow")
        .flatten_all()
        .expect("flat");
    let top = last
        .argmax(0)
        .expect("argmax")
        .to_scalar::<u32>()
        .expect("scalar");
    assert_eq!(top, 2009, "next token after '366' should be ' days'");
}

#[test]
fn padded_batches_give_the_logits_of_single_sequences() {
    // Tolerance 1e-4 on logits of magnitude ~10: batching changes the order of float sums.
    let m = model();
    let a: Vec<u32> = IDS.to_vec();
    let b: Vec<u32> = IDS[..9].to_vec();
    let single_a = m.forward_ids(&ids(&a), None).expect("a");
    let single_b = m.forward_ids(&ids(&b), None).expect("b");
    let pad = 2u32;
    let n = a.len() - b.len();
    for left in [true, false] {
        let mut rb = b.clone();
        let mut mb = vec![1u8; b.len()];
        if left {
            rb.splice(0..0, std::iter::repeat_n(pad, n));
            mb.splice(0..0, std::iter::repeat_n(0, n));
        } else {
            rb.extend(std::iter::repeat_n(pad, n));
            mb.extend(std::iter::repeat_n(0, n));
        }
        let batch = Tensor::new([a.clone(), rb].concat().as_slice(), &Device::Cpu)
            .and_then(|t| t.reshape((2, a.len())))
            .expect("batch");
        let mask = Tensor::new([vec![1u8; a.len()], mb].concat().as_slice(), &Device::Cpu)
            .and_then(|t| t.reshape((2, a.len())))
            .expect("mask");
        let out = m.forward_ids(&batch, Some(&mask)).expect("batched");
        let oa = out.narrow(0, 0, 1).expect("row a");
        assert!(max_diff(&oa, &single_a) < 1e-4, "row a differs ({left})");
        let start = if left { n } else { 0 };
        let ob = out
            .narrow(0, 1, 1)
            .and_then(|t| t.narrow(1, start, b.len()))
            .expect("b");
        let d = max_diff(&ob, &single_b);
        assert!(d < 1e-4, "padded row differs by {d} (left = {left})");
    }
}

#[test]
fn kv_cache_generation_equals_uncached_recomputation() {
    let m = model();
    let params = SamplingParams {
        max_new_tokens: 8,
        ..Default::default()
    };
    let g = m
        .generate(Prompt::Ids(&IDS[..12]), &params, |_| true)
        .expect("gen");
    assert_eq!(g.tokens.len(), 8);
    let mut seq = IDS[..12].to_vec();
    for &t in &g.tokens {
        let logits = m.forward_ids(&ids(&seq), None).expect("full");
        let last = logits
            .narrow(1, seq.len() - 1, 1)
            .and_then(|l| l.flatten_all())
            .expect("l");
        let top = last
            .argmax(0)
            .and_then(|t| t.to_scalar::<u32>())
            .expect("argmax");
        assert_eq!(top, t, "cached greedy token differs from recomputation");
        seq.push(t);
    }
    // Generating from the embeddings gives the same tokens.
    let e = m.embed(&ids(&IDS[..12])).expect("embed");
    let ge = m
        .generate(Prompt::Embeds(&e), &params, |_| true)
        .expect("gen");
    assert_eq!(ge.tokens, g.tokens);
    // Seeded sampling repeats; the callback can stop early.
    let sp = SamplingParams {
        temperature: 0.9,
        top_p: Some(0.95),
        top_k: Some(50),
        seed: Some(11),
        ..params.clone()
    };
    let s1 = m.generate(Prompt::Ids(&IDS), &sp, |_| true).expect("s1");
    let s2 = m.generate(Prompt::Ids(&IDS), &sp, |_| true).expect("s2");
    assert_eq!(s1.tokens, s2.tokens);
    let mut n = 0;
    let c = m.generate(Prompt::Ids(&IDS), &params, |_| {
        n += 1;
        n < 3
    });
    assert_eq!(c.expect("cancel").tokens.len(), 3);
}

#[test]
fn reordered_kv_cache_rows_continue_their_parents() {
    // Two rows with different prefixes; after reorder([1, 1, 0]) each row's next logits equal
    // those of its parent's prefix extended by the same token (what a beam search relies on).
    let m = model();
    let (a, b) = (&IDS[..6], &IDS[3..9]);
    let mut cache = stainedglass_models::llm::KvCache::new(m.config().num_layers, 2);
    let both = Tensor::from_vec([a, b].concat(), (2, 6), &Device::Cpu).expect("ids");
    m.forward_cached(&m.embed(&both).expect("e"), None, &mut cache)
        .expect("prefill");
    cache.reorder(&[1, 1, 0]).expect("reorder");
    let next = Tensor::new(&[[IDS[9]], [IDS[10]], [IDS[9]]], &Device::Cpu).expect("next");
    let got = m
        .forward_cached(&m.embed(&next).expect("e"), None, &mut cache)
        .expect("step");
    for (row, prefix, tok) in [(0, b, IDS[9]), (1, b, IDS[10]), (2, a, IDS[9])] {
        let mut seq = prefix.to_vec();
        seq.push(tok);
        let full = m.forward_ids(&ids(&seq), None).expect("full");
        let want = full
            .narrow(1, seq.len() - 1, 1)
            .and_then(|l| l.flatten_all())
            .expect("w");
        let have = got.get(row).expect("row");
        assert!(max_diff(&want, &have) < 1e-3, "row {row}");
    }
    assert!(
        cache.reorder(&[3]).is_err(),
        "out-of-range rows are refused"
    );
}

#[test]
fn gradients_reach_the_input_embeddings() {
    let m = model();
    let e = m.embed(&ids(&IDS[..8])).expect("embed");
    let v = Var::from_tensor(&e).expect("var");
    let h = m
        .forward_embeds(v.as_tensor(), None, Stop::AtLayer(6))
        .expect("fwd");
    let g = h
        .sqr()
        .and_then(|x| x.sum_all())
        .and_then(|l| l.backward())
        .expect("bwd");
    let ge = g
        .get(&v)
        .expect("the graph was cut before the input embeddings");
    let norm = ge
        .sqr()
        .and_then(|x| x.sum_all())
        .and_then(|x| x.to_scalar::<f32>())
        .expect("n");
    assert!(norm.is_finite() && norm > 0.0);
    // Finite-difference check of one coordinate through six frozen layers.
    let loss = |t: &Tensor| -> f64 {
        let h = m.forward_embeds(t, None, Stop::AtLayer(6)).expect("fwd");
        h.sqr()
            .and_then(|x| x.sum_all())
            .and_then(|x| x.to_dtype(DType::F64))
            .and_then(|x| x.to_scalar::<f64>())
            .expect("loss")
    };
    let (pos, dim, eps) = (3usize, 17usize, 1e-2f32);
    let mut flat = e
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("flat");
    let k = pos * 576 + dim;
    flat[k] += eps;
    let plus = loss(&Tensor::from_vec(flat.clone(), e.dims(), &Device::Cpu).expect("t"));
    flat[k] -= 2.0 * eps;
    let minus = loss(&Tensor::from_vec(flat, e.dims(), &Device::Cpu).expect("t"));
    let fd = (plus - minus) / (2.0 * eps as f64);
    let an = ge
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("g")[k] as f64;
    assert!(
        (fd - an).abs() < 0.05 * an.abs().max(1.0),
        "finite difference {fd} vs backprop {an}"
    );
}

#[test]
fn hf_folder_round_trip_sharded_gives_identical_logits() {
    let m = model();
    let dir = tempfile::tempdir().expect("tmp");
    stainedglass_models::llm::hf::save_hf_folder(m, dir.path(), 3, candle_core::DType::F32)
        .expect("save");
    assert!(dir.path().join("model.safetensors.index.json").exists());
    let h = Llama::load(dir.path(), &Device::Cpu).expect("load HF folder");
    assert_eq!(h.config(), m.config());
    let x = ids(&IDS);
    let d = max_diff(
        &h.forward_ids(&x, None).expect("h"),
        &m.forward_ids(&x, None).expect("m"),
    );
    assert_eq!(d, 0.0);
    // A tensor of the wrong shape is named in the error.
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).expect("cfg");
    let bad = cfg.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1000");
    std::fs::write(dir.path().join("config.json"), bad).expect("write");
    let e = Llama::load(dir.path(), &Device::Cpu)
        .err()
        .expect("shape mismatch")
        .to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("shape"),
        "{e}"
    );
}

#[test]
fn bad_files_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    // Truncated GGUF: the header reads, a tensor does not.
    let bytes = std::fs::read(gguf()).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = Llama::load(&cut, &Device::Cpu)
        .err()
        .expect("truncated")
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    // Not a GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a model").expect("write");
    let e = Llama::load(&junk, &Device::Cpu)
        .err()
        .expect("junk")
        .to_string();
    assert!(e.contains("not a readable GGUF"), "{e}");
    // A GGUF of another architecture.
    use candle_core::quantized::{gguf_file, QTensor};
    let other = dir.path().join("bert.gguf");
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), DType::F32, &Device::Cpu).expect("z"),
        candle_core::quantized::GgmlDType::F32,
    )
    .expect("q");
    let arch = gguf_file::Value::String("bert".into());
    let mut f = std::fs::File::create(&other).expect("create");
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .expect("write gguf");
    drop(f);
    let e = Llama::load(&other, &Device::Cpu)
        .err()
        .expect("bert")
        .to_string();
    assert!(e.contains("architecture `bert` is not supported"), "{e}");
    // A llama GGUF missing its tensors.
    let arch = gguf_file::Value::String("llama".into());
    let u = |v: u32| gguf_file::Value::U32(v);
    let md = [
        ("general.architecture", arch),
        ("llama.embedding_length", u(32)),
        ("llama.attention.head_count", u(2)),
        ("llama.feed_forward_length", u(64)),
        ("llama.block_count", u(1)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            gguf_file::Value::F32(1e-5),
        ),
    ];
    let mdr: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let missing = dir.path().join("missing.gguf");
    let mut f = std::fs::File::create(&missing).expect("create");
    gguf_file::write(&mut f, &mdr, &[("token_embd.weight", &t)]).expect("write gguf");
    drop(f);
    let e = Llama::load(&missing, &Device::Cpu)
        .err()
        .expect("missing")
        .to_string();
    assert!(
        e.contains("missing tensor") && e.contains("model.norm.weight"),
        "{e}"
    );
    // Wrong input shapes.
    let m = model();
    let e = m
        .forward_embeds(
            &Tensor::zeros((1, 3, 100), DType::F32, &Device::Cpu).expect("z"),
            None,
            Stop::Logits,
        )
        .expect_err("hidden size")
        .to_string();
    assert!(e.contains("576"), "{e}");
    let e = m.embed(&ids(&[1, 60000])).expect_err("oob").to_string();
    assert!(e.contains("60000"), "{e}");
    let _ = GgufFile::open(&gguf()).expect("open");
}

#[test]
fn batched_generation_equals_one_by_one() {
    let m = model();
    let params = SamplingParams {
        max_new_tokens: 6,
        ..Default::default()
    };
    let prompts = vec![IDS.to_vec(), IDS[..5].to_vec(), IDS[3..11].to_vec()];
    let batch = m.generate_batch(&prompts, &params).expect("batch");
    for (p, g) in prompts.iter().zip(&batch) {
        let one = m.generate(Prompt::Ids(p), &params, |_| true).expect("one");
        assert_eq!(g.tokens, one.tokens, "batched greedy tokens differ");
    }
}

#[test]
fn generate_rows_matches_single_generation_with_per_row_settings() {
    // Independent requests batched together (left padding, one cache) give each row what it
    // would get alone, with its own budget, stop tokens and seed; a cancelled row stops early.
    let m = model();
    let embed = |ids: &[u32]| {
        m.embed(
            &Tensor::new(ids, &Device::Cpu)
                .expect("ids")
                .unsqueeze(0)
                .expect("u"),
        )
        .expect("embed")
        .squeeze(0)
        .expect("s")
    };
    let prompts = [IDS.to_vec(), IDS[..5].to_vec(), IDS[3..11].to_vec()];
    let embeds: Vec<Tensor> = prompts.iter().map(|p| embed(p)).collect();
    let params = [
        SamplingParams {
            max_new_tokens: 6,
            ..Default::default()
        },
        SamplingParams {
            max_new_tokens: 3,
            ..Default::default()
        },
        SamplingParams {
            max_new_tokens: 8,
            stop_tokens: vec![2],
            ..Default::default()
        },
    ];
    let rows: Vec<RowRequest<'_>> = embeds
        .iter()
        .zip(&params)
        .map(|(e, p)| RowRequest {
            embeds: e,
            params: p,
        })
        .collect();
    let mut streamed = vec![Vec::new(); 3];
    let out = m
        .generate_rows(&rows, |i, t| {
            streamed[i].push(t);
            true
        })
        .expect("rows");
    for i in 0..3 {
        let one = m
            .generate(Prompt::Embeds(&embeds[i]), &params[i], |_| true)
            .expect("one");
        assert_eq!(out[i].tokens, one.tokens, "row {i}");
        assert_eq!(streamed[i], one.tokens, "row {i} callback");
        assert!(out[i].tokens.len() <= params[i].max_new_tokens);
        assert_eq!(out[i].prompt_tokens, prompts[i].len());
    }
    // A batch of one runs exactly `generate`'s computation, so seeded sampling reproduces it.
    let sampled = SamplingParams {
        max_new_tokens: 8,
        temperature: 0.8,
        seed: Some(5),
        ..Default::default()
    };
    let one_row = [RowRequest {
        embeds: &embeds[2],
        params: &sampled,
    }];
    let a = m.generate_rows(&one_row, |_, _| true).expect("row");
    let b = m
        .generate(Prompt::Embeds(&embeds[2]), &sampled, |_| true)
        .expect("one");
    assert_eq!(a[0].tokens, b.tokens);
    // Cancelling row 0 at its first token leaves the others untouched.
    let out2 = m.generate_rows(&rows, |i, _| i != 0).expect("rows");
    assert_eq!(out2[0].tokens.len(), 1);
    assert_eq!(out2[0].finish, FinishReason::Cancelled);
    assert_eq!(out2[1].tokens, out[1].tokens);
    assert_eq!(out2[2].tokens, out[2].tokens);
}
