//! Trainers: the base image classifier, and the vision SGT on a frozen classifier with the
//! composite cloak loss. Shared pieces: epoch batching, atomic checkpoints with resume, a progress
//! bar, and JSON-lines metrics.
#![forbid(unsafe_code)]

pub mod batches;
pub mod checkpoint;
pub mod error;
pub mod metrics;
pub mod text;
pub mod vision;

pub use error::{Error, Result};
