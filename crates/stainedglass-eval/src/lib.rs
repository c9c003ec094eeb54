//! Measuring Stained Glass Transforms: image quality metrics (PSNR, SSIM), a learned
//! reconstruction attack, the vision evaluation report, the quick text report, and plots.

pub mod error;
pub mod image_metrics;
pub mod plot;
pub mod text;
pub mod vision;

pub use error::{Error, Result};
