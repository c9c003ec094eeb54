//! `sgt vision curve`: SGTs trained over several α, each evaluated; the privacy–utility curve.

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use serde::Serialize;
use stainedglass_core::io::load_noise_layer;
use stainedglass_eval::plot::{line_chart, Series};
use stainedglass_eval::vision::{evaluate_vision, VisionEval};
use stainedglass_models::{Classifier, Split};
use stainedglass_train::vision::train_sgt;

use super::train::{LayerKind, TrainSgtArgs};
use crate::eval::vision::EvalFlags;

/// One trained and evaluated point of the curve (a row of `curve.json`).
#[derive(Serialize)]
struct CurvePoint {
    /// Fixed α, or `None` for adaptive α.
    alpha: Option<f64>,
    adaptive_tolerance: Option<f64>,
    final_alpha: f64,
    label: String,
    eval: VisionEval,
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
        rows.push(CurvePoint {
            alpha,
            adaptive_tolerance: alpha.is_none().then_some(tolerance),
            final_alpha: run.final_alpha,
            label,
            eval: r,
        });
    }
    let kind = match a.train.layer {
        LayerKind::Cloak => "one-shot Cloak",
        LayerKind::CloakTwoPhase => "two-phase Cloak",
        LayerKind::Patch => "patch Cloak",
    };
    let layer_name = format!(
        "SGT ({kind}, {}% masked)",
        100.0 * a.train.percent_to_mask.unwrap_or(0.0)
    );
    // One series for fixed α, one for adaptive α (when swept).
    let series = |x: fn(&VisionEval) -> Option<f64>| -> Vec<Series> {
        [(false, "fixed α"), (true, "adaptive α")]
            .into_iter()
            .map(|(adaptive, alpha_kind)| Series {
                name: format!("{layer_name}, {alpha_kind}"),
                points: rows
                    .iter()
                    .filter(|r| r.alpha.is_none() == adaptive)
                    .map(|r| {
                        (
                            x(&r.eval).unwrap_or(f64::NAN),
                            100.0 * r.eval.transformed_accuracy,
                            r.label.clone(),
                        )
                    })
                    .collect(),
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let clean = rows
        .first()
        .map(|r| 100.0 * r.eval.clean_accuracy)
        .unwrap_or(f64::NAN);
    let title = format!("Privacy–utility over α (clean accuracy {clean:.1}%)");
    line_chart(
        &root.join("curve_ssim.png"),
        &title,
        "mean SSIM(x, x̃)  (lower = more private)",
        "transformed accuracy (%)",
        &series(|e| Some(e.mean_ssim)),
    )?;
    if !a.flags.no_attack {
        line_chart(
            &root.join("curve_reconstruction.png"),
            &title,
            "reconstruction PSNR (dB, lower = more private)",
            "transformed accuracy (%)",
            &series(|e| e.reconstruction_psnr_db),
        )?;
    }
    let json = serde_json::to_string_pretty(&rows)?;
    stainedglass_core::io::atomic_write(&root.join("curve.json"), json.as_bytes())?;
    println!("{json}");
    Ok(())
}
