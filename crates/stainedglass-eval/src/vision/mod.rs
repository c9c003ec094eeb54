//! Vision evaluation: utility (accuracy clean vs transformed), image similarity, masking, the
//! learned reconstruction attack, mutual information, the Gaussian-noise baseline and the report.

mod baseline;
mod reconstruction;
mod report;
mod report_files;

pub use baseline::{gaussian_image_baseline, GaussianImagePoint};
pub use reconstruction::{ReconstructionAttack, ReconstructionConfig};
pub use report::{evaluate_vision, EvalOptions, VisionEval};
pub use report_files::{write_vision_report, VisionReportInput};
