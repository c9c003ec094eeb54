//! Text inputs of the Stained Glass Transform: a tokenizer built from the model (GGUF metadata
//! or `tokenizer.json`), its chat template rendered with minijinja, and the tokenizer wrapper
//! of `docs/spec.md` §6 that turns chat or instruction prompts into ids, attention mask, noise mask and,
//! for training, labels and loss mask.

pub mod artefact;
pub mod error;
pub mod prompt;
pub mod template;
pub mod tokenizer;
pub mod wrapper;

pub use artefact::{StainedGlassTransformForText, TransformedBatch, TransformedPrompt};
pub use error::{Error, Result};
pub use prompt::{Instruction, Message, PromptInput, Role};
pub use template::ChatTemplate;
pub use tokenizer::TextTokenizer;
pub use wrapper::{EncodedBatch, EncodedPrompt, Padding, Side, TokenizerWrapper, WrapperOptions};
