//! The CPU backend of the language model, private to the crate: the run-time BLAS
//! ([`blas`]) and oneMKL's packed weights ([`packed`]), row dot products for decoding
//! ([`gemv`]), host kernels ([`kernels`], [`vexp`], [`rope_table`]), where small parallel
//! work runs ([`pool`]), the trainable linear op
//! ([`train_linear`]) and the fused differentiable ops ([`ops`]) the model and the text SGT are
//! built from. Nothing here knows about models: it multiplies, normalises and attends.

pub mod blas;
pub mod gemv;
pub mod kernels;
pub mod ops;
pub mod packed;
pub mod pool;
pub mod quant;
pub mod rope_table;
pub mod train_linear;
pub mod vexp;
