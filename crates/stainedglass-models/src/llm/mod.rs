//! A Llama-family causal LM (Llama, Mistral, Qwen2-style) that runs from input embeddings,
//! stops at any layer, generates with a KV cache, and passes gradients to its input embeddings
//! through frozen weights. Loads GGUF (dequantized to f32, or kept as stored for inference) and
//! Hugging Face folders.
//!
//! - the model: [`config`], [`weights`], [`weights_hf_stored`] and [`hf`] (loading and saving), `model.rs` ([`Llama`]),
//!   `block.rs` (one layer's weights), `stored.rs` (a model with its matrices as stored),
//!   `kv_cache.rs`, `stack/` (the decoder layers as one op);
//! - generation: [`generate`] (sampling, batched requests), [`continuous`] (requests joining
//!   and leaving a running batch between decoding steps), [`prefix`] (reusing a shared prompt
//!   prefix's keys and values);
//! - `backend/`: the CPU kernels and the run-time BLAS, private to the crate.

pub(crate) mod backend;
pub(crate) mod block;
pub mod config;
pub mod continuous;
pub(crate) mod embed_head;
pub mod generate;
pub mod hf;
pub(crate) mod kv_cache;
pub(crate) mod model;
pub mod prefix;
pub(crate) mod stack;
pub(crate) mod stored;
pub mod weights;
pub mod weights_hf_stored;

pub use backend::blas::{
    configure as configure_blas, kind as blas_kind, openblas_coretype, BlasChoice, BlasOptions,
    Kind as BlasKind,
};
pub use backend::ops::Linear;
pub use backend::packed::set_prepack_budget_mb;
pub use backend::quant::{Activations, Isa as QuantIsa, QMatrix, BF16_MIN_ROWS};
pub use config::LlamaConfig;
pub use continuous::{Finished, PrefixStats, RowRequest, RunningBatch};
pub use generate::{FinishReason, Generation, Prompt, Sampler, SamplingParams};
pub use kv_cache::KvCache;
pub use model::{positions_from_mask, Llama, Stop};
pub use weights::GgufFile;
