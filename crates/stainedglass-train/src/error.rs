//! Errors of the training crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("checkpoint problem at {path}: {reason}")]
    Checkpoint { path: PathBuf, reason: String },
    #[error("training diverged at step {step}: {what} is not finite; lower the learning rate")]
    Diverged { step: u64, what: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the privacy check of step {step} failed: {source}")]
    PrivacyCheck {
        step: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Models(#[from] stainedglass_models::Error),
    #[error(transparent)]
    Text(#[from] stainedglass_text::Error),
    #[error(transparent)]
    Metrics(#[from] stainedglass_metrics::Error),
    #[error(transparent)]
    Core(#[from] stainedglass_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn ckpt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
