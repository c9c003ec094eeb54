//! Base models behind small traits and the data-set readers: IDX (Fashion-MNIST) and CSV
//! (scikit-learn digits, MNIST 5k) images, and small CNN / ResNet-18-style classifiers whose
//! every op on the input path is differentiable (the SGT trains through them).

pub mod data;
pub mod error;
pub mod llm;
#[cfg(test)]
mod test_util;
pub mod text_sgt;
pub mod vision;

pub use data::{ImageDataset, Split};
pub use error::{Error, Result};
pub use llm::{Llama, LlamaConfig, Stop};
pub use text_sgt::{TransformerCloak, TransformerCloakConfig};
pub use vision::{Classifier, ClassifierArch, ClassifierConfig};
