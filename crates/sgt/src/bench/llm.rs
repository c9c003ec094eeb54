//! `sgt bench llm`: machine-readable prefill and decode throughput at batch 1, one SGT-style
//! training step (clean forward to layer k without grad + noisy forward to layer k + backward to
//! the input embeddings), and peak RSS during decode; with `--stored`, prefill and decode from
//! the GGUF's quantized matrices as stored. `bench/llm_torch.py` measures the same
//! computation with `transformers`; `bench/run_llm.sh` runs both and prints the ratios.

use super::common::{blas_name, rayon_threads};
use crate::lm::model_args::ModelArgs;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use clap::Args;
use rand::{Rng, SeedableRng};
use stainedglass_models::llm::{Activations, Llama, Prompt, QuantIsa, SamplingParams, Stop};
use std::time::Instant;

#[derive(Debug, Args)]
pub struct LlmBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prefill_tokens: usize,
    /// Tokens decoded in the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Rows per training step.
    #[arg(long, default_value_t = 4)]
    pub train_batch: usize,
    /// Tokens per row of a training step.
    #[arg(long, default_value_t = 128)]
    pub train_seq: usize,
    /// Layer the training step stops at (the distillation layer).
    #[arg(long, default_value_t = 6)]
    pub layer: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    pub train_steps: usize,
    /// Load the matrices as stored (a GGUF's quantized, a folder's bf16/f16) and measure
    /// prefill and decode only (no training step: stored weights run inference only).
    #[arg(long)]
    pub stored: bool,
    /// With --stored: `int8` (8-bit activations, llama.cpp's numerics), `f32` (the f32
    /// model's numbers bit for bit) or `bf16` (a bf16 folder's prefill in bf16).
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32", "bf16"])]
    pub activations: String,
    /// Also decode this many prompts together (one batch, one KV cache) and report the batch's
    /// tokens/s (`decode_batch_tokens_per_s`); 0 or 1 = skip.
    #[arg(long, default_value_t = 0)]
    pub decode_batch: usize,
}

/// Starts a fresh peak-RSS window. Memory the program has already freed (the weight file read
/// at load, the prefill benchmark's buffers) is first handed back to the OS: mimalloc keeps
/// freed pages for a while (1 s) before returning them, and without this the decode peak
/// counted up to 500 MB of them in some runs.
fn peak_rss_reset() {
    crate::alloc::release_freed_pages();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Tokens/s of `rows` 16-token prompts decoded together for `tokens` steps (every row runs to
/// the budget: no stop tokens), counted from the first sampled tokens on; `None` for `rows < 2`.
fn batch_decode(
    model: &Llama,
    rows: usize,
    tokens: usize,
    rand_ids: &mut impl FnMut(usize) -> Vec<u32>,
) -> Result<Option<f64>> {
    if rows < 2 {
        return Ok(None);
    }
    let prompts: Vec<Vec<u32>> = (0..rows).map(|_| rand_ids(16)).collect();
    let params = |n| SamplingParams {
        max_new_tokens: n,
        ..Default::default()
    };
    // The prefill alone (one token each), then the whole run: the difference is the decoding.
    let t = Instant::now();
    model.generate_batch(&prompts, &params(1))?;
    let prefill = t.elapsed().as_secs_f64();
    let t = Instant::now();
    model.generate_batch(&prompts, &params(tokens + 1))?;
    let decode = (t.elapsed().as_secs_f64() - prefill).max(f64::MIN_POSITIVE);
    Ok(Some((rows * tokens) as f64 / decode))
}

/// MiB the model's weights take in f32.
fn f32_weight_mb(cfg: &stainedglass_models::llm::LlamaConfig) -> f64 {
    let per_layer = cfg.hidden_size * (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
        + cfg.num_heads * cfg.head_dim * cfg.hidden_size
        + 3 * cfg.hidden_size * cfg.intermediate_size
        + 2 * cfg.hidden_size;
    let head = if cfg.tie_word_embeddings {
        0
    } else {
        cfg.vocab_size * cfg.hidden_size
    };
    (cfg.num_layers * per_layer + cfg.vocab_size * cfg.hidden_size + cfg.hidden_size + head) as f64
        * 4.0
        / (1024.0 * 1024.0)
}

pub fn llm(a: LlmBenchArgs) -> Result<()> {
    let dev = Device::Cpu;
    let model = if a.stored {
        let act: Activations = a.activations.parse().map_err(anyhow::Error::msg)?;
        let p = a.model.model_path()?;
        Llama::load_stored_with(&p, &dev, act)
            .with_context(|| format!("loading {} as stored", p.display()))?
    } else {
        a.model.load_model()?
    };
    let cfg = model.config().clone();
    let weight_mb = f32_weight_mb(&cfg);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut rand_ids = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| rng.random_range(100..cfg.vocab_size as u32))
            .collect()
    };
    // prefill: the last position's logits, as generation needs.
    let ids = rand_ids(a.prefill_tokens);
    let x = model.embed(&Tensor::new(ids.as_slice(), &dev)?.unsqueeze(0)?)?;
    let prefill_once = || -> Result<()> {
        let mut cache = stainedglass_models::llm::KvCache::new(cfg.num_layers, 1);
        model.forward_cached(&x, None, &mut cache)?;
        Ok(())
    };
    prefill_once()?;
    let t = Instant::now();
    for _ in 0..3 {
        prefill_once()?;
    }
    let prefill = 3.0 * a.prefill_tokens as f64 / t.elapsed().as_secs_f64();
    // decode: greedy after a 16-token prompt (or the whole prefill prompt when shorter);
    // time from the first generated token on.
    peak_rss_reset();
    let params = SamplingParams {
        max_new_tokens: a.decode_tokens + 1,
        ..Default::default()
    };
    let mut t_first = None;
    model.generate(Prompt::Ids(&ids[..ids.len().min(16)]), &params, |_| {
        if t_first.is_none() {
            t_first = Some(Instant::now());
        }
        true
    })?;
    let decode = a.decode_tokens as f64 / t_first.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    let decode_peak = peak_rss_mb();
    let batch = batch_decode(&model, a.decode_batch, a.decode_tokens, &mut rand_ids)?;
    if a.stored {
        println!(
            "{}",
            serde_json::json!({
                "impl": format!("rust-stored-{}", a.activations),
                "threads": rayon_threads(),
                "storage": model.storage_summary(),
                "isa": QuantIsa::get().name(),
                "prefill_tokens_per_s": prefill,
                "decode_tokens_per_s": decode,
                "decode_peak_rss_mb": decode_peak,
                "decode_batch": a.decode_batch,
                "decode_batch_tokens_per_s": batch,
                "weights_f32_mb": weight_mb,
                "weights_loaded_mb": model.weight_bytes() as f64 / (1024.0 * 1024.0),
            })
        );
        return Ok(());
    }
    // training-style step (the allocator policy of the training commands)
    crate::alloc::keep_freed_pages();
    let tids = rand_ids(a.train_batch * a.train_seq);
    let base = model.embed(&Tensor::from_vec(tids, (a.train_batch, a.train_seq), &dev)?)?;
    let noise = (Tensor::randn(0f32, 1.0, base.dims(), &dev)? * 0.01)?;
    let mask = Tensor::ones((a.train_batch, a.train_seq), candle_core::DType::U8, &dev)?;
    let step = || -> Result<()> {
        let clean = model.forward_embeds(&base, Some(&mask), Stop::AtLayer(a.layer))?;
        let x = Var::from_tensor(&(&base + &noise)?)?;
        let noisy = model.forward_embeds(x.as_tensor(), Some(&mask), Stop::AtLayer(a.layer))?;
        let loss = (noisy - clean)?.sqr()?.mean_all()?;
        let g = loss.backward()?;
        anyhow::ensure!(
            g.get(&x).is_some(),
            "no gradient reached the input embeddings"
        );
        Ok(())
    };
    step()?;
    let t = Instant::now();
    for _ in 0..a.train_steps {
        step()?;
    }
    let train = (a.train_steps * a.train_batch * a.train_seq) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-candle",
            "threads": rayon_threads(),
            "blas": blas_name(),
            "prefill_tokens_per_s": prefill,
            "decode_tokens_per_s": decode,
            "train_step_tokens_per_s": train,
            "decode_batch": a.decode_batch,
            "decode_batch_tokens_per_s": batch,
            "decode_peak_rss_mb": decode_peak,
            "weights_f32_mb": weight_mb,
        })
    );
    Ok(())
}
