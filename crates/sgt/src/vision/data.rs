//! Data-set selection shared by the vision commands.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use stainedglass_models::{ImageDataset, Split};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DatasetKind {
    /// Fashion-MNIST (28×28, 60k train / 10k test) from the IDX files.
    FashionMnist,
    /// scikit-learn digits (8×8, 1797 images); the last 297 are the test split.
    Digits,
}

#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Which data set.
    #[arg(long, value_enum, default_value = "fashion-mnist")]
    pub dataset: DatasetKind,
    /// Assets directory (as filled by scripts/setup-assets.sh). Default: `$SGT_ASSETS`, else
    /// `assets`.
    #[arg(long)]
    pub assets: Option<PathBuf>,
    /// Use only the first N training images.
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
}

const DIGITS_TEST: usize = 297;

impl DataArgs {
    /// The assets folder: `--assets`, else `$SGT_ASSETS`, else `assets`.
    pub fn assets(&self) -> PathBuf {
        self.assets.clone().unwrap_or_else(crate::env::assets)
    }

    pub fn load(&self, split: Split) -> Result<ImageDataset> {
        let ds = match self.dataset {
            DatasetKind::FashionMnist => {
                let dir = self.assets().join("fashion-mnist");
                if !dir.exists() {
                    bail!(
                        "{} not found: run ./scripts/setup-assets.sh first (or pass --assets)",
                        dir.display()
                    );
                }
                ImageDataset::fashion_mnist(&dir, split)?
            }
            DatasetKind::Digits => {
                let p = self.assets().join("digits/digits.csv.gz");
                let mut all = ImageDataset::digits(&p).with_context(|| {
                    "run ./scripts/setup-assets.sh first (or pass --assets)".to_string()
                })?;
                let test = all.split_off(DIGITS_TEST);
                match split {
                    Split::Train => all,
                    Split::Test => test,
                }
            }
        };
        let limit = match split {
            Split::Train => self.train_limit,
            Split::Test => self.test_limit,
        };
        Ok(match limit {
            Some(n) => ds.take(n),
            None => ds,
        })
    }
}
