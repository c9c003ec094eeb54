//! Errors of the evaluation crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Input(String),
    #[error("could not write {path}: {reason}")]
    Output { path: PathBuf, reason: String },
    #[error(transparent)]
    Models(#[from] stainedglass_models::Error),
    #[error(transparent)]
    Metrics(#[from] stainedglass_metrics::Error),
    #[error(transparent)]
    Core(#[from] stainedglass_core::Error),
    #[error(transparent)]
    Text(#[from] stainedglass_text::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
