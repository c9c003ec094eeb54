//! One error type for the core crate. Messages say what was wrong and how to fix it.

use std::path::PathBuf;

/// Errors raised by the core crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A hyper-parameter is outside its valid range.
    #[error("invalid hyper-parameter `{name}` = {value}: {reason}")]
    InvalidHyperParameter {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// An input tensor has the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got:?}")]
    Shape {
        what: String,
        expected: String,
        got: Vec<usize>,
    },
    /// An input contains NaN or infinite values.
    #[error("{what} contains {count} non-finite value(s) (NaN or Inf); clean the input first")]
    NonFinite { what: String, count: usize },
    /// A saved artefact is malformed or does not match its config.
    #[error("invalid artefact at {path}: {reason}")]
    Artefact { path: PathBuf, reason: String },
    /// File-system failure, with the path involved.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the core crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn hyper(
        name: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidHyperParameter {
            name,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn artefact(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Artefact {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Fails with [`Error::NonFinite`] when `t` holds a NaN or an infinity.
pub fn ensure_finite(t: &candle_core::Tensor, what: &str) -> Result<()> {
    let count = non_finite_count(t)?;
    if count > 0 {
        return Err(Error::NonFinite {
            what: what.to_string(),
            count,
        });
    }
    Ok(())
}

/// Number of NaN or infinite values in `t`. Contiguous CPU float tensors are scanned in place
/// (no copy: artefacts hold tables of hundreds of MB); anything else through an f32 copy.
pub fn non_finite_count(t: &candle_core::Tensor) -> Result<usize> {
    use candle_core::{CpuStorage, Storage};
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            match cpu {
                CpuStorage::F32(v) => return Ok(v[a..b].iter().filter(|x| !x.is_finite()).count()),
                CpuStorage::F16(v) => return Ok(v[a..b].iter().filter(|x| !x.is_finite()).count()),
                CpuStorage::BF16(v) => {
                    return Ok(v[a..b].iter().filter(|x| !x.is_finite()).count())
                }
                _ => {}
            }
        }
    }
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(v.iter().filter(|x| !x.is_finite()).count())
}
