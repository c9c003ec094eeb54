//! `sgt eval vision --report <dir>`: `report.json`, `summary.md`, the privacy–utility plot of the
//! SGT against Gaussian pixel noise, the σ histogram and an example grid.

use super::baseline::GaussianImagePoint;
use super::report::VisionEval;
use crate::plot::{histogram, image_grid, line_chart, Series};
use crate::report_io::{create_report_dir, write_report_file};
use crate::{Error, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// What the report shows.
pub struct VisionReportInput<'a> {
    pub title: String,
    pub sgt: &'a VisionEval,
    pub baselines: &'a [GaussianImagePoint],
    /// Per-feature σ of the noise layer (histogram).
    pub sigma: &'a [f64],
    /// Rows of example images `[clean, SGT, baseline…]`, each `[C, H, W]` in `[0, 1]`.
    pub examples: &'a [Vec<Vec<f32>>],
    pub shape: [usize; 3],
    pub extra: Value,
}

pub fn write_vision_report(dir: &Path, r: &VisionReportInput<'_>) -> Result<Value> {
    create_report_dir(dir)?;
    let mut plots = vec!["privacy_utility.png".to_string()];
    let s = r.sgt;
    line_chart(
        &dir.join("privacy_utility.png"),
        "Privacy vs utility (test set)",
        "classifier accuracy on what the server sees (%)",
        "mean SSIM(x, x̃) (lower is more private)",
        &[
            Series {
                name: "Gaussian pixel noise (σ)".into(),
                points: r
                    .baselines
                    .iter()
                    .map(|b| (100.0 * b.accuracy, b.mean_ssim, format!("{}", b.sigma)))
                    .collect(),
            },
            Series {
                name: "SGT".into(),
                points: vec![(100.0 * s.transformed_accuracy, s.mean_ssim, "SGT".into())],
            },
            Series {
                name: "clean".into(),
                points: vec![(100.0 * s.clean_accuracy, 1.0, "clean".into())],
            },
        ],
    )?;
    if !r.sigma.is_empty() {
        histogram(
            &dir.join("sigma.png"),
            "σ per pixel of the noise layer",
            "σ",
            r.sigma,
            30,
        )?;
        plots.push("sigma.png".into());
    }
    if !r.examples.is_empty() {
        image_grid(&dir.join("examples.png"), r.examples, r.shape, 3)?;
        plots.push("examples.png".into());
    }
    let mut md = format!("# {}\n\n", r.title);
    let _ = writeln!(
        md,
        "{} test images. Clean accuracy **{:.2}%**.\n\n| mechanism | accuracy | mean SSIM | mean PSNR (dB) | learned reconstruction PSNR (dB) | masked fraction |\n|---|---|---|---|---|---|",
        s.test_images,
        100.0 * s.clean_accuracy
    );
    let recon = s
        .reconstruction_psnr_db
        .map(|p| format!("{p:.2}"))
        .unwrap_or_else(|| "—".into());
    let _ = writeln!(
        md,
        "| SGT | {:.2}% | {:.3} | {:.2} | {recon} | {:.2} |",
        100.0 * s.transformed_accuracy,
        s.mean_ssim,
        s.mean_psnr_db,
        s.masked_fraction
    );
    for b in r.baselines {
        let _ = writeln!(
            md,
            "| Gaussian σ = {} | {:.2}% | {:.3} | {:.2} | — | 0 |",
            b.sigma,
            100.0 * b.accuracy,
            b.mean_ssim,
            b.mean_psnr_db
        );
    }
    if let (Some(mi), Some(bound)) = (s.mutual_information_nats, s.mutual_information_bound_nats) {
        let _ = writeln!(
            md,
            "\nMutual information I(X; X̃) ≈ {mi:.3} nats (bound log K = {bound:.3}; without the \
             layer {:.3}).",
            s.clean_mutual_information_nats.unwrap_or(f64::NAN)
        );
    }
    md.push('\n');
    for p in &plots {
        let _ = writeln!(md, "![{p}]({p})\n");
    }
    let write = |name: &str, bytes: &[u8]| write_report_file(dir, name, bytes);
    write("summary.md", md.as_bytes())?;
    let json = serde_json::json!({
        "title": r.title,
        "sgt": s,
        "gaussian_baselines": r.baselines,
        "plots": plots,
        "extra": r.extra,
    });
    let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Input(e.to_string()))?;
    write("report.json", text.as_bytes())?;
    Ok(json)
}
