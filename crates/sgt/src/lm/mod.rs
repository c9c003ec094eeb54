//! `sgt generate` and `sgt tokenize`: the bundled causal LM and its tokenizer wrapper.

pub mod convert;
pub mod generate;
pub mod model_args;
pub mod tokenize;

pub use convert::{run_convert_hf, ConvertHfArgs};
pub use generate::{run_generate, GenerateArgs};
pub use tokenize::{run_tokenize, TokenizeArgs};
