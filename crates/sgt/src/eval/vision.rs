//! `sgt eval vision`: the vision noise layer against Gaussian pixel noise, as a report.

use crate::vision::data::DataArgs;
use crate::vision::eval::EvalFlags;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use stainedglass_core::io::load_noise_layer;
use stainedglass_core::{NoiseLayer, NoiseRng};
use stainedglass_eval::vision::{
    evaluate_vision, gaussian_image_baseline, write_vision_report, VisionReportInput,
};
use stainedglass_models::{Classifier, Split};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct EvalVisionArgs {
    /// Noise-layer artefact directory.
    #[arg(long)]
    pub sgt: PathBuf,
    /// Trained classifier directory.
    #[arg(long)]
    pub classifier: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub flags: EvalFlags,
    /// Gaussian pixel-noise baselines (σ on [0, 1] pixels), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.2,0.3,0.5,0.8")]
    pub gaussian: Vec<f64>,
    /// Where to write report.json, summary.md and the plots.
    #[arg(long)]
    pub report: PathBuf,
}

pub fn run(a: EvalVisionArgs) -> Result<()> {
    let started = Instant::now();
    let device = Device::Cpu;
    let layer = load_noise_layer(&a.sgt, &device)
        .with_context(|| format!("loading the SGT from {}", a.sgt.display()))?;
    let classifier = Classifier::load(&a.classifier, &device)
        .with_context(|| format!("loading the classifier from {}", a.classifier.display()))?;
    let test = a.data.load(Split::Test)?;
    let train = a.data.load(Split::Train)?;
    if classifier.config().input_shape != test.shape {
        bail!(
            "the classifier expects {:?} images; the data set has {:?}",
            classifier.config().input_shape,
            test.shape
        );
    }
    let opts = a.flags.options();
    eprintln!("evaluating the SGT on {} test images", test.len());
    let sgt = evaluate_vision(&classifier, &layer, &test, &train, &opts, &device)?;
    let mut rng = NoiseRng::new(a.flags.eval_seed.map(|s| s ^ 0x6A55));
    let mut baselines = Vec::new();
    for &s in &a.gaussian {
        eprintln!("Gaussian baseline σ = {s}");
        baselines.push(gaussian_image_baseline(
            &classifier,
            &test,
            s,
            opts.batch_size,
            &mut rng,
            &device,
        )?);
    }
    let (_, std, _) = layer.statistics()?;
    let sigma: Vec<f64> = std.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    // Examples: clean, SGT, and the baseline closest in accuracy to the SGT.
    let count = test.len().min(8);
    let idx: Vec<usize> = (0..count).collect();
    let (x, _) = test.batch(&idx, &device)?;
    let tx = layer.transform(&x, None, &mut rng)?;
    let closest = baselines.iter().min_by(|p, q| {
        (p.accuracy - sgt.transformed_accuracy)
            .abs()
            .total_cmp(&(q.accuracy - sgt.transformed_accuracy).abs())
    });
    let mut grids = vec![x.clone(), tx];
    if let Some(b) = closest {
        grids
            .push((&x + (rng.standard_normal(x.shape(), &device)? * b.sigma)?)?.clamp(0f32, 1f32)?);
    }
    let examples = grids
        .iter()
        .map(|g| {
            (0..count)
                .map(|i| Ok(g.get(i)?.flatten_all()?.to_vec1::<f32>()?))
                .collect::<Result<Vec<Vec<f32>>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let extra = serde_json::json!({
        "sgt": a.sgt,
        "classifier": a.classifier,
        "examples_rows": ["clean", "SGT", closest.map(|b| format!("Gaussian σ = {}", b.sigma))],
        "wall_seconds": started.elapsed().as_secs_f64(),
    });
    write_vision_report(
        &a.report,
        &VisionReportInput {
            title: "Vision SGT: utility, similarity and reconstruction vs Gaussian noise".into(),
            sgt: &sgt,
            baselines: &baselines,
            sigma: &sigma,
            examples: &examples,
            shape: test.shape,
            extra,
        },
    )?;
    println!(
        "{}",
        serde_json::json!({
            "report": a.report,
            "clean_accuracy": sgt.clean_accuracy,
            "transformed_accuracy": sgt.transformed_accuracy,
            "mean_ssim": sgt.mean_ssim,
            "reconstruction_psnr_db": sgt.reconstruction_psnr_db,
            "wall_seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
