//! `StainedGlassTransformForText` (`docs/spec.md` §7): the client artefact a provider ships. A directory
//! with a versioned `config.json`, `model.safetensors` (the SGT parameters and the input
//! embedding table, optionally f16), `tokenizer.json`, `tokenizer_config.json` and
//! `chat_template.jinja`. Loading validates the version, every file's sha256, tensor names,
//! shapes, dtypes and finiteness, and the embedding table's hash; applying it to a prompt
//! returns the transformed embeddings and attention mask a server consumes.
//!
//! Loading maps the files and reads them in place: the tokenizer is parsed from the same
//! (verified) bytes whose hash is checked, and the embedding table is never copied
//! (`table.rs`). The files' hashes, the weights and the tokenizer are read on three threads.

mod batch;
pub mod config;
mod files;
mod load;
mod table;

pub use batch::TransformedBatch;
pub use config::{ArtefactConfig, EmbeddingDtype, NoiseMaskPolicy};
pub use files::{embedding_sha256, model_embedding_sha256};

use crate::error::{Error, Result};
use crate::prompt::PromptInput;
use crate::tokenizer::TextTokenizer;
use crate::wrapper::{EncodedPrompt, Padding, TokenizerWrapper, WrapperOptions};
use candle_core::{DType, Device, Tensor};
use config::*;
use stainedglass_core::NoiseRng;
use stainedglass_models::text_sgt::{Precision, TransformerCloak};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use table::EmbeddingTable;

/// How [`StainedGlassTransformForText::new`] packages a trained layer.
#[derive(Debug, Clone)]
pub struct ArtefactOptions {
    /// Name of the base model recorded in the config.
    pub base_model_name: String,
    pub embedding_dtype: EmbeddingDtype,
    pub transform_all_tokens: bool,
}

/// A prompt after the transform: what the client sends (`embeddings`, `attention_mask`) and
/// what stays local (`input_ids`, `noise_mask`).
#[derive(Debug, Clone)]
pub struct TransformedPrompt {
    /// `(seq, hidden)` f32.
    pub embeddings: Tensor,
    pub attention_mask: Vec<u8>,
    pub noise_mask: Vec<u8>,
    pub input_ids: Vec<u32>,
}

/// The client-side text transform: tokenizer, chat template, embedding table and SGT.
pub struct StainedGlassTransformForText {
    config: ArtefactConfig,
    cloak: TransformerCloak,
    /// `(vocab, hidden)`, read as f32 (values rounded through f16 when the artefact stores
    /// f16); a loaded artefact's stays in the file's memory map.
    embeddings: EmbeddingTable,
    /// Where transformed prompts are made.
    device: Device,
    wrapper: TokenizerWrapper,
}

impl std::fmt::Debug for StainedGlassTransformForText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StainedGlassTransformForText")
            .field("base_model", &self.config.base_model)
            .field("embedding_dtype", &self.config.embedding_dtype)
            .finish_non_exhaustive()
    }
}

fn wrapper_options(policy: NoiseMaskPolicy) -> WrapperOptions {
    WrapperOptions {
        add_generation_prompt: true,
        transform_all_tokens: policy.transform_all_tokens,
        padding: Padding::None,
        ..WrapperOptions::default()
    }
}

fn artefact_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Artefact {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl StainedGlassTransformForText {
    /// Packages a trained layer with the base model's embedding table and tokenizer.
    pub fn new(
        cloak: TransformerCloak,
        base_embeddings: &Tensor,
        tokenizer: Arc<TextTokenizer>,
        options: ArtefactOptions,
    ) -> Result<Self> {
        let base = &cloak.config().base;
        let (v, d) = base_embeddings.dims2()?;
        if (v, d) != (base.vocab_size, base.hidden_size) {
            return Err(Error::Prompt(format!(
                "the embedding table is {v}×{d} but the SGT was built for {}×{}; pass the \
                 base model the SGT was trained on",
                base.vocab_size, base.hidden_size
            )));
        }
        if tokenizer.vocab_size() > v {
            return Err(Error::Prompt(format!(
                "the tokenizer has {} tokens but the embedding table only {v} rows",
                tokenizer.vocab_size()
            )));
        }
        tokenizer.chat_template()?;
        let hash = embedding_sha256(base_embeddings)?;
        let table = base_embeddings.to_dtype(DType::F32)?;
        let embeddings = match options.embedding_dtype {
            EmbeddingDtype::F32 => table,
            EmbeddingDtype::F16 => table.to_dtype(DType::F16)?.to_dtype(DType::F32)?,
        };
        let policy = NoiseMaskPolicy {
            transform_all_tokens: options.transform_all_tokens,
        };
        let config = ArtefactConfig {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            noise_layer: NoiseLayerSection {
                kind: "transformer_cloak".into(),
                config: cloak.config().clone(),
            },
            base_model: BaseModelSection {
                name: options.base_model_name,
                vocab_size: v,
                hidden_size: d,
                embedding_sha256: hash,
                stored_embedding_sha256: match options.embedding_dtype {
                    EmbeddingDtype::F32 => None,
                    EmbeddingDtype::F16 => Some(embedding_sha256(&embeddings)?),
                },
            },
            noise_mask: policy,
            files: BTreeMap::new(),
            embedding_dtype: options.embedding_dtype,
        };
        Ok(Self {
            config,
            device: base_embeddings.device().clone(),
            cloak,
            embeddings: EmbeddingTable::owned(embeddings)?,
            wrapper: TokenizerWrapper::new(tokenizer, wrapper_options(policy)),
        })
    }

    pub fn config(&self) -> &ArtefactConfig {
        &self.config
    }

    pub fn cloak(&self) -> &TransformerCloak {
        &self.cloak
    }

    /// Sets how [`Self::apply`] multiplies on the CPU: f32 (default, the trained numbers) or
    /// bf16 with f32 accumulation (about twice as fast on a CPU with AVX-512 BF16; see
    /// [`Precision`]).
    pub fn set_precision(&mut self, p: Precision) -> Result<()> {
        Ok(self.cloak.set_precision(p)?)
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        self.wrapper.tokenizer()
    }

    /// The shared tokenizer (to build a wrapper with other options).
    pub fn tokenizer_arc(&self) -> Arc<TextTokenizer> {
        self.wrapper.tokenizer_arc()
    }

    /// The `(vocab, hidden)` f32 input-embedding table. A loaded artefact makes it on the first
    /// call (applying the SGT reads only a prompt's rows and never needs it).
    pub fn embeddings(&self) -> Result<&Tensor> {
        self.embeddings.full()
    }

    /// The table's rows `ids` as a `(ids.len(), hidden)` f32 tensor (what [`Self::apply_ids`]
    /// transforms).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.embeddings.rows(ids, &self.device)
    }

    pub fn hidden_size(&self) -> usize {
        self.config.base_model.hidden_size
    }

    /// Writes the artefact to `dir` atomically: every file goes to a sibling temporary
    /// directory which then replaces `dir`. Returns the config written (with file hashes).
    pub fn save_pretrained(&self, dir: &Path) -> Result<ArtefactConfig> {
        let tok = self.tokenizer();
        let store = match self.config.embedding_dtype {
            EmbeddingDtype::F32 => self.embeddings.full()?.clone(),
            EmbeddingDtype::F16 => self.embeddings.full()?.to_dtype(DType::F16)?,
        };
        let mut tensors = self.cloak.named_tensors();
        tensors.push((EMBEDDING_TENSOR.to_string(), store));
        let weights = stainedglass_core::io::safetensors_bytes(&tensors)
            .map_err(|e| artefact_err(dir, e.to_string()))?;
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i));
        let tok_cfg = serde_json::json!({
            "bos_token": name(tok.bos_id()),
            "eos_token": name(tok.eos_id()),
            "pad_token": name(tok.pad_id()),
        });
        let contents: Vec<(&str, Vec<u8>)> = vec![
            (WEIGHTS_FILE, weights),
            (TOKENIZER_FILE, tok.to_json().as_bytes().to_vec()),
            (
                TOKENIZER_CONFIG_FILE,
                serde_json::to_vec_pretty(&tok_cfg)
                    .map_err(|e| artefact_err(dir, e.to_string()))?,
            ),
            (
                TEMPLATE_FILE,
                tok.chat_template()?.source().as_bytes().to_vec(),
            ),
        ];
        let mut config = self.config.clone();
        config.files = contents
            .iter()
            .map(|(n, b)| (n.to_string(), files::sha256_hex(b)))
            .collect();
        let cfg =
            serde_json::to_vec_pretty(&config).map_err(|e| artefact_err(dir, e.to_string()))?;
        let mut all = contents;
        all.push((CONFIG_FILE, cfg));
        files::write_dir_atomic(dir, &all)?;
        Ok(config)
    }

    /// Tokenizes `prompt` with the chat template (generation prompt appended), embeds it and
    /// applies the SGT with fresh noise from `rng`.
    pub fn apply(&self, prompt: &PromptInput, rng: &mut NoiseRng) -> Result<TransformedPrompt> {
        let enc = self.encode(prompt)?;
        self.apply_ids(&enc.input_ids, &enc.noise_mask, rng)
    }

    /// The ids and noise mask [`Self::apply`] transforms (tokenization only: cheap, so that a
    /// caller can refuse a long prompt before the transform).
    pub fn encode(&self, prompt: &PromptInput) -> Result<EncodedPrompt> {
        self.wrapper.encode(prompt)
    }

    /// The longest prompt, in tokens, the SGT transforms (the base model's positions).
    pub fn max_positions(&self) -> usize {
        self.cloak.max_positions()
    }

    /// Embeds `ids` and transforms the tokens with `noise_mask = 1`.
    pub fn apply_ids(
        &self,
        ids: &[u32],
        noise_mask: &[u8],
        rng: &mut NoiseRng,
    ) -> Result<TransformedPrompt> {
        if ids.is_empty() || ids.len() != noise_mask.len() {
            return Err(Error::Prompt(format!(
                "{} ids with {} noise-mask entries; both must be equal and non-zero",
                ids.len(),
                noise_mask.len()
            )));
        }
        let max = self.max_positions();
        if ids.len() > max {
            return Err(Error::Prompt(format!(
                "the prompt is {} tokens; the base model takes at most {max}",
                ids.len()
            )));
        }
        let x = self.embeddings.rows(ids, &self.device)?.unsqueeze(0)?;
        let attention_mask = vec![1u8; ids.len()];
        let out = self
            .cloak
            .transform(&x, Some(&attention_mask), Some(noise_mask), rng)?;
        Ok(TransformedPrompt {
            embeddings: out.transformed.squeeze(0)?,
            attention_mask,
            noise_mask: noise_mask.to_vec(),
            input_ids: ids.to_vec(),
        })
    }
}
