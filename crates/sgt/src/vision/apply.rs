//! `sgt vision apply`: the client side. Loads a noise-layer artefact, transforms images (from the
//! data set, PNG files, or a safetensors tensor), writes the transformed tensor and a PNG grid of
//! clean (top) vs transformed (bottom).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use stainedglass_core::error::ensure_finite;
use stainedglass_core::io::{load_noise_layer, save_tensors};
use stainedglass_core::{NoiseLayer, NoiseRng};
use stainedglass_eval::plot::image_grid;
use stainedglass_models::Split;

use super::data::DataArgs;

#[derive(Args)]
pub struct ApplyArgs {
    /// Noise-layer artefact directory (e.g. `runs/sgt/noise_layer`).
    #[arg(long)]
    pub sgt: PathBuf,
    /// PNG images to transform (sizes must match the SGT).
    #[arg(long, num_args = 1..)]
    pub png: Vec<PathBuf>,
    /// A safetensors file holding `images`: f32 `[B, C, H, W]` in [0, 1].
    #[arg(long, conflicts_with = "png")]
    pub input: Option<PathBuf>,
    /// Otherwise: the first N test images of the data set.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    #[command(flatten)]
    pub data: DataArgs,
    /// Seed the noise (default: OS entropy; never reuse a seed in production).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory: `transformed.safetensors` and `grid.png`.
    #[arg(long)]
    pub output: PathBuf,
}

fn load_png(path: &Path, shape: &[usize]) -> Result<Vec<f32>> {
    let img = image::open(path).with_context(|| format!("reading image {}", path.display()))?;
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    if img.width() as usize != w || img.height() as usize != h {
        bail!(
            "{} is {}×{} but the SGT expects {w}×{h} images; resize it first",
            path.display(),
            img.width(),
            img.height()
        );
    }
    Ok(match c {
        1 => img
            .to_luma8()
            .pixels()
            .map(|p| p.0[0] as f32 / 255.0)
            .collect(),
        3 => {
            let rgb = img.to_rgb8();
            let mut v = vec![0f32; 3 * h * w];
            for (i, p) in rgb.pixels().enumerate() {
                for k in 0..3 {
                    v[k * h * w + i] = p.0[k] as f32 / 255.0;
                }
            }
            v
        }
        _ => bail!("PNG input supports 1 or 3 channels; the SGT expects {c}"),
    })
}

pub fn run(a: ApplyArgs, device: &Device) -> Result<()> {
    let layer = load_noise_layer(&a.sgt, device)
        .with_context(|| format!("loading the SGT from {}", a.sgt.display()))?;
    let shape = layer.input_shape().to_vec();
    let x = if !a.png.is_empty() {
        let mut all = Vec::new();
        for p in &a.png {
            all.extend(load_png(p, &shape)?);
        }
        Tensor::from_vec(all, (a.png.len(), shape[0], shape[1], shape[2]), device)?
    } else if let Some(p) = &a.input {
        let t = stainedglass_core::io::load_tensors(p, device)?;
        let x = t
            .get("images")
            .with_context(|| format!("{} has no tensor named `images`", p.display()))?;
        if x.dtype() != DType::F32 {
            bail!(
                "`images` in {} is {:?}; f32 in [0, 1] is required",
                p.display(),
                x.dtype()
            );
        }
        ensure_finite(x, "input images")?;
        x.clone()
    } else {
        let test = a.data.load(Split::Test)?;
        if a.count == 0 || test.is_empty() {
            bail!("nothing to transform: --count must be > 0");
        }
        let idx: Vec<usize> = (0..a.count.min(test.len())).collect();
        test.batch(&idx, device)?.0
    };
    let mut rng = NoiseRng::new(a.seed);
    let transformed = layer.transform(&x, None, &mut rng)?;
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("creating {}", a.output.display()))?;
    save_tensors(
        &a.output.join("transformed.safetensors"),
        &[("images".into(), transformed.clone())],
    )?;
    let n: usize = shape.iter().product();
    let to_rows = |t: &Tensor| -> Result<Vec<Vec<f32>>> {
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        Ok(v.chunks(n).map(|c| c.to_vec()).collect())
    };
    let grid = a.output.join("grid.png");
    image_grid(
        &grid,
        &[to_rows(&x)?, to_rows(&transformed)?],
        [shape[0], shape[1], shape[2]],
        4,
    )?;
    println!(
        "{}",
        serde_json::json!({
            "images": x.dim(0)?,
            "transformed": a.output.join("transformed.safetensors"),
            "grid_png": grid,
            "seeded": rng.is_seeded(),
        })
    );
    Ok(())
}
