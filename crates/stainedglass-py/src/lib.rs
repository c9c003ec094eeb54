//! `stainedglass._native`: the Rust Stained Glass Transform for Python (PyO3, stable ABI). The
//! Python package `stainedglass` (`python/stainedglass/`) re-exports it with docstrings and type
//! stubs. Everything heavy runs with the interpreter released (`Python::detach`); every Rust
//! error becomes a Python exception carrying the Rust message; arrays leave Rust without a copy
//! (a `Vec` handed to NumPy) and enter with one (into the tensor's storage).
//!
//! Like the `sgt` binary, the package reads no environment variable: `configure()` chooses the
//! BLAS, once, before the first product.

#![forbid(unsafe_code)]

mod convert;
mod errors;
mod reading;
mod text;
mod vision;

use errors::{err, StainedGlassError};
use pyo3::prelude::*;

/// Chooses the BLAS the transform's products use: "auto" (oneMKL first on Intel CPUs, else
/// OpenBLAS, else Rust's gemm), "mkl", "openblas" or "off"; `library`: a CBLAS library to try
/// first; `assets`: a folder whose `mkl/` holds oneMKL. Call it before the first transform; a
/// second call with other options raises.
#[pyfunction]
#[pyo3(signature = (blas = "auto", library = None, assets = None))]
fn configure(
    blas: &str,
    library: Option<std::path::PathBuf>,
    assets: Option<std::path::PathBuf>,
) -> PyResult<()> {
    let choice = blas
        .parse::<stainedglass_models::llm::BlasChoice>()
        .map_err(pyo3::exceptions::PyValueError::new_err)?;
    stainedglass_models::llm::configure_blas(stainedglass_models::llm::BlasOptions {
        choice,
        library,
        assets,
    })
    .map_err(err)
}

/// The `OPENBLAS_CORETYPE` that suits this CPU, for the package to set (as the `sgt` binary
/// does) before OpenBLAS loads; `None` when OpenBLAS's own detection is right.
#[pyfunction]
fn _openblas_coretype() -> Option<&'static str> {
    stainedglass_models::llm::openblas_coretype()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("StainedGlassError", m.py().get_type::<StainedGlassError>())?;
    m.add_function(wrap_pyfunction!(configure, m)?)?;
    m.add_function(wrap_pyfunction!(_openblas_coretype, m)?)?;
    m.add_class::<text::StainedGlassTransformForText>()?;
    m.add_class::<text::TokenizerWrapper>()?;
    m.add_class::<vision::NoiseLayer>()?;
    m.add_function(wrap_pyfunction!(reading::nearest_neighbour_reading, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
