//! `sgt vision eval` and `sgt vision curve`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use stainedglass_core::io::load_noise_layer;
use stainedglass_eval::plot::{line_chart, Series};
use stainedglass_eval::vision::{evaluate_vision, EvalOptions, ReconstructionConfig, VisionEval};
use stainedglass_models::{Classifier, Split};
use stainedglass_train::vision::train_sgt;

use super::commands::TrainSgtArgs;
use super::data::DataArgs;

#[derive(Args, Clone)]
pub struct EvalFlags {
    /// Skip the learned reconstruction attack.
    #[arg(long)]
    pub no_attack: bool,
    /// Training steps of the reconstruction attack (batch 64; about 0.45 s a step on 28×28
    /// images on a 2-core CPU). Fewer steps give a weaker attacker: on the one-shot operating
    /// point, 60 steps reach 16.7 dB and 600 steps 19.6 dB.
    #[arg(long, default_value_t = 600)]
    pub attack_steps: usize,
    /// Seed of the evaluation noise and attack (default: OS entropy for the noise).
    #[arg(long)]
    pub eval_seed: Option<u64>,
}

impl EvalFlags {
    pub(crate) fn options(&self) -> EvalOptions {
        EvalOptions {
            reconstruction: (!self.no_attack).then(|| ReconstructionConfig {
                steps: self.attack_steps,
                seed: self.eval_seed.unwrap_or(0),
                ..Default::default()
            }),
            seed: self.eval_seed,
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
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
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(a: EvalArgs, device: &Device) -> Result<()> {
    let layer = load_noise_layer(&a.sgt, device)
        .with_context(|| format!("loading the SGT from {}", a.sgt.display()))?;
    let classifier = Classifier::load(&a.classifier, device)
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
    let r = evaluate_vision(
        &classifier,
        &layer,
        &test,
        &train,
        &a.flags.options(),
        device,
    )?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(())
}

fn print_table(r: &VisionEval) {
    println!("test images            {}", r.test_images);
    println!("clean accuracy         {:.4}", r.clean_accuracy);
    println!(
        "transformed accuracy   {:.4}  (drop {:.2} points)",
        r.transformed_accuracy, r.accuracy_drop_points
    );
    println!("mean SSIM(x, x̃)        {:.4}", r.mean_ssim);
    println!("mean PSNR(x, x̃)        {:.2} dB", r.mean_psnr_db);
    println!("masked fraction        {:.3}", r.masked_fraction);
    println!("mean σ                 {:.4}", r.mean_sigma);
    if let Some(p) = r.reconstruction_psnr_db {
        println!("reconstruction PSNR    {p:.2} dB");
    }
}

#[derive(Args)]
pub struct CurveArgs {
    #[command(flatten)]
    pub train: TrainSgtArgs,
    /// α values to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.3,0.5,0.7,0.9")]
    pub alphas: Vec<f64>,
    /// Also train with adaptive α at these tolerances (comma-separated; each is a point of
    /// the curve labelled by its tolerance).
    #[arg(long, value_delimiter = ',')]
    pub adaptive_tolerances: Vec<f64>,
    #[command(flatten)]
    pub flags: EvalFlags,
}

pub fn curve(mut a: CurveArgs, device: &Device) -> Result<()> {
    let classifier = Classifier::load(&a.train.classifier, device)?;
    let train = a.train.data.load(Split::Train)?;
    let test = a.train.data.load(Split::Test)?;
    let root = a.train.output.clone();
    let mut rows = Vec::new();
    // Fixed α values first, then adaptive α (None) at each tolerance.
    let points: Vec<(Option<f64>, f64)> = a
        .alphas
        .iter()
        .map(|&x| (Some(x), a.train.tolerance))
        .chain(a.adaptive_tolerances.iter().map(|&t| (None, t)))
        .collect();
    for (alpha, tolerance) in points {
        a.train.alpha = alpha;
        a.train.tolerance = tolerance;
        let cfg = a.train.config(train.shape)?;
        let (label, dir) = match alpha {
            Some(x) => (format!("α={x}"), format!("alpha-{x}")),
            None => (
                format!("adaptive α, tol {tolerance}"),
                format!("adaptive-{tolerance}"),
            ),
        };
        let out = root.join(dir);
        eprintln!("training {label} into {}", out.display());
        let run = train_sgt(&cfg, &classifier, &train, &out, device)?;
        let layer = load_noise_layer(&run.artefact_dir, device)?;
        let r = evaluate_vision(
            &classifier,
            &layer,
            &test,
            &train,
            &a.flags.options(),
            device,
        )?;
        eprintln!("{label}: {}", serde_json::to_string(&r)?);
        rows.push(serde_json::json!({
            "alpha": alpha,
            "adaptive_tolerance": alpha.is_none().then_some(tolerance),
            "final_alpha": run.final_alpha,
            "label": label,
            "eval": r,
        }));
    }
    let get = |r: &serde_json::Value, k: &str| r["eval"][k].as_f64().unwrap_or(f64::NAN);
    let kind = match a.train.layer {
        super::commands::LayerKind::Cloak => "one-shot Cloak",
        super::commands::LayerKind::CloakTwoPhase => "two-phase Cloak",
        super::commands::LayerKind::Patch => "patch Cloak",
    };
    let layer_name = format!(
        "SGT ({kind}, {}% masked)",
        100.0 * a.train.percent_to_mask.unwrap_or(0.0)
    );
    // One series for fixed α, one for adaptive α (when swept).
    let series = |xk: &str| -> Vec<Series> {
        [(false, "fixed α"), (true, "adaptive α")]
            .into_iter()
            .map(|(adaptive, alpha_kind)| Series {
                name: format!("{layer_name}, {alpha_kind}"),
                points: rows
                    .iter()
                    .filter(|r| r["alpha"].is_null() == adaptive)
                    .map(|r| {
                        (
                            get(r, xk),
                            100.0 * get(r, "transformed_accuracy"),
                            r["label"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let clean = rows
        .first()
        .map(|r| 100.0 * get(r, "clean_accuracy"))
        .unwrap_or(f64::NAN);
    let title = format!("Privacy–utility over α (clean accuracy {clean:.1}%)");
    line_chart(
        &root.join("curve_ssim.png"),
        &title,
        "mean SSIM(x, x̃)  (lower = more private)",
        "transformed accuracy (%)",
        &series("mean_ssim"),
    )?;
    if !a.flags.no_attack {
        line_chart(
            &root.join("curve_reconstruction.png"),
            &title,
            "reconstruction PSNR (dB, lower = more private)",
            "transformed accuracy (%)",
            &series("reconstruction_psnr_db"),
        )?;
    }
    let json = serde_json::to_string_pretty(&rows)?;
    stainedglass_core::io::atomic_write(&root.join("curve.json"), json.as_bytes())?;
    println!("{json}");
    Ok(())
}
