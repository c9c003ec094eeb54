//! `sgt bench text-sgt`: throughput of one text-SGT training step (TransformerCloak + frozen
//! base to layer k, clean and transformed, distillation loss, backward, AdamW) on random ids.
//! `bench/text_sgt_torch.py` is the same step in PyTorch eager; `bench/run_text_sgt.sh` runs both.

use super::common::{blas_name, rayon_threads};
use crate::lm::model_args::ModelArgs;
use anyhow::Result;
use candle_core::{DType, Tensor};
use clap::Args;
use rand::{Rng, SeedableRng};
use stainedglass_core::loss::{distillation_loss_factory, DistillationConfig, DistillationInputs};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::NoiseRng;
use stainedglass_models::llm::Stop;
use stainedglass_models::text_sgt::{TransformerCloak, TransformerCloakConfig};
use std::time::Instant;

#[derive(Debug, Args)]
pub struct TextSgtBenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Rows per training step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Distillation layer.
    #[arg(long, default_value_t = 6)]
    pub layer: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
}

pub fn text_sgt(a: TextSgtBenchArgs) -> Result<()> {
    let model = a.model.load_model()?;
    let dev = model.device().clone();
    let cloak =
        TransformerCloak::from_base(TransformerCloakConfig::new(model.config().clone()), &model)?;
    let (w, b) = cloak.parameter_groups();
    let mut opt = AdamW::new(w, AdamWConfig::noise(2e-4))?;
    let mut opt_b = AdamW::new(b, AdamWConfig::noise(2e-2))?;
    let loss = distillation_loss_factory(DistillationConfig {
        distillation_layer_index: Some(a.layer),
        ..Default::default()
    })?;
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = (0..a.batch * a.seq)
        .map(|_| r.random_range(100..vocab))
        .collect();
    let ids = Tensor::from_vec(ids, (a.batch, a.seq), &dev)?;
    let ones_u8 = vec![1u8; a.batch * a.seq];
    let am = Tensor::ones((a.batch, a.seq), DType::U8, &dev)?;
    let ones = Tensor::ones((a.batch, a.seq), DType::F32, &dev)?;
    let mut rng = NoiseRng::seeded(0);
    crate::alloc::keep_freed_pages();
    let mut step = || -> Result<()> {
        let x = model.embed(&ids)?;
        let clean = model.forward_embeds(&x, Some(&am), Stop::AtLayer(a.layer))?;
        let noise = cloak.forward_masked(&x, Some(&ones_u8), Some(&ones_u8), &mut rng)?;
        let tr = model.forward_embeds(&noise.transformed, Some(&am), Stop::AtLayer(a.layer))?;
        let rec = loss.compute(&DistillationInputs {
            clean: &clean,
            transformed: &tr,
            loss_mask: &ones,
            noise_mask: &ones,
            input_embeds: &x,
            transformed_embeds: &noise.transformed,
            std: &noise.std,
            keep_mask: noise.mask.as_ref(),
        })?;
        let mut g = rec.loss.backward()?;
        opt.clip_grad_norm(&mut g, 1.0)?;
        opt.step(&g)?;
        opt_b.step(&g)?;
        Ok(())
    };
    step()?;
    let t = Instant::now();
    for _ in 0..a.steps {
        step()?;
    }
    let tps = (a.steps * a.batch * a.seq) as f64 / t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-candle",
            "threads": rayon_threads(),
            "blas": blas_name(),
            "text_sgt_train_tokens_per_s": tps,
        })
    );
    Ok(())
}
