//! Training a text SGT (TransformerCloak) on a frozen causal LM with the distillation loss.

pub mod config;
pub mod data;
pub mod eval;
pub mod trainer;

pub use config::TextTrainConfig;
pub use trainer::{
    held_out_eval, held_out_rows, load_sgt, save_sgt, train, training_rows, RunOptions,
    TrainSummary,
};
