//! The text-SGT trainer on the bundled SmolLM2 with a tiny config: metrics, checkpoints,
//! bit-exact resume, saved layer, and the quick evaluation's sanity on clean embeddings.

use candle_core::Device;
use stainedglass_models::llm::Llama;
use stainedglass_text::TextTokenizer;
use stainedglass_train::text::{load_sgt, train, RunOptions, TextTrainConfig};
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
    Arc::new(TextTokenizer::from_model_path(&gguf()).expect("tokenizer"))
}

fn data(dir: &Path) -> PathBuf {
    let convs = [
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
        ("Name a primary colour.", "Red is a primary colour."),
        (
            "How many legs does a spider have?",
            "A spider has eight legs.",
        ),
        ("What is 2 + 3?", "2 + 3 = 5."),
        (
            "Which planet is the largest?",
            "Jupiter is the largest planet.",
        ),
        ("What do bees make?", "Bees make honey."),
    ];
    let mut s = String::new();
    for (q, a) in convs {
        let v = serde_json::json!({"messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]});
        s.push_str(&v.to_string());
        s.push('\n');
    }
    let p = dir.join("convs.jsonl");
    std::fs::write(&p, s).expect("write");
    p
}

fn config(data: &Path, steps: u64) -> TextTrainConfig {
    config_with(data, steps, "")
}

fn config_with(data: &Path, steps: u64, extra: &str) -> TextTrainConfig {
    let text = format!(
        "[data]\nconversations = {:?}\nheld_out = 2\nmax_length = 48\n\
         [loss]\ndistillation_layer_index = 2\n\
         [train]\nsteps = {steps}\nbatch_size = 2\nwarmup_steps = 1\neval_every = 2\n\
         checkpoint_every = 2\ngrad_accumulation = 2\n{extra}",
        data.to_string_lossy()
    );
    TextTrainConfig::from_toml(&text, Path::new("test.toml")).expect("config")
}

fn max_diff_layers(a: &Path, b: &Path) -> f32 {
    let a = load_sgt(a, &Device::Cpu).expect("load a");
    let b = load_sgt(b, &Device::Cpu).expect("load b");
    let mut m = 0f32;
    for ((na, ta), (nb, tb)) in a.named_tensors().iter().zip(b.named_tensors()) {
        assert_eq!(na, &nb);
        let d = (ta - &tb)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff");
        m = m.max(d);
    }
    m
}

#[test]
fn trains_checkpoints_and_resumes_bit_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = data(dir.path());
    let opts = RunOptions::default();
    let cfg = config(&d, 4);
    let full = dir.path().join("full");
    let s = train(&cfg, model(), tok(), &full, &opts, None).expect("train");
    assert_eq!(s.steps, 4);
    assert!(s.resumed_from.is_none());
    // Clean embeddings: every token recovered, every next token agreed.
    assert_eq!(s.clean_eval.nn_top1_cosine, 1.0);
    assert_eq!(s.clean_eval.nn_top1_l2, 1.0);
    assert_eq!(s.clean_eval.next_token_agreement, 1.0);
    assert!(s.final_eval.transformed_tokens > 0 && s.final_eval.predicted_tokens > 0);
    let metrics = std::fs::read_to_string(full.join("metrics.jsonl")).expect("metrics");
    let recs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let train_recs: Vec<_> = recs.iter().filter(|r| r["kind"] == "train").collect();
    assert_eq!(train_recs.len(), 4);
    for key in [
        "loss",
        "distillation_loss",
        "std_log_ratio_loss",
        "input_embedding_similarity",
        "alpha",
        "mean_sigma",
        "lr",
        "tokens_per_s",
        "grad_norm",
    ] {
        assert!(train_recs[0].get(key).is_some(), "metrics lack {key}");
    }
    assert_eq!(recs.iter().filter(|r| r["kind"] == "eval").count(), 2);

    // Simulate a kill after step 2: drop the step-4 checkpoint, point `latest` at step 2, rerun.
    let resumed = dir.path().join("resumed");
    copy_dir(&full, &resumed);
    let ck = resumed.join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-00000004")).expect("rm");
    std::fs::write(ck.join("latest"), "step-00000002").expect("latest");
    std::fs::remove_dir_all(resumed.join("sgt")).expect("rm sgt");
    let s2 = train(&cfg, model(), tok(), &resumed, &opts, None).expect("resume");
    assert_eq!(s2.resumed_from, Some(2));
    assert_eq!(
        max_diff_layers(&full.join("sgt"), &resumed.join("sgt")),
        0.0
    );
    // The layer changed during training.
    let fresh = dir.path().join("fresh");
    train(&config(&d, 1), model(), tok(), &fresh, &opts, None).expect("one step");
    assert!(max_diff_layers(&full.join("sgt"), &fresh.join("sgt")) > 0.0);
    // A different config refuses to resume.
    let e =
        train(&config(&d, 6), model(), tok(), &resumed, &opts, None).expect_err("config changed");
    assert!(e.to_string().contains("different config"), "{e}");
}

/// With `[adversary]` the online inverter trains beside the layer, its loss and accuracy are
/// logged, its state is checkpointed (a resumed run is bit-exact), and the layer it pushes on
/// ends elsewhere than without it.
#[test]
fn the_in_training_adversary_trains_logs_and_resumes_bit_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = data(dir.path());
    let opts = RunOptions::default();
    let adv = "[adversary]\nweight = 1.0\ninner_steps = 2\nnegatives = 64\nhidden = 64\n";
    let cfg = config_with(&d, 4, adv);
    let full = dir.path().join("full");
    train(&cfg, model(), tok(), &full, &opts, None).expect("train");
    let metrics = std::fs::read_to_string(full.join("metrics.jsonl")).expect("metrics");
    let first: serde_json::Value =
        serde_json::from_str(metrics.lines().next().expect("a line")).expect("json");
    for key in ["adversary_loss", "adversary_accuracy", "adversary_term"] {
        let v = first[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{key} = {v} in {first}");
    }
    assert!(
        first["adversary_term"].as_f64().unwrap_or(0.0) < 0.0,
        "{first}"
    );
    assert!(full
        .join("checkpoints/step-00000004/adversary.safetensors")
        .exists());

    let resumed = dir.path().join("resumed");
    copy_dir(&full, &resumed);
    let ck = resumed.join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-00000004")).expect("rm");
    std::fs::write(ck.join("latest"), "step-00000002").expect("latest");
    let s2 = train(&cfg, model(), tok(), &resumed, &opts, None).expect("resume");
    assert_eq!(s2.resumed_from, Some(2));
    assert_eq!(
        max_diff_layers(&full.join("sgt"), &resumed.join("sgt")),
        0.0
    );
    let plain = dir.path().join("plain");
    train(&config(&d, 4), model(), tok(), &plain, &opts, None).expect("plain");
    assert!(max_diff_layers(&full.join("sgt"), &plain.join("sgt")) > 0.0);
}

/// The layer-0 tensors of the served model under `dir`, by name, and one of layer 1.
fn served_layers(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let m = Llama::load(dir, &Device::Cpu).expect("served model");
    m.hf_tensors()
        .expect("tensors")
        .into_iter()
        .filter(|(n, _)| {
            n.starts_with("model.layers.0.") || n == "model.layers.1.mlp.down_proj.weight"
        })
        .map(|(n, t)| {
            (
                n,
                t.flatten_all().and_then(|t| t.to_vec1()).expect("values"),
            )
        })
        .collect()
}

/// With `[adapter]` the served model's first layer trains beside the SGT: the run writes the
/// served model (layer 0 changed, layer 1 the base's), checkpoints the adapter, and a resumed
/// run ends with the same served model bit for bit.
#[test]
fn the_served_adapter_trains_saves_the_served_model_and_resumes_bit_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = data(dir.path());
    let opts = RunOptions::default();
    let cfg = config_with(&d, 4, "[adapter]\nlayers = 1\nlearning_rate = 0.001\n");
    let full = dir.path().join("full");
    let s = train(&cfg, model(), tok(), &full, &opts, None).expect("train");
    let served = s.served_model_dir.expect("a served model");
    assert!(full
        .join("checkpoints/step-00000004/adapter.safetensors")
        .exists());
    let base: std::collections::HashMap<String, Vec<f32>> = model()
        .hf_tensors()
        .expect("base")
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                t.flatten_all().and_then(|t| t.to_vec1()).expect("values"),
            )
        })
        .collect();
    let got = served_layers(&served);
    assert!(got.len() >= 10, "{} tensors", got.len());
    for (n, v) in &got {
        let same = &base[n] == v;
        if n.starts_with("model.layers.1.") {
            assert!(same, "{n} is not the base model's");
        } else if n.ends_with("down_proj.weight") || n.ends_with("q_proj.weight") {
            assert!(!same, "{n} did not train");
        }
    }
    let resumed = dir.path().join("resumed");
    copy_dir(&full, &resumed);
    let ck = resumed.join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-00000004")).expect("rm");
    std::fs::write(ck.join("latest"), "step-00000002").expect("latest");
    std::fs::remove_dir_all(resumed.join("served_model")).expect("rm served");
    let s2 = train(&cfg, model(), tok(), &resumed, &opts, None).expect("resume");
    assert_eq!(s2.resumed_from, Some(2));
    assert!(
        served_layers(&resumed.join("served_model")) == got,
        "resume is not bit-exact"
    );
    // The adapter must stop before the distillation layer.
    let e = TextTrainConfig::from_toml(
        "[loss]\ndistillation_layer_index = 1\n[adapter]\nlayers = 1\n",
        Path::new("t.toml"),
    )
    .expect_err("adapter reaching the distillation layer");
    assert!(e.to_string().contains("adapter.layers"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let p = e.path();
        let q = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &q);
        } else {
            std::fs::copy(&p, &q).expect("copy");
        }
    }
}
