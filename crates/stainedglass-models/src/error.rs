//! Errors of the models crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A data file is malformed, truncated or of the wrong kind.
    #[error("bad data file {path}: {reason}")]
    Data { path: PathBuf, reason: String },
    /// A saved model is malformed or does not match its config.
    #[error("invalid model at {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    /// Input of the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got:?}")]
    Shape {
        what: String,
        expected: String,
        got: Vec<usize>,
    },
    /// A parameter outside its valid range.
    #[error("invalid {what}: expected {expected}")]
    Invalid { what: String, expected: String },
    /// An operation the model, as loaded, does not run (e.g. gradients through quantized
    /// weights); the message names what to do instead.
    #[error("{0}")]
    Unsupported(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] stainedglass_core::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
