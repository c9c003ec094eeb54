//! `sgt bench vision`: machine-readable throughput of the vision SGT training step and of the
//! client-side transform. `bench/vision_torch.py` measures the same computation in PyTorch eager;
//! `bench/run_vision.sh` runs both side by side and prints the ratios.

use std::time::Instant;

use anyhow::Result;
use candle_core::{Device, Tensor};
use clap::Args;

use super::common::{blas_name, rayon_threads};
use stainedglass_core::loss::noise_loss_wrapper;
use stainedglass_core::noise_layer::{CloakConfig, ValueRange};
use stainedglass_core::optim::{AdamW, AdamWConfig};
use stainedglass_core::{CloakNoiseLayer, Mode, NoiseLayer, NoiseRng, NoisyModel};
use stainedglass_models::{Classifier, ClassifierConfig};

#[derive(Args)]
pub struct VisionBenchArgs {
    /// Images per training step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Images per client transform.
    #[arg(long, default_value_t = 256)]
    apply_batch: usize,
    /// Timed client transforms.
    #[arg(long, default_value_t = 200)]
    apply_iters: usize,
}

pub fn vision(a: VisionBenchArgs) -> Result<()> {
    let dev = Device::Cpu;
    let shape = [1usize, 28, 28];
    // A frozen classifier: saved and reloaded, exactly as the trainer sees it.
    let tmp = std::env::temp_dir().join(format!("sgt-bench-{}", std::process::id()));
    Classifier::new_seeded(ClassifierConfig::small_cnn(shape, 10), &dev, 0)?.save(&tmp)?;
    let clf = Classifier::load(&tmp, &dev)?;
    let _ = std::fs::remove_dir_all(&tmp);
    let mut cfg = CloakConfig::new(&shape);
    cfg.percent_to_mask = Some(0.6);
    cfg.value_range = ValueRange {
        lo: Some(0.0),
        hi: Some(1.0),
    };
    let layer = CloakNoiseLayer::new(cfg, &dev)?;
    let mut rng = NoiseRng::seeded(0);
    layer
        .rhos()
        .set(&((rng.standard_normal((1, 28, 28), &dev)? * 0.1)? - 4.0)?)?;
    let loss = noise_loss_wrapper(Some(0.5))?;
    let mut opt = AdamW::new(layer.parameters(), AdamWConfig::noise(0.05))?;
    let model = NoisyModel::new(&clf, &layer);
    let x = Tensor::rand(0f32, 1.0, (a.batch_size, 1, 28, 28), &dev)?;
    let labels: Vec<u32> = (0..a.batch_size as u32).map(|i| i % 10).collect();
    let y = Tensor::from_vec(labels, a.batch_size, &dev)?;
    crate::alloc::keep_freed_pages();
    let mut step = || -> Result<f64> {
        let out = model.forward(&x, Mode::Transformed, None, &mut rng)?;
        let noise = out
            .noise
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no noise output"))?;
        let task = candle_nn::loss::cross_entropy(&out.base_model_output, &y)?;
        let rec = loss.compute(&task, noise, true)?;
        opt.step(&rec.composite_loss.backward()?)?;
        Ok(rec.task_loss)
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let t0 = Instant::now();
    for _ in 0..a.steps {
        step()?;
    }
    let train_ips = (a.steps * a.batch_size) as f64 / t0.elapsed().as_secs_f64();

    let xa = Tensor::rand(0f32, 1.0, (a.apply_batch, 1, 28, 28), &dev)?;
    let mut client_rng = NoiseRng::from_entropy();
    for _ in 0..a.warmup {
        layer.transform(&xa, None, &mut client_rng)?;
    }
    let t0 = Instant::now();
    for _ in 0..a.apply_iters {
        std::hint::black_box(layer.transform(&xa, None, &mut client_rng)?);
    }
    let apply_ips = (a.apply_iters * a.apply_batch) as f64 / t0.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "impl": "rust-candle",
            "sgt_train_images_per_s": train_ips,
            "transform_images_per_s": apply_ips,
            "batch_size": a.batch_size,
            "apply_batch": a.apply_batch,
            "threads": rayon_threads(),
            "blas": blas_name(),
        })
    );
    Ok(())
}
