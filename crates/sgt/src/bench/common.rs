//! What every benchmark record says about the machine it ran on.

/// The system BLAS the products go through (`"none"`: candle's pure-Rust `gemm`).
pub fn blas_name() -> &'static str {
    stainedglass_models::llm::blas_kind().map_or("none", |k| k.name())
}

pub fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
