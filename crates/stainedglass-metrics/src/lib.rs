//! Measurements that both the trainers (`stainedglass-train`) and the attack suite
//! (`stainedglass-eval`) need, so that neither depends on the other:
//!
//! - [`index`]: nearest-neighbour search over the vocabulary embedding table (cosine, L2,
//!   top-k), the decoding every attack starts from;
//! - [`quick`]: the quick privacy and utility check of a text SGT on held-out conversations
//!   ([`QuickEval`]: nearest-neighbour recovery, next-token agreement and KL) and the per-token
//!   [`PrivacyProfile`] behind the quick report.
#![forbid(unsafe_code)]

pub mod index;
pub mod quick;

pub use index::{top_k_of_row, EmbeddingIndex, Ranked};
pub use quick::{privacy_profile, quick_eval, quick_eval_served, PrivacyProfile, QuickEval};

/// What can fail while measuring.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Models(#[from] stainedglass_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
