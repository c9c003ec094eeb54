//! A Llama-family causal LM (Llama, Mistral, Qwen2-style) that runs from input embeddings,
//! stops at any layer, generates with a KV cache, and passes gradients to its input embeddings
//! through frozen weights. Loads GGUF (dequantized to f32) and Hugging Face folders.

pub mod blas;
pub mod config;
mod decoder_stack;
mod estimator_layer;
pub mod gemv;
pub mod generate;
pub mod hf;
pub mod kernels;
pub mod model;
mod noise_head;
pub mod noisy;
pub mod ops;
pub mod packed;
#[cfg(test)]
mod test_util;
mod train_linear;
pub mod transformer_cloak;
mod vexp;
pub mod weights;

pub use config::LlamaConfig;
pub use generate::{FinishReason, Generation, Prompt, RowRequest, Sampler, SamplingParams};
pub use model::{KvCache, Llama, Stop};
pub use noisy::{NoiseMaskedNoisyTransformerModel, NoisyLmOutput};
pub use transformer_cloak::{TransformerCloak, TransformerCloakConfig};
pub use weights::GgufFile;
