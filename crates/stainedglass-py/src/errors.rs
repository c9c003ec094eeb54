//! The package's one exception class and the conversion of every Rust error into it.

use pyo3::exceptions::PyException;
use pyo3::PyErr;

pyo3::create_exception!(
    stainedglass,
    StainedGlassError,
    PyException,
    "An error of the Stained Glass Transform: a bad artefact, prompt or input; the message says \
     what was wrong and how to fix it."
);

/// Turns any Rust error into a `StainedGlassError` with its message (and causes).
pub(crate) fn err(e: impl std::fmt::Display) -> PyErr {
    StainedGlassError::new_err(e.to_string())
}
