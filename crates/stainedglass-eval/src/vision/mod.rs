//! Vision evaluation: utility (accuracy clean vs transformed), image similarity, masking, the
//! learned reconstruction attack and mutual information.

mod reconstruction;
mod report;

pub use reconstruction::{ReconstructionAttack, ReconstructionConfig};
pub use report::{evaluate_vision, EvalOptions, VisionEval};
