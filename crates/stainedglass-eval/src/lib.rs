//! Measuring Stained Glass Transforms: image quality metrics (PSNR, SSIM), a learned
//! reconstruction attack, the vision evaluation report, the text attack suite (nearest-neighbour,
//! learned and BeamClean-style inversion, mutual information, utility, baselines) and its
//! reports, and plots.
#![forbid(unsafe_code)]

pub mod error;
pub mod image_metrics;
pub mod plot;
mod report_io;
pub mod text;
pub mod vision;

pub use error::{Error, Result};
