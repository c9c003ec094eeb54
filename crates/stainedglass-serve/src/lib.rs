//! Serving the Stained Glass Transform (`docs/spec.md` §8).
//!
//! - [`server`]: the provider's inference server — prompt embeddings in (base64 safetensors),
//!   tokens out, plain JSON or server-sent events; API keys, limits, graceful shutdown.
//! - [`proxy`]: the client's OpenAI-compatible proxy — tokenizes, applies the chat template
//!   and the SGT locally and forwards only embeddings, to our server or to vLLM.
//! - [`torch_save`]: the `torch.save` file vLLM's `prompt_embeds` expects, written without torch.
//! - [`crypto`]: optional output protection (X25519 → HKDF-SHA256 → ChaCha20-Poly1305).
//! - [`loadtest`]: a bounded load generator reporting latency percentiles and tokens/s.
#![forbid(unsafe_code)]

pub mod crypto;
pub mod embeddings;
pub mod error;
mod http;
pub mod loadtest;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod torch_save;
mod worker;

pub use error::{ApiError, Error, Result};
