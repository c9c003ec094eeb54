//! Image data sets held in memory as bytes (one byte per pixel) with a scale to `[0, 1]`.

mod csv;
mod idx;

use std::path::Path;

use candle_core::{Device, Tensor};

pub use self::csv::read_csv_images;
pub use self::idx::{read_idx_images, read_idx_labels};
use crate::{Error, Result};

/// Train or test split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// In-memory labelled images, `[C, H, W]` each, pixel values `raw / max_value ∈ [0, 1]`.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub shape: [usize; 3],
    pub num_classes: usize,
    pub max_value: f32,
}

impl ImageDataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn image_size(&self) -> usize {
        self.shape.iter().product()
    }

    /// Images `[B, C, H, W]` (f32 in `[0, 1]`) and labels `[B]` (u32) for `indices`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let n = self.image_size();
        let mut x = Vec::with_capacity(indices.len() * n);
        let mut y = Vec::with_capacity(indices.len());
        for &i in indices {
            if i >= self.len() {
                return Err(Error::Shape {
                    what: "data-set index".into(),
                    expected: format!("< {}", self.len()),
                    got: vec![i],
                });
            }
            x.extend(
                self.pixels[i * n..(i + 1) * n]
                    .iter()
                    .map(|&p| p as f32 / self.max_value),
            );
            y.push(self.labels[i]);
        }
        let [c, h, w] = self.shape;
        Ok((
            Tensor::from_vec(x, (indices.len(), c, h, w), device)?,
            Tensor::from_vec(y, indices.len(), device)?,
        ))
    }

    /// The first `n` examples (or all).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        let s = self.image_size();
        Self {
            pixels: self.pixels[..n * s].to_vec(),
            labels: self.labels[..n].to_vec(),
            shape: self.shape,
            num_classes: self.num_classes,
            max_value: self.max_value,
        }
    }

    /// Splits off the last `n` examples as a second data set (e.g. held-out).
    pub fn split_off(&mut self, n: usize) -> Self {
        let n = n.min(self.len());
        let keep = self.len() - n;
        let s = self.image_size();
        Self {
            pixels: self.pixels.split_off(keep * s),
            labels: self.labels.split_off(keep),
            shape: self.shape,
            num_classes: self.num_classes,
            max_value: self.max_value,
        }
    }

    /// Fashion-MNIST from a directory holding the four `*-ubyte.gz` files.
    pub fn fashion_mnist(dir: &Path, split: Split) -> Result<Self> {
        let prefix = match split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let (pixels, n, h, w) =
            read_idx_images(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
        let lpath = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
        let labels = read_idx_labels(&lpath)?;
        if labels.len() != n {
            return Err(Error::data(
                &lpath,
                format!("{} labels for {n} images", labels.len()),
            ));
        }
        let ds = Self {
            pixels,
            labels: labels.into_iter().map(u32::from).collect(),
            shape: [1, h, w],
            num_classes: 10,
            max_value: 255.0,
        };
        ds.check_labels(&lpath)?;
        Ok(ds)
    }

    /// scikit-learn digits (`digits.csv.gz`: 64 pixels 0–16, then the label).
    pub fn digits(path: &Path) -> Result<Self> {
        let ds = read_csv_images(path, [1, 8, 8], 16.0, 10)?;
        ds.check_labels(path)?;
        Ok(ds)
    }

    fn check_labels(&self, path: &Path) -> Result<()> {
        if let Some(&bad) = self
            .labels
            .iter()
            .find(|&&l| l as usize >= self.num_classes)
        {
            return Err(Error::data(
                path,
                format!("label {bad} ≥ number of classes {}", self.num_classes),
            ));
        }
        Ok(())
    }
}

/// Opens a file, transparently gunzipping `.gz` (detected by magic bytes).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| Error::data(path, format!("corrupt or truncated gzip stream: {e}")))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}
