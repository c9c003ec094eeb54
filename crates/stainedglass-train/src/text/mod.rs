//! Training a text SGT (TransformerCloak) on a frozen causal LM with the distillation loss.

mod adversary;
mod batch;
pub mod config;
pub mod data;
mod privacy_check;
mod served;
mod sgt_io;
pub mod trainer;

pub use adversary::{AdversaryObjective, AdversarySection};
pub use batch::{held_out_eval, held_out_rows, training_rows};
pub use config::TextTrainConfig;
pub use privacy_check::{PrivacyCheck, PrivacyReading};
pub use served::{AdapterSection, SERVED_DIR};
pub use sgt_io::{load_sgt, save_sgt};
pub use trainer::{train, EvalRecord, RunOptions, TrainSummary, SGT_DIR};
