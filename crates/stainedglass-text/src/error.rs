//! Errors of the text crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tokenizer could not be built or loaded.
    #[error("tokenizer from {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A prompt the wrapper cannot encode (empty, unknown role, too long, …).
    #[error("invalid prompt: {0}")]
    Prompt(String),
    /// A client artefact that is missing, corrupt or inconsistent.
    #[error("SGT artefact {path}: {reason}")]
    Artefact { path: PathBuf, reason: String },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Models(#[from] stainedglass_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn tokenizer(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Tokenizer {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
